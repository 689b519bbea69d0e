//! `bftcd-verify`: audits a BFTcd ledger offline, from genesis, without trusting the bank that
//! produced it.
//!
//! Checked: record framing and CRCs, the genesis record (every BLS key with its proof of
//! possession), consecutive heights, the parent hash chain, strictly increasing block times,
//! and that every operation names a bank of the validator set and appears once. For a
//! multi-bank chain also: every block's justify QC is a valid BLS quorum certificate for its
//! parent; every commit proof (the QC of a direct child in the next view, with that child's
//! header) verifies; every block is covered by a proof at or after it; every operation carries
//! a valid Ed25519 signature (ZIP 215 rules, as the banks check) of the bank that submitted it:
//! the bank's signature over the Merkle root of the batch it forwarded the operation in, which
//! the operation's path leads to.
//! A single-bank chain (n = 1) has no certificates.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bftcd_proto::bftcd::{operation::Request, Operation};
use bftcd_sequencer::consensus::{Crypto, Domain};
use bftcd_sequencer::keys::ChainCrypto;
use bftcd_sequencer::governance::{Approval, ChainRules, Effect, Refusal};
use bftcd_sequencer::{block_hash, genesis_hash, header, LedgerFile};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bftcd-verify", version, about = "Audit a BFTcd ledger offline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a ledger file from genesis and print a summary.
    Ledger {
        /// Path to the ledger (a bank's <data-dir>/ledger.log).
        path: PathBuf,
        /// Also list every operation: position, submitting bank, the client the bank vouched for
        /// (`cn=`, `user=`, or `-`), kind and key.
        #[arg(long)]
        ops: bool,
        /// The genesis to trust (a `bftcd genesis` file, obtained apart from the ledger): the
        /// ledger must start from exactly this one. Without it the ledger's own genesis is trusted.
        #[arg(long)]
        genesis: Option<PathBuf>,
    },
    /// Verify several banks' ledgers, then check that they hold the same blocks at every height
    /// they share (a bank's ledger may be shorter). Exits 1 at the first difference.
    Compare {
        /// The ledgers (each bank's <data-dir>/ledger.log), two or more.
        #[arg(required = true, num_args = 2..)]
        paths: Vec<PathBuf>,
        /// The genesis to trust, as for `ledger`.
        #[arg(long)]
        genesis: Option<PathBuf>,
    },
}

fn read_genesis(path: &Path) -> Result<bftcd_proto::bftcd::Genesis, String> {
    use bftcd_proto::Message;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    bftcd_proto::bftcd::Genesis::decode(bytes.as_slice()).map_err(|e| format!("{}: not a genesis file: {e}", path.display()))
}

/// Where two ledgers' blocks first differ (each a list of block hashes by height from 1), if
/// anywhere within the heights both hold.
fn first_difference(a: &[[u8; 32]], b: &[[u8; 32]]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).map(|i| i + 1)
}

fn compare(paths: Vec<PathBuf>, trusted: Option<PathBuf>) -> Result<(), String> {
    let mut chains = Vec::new();
    for p in &paths {
        let verified = verify(p.clone(), false, trusted.clone()).map_err(|e| format!("{}: {e}", p.display()))?;
        chains.push(verified);
    }
    let (first_path, (first_genesis, first)) = (&paths[0], &chains[0]);
    for (p, (g, hashes)) in paths.iter().zip(&chains).skip(1) {
        if g != first_genesis {
            return Err(format!(
                "{} and {} belong to different chains (genesis {} vs {})",
                first_path.display(),
                p.display(),
                hex::encode(first_genesis),
                hex::encode(g)
            ));
        }
        if let Some(h) = first_difference(first, hashes) {
            return Err(format!(
                "DIVERGED at height {h}: {} holds block {}, {} holds block {} (both certified: \
                 more than f banks signed conflicting blocks)",
                first_path.display(),
                hex::encode(first[h - 1]),
                p.display(),
                hex::encode(hashes[h - 1])
            ));
        }
    }
    let shared = chains.iter().map(|(_, h)| h.len()).min().unwrap_or(0);
    println!("compare     {} ledgers hold the same blocks 1..={shared}", paths.len());
    for (p, (_, h)) in paths.iter().zip(&chains) {
        println!("            {}: {} blocks", p.display(), h.len());
    }
    println!("OK");
    Ok(())
}

fn kind_and_key(r: &Option<Request>) -> (&'static str, String) {
    let show = |k: &[u8]| String::from_utf8_lossy(k).escape_debug().to_string();
    match r {
        Some(Request::Put(p)) => ("put", show(&p.key)),
        Some(Request::DeleteRange(d)) => ("delete", show(&d.key)),
        Some(Request::Txn(_)) => ("txn", String::new()),
        Some(Request::Compact(c)) => ("compact", c.revision.to_string()),
        Some(Request::LeaseGrant(g)) => ("lease-grant", format!("{:x}", g.id)),
        Some(Request::LeaseRevoke(l)) => ("lease-revoke", format!("{:x}", l.id)),
        Some(Request::LeaseKeepAlive(k)) => ("lease-keepalive", format!("{:x}", k.id)),
        Some(Request::LeaseExpire(e)) => ("lease-expire", format!("{:x}", e.id)),
        Some(Request::Governance(c)) => ("governance", format!("rules-version={}", c.rules_version)),
        Some(Request::Auth(_)) => ("auth", String::new()),
        None => ("empty", String::new()),
    }
}

/// The client its bank vouched for: `cn=NAME`, `user=NAME`, both, or `-` when the bank did not
/// authenticate it (or the operation is the bank's own).
fn client_of(op: &Operation) -> String {
    let show = |s: &str| s.escape_debug().to_string();
    let Some(c) = &op.client else { return "-".into() };
    let mut parts = Vec::new();
    if !c.certificate_cn.is_empty() {
        parts.push(format!("cn={}", show(&c.certificate_cn)));
    }
    if !c.user.is_empty() {
        parts.push(format!("user={}", show(&c.user)));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// Verifies one ledger and prints its summary; returns its genesis hash and every block's hash.
fn verify(path: PathBuf, list_ops: bool, trusted: Option<PathBuf>) -> Result<([u8; 32], Vec<[u8; 32]>), String> {
    let trusted = trusted.map(|p| read_genesis(&p).map(|g| genesis_hash(&g))).transpose()?;
    let mut hashes = Vec::new();
    let mut operations = 0u64;
    let mut seen = HashSet::new();
    let mut last_time = None::<u64>;
    let mut crypto: Option<(ChainCrypto, Domain, [u8; 32])> = None;
    let mut unproven_since: Option<u64> = None;
    let mut parent_view = 0u64;
    let mut proofs = 0u64;
    let mut checked_batches: HashSet<(usize, Vec<u8>, Vec<u8>)> = HashSet::new();
    let mut rules: Option<ChainRules> = None;
    let mut refused_ops = 0u64;
    let file = LedgerFile::scan(&path, |genesis, cb| {
        let block = cb.block.as_ref().ok_or("block record without a block")?;
        hashes.push(block_hash(block));
        let n = genesis.validators.len();
        if n > 1 {
            if crypto.is_none() {
                let c = ChainCrypto::verifier(genesis).map_err(|e| e.to_string())?;
                let d = Domain { chain_id: genesis.chain_id.clone(), epoch: genesis.epoch, n };
                crypto = Some((c, d, genesis_hash(genesis)));
            }
            let (c, d, gh) = crypto.as_ref().unwrap();
            let h = block.height;
            let justify = block.justify.as_ref().ok_or_else(|| format!("block {h} has no justify QC"))?;
            if justify.block_hash != block.parent_hash || justify.view != parent_view || !d.verify_qc(justify, gh, c) {
                return Err(format!("block {h}: its justify QC does not certify its parent"));
            }
            for (i, op) in block.operations.iter().enumerate() {
                let bank = op.id.as_ref().map(|id| id.bank as usize).unwrap_or(usize::MAX);
                // One signature covers a forwarded batch: check each (bank, root, signature) once.
                let signed = (bank, d.operation_bytes(op), op.bank_signature.clone());
                if !checked_batches.contains(&signed) {
                    if !c.verify_operation(bank, &signed.1, &signed.2) {
                        return Err(format!("operation {h}.{i}: not signed by the bank it names"));
                    }
                    checked_batches.insert(signed);
                }
            }
            match (&cb.commit_qc, &cb.commit_child) {
                (Some(qc), Some(child)) => {
                    let hash = block_hash(block).to_vec();
                    let ok = child.parent_hash == hash
                        && child.view == block.view + 1
                        && child.justify.as_ref().is_some_and(|j| j.block_hash == hash && j.view == block.view)
                        && qc.block_hash == block_hash(&header(child)).to_vec()
                        && qc.view == child.view
                        && d.verify_qc(qc, gh, c);
                    if !ok {
                        return Err(format!("block {h}: commit proof does not verify"));
                    }
                    proofs += 1;
                    unproven_since = None;
                }
                (None, None) => {
                    unproven_since.get_or_insert(h);
                }
                _ => return Err(format!("block {h}: incomplete commit proof")),
            }
            parent_view = block.view;
        }
        let parent_time = last_time.unwrap_or(genesis.genesis_time_ms);
        if block.timestamp_ms <= parent_time {
            return Err(format!(
                "block {} time {} is not after its parent's {parent_time}",
                block.height, block.timestamp_ms
            ));
        }
        last_time = Some(block.timestamp_ms);
        if block.proposer as usize >= n {
            return Err(format!("block {} proposer {} is not a validator", block.height, block.proposer));
        }
        for (i, op) in block.operations.iter().enumerate() {
            let id = op.id.as_ref().ok_or_else(|| format!("operation {}.{i} has no id", block.height))?;
            if id.bank as usize >= n {
                return Err(format!("operation {}.{i} names bank {} outside the validator set", block.height, id.bank));
            }
            if !seen.insert((id.bank, id.nonce)) {
                return Err(format!("operation {}.{i} repeats an earlier operation id", block.height));
            }
            if op.client.as_ref().is_some_and(|c| bftcd_sequencer::validity::check_client(c).is_err())
                || (op.client.is_some() && matches!(op.request, Some(Request::LeaseExpire(_) | Request::Governance(_))))
            {
                return Err(format!("operation {}.{i} carries a malformed client identity", block.height));
            }
            let rules = match &mut rules {
                Some(r) => r,
                None => rules.insert(ChainRules::of(genesis).map_err(|e| format!("genesis key owners: {e}"))?),
            };
            // The rules in effect when it was applied; an approval may change them after it.
            let refusal = rules.refuses(op);
            let refused = match refusal {
                Some(Refusal::KeyOwner(owner)) => Some(owner),
                _ => None,
            };
            let effect = rules.step(op);
            let approval = match &effect {
                Some(Effect::Approval(a)) => Some(a.clone()),
                _ => None,
            };
            if let Some(Approval::Enacted { rules_version }) = approval {
                let owners: Vec<String> = rules
                    .key_owners()
                    .iter()
                    .map(|o| format!("{}={}", String::from_utf8_lossy(&o.prefix), genesis.validators[o.bank as usize].name))
                    .collect();
                println!("governance  {}.{i}: rules version {rules_version} in effect, approved by every bank; key owners: {}",
                    block.height, if owners.is_empty() { "none".into() } else { owners.join(" ") });
            }
            if let Some(owner) = refused {
                refused_ops += 1;
                if !list_ops {
                    let (bank, owner) = (&genesis.validators[id.bank as usize].name, &genesis.validators[owner as usize].name);
                    println!("refused     {}.{i}: {bank} signed a write to keys owned by {owner}", block.height);
                }
            }
            if list_ops {
                let (kind, key) = kind_and_key(&op.request);
                let bank = &genesis.validators[id.bank as usize].name;
                let note = match (refused, &approval) {
                    (Some(o), _) => format!("\trefused: keys owned by {}", genesis.validators[o as usize].name),
                    _ if matches!(refusal, Some(Refusal::Auth(_))) || matches!(effect, Some(Effect::Auth(Err(_)))) => {
                        let e = match (refusal, &effect) {
                            (Some(Refusal::Auth(e)), _) => e.text(),
                            (_, Some(Effect::Auth(Err(e)))) => e.text(),
                            _ => "",
                        };
                        format!("\trefused: {e}")
                    }
                    (_, Some(Approval::Stale { .. })) => "\tcounts for nothing (other rules in effect)".into(),
                    (_, Some(Approval::Pending { approvals, needed, .. })) => format!("\tapproval {approvals} of {needed}"),
                    (_, Some(Approval::Enacted { .. })) => "\tenacted".into(),
                    _ => String::new(),
                };
                println!("{}.{i}\t{bank}\t{}\t{kind}\t{key}{note}", block.height, client_of(op));
            }
            operations += 1;
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    if let Some(h) = unproven_since {
        return Err(format!("blocks from {h} on are not covered by any commit proof"));
    }
    let g = &file.genesis;
    let own = genesis_hash(g);
    if let Some(t) = trusted {
        if t != own {
            return Err(format!("the ledger starts from genesis {}, not the trusted {}", hex::encode(own), hex::encode(t)));
        }
    }
    println!("ledger      {}", path.display());
    println!("chain id    {}", g.chain_id);
    println!("epoch       {}", g.epoch);
    let names: Vec<&str> = g.validators.iter().map(|v| v.name.as_str()).collect();
    println!("validators  {} ({})", g.validators.len(), names.join(", "));
    match g.apply_batch_max {
        0 => println!("apply mode  exact (one etcd Txn per write)"),
        n => println!("apply mode  batched (up to {n} writes per etcd Txn)"),
    }
    println!("blocks      {}", file.blocks.len());
    println!("operations  {operations}");
    if refused_ops > 0 {
        println!("refused     {refused_ops} operations that write keys another bank owns (refused at apply on every bank)");
    }
    println!("tip hash    {}", hex::encode(file.tip_hash));
    if file.valid_len < file.file_len {
        println!("torn tail   {} bytes after the last whole record (a crash during an append; never committed)", file.file_len - file.valid_len);
    }
    if g.validators.len() == 1 {
        println!("certificates none (single-bank chain: n = 1, f = 0)");
    } else {
        println!("certificates every block's QC and {proofs} commit proofs verified (n = {}, f = {})", g.validators.len(), (g.validators.len() - 1) / 3);
    }
    if trusted.is_some() {
        println!("genesis     {} (the trusted one)", hex::encode(own));
    }
    println!("OK");
    Ok((own, hashes))
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Compare { paths, genesis } => match compare(paths, genesis) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bftcd-verify: INVALID: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Ledger { path, ops, genesis } => match verify(path, ops, genesis) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bftcd-verify: INVALID: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::first_difference;

    #[test]
    fn ledgers_differ_where_their_first_block_does() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        assert_eq!(first_difference(&[a, b], &[a, b, c]), None, "a shorter ledger agrees so far");
        assert_eq!(first_difference(&[a, b, c], &[a, c, c]), Some(2));
        assert_eq!(first_difference(&[], &[a]), None);
    }
}
