//! What a client must not be able to do to a bank (docs/consensus.md, threat model): each test
//! makes the attempt against real banks and checks that the banks stay identical and serving.

use bftcd_proto::etcdserverpb::{
    alarm_request::AlarmAction, kv_client::KvClient, maintenance_client::MaintenanceClient, AlarmRequest, AlarmType,
    DefragmentRequest, PutRequest, RangeRequest,
};
use bftcd_tests::{Chain, TestDir};
use tonic::transport::Channel;
use tonic::Code;

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(format!("http://{endpoint}")).unwrap().connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_raise_an_alarm_that_freezes_a_bank() {
    // With CORRUPT raised in its etcd a bank's etcd refuses writes while its reads keep working:
    // it would serve frozen "linearizable" reads; with NOSPACE it would stall. Alarms are the
    // bank's own business, never a client's.
    let dir = TestDir::new("hostile-alarm");
    let chain = Chain::start(&dir, 4);
    let endpoints = chain.endpoints();
    let mut bank2 = MaintenanceClient::new(channel(&endpoints[1]).await);
    for alarm in [AlarmType::Corrupt, AlarmType::Nospace] {
        let raise = AlarmRequest { action: AlarmAction::Activate as i32, member_id: 0, alarm: alarm as i32 };
        let refused = bank2.alarm(raise).await.expect_err("a client raised an alarm");
        assert_eq!((refused.code(), refused.message()), (Code::PermissionDenied, "etcdserver: permission denied"));
    }
    let listed = bank2.alarm(AlarmRequest { action: AlarmAction::Get as i32, ..Default::default() }).await.unwrap();
    assert!(listed.into_inner().alarms.is_empty());
    let disarm = AlarmRequest { action: AlarmAction::Deactivate as i32, member_id: 0, alarm: AlarmType::Nospace as i32 };
    bank2.alarm(disarm).await.expect("disarming works as with etcd");

    // Writes through bank 1 are still applied at bank 2.
    let mut kv1 = KvClient::new(channel(&endpoints[0]).await);
    let mut kv2 = KvClient::new(channel(&endpoints[1]).await);
    for i in 0..5 {
        kv1.put(PutRequest { key: format!("after/{i}").into(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    }
    for i in 0..5 {
        let got = kv2.range(RangeRequest { key: format!("after/{i}").into(), ..Default::default() }).await.unwrap();
        assert_eq!(got.into_inner().kvs.len(), 1, "bank 2 lacks after/{i}");
    }
    chain.wait_converged(&[0, 1, 2, 3], std::time::Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_keep_a_bank_defragmenting() {
    // etcd stops its writes while it defragments: a client calling Defragment in a loop would
    // keep one bank from applying. The first call runs; the next ones within the interval are
    // refused as etcd refuses an overloaded server, and writes go on.
    let dir = TestDir::new("hostile-defrag");
    let chain = Chain::start(&dir, 4);
    let endpoints = chain.endpoints();
    let mut bank2 = MaintenanceClient::new(channel(&endpoints[1]).await);
    bank2.defragment(DefragmentRequest {}).await.expect("the first defragmentation runs");
    for _ in 0..20 {
        let refused = bank2.defragment(DefragmentRequest {}).await.expect_err("a client defragmented again at once");
        assert_eq!((refused.code(), refused.message()), (Code::ResourceExhausted, "etcdserver: too many requests"));
    }
    // Other banks keep their own allowance: defragmentation is per bank.
    MaintenanceClient::new(channel(&endpoints[2]).await).defragment(DefragmentRequest {}).await.expect("bank 3 defragments");
    let mut kv2 = KvClient::new(channel(&endpoints[1]).await);
    for i in 0..5 {
        kv2.put(PutRequest { key: format!("defrag/{i}").into(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    }
    chain.wait_converged(&[0, 1, 2, 3], std::time::Duration::from_secs(20));
}
