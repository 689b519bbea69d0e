//! A randomized, concurrent workload through all four banks at once (puts, deletes, range
//! deletes, conditional Txns, reads, compactions, keys on leases of 2 to 4 s that expire during the
//! run and on 60 s leases that outlive it). Afterwards every key's value, create and mod
//! revision, version and lease are identical in all four banks' etcds, and so is HashKV: the
//! apply path, batching included, is a pure function of the committed log.

use std::time::Duration;

use bftcd_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    lease_client::LeaseClient,
    maintenance_client::MaintenanceClient,
    request_op::Request as Req,
    CompactionRequest, Compare, DeleteRangeRequest, HashKvRequest, LeaseGrantRequest, LeaseLeasesRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};
use bftcd_tests::{Chain, TestDir};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .timeout(Duration::from_secs(25))
        .connect_lazy()
}

/// Longer than the workload's short lease TTLs plus the expiry's own delay.
const LEASES_GONE: Duration = Duration::from_secs(9);

fn key(rng: &mut StdRng) -> Vec<u8> {
    format!("wl/k{:02}", rng.gen_range(0..24)).into_bytes()
}

/// One client's share of the workload; errors (a compacted revision, a timeout) are fine, the
/// point is what ends up in the banks.
async fn client(endpoint: String, seed: u64, ops: usize) -> usize {
    let mut kv = KvClient::new(channel(&endpoint));
    let mut leases = LeaseClient::new(channel(&endpoint));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ok = 0;
    for _ in 0..ops {
        let r = match rng.gen_range(0..100) {
            // A key on a short lease, which expires during the run.
            0..=4 => match leases.lease_grant(LeaseGrantRequest { ttl: [2, 3, 4, 60][rng.gen_range(0..4)], id: 0 }).await {
                Ok(g) => {
                    let lease = g.into_inner().id;
                    kv.put(PutRequest { key: key(&mut rng), value: b"leased".to_vec(), lease, ..Default::default() }).await.map(|_| ())
                }
                Err(e) => Err(e),
            },
            5..=44 => kv.put(PutRequest { key: key(&mut rng), value: format!("v{}", rng.gen::<u32>()).into(), prev_kv: rng.gen(), ..Default::default() }).await.map(|_| ()),
            45..=54 => kv.delete_range(DeleteRangeRequest { key: key(&mut rng), prev_kv: true, ..Default::default() }).await.map(|_| ()),
            55..=59 => {
                let a = key(&mut rng);
                let mut b = key(&mut rng);
                if b < a {
                    b = a.clone();
                    b.push(b'~');
                }
                kv.delete_range(DeleteRangeRequest { key: a, range_end: b, ..Default::default() }).await.map(|_| ())
            }
            60..=84 => {
                // Kubernetes-style guarded update: If ModRevision(k) == seen Then Put Else Get.
                let k = key(&mut rng);
                let seen = kv.range(RangeRequest { key: k.clone(), serializable: true, ..Default::default() }).await.map(|r| r.into_inner().kvs.first().map(|kv| kv.mod_revision).unwrap_or(0)).unwrap_or(0);
                let then = if rng.gen_bool(0.8) {
                    RequestOp { request: Some(Req::RequestPut(PutRequest { key: k.clone(), value: b"guarded".to_vec(), ..Default::default() })) }
                } else {
                    RequestOp { request: Some(Req::RequestDeleteRange(DeleteRangeRequest { key: k.clone(), ..Default::default() })) }
                };
                let cmp = Compare { result: CompareResult::Equal as i32, target: CompareTarget::Mod as i32, key: k.clone(), target_union: Some(TargetUnion::ModRevision(seen)), range_end: vec![] };
                let get = RequestOp { request: Some(Req::RequestRange(RangeRequest { key: k, ..Default::default() })) };
                kv.txn(TxnRequest { compare: vec![cmp], success: vec![then], failure: vec![get] }).await.map(|_| ())
            }
            85..=97 => kv.range(RangeRequest { key: b"wl/".to_vec(), range_end: b"wl0".to_vec(), ..Default::default() }).await.map(|_| ()),
            _ => {
                let rev = kv.range(RangeRequest { key: b"wl/".to_vec(), count_only: true, ..Default::default() }).await.map(|r| r.into_inner().header.unwrap().revision).unwrap_or(0);
                kv.compact(CompactionRequest { revision: (rev - 20).max(1), physical: false }).await.map(|_| ())
            }
        };
        ok += r.is_ok() as usize;
    }
    ok
}

/// Each bank's own etcd, read directly: (revision, HashKV, compact revision, every workload key
/// with value, create and mod revision, version and lease).
/// Revision, HashKV, compact revision, every key (value, create/mod revision, version, lease),
/// and the leases the sidecar reports.
type BankState = (i64, u32, i64, Vec<(Vec<u8>, Vec<u8>, i64, i64, i64, i64)>, Vec<i64>);

async fn bank_states(chain: &Chain) -> Vec<BankState> {
    let mut states = Vec::new();
    for b in &chain.banks {
        let mut kv = KvClient::new(channel(&b.etcd.endpoint()));
        let all = kv.range(RangeRequest { key: b"wl/".to_vec(), range_end: b"wl0".to_vec(), ..Default::default() }).await.unwrap().into_inner();
        let rev = all.header.as_ref().unwrap().revision;
        let kvs = all.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone(), kv.create_revision, kv.mod_revision, kv.version, kv.lease)).collect();
        let mut m = MaintenanceClient::new(channel(&b.etcd.endpoint()));
        let hash = m.hash_kv(HashKvRequest { revision: rev }).await.unwrap().into_inner();
        let mut l = LeaseClient::new(channel(&b.sidecar.endpoint()));
        let mut leases: Vec<i64> = l.lease_leases(LeaseLeasesRequest {}).await.unwrap().into_inner().leases.iter().map(|s| s.id).collect();
        leases.sort_unstable();
        states.push((rev, hash.hash, hash.compact_revision, kvs, leases));
    }
    states
}

/// Lets the short leases expire, waits until every bank is at the same revision, and asserts
/// that all four banks hold the same state; returns it.
async fn settle_and_compare(chain: Chain, timeout: Duration, when: &str) -> BankState {
    tokio::time::sleep(LEASES_GONE).await;
    let chain = tokio::task::spawn_blocking(move || {
        chain.wait_converged(&[0, 1, 2, 3], timeout);
        chain
    })
    .await
    .unwrap();
    let mut states = bank_states(&chain).await;
    for (b, s) in states.iter().enumerate() {
        assert_eq!(s, &states[0], "bank {} differs from bank 1 {when}", b + 1);
    }
    states.swap_remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_concurrent_workload_leaves_all_banks_identical() {
    let dir = TestDir::new("workload");
    let chain = tokio::task::spawn_blocking(move || (Chain::start(&dir, 4), dir)).await.unwrap();
    let (chain, _dir) = chain;
    let endpoints = chain.endpoints();
    let tasks: Vec<_> = (0..12u64).map(|c| tokio::spawn(client(endpoints[(c % 4) as usize].clone(), c, 60))).collect();
    let mut succeeded = 0;
    for t in tasks {
        succeeded += t.await.unwrap();
    }
    assert!(succeeded > 400, "too few operations succeeded ({succeeded}) to test anything");
    let s = settle_and_compare(chain, Duration::from_secs(60), "after the workload").await;
    eprintln!(
        "{succeeded} operations succeeded; all banks at revision {} with {} keys and {} leases, HashKV {:x}, compacted at {}",
        s.0, s.3.len(), s.4.len(), s.1, s.2
    );
}

/// The same workload while a random bank's sidecar or etcd is killed with -9 (and restarted)
/// every few seconds: same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workload_with_crashes_leaves_all_banks_identical() {
    let dir = TestDir::new("workload-crashes");
    let (mut chain, _dir) = tokio::task::spawn_blocking(move || (Chain::start(&dir, 4), dir)).await.unwrap();
    let endpoints = chain.endpoints();
    let tasks: Vec<_> = (0..12u64).map(|c| tokio::spawn(client(endpoints[(c % 4) as usize].clone(), 100 + c, 80))).collect();
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1500..3000))).await;
        let b = rng.gen_range(0..4);
        let etcd = round % 2 == 1;
        eprintln!("killing bank {} {}", b + 1, if etcd { "etcd" } else { "sidecar" });
        chain = tokio::task::spawn_blocking(move || {
            let bank = &mut chain.banks[b];
            if etcd {
                bank.etcd.kill();
                std::thread::sleep(Duration::from_millis(500));
                bank.etcd.restart();
            } else {
                bank.sidecar.kill();
                std::thread::sleep(Duration::from_millis(500));
                bank.sidecar.restart();
            }
            chain
        })
        .await
        .unwrap();
    }
    let mut succeeded = 0;
    for t in tasks {
        succeeded += t.await.unwrap();
    }
    assert!(succeeded > 300, "too few operations succeeded ({succeeded})");
    let s = settle_and_compare(chain, Duration::from_secs(90), "after the crashes").await;
    eprintln!("{succeeded} operations succeeded across crashes; all banks at revision {} with {} keys and {} leases", s.0, s.3.len(), s.4.len());
}
