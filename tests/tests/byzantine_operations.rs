//! A Byzantine bank's operations (docs/consensus.md, threat model): one bank of four, run by
//! the test-only build (`--features byzantine`, target/byzantine), forwards operations signed
//! with its own key that the others must not let halt or starve ordering. The honest banks'
//! writes must still commit within the write timeout.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bftcd_tests::{Chain, Deviant, TestDir};

/// The test-only build with `--byzantine` (scripts/test.sh makes it).
fn byzantine_bin() -> PathBuf {
    bftcd_tests::bins::try_byzantine_bin("debug").unwrap_or_else(|e| panic!("{e}"))
}

fn log_of(chain: &Chain, bank: usize) -> String {
    std::fs::read_to_string(chain.banks[bank].sidecar.stderr_log()).unwrap_or_default()
}

/// Writes `rounds` keys through each honest bank (0, 1, 2; the sidecars' write timeout is 20 s)
/// and checks every honest bank then reads all of them; returns the slowest write.
fn honest_writes_commit(chain: &Chain, prefix: &str, rounds: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    let mut written = Vec::new();
    for round in 0..rounds {
        for b in 0..3 {
            let key = format!("{prefix}/{b}/{round}");
            let started = Instant::now();
            // etcdctl's own 5 s would cut a write short: the sidecar's write timeout decides.
            let ctl = chain.etcdctl(b).with_timeout(Duration::from_secs(40)).with_global_arg("--command-timeout=30s");
            let out = ctl.run(&["put", &key, "v"]);
            assert!(out.success(), "bank {}'s write {key} failed after {:?}: {}", b + 1, started.elapsed(), out.stderr);
            slowest = slowest.max(started.elapsed());
            written.push(key);
        }
    }
    for b in 0..3 {
        let keys = chain.etcdctl(b).run(&["get", &format!("{prefix}/"), "--prefix", "--keys-only"]).expect_success().to_string();
        for k in &written {
            assert!(keys.lines().any(|l| l == k), "bank {} lacks {k}", b + 1);
        }
    }
    slowest
}

#[test]
fn a_bank_forwarding_invalid_operations_cannot_halt_ordering() {
    // Bank 4 forwards, every 2 s, an operation larger than any block (before the fix every
    // leader proposed it, oldest first, and every bank refused the block: ordering halted), one
    // writing the reserved prefix and a Txn putting one key twice, each validly signed.
    let dir = TestDir::new("byzantine-forward-invalid");
    let deviant = Deviant { bank: 3, bin: byzantine_bin(), args: vec!["--byzantine=forward-invalid".into()] };
    let chain = Chain::start_with(&dir, 4, Some(deviant));
    std::thread::sleep(Duration::from_secs(3));
    let slowest = honest_writes_commit(&chain, "fi", 4);
    eprintln!("slowest honest write with a bank forwarding invalid operations: {slowest:?}");
    let honest: String = (0..3).map(|b| log_of(&chain, b)).collect();
    for reason in ["operation above the chain's size limit", "operation touching the reserved prefix", "duplicate key"] {
        assert!(honest.contains(reason), "no honest bank logged {reason:?}");
    }
    // None of them was ordered.
    let oversized = chain.etcdctl(0).run(&["get", "byz/", "--prefix", "--keys-only"]).expect_success().to_string();
    assert!(oversized.trim().is_empty(), "ordered: {oversized}");
}

#[test]
fn a_flooding_bank_cannot_push_the_others_writes_past_their_deadline() {
    // Bank 4 forwards 40,000 valid operations at once every 10 s. Before the fix every bank
    // queued them all and leaders proposed oldest first, so an honest write waited behind the
    // whole flood (past its 20 s write timeout); now each bank holds at most a quarter of its
    // mempool for bank 4 and leaders take operations round-robin across banks.
    let dir = TestDir::new("byzantine-flood");
    let deviant = Deviant { bank: 3, bin: byzantine_bin(), args: vec!["--byzantine=flood=40000".into()] };
    let chain = Chain::start_with(&dir, 4, Some(deviant));
    // Let the first burst land.
    std::thread::sleep(Duration::from_secs(4));
    let slowest = honest_writes_commit(&chain, "fl", 5);
    eprintln!("slowest honest write under the flood: {slowest:?}");
    let honest: String = (0..3).map(|b| log_of(&chain, b)).collect();
    assert!(honest.contains("beyond the bank's mempool share"), "no honest bank dropped any of the flood");
}
