//! `evidence`: files of evidence of equivocation that banks keep in `<data-dir>/evidence/` (one
//! per equivocation), checked against the genesis keys alone. Valid evidence proves that the
//! named bank signed two conflicting messages for one view, which no honest bank does
//! (docs/consensus.md, "Evidence"); nothing else is needed to believe it.

use std::path::PathBuf;

use bftcd_proto::bftcd::{evidence::Kind, Evidence, EvidenceFile, Genesis};
use bftcd_proto::Message;
use bftcd_sequencer::consensus::Domain;
use bftcd_sequencer::keys::ChainCrypto;
use serde_json::{json, Value};

use crate::Out;

/// One line saying what `ev` proves, with the bank's name from the genesis.
pub fn describe(g: &Genesis, ev: &Evidence) -> String {
    let name = g.validators.get(ev.offender as usize).map_or("?", |v| v.name.as_str());
    let short = |h: &[u8]| hex::encode(&h[..h.len().min(8)]);
    match &ev.kind {
        Some(Kind::DoubleProposal(d)) => format!(
            "{name} (validator {}) signed two different proposals for view {}: blocks {}… and {}…",
            ev.offender,
            ev.view,
            short(&d.block_hash_a),
            short(&d.block_hash_b)
        ),
        Some(Kind::DoubleVote(d)) => format!(
            "{name} (validator {}) voted for two different blocks in view {}: {}… and {}…",
            ev.offender,
            ev.view,
            short(&d.block_hash_a),
            short(&d.block_hash_b)
        ),
        None => format!("{name}: evidence of no kind"),
    }
}

pub fn kind_name(ev: &Evidence) -> &'static str {
    match ev.kind {
        Some(Kind::DoubleVote(_)) => "double-vote",
        Some(Kind::DoubleProposal(_)) => "double-proposal",
        None => "none",
    }
}

pub fn json_of(g: &Genesis, ev: &Evidence) -> Value {
    json!({
        "offender": ev.offender,
        "bank": g.validators.get(ev.offender as usize).map(|v| v.name.clone()),
        "view": ev.view,
        "epoch": ev.epoch,
        "kind": kind_name(ev),
    })
}

pub fn command(out: &mut Out, paths: Vec<PathBuf>, genesis: PathBuf) -> Result<(), String> {
    let g = crate::genesis::read(&genesis)?;
    let crypto = ChainCrypto::verifier(&g).map_err(|e| format!("{}: {e}", genesis.display()))?;
    let domain = Domain { chain_id: g.chain_id.clone(), epoch: g.epoch, n: g.validators.len() };
    let mut checked = Vec::new();
    let mut result = Ok(());
    for path in &paths {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = EvidenceFile::decode(bytes.as_slice()).map_err(|e| format!("{}: not an evidence file ({e})", path.display()))?;
        let Some(ev) = file.evidence else { return Err(format!("{}: the file holds no evidence", path.display())) };
        let verdict = if file.chain_id != g.chain_id {
            Err(format!("evidence of chain {:?}, not of this genesis's chain {:?}", file.chain_id, g.chain_id))
        } else {
            bftcd_sequencer::evidence::check(&domain, &crypto, &ev).map_err(|e| e.to_string())
        };
        let mut entry = json_of(&g, &ev);
        entry["path"] = path.display().to_string().into();
        entry["valid"] = verdict.is_ok().into();
        match &verdict {
            Ok(()) => out.line(format!("{}: VALID: {}", path.display(), describe(&g, &ev))),
            Err(e) => {
                out.line(format!("{}: NOT VALID: {e}", path.display()));
                entry["error"] = e.clone().into();
                if result.is_ok() {
                    result = Err(format!("{}: {e}", path.display()));
                }
            }
        }
        checked.push(entry);
    }
    out.set("evidence", checked);
    result
}
