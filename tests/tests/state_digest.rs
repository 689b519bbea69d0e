//! The certified state digest (docs/consensus.md, "State digest"): after every block with
//! operations each bank signs a digest of its etcd; n − f equal ones make a checkpoint
//! certificate. A bank whose etcd was changed behind its sidecar goes CORRUPT; a lying bank's
//! digest is never certified.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bftcd_proto::bftcd::Genesis;
use bftcd_proto::Message;
use bftcd_sequencer::checkpoint;
use bftcd_sequencer::consensus::Domain;
use bftcd_sequencer::keys::ChainCrypto;
use bftcd_tests::{Chain, Deviant, Etcdctl, TestDir};

const CORRUPT: &str = "etcdserver: corrupt cluster";

fn log_of(chain: &Chain, bank: usize) -> String {
    std::fs::read_to_string(chain.banks[bank].sidecar.stderr_log()).unwrap_or_default()
}

fn genesis(chain: &Chain) -> Genesis {
    Genesis::decode(std::fs::read(&chain.genesis).unwrap().as_slice()).unwrap()
}

fn checkpoints_file(chain: &Chain, bank: usize) -> PathBuf {
    checkpoint::file_path(chain.banks[bank].sidecar.data_dir())
}

/// Every certificate in a bank's checkpoints file, each checked against the genesis keys.
fn verified_checkpoints(g: &Genesis, path: &Path) -> Vec<bftcd_proto::bftcd::CheckpointCert> {
    let crypto = ChainCrypto::verifier(g).unwrap();
    let domain = Domain { chain_id: g.chain_id.clone(), epoch: g.epoch, n: g.validators.len() };
    let certs = checkpoint::read_file(path).unwrap();
    for c in &certs {
        checkpoint::verify_cert(&crypto, &domain, c).unwrap_or_else(|e| panic!("{}: certificate at {}: {e}", path.display(), c.height));
    }
    certs
}

fn verify_cli(args: &[String]) -> std::process::Output {
    std::process::Command::new(bftcd_tests::bftcd_bin().with_file_name("bftcd-verify")).args(args).output().unwrap()
}

/// Height of the ledger's last block with operations.
fn last_block_with_operations(chain: &Chain, bank: usize) -> u64 {
    let mut last = 0;
    bftcd_sequencer::LedgerFile::scan(&chain.banks[bank].sidecar.data_dir().join("ledger.log"), |_, cb| {
        let b = cb.block.as_ref().unwrap();
        if !b.operations.is_empty() {
            last = b.height;
        }
        Ok(())
    })
    .unwrap();
    last
}

/// Waits until `bank` refuses a read with etcd's corrupt-cluster error.
fn wait_corrupt(chain: &Chain, bank: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let out = chain.etcdctl(bank).run(&["get", "digest/a"]);
        if !out.success() && out.stderr.contains(CORRUPT) {
            return;
        }
        assert!(Instant::now() < deadline, "bank {} never went CORRUPT; last get: {out}\n{}", bank + 1, log_of(chain, bank));
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Four banks with some keys; `tamper` changes bank `victim`'s etcd behind its sidecar; the
/// next write makes that bank CORRUPT while the others keep serving.
fn tampered(name: &str, victim: usize, tamper: impl FnOnce(&Chain, &Etcdctl)) {
    let dir = TestDir::new(name);
    let chain = Chain::start(&dir, 4);
    for i in 0..5 {
        chain.etcdctl(i % 4).run(&["put", &format!("digest/{}", ["a", "b", "c", "d", "e"][i]), "v"]).expect_success();
    }
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    // Every bank agrees before the tampering: nobody is corrupt.
    std::thread::sleep(Duration::from_secs(1));
    for b in 0..4 {
        chain.etcdctl(b).run(&["get", "digest/a"]).expect_success();
    }
    let direct = Etcdctl::new(chain.banks[victim].etcd.endpoint());
    tamper(&chain, &direct);
    let writer = (victim + 1) % 4;
    chain.etcdctl(writer).run(&["put", "digest/after", "1"]).expect_success();
    wait_corrupt(&chain, victim, Duration::from_secs(30));

    // An auditor reading the key at every bank sees which one refuses.
    let get = verify_cli(&[
        "get".to_string(),
        "digest/a".to_string(),
        format!("--endpoints={}", chain.endpoints().join(",")),
        format!("--genesis={}", chain.genesis.display()),
    ]);
    let shown = String::from_utf8_lossy(&get.stdout);
    let victim_line = format!("{}: no signed answer: {CORRUPT}", chain.endpoints()[victim]);
    assert!(get.status.code() == Some(1) && shown.contains(&victim_line) && shown.contains("vouched for by"), "bftcd-verify get: {shown}");
    let ctl = chain.etcdctl(victim);
    ctl.run(&["put", "digest/x", "1"]).expect_error(CORRUPT);
    ctl.run(&["watch", "digest/x", "--rev=1"]).expect_error(CORRUPT);
    let alarms = ctl.run(&["alarm", "list"]);
    assert!(alarms.expect_success().contains("alarm:CORRUPT"), "alarm list at the corrupt bank: {alarms}");
    let log = log_of(&chain, victim);
    let report = log.lines().find(|l| l.contains("CORRUPT: this bank's etcd state differs")).unwrap_or_else(|| panic!("no CORRUPT report in the log:\n{log}"));
    // It names the keys changed since the last agreed block, the tampered one among them.
    assert!(!report.contains("keys_changed=0 ") && report.contains("first_key=digest/"), "{report}");
    // The others keep serving reads and writes.
    for b in (0..4).filter(|b| *b != victim) {
        chain.etcdctl(b).run(&["put", &format!("digest/still/{b}"), "1"]).expect_success();
        assert_eq!(chain.etcdctl(b).get_value("digest/after").as_deref(), Some("1"));
        assert!(!log_of(&chain, b).contains("CORRUPT"), "honest bank {} reported CORRUPT", b + 1);
    }
}

#[test]
fn a_key_written_behind_a_banks_sidecar_makes_that_bank_corrupt() {
    tampered("digest-put-behind", 3, |_, etcd| etcd.put("digest/forged", "by someone with access to the etcd"));
}

#[test]
fn a_key_deleted_behind_a_banks_sidecar_makes_that_bank_corrupt() {
    tampered("digest-delete-behind", 2, |_, etcd| {
        etcd.run(&["del", "digest/b"]).expect_success();
    });
}

#[test]
fn a_lease_revoked_behind_a_banks_sidecar_makes_that_bank_corrupt() {
    tampered("digest-revoke-behind", 1, |chain, etcd| {
        let out = chain.etcdctl(0).run(&["lease", "grant", "600"]).expect_success().to_string();
        let id = out.split_whitespace().nth(1).unwrap().to_string();
        chain.etcdctl(0).run(&["put", "digest/leased", "1", &format!("--lease={id}")]).expect_success();
        chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
        std::thread::sleep(Duration::from_secs(1));
        etcd.run(&["lease", "revoke", &id]).expect_success();
    });
}

#[test]
fn a_lying_bank_never_gets_its_digest_certified() {
    let dir = TestDir::new("digest-wrong");
    let bin = bftcd_tests::bins::try_byzantine_bin("debug").unwrap_or_else(|e| panic!("{e}"));
    let deviant = Deviant { bank: 0, bin, args: vec!["--byzantine=wrong-digest".into()] };
    let chain = Chain::start_with(&dir, 4, Some(deviant));
    for i in 0..12 {
        chain.etcdctl(i % 4).run(&["put", &format!("digest/{i}"), "v"]).expect_success();
    }
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    let last = last_block_with_operations(&chain, 1);
    let g = genesis(&chain);
    // Certified even though the chain is idle now; never with the liar's signature.
    let deadline = Instant::now() + Duration::from_secs(20);
    for b in 1..4 {
        let certs = loop {
            let certs = verified_checkpoints(&g, &checkpoints_file(&chain, b));
            if certs.last().is_some_and(|c| c.height >= last) || Instant::now() > deadline {
                break certs;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        assert!(certs.last().is_some_and(|c| c.height >= last), "bank {}: last certificate {:?}, last block with operations {last}", b + 1, certs.last().map(|c| c.height));
        for c in &certs {
            assert!(c.signatures.iter().all(|s| s.signer != 0), "bank {}: the liar signed the certificate at {}", b + 1, c.height);
        }
    }
    // An auditor checks the certificates offline, and refuses one whose digest was changed.
    let files: Vec<String> = (1..4).map(|b| checkpoints_file(&chain, b).display().to_string()).collect();
    let genesis_arg = format!("--genesis={}", chain.genesis.display());
    let ok = verify_cli(&[&["checkpoints".to_string(), genesis_arg.clone()][..], &files[..]].concat());
    assert!(ok.status.success(), "bftcd-verify checkpoints: {}{}", String::from_utf8_lossy(&ok.stdout), String::from_utf8_lossy(&ok.stderr));
    let mut certs = checkpoint::read_file(&checkpoints_file(&chain, 1)).unwrap();
    certs.last_mut().unwrap().state_digest[0] ^= 1;
    let forged = dir.join("forged-checkpoints");
    std::fs::write(&forged, certs.iter().flat_map(|c| c.encode_length_delimited_to_vec()).collect::<Vec<u8>>()).unwrap();
    let refused = verify_cli(&["checkpoints".to_string(), genesis_arg, forged.display().to_string()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("does not verify"), "a forged certificate was not refused: {stderr}");
    // Nobody went CORRUPT over the lie; the honest banks said what they dropped.
    for b in 0..4 {
        chain.etcdctl(b).run(&["get", "digest/0"]).expect_success();
    }
    assert!(log_of(&chain, 0).contains("THIS BANK IS BYZANTINE"));
}

#[test]
fn a_full_check_at_every_block_agrees_with_the_followed_digest() {
    let dir = TestDir::new("digest-full");
    let bin = bftcd_tests::bins::bftcd_bin();
    let deviants = (0..4).map(|bank| Deviant { bank, bin: bin.clone(), args: vec!["--digest-full-check-every=1".into()] }).collect();
    let chain = Chain::start_with_all(&dir, 4, deviants);
    let ctl = chain.etcdctl(0);
    // More keys than one page of a full read.
    for i in 0..70 {
        chain.etcdctl(i % 4).run(&["put", &format!("full/many/{i:03}"), "x"]).expect_success();
    }
    ctl.run(&["put", "full/a", "1"]).expect_success();
    ctl.run(&["put", "full/b", "2"]).expect_success();
    ctl.run(&["put", "full/a", "3"]).expect_success();
    ctl.run(&["del", "full/b"]).expect_success();
    let out = ctl.run(&["lease", "grant", "600"]).expect_success().to_string();
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    chain.etcdctl(1).run(&["put", "full/leased", "1", &format!("--lease={id}")]).expect_success();
    chain.etcdctl(2).run(&["lease", "revoke", &id]).expect_success();
    let rev = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    ctl.run(&["compact", &rev.to_string()]).expect_success();
    ctl.run(&["put", "full/c", "4"]).expect_success();
    let last = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    assert!(last > rev);
    let g = genesis(&chain);
    let height = last_block_with_operations(&chain, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !verified_checkpoints(&g, &checkpoints_file(&chain, 0)).last().is_some_and(|c| c.height >= height) {
        assert!(Instant::now() < deadline, "block {height} never certified");
        std::thread::sleep(Duration::from_millis(300));
    }
    for b in 0..4 {
        let log = log_of(&chain, b);
        assert!(log.contains("full check of the store"), "bank {} made no full check", b + 1);
        assert!(!log.contains("differ from the store read whole"), "bank {}: followed keys differ from the store:\n{log}", b + 1);
        assert!(!log.contains("CORRUPT"), "bank {} went CORRUPT:\n{log}", b + 1);
        chain.etcdctl(b).run(&["get", "full/a"]).expect_success();
    }
}
