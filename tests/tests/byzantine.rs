//! One Byzantine bank out of four (f = 1), run by the test-only build of bftcd
//! (`--features byzantine`, built by scripts/test.sh into target/byzantine). The three honest
//! banks stay safe (identical state) and live (every write commits), whatever it does.

use std::path::PathBuf;
use std::time::Duration;

use bftcd_tests::{Chain, Deviant, Etcdctl, TestDir};

/// The test-only build with `--byzantine` (scripts/test.sh makes it).
fn byzantine_bin() -> PathBuf {
    bftcd_tests::bins::try_byzantine_bin("debug").unwrap_or_else(|e| panic!("{e}"))
}

fn hashkv(ctl: &Etcdctl) -> i64 {
    let out = ctl.run(&["endpoint", "hashkv", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(out.expect_success().trim()).unwrap();
    v[0]["HashKV"]["hash"].as_i64().unwrap()
}

/// Writes through `through` banks, then checks all four banks hold identical state (the
/// Byzantine bank applies what was committed like everyone else) and every write is there.
fn run(name: &str, byzantine_bank: usize, misbehaviour: &str, through: &[usize]) -> (TestDir, Chain) {
    let dir = TestDir::new(name);
    let deviant = Deviant { bank: byzantine_bank, bin: byzantine_bin(), args: vec![format!("--byzantine={misbehaviour}")] };
    let chain = Chain::start_with(&dir, 4, Some(deviant));
    let mut written = Vec::new();
    for round in 0..6 {
        for &b in through {
            let key = format!("byz/{b}/{round}");
            chain.etcdctl(b).with_timeout(Duration::from_secs(40)).run(&["put", &key, "v"]).expect_success();
            written.push(key);
        }
    }
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(60));
    let hashes: Vec<i64> = (0..4).map(|b| hashkv(&chain.etcdctl(b))).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "banks diverged: {hashes:?}");
    for b in 0..4 {
        let keys = chain.etcdctl(b).run(&["get", "byz/", "--prefix", "--keys-only"]).expect_success().to_string();
        for k in &written {
            assert!(keys.lines().any(|l| l == k), "bank {} lacks {k}", b + 1);
        }
    }
    (dir, chain)
}

fn log_of(chain: &Chain, bank: usize) -> String {
    std::fs::read_to_string(chain.banks[bank].sidecar.stderr_log()).unwrap_or_default()
}

#[test]
fn equivocating_leader_cannot_split_the_banks() {
    let (_dir, chain) = run("byzantine-equivocate", 0, "equivocate", &[1, 2, 3, 0]);
    assert!(log_of(&chain, 0).contains("THIS BANK IS BYZANTINE"));
}

#[test]
fn votes_with_bad_signatures_are_dropped() {
    let (_dir, chain) = run("byzantine-bad-signatures", 1, "bad-signatures", &[0, 2, 3]);
    let honest = (0..4).filter(|&b| b != 1).map(|b| log_of(&chain, b)).collect::<String>();
    assert!(
        honest.contains("vote with a bad signature") || honest.contains("timeout with a bad signature"),
        "no honest bank reported the forged signatures"
    );
}

#[test]
fn censored_bank_still_gets_its_writes_committed() {
    // Bank 1 leads every fourth view and drops everything bank 3 (index 2) submitted.
    let (_dir, chain) = run("byzantine-censor", 0, "censor=2", &[2]);
    // The ledger shows it: bank 1's blocks carry none of bank 3's writes; others' blocks do.
    let ledger = chain.banks[1].sidecar.data_dir().join("ledger.log");
    let (mut by_censor, mut by_others) = (0, 0);
    bftcd_sequencer::LedgerFile::scan(&ledger, |_, cb| {
        let b = cb.block.as_ref().unwrap();
        let from_bank3 = b.operations.iter().filter(|op| op.id.as_ref().unwrap().bank == 2).count();
        if b.proposer == 0 {
            by_censor += from_bank3;
        } else {
            by_others += from_bank3;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(by_censor, 0, "the censoring leader included bank 3's writes");
    assert_eq!(by_others, 6);
}

#[test]
fn a_bank_whose_ordering_dies_exits_instead_of_serving() {
    // Bank 4's consensus task panics (a bug, simulated by the test build) while the others
    // keep writing: its process must end, saying why, rather than accept writes it can never
    // order; the other three go on.
    let dir = TestDir::new("byzantine-ordering-dies");
    let deviant = Deviant { bank: 3, bin: byzantine_bin(), args: vec!["--byzantine=panic-after=300".into()] };
    let mut chain = Chain::start_with(&dir, 4, Some(deviant));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut i = 0;
    while chain.banks[3].sidecar.is_running() {
        assert!(std::time::Instant::now() < deadline, "bank 4 still serves after {i} writes");
        let key = format!("dies/{i}");
        chain.etcdctl(i % 3).with_timeout(Duration::from_secs(40)).run(&["put", &key, "v"]).expect_success();
        i += 1;
    }
    let log = log_of(&chain, 3);
    assert!(log.contains("panics after 300 steps on purpose"), "{log}");
    assert!(log.contains("ordering stopped"), "{log}");
    chain.etcdctl(0).with_timeout(Duration::from_secs(40)).run(&["put", "dies/after", "v"]).expect_success();
}
