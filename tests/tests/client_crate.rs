//! The etcd-client crate, an independent etcd v3 client, used as an ordinary application would:
//! KV, Txn, Watch and Lease round trips through a bftcd bank, with client keepalive pings every
//! 5 s (the most frequent etcd permits).

use std::time::Duration;

use bftcd_tests::{EtcdProcess, Sidecar, TestDir};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseTimeToLiveOptions, PutOptions, Txn,
    TxnOp, WatchOptions,
};

async fn connect(endpoint: &str) -> Client {
    let opts = ConnectOptions::new()
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true)
        .with_timeout(Duration::from_secs(10));
    Client::connect([endpoint], Some(opts)).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_round_trips() {
    let dir = TestDir::new("client-crate");
    let etcd = EtcdProcess::start_with_args(&dir, "bank1-etcd", bftcd_tests::sidecar::BANK_ETCD_ARGS);
    let bank = Sidecar::start(&dir, "bank1", &etcd.endpoint());
    let mut c = connect(&bank.endpoint()).await;

    // Watch first, from the next revision, with prev_kv.
    let start = c.get("nothing", None).await.unwrap().header().unwrap().revision() + 1;
    let mut watch = c
        .watch("app/", Some(WatchOptions::new().with_prefix().with_prev_key().with_start_revision(start)))
        .await
        .unwrap();

    // KV
    let put = c.put("app/a", "1", None).await.unwrap();
    let rev_a = put.header().unwrap().revision();
    assert_eq!(rev_a, start);
    let prev = c.put("app/a", "2", Some(PutOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(prev.prev_key().unwrap().value(), b"1");
    c.put("app/b", "3", None).await.unwrap();
    let got = c.get("app/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(got.count(), 2);
    assert_eq!(got.kvs()[0].value(), b"2");
    assert_eq!(got.kvs()[0].version(), 2);
    assert_eq!(got.kvs()[0].create_revision(), rev_a);

    // Txn: compare and swap, both branches.
    let swap = Txn::new()
        .when([Compare::value("app/a", CompareOp::Equal, "2")])
        .and_then([TxnOp::put("app/a", "swapped", None)])
        .or_else([TxnOp::get("app/a", None)]);
    assert!(c.txn(swap.clone()).await.unwrap().succeeded());
    assert!(!c.txn(swap).await.unwrap().succeeded());

    // Delete with prev_kv.
    let del = c.delete("app/b", Some(etcd_client::DeleteOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(del.deleted(), 1);
    assert_eq!(del.prev_kvs()[0].value(), b"3");

    // Watch saw every change in order, the delete with prev_kv.
    let mut events = Vec::new();
    while events.len() < 5 {
        let resp = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap().unwrap();
        for e in resp.events() {
            events.push((e.event_type(), e.kv().unwrap().key().to_vec(), e.kv().unwrap().mod_revision(), e.prev_kv().map(|p| p.value().to_vec())));
        }
    }
    let revs: Vec<i64> = events.iter().map(|e| e.2).collect();
    assert_eq!(revs, (start..start + 5).collect::<Vec<_>>());
    assert_eq!(events[4].0, EventType::Delete);
    assert_eq!(events[4].3.as_deref(), Some(&b"3"[..]));

    // RequestProgress on the same stream.
    watch.request_progress().await.unwrap();
    let progress = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap().unwrap();
    assert!(progress.events().is_empty());
    assert_eq!(progress.watch_id(), -1);

    // Lease: grant, attach, keep alive, time to live, list, revoke (deletes the key).
    let lease = c.lease_grant(30, None).await.unwrap();
    c.put("app/leased", "x", Some(PutOptions::new().with_lease(lease.id()))).await.unwrap();
    let (mut keeper, mut acks) = c.lease_keep_alive(lease.id()).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(10), acks.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(ack.id(), lease.id());
    assert!(ack.ttl() > 0);
    let ttl = c.lease_time_to_live(lease.id(), Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!(ttl.keys(), &[b"app/leased".to_vec()]);
    assert_eq!(ttl.granted_ttl(), 30);
    let leases = c.leases().await.unwrap();
    assert!(leases.leases().iter().any(|l| l.id() == lease.id()));
    c.lease_revoke(lease.id()).await.unwrap();
    assert_eq!(c.get("app/leased", None).await.unwrap().count(), 0);

    // Idle for longer than two keepalive intervals: the server must tolerate 5 s pings.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = c.get("app/a", None).await.expect("connection survives 5 s client pings");
    assert_eq!(after.kvs()[0].value(), b"swapped");
    let status = c.status().await.unwrap();
    assert_eq!(status.version(), "3.5.16");
}
