//! `genesis`: what an auditor pins before reading any ledger.

use std::path::{Path, PathBuf};

use bftcd_proto::bftcd::Genesis;
use bftcd_sequencer::genesis_hash;
use bftcd_sequencer::keys::{check_genesis, ChainCrypto};
use serde_json::json;

use crate::Out;

pub fn read(path: &Path) -> Result<Genesis, String> {
    use bftcd_proto::Message;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Genesis::decode(bytes.as_slice()).map_err(|e| format!("{}: not a genesis file: {e}", path.display()))
}

/// Checks the genesis's keys as a ledger's verification would, then prints its hash (the one
/// `--genesis-hash` takes) and the validator set.
pub fn command(out: &mut Out, path: PathBuf, signatures: Option<PathBuf>) -> Result<(), String> {
    let g = read(&path)?;
    let n = g.validators.len();
    // The same checks a ledger's genesis gets: with n > 1 every proof of possession and key.
    if n > 1 {
        ChainCrypto::verifier(&g).map_err(|e| format!("{}: {e}", path.display()))?;
    } else {
        check_genesis(&g).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let hash = hex::encode(genesis_hash(&g));
    out.line(format!("genesis     {}", path.display()));
    out.line(format!("hash        {hash}"));
    out.line(format!("chain id    {}", g.chain_id));
    out.line(format!("epoch       {}", g.epoch));
    out.line(format!("time        {} ms since the Unix epoch", g.genesis_time_ms));
    match g.apply_batch_max {
        0 => out.line("apply mode  exact (one etcd Txn per write)"),
        m => out.line(format!("apply mode  batched (up to {m} writes per etcd Txn)")),
    }
    out.line(format!("validators  {n} (n = {n}, f = {}; index as in the ledger's proposer and operation ids)", (n - 1) / 3));
    for (i, v) in g.validators.iter().enumerate() {
        let peer = if v.peer_address.is_empty() { "-" } else { &v.peer_address };
        out.line(format!("  {i}  {}  peer {peer}  client {}", v.name, v.client_address));
    }
    let owners: Vec<(String, String)> = g
        .key_owners
        .iter()
        .map(|o| {
            let bank = g.validators.get(o.bank as usize).map(|v| v.name.clone()).unwrap_or_else(|| format!("#{}", o.bank));
            (String::from_utf8_lossy(&o.prefix).into_owned(), bank)
        })
        .collect();
    if !owners.is_empty() {
        let shown: Vec<String> = owners.iter().map(|(p, b)| format!("{p}={b}")).collect();
        out.line(format!("key owners  {}", shown.join(" ")));
    }
    // A chain made from an etcd snapshot (docs/migration.md): what an auditor compares with the
    // snapshot file and with the first certified checkpoints.
    if !g.initial_state_digest.is_empty() {
        out.line(format!(
            "initial     etcd snapshot sha256 {}, revision {}, {} leases, state digest {}",
            hex::encode(&g.initial_snapshot_sha256),
            g.initial_revision,
            g.initial_leases.len(),
            hex::encode(&g.initial_state_digest)
        ));
        out.set(
            "initial_state",
            json!({
                "revision": g.initial_revision,
                "state_digest": hex::encode(&g.initial_state_digest),
                "snapshot_sha256": hex::encode(&g.initial_snapshot_sha256),
                "leases": g.initial_leases.len(),
            }),
        );
    }
    if n > 1 {
        out.line("keys        every BLS key's proof of possession and every operation key verified");
    }
    if let Some(sigs) = &signatures {
        let signed = read_signatures(sigs, &genesis_hash(&g))?;
        bftcd_sequencer::ceremony::check(&g, &signed)
            .map_err(|e| format!("INVALID: {}: {e}", sigs.display()))?;
        out.line(format!(
            "signatures  every bank's signature over this genesis verified ({})",
            sigs.display()
        ));
        out.set("signatures_verified", true);
    }
    out.set("genesis", path.display().to_string());
    out.set("genesis_hash", hash);
    out.set("chain_id", g.chain_id.clone());
    out.set("epoch", g.epoch);
    out.set("genesis_time_ms", g.genesis_time_ms);
    out.set("apply_batch_max", g.apply_batch_max);
    out.set("n", n);
    out.set("f", (n - 1) / 3);
    let validators: Vec<_> = g
        .validators
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"index": i, "name": v.name, "peer_address": v.peer_address, "client_address": v.client_address}))
        .collect();
    out.set("validators", validators);
    out.set("key_owners", owners.iter().map(|(p, b)| json!({"prefix": p, "bank": b})).collect::<Vec<_>>());
    Ok(())
}

/// The signatures over the genesis in a file, or in every file of a directory, merged (those
/// over another genesis are left out: `check` then names the banks missing).
fn read_signatures(
    path: &Path,
    hash: &[u8; 32],
) -> Result<bftcd_proto::bftcd::GenesisSignatures, String> {
    use bftcd_proto::Message;
    let files = bftcd_sequencer::ceremony::signature_files(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut all = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let sigs = bftcd_proto::bftcd::GenesisSignatures::decode(bytes.as_slice())
            .map_err(|e| format!("{}: not a genesis signatures file: {e}", f.display()))?;
        all.push(sigs);
    }
    Ok(bftcd_sequencer::ceremony::merge(all, hash).0)
}
