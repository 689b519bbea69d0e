//! Governance (issue 12; docs/operations.md, "Governance"): the chain's key owners change only
//! when every bank's operator approves the same change, through `bftcd govern` on that bank's
//! own admin socket. Three approvals of four change nothing; the fourth makes the change take
//! effect on every bank at once; the rules survive a restart; the ledger shows the change.

use std::process::Command;
use std::time::Duration;

use bftcd_tests::kv::hashkv;
use bftcd_tests::{bftcd_bin, Chain, TestDir};

fn govern(chain: &Chain, bank: usize, args: &[&str]) -> (bool, String) {
    let out = Command::new(bftcd_bin())
        .arg("govern")
        .arg(format!("--data-dir={}", chain.banks[bank].sidecar.data_dir().display()))
        .args(args)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn key_owners_change_only_when_every_bank_approves() {
    let dir = TestDir::new("governance");
    let mut chain = Chain::start_with_genesis(&dir, 4, Vec::new(), &["--key-owner=/bank1/=bank1"]);
    chain.etcdctl(1).run(&["put", "/bank1/x", "v"]).expect_error("etcdserver: permission denied");
    let (ok, rules) = govern(&chain, 3, &["rules"]);
    assert!(ok && rules.contains("rules version 0") && rules.contains("/bank1/=bank1"), "{rules}");

    // Three banks approve giving /bank1/ to bank 2: nothing changes yet.
    for bank in 0..3 {
        let (ok, out) = govern(&chain, bank, &["approve", "--key-owner=/bank1/=bank2"]);
        assert!(ok, "bank {}: {out}", bank + 1);
        assert!(out.contains(&format!("approved: {} of 4 banks", bank + 1)), "{out}");
    }
    chain.etcdctl(1).run(&["put", "/bank1/x", "v"]).expect_error("etcdserver: permission denied");
    chain.etcdctl(0).run(&["put", "/bank1/still-mine", "v"]).expect_success();
    let (_, rules) = govern(&chain, 3, &["rules"]);
    assert_eq!(rules.matches("approves key owners /bank1/=bank2").count(), 3, "{rules}");

    // A stale or malformed approval is refused before ordering.
    let (ok, out) = govern(&chain, 3, &["approve", "--rules-version=7", "--key-owner=/bank1/=bank2"]);
    assert!(!ok && out.contains("version 0 is in effect"), "{out}");
    let (ok, out) = govern(&chain, 3, &["approve", "--key-owner=/a/=bank2", "--key-owner=/a/b=bank3"]);
    assert!(!ok && out.contains("overlap"), "{out}");

    // The fourth approval: in effect on every bank.
    let (ok, out) = govern(&chain, 3, &["approve", "--key-owner=/bank1/=bank2"]);
    assert!(ok && out.contains("approved by every bank"), "{out}");
    chain.etcdctl(1).run(&["put", "/bank1/x", "now-bank2s"]).expect_success();
    chain.etcdctl(0).run(&["put", "/bank1/y", "v"]).expect_error("etcdserver: permission denied");
    let (_, rules) = govern(&chain, 2, &["rules"]);
    assert!(rules.contains("rules version 1") && rules.contains("/bank1/=bank2") && !rules.contains("pending"), "{rules}");
    // The old approvals cannot be replayed against the new rules.
    let (ok, out) = govern(&chain, 0, &["approve", "--rules-version=0", "--key-owner=/bank1/=bank1"]);
    assert!(!ok && out.contains("version 1 is in effect"), "{out}");

    // The rules are rebuilt from the ledger after a restart.
    chain.banks[2].sidecar.restart();
    chain.etcdctl(2).run(&["put", "/bank1/z", "v"]).expect_error("etcdserver: permission denied");
    let (_, rules) = govern(&chain, 2, &["rules"]);
    assert!(rules.contains("rules version 1"), "{rules}");

    let rev = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    let hashes: Vec<(i64, i64)> = (0..4).map(|b| hashkv(&chain.etcdctl(b))).collect();
    assert!(hashes.iter().all(|h| *h == (hashes[0].0, rev)), "banks differ: {hashes:?}");
    let keys = chain.etcdctl(3).run(&["get", "/bank1/", "--prefix", "--keys-only"]).expect_success().to_string();
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys, ["/bank1/still-mine", "/bank1/x"]);

    let (ok, summary, errors) = bftcd_tests::ledger::verify(&chain.banks[3].sidecar.data_dir().join("ledger.log"), false);
    assert!(ok, "{errors}");
    assert!(summary.contains("rules version 1 in effect, approved by every bank; key owners: /bank1/=bank2"), "{summary}");
}
