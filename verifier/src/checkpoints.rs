//! `checkpoints`: the state digest certificates banks keep in `<data-dir>/checkpoints`.
//!
//! Each certificate is n − f banks' signatures over one digest of their etcd state after one
//! block (docs/consensus.md, "State digest"). Checked against the genesis's operation keys, so
//! a file from any bank (or anyone) can be checked without trusting it. Two valid certificates
//! for the same height with different digests would mean more than f banks signed a lie.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bftcd_proto::bftcd::{CheckpointCert, Genesis};
use bftcd_sequencer::checkpoint;
use bftcd_sequencer::consensus::Domain;
use bftcd_sequencer::keys::ChainCrypto;
use serde_json::json;

use crate::Out;

/// The genesis's keys, to check certificates with.
pub struct Keys {
    crypto: ChainCrypto,
    pub domain: Domain,
}

impl Keys {
    pub fn of(g: &Genesis, genesis: &Path) -> Result<Keys, String> {
        let crypto = ChainCrypto::verifier(g).map_err(|e| format!("{}: {e}", genesis.display()))?;
        Ok(Keys { crypto, domain: Domain { chain_id: g.chain_id.clone(), epoch: g.epoch, n: g.validators.len() } })
    }

    /// Every certificate of a checkpoints file, each checked; Err names the first that fails.
    pub fn read_checked(&self, path: &Path) -> Result<Vec<CheckpointCert>, String> {
        let certs = checkpoint::read_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for c in &certs {
            checkpoint::verify_cert(&self.crypto, &self.domain, c)
                .map_err(|e| format!("{}: the certificate for block {}: {e}", path.display(), c.height))?;
        }
        Ok(certs)
    }
}

pub fn command(out: &mut Out, paths: Vec<PathBuf>, genesis: PathBuf) -> Result<(), String> {
    let g = crate::genesis::read(&genesis)?;
    let keys = Keys::of(&g, &genesis)?;
    let domain = &keys.domain;
    let mut by_height: BTreeMap<u64, (Vec<u8>, String)> = BTreeMap::new();
    let mut files = Vec::new();
    for path in &paths {
        let certs = keys.read_checked(path)?;
        for c in &certs {
            match by_height.get(&c.height) {
                Some((d, other)) if *d != c.state_digest => {
                    return Err(format!(
                        "block {}: {} certifies state digest {} but {} certifies {}: more than f banks signed a false state",
                        c.height,
                        other,
                        hex::encode(d),
                        path.display(),
                        hex::encode(&c.state_digest)
                    ))
                }
                Some(_) => {}
                None => {
                    by_height.insert(c.height, (c.state_digest.clone(), path.display().to_string()));
                }
            }
        }
        let last = certs.last();
        out.line(format!(
            "{}: {} certificates, blocks {}..={}",
            path.display(),
            certs.len(),
            certs.first().map_or(0, |c| c.height),
            last.map_or(0, |c| c.height)
        ));
        files.push(json!({
            "path": path.display().to_string(),
            "certificates": certs.len(),
            "first_height": certs.first().map(|c| c.height),
            "last_height": last.map(|c| c.height),
        }));
    }
    let quorum = if domain.n == 1 { 1 } else { domain.quorum() };
    out.line(format!("every certificate carries at least {quorum} of {} banks' valid signatures (genesis {})", domain.n, genesis.display()));
    if let Some((h, (d, _))) = by_height.last_key_value() {
        out.line(format!("last certified: block {h}, state digest {}", hex::encode(d)));
        out.set("last_height", *h);
        out.set("last_state_digest", hex::encode(d));
    }
    out.set("files", files);
    out.set("heights", by_height.len());
    Ok(())
}
