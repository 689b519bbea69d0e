//! Client histories through four banks, checked linearizable against an etcd KV model
//! (`bftcd_tests::linearizability`, Wing & Gong with memoization, key by key).
//!
//! Clients at every bank put, read (linearizable Range), delete and compare-and-swap over a
//! few keys while sidecars and etcds are killed and restarted; the recorded history must be
//! linearizable. The same check must fail when one bank serves stale reads (the test-only
//! `--byzantine stale-reads` switch: no read index, blocks applied 300 ms late), or the check
//! would prove nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bftcd_tests::linearizability::{check, Call, History, Ret};
use bftcd_tests::{workspace_root, Chain, Deviant, TestDir};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEYS: usize = 4;
/// A client's operations give up after this; their outcome is then unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(8);

async fn connect(endpoint: &str) -> Option<Client> {
    let opts = ConnectOptions::new().with_timeout(OP_TIMEOUT).with_connect_timeout(Duration::from_secs(2));
    Client::connect([endpoint], Some(opts)).await.ok()
}

/// Which banks a client may use: it reads only through `read_bank` when given, and writes
/// through `write_banks`.
struct Role {
    write_banks: Vec<usize>,
    read_bank: Option<usize>,
}

async fn run_client(id: usize, endpoints: Vec<String>, role: Role, history: Arc<History>, stop: Arc<AtomicBool>) -> usize {
    let mut rng = StdRng::seed_from_u64(1000 + id as u64);
    let mut clients: Vec<Option<Client>> = vec![None; endpoints.len()];
    let mut done = 0;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("lin/k{}", rng.gen_range(0..KEYS));
        let value = format!("c{id}-{n}");
        let read = rng.gen_bool(0.4);
        let bank = match (read, role.read_bank) {
            (true, Some(b)) => b,
            _ => role.write_banks[rng.gen_range(0..role.write_banks.len())],
        };
        if clients[bank].is_none() {
            clients[bank] = connect(&endpoints[bank]).await;
        }
        let Some(c) = clients[bank].as_mut() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let call = if read {
            Call::Get { key: key.clone() }
        } else {
            match rng.gen_range(0..10) {
                0..=4 => Call::Put { key: key.clone(), value: value.clone() },
                5 => Call::Delete { key: key.clone() },
                _ => {
                    // Expect a value some client wrote recently, or absence.
                    let expect = rng.gen_bool(0.7).then(|| format!("c{}-{}", rng.gen_range(0..8), n.saturating_sub(rng.gen_range(0..4))));
                    Call::Cas { key: key.clone(), expect, new: value.clone() }
                }
            }
        };
        let ticket = history.invoke(id, call.clone());
        let result = tokio::time::timeout(OP_TIMEOUT, async {
            match &call {
                Call::Get { key } => c.get(key.as_str(), None).await.map(|r| Ret::Get(r.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))),
                Call::Put { key, value } => c.put(key.as_str(), value.as_str(), None).await.map(|_| Ret::Put),
                Call::Delete { key } => c.delete(key.as_str(), None).await.map(|r| Ret::Delete { deleted: r.deleted() as u64 }),
                Call::Cas { key, expect, new } => {
                    let cmp = match expect {
                        Some(v) => Compare::value(key.as_str(), CompareOp::Equal, v.as_str()),
                        None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                    };
                    let txn = Txn::new().when([cmp]).and_then([TxnOp::put(key.as_str(), new.as_str(), None)]);
                    c.txn(txn).await.map(|r| Ret::Cas { succeeded: r.succeeded() })
                }
            }
        })
        .await;
        match result {
            Ok(Ok(ret)) => {
                history.complete(ticket, ret);
                done += 1;
            }
            // A write that failed may still have committed: its outcome is unknown.
            _ => {
                history.unknown(ticket);
                clients[bank] = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    done
}

/// Runs `clients` for `seconds` (calling `during` once a second) and returns the history.
async fn workload(
    endpoints: Vec<String>,
    roles: Vec<Role>,
    seconds: u64,
    mut during: impl FnMut(u64),
) -> (Vec<bftcd_tests::linearizability::Entry>, usize) {
    let history = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = roles
        .into_iter()
        .enumerate()
        .map(|(i, role)| tokio::spawn(run_client(i, endpoints.clone(), role, history.clone(), stop.clone())))
        .collect();
    for s in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        during(s);
    }
    stop.store(true, Ordering::Relaxed);
    let mut completed = 0;
    for t in tasks {
        completed += t.await.unwrap();
    }
    (history.entries(), completed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_with_crashes_are_linearizable() {
    let dir = TestDir::new("linearizable");
    let (mut chain, _dir) = tokio::task::spawn_blocking(move || (Chain::start(&dir, 4), dir)).await.unwrap();
    let roles = (0..8).map(|_| Role { write_banks: vec![0, 1, 2, 3], read_bank: None }).collect();
    let mut rng = StdRng::seed_from_u64(11);
    // Every 4 s a random bank loses its sidecar or its etcd to kill -9 and gets it back.
    let plan: Vec<(u64, usize, bool)> = (1..5).map(|k| (k * 4, rng.gen_range(0..4), rng.gen_bool(0.5))).collect();
    let endpoints = chain.endpoints();
    let (entries, completed) = workload(endpoints, roles, 20, |s| {
        if let Some(&(_, b, etcd)) = plan.iter().find(|(at, _, _)| *at == s) {
            let bank = &mut chain.banks[b];
            eprintln!("t={s}s: killing bank {} {}", b + 1, if etcd { "etcd" } else { "sidecar" });
            // Restarting waits for the process to be ready; let the clients' tasks run meanwhile.
            tokio::task::block_in_place(|| {
                if etcd {
                    bank.etcd.kill();
                    bank.etcd.restart();
                } else {
                    bank.sidecar.kill();
                    bank.sidecar.restart();
                }
            });
        }
    })
    .await;
    let unknown = entries.iter().filter(|e| e.completed.is_none()).count();
    eprintln!("{} operations recorded: {completed} completed, {unknown} with unknown outcome", entries.len());
    assert!(completed > 300, "too few operations completed ({completed}) to test anything");
    match check(&entries) {
        Ok(stats) => eprintln!("linearizable: {stats:?}"),
        Err(v) => panic!("{v}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_serving_stale_reads_is_caught() {
    let bin = workspace_root().join("target/byzantine/debug/bftcd");
    assert!(bin.exists(), "{} missing: scripts/test.sh builds it", bin.display());
    let dir = TestDir::new("linearizable-stale");
    let deviant = Deviant { bank: 3, bin, args: vec!["--byzantine=stale-reads".into()] };
    let (chain, _dir) = tokio::task::spawn_blocking(move || (Chain::start_with(&dir, 4, Some(deviant)), dir)).await.unwrap();
    // Writers at the honest banks, readers at the stale one.
    let roles = (0..6)
        .map(|i| if i < 3 { Role { write_banks: vec![0, 1, 2], read_bank: None } } else { Role { write_banks: vec![0, 1, 2], read_bank: Some(3) } })
        .collect();
    let (entries, completed) = workload(chain.endpoints(), roles, 8, |_| {}).await;
    eprintln!("{} operations recorded, {completed} completed", entries.len());
    // No minimum count: a loaded machine completes fewer, and a caught violation is a violation.
    assert!(completed > 0, "no operation completed");
    match check(&entries) {
        Ok(stats) => panic!("stale reads went unnoticed in {completed} completed operations: {stats:?}"),
        Err(v) => {
            assert!(!v.budget_exhausted(), "inconclusive instead of a violation: {v}");
            eprintln!("caught as expected:\n{v}");
        }
    }
}
