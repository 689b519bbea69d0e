//! Leases decided by consensus time on four banks: expiry is one committed operation, so a leased
//! key disappears from every bank at the same revision; keepalives are ordered writes, so a kept
//! lease survives leader changes and a bank's crash; every bank answers TimeToLive alike.

use std::time::{Duration, Instant};

use bftcd_tests::{Chain, TestDir};
use etcd_client::{Client, ConnectOptions, EventType, LeaseTimeToLiveOptions, PutOptions, WatchOptions};

/// The consensus' bound on how far a block's time may be ahead of a bank's clock
/// (`skew_ms` in the sequencer, docs/consensus.md).
const SKEW: Duration = Duration::from_secs(2);

async fn connect(endpoint: &str) -> Client {
    let opts = ConnectOptions::new().with_timeout(Duration::from_secs(20)).with_connect_timeout(Duration::from_secs(5));
    Client::connect([endpoint], Some(opts)).await.expect("connect")
}

async fn clients(chain: &Chain) -> Vec<Client> {
    let mut out = Vec::new();
    for e in chain.endpoints() {
        out.push(connect(&e).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_deletes_its_key_at_the_same_revision_on_every_bank() {
    let dir = TestDir::new("leases-expiry");
    let chain = Chain::start(&dir, 4);
    let mut c = clients(&chain).await;
    let start = c[0].put("lease/marker", "m", None).await.unwrap().header().unwrap().revision() + 1;
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    let mut watches = Vec::new();
    for client in c.iter_mut() {
        let opts = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(start);
        watches.push(client.watch("lease/", Some(opts)).await.unwrap());
    }

    let lease = c[0].lease_grant(5, None).await.unwrap();
    let granted_at = Instant::now();
    assert_eq!(lease.ttl(), 5);
    c[1].put("lease/k", "held", Some(PutOptions::new().with_lease(lease.id()))).await.unwrap();
    for (b, client) in c.iter_mut().enumerate() {
        let ttl = client.lease_time_to_live(lease.id(), Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
        assert_eq!(ttl.granted_ttl(), 5, "bank {b}");
        assert!((3..=5).contains(&ttl.ttl()), "bank {b}: remaining TTL {}", ttl.ttl());
        assert_eq!(ttl.keys(), &[b"lease/k".to_vec()], "bank {b}");
    }

    // Each bank's watch: the PUT, then the expiry's DELETE with prev_kv.
    let mut deletes = Vec::new();
    for (b, w) in watches.iter_mut().enumerate() {
        let mut seen = Vec::new();
        while !seen.iter().any(|(t, _, _, _)| *t == EventType::Delete) {
            let resp = tokio::time::timeout(Duration::from_secs(30), w.message())
                .await
                .unwrap_or_else(|_| panic!("bank {b}: no DELETE within 30 s of the grant"))
                .unwrap()
                .unwrap();
            for e in resp.events() {
                let kv = e.kv().unwrap();
                seen.push((e.event_type(), kv.key().to_vec(), kv.mod_revision(), e.prev_kv().map(|p| p.value().to_vec())));
            }
        }
        if b == 0 {
            let elapsed = granted_at.elapsed();
            println!("lease expired {elapsed:?} after its grant was acknowledged (TTL 5 s)");
            assert!(elapsed >= Duration::from_secs(5) - SKEW, "expired early: {elapsed:?}");
            // The scan interval, one commit and a loaded 2-core machine on top of the skew.
            assert!(elapsed <= Duration::from_secs(5) + SKEW + Duration::from_secs(4), "expired late: {elapsed:?}");
        }
        let delete = seen.into_iter().find(|e| e.0 == EventType::Delete).unwrap();
        assert_eq!(delete.1, b"lease/k", "bank {b}");
        assert_eq!(delete.3.as_deref(), Some(&b"held"[..]), "bank {b}: DELETE without prev_kv");
        deletes.push(delete.2);
    }
    assert!(deletes.iter().all(|r| *r == deletes[0]), "DELETE revisions differ across banks: {deletes:?}");

    let rev = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    assert_eq!(rev, deletes[0], "the expiry is the last change");
    for (b, client) in c.iter_mut().enumerate() {
        assert_eq!(client.get("lease/k", None).await.unwrap().count(), 0, "bank {b}");
        assert_eq!(client.lease_time_to_live(lease.id(), None).await.unwrap().ttl(), -1, "bank {b}");
        assert!(client.leases().await.unwrap().leases().is_empty(), "bank {b}");
        // Every bank's own etcd dropped its copy of the lease as well.
        let mut direct = connect(&chain.banks[b].etcd.endpoint()).await;
        assert_eq!(direct.lease_time_to_live(lease.id(), None).await.unwrap().ttl(), -1, "bank {b}'s etcd");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_leases_survive_leader_changes_and_a_bank_crash() {
    let dir = TestDir::new("leases-keepalive");
    let mut chain = Chain::start(&dir, 4);
    let mut c = clients(&chain).await;
    let kept = c[2].lease_grant(8, None).await.unwrap().id();
    let dropped = c[0].lease_grant(4, None).await.unwrap().id();
    c[2].put("kept/k", "v", Some(PutOptions::new().with_lease(kept))).await.unwrap();
    c[0].put("dropped/k", "v", Some(PutOptions::new().with_lease(dropped))).await.unwrap();

    // Keep `kept` alive through bank 3 every second for 16 s, two TTLs. Leaders rotate with
    // every view; bank 4's sidecar is killed for a while, so some views fail too (each failed
    // view delays commits by a view timeout or more, hence a TTL with room for several).
    let (mut keeper, mut acks) = c[2].lease_keep_alive(kept).await.unwrap();
    let until = Instant::now() + Duration::from_secs(16);
    let mut killed = false;
    let mut acked = 0;
    while Instant::now() < until {
        keeper.keep_alive().await.unwrap();
        let ack = tokio::time::timeout(Duration::from_secs(10), acks.message()).await.unwrap().unwrap().unwrap();
        assert!(ack.ttl() == 8, "keepalive answered TTL {} (lease lost?)", ack.ttl());
        acked += 1;
        if !killed && acked == 3 {
            chain.banks[3].sidecar.kill();
            killed = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    chain.banks[3].sidecar.restart();
    let mut c3 = connect(&chain.banks[3].sidecar.endpoint()).await;
    // One more renewal now that bank 4 is back: the restart can take seconds on a loaded
    // machine, and the checks below must run well inside the TTL that follows.
    keeper.keep_alive().await.unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(10), acks.message()).await.unwrap().unwrap().unwrap();
    assert!(ack.ttl() == 8, "keepalive after the restart answered TTL {} (lease lost?)", ack.ttl());

    // `dropped` expired long ago, `kept` is alive; all four banks (the restarted one from its
    // replayed ledger) agree on both. Keepalives move no revision, so a write after the last
    // one is what tells when every bank has applied them all.
    c[0].put("sync/marker", "after the keepalives", None).await.unwrap();
    let rev = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(60));
    c[3] = c3.clone();
    // Remaining TTL per bank, asked back to back and shifted by the time between the questions
    // (the seconds tick on while a loaded machine answers): the deadlines must agree.
    let first = Instant::now();
    let mut remaining = Vec::new();
    for client in c.iter_mut() {
        let ttl = client.lease_time_to_live(kept, None).await.unwrap().ttl();
        remaining.push(ttl as f64 + first.elapsed().as_secs_f64());
    }
    for (b, client) in c.iter_mut().enumerate() {
        assert_eq!(client.get("dropped/k", None).await.unwrap().count(), 0, "bank {b}");
        assert_eq!(client.get("kept/k", None).await.unwrap().count(), 1, "bank {b}");
        assert_eq!(client.lease_time_to_live(dropped, None).await.unwrap().ttl(), -1, "bank {b}");
        let ttl = client.lease_time_to_live(kept, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
        assert_eq!(ttl.granted_ttl(), 8, "bank {b}");
        assert_eq!(ttl.keys(), &[b"kept/k".to_vec()], "bank {b}");
        let ids: Vec<i64> = client.leases().await.unwrap().leases().iter().map(|l| l.id()).collect();
        assert_eq!(ids, vec![kept], "bank {b}");
    }
    println!("remaining TTL per bank (shifted by query time): {remaining:?} at revision {rev}");
    let lo = remaining.iter().copied().fold(f64::MAX, f64::min);
    let hi = remaining.iter().copied().fold(f64::MIN, f64::max);
    // Whole seconds are reported, truncated: one second apart at most, plus scheduling slack.
    assert!(hi - lo < 1.5, "banks disagree on the lease's deadline: {remaining:?}");

    // Once the keepalives stop, it expires everywhere.
    drop(keeper);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c3.get("kept/k", None).await.unwrap().count() > 0 {
        assert!(Instant::now() < deadline, "the kept lease never expired after its keepalives stopped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    for (b, client) in c.iter_mut().enumerate() {
        assert_eq!(client.get("kept/k", None).await.unwrap().count(), 0, "bank {b}");
    }
}
