//! Restoring an older snapshot of a bank's etcd under its sidecar (docs/operations.md,
//! "Restoring a bank's etcd"): the sidecar replays the ledger from the snapshot's own applied
//! position, so the bank ends with every write made after the snapshot and the same HashKV as the
//! other banks; an etcd holding someone else's data is refused with a clear error.

use std::time::Duration;

use bftcd_tests::kv::{get, hashkv, put};
use bftcd_tests::{Chain, Etcdctl, TestDir};

const BANK: usize = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_restored_from_an_older_snapshot_replays_what_came_after() {
    let dir = TestDir::new("restore_older_snapshot");
    let mut chain = Chain::start(&dir, 4);
    let eps = chain.endpoints();
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    for (i, ep) in eps.iter().enumerate() {
        put(ep, &format!("before/{i}"), "v1").await.unwrap();
    }
    // A lease granted after the last recorded write is in the snapshot but not at its applied
    // position: the sidecar revokes it before the replay grants it again.
    let ctl = chain.etcdctl(0);
    assert_eq!(ctl.run(&["del", "nothing/before"]).expect_success().trim(), "0");
    let early = ctl.run(&["lease", "grant", "600"]).expect_success().split_whitespace().nth(1).unwrap().to_string();
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    let snapshot = dir.join("bank2-etcd.snapshot.db");
    let etcd2 = Etcdctl::new(chain.banks[BANK].etcd.endpoint());
    etcd2.run(&["snapshot", "save", snapshot.to_str().unwrap()]).expect_success();

    // After the snapshot: new keys, an overwrite, a delete, then an operation that leaves no trace
    // in etcd followed by a lease grant, which moves the sidecar's apply cursor file past the
    // snapshot's applied position.
    for (i, ep) in eps.iter().enumerate() {
        put(ep, &format!("after/{i}"), "v2").await.unwrap();
    }
    put(&eps[2], "before/0", "v3").await.unwrap();
    assert_eq!(ctl.run(&["del", "before/1"]).expect_success().trim(), "1");
    assert_eq!(ctl.run(&["del", "nothing/here"]).expect_success().trim(), "0");
    let granted = ctl.run(&["lease", "grant", "600"]);
    let lease = granted.expect_success().split_whitespace().nth(1).unwrap().to_string();
    ctl.run(&["put", "leased", "v4", &format!("--lease={lease}")]).expect_success();
    put(&eps[3], "after/last", "v5").await.unwrap();
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));

    // Stop bank 2, restore the snapshot into a fresh data directory, start both again.
    let bank = &mut chain.banks[BANK];
    bank.sidecar.stop();
    bank.etcd.restore_snapshot(&snapshot);
    bank.sidecar.restart();

    let expect: &[(&str, Option<&str>)] = &[
        ("before/0", Some("v3")),
        ("before/1", None),
        ("before/2", Some("v1")),
        ("before/3", Some("v1")),
        ("after/0", Some("v2")),
        ("after/1", Some("v2")),
        ("after/2", Some("v2")),
        ("after/3", Some("v2")),
        ("leased", Some("v4")),
        ("after/last", Some("v5")),
    ];
    let ep = chain.banks[BANK].sidecar.endpoint();
    for (key, value) in expect {
        let got = get(&ep, key, Duration::from_secs(10)).await.unwrap();
        assert_eq!(got.as_deref(), value.map(str::as_bytes), "bank 2 after the restore, key {key}");
    }
    let leased = chain.etcdctl(BANK).run(&["lease", "timetolive", &lease, "--keys"]);
    assert!(leased.expect_success().contains("leased"), "the lease lost its key at bank 2: {leased}");
    let rev = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    let hashes: Vec<(i64, i64)> = (0..4).map(|b| hashkv(&chain.etcdctl(b))).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "HashKV or revision differs between banks: {hashes:?}");
    assert_eq!(hashes[0].1, rev);
    let log = std::fs::read_to_string(chain.banks[BANK].sidecar.stderr_log()).unwrap();
    assert!(log.contains("behind this sidecar's apply cursor"), "the sidecar did not say it resumed from the etcd's position");
    let put_back = log.lines().find(|l| l.contains("leases put back")).expect("the sidecar put the leases back");
    assert!(put_back.contains(early.trim_start_matches('0')), "the lease granted before the snapshot was not revoked: {put_back}");
    // Every bank's own etcd holds the same leases.
    let leases = |b: usize| {
        let out = Etcdctl::new(chain.banks[b].etcd.endpoint()).run(&["lease", "list"]);
        let mut ids: Vec<String> = out.expect_success().lines().skip(1).map(|l| l.trim().to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(leases(BANK), leases(0), "bank 2's etcd holds other leases than bank 1's");
    assert_eq!(leases(BANK).len(), 2);

    // An etcd with data but no applied position (another etcd, or a snapshot from before the
    // bank's first write) is refused, saying so.
    let bank = &mut chain.banks[BANK];
    bank.sidecar.stop();
    bank.etcd.stop();
    std::fs::remove_dir_all(bank.etcd.data_dir()).unwrap();
    bank.etcd.restart();
    Etcdctl::new(bank.etcd.endpoint()).put("foreign", "data");
    let err = bank.sidecar.try_restart().expect_err("a sidecar over a foreign etcd must not start");
    let log = std::fs::read_to_string(bank.sidecar.stderr_log()).unwrap();
    assert!(log.contains("holds no applied-position key"), "no clear refusal: {err}\n{log}");
}
