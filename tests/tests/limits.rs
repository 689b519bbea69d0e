//! The chain's limits (docs/operations.md, "Limits"): kept in the genesis, enforced with etcd's
//! own errors, and proven against the bank's own etcd before the sidecar serves.

use bftcd_tests::sidecar::BANK_ETCD_ARGS;
use bftcd_tests::{Etcdctl, EtcdProcess, Sidecar, TestDir};

#[test]
fn a_bank_whose_etcd_is_below_the_chains_limits_refuses_to_start() {
    // etcd's defaults (1.5 MiB, 128 ops) leave no room for the sidecar's bookkeeping on top of
    // the chain's default limits (the same numbers).
    let dir = TestDir::new("limits-probe");
    let etcd = EtcdProcess::start(&dir, "etcd");
    let err = Sidecar::try_start_with_args(&dir, "bank1", &etcd.endpoint(), &[]).err().expect("started anyway");
    assert!(err.contains("refuses a") && err.contains("--max-request-bytes="), "{err}");
    // Nothing was written by the probes.
    let out = Etcdctl::new(etcd.endpoint()).run(&["get", "", "--prefix", "--keys-only"]);
    assert_eq!(out.expect_success().trim(), "");

    let roomy = EtcdProcess::start_with_args(&dir, "etcd2", &["--max-request-bytes=1638400", "--max-txn-ops=200"]);
    let err = Sidecar::try_start_with_args(&dir, "bank2", &roomy.endpoint(), &["--max-txn-ops=300"]).err().expect("started anyway");
    assert!(err.contains("--max-txn-ops=302"), "{err}");
}

#[test]
fn the_genesis_limits_hold_with_etcds_errors() {
    let dir = TestDir::new("limits-genesis");
    let etcd = EtcdProcess::start_with_args(&dir, "etcd", BANK_ETCD_ARGS);
    // A single-bank genesis made with a smaller request limit.
    let bank = Sidecar::start_with_args(&dir, "bank1", &etcd.endpoint(), &["--max-request-bytes=2000"]);
    let ctl = Etcdctl::new(bank.endpoint());
    ctl.run(&["put", "small", &"v".repeat(1500)]).expect_success();
    let out = ctl.run(&["put", "big", &"v".repeat(2100)]);
    assert!(!out.success() && out.stderr.contains("etcdserver: request is too large"), "{}", out.stderr);
    drop(bank);
    // The genesis decides: a different value on the command line is refused.
    let err = Sidecar::try_start_with_args(&dir, "bank1", &etcd.endpoint(), &["--max-request-bytes=4000"]).err().expect("started");
    assert!(err.contains("differs from the chain's genesis"), "{err}");
}
