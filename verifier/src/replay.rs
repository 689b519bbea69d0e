//! `replay`: the ledger applied to a scratch stock etcd by the banks' own apply engine
//! (`bftcd replay`), the state digests recomputed, and each compared with the digest the banks
//! certified for the same block.
//!
//! The ledger is verified first (as `ledger`, against the given genesis) and every certificate
//! is checked against the genesis keys, so nothing here rests on the bank the files came from.
//! A match proves that n − f banks certified exactly the state the ledger's writes produce;
//! a mismatch, that they certified something else (or that the replay differs from the banks'
//! apply, a bug either way).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bftcd_proto::bftcd::{CheckpointCert, Genesis};
use bftcd_sequencer::checkpoint;
use serde_json::{json, Value};

use crate::ledger::{self, Trusted};
use crate::Out;

pub struct Args {
    pub path: PathBuf,
    pub genesis: PathBuf,
    pub checkpoints: Option<PathBuf>,
    pub to_height: Option<u64>,
    pub etcd_bin: Option<PathBuf>,
    pub bftcd_bin: Option<PathBuf>,
    /// The etcd snapshot a chain made from one starts from.
    pub initial_snapshot: Option<PathBuf>,
}

/// `bftcd`: `--bftcd-bin`, then beside this executable, then PATH.
fn find_bftcd(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(format!("{} not found (from --bftcd-bin)", p.display())) };
    }
    if let Some(beside) = std::env::current_exe().ok().map(|e| e.with_file_name("bftcd")).filter(|p| p.is_file()) {
        return Ok(beside);
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("bftcd")).find(|c| c.is_file()))
        .ok_or_else(|| "bftcd not found: pass --bftcd-bin, or put it beside bftcd-verify or on PATH".to_string())
}

/// The checkpoints file: given, or the one beside the ledger (a bank's data directory).
fn checkpoints_path(args: &Args) -> Result<PathBuf, String> {
    if let Some(p) = &args.checkpoints {
        return Ok(p.clone());
    }
    let beside = args.path.parent().unwrap_or(Path::new(".")).join("checkpoints");
    if beside.is_file() {
        Ok(beside)
    } else {
        Err(format!("no checkpoints file beside {} ({}): pass --checkpoints FILE", args.path.display(), beside.display()))
    }
}

/// What `bftcd replay` printed.
#[derive(Default)]
struct Replayed {
    /// Certified height -> (revision, digest; None when etcd had compacted past the block's
    /// revision). Only the certified heights are kept: a long ledger has a digest per block.
    digests: BTreeMap<u64, (i64, Option<String>)>,
    /// Blocks digested, certified or not.
    digested: u64,
    end: Option<Value>,
    error: Option<String>,
}

fn run_bftcd(bftcd: &Path, args: &Args, to: u64, certified: &BTreeMap<u64, String>) -> Result<Replayed, String> {
    let mut cmd = Command::new(bftcd);
    cmd.arg("replay").arg("--ledger").arg(&args.path).arg("--genesis").arg(&args.genesis).arg(format!("--to-height={to}"));
    if let Some(e) = &args.etcd_bin {
        cmd.arg("--etcd-bin").arg(e);
    }
    if let Some(f) = &args.initial_snapshot {
        cmd.arg("--initial-snapshot").arg(f);
    }
    // Its stderr is progress and warnings: the auditor's to see as it goes.
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bftcd.display()))?;
    let mut r = Replayed::default();
    let stdout = child.stdout.take().ok_or("no stdout from bftcd replay")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("reading bftcd replay's output: {e}"))?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
        match v["event"].as_str() {
            Some("digest") => {
                let (Some(h), Some(rev)) = (v["height"].as_u64(), v["revision"].as_i64()) else { continue };
                let digest = v["state_digest"].as_str().map(str::to_string);
                r.digested += u64::from(digest.is_some());
                if certified.contains_key(&h) {
                    r.digests.insert(h, (rev, digest));
                }
            }
            Some("end") => r.end = Some(v),
            Some("error") => r.error = v["error"].as_str().map(str::to_string),
            _ => {}
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for bftcd replay: {e}"))?;
    match (status.success(), r.error.take(), &r.end) {
        (true, None, Some(_)) => Ok(r),
        (_, Some(e), _) => Err(format!("the replay failed: {e}")),
        (_, None, _) => Err(format!("the replay failed: {} ({status})", bftcd.display())),
    }
}

/// The certificates, each checked against the genesis keys. A single-bank chain has no
/// quorum and signs nothing: its certificates are the bank's own digests, of this epoch.
fn read_certificates(g: &Genesis, genesis: &Path, path: &Path) -> Result<Vec<CheckpointCert>, String> {
    if g.validators.len() > 1 {
        return crate::checkpoints::Keys::of(g, genesis)?.read_checked(path);
    }
    let certs = checkpoint::read_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for c in &certs {
        if c.epoch != g.epoch || c.state_digest.len() != 32 {
            return Err(format!("{}: the certificate for block {} is not one of this chain's epoch {} with a 32-byte digest", path.display(), c.height, g.epoch));
        }
    }
    Ok(certs)
}

pub fn command(out: &mut Out, args: Args) -> Result<(), String> {
    let g = crate::genesis::read(&args.genesis)?;
    let trusted = Trusted { hash: bftcd_sequencer::genesis_hash(&g), from: format!("--genesis {}", args.genesis.display()) };
    out.set("ledger", args.path.display().to_string());
    out.set("genesis_hash", hex::encode(trusted.hash));
    // The ledger first, as `ledger` checks it: another chain's, or a forged one, is refused here.
    let v = ledger::verify(&args.path, false, Some(&trusted), &mut |_| {}).map_err(|e| {
        out.set("invalid_height", e.height);
        format!("ledger {}: {e}", args.path.display())
    })?;
    let tip = v.hashes.len() as u64;
    let n = g.validators.len();
    out.line(format!("ledger      {}: {tip} blocks, {} operations, verified from the genesis (n = {n})", args.path.display(), v.operations));
    out.set("tip_height", tip);
    let to = match args.to_height {
        Some(h) if h > tip => return Err(format!("--to-height {h}: the ledger ends at block {tip}")),
        Some(h) => h,
        None => tip,
    };

    let cp_path = checkpoints_path(&args)?;
    out.set("checkpoints", cp_path.display().to_string());
    let certs = read_certificates(&g, &args.genesis, &cp_path)?;
    let mut certified: BTreeMap<u64, String> = BTreeMap::new();
    for c in &certs {
        let d = hex::encode(&c.state_digest);
        if let Some(other) = certified.insert(c.height, d.clone()).filter(|o| *o != d) {
            return Err(format!("{}: two certificates for block {} with different digests ({other}, {d})", cp_path.display(), c.height));
        }
    }
    let how = if n == 1 { "unsigned (a single bank's own digests: n = 1)" } else { "each with n − f valid signatures" };
    out.line(format!("checkpoints {}: {} certificates, {how}", cp_path.display(), certs.len()));
    out.set("certificates", certs.len());
    if certified.is_empty() {
        return Err(format!("{} holds no certificate: nothing certified to compare with", cp_path.display()));
    }

    let bftcd = find_bftcd(args.bftcd_bin.as_deref())?;
    let replayed = run_bftcd(&bftcd, &args, to, &certified)?;
    let end = replayed.end.clone().unwrap_or_default();
    let replayed_to = end["height"].as_u64().unwrap_or(to);
    let digested = replayed.digested;
    out.line(format!("replayed    blocks 1..={replayed_to} into a scratch etcd: {digested} state digests"));
    out.set("replayed_to", replayed_to);
    out.set("digested", digested);

    let (mut compared, mut matched) = (0u64, 0u64);
    let mut mismatch: Option<Value> = None;
    let mut last_match = None;
    let (mut not_digested, mut beyond) = (Vec::new(), Vec::new());
    for (&h, cert) in &certified {
        if h > replayed_to {
            beyond.push(h);
            continue;
        }
        match replayed.digests.get(&h) {
            Some((revision, Some(d))) => {
                compared += 1;
                if d == cert {
                    matched += 1;
                    last_match = Some((h, d.clone()));
                } else if mismatch.is_none() {
                    // The state went apart after the last block that matched before this one.
                    let since = last_match.as_ref().map(|(m, _): &(u64, String)| *m);
                    mismatch = Some(json!({"height": h, "revision": revision, "certified": cert, "replayed": d, "last_match_before": since}));
                }
            }
            _ => not_digested.push(h),
        }
    }
    out.line(format!("compared    {compared} certified blocks, {matched} match"));
    if !not_digested.is_empty() {
        out.line(format!("not digested {not_digested:?}: certified, but the replay has no digest there (etcd compacted past the block's revision)"));
    }
    if !beyond.is_empty() {
        out.line(format!("beyond      {} certificates for blocks after {replayed_to} (not replayed)", beyond.len()));
    }
    let revision = end["revision"].as_i64().unwrap_or_default();
    let hash_kv = end["hash_kv"].as_u64().unwrap_or_default();
    out.line(format!("etcd        revision {revision}, HashKV {hash_kv} (compacted at {})", end["compact_revision"]));
    out.set("compared", compared);
    out.set("matched", matched);
    out.set("mismatch", mismatch.clone());
    out.set("not_digested", not_digested);
    out.set("beyond_replay", beyond);
    out.set("final_revision", revision);
    out.set("hash_kv", hash_kv);
    out.set("compact_revision", end["compact_revision"].clone());
    if let Some(m) = mismatch {
        return Err(format!(
            "MISMATCH at block {}: the banks certified state digest {} but replaying the ledger gives {} (etcd revision {}); {}",
            m["height"],
            m["certified"].as_str().unwrap_or_default(),
            m["replayed"].as_str().unwrap_or_default(),
            m["revision"],
            match m["last_match_before"].as_u64() {
                Some(b) => format!("the last certified block before it that matches is {b}, so the certified state went apart from the ledger's writes after it"),
                None => "no certified block before it matches".to_string(),
            }
        ));
    }
    if compared == 0 {
        return Err("no certified block could be compared with the replay".into());
    }
    if let Some((h, d)) = last_match {
        out.line(format!("last match  block {h}, state digest {d}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(path: PathBuf, checkpoints: Option<PathBuf>) -> Args {
        Args { path, genesis: PathBuf::new(), checkpoints, to_height: None, etcd_bin: None, bftcd_bin: None, initial_snapshot: None }
    }

    #[test]
    fn the_checkpoints_file_is_the_one_given_or_the_one_beside_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger.log");
        let given = PathBuf::from("elsewhere/checkpoints");
        assert_eq!(checkpoints_path(&args(ledger.clone(), Some(given.clone()))), Ok(given));
        let missing = checkpoints_path(&args(ledger.clone(), None)).unwrap_err();
        assert!(missing.contains("--checkpoints"), "{missing}");
        std::fs::write(dir.path().join("checkpoints"), b"").unwrap();
        assert_eq!(checkpoints_path(&args(ledger, None)), Ok(dir.path().join("checkpoints")));
    }

    #[test]
    fn a_bftcd_binary_given_must_exist() {
        let e = find_bftcd(Some(Path::new("/nonexistent/bftcd"))).unwrap_err();
        assert!(e.contains("--bftcd-bin"), "{e}");
    }
}
