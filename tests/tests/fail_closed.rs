//! The apply engine fails closed: when a bank's own etcd refuses an operation for a reason of its
//! own (here a CORRUPT alarm raised directly in that etcd, as a tampered or failing etcd would),
//! the bank stops applying, serves no stale linearizable read, and resumes where it stopped once
//! the etcd is fixed. It never skips what the other banks apply.

use std::time::{Duration, Instant};

use bftcd_proto::etcdserverpb::{
    alarm_request::AlarmAction, kv_client::KvClient, maintenance_client::MaintenanceClient, AlarmRequest, AlarmType,
    PutRequest, RangeRequest,
};
use bftcd_tests::{Chain, TestDir};
use tonic::transport::Channel;

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(format!("http://{endpoint}")).unwrap().timeout(Duration::from_secs(15)).connect().await.unwrap()
}

fn corrupt(action: AlarmAction) -> AlarmRequest {
    AlarmRequest { action: action as i32, member_id: 0, alarm: AlarmType::Corrupt as i32 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_whose_etcd_refuses_writes_stops_instead_of_skipping_them() {
    let dir = TestDir::new("fail-closed");
    let chain = Chain::start(&dir, 4);
    let endpoints = chain.endpoints();
    let mut kv1 = KvClient::new(channel(&endpoints[0]).await);
    let mut kv2 = KvClient::new(channel(&endpoints[1]).await);
    kv1.put(PutRequest { key: b"before".to_vec(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(20));

    // Straight into bank 2's own etcd, behind its sidecar.
    let mut etcd2 = MaintenanceClient::new(channel(&chain.banks[1].etcd.endpoint()).await);
    etcd2.alarm(corrupt(AlarmAction::Activate)).await.unwrap();
    for i in 0..3 {
        kv1.put(PutRequest { key: format!("during/{i}").into(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    }
    // Bank 2 cannot apply them: a linearizable read there must fail, not answer without them.
    let read = kv2.range(RangeRequest { key: b"during/2".to_vec(), ..Default::default() }).await;
    match read {
        Err(s) => assert_eq!(s.message(), "etcdserver: request timed out", "{s:?}"),
        Ok(r) => panic!("bank 2 answered a linearizable read it could not have applied: {:?}", r.into_inner().kvs),
    }
    let log = std::fs::read_to_string(chain.banks[1].sidecar.stderr_log()).unwrap();
    assert!(log.contains("apply: stopped"), "bank 2 does not say why it stopped");

    // Fixed: it applies everything it held back, in order, and the banks are identical again.
    etcd2.alarm(corrupt(AlarmAction::Deactivate)).await.unwrap();
    let started = Instant::now();
    loop {
        match kv2.range(RangeRequest { key: b"during/".to_vec(), range_end: b"during0".to_vec(), ..Default::default() }).await {
            Ok(r) if r.get_ref().kvs.len() == 3 => break,
            _ if started.elapsed() < Duration::from_secs(30) => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("bank 2 did not resume after the fix: {other:?}"),
        }
    }
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
}
