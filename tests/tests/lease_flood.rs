//! Lease-expiry amplification (issue 11): a hostile client grants thousands of short leases
//! through bank 1 while an honest client writes through bank 2. Every due lease must be asked to
//! expire by a bounded number of banks, a bounded number of times, so the honest writes keep
//! committing; every lease still expires on every bank, and the banks end identical.
//!
//! `BFTCD_LEASE_FLOOD_LEASES` changes the number of leases by hand (default 1,000: on a loaded
//! 2-core machine the apply engine grants and revokes only some tens of leases a second, one etcd
//! call each). The honest write rate during the flood, as a fraction of the rate just before it,
//! is printed, not asserted (timings are for benchmarks, design.md §7).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bftcd_tests::kv::{hashkv, honest_writer};
use bftcd_tests::{Chain, TestDir};
use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions};

/// Leases granted by the hostile client, by default.
const LEASES: usize = 1_000;
/// Their TTL in seconds: short, so they fall due while more are being granted.
const TTL: i64 = 3;
/// One lease in this many gets a key attached.
const KEY_EVERY: usize = 10;
/// Concurrent grant streams of the hostile client.
const GRANTERS: usize = 32;
/// The honest client's rate is measured this long before the flood.
const BASELINE: Duration = Duration::from_secs(5);
/// Every lease must be gone from every bank within this of the last grant.
const EXPIRY_LIMIT: Duration = Duration::from_secs(45);

async fn connect(endpoint: &str) -> Client {
    let opts = ConnectOptions::new().with_timeout(Duration::from_secs(30)).with_connect_timeout(Duration::from_secs(5));
    Client::connect([endpoint], Some(opts)).await.expect("connect")
}

/// Grants `count` leases through `client`, attaching a key to every KEY_EVERY-th. A grant or a
/// Put refused for load (bank 1's own mempool share) is tried again: the client is hostile,
/// not the test. Returns the leases granted and the keys attached.
async fn granter(mut client: Client, first: usize, count: usize, attached: Arc<AtomicUsize>) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    for i in first..first + count {
        let id = loop {
            match client.lease_grant(TTL, None).await {
                Ok(r) => break r.id(),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        ids.push(id);
        if i % KEY_EVERY == 0 {
            // Fails only if the lease expired meanwhile (a loaded machine), or for load.
            if client.put(format!("flood/{i:06}"), "leased", Some(PutOptions::new().with_lease(id))).await.is_ok() {
                attached.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    ids
}

/// The honest writer ended before it was told to: its panic is the test's.
fn writer_stopped(r: Result<(usize, Duration), tokio::task::JoinError>) -> ! {
    match r {
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        other => panic!("the honest writer stopped during the flood: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_flood_through_one_bank_does_not_stall_the_others_writes() {
    let leases: usize = std::env::var("BFTCD_LEASE_FLOOD_LEASES").ok().and_then(|v| v.parse().ok()).unwrap_or(LEASES);
    let dir = TestDir::new("lease-flood");
    let chain = Chain::start(&dir, 4);
    let endpoints = chain.endpoints();
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));

    // The honest client alone.
    let stop = Arc::new(AtomicBool::new(false));
    let baseline = tokio::spawn(honest_writer(endpoints[1].clone(), "honest/baseline".into(), stop.clone()));
    tokio::time::sleep(BASELINE).await;
    stop.store(true, Ordering::Relaxed);
    let (base_writes, base_slowest) = baseline.await.unwrap();
    let base_rate = base_writes as f64 / BASELINE.as_secs_f64();

    // The flood, with the honest client writing through bank 2 all along.
    let stop = Arc::new(AtomicBool::new(false));
    let flood_started = Instant::now();
    let mut honest = tokio::spawn(honest_writer(endpoints[1].clone(), "honest/flood".into(), stop.clone()));
    let hostile = connect(&endpoints[0]).await;
    let attached = Arc::new(AtomicUsize::new(0));
    let per = leases.div_ceil(GRANTERS);
    let granters: Vec<_> = (0..GRANTERS)
        .map(|g| {
            let count = per.min(leases.saturating_sub(g * per));
            tokio::spawn(granter(hostile.clone(), g * per, count, attached.clone()))
        })
        .collect();
    // A failed honest write fails the test at once, not after the flood.
    let granted = tokio::select! {
        g = futures::future::join_all(granters) => g,
        r = &mut honest => writer_stopped(r),
    };
    let ids: Vec<i64> = granted.into_iter().flat_map(|g| g.unwrap()).collect();
    let granted_in = flood_started.elapsed();
    assert_eq!(ids.len(), leases);
    eprintln!("granted {} leases through bank 1 in {granted_in:?}, {} with a key", ids.len(), attached.load(Ordering::Relaxed));

    // Every lease expires on every bank.
    let mut clients = Vec::new();
    for e in &endpoints {
        clients.push(connect(e).await);
    }
    let last_grant = Instant::now();
    for (b, c) in clients.iter_mut().enumerate() {
        loop {
            let left = c.leases().await.unwrap().leases().len();
            if left == 0 {
                break;
            }
            assert!(last_grant.elapsed() < EXPIRY_LIMIT, "bank {}: {left} leases still live {EXPIRY_LIMIT:?} after the last grant", b + 1);
            if honest.is_finished() {
                writer_stopped((&mut honest).await);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let flood_lasted = flood_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (flood_writes, flood_slowest) = honest.await.unwrap();
    let flood_rate = flood_writes as f64 / flood_lasted.as_secs_f64();
    eprintln!(
        "honest writes through bank 2: {base_rate:.1}/s alone (slowest {base_slowest:?}), {flood_rate:.1}/s during the flood \
         ({flood_writes} in {flood_lasted:?}, slowest {flood_slowest:?}): {:.2} of the rate without it",
        flood_rate / base_rate.max(f64::MIN_POSITIVE)
    );
    assert!(flood_writes >= 20, "only {flood_writes} honest writes committed during the flood");

    // Keys gone, leases unknown, on every bank.
    let sample: Vec<i64> = ids.iter().step_by((ids.len() / 50).max(1)).copied().collect();
    for (b, c) in clients.iter_mut().enumerate() {
        let left = c.get("flood/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap().count();
        assert_eq!(left, 0, "bank {}: leased keys left", b + 1);
        for id in &sample {
            assert_eq!(c.lease_time_to_live(*id, None).await.unwrap().ttl(), -1, "bank {}: lease {id:x}", b + 1);
        }
    }
    let rev = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(60));
    let hashes: Vec<(i64, i64)> = (0..4).map(|b| hashkv(&chain.etcdctl(b))).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "HashKV or revision differs between banks: {hashes:?}");
    assert_eq!(hashes[0].1, rev);
    // Each bank's own etcd dropped its copies too (sampled).
    for (b, bank) in chain.banks.iter().enumerate() {
        let mut direct = connect(&bank.etcd.endpoint()).await;
        for id in sample.iter().take(10) {
            assert_eq!(direct.lease_time_to_live(*id, None).await.unwrap().ttl(), -1, "bank {}'s etcd: lease {id:x}", b + 1);
        }
    }
    eprintln!("converged at revision {rev}; HashKV {:x} on all four", hashes[0].0);
}
