//! Test-only misbehaviour (cargo feature `byzantine`, never in release builds): a bank that
//! runs honest code but tampers with what it sends, so process-level tests can show that the
//! honest banks stay safe and live.

use bftcd_proto::bftcd::{operation::Request, peer_message::Kind, Block, Operation, OperationId, PeerMessage, Proposal};
use bftcd_proto::etcdserverpb::{request_op, PutRequest, RequestOp, TxnRequest};

use crate::consensus::mempool::op_id;
use crate::consensus::Output;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misbehaviour {
    /// As leader, send one block to some validators and a conflicting one to the others.
    Equivocate,
    /// Send votes and timeouts whose signatures do not verify.
    BadSignatures,
    /// As leader, leave out every operation submitted by this bank (validator index).
    Censor(u32),
    /// Panic the consensus task after this many steps (a bug, in a test): the process must not
    /// go on serving as if it could still order writes.
    PanicAfter(u64),
    /// As leader, never send its proposals (it still votes for others' blocks): every view it
    /// leads fails.
    Withhold,
    /// Never send votes (it still proposes when leader): the others need every one of their
    /// own votes for a quorum.
    NoVotes,
    /// Every 2 s, forward (signed with this bank's own key, never in its own mempool)
    /// operations that break the chain's rules: one larger than any block, one writing the
    /// reserved prefix, one Txn putting a key twice.
    ForwardInvalid,
    /// Every 10 s from 2 s after start, forward this many valid, signed operations at once
    /// (small Puts to 4096 keys), on top of its clients' writes: far more than the chain
    /// applies in a write timeout.
    Flood(u64),
    /// As leader, add to each proposal the oldest operation of its own ledger that a block could
    /// still take (submitted within the acceptance window), from a block at least this many
    /// blocks below its ledger's tip: the replay of an already committed operation.
    Replay(u64),
    /// From [`SPAM_AFTER_MS`] after start, this many peer messages per second to every peer, on
    /// top of its honest ones: correctly signed votes and timeouts for the next views (each a
    /// signature check for the others), votes for far-future views, sync requests from height 0
    /// and from u64::MAX, unrequested sync answers claiming huge heights, read-index requests,
    /// and undecodable frames.
    Spam(u64),
    /// Start `forward-invalid`, `flood` and `spam` this many ms after the bank starts (`spam`
    /// defaults to [`SPAM_AFTER_MS`], the others to at once), so that a test can measure the
    /// same run without them first.
    After(u64),
    /// Sign and send a state digest checkpoint other than its own (one bit flipped), so that a
    /// test sees that a lie from one bank is never certified.
    WrongDigest,
}

/// When `spam` starts, so that a test can measure the same run without it first.
pub const SPAM_AFTER_MS: u64 = 15_000;

/// `equivocate`, `bad-signatures`, `censor=<index>`, `panic-after=<steps>`, `withhold`,
/// `no-votes`, `forward-invalid`, `flood=<ops per 10 s>`, `replay=<blocks back>`,
/// `spam=<messages per second>`, `after=<ms>`; comma-separated.
pub fn parse(s: &str) -> Result<Vec<Misbehaviour>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.trim() {
            "equivocate" => Ok(Misbehaviour::Equivocate),
            "bad-signatures" => Ok(Misbehaviour::BadSignatures),
            "withhold" => Ok(Misbehaviour::Withhold),
            "no-votes" => Ok(Misbehaviour::NoVotes),
            "forward-invalid" => Ok(Misbehaviour::ForwardInvalid),
            "wrong-digest" => Ok(Misbehaviour::WrongDigest),
            other => {
                if let Some(i) = other.strip_prefix("censor=").and_then(|i| i.parse().ok()) {
                    Ok(Misbehaviour::Censor(i))
                } else if let Some(n) = other.strip_prefix("panic-after=").and_then(|n| n.parse().ok()) {
                    Ok(Misbehaviour::PanicAfter(n))
                } else if let Some(n) = other.strip_prefix("flood=").and_then(|n| n.parse().ok()) {
                    Ok(Misbehaviour::Flood(n))
                } else if let Some(n) = other.strip_prefix("replay=").and_then(|n| n.parse().ok()) {
                    Ok(Misbehaviour::Replay(n))
                } else if let Some(n) = other.strip_prefix("spam=").and_then(|n| n.parse().ok()) {
                    Ok(Misbehaviour::Spam(n))
                } else if let Some(n) = other.strip_prefix("after=").and_then(|n| n.parse().ok()) {
                    Ok(Misbehaviour::After(n))
                } else {
                    Err(format!("unknown misbehaviour {other:?} (equivocate, bad-signatures, censor=<index>, panic-after=<steps>, withhold, no-votes, forward-invalid, wrong-digest, flood=<ops per 10 s>, replay=<blocks back>, spam=<messages per second>, after=<ms>)"))
                }
            }
        })
        .collect()
}

/// Makes up the operations of `forward-invalid` and `flood` (the driver signs and sends them).
#[derive(Default)]
pub struct Forger {
    started_ms: u64,
    announced: bool,
    next_flood_ms: u64,
    last_invalid_ms: u64,
    nonce: u64,
}

/// Largest flood batch forwarded at once.
const FLOOD_BATCH: u64 = 1000;

impl Forger {
    fn op(&mut self, me: usize, request: Request) -> Operation {
        self.nonce += 1;
        // Above any nonce an honest incarnation uses (incarnation < 2^23, shifted by 40).
        let id = OperationId { bank: me as u32, nonce: (1 << 63) | self.nonce };
        Operation { id: Some(id), request: Some(request), ..Default::default() }
    }

    /// Batches of unsigned operations to forward now as bank `me`.
    pub fn due(&mut self, me: usize, modes: &[Misbehaviour], now_ms: u64) -> Vec<Vec<Operation>> {
        if self.started_ms == 0 {
            self.started_ms = now_ms;
        }
        let after = modes.iter().find_map(|m| match m {
            Misbehaviour::After(ms) => Some(*ms),
            _ => None,
        });
        if now_ms < self.started_ms + after.unwrap_or(0) {
            return Vec::new();
        }
        let mut batches = Vec::new();
        let put = |key: &[u8], value: Vec<u8>| Request::Put(PutRequest { key: key.to_vec(), value, ..Default::default() });
        for m in modes {
            match m {
                Misbehaviour::ForwardInvalid if now_ms >= self.last_invalid_ms + 2000 => {
                    self.last_invalid_ms = now_ms;
                    let twice = |k: &[u8]| RequestOp { request: Some(request_op::Request::RequestPut(PutRequest { key: k.to_vec(), ..Default::default() })) };
                    let dup = Request::Txn(TxnRequest { compare: vec![], success: vec![twice(b"byz/dup"), twice(b"byz/dup")], failure: vec![] });
                    // Each alone, so that one refused does not take the others with it.
                    batches.push(vec![self.op(me, put(b"byz/oversized", vec![b'x'; 9 << 20]))]);
                    batches.push(vec![self.op(me, put(b"\x00bftcd/applied", b"forged".to_vec()))]);
                    batches.push(vec![self.op(me, dup)]);
                }
                Misbehaviour::Flood(burst) if now_ms >= self.started_ms + 2000 && now_ms >= self.next_flood_ms => {
                    self.next_flood_ms = now_ms + 10_000;
                    let mut todo = *burst;
                    while todo > 0 {
                        let n = todo.min(FLOOD_BATCH);
                        todo -= n;
                        let batch = (0..n)
                            .map(|_| {
                                let key = format!("byz/flood/{}", self.nonce % 4096);
                                self.op(me, put(key.as_bytes(), b"flood".to_vec()))
                            })
                            .collect();
                        batches.push(batch);
                    }
                }
                _ => {}
            }
        }
        if !batches.is_empty() && !self.announced {
            self.announced = true;
            tracing::warn!("THIS BANK IS BYZANTINE: forging operations");
        }
        batches
    }
}

/// Makes up the messages of `spam`.
#[derive(Default)]
pub struct Spammer {
    started_ms: u64,
    last_ms: u64,
    sent: u64,
    announced: bool,
}

impl Spammer {
    /// Encoded messages to broadcast now. `view` is the bank's current view; `sign` signs bytes
    /// with its BLS key; `domain` gives the signed bytes of votes and timeouts.
    pub fn due(
        &mut self,
        me: usize,
        rate: u64,
        after_ms: Option<u64>,
        now_ms: u64,
        view: u64,
        domain: &crate::consensus::Domain,
        sign: impl Fn(&[u8]) -> Vec<u8>,
    ) -> Vec<bytes::Bytes> {
        use bftcd_proto::bftcd::{CommittedBlock, QuorumCert, ReadIndexRequest, SyncRequest, SyncResponse, Timeout, Vote};
        use prost::Message;
        if self.started_ms == 0 {
            self.started_ms = now_ms;
            self.last_ms = now_ms;
        }
        if now_ms < self.started_ms + after_ms.unwrap_or(SPAM_AFTER_MS) {
            self.last_ms = now_ms;
            return Vec::new();
        }
        if !self.announced {
            self.announced = true;
            tracing::warn!(rate, "THIS BANK IS BYZANTINE: spamming every peer");
        }
        let n = (now_ms.saturating_sub(self.last_ms) * rate / 1000).min(rate);
        self.last_ms = now_ms;
        let msg = |kind| PeerMessage { kind: Some(kind) }.encode_to_vec().into();
        (0..n)
            .map(|_| {
                self.sent += 1;
                let i = self.sent;
                let hash = blake3_like(i);
                match i % 7 {
                    0 => {
                        let (v, jv) = (view + 1 + i % 3, view);
                        let signature = sign(&domain.vote_bytes(v, &hash, jv));
                        msg(Kind::Vote(Vote { epoch: 1, view: v, block_hash: hash, justify_view: jv, signer: me as u32, signature, proposal_signature: vec![] }))
                    }
                    1 => msg(Kind::Vote(Vote {
                        epoch: 1,
                        view: view + 1_000_000 + i,
                        block_hash: hash,
                        justify_view: view,
                        signer: me as u32,
                        signature: vec![0xab; (i % 200) as usize],
                        proposal_signature: vec![0xcd; (i % 100) as usize],
                    })),
                    2 => {
                        let v = view + i % 3;
                        let signature = sign(&domain.timeout_bytes(v, 0));
                        let high_qc = Some(QuorumCert { epoch: 1, view: 0, ..Default::default() });
                        msg(Kind::Timeout(Timeout { epoch: 1, view: v, high_qc, signer: me as u32, signature, high_tc: None }))
                    }
                    3 => msg(Kind::SyncRequest(SyncRequest { committed_height: if i % 2 == 0 { 0 } else { u64::MAX }, want_block: vec![] })),
                    4 => {
                        let block = Block { height: u64::MAX - i, view: view + i, proposer: me as u32, ..Default::default() };
                        msg(Kind::SyncResponse(SyncResponse { committed: vec![CommittedBlock { block: Some(block), ..Default::default() }], uncommitted: vec![] }))
                    }
                    5 if i % 2 == 0 => msg(Kind::ReadIndexRequest(ReadIndexRequest { round: i })),
                    // Made-up evidence against another bank, signed by this one.
                    5 => {
                        let other = ((me as u64 + 1 + i % 3) % 4) as usize;
                        let (a, b) = (blake3_like(i ^ 1), hash.clone());
                        let (sa, sb) = (sign(&domain.proposal_bytes(view, &a)), sign(&domain.proposal_bytes(view, &b)));
                        msg(Kind::Evidence(crate::evidence::double_proposal(domain, other, view.max(1), (&a, &sa), (&b, &sb))))
                    }
                    _ => bytes::Bytes::from(vec![0xff; 64 + (i % 512) as usize]),
                }
            })
            .collect()
    }
}

/// 32 bytes that differ for each `i` (no hash needed: only distinctness matters).
fn blake3_like(i: u64) -> Vec<u8> {
    let mut h = vec![0u8; 32];
    h[..8].copy_from_slice(&i.to_be_bytes());
    h[8..16].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    h
}

/// `Config::new`'s operation_ttl_ms: how long after its submit time a block may take an operation.
const OPERATION_TTL_MS: u64 = 120_000;

/// Finds what `replay` repeats, walking its own ledger upwards once (operations only age).
#[derive(Default)]
pub struct Replayer {
    next: u64,
}

impl Replayer {
    /// The oldest operation committed at least `depth` blocks below `height` that a block of time
    /// `now_ms` would still take by its submit time (with 2 s to spare); `read` gives a block.
    pub fn pick(&mut self, height: u64, depth: u64, now_ms: u64, read: impl Fn(u64) -> Option<Block>) -> Option<Operation> {
        self.next = self.next.max(1);
        while self.next.saturating_add(depth) <= height {
            let b = read(self.next)?;
            if let Some(op) = b.operations.into_iter().find(|op| op.submitted_ms.saturating_add(OPERATION_TTL_MS) > now_ms.saturating_add(2000)) {
                return Some(op);
            }
            self.next += 1;
        }
        None
    }
}

/// Adds `op` in front of the operations of every proposal in `outputs` (`replay`).
pub fn replay(op: &Operation, outputs: &mut [Output]) -> bool {
    let mut added = false;
    for o in outputs {
        if let Output::Broadcast(PeerMessage { kind: Some(Kind::Proposal(p)) }) = o {
            if let Some(b) = p.block.as_mut() {
                b.operations.insert(0, op.clone());
                added = true;
            }
        }
    }
    added
}

fn spoil(sig: &mut [u8]) {
    if let Some(b) = sig.first_mut() {
        *b ^= 0x01;
    }
}

/// `sign` signs a proposal again after it was changed (as its leader: a Byzantine bank signs
/// what it sends, which is what makes its equivocation evidence).
pub fn tamper(me: usize, n: usize, modes: &[Misbehaviour], outputs: Vec<Output>, sign: &dyn Fn(&mut Proposal)) -> Vec<Output> {
    let mut out = Vec::with_capacity(outputs.len());
    let withhold = modes.contains(&Misbehaviour::Withhold);
    let no_votes = modes.contains(&Misbehaviour::NoVotes);
    for o in outputs {
        match o {
            Output::Broadcast(PeerMessage { kind: Some(Kind::Proposal(_)) })
            | Output::Send { msg: PeerMessage { kind: Some(Kind::Proposal(_)) }, .. }
                if withhold => {}
            Output::Broadcast(PeerMessage { kind: Some(Kind::Vote(_)) })
            | Output::Send { msg: PeerMessage { kind: Some(Kind::Vote(_)) }, .. }
                if no_votes => {}
            Output::Broadcast(PeerMessage { kind: Some(Kind::Proposal(mut p)) }) => {
                for m in modes {
                    if let (Misbehaviour::Censor(bank), Some(b)) = (m, p.block.as_mut()) {
                        b.operations.retain(|op| op_id(op).is_none_or(|id| id.0 != *bank));
                    }
                }
                sign(&mut p);
                if modes.contains(&Misbehaviour::Equivocate) {
                    let mut other = p.clone();
                    if let Some(b) = other.block.as_mut() {
                        b.timestamp_ms += 1;
                        b.operations.reverse();
                    }
                    sign(&mut other);
                    let peers: Vec<usize> = (0..n).filter(|&i| i != me).collect();
                    for (k, to) in peers.iter().enumerate() {
                        let msg = if k % 2 == 0 { p.clone() } else { other.clone() };
                        out.push(Output::Send { to: *to, msg: PeerMessage { kind: Some(Kind::Proposal(msg)) } });
                    }
                } else {
                    out.push(Output::Broadcast(PeerMessage { kind: Some(Kind::Proposal(p)) }));
                }
            }
            Output::Broadcast(PeerMessage { kind: Some(Kind::Vote(mut v)) }) if modes.contains(&Misbehaviour::BadSignatures) => {
                spoil(&mut v.signature);
                out.push(Output::Broadcast(PeerMessage { kind: Some(Kind::Vote(v)) }));
            }
            Output::Broadcast(PeerMessage { kind: Some(Kind::Timeout(mut t)) }) if modes.contains(&Misbehaviour::BadSignatures) => {
                spoil(&mut t.signature);
                out.push(Output::Broadcast(PeerMessage { kind: Some(Kind::Timeout(t)) }));
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_misbehaviour() {
        assert_eq!(
            parse("equivocate,bad-signatures,censor=2,panic-after=7,withhold,no-votes,forward-invalid,flood=50,replay=1024").unwrap(),
            vec![
                Misbehaviour::Equivocate,
                Misbehaviour::BadSignatures,
                Misbehaviour::Censor(2),
                Misbehaviour::PanicAfter(7),
                Misbehaviour::Withhold,
                Misbehaviour::NoVotes,
                Misbehaviour::ForwardInvalid,
                Misbehaviour::Flood(50),
                Misbehaviour::Replay(1024),
            ]
        );
        assert_eq!(parse(" withhold").unwrap(), vec![Misbehaviour::Withhold]);
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn refuses_unknown_misbehaviours() {
        let err = parse("withhold,no-vote").unwrap_err();
        assert!(err.contains("\"no-vote\""), "{err}");
        assert!(err.contains("no-votes") && err.contains("withhold"), "{err}");
        assert!(parse("censor=x").is_err());
    }

    fn msg(kind: Kind) -> PeerMessage {
        PeerMessage { kind: Some(kind) }
    }

    fn kinds(out: &[Output]) -> Vec<&'static str> {
        out.iter()
            .map(|o| match o {
                Output::Broadcast(m) | Output::Send { msg: m, .. } => match m.kind {
                    Some(Kind::Proposal(_)) => "proposal",
                    Some(Kind::Vote(_)) => "vote",
                    Some(Kind::Timeout(_)) => "timeout",
                    _ => "other",
                },
                _ => "other",
            })
            .collect()
    }

    fn sample() -> Vec<Output> {
        vec![
            Output::Broadcast(msg(Kind::Proposal(Default::default()))),
            Output::Broadcast(msg(Kind::Vote(Default::default()))),
            Output::Send { to: 1, msg: msg(Kind::Vote(Default::default())) },
            Output::Broadcast(msg(Kind::Timeout(Default::default()))),
        ]
    }

    #[test]
    fn withhold_drops_only_proposals() {
        assert_eq!(kinds(&tamper(0, 4, &[Misbehaviour::Withhold], sample(), &|_| {})), ["vote", "vote", "timeout"]);
    }

    #[test]
    fn no_votes_drops_only_votes() {
        assert_eq!(kinds(&tamper(0, 4, &[Misbehaviour::NoVotes], sample(), &|_| {})), ["proposal", "timeout"]);
    }
}

#[test]
fn forger_paces_its_operations() {
    let mut f = Forger::default();
    assert!(f.due(2, &[Misbehaviour::Flood(2500)], 10_000).is_empty(), "waits 2 s");
    let batches = f.due(2, &[Misbehaviour::Flood(2500)], 12_500);
    assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [1000, 1000, 500]);
    assert!(f.due(2, &[Misbehaviour::Flood(2500)], 20_000).is_empty(), "every 10 s");
    assert_eq!(f.due(2, &[Misbehaviour::Flood(2500)], 22_500).len(), 3);
    assert!(batches.iter().flatten().all(|op| op.id.is_some_and(|id| id.bank == 2 && id.nonce >= 1 << 63)));
    let invalid = f.due(2, &[Misbehaviour::ForwardInvalid], 13_000);
    assert_eq!(invalid.len(), 3);
    assert!(f.due(2, &[Misbehaviour::ForwardInvalid], 14_000).is_empty(), "every 2 s");
}

#[test]
fn replay_picks_the_oldest_operation_still_in_the_window_deep_enough() {
    let block = |h: u64| {
        let op = |n: u64| Operation { id: Some(OperationId { bank: 1, nonce: n }), submitted_ms: h * 10_000, ..Default::default() };
        Some(Block { height: h, operations: vec![op(2 * h), op(2 * h + 1)], ..Default::default() })
    };
    let mut r = Replayer::default();
    let nonce = |op: Option<Operation>| op.and_then(|o| o.id).map(|id| id.nonce);
    // Submitted at 10 s, 20 s ...; at 135 s the block at height 1 is out (10 + 120 < 137).
    assert_eq!(nonce(r.pick(10, 5, 135_000, block)), Some(4), "height 2, its first operation");
    assert_eq!(nonce(r.pick(10, 9, 135_000, block)), None, "height 2 is not 9 blocks down");
    assert_eq!(nonce(r.pick(20, 5, 1_000_000, block)), None, "every operation aged out");
    assert_eq!(r.next, 16, "and is not read again");
    let mut out = vec![Output::Broadcast(PeerMessage { kind: Some(Kind::Proposal(bftcd_proto::bftcd::Proposal { block: Some(Block::default()), tc: None })) })];
    assert!(replay(&block(3).unwrap().operations[0], &mut out));
    assert!(!replay(&Operation::default(), &mut []));
}
