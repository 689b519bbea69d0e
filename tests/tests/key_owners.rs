//! Key ownership (issue 12; docs/operations.md, "Key ownership"): the genesis gives `/bank1/`
//! to bank 1 and `/bank2/` to bank 2. Bank 2 runs the test-only build with
//! `--byzantine foreign-writes`: its front orders writes under bank 1's prefix instead of
//! refusing them, as a Byzantine bank signing such writes itself would. Every bank must refuse
//! them at apply with etcd's permission-denied error, the ledger must show them as bank 2's, and
//! the four banks must stay identical.

use std::path::PathBuf;
use std::time::Duration;

use bftcd_tests::kv::hashkv;
use bftcd_tests::{Chain, Deviant, TestDir};

fn byzantine_bin() -> PathBuf {
    bftcd_tests::bins::try_byzantine_bin("debug").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn writes_to_another_banks_keys_are_refused_on_every_bank() {
    let dir = TestDir::new("key-owners");
    let byzantine = Deviant { bank: 1, bin: byzantine_bin(), args: vec!["--byzantine=foreign-writes".into()] };
    let mut chain = Chain::start_with_genesis(&dir, 4, vec![byzantine], &["--key-owner=/bank1/=bank1", "--key-owner=/bank2/=2"]);
    let (honest, rogue) = (chain.etcdctl(0), chain.etcdctl(1));

    // An honest bank refuses before ordering; the owner writes; everyone reads.
    honest.run(&["put", "/bank2/x", "v"]).expect_error("etcdserver: permission denied");
    honest.run(&["put", "/bank1/a", "mine"]).expect_success();
    rogue.run(&["put", "/bank2/b", "theirs"]).expect_success();
    honest.run(&["put", "/shared/c", "anyone"]).expect_success();
    rogue.run(&["put", "/shared/d", "anyone"]).expect_success();

    // The Byzantine bank orders writes to bank 1's keys: committed, and refused at apply.
    rogue.run(&["put", "/bank1/evil", "x"]).expect_error("etcdserver: permission denied");
    rogue.run(&["del", "", "--prefix"]).expect_error("etcdserver: permission denied");
    let txn = "\nput /bank2/ok y\n\nput /bank1/evil-in-else z\n\n";
    rogue.run_with_stdin(&["txn"], txn.as_bytes()).expect_error("etcdserver: permission denied");

    // A lease with one of bank 1's keys: bank 2 may not revoke it (that would delete the key).
    let grant = honest.run(&["lease", "grant", "600"]).expect_success().to_string();
    let lease = grant.split_whitespace().nth(1).expect("lease id").to_string();
    honest.run(&["put", "/bank1/leased", "v", &format!("--lease={lease}")]).expect_success();
    rogue.run(&["lease", "revoke", &lease]).expect_error("etcdserver: permission denied");
    // An owner's keys go only on its own leases (else the lease's bank could delete them by
    // revoking it): refused before ordering at an honest bank, at apply on every bank.
    let theirs = rogue.run(&["lease", "grant", "600"]).expect_success().to_string();
    let theirs = theirs.split_whitespace().nth(1).expect("lease id").to_string();
    honest.run(&["put", "/bank1/on-their-lease", "v", &format!("--lease={theirs}")]).expect_error("etcdserver: permission denied");
    rogue.run(&["put", "/bank2/on-bank1s-lease", "v", &format!("--lease={lease}")]).expect_error("etcdserver: permission denied");
    // The refusal is rebuilt from the ledger after a restart (leases live in a replayed table).
    chain.banks[2].sidecar.restart();
    let ttl = chain.etcdctl(2).run(&["lease", "timetolive", &lease]).expect_success().to_string();
    assert!(ttl.contains("remaining"), "bank 3 lost the lease after a restart: {ttl}");

    let rev = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    for b in 0..4 {
        let keys = chain.etcdctl(b).run(&["get", "/", "--prefix", "--keys-only"]).expect_success().to_string();
        let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(keys, ["/bank1/a", "/bank1/leased", "/bank2/b", "/shared/c", "/shared/d"], "bank {}", b + 1);
    }
    let hashes: Vec<(i64, i64)> = (0..4).map(|b| hashkv(&chain.etcdctl(b))).collect();
    assert!(hashes.iter().all(|h| *h == (hashes[0].0, rev)), "banks differ: {hashes:?}");

    // The owner itself may revoke.
    honest.run(&["lease", "revoke", &lease]).expect_success();
    assert_eq!(honest.run(&["get", "/bank1/leased"]).expect_success().trim(), "");

    // The ledger shows whose writes were refused, and why.
    let log = std::fs::read_to_string(chain.banks[0].sidecar.stderr_log()).unwrap_or_default();
    assert!(log.contains("refused an operation that writes keys owned by another bank"), "bank 1's log says nothing");
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    let (ok, listing, errors) = bftcd_tests::ledger::verify(&chain.banks[2].sidecar.data_dir().join("ledger.log"), true);
    assert!(ok, "{errors}");
    let refused: Vec<&str> = listing.lines().filter(|l| l.contains("refused: keys owned by bank1")).collect();
    assert_eq!(refused.len(), 3, "put, delete-all and Txn: {listing}");
    assert!(refused.iter().all(|l| l.split('\t').nth(1) == Some("bank2")), "{refused:?}");
}
