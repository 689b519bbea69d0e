//! Work that runs beside the consensus task, so that the task itself only decides.
//!
//! The consensus task is a serial chain: every microsecond it spends on one message delays every
//! message behind it. Two stages take the work that does not need its state:
//!
//! - [`check_incoming`] decodes peer messages and checks the Ed25519 signatures of the operations
//!   they carry (forwarded batches and proposed blocks) in one batch across messages and banks,
//!   leaving the results in [`ChainCrypto`]'s cache. When the core then checks the same
//!   signatures, it finds them there. Order is kept: messages reach the core as they arrived.
//! - The same stage does the BLS work it can before the core needs it: once a quorum less one of
//!   peers' votes for a block is in, it checks their sum with one pairing and leaves the group in
//!   [`ChainCrypto`]'s cache, so the core, adding its own vote, forms the certificate without one;
//!   it checks timeout signatures, and certificates the core does not hold yet (a proposal that
//!   arrives before the votes it certifies), the same way.
//! - Sync requests from peers far behind go to [`serve_sync`], which answers them from the ledger
//!   (up to 4 MiB read and encoded per answer) instead of the core.
//! - [`sign_submissions`] stamps and signs this bank's client writes (one signature per batch) and
//!   hands the signed batch to the core.
//!
//! Both are charged to [`crate::cpu::Component::Consensus`] (their signing and checking to
//! `Crypto`). Each stage is one task on the runtime's worker threads, so on a machine with spare cores they
//! run in parallel with the consensus task and with each other.

use std::sync::Arc;

use bftcd_proto::bftcd::peer_message::Kind;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use bftcd_proto::bftcd::{Checkpoint, Operation, PeerMessage, QuorumCert, SyncRequest, SyncResponse, Vote};
use bftcd_proto::Message;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::consensus::mempool::op_id;
use crate::consensus::{Crypto, Domain};
use crate::consensus::sync::committed_answer;
use crate::cpu::{self, Component};
use crate::keys::ChainCrypto;
use crate::ledger::Ledger;
use crate::net::{InboundReceiver, Network};
use crate::{Position, SequencerError};

/// Bound on any message from a peer, before it is even decoded.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Most messages decoded and checked together.
const CHECK_BATCH: usize = 256;

/// A peer message as the consensus task receives it.
// Nearly every value is a Message; boxing it would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum Checked {
    Message { from: usize, msg: PeerMessage },
    /// Too large or not a `PeerMessage`: counted and logged, never seen by the core.
    Refused { from: usize },
}

/// Decodes peer messages and pre-checks the operation signatures they carry; see the module
/// documentation. `raw` hands out peers' messages round-robin, so a batch holds at most one
/// message from each peer more than from any other one. Ends when either channel closes.
pub async fn check_incoming(
    mut raw: InboundReceiver,
    crypto: Arc<ChainCrypto>,
    domain: Domain,
    out: mpsc::Sender<Checked>,
    sync: Option<SyncDiversion>,
    checkpoints: Option<mpsc::Sender<(usize, Checkpoint)>>,
) {
    let mut batch = Vec::with_capacity(CHECK_BATCH);
    let mut tally = VoteTally::default();
    loop {
        if raw.recv_many(&mut batch, CHECK_BATCH).await == 0 {
            return;
        }
        let mut decoded: Vec<Checked> = batch.drain(..).map(|(from, bytes)| decode(from as usize, bytes)).collect();
        if let Some(sync) = &sync {
            decoded.retain_mut(|m| !sync.divert(m));
        }
        // Checkpoints go to their own task ([`crate::checkpoint`]), never to the core.
        decoded.retain_mut(|m| {
            let Checked::Message { from, msg } = m else { return true };
            let Some(Kind::Checkpoint(c)) = &mut msg.kind else { return true };
            if let Some(tx) = &checkpoints {
                if tx.try_send((*from, std::mem::take(c))).is_err() {
                    tracing::debug!(peer = *from, "checkpoint: task busy, peer's checkpoint dropped");
                }
            }
            false
        });
        // Blocks this bank has committed need no certificate checked again (a second answer
        // to a request passed over, or one overlapping the last).
        let sync_view = sync.as_ref().map_or(SyncView { committed: 0, max_blocks: DEFAULT_SYNC_BLOCKS }, |s| SyncView {
            committed: s.ledger.committed_height(),
            max_blocks: s.max_blocks,
        });
        precheck_carried_certificates(&decoded, &crypto, &domain);
        for m in &decoded {
            if let Checked::Message { from, msg } = m {
                precheck_bls(*from, msg, &mut tally, &crypto, &domain, sync_view);
            }
        }
        let signed = operation_signatures(&decoded, &domain);
        if !signed.is_empty() {
            crypto.precheck_operations(&signed);
        }
        for checked in decoded {
            if out.send(checked).await.is_err() {
                return;
            }
        }
    }
}

fn decode(from: usize, bytes: Bytes) -> Checked {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Checked::Refused { from };
    }
    match PeerMessage::decode(bytes) {
        Ok(msg) => Checked::Message { from, msg },
        Err(e) => {
            tracing::warn!(peer = from, error = %e, "consensus: undecodable message dropped");
            Checked::Refused { from }
        }
    }
}

/// What a vote is for: (view, block hash, justify view).
type VoteKey = (u64, Vec<u8>, u64);

/// Peers' votes seen, per (view, block hash, justify view), until a quorum less one is in.
#[derive(Default)]
struct VoteTally {
    votes: BTreeMap<VoteKey, BTreeMap<usize, Vec<u8>>>,
    /// Keys each peer added, oldest first: a peer holds at most [`TALLY_PER_PEER`], so one that
    /// floods votes only pushes out its own.
    by_peer: BTreeMap<usize, VecDeque<VoteKey>>,
    checked: HashSet<VoteKey>,
    /// Per proposer, the highest view whose vote was signed ahead.
    presigned: BTreeMap<usize, u64>,
}

const TALLY_PER_PEER: usize = 4;

/// What the check stage knows of catching up: the committed height, and the core's
/// `max_sync_blocks`. At most four certificates per block of an answer are checked here: a
/// block's justify QC for each committed and uncommitted block, and a commit proof (two QCs) for
/// each committed one.
#[derive(Clone, Copy)]
struct SyncView {
    committed: u64,
    max_blocks: usize,
}

const DEFAULT_SYNC_BLOCKS: usize = 128;

impl VoteTally {
    /// Records `v` from `from`; returns the votes to check together when this one completes a
    /// quorum less one (the core's own vote makes the quorum).
    fn add(&mut self, from: usize, v: &Vote, quorum: usize) -> Option<Vec<(usize, Vec<u8>)>> {
        let key = (v.view, v.block_hash.clone(), v.justify_view);
        let entry = self.votes.entry(key.clone()).or_default();
        if entry.contains_key(&from) {
            return None;
        }
        entry.insert(from, v.signature.clone());
        let ready = entry.len() + 1 == quorum && self.checked.insert(key.clone());
        let group = ready.then(|| entry.iter().map(|(s, sig)| (*s, sig.clone())).collect());
        let mine = self.by_peer.entry(from).or_default();
        mine.push_back(key);
        if mine.len() > TALLY_PER_PEER {
            if let Some(old) = mine.pop_front() {
                if let Some(e) = self.votes.get_mut(&old) {
                    e.remove(&from);
                    if e.is_empty() {
                        self.votes.remove(&old);
                        self.checked.remove(&old);
                    }
                }
            }
        }
        group
    }

    fn presign(&mut self, proposer: usize, view: u64) -> bool {
        let last = self.presigned.entry(proposer).or_default();
        std::mem::replace(last, (*last).max(view)) < view
    }

    fn group_checked(&self, view: u64, hash: &[u8], justify_view: u64) -> bool {
        self.checked.contains(&(view, hash.to_vec(), justify_view))
    }
}

/// The BLS checks of `msg` the consensus core would otherwise do itself, done here and left in
/// the cache. Only what the core will need: malformed messages are left for it to refuse.
fn precheck_bls(from: usize, msg: &PeerMessage, tally: &mut VoteTally, crypto: &ChainCrypto, domain: &Domain, sync: SyncView) {
    let quorum = domain.quorum();
    match &msg.kind {
        Some(Kind::Vote(v)) => {
            // Malformed ones (a signature of another length included) are left for the core to
            // refuse, so the tally holds only 48-byte signatures.
            if v.signer as usize != from
                || v.epoch != domain.epoch
                || v.justify_view >= v.view
                || v.block_hash.len() != 32
                || v.signature.len() != crate::crypto::SIGNATURE_BYTES
            {
                return;
            }
            if let Some(group) = tally.add(from, v, quorum) {
                let bytes = domain.vote_bytes(v.view, &v.block_hash, v.justify_view);
                if !crypto.certified(&bytes) {
                    let refs: Vec<(usize, &[u8])> = group.iter().map(|(s, sig)| (*s, sig.as_slice())).collect();
                    crypto.precheck_votes(&bytes, &refs);
                }
            }
        }
        Some(Kind::Proposal(p)) => {
            let Some(block) = p.block.as_ref() else { return };
            let Some(qc) = block.justify.as_ref() else { return };
            // When peers' votes for it were checked here, the core forms this QC itself.
            if !tally.group_checked(qc.view, &qc.block_hash, qc.justify_view) {
                precheck_qc(qc, crypto, domain);
            }
            // The vote the core will most likely cast, signed ahead (BLS signing is deterministic,
            // so the core finds this signature instead of computing it). Only on the common path
            // (the view right after a certified one) and only the first proposal a proposer makes
            // for a view: a peer cannot make this bank sign for views the chain has not reached.
            let certified = crypto.certified(&domain.vote_bytes(qc.view, &qc.block_hash, qc.justify_view));
            if block.proposer as usize == from && qc.view.checked_add(1) == Some(block.view) && certified && tally.presign(from, block.view) {
                crypto.sign(&domain.vote_bytes(block.view, &crate::block_hash(block), qc.view));
            }
        }
        Some(Kind::SyncResponse(r)) => {
            // A catch-up carries a certificate per block: checked here as one batch.
            let new = |cb: &&bftcd_proto::bftcd::CommittedBlock| cb.block.as_ref().is_some_and(|b| b.height > sync.committed);
            let blocks = r.committed.iter().filter(new).filter_map(|cb| cb.block.as_ref()).chain(&r.uncommitted);
            let proofs = r.committed.iter().filter(new).filter_map(|cb| cb.commit_child.as_ref()).chain(blocks);
            let qcs = proofs.filter_map(|b| b.justify.as_ref()).chain(r.committed.iter().filter(new).filter_map(|cb| cb.commit_qc.as_ref()));
            // The stage cannot tell whether this bank asked for the answer (the core drops it
            // then): at most what an answer the core reads can carry.
            // Each certificate appears up to three times (a block's justify, the commit proofs
            // of it and of its parent); the core keeps one per certified block, so one is checked.
            let mut seen = HashSet::new();
            let certificates: Vec<_> = qcs
                .take(4 * sync.max_blocks)
                .filter_map(|qc| certificate(qc, crypto, domain))
                .filter(|(_, msg, _)| seen.insert(msg.clone()))
                .collect();
            if !certificates.is_empty() {
                crypto.precheck_certificates(&certificates);
            }
        }
        Some(Kind::Timeout(t)) => {
            if t.signer as usize != from || t.epoch != domain.epoch || t.signature.len() != crate::crypto::SIGNATURE_BYTES {
                return;
            }
            if let Some(qc) = &t.high_qc {
                if qc.view < t.view {
                    precheck_qc(qc, crypto, domain);
                    crypto.verify(from, &domain.timeout_bytes(t.view, qc.view), &t.signature);
                }
            }
        }
        _ => {}
    }
}

/// The certificates that proposals and timeouts of one batch carry, checked together when there
/// are several (one check of a few hundred costs about what a handful alone do): a bank back
/// from a cut receives seconds of queued proposals at once. [`precheck_bls`] then finds them
/// known. When the batch fails, nothing is remembered and each is checked alone as before.
fn precheck_carried_certificates(messages: &[Checked], crypto: &ChainCrypto, domain: &Domain) {
    let mut seen = HashSet::new();
    let certificates: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            Checked::Message { msg, .. } => match &msg.kind {
                Some(Kind::Proposal(p)) => p.block.as_ref().and_then(|b| b.justify.as_ref()),
                Some(Kind::Timeout(t)) => t.high_qc.as_ref().filter(|qc| qc.view < t.view),
                _ => None,
            },
            Checked::Refused { .. } => None,
        })
        .filter_map(|qc| certificate(qc, crypto, domain))
        .filter(|(_, msg, _)| seen.insert(msg.clone()))
        .collect();
    if certificates.len() > 1 {
        crypto.precheck_certificates(&certificates);
    }
}

fn precheck_qc(qc: &QuorumCert, crypto: &ChainCrypto, domain: &Domain) {
    if let Some((signers, bytes, agg)) = certificate(qc, crypto, domain) {
        crypto.verify_aggregate(&signers, &bytes, &agg);
    }
}

/// What checking `qc` takes (signers, signed message, aggregate), unless it is malformed (left
/// for the core to refuse), the genesis QC, or certifies a block already certified here.
fn certificate(qc: &QuorumCert, crypto: &ChainCrypto, domain: &Domain) -> Option<(Vec<usize>, Vec<u8>, Vec<u8>)> {
    if qc.view == 0 || qc.epoch != domain.epoch || qc.justify_view >= qc.view || qc.block_hash.len() != 32 {
        return None;
    }
    let bytes = domain.vote_bytes(qc.view, &qc.block_hash, qc.justify_view);
    if crypto.certified(&bytes) {
        return None;
    }
    let signers = domain.signers(&qc.signers).filter(|s| s.len() >= domain.quorum())?;
    Some((signers, bytes, qc.aggregate_signature.clone()))
}

/// Each distinct (bank, signed bytes, signature) among the operations of forwarded batches and
/// proposed blocks. Operations that name no valid bank are left to the core to refuse.
fn operation_signatures(messages: &[Checked], domain: &Domain) -> Vec<(usize, Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(usize, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for m in messages {
        let Checked::Message { msg, .. } = m else { continue };
        let ops: &[Operation] = match &msg.kind {
            Some(Kind::Submit(s)) => &s.operations,
            Some(Kind::Proposal(p)) => p.block.as_ref().map_or(&[], |b| &b.operations),
            _ => continue,
        };
        for op in ops {
            let Some(bank) = op_id(op).map(|id| id.0 as usize).filter(|b| *b < domain.n) else { continue };
            // Operations of one batch share their signature: recompute the root only once.
            if !seen.insert((bank, op.bank_signature.as_slice())) {
                continue;
            }
            let bytes = domain.operation_bytes(op);
            if !bytes.is_empty() {
                out.push((bank, bytes, op.bank_signature.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Sync requests the check stage hands to [`serve_sync`] instead of the core.
pub struct SyncDiversion {
    pub ledger: Arc<Ledger>,
    pub requests: mpsc::Sender<(usize, SyncRequest)>,
    /// The core's `max_sync_blocks`.
    pub max_blocks: usize,
    /// Requests each peer may still have served (see [`SyncBudget`]).
    pub budget: std::sync::Mutex<SyncBudget>,
}

/// How many ledger answers each peer may ask for: a bucket of [`SYNC_BURST`] refilled at
/// [`SYNC_PER_SECOND`]. A request is a few bytes and its answer up to `max_bytes` read from disk
/// and encoded, so a peer asking from height 0 as fast as it can would keep the server (and a
/// core of this bank) busy and its queue full for the banks really catching up. One catching
/// up asks again only once an answer arrived: about 10 answers a second at full speed.
#[derive(Default)]
pub struct SyncBudget {
    peers: HashMap<usize, (f64, std::time::Instant)>,
    /// Requests refused for being over budget.
    pub refused: u64,
}

pub const SYNC_BURST: f64 = 4.0;
pub const SYNC_PER_SECOND: f64 = 25.0;

impl SyncBudget {
    /// Takes one request's worth from `peer`'s bucket, if there is one.
    pub fn take(&mut self, peer: usize, now: std::time::Instant) -> bool {
        let (tokens, at) = self.peers.entry(peer).or_insert((SYNC_BURST, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * SYNC_PER_SECOND).min(SYNC_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}

/// A peer whose committed height is more than this many blocks below this bank's ledger is
/// answered by [`serve_sync`]; nearer ones by the core, which adds the uncommitted blocks.
const SERVED_BESIDE_LAG: u64 = 2;

impl SyncDiversion {
    /// Takes `m` if it is a sync request for [`serve_sync`]. When that server is busy the
    /// request is dropped: the asker passes over a peer that does not answer.
    fn divert(&self, m: &mut Checked) -> bool {
        let Checked::Message { from, msg } = m else { return false };
        let Some(Kind::SyncRequest(r)) = &mut msg.kind else { return false };
        if r.committed_height.saturating_add(SERVED_BESIDE_LAG) >= self.ledger.height() {
            return false;
        }
        let allowed = self.budget.lock().unwrap_or_else(|e| e.into_inner()).take(*from, std::time::Instant::now());
        if !allowed {
            tracing::debug!(peer = *from, "sync: peer over its budget of ledger answers, request dropped");
        } else if self.requests.try_send((*from, std::mem::take(r))).is_err() {
            tracing::debug!(peer = *from, "sync: server busy, request dropped");
        }
        true
    }
}

/// Answers peers far behind with committed blocks from the ledger (the same limits as the
/// core's answers: `max_blocks`, `max_bytes`, ending on a commit proof), one request at a time
/// on a blocking thread, so that a catching-up peer never holds up the consensus task.
pub async fn serve_sync(
    mut requests: mpsc::Receiver<(usize, SyncRequest)>,
    ledger: Arc<Ledger>,
    network: Network,
    max_blocks: usize,
    max_bytes: usize,
) {
    while let Some((from, r)) = requests.recv().await {
        let ledger = ledger.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let _cpu = cpu::section(Component::Persistence);
            let from_height = r.committed_height.saturating_add(1);
            let (committed, _) = committed_answer(from_height, ledger.height(), max_blocks, max_bytes, |h| ledger.read(h).ok());
            let answer = SyncResponse { committed, uncommitted: Vec::new() };
            PeerMessage { kind: Some(Kind::SyncResponse(answer)) }.encode_to_vec()
        })
        .await;
        match answer {
            Ok(bytes) => network.send(from as u32, Bytes::from(bytes)),
            Err(_) => return,
        }
    }
}

/// A client write on its way to ordering, and where its outcome goes.
pub type Submission = (Operation, oneshot::Sender<Result<Position, SequencerError>>);

/// Most operations signed as one batch.
const SIGN_BATCH: usize = 4096;

/// Stamps this bank's writes with its clock and signs them, everything waiting at once as one
/// batch (one Ed25519 signature over a Merkle root), then hands them to the consensus task.
pub async fn sign_submissions(
    mut submissions: mpsc::Receiver<Submission>,
    crypto: Arc<ChainCrypto>,
    domain: Domain,
    out: mpsc::Sender<Vec<Submission>>,
) {
    let mut batch = Vec::with_capacity(64);
    loop {
        if submissions.recv_many(&mut batch, SIGN_BATCH).await == 0 {
            return;
        }
        let (mut ops, replies): (Vec<Operation>, Vec<_>) = batch.drain(..).unzip();
        let now = crate::hotstuff::now_ms();
        for op in &mut ops {
            op.submitted_ms = now;
        }
        domain.sign_batch(&mut ops, |bytes| crypto.sign_operation(bytes));
        if out.send(ops.into_iter().zip(replies).collect()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_a_burst_of_ledger_answers_then_the_refill_rate() {
        let mut b = SyncBudget::default();
        let t0 = std::time::Instant::now();
        let burst = (0..10).filter(|_| b.take(7, t0)).count();
        assert_eq!(burst, SYNC_BURST as usize);
        assert!(b.take(3, t0), "another peer has its own bucket");
        // One more per 1/SYNC_PER_SECOND seconds.
        let later = t0 + std::time::Duration::from_millis((1000.0 / SYNC_PER_SECOND) as u64 + 1);
        assert!(b.take(7, later));
        assert!(!b.take(7, later));
        assert_eq!(b.refused, (10 - SYNC_BURST as u64) + 1);
    }

    fn vote(view: u64, block: u8, signer: u32) -> Vote {
        Vote { epoch: 1, view, block_hash: vec![block; 32], justify_view: view - 1, signer, signature: vec![signer as u8; 48], proposal_signature: vec![] }
    }

    #[test]
    fn the_tally_hands_over_a_quorum_less_one_once() {
        let mut t = VoteTally::default();
        // n = 4, quorum 3: two peers' votes make the group.
        assert!(t.add(0, &vote(5, 1, 0), 3).is_none());
        assert!(t.add(0, &vote(5, 1, 0), 3).is_none(), "a repeated vote counts once");
        assert!(t.add(1, &vote(5, 2, 1), 3).is_none(), "a vote for another block is another tally");
        let group = t.add(2, &vote(5, 1, 2), 3).expect("quorum less one");
        assert_eq!(group.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![0, 2]);
        assert!(t.group_checked(5, &[1; 32], 4));
        assert!(t.add(1, &vote(5, 1, 1), 3).is_none(), "handed over once");
    }

    #[test]
    fn a_flooding_peer_pushes_out_only_its_own_votes() {
        let mut t = VoteTally::default();
        assert!(t.add(0, &vote(7, 1, 0), 3).is_none());
        for view in 100..200 {
            assert!(t.add(3, &vote(view, 9, 3), 3).is_none());
        }
        assert!(t.votes.len() <= 1 + TALLY_PER_PEER);
        assert!(t.add(1, &vote(7, 1, 1), 3).is_some(), "the honest tally survived the flood");
    }

    #[test]
    fn sync_requests_from_peers_far_behind_bypass_the_core() {
        use bftcd_proto::bftcd::{Block, CommittedBlock, Genesis};
        let dir = tempfile::tempdir().unwrap();
        let genesis = Genesis { chain_id: "test".into(), epoch: 1, genesis_time_ms: 5, ..Default::default() };
        let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.log"), &genesis).unwrap());
        for h in 1..=10u64 {
            let (parent, ts) = ledger.tip();
            let block = Block { height: h, parent_hash: parent.to_vec(), timestamp_ms: ts + 1, ..Default::default() };
            let proof = h.is_multiple_of(3).then(QuorumCert::default);
            ledger.append(&CommittedBlock { block: Some(block), commit_qc: proof, commit_child: None }).unwrap();
        }
        let (tx, mut rx) = mpsc::channel(4);
        let sync = SyncDiversion { ledger: ledger.clone(), requests: tx, max_blocks: 128, budget: Default::default() };
        let ask = |committed_height| Checked::Message {
            from: 2,
            msg: PeerMessage { kind: Some(Kind::SyncRequest(SyncRequest { committed_height, want_block: vec![] })) },
        };
        assert!(!sync.divert(&mut ask(9)), "one block behind: the core answers, with what is not committed yet");
        assert!(!sync.divert(&mut ask(8)));
        assert!(sync.divert(&mut ask(3)), "far behind: the ledger answers");
        let (from, r) = rx.try_recv().unwrap();
        assert_eq!((from, r.committed_height), (2, 3));
        let mut vote = Checked::Message { from: 2, msg: PeerMessage { kind: Some(Kind::Vote(vote(5, 1, 2))) } };
        assert!(!sync.divert(&mut vote));
        // What the server sends: blocks 4..=9, ending on the last commit proof within reach.
        let (answer, _) = committed_answer(4, ledger.height(), 128, 4 << 20, |h| ledger.read(h).ok());
        let heights: Vec<u64> = answer.iter().map(|cb| cb.block.as_ref().unwrap().height).collect();
        assert_eq!(heights, vec![4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn votes_are_signed_ahead_once_per_proposer_and_view() {
        let mut t = VoteTally::default();
        assert!(t.presign(2, 10));
        assert!(!t.presign(2, 10));
        assert!(!t.presign(2, 9));
        assert!(t.presign(1, 10));
        assert!(t.presign(2, 11));
    }
}
