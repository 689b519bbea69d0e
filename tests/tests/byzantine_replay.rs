//! A Byzantine leader replays an operation committed long ago (issue 11, "replay after
//! restart"): bank 4, run by the test-only build, adds to its proposals the oldest operation of
//! its ledger still within the acceptance window from a block more than 1,024 blocks back. Before
//! the fix a restarted bank remembered the operations of its last 1,024 blocks only, so after the
//! honest banks restarted they voted for the replay and a client's old write was applied again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bftcd_proto::bftcd::operation::Request;
use bftcd_tests::{Chain, Deviant, Etcdctl, TestDir};

/// How deep bank 4 looks for what to replay: beyond the 1,024 blocks remembered before the fix.
const REPLAY_DEPTH: u64 = 1030;
const REFUSED: &str = "repeats an operation committed before";

fn byzantine_bin() -> PathBuf {
    bftcd_tests::bins::try_byzantine_bin("debug").unwrap_or_else(|e| panic!("{e}"))
}

fn ledger_of(chain: &Chain, bank: usize) -> PathBuf {
    chain.banks[bank].sidecar.data_dir().join("ledger.log")
}

/// (height, operation ids) of every block in a ledger.
fn blocks(ledger: &Path) -> Vec<(u64, Vec<(u32, u64)>)> {
    let mut out = Vec::new();
    bftcd_sequencer::LedgerFile::scan(ledger, |_, cb| {
        let b = cb.block.as_ref().ok_or("no block")?;
        out.push((b.height, b.operations.iter().filter_map(|op| op.id.as_ref().map(|i| (i.bank, i.nonce))).collect()));
        Ok(())
    })
    .unwrap();
    out
}

/// Height of the block that put `value` at `key`.
fn height_of_put(ledger: &Path, key: &[u8], value: &[u8]) -> Option<u64> {
    let mut found = None;
    bftcd_sequencer::LedgerFile::scan(ledger, |_, cb| {
        let b = cb.block.as_ref().ok_or("no block")?;
        let puts = b.operations.iter().any(|op| matches!(&op.request, Some(Request::Put(p)) if p.key == key && p.value == value));
        if puts && found.is_none() {
            found = Some(b.height);
        }
        Ok(())
    })
    .unwrap();
    found
}

/// (value as etcdctl's JSON shows it, base64; version; mod revision) of `key` at `ctl`'s bank.
fn get(ctl: &Etcdctl, key: &str) -> (String, i64, i64) {
    let out = ctl.run(&["get", key, "-w", "json"]).expect_success().to_string();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let kv = &v["kvs"][0];
    (kv["value"].as_str().unwrap_or_default().to_string(), kv["version"].as_i64().unwrap_or(0), kv["mod_revision"].as_i64().unwrap_or(0))
}

/// "v2" in base64, as etcdctl's JSON shows values.
const V2: &str = "djI=";

fn ctl(chain: &Chain, bank: usize) -> Etcdctl {
    chain.etcdctl(bank).with_timeout(Duration::from_secs(40))
}

fn hashkv(ctl: &Etcdctl) -> i64 {
    let out = ctl.run(&["endpoint", "hashkv", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(out.expect_success().trim()).unwrap();
    v[0]["HashKV"]["hash"].as_i64().unwrap()
}

/// The honest banks' logs since their last start.
fn honest_logs_since_restart(chain: &Chain) -> String {
    (0..3).map(|b| bftcd_tests::dir::log_of_last_run(chain.banks[b].sidecar.stderr_log())).collect()
}

/// Many small writes from `writers` clients, through the honest banks, until `done`.
fn fill(chain: &Chain, writers: usize, done: impl Fn() -> bool) -> u64 {
    let endpoints: Vec<String> = (0..3).map(|b| chain.banks[b].sidecar.client_url()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (endpoint, stop, written) = (endpoints[w % 3].clone(), stop.clone(), written.clone());
            rt.spawn(async move {
                let mut c = etcd_client::Client::connect([endpoint], None).await.expect("connect");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    c.put(format!("fill/{w}/{}", i % 64), "x", None).await.expect("a filler write");
                    written.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    while !done() {
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    written.load(Ordering::Relaxed)
}

#[test]
fn a_leader_cannot_replay_a_committed_operation_after_the_honest_banks_restart() {
    let started = Instant::now();
    let dir = TestDir::new("byzantine-replay");
    let deviant = Deviant { bank: 3, bin: byzantine_bin(), args: vec![format!("--byzantine=replay={REPLAY_DEPTH}")] };
    let mut chain = Chain::start_with(&dir, 4, Some(deviant));
    ctl(&chain, 0).run(&["put", "k", "v1"]).expect_success();
    ctl(&chain, 1).run(&["put", "k", "v2"]).expect_success();
    let written_at = Instant::now();
    let before = get(&ctl(&chain, 0), "k");
    assert_eq!((before.0.as_str(), before.1), (V2, 2));
    let ledger = ledger_of(&chain, 0);
    let h1 = height_of_put(&ledger, b"k", b"v1").expect("k=v1 is in the ledger");

    // v1's block sinks more than REPLAY_DEPTH blocks below the tip, well within the 2 minutes
    // an operation may still be ordered.
    let target = h1 + REPLAY_DEPTH + 10;
    let filled = fill(&chain, 6, || blocks(&ledger).len() as u64 >= target || written_at.elapsed() > Duration::from_secs(95));
    let height = blocks(&ledger).len() as u64;
    eprintln!("{filled} filler writes took the chain to height {height} in {:?}", written_at.elapsed());
    // A replay must be proposed while k=v1 may still be ordered (2 minutes after its submission).
    assert!(height >= target, "the chain is too slow here to sink k=v1 {REPLAY_DEPTH} blocks in 95 s: height {height}");

    for b in 0..3 {
        chain.banks[b].sidecar.restart();
    }
    eprintln!("honest banks restarted {:?} after k=v1", written_at.elapsed());

    // Honest writes go on; bank 4 leads its share of views and proposes the replay.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut after = 0;
    loop {
        ctl(&chain, after % 3).run(&["put", &format!("after/{after}"), "v"]).expect_success();
        after += 1;
        let replayed = get(&ctl(&chain, 0), "k").0 != V2;
        if replayed || honest_logs_since_restart(&chain).contains(REFUSED) {
            break;
        }
        assert!(Instant::now() < deadline, "bank 4 never proposed its replay ({after} writes)");
    }
    for b in 0..3 {
        ctl(&chain, b).run(&["put", &format!("last/{b}"), "v"]).expect_success();
    }
    assert!(written_at.elapsed() < Duration::from_secs(110), "too slow to test the acceptance window: {:?}", written_at.elapsed());

    // k is still v2 everywhere, written twice, never a third time.
    let rev = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    for b in 0..4 {
        let (value, version, mod_rev) = get(&ctl(&chain, b), "k");
        assert_eq!((value.as_str(), version, mod_rev), (V2, 2, before.2), "bank {} at revision {rev}", b + 1);
    }
    // No honest ledger holds an operation twice.
    for b in 0..3 {
        let mut seen = HashSet::new();
        for (height, ids) in blocks(&ledger_of(&chain, b)) {
            for id in ids {
                assert!(seen.insert(id), "bank {}'s ledger repeats operation {id:?} at height {height}", b + 1);
            }
        }
    }
    assert!(honest_logs_since_restart(&chain).contains(REFUSED), "no honest bank refused the replay");
    let hashes: Vec<i64> = (0..3).map(|b| hashkv(&chain.etcdctl(b))).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "honest banks diverged: {hashes:?}");
    eprintln!("done in {:?}", started.elapsed());
}
