//! `ledger`, and verifying one ledger from its genesis: the checks every command that reads a
//! ledger shares.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bftcd_proto::bftcd::{operation::Request, Genesis, Operation};
use bftcd_sequencer::consensus::{Crypto, Domain};
use bftcd_sequencer::governance::{Approval, ChainRules, Effect, Refusal};
use bftcd_sequencer::keys::ChainCrypto;
use bftcd_sequencer::{block_hash, genesis_hash, header, LedgerFile};
use serde_json::{json, Value};

use crate::{Out, TrustArgs};

/// The genesis an auditor obtained apart from the ledgers: the hash every ledger must start from,
/// and where it came from (for messages).
pub struct Trusted {
    pub hash: [u8; 32],
    pub from: String,
}

/// What the scan meets on the way, in ledger order, for a command to print or collect.
pub enum Event {
    /// A governance approval that put new rules in effect.
    Governance { height: u64, index: usize, rules_version: u64, key_owners: Vec<(String, String)> },
    /// An operation refused at apply because it writes keys another bank owns.
    Refused { height: u64, index: usize, bank: String, owner: String },
    /// Evidence of equivocation committed in a block (checked against the genesis keys).
    Evidence { height: u64, text: String, json: Value },
    /// One operation (only when operations are listed).
    Op { height: u64, index: usize, bank: String, client: String, kind: &'static str, key: String, note: Option<String> },
}

impl Event {
    pub fn text(&self) -> String {
        match self {
            Event::Governance { height, index, rules_version, key_owners } => {
                let owners: Vec<String> = key_owners.iter().map(|(p, b)| format!("{p}={b}")).collect();
                let owners = if owners.is_empty() { "none".to_string() } else { owners.join(" ") };
                format!("governance  {height}.{index}: rules version {rules_version} in effect, approved by every bank; key owners: {owners}")
            }
            Event::Refused { height, index, bank, owner } => {
                format!("refused     {height}.{index}: {bank} signed a write to keys owned by {owner}")
            }
            Event::Evidence { height, text, .. } => format!("evidence    {height}: {text}"),
            Event::Op { height, index, bank, client, kind, key, note } => {
                let note = note.as_ref().map(|n| format!("\t{n}")).unwrap_or_default();
                format!("{height}.{index}\t{bank}\t{client}\t{kind}\t{key}{note}")
            }
        }
    }

    pub fn json(&self) -> Value {
        match self {
            Event::Governance { height, index, rules_version, key_owners } => json!({
                "height": height, "index": index, "rules_version": rules_version,
                "key_owners": key_owners.iter().map(|(p, b)| json!({"prefix": p, "bank": b})).collect::<Vec<_>>(),
            }),
            Event::Refused { height, index, bank, owner } => json!({"height": height, "index": index, "bank": bank, "owner": owner}),
            Event::Evidence { height, json, .. } => {
                let mut j = json.clone();
                j["height"] = (*height).into();
                j
            }
            Event::Op { height, index, bank, client, kind, key, note } => json!({
                "height": height, "index": index, "bank": bank, "client": client, "kind": kind, "key": key, "note": note,
            }),
        }
    }
}

/// Why a ledger was refused, and at which height (none when it is another chain's).
pub struct Invalid {
    pub height: Option<u64>,
    pub error: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.height {
            Some(h) => write!(f, "at height {h}: {}", self.error),
            None => f.write_str(&self.error),
        }
    }
}

/// A ledger that verified.
pub struct Verified {
    pub genesis: Genesis,
    pub genesis_hash: [u8; 32],
    /// Every block's hash, by height from 1.
    pub hashes: Vec<[u8; 32]>,
    pub operations: u64,
    pub refused: u64,
    pub commit_proofs: u64,
    pub tip_hash: [u8; 32],
    /// Bytes after the last whole record (a crash during an append).
    pub torn_tail: u64,
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

fn wrong_genesis(own: &[u8; 32], trusted: &Trusted) -> String {
    format!(
        "the ledger starts from genesis {}, not the trusted {} ({}): it belongs to another chain",
        hex::encode(own),
        hex::encode(trusted.hash),
        trusted.from
    )
}

/// Verifies one ledger from its genesis (and, if given, against the trusted genesis), handing
/// every governance change, refused operation and (with `list_ops`) operation to `on_event`.
pub fn verify(path: &Path, list_ops: bool, trusted: Option<&Trusted>, on_event: &mut dyn FnMut(Event)) -> Result<Verified, Invalid> {
    // The last block that passed: a failure is at the next one.
    let (mut passed, mut other_chain) = (0u64, None::<String>);
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
    let file = LedgerFile::scan(path, |genesis, cb| {
        let block = cb.block.as_ref().ok_or("block record without a block")?;
        // Another chain's ledger is refused before any of its blocks is looked at.
        if hashes.is_empty() {
            if let Some(t) = trusted {
                let own = genesis_hash(genesis);
                if own != t.hash {
                    // Said as it is: not as damage at some byte offset.
                    other_chain = Some(wrong_genesis(&own, t));
                    return Err(String::new());
                }
            }
        }
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
            for ev in &block.evidence {
                bftcd_sequencer::evidence::check(d, c, ev).map_err(|e| format!("block {h}: evidence that does not check: {e}"))?;
                on_event(Event::Evidence { height: h, text: crate::evidence::describe(genesis, ev), json: crate::evidence::json_of(genesis, ev) });
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
            return Err(format!("block {} time {} is not after its parent's {parent_time}", block.height, block.timestamp_ms));
        }
        last_time = Some(block.timestamp_ms);
        if block.proposer as usize >= n {
            return Err(format!("block {} proposer {} is not a validator", block.height, block.proposer));
        }
        for (i, op) in block.operations.iter().enumerate() {
            let height = block.height;
            let id = op.id.as_ref().ok_or_else(|| format!("operation {height}.{i} has no id"))?;
            if id.bank as usize >= n {
                return Err(format!("operation {height}.{i} names bank {} outside the validator set", id.bank));
            }
            if !seen.insert((id.bank, id.nonce)) {
                return Err(format!("operation {height}.{i} repeats an earlier operation id"));
            }
            if op.client.as_ref().is_some_and(|c| bftcd_sequencer::validity::check_client(c).is_err())
                || (op.client.is_some() && matches!(op.request, Some(Request::LeaseExpire(_) | Request::Governance(_))))
            {
                return Err(format!("operation {height}.{i} carries a malformed client identity"));
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
            let name = |b: u32| genesis.validators[b as usize].name.clone();
            if let Some(Approval::Enacted { rules_version }) = approval {
                let key_owners =
                    rules.key_owners().iter().map(|o| (String::from_utf8_lossy(&o.prefix).into_owned(), name(o.bank))).collect();
                on_event(Event::Governance { height, index: i, rules_version, key_owners });
            }
            if let Some(owner) = refused {
                refused_ops += 1;
                on_event(Event::Refused { height, index: i, bank: name(id.bank), owner: name(owner) });
            }
            if list_ops {
                let (kind, key) = kind_and_key(&op.request);
                let note = match (refused, &approval) {
                    (Some(o), _) => Some(format!("refused: keys owned by {}", name(o))),
                    _ if matches!(refusal, Some(Refusal::Auth(_))) || matches!(effect, Some(Effect::Auth(Err(_)))) => {
                        let e = match (refusal, &effect) {
                            (Some(Refusal::Auth(e)), _) => e.text(),
                            (_, Some(Effect::Auth(Err(e)))) => e.text(),
                            _ => "",
                        };
                        Some(format!("refused: {e}"))
                    }
                    (_, Some(Approval::Stale { .. })) => Some("counts for nothing (other rules in effect)".into()),
                    (_, Some(Approval::Pending { approvals, needed, .. })) => Some(format!("approval {approvals} of {needed}")),
                    (_, Some(Approval::Enacted { .. })) => Some("enacted".into()),
                    _ => None,
                };
                on_event(Event::Op { height, index: i, bank: name(id.bank), client: client_of(op), kind, key, note });
            }
            operations += 1;
        }
        passed = block.height;
        Ok(())
    });
    let file = file.map_err(|e| match other_chain {
        Some(error) => Invalid { height: None, error },
        None => Invalid { height: Some(passed + 1), error: e.to_string() },
    })?;
    let own = genesis_hash(&file.genesis);
    if let Some(t) = trusted.filter(|t| t.hash != own) {
        return Err(Invalid { height: None, error: wrong_genesis(&own, t) });
    }
    if let Some(h) = unproven_since {
        return Err(Invalid { height: Some(h), error: format!("blocks from {h} on are not covered by any commit proof") });
    }
    Ok(Verified {
        genesis: file.genesis,
        genesis_hash: own,
        hashes,
        operations,
        refused: refused_ops,
        commit_proofs: proofs,
        tip_hash: file.tip_hash,
        torn_tail: file.file_len - file.valid_len,
    })
}

/// `ledger`: one ledger, its summary, and its operations with `--ops`.
pub fn command(out: &mut Out, path: PathBuf, ops: bool, trust: TrustArgs) -> Result<(), String> {
    let trusted = trust.resolve()?;
    out.set("ledger", path.display().to_string());
    let (mut governance, mut refused, mut listed, mut evidence) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let v = verify(&path, ops, trusted.as_ref(), &mut |e| {
        // With --ops a refusal is shown on its operation's line.
        if !(ops && matches!(e, Event::Refused { .. })) {
            out.line(e.text());
        }
        match e {
            Event::Governance { .. } => governance.push(e.json()),
            Event::Refused { .. } => refused.push(e.json()),
            Event::Op { .. } => listed.push(e.json()),
            Event::Evidence { .. } => evidence.push(e.json()),
        }
    });
    out.set("governance", governance);
    out.set("evidence", evidence);
    out.set("refused", refused);
    if ops {
        out.set("ops", listed);
    }
    let v = v.map_err(|e| {
        out.set("invalid_height", e.height);
        e.to_string()
    })?;
    let g = &v.genesis;
    let n = g.validators.len();
    out.line(format!("ledger      {}", path.display()));
    out.line(format!("chain id    {}", g.chain_id));
    out.line(format!("epoch       {}", g.epoch));
    let names: Vec<&str> = g.validators.iter().map(|v| v.name.as_str()).collect();
    out.line(format!("validators  {n} ({})", names.join(", ")));
    match g.apply_batch_max {
        0 => out.line("apply mode  exact (one etcd Txn per write)"),
        m => out.line(format!("apply mode  batched (up to {m} writes per etcd Txn)")),
    }
    out.line(format!("blocks      {}", v.hashes.len()));
    out.line(format!("operations  {}", v.operations));
    if v.refused > 0 {
        out.line(format!("refused     {} operations that write keys another bank owns (refused at apply on every bank)", v.refused));
    }
    out.line(format!("tip hash    {}", hex::encode(v.tip_hash)));
    if v.torn_tail > 0 {
        out.line(format!("torn tail   {} bytes after the last whole record (a crash during an append; never committed)", v.torn_tail));
    }
    if n == 1 {
        out.line("certificates none (single-bank chain: n = 1, f = 0)");
    } else {
        out.line(format!("certificates every block's QC and {} commit proofs verified (n = {n}, f = {})", v.commit_proofs, (n - 1) / 3));
    }
    match &trusted {
        Some(t) => out.line(format!("genesis     {} (the trusted one, from {})", hex::encode(v.genesis_hash), t.from)),
        None => out.line(format!("genesis     {} (the ledger's own: pin it with --genesis-hash)", hex::encode(v.genesis_hash))),
    }
    out.set("chain_id", g.chain_id.clone());
    out.set("epoch", g.epoch);
    out.set("validators", names);
    out.set("apply_batch_max", g.apply_batch_max);
    out.set("tip_height", v.hashes.len());
    out.set("tip_hash", hex::encode(v.tip_hash));
    out.set("operations", v.operations);
    out.set("refused_operations", v.refused);
    out.set("torn_tail_bytes", v.torn_tail);
    out.set("n", n);
    out.set("f", (n - 1) / 3);
    out.set("commit_proofs", v.commit_proofs);
    out.set("genesis_hash", hex::encode(v.genesis_hash));
    out.set("genesis_trusted", trusted.map(|t| t.from));
    Ok(())
}
