//! Evidence of equivocation with real sidecars and etcds: a Byzantine leader (test build,
//! `--byzantine=equivocate`) signs two different blocks for its views and shows each to some of
//! the banks. Every honest bank must end up with the proof in its ledger and in its evidence
//! directory, `bftcd-verify` must accept it against the genesis keys, and evidence altered to
//! name an honest bank must be refused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bftcd_proto::bftcd::{Evidence, EvidenceFile};
use bftcd_proto::Message;
use bftcd_tests::{Chain, Deviant, TestDir};
use serde_json::Value;

const LIAR: usize = 0;

fn byzantine_bin() -> PathBuf {
    bftcd_tests::bins::try_byzantine_bin("debug").unwrap_or_else(|e| panic!("{e}"))
}

/// `bftcd-verify --json ARGS`: exit code and the JSON object printed.
fn verify_json(args: &[&str]) -> (i32, Value) {
    let bin = bftcd_tests::bftcd_bin().with_file_name("bftcd-verify");
    let out = Command::new(bin).arg("--json").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"));
    (out.status.code().unwrap_or(-1), v)
}

/// Evidence committed in a ledger, with the height of its block.
fn committed_evidence(ledger: &Path) -> Vec<(u64, Evidence)> {
    let mut found = Vec::new();
    let _ = bftcd_sequencer::LedgerFile::scan(ledger, |_, cb| {
        let b = cb.block.as_ref().unwrap();
        found.extend(b.evidence.iter().map(|e| (b.height, e.clone())));
        Ok(())
    });
    found
}

fn evidence_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join("evidence"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "pb")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn an_equivocating_leader_is_proven_in_every_honest_ledger_and_cannot_be_framed() {
    let dir = TestDir::new("evidence-equivocate");
    let deviant = Deviant { bank: LIAR, bin: byzantine_bin(), args: vec!["--byzantine=equivocate".into()] };
    let chain = Chain::start_with(&dir, 4, Some(deviant));
    let honest = [1usize, 2, 3];
    let ledger = |b: usize| chain.banks[b].sidecar.data_dir().join("ledger.log");

    // Write until every honest ledger holds evidence against the liar (it leads about one view
    // in four until the leader choice passes it over).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut round = 0;
    loop {
        let done = honest.iter().all(|&b| committed_evidence(&ledger(b)).iter().any(|(_, e)| e.offender as usize == LIAR));
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "after {round} writes, not every honest ledger holds evidence");
        let b = honest[round % honest.len()];
        chain.etcdctl(b).with_timeout(Duration::from_secs(40)).run(&["put", &format!("ev/{round}"), "v"]).expect_success();
        round += 1;
    }
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(60));

    let genesis = chain.genesis.to_str().unwrap().to_string();
    for &b in &honest {
        // Only the liar is ever named, in the ledger and in the kept files.
        for (height, e) in committed_evidence(&ledger(b)) {
            assert_eq!(e.offender as usize, LIAR, "bank {}: evidence against an honest bank at block {height}", b + 1);
        }
        let files = evidence_files(chain.banks[b].sidecar.data_dir());
        assert!(!files.is_empty(), "bank {} kept no evidence file", b + 1);
        // The auditor's checks: each file, and the ledger (which checks its evidence too).
        let paths: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
        let mut args = vec!["evidence", "--genesis", genesis.as_str()];
        args.extend(&paths);
        let (code, v) = verify_json(&args);
        assert_eq!(code, 0, "{v}");
        assert!(v["evidence"].as_array().unwrap().iter().all(|e| e["valid"] == true && e["offender"] == LIAR as u64), "{v}");
        let l = ledger(b);
        let (code, v) = verify_json(&["ledger", l.to_str().unwrap(), "--genesis", &genesis]);
        assert_eq!(code, 0, "{v}");
        let listed = v["evidence"].as_array().unwrap();
        assert!(!listed.is_empty() && listed.iter().all(|e| e["offender"] == LIAR as u64), "{v}");
    }

    // Framing an honest bank: the same evidence naming bank 2, or with a block hash changed.
    let file = &evidence_files(chain.banks[1].sidecar.data_dir())[0];
    let original = EvidenceFile::decode(std::fs::read(file).unwrap().as_slice()).unwrap();
    let forged_path = dir.join("forged.pb");
    let mut named = original.clone();
    named.evidence.as_mut().unwrap().offender = 1;
    let mut altered = original.clone();
    match altered.evidence.as_mut().unwrap().kind.as_mut().unwrap() {
        bftcd_proto::bftcd::evidence::Kind::DoubleProposal(d) => d.block_hash_b[31] ^= 1,
        bftcd_proto::bftcd::evidence::Kind::DoubleVote(d) => d.block_hash_b[31] ^= 1,
    }
    let mut other_chain = original.clone();
    other_chain.chain_id.push('x');
    for forged in [named, altered, other_chain] {
        std::fs::write(&forged_path, forged.encode_to_vec()).unwrap();
        let (code, v) = verify_json(&["evidence", "--genesis", &genesis, forged_path.to_str().unwrap()]);
        assert_eq!(code, 1, "forged evidence accepted: {v}");
        assert_eq!(v["evidence"][0]["valid"], false, "{v}");
    }
    std::fs::write(&forged_path, b"not evidence").unwrap();
    let (code, _) = verify_json(&["evidence", "--genesis", &genesis, forged_path.to_str().unwrap()]);
    assert_eq!(code, 1);
}
