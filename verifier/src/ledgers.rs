//! `ledgers` (alias `compare`): several banks' ledgers side by side.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::ledger::{self, Verified};
use crate::{Out, TrustArgs};

/// Two ledgers (by index) holding different blocks at `height`.
#[derive(Debug, PartialEq, Eq)]
pub struct Divergence {
    pub height: usize,
    pub a: usize,
    pub b: usize,
}

/// The lowest height at which two of the chains (block hashes by height from 1) hold different
/// blocks; a shorter chain agrees with the others as far as it goes.
pub fn first_divergence(chains: &[&[[u8; 32]]]) -> Option<Divergence> {
    let longest = chains.iter().map(|c| c.len()).max().unwrap_or(0);
    (0..longest).find_map(|i| {
        let mut holders = chains.iter().enumerate().filter(|(_, c)| c.len() > i);
        let (a, first) = holders.next()?;
        holders.find(|(_, c)| c[i] != first[i]).map(|(b, _)| Divergence { height: i + 1, a, b })
    })
}

/// Verifies every ledger, then reports tips, the common prefix, the shorter ones, and fails at
/// the first height where two of them differ.
pub fn command(out: &mut Out, paths: Vec<PathBuf>, trust: TrustArgs) -> Result<(), String> {
    let trusted = trust.resolve()?;
    let mut verified: Vec<Verified> = Vec::new();
    for p in &paths {
        let v = ledger::verify(p, false, trusted.as_ref(), &mut |_| {}).map_err(|e| {
            out.set("invalid_ledger", p.display().to_string());
            out.set("invalid_height", e.height);
            // Most reasons already name the file (`ledger PATH at byte N: ...`).
            let path = p.display().to_string();
            if e.error.contains(&path) { e.to_string() } else { format!("{path}: {e}") }
        })?;
        verified.push(v);
    }
    let show = |i: usize| paths[i].display().to_string();
    let genesis = verified[0].genesis_hash;
    if let Some(i) = verified.iter().position(|v| v.genesis_hash != genesis) {
        return Err(format!(
            "{} and {} belong to different chains (genesis {} vs {})",
            show(0),
            show(i),
            hex::encode(genesis),
            hex::encode(verified[i].genesis_hash)
        ));
    }
    let longest = verified.iter().map(|v| v.hashes.len()).max().unwrap_or(0);
    let chains: Vec<&[[u8; 32]]> = verified.iter().map(|v| v.hashes.as_slice()).collect();
    let diverged = first_divergence(&chains);
    let shortest = chains.iter().map(|c| c.len()).min().unwrap_or(0);
    let common = diverged.as_ref().map_or(shortest, |d| shortest.min(d.height - 1));

    let mut rows = Vec::new();
    for (i, v) in verified.iter().enumerate() {
        let tip = v.hashes.len();
        let torn = if v.torn_tail > 0 { format!(", torn tail of {} bytes (never committed)", v.torn_tail) } else { String::new() };
        out.line(format!("ledger      {}: tip {tip} ({}), {} operations{torn}", show(i), hex::encode(v.tip_hash), v.operations));
        rows.push(json!({
            "path": show(i), "tip_height": tip, "tip_hash": hex::encode(v.tip_hash), "operations": v.operations,
            "commit_proofs": v.commit_proofs, "torn_tail_bytes": v.torn_tail, "behind": longest - tip,
        }));
    }
    let n = verified[0].genesis.validators.len();
    match &trusted {
        Some(t) => out.line(format!("genesis     {} (the trusted one, from {})", hex::encode(genesis), t.from)),
        None => out.line(format!("genesis     {} (the ledgers' own: pin it with --genesis-hash)", hex::encode(genesis))),
    }
    if n > 1 {
        out.line(format!("certificates every block's QC and commit proof verified in every ledger (n = {n}, f = {})", (n - 1) / 3));
    }
    out.line(format!("longest     {longest} blocks"));
    match common {
        0 => out.line(format!("common      {} ledgers share no block", paths.len())),
        c => out.line(format!("common      {} ledgers hold the same blocks 1..={c}", paths.len())),
    }
    let shorter: Vec<usize> = (0..paths.len()).filter(|&i| chains[i].len() < longest).collect();
    for &i in &shorter {
        out.line(format!(
            "shorter     {}: {} blocks behind the longest (a lagging bank or a truncated copy: not an error)",
            show(i),
            longest - chains[i].len()
        ));
    }
    let common_hash = if common == 0 { genesis } else { chains[0][common - 1] };
    out.set("ledgers", rows);
    out.set("genesis_hash", hex::encode(genesis));
    out.set("genesis_trusted", trusted.map(|t| t.from));
    out.set("longest", longest);
    out.set("common_prefix", common);
    out.set("common_prefix_hash", hex::encode(common_hash));
    out.set("shorter", shorter.iter().map(|&i| show(i)).collect::<Vec<_>>());
    out.set("diverged", Value::Null);
    if let Some(d) = diverged {
        let (h, ha, hb) = (d.height, hex::encode(chains[d.a][d.height - 1]), hex::encode(chains[d.b][d.height - 1]));
        out.set(
            "diverged",
            json!({"height": h, "ledgers": [{"path": show(d.a), "block_hash": ha}, {"path": show(d.b), "block_hash": hb}]}),
        );
        let why = if n > 1 {
            "both verified with their certificates: more than f banks signed conflicting blocks"
        } else {
            "a single-bank chain has no certificates: one of them was rewritten"
        };
        return Err(format!("DIVERGED at height {h}: {} holds block {ha}, {} holds block {hb} ({why})", show(d.a), show(d.b)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{first_divergence, Divergence};

    #[test]
    fn ledgers_differ_where_their_first_block_does() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        assert_eq!(first_divergence(&[&[a, b], &[a, b, c]]), None, "a shorter ledger agrees so far");
        assert_eq!(first_divergence(&[&[a, b, c], &[a, c, c]]), Some(Divergence { height: 2, a: 0, b: 1 }));
        assert_eq!(first_divergence(&[&[], &[a]]), None);
        assert_eq!(first_divergence(&[&[], &[]]), None);
    }

    #[test]
    fn ledgers_beyond_the_shortest_are_compared_too() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        // The first ledger stops at 1; the other two differ at 2.
        assert_eq!(first_divergence(&[&[a], &[a, b], &[a, c]]), Some(Divergence { height: 2, a: 1, b: 2 }));
        assert_eq!(first_divergence(&[&[a, b], &[a, b], &[a, b, c]]), None);
    }
}
