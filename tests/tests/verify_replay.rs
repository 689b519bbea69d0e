//! `bftcd-verify replay` as an auditor uses it on a real bank's files: the ledger replayed into
//! a scratch stock etcd by the banks' apply engine gives exactly the state digests the banks
//! certified (and the bank's etcd's HashKV); a certificate altered by hand, a ledger of another
//! chain, and certificates of a state the ledger does not produce (every bank's etcd written
//! behind its sidecar) are refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bftcd_proto::Message;
use bftcd_sequencer::checkpoint;
use bftcd_tests::{Chain, Etcdctl, TestDir};
use serde_json::Value;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn verify(args: &[&str]) -> Run {
    let out = std::process::Command::new(bftcd_tests::bftcd_bin().with_file_name("bftcd-verify")).args(args).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `bftcd-verify --json ARGS`: the exit code and the one JSON object it printed.
fn verify_json(args: &[&str]) -> (i32, Value) {
    let r = verify(&[&["--json"][..], args].concat());
    let v = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("not one JSON object ({e}): {}\n{}", r.stdout, r.stderr));
    (r.code, v)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ledger_of(chain: &Chain, bank: usize) -> PathBuf {
    chain.banks[bank].sidecar.data_dir().join("ledger.log")
}

/// Height of the ledger's last block with operations.
fn last_block_with_operations(path: &Path) -> u64 {
    let mut last = 0;
    bftcd_sequencer::LedgerFile::scan(path, |_, cb| {
        let b = cb.block.as_ref().unwrap();
        if !b.operations.is_empty() {
            last = b.height;
        }
        Ok(())
    })
    .unwrap();
    last
}

/// Waits until every bank is at one revision and bank 1's checkpoints file certifies its
/// ledger's last block with operations; returns that revision and height.
fn settle(chain: &Chain) -> (i64, u64) {
    let revision = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    let height = last_block_with_operations(&ledger_of(chain, 0));
    let file = checkpoint::file_path(chain.banks[0].sidecar.data_dir());
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoint::read_file(&file).unwrap().last().is_none_or(|c| c.height < height) {
        assert!(Instant::now() < deadline, "block {height} never certified");
        std::thread::sleep(Duration::from_millis(200));
    }
    (revision, height)
}

/// Bank 1's ledger and checkpoints copied into `to`, side by side as in its data directory.
fn snapshot(chain: &Chain, dir: &TestDir, to: &str) -> PathBuf {
    let at = dir.join(to);
    std::fs::create_dir_all(&at).unwrap();
    let data = chain.banks[0].sidecar.data_dir();
    std::fs::copy(data.join("ledger.log"), at.join("ledger.log")).unwrap();
    std::fs::copy(checkpoint::file_path(data), at.join("checkpoints")).unwrap();
    at.join("ledger.log")
}

/// HashKV of bank 1's own etcd, read directly: (revision, hash).
fn hash_kv(chain: &Chain) -> (i64, u64) {
    let out = Etcdctl::new(chain.banks[0].etcd.endpoint()).run(&["endpoint", "hashkv", "-w", "json"]);
    let v: Value = serde_json::from_str(out.expect_success().trim()).unwrap();
    let h = &v[0]["HashKV"];
    (h["header"]["revision"].as_i64().unwrap(), h["hash"].as_u64().unwrap())
}

#[test]
fn a_replayed_ledger_gives_the_certified_state_digests() {
    let dir = TestDir::new("verify-replay");
    let mut chain = Chain::start(&dir, 4);
    let genesis = chain.genesis.display().to_string();
    // Puts, a delete, a Txn, a lease with a key attached then revoked, a compaction, spread
    // over the banks and over more than a second (the checkpoints file keeps a certificate a
    // second and the last one), so that several heights are certified.
    for i in 0..6 {
        chain.etcdctl(i % 4).run(&["put", &format!("replay/k{i}"), &format!("v{i}")]).expect_success();
    }
    chain.etcdctl(1).run(&["del", "replay/k0"]).expect_success();
    let txn = "value(\"replay/k1\") = \"v1\"\n\nput replay/k1 changed\nput replay/t yes\n\nput replay/t no\n\n";
    let out = chain.etcdctl(2).run_with_stdin(&["txn"], txn);
    assert!(out.expect_success().contains("SUCCESS"), "{out}");
    std::thread::sleep(Duration::from_millis(1200));
    let granted = chain.etcdctl(0).run(&["lease", "grant", "600"]).expect_success().to_string();
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    chain.etcdctl(3).run(&["put", "replay/leased", "1", &format!("--lease={id}")]).expect_success();
    chain.etcdctl(0).run(&["put", "replay/k2", "again"]).expect_success();
    std::thread::sleep(Duration::from_millis(1200));
    chain.etcdctl(2).run(&["lease", "revoke", &id]).expect_success();
    let rev = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    chain.etcdctl(1).run(&["compact", &rev.to_string()]).expect_success();
    chain.etcdctl(3).run(&["put", "replay/last", "1"]).expect_success();
    let (revision, height) = settle(&chain);
    let (_, bank_hash) = hash_kv(&chain);
    let clean = snapshot(&chain, &dir, "clean");

    // Every bank's etcd written alike behind its sidecar (same key, same revision), then one
    // more write: every bank digests the extra key, so the banks certify a state the ledger
    // does not produce.
    for b in &chain.banks {
        Etcdctl::new(b.etcd.endpoint()).run(&["put", "replay/behind", "x"]).expect_success();
    }
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    chain.etcdctl(0).run(&["put", "replay/after", "1"]).expect_success();
    let (_, tampered_height) = settle(&chain);
    let tampered = snapshot(&chain, &dir, "tampered");
    for b in &mut chain.banks {
        b.sidecar.stop();
    }

    // The clean copy: every certified block compared, all equal; the scratch etcd ends where
    // bank 1's did, with the same HashKV. The checkpoints file is found beside the ledger.
    let (code, j) = verify_json(&["replay", s(&clean), "--genesis", &genesis]);
    assert_eq!(code, 0, "{j}");
    assert_eq!((&j["ok"], &j["command"]), (&Value::Bool(true), &Value::from("replay")), "{j}");
    let certificates = j["certificates"].as_u64().unwrap();
    // Writes over more than two seconds: a certificate a second at least, and the last.
    assert!(certificates >= 2, "{j}");
    assert_eq!(j["compared"].as_u64(), Some(certificates), "every certified block is compared: {j}");
    assert_eq!(j["matched"], j["compared"], "{j}");
    assert_eq!(j["mismatch"], Value::Null);
    assert_eq!(j["not_digested"], serde_json::json!([]), "{j}");
    assert_eq!(j["replayed_to"], j["tip_height"]);
    assert!(j["tip_height"].as_u64().unwrap() >= height);
    assert_eq!(j["final_revision"], revision, "{j}");
    assert_eq!(j["hash_kv"], bank_hash, "the scratch etcd's HashKV differs from bank 1's etcd: {j}");
    assert_eq!(j["compact_revision"], rev, "{j}");
    // The digests of every block with operations, not only the certified ones.
    assert!(j["digested"].as_u64().unwrap() >= 10, "{j}");
    let text = verify(&["replay", s(&clean), "--genesis", &genesis]);
    assert_eq!(text.code, 0, "{}{}", text.stdout, text.stderr);
    assert!(text.stdout.contains(&format!("compared    {certificates} certified blocks, {certificates} match")), "{}", text.stdout);
    assert!(text.stdout.ends_with("OK\n"), "{}", text.stdout);
    // Only up to the first certified block: the certificates after it are not compared.
    let first = checkpoint::read_file(&clean.with_file_name("checkpoints")).unwrap()[0].height;
    let (code, j) = verify_json(&["replay", s(&clean), "--genesis", &genesis, "--to-height", &first.to_string()]);
    assert_eq!(code, 0, "{j}");
    assert_eq!((&j["replayed_to"], &j["compared"]), (&Value::from(first), &Value::from(1)), "{j}");
    assert_eq!(j["beyond_replay"].as_array().unwrap().len() as u64, certificates - 1, "{j}");

    // A certificate with one digest byte changed no longer verifies: refused before replaying.
    let mut certs = checkpoint::read_file(&clean.with_file_name("checkpoints")).unwrap();
    let changed_height = certs[0].height;
    certs[0].state_digest[0] ^= 1;
    let forged = dir.join("forged-checkpoints");
    std::fs::write(&forged, certs.iter().flat_map(|c| c.encode_length_delimited_to_vec()).collect::<Vec<u8>>()).unwrap();
    let (code, j) = verify_json(&["replay", s(&clean), "--genesis", &genesis, "--checkpoints", s(&forged)]);
    assert_eq!((code, &j["ok"]), (1, &Value::Bool(false)), "{j}");
    let e = j["error"].as_str().unwrap();
    assert!(e.contains(&format!("the certificate for block {changed_height}")) && e.contains("does not verify"), "{e}");
    assert!(j.get("compared").is_none(), "compared with a forged certificate: {j}");

    // Another chain's ledger (its genesis differs) is refused against this chain's genesis.
    let other_dir = TestDir::new("verify-replay-other");
    let other_chain = Chain::start(&other_dir, 1);
    other_chain.etcdctl(0).run(&["put", "replay/k0", "v0"]).expect_success();
    let other = ledger_of(&other_chain, 0);
    let (code, j) = verify_json(&["replay", s(&other), "--genesis", &genesis]);
    assert_eq!(code, 1, "{j}");
    assert!(j["error"].as_str().unwrap().contains("another chain"), "{j}");
    assert!(j.get("compared").is_none(), "{j}");
    // With its own genesis it replays: a single bank's digests are unsigned, but compared alike.
    let solo_checkpoints = checkpoint::file_path(other_chain.banks[0].sidecar.data_dir());
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoint::read_file(&solo_checkpoints).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the single bank never certified its digest");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, j) = verify_json(&["replay", s(&other), "--genesis", s(&other_chain.genesis)]);
    assert_eq!(code, 0, "{j}");
    assert!(j["compared"].as_u64().unwrap() >= 1 && j["matched"] == j["compared"], "{j}");

    // A ledger damaged in the middle (one byte of a block, CRC left as it was) is refused with
    // the place of the damage, by both commands.
    let mut bytes = std::fs::read(&clean).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let damaged = dir.join("clean/damaged.log");
    std::fs::write(&damaged, &bytes).unwrap();
    let (code, j) = verify_json(&["replay", s(&damaged), "--genesis", &genesis, "--checkpoints", s(&clean.with_file_name("checkpoints"))]);
    assert_eq!(code, 1, "{j}");
    assert!(j["error"].as_str().unwrap().contains("CRC mismatch"), "{j}");
    let direct = std::process::Command::new(bftcd_tests::bftcd_bin())
        .args(["replay", "--ledger", s(&damaged), "--genesis", &genesis])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&direct.stdout);
    assert!(!direct.status.success() && said.contains(r#""event":"error""#) && said.contains("CRC mismatch"), "{said}");
    // `bftcd replay` into an etcd that already holds data (bank 1's own) refuses to start.
    let direct = std::process::Command::new(bftcd_tests::bftcd_bin())
        .args(["replay", "--ledger", s(&clean), "--genesis", &genesis, "--etcd-endpoint", &chain.banks[0].etcd.endpoint()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&direct.stdout);
    assert!(!direct.status.success() && said.contains("is not empty"), "{said}");
    assert!(!said.contains(r#""event":"digest""#), "{said}");

    // The banks certified a state with a key no write in the ledger made: the replay differs
    // at the first block digested after it, and only there (blocks before it match).
    let (code, j) = verify_json(&["replay", s(&tampered), "--genesis", &genesis]);
    assert_eq!(code, 1, "{j}");
    assert_eq!(j["mismatch"]["height"], tampered_height, "{j}");
    assert_ne!(j["mismatch"]["certified"], j["mismatch"]["replayed"]);
    // Every block certified before the tampering matched.
    assert_eq!(j["matched"].as_u64(), Some(j["compared"].as_u64().unwrap() - 1), "{j}");
    assert!(j["mismatch"]["last_match_before"].as_u64().is_some_and(|b| b <= height), "{j}");
    assert!(j["error"].as_str().unwrap().contains(&format!("MISMATCH at block {tampered_height}")), "{j}");
    let text = verify(&["replay", s(&tampered), "--genesis", &genesis]);
    assert_eq!(text.code, 1);
    assert!(text.stderr.contains("bftcd-verify: INVALID: MISMATCH at block"), "{}", text.stderr);
}
