//! `bftcd-verify` as an auditor uses it on the ledgers of real banks: `ledgers` compares several
//! banks' ledgers (tips, common prefix, shorter copies, the first differing block), `--genesis-hash`
//! pins the chain, `genesis` prints the hash to pin, and `--json` carries the same facts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bftcd_proto::bftcd::{ledger_record::Record, operation::Request, LedgerRecord};
use bftcd_proto::Message;
use bftcd_sequencer::{block_hash, LedgerFile};
use bftcd_tests::{Chain, TestDir};
use serde_json::Value;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn verify<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let out = Command::new(bftcd_tests::bftcd_bin().with_file_name("bftcd-verify")).args(args).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `bftcd-verify --json ARGS`: the exit code and the one JSON object it printed.
fn verify_json(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let r = verify(&all);
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", r.stdout));
    (r.code, v)
}

/// Every block's hash and whether its record carries a commit proof, by height from 1.
fn blocks(path: &Path) -> Vec<([u8; 32], bool)> {
    let mut out = Vec::new();
    LedgerFile::scan(path, |_, cb| {
        out.push((block_hash(cb.block.as_ref().unwrap()), cb.commit_qc.is_some()));
        Ok(())
    })
    .unwrap();
    out
}

/// The heights of the blocks holding a Put, in order.
fn put_heights(path: &Path) -> Vec<u64> {
    let mut found = Vec::new();
    LedgerFile::scan(path, |_, cb| {
        let b = cb.block.as_ref().unwrap();
        if b.operations.iter().any(|op| matches!(op.request, Some(Request::Put(_)))) {
            found.push(b.height);
        }
        Ok(())
    })
    .unwrap();
    assert!(!found.is_empty(), "no block with a put in {}", path.display());
    found
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes through every bank, waits until every bank's ledger holds the same number of blocks,
/// then stops the banks so their ledgers stay put. Returns the ledgers' paths.
fn ledgers_of_a_quiet_chain(chain: &mut Chain, writes: usize) -> Vec<PathBuf> {
    let n = chain.banks.len();
    for i in 0..writes {
        chain.etcdctl(i % n).run(&["put", &format!("audit/k{i}"), &format!("v{i}")]).expect_success();
    }
    let all: Vec<usize> = (0..n).collect();
    chain.wait_converged(&all, Duration::from_secs(30));
    let paths: Vec<PathBuf> = chain.banks.iter().map(|b| b.sidecar.data_dir().join("ledger.log")).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tips: Vec<usize> = paths.iter().map(|p| blocks(p).len()).collect();
        if tips.iter().all(|t| *t == tips[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "the banks' ledgers never reached the same tip: {tips:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for b in &mut chain.banks {
        b.sidecar.stop();
    }
    paths
}

#[test]
fn auditor_compares_four_banks_ledgers() {
    let dir = TestDir::new("verify-ledgers");
    let mut chain = Chain::start(&dir, 4);
    let ledgers = ledgers_of_a_quiet_chain(&mut chain, 8);
    let tip = blocks(&ledgers[0]).len();
    assert!(tip >= 4, "only {tip} blocks");
    let genesis_file = chain.genesis.display().to_string();
    let l: Vec<&str> = ledgers.iter().map(|p| s(p)).collect();

    // `genesis` prints the hash; the ledger command accepts exactly it.
    let g = verify(&["genesis", &genesis_file]);
    assert_eq!(g.code, 0, "{}", g.stderr);
    let hash = g.stdout.lines().find_map(|l| l.strip_prefix("hash")).expect("a hash line").trim().to_string();
    assert_eq!(hash.len(), 64, "{}", g.stdout);
    let (code, gj) = verify_json(&["genesis", &genesis_file]);
    assert_eq!(code, 0);
    assert_eq!(gj["ok"], true);
    assert_eq!(gj["genesis_hash"], hash.as_str());
    assert_eq!(gj["chain_id"], "test-chain");
    let validators = gj["validators"].as_array().unwrap();
    assert_eq!(validators.len(), 4, "{gj}");
    for (i, (v, bank)) in validators.iter().zip(&chain.banks).enumerate() {
        assert_eq!(v["index"], i);
        assert_eq!(v["name"], bank.name.as_str());
        assert_eq!(v["peer_address"], format!("127.0.0.1:{}", bank.peer_port).as_str());
        assert!(g.stdout.contains(&format!("{i}  {}  peer 127.0.0.1:{}", bank.name, bank.peer_port)), "{}", g.stdout);
    }
    let ok = verify(&["ledger", l[0], "--genesis-hash", &hash]);
    assert_eq!(ok.code, 0, "the genesis's own hash refused: {}", ok.stderr);
    assert!(ok.stdout.contains(&format!("genesis     {hash} (the trusted one")), "{}", ok.stdout);
    let (code, lj) = verify_json(&["ledger", l[0]]);
    assert_eq!(code, 0);
    assert_eq!(lj["genesis_hash"], hash.as_str(), "the ledger starts from another genesis than `genesis` printed");
    assert_eq!(lj["tip_height"], tip);

    // A wrong hash is refused by both commands, and so is something that is no hash.
    let mut wrong = hash.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    for args in [vec!["ledger", l[0]], [&["ledgers"][..], &l[..]].concat()] {
        let r = verify(&[&args[..], &["--genesis-hash", &wrong]].concat());
        assert_eq!(r.code, 1, "{args:?} with a wrong genesis hash: {}", r.stdout);
        assert!(r.stderr.contains("not the trusted") && r.stderr.contains(&wrong) && r.stderr.contains(&hash), "{}", r.stderr);
    }
    let r = verify(&["ledger", l[0], "--genesis-hash", "abc"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("64 hex digits"), "{}", r.stderr);
    let (code, e) = verify_json(&["ledger", l[0], "--genesis-hash", &wrong]);
    assert_eq!((code, &e["ok"]), (1, &Value::Bool(false)), "{e}");
    assert!(e["error"].as_str().unwrap().contains("not the trusted"), "{e}");

    // The four ledgers hold the same blocks up to the same tip.
    let r = verify(&[&["ledgers"][..], &l[..], &["--genesis", &genesis_file]].concat());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(&format!("4 ledgers hold the same blocks 1..={tip}")), "{}", r.stdout);
    assert!(!r.stdout.contains("shorter"), "{}", r.stdout);
    let (code, j) = verify_json(&[&["ledgers"][..], &l[..]].concat());
    assert_eq!(code, 0, "{j}");
    assert_eq!((&j["ok"], &j["command"]), (&Value::Bool(true), &Value::from("ledgers")));
    assert_eq!(j["common_prefix"], tip);
    assert_eq!(j["longest"], tip);
    assert_eq!(j["genesis_hash"], hash.as_str());
    assert_eq!(j["shorter"], serde_json::json!([]));
    let rows = j["ledgers"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for (row, path) in rows.iter().zip(&l) {
        assert_eq!(row["path"], *path);
        assert_eq!(row["tip_height"], tip, "{row}");
        assert_eq!(row["behind"], 0);
    }

    // A copy cut short (at a proven block, and in the middle of the record after it, as copying
    // a ledger while the bank appends leaves it) is shorter, not wrong.
    let bank2 = blocks(&ledgers[1]);
    let cut = (1..tip - 1).rev().find(|&h| bank2[h - 1].1).expect("a proven block before the tip");
    let offsets = LedgerFile::scan(&ledgers[1], |_, _| Ok(())).unwrap().blocks;
    let (next_at, next_len) = offsets[cut];
    let bytes = std::fs::read(&ledgers[1]).unwrap();
    let truncated = dir.join("bank2-truncated.log");
    std::fs::write(&truncated, &bytes[..next_at as usize + 8 + next_len as usize / 2]).unwrap();
    let r = verify(&["ledgers", l[0], s(&truncated), l[2], l[3]]);
    assert_eq!(r.code, 0, "a shorter copy is not an error: {}", r.stderr);
    assert!(r.stdout.contains(&format!("4 ledgers hold the same blocks 1..={cut}")), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("shorter     {}: {} blocks behind", s(&truncated), tip - cut)), "{}", r.stdout);
    let (code, j) = verify_json(&["ledgers", l[0], s(&truncated), l[2], l[3]]);
    assert_eq!(code, 0);
    assert_eq!(j["common_prefix"], cut);
    assert_eq!(j["longest"], tip);
    assert_eq!(j["shorter"], serde_json::json!([s(&truncated)]));
    assert_eq!(j["ledgers"][1]["tip_height"], cut);
    assert_eq!(j["ledgers"][1]["behind"], tip - cut);
    assert!(j["ledgers"][1]["torn_tail_bytes"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["ledgers"][0]["tip_height"], tip);

    // A copy with one block changed (a write's value, CRCs valid again) is refused at its height
    // (`forge_ledger` rewrites the first put).
    let changed_at = put_heights(&ledgers[0])[0];
    let changed = dir.join("bank1-changed.log");
    std::fs::write(
        &changed,
        bftcd_tests::forge_ledger(&ledgers[0], |op| match op.request.as_mut() {
            Some(Request::Put(p)) => {
                p.value = b"forged".to_vec();
                true
            }
            _ => false,
        }),
    )
    .unwrap();
    let r = verify(&["ledgers", l[1], s(&changed), l[2]]);
    assert_eq!(r.code, 1, "a changed block passed: {}", r.stdout);
    assert!(r.stderr.contains(s(&changed)) && r.stderr.contains(&format!("at height {changed_at}:")), "{}", r.stderr);
    let (code, j) = verify_json(&["compare", l[1], s(&changed)]);
    assert_eq!(code, 1);
    assert_eq!(j["ok"], false);
    assert_eq!(j["invalid_ledger"], s(&changed));
    assert_eq!(j["invalid_height"], changed_at, "{j}");

    // Errors are JSON too, with the same exit codes.
    let (code, j) = verify_json(&["ledger", s(&dir.join("no-such-ledger.log"))]);
    assert_eq!((code, &j["ok"]), (1, &Value::Bool(false)));
    assert!(j["error"].as_str().unwrap().contains("no-such-ledger.log"), "{j}");
    let (code, j) = verify_json(&["ledgers", l[0]]);
    assert_eq!((code, &j["ok"]), (2, &Value::Bool(false)), "a usage error: {j}");
}

/// Two ledgers that each verify but hold different blocks: possible only without certificates
/// (a single bank) or with more than f Byzantine banks. `ledgers` names the height, both files
/// and both blocks.
#[test]
fn auditor_finds_where_two_ledgers_diverge() {
    let dir = TestDir::new("verify-ledgers-diverge");
    let mut chain = Chain::start(&dir, 1);
    let original = ledgers_of_a_quiet_chain(&mut chain, 4).remove(0);
    // The last write rewritten, so that the two share a prefix; every later block re-chained
    // onto it: a consistent other history.
    let at = *put_heights(&original).last().unwrap();
    assert!(at > 1, "four writes in one block");
    let bytes = std::fs::read(&original).unwrap();
    let (mut out, mut pos, mut parent) = (bytes[..8].to_vec(), 8usize, None::<[u8; 32]>);
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let mut rec = LedgerRecord::decode(&bytes[pos + 8..pos + 8 + len]).unwrap();
        if let Some(Record::Block(cb)) = rec.record.as_mut() {
            let b = cb.block.as_mut().unwrap();
            if b.height == at {
                let Some(Request::Put(p)) = b.operations.iter_mut().find_map(|o| o.request.as_mut().filter(|r| matches!(r, Request::Put(_))))
                else {
                    unreachable!()
                };
                p.value = b"another history".to_vec();
            }
            if let Some(h) = parent {
                b.parent_hash = h.to_vec();
            }
            if b.height >= at {
                parent = Some(block_hash(b));
            }
        }
        let payload = rec.encode_to_vec();
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        pos += 8 + len;
    }
    let forked = dir.join("forked-ledger.log");
    std::fs::write(&forked, out).unwrap();
    let (mine, theirs) = (blocks(&original), blocks(&forked));
    assert_eq!(mine[..at as usize - 1], theirs[..at as usize - 1]);
    assert_ne!(mine[at as usize - 1].0, theirs[at as usize - 1].0);

    // Alone, each verifies: only comparing them shows the fork.
    assert_eq!(verify(&["ledger", s(&forked)]).code, 0);
    let r = verify(&["ledgers", s(&original), s(&forked)]);
    assert_eq!(r.code, 1, "a fork passed: {}", r.stdout);
    for needle in [
        format!("DIVERGED at height {at}:"),
        s(&original).to_string(),
        s(&forked).to_string(),
        hex(&mine[at as usize - 1].0),
        hex(&theirs[at as usize - 1].0),
    ] {
        assert!(r.stderr.contains(&needle), "no {needle} in: {}", r.stderr);
    }
    assert!(r.stdout.contains(&format!("2 ledgers hold the same blocks 1..={}", at - 1)), "{}", r.stdout);
    let (code, j) = verify_json(&["ledgers", s(&original), s(&forked)]);
    assert_eq!((code, &j["ok"]), (1, &Value::Bool(false)), "{j}");
    assert_eq!(j["diverged"]["height"], at);
    assert_eq!(j["diverged"]["ledgers"][0]["block_hash"], hex(&mine[at as usize - 1].0).as_str());
    assert_eq!(j["diverged"]["ledgers"][1]["path"], s(&forked));
    assert_eq!(j["common_prefix"], at - 1);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
