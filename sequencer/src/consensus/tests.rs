//! Single-core checks of rules the simulator cannot aim at directly (it runs honest leaders).

use bftcd_proto::bftcd::{operation::Request, peer_message::Kind, Operation, OperationId, PeerMessage, Submit};
use bftcd_proto::etcdserverpb::PutRequest;
use bftcd_proto::Message;

use super::certs::{sim::SimCrypto, Crypto};
use super::{CommittedLog, Config, Core, Domain, Input, Output, SafetyRules, SafetyState};

fn put(key: &[u8], value: &[u8]) -> Request {
    Request::Put(PutRequest { key: key.to_vec(), value: value.to_vec(), ..Default::default() })
}

struct NoLog;

impl CommittedLog for NoLog {
    fn read(&self, _: u64) -> Option<bftcd_proto::bftcd::CommittedBlock> {
        None
    }
}

const N: usize = 4;
const NOW: u64 = 10_000;

fn domain() -> Domain {
    Domain { chain_id: "unit".into(), epoch: 1, n: N }
}

fn core(me: usize) -> Core {
    let cfg = Config::new(me, domain(), [3; 32]);
    Core::new(cfg, Box::new(SimCrypto { me, n: N }), SafetyRules::new(SafetyState::default()), 1, None, vec![], vec![])
}

/// An operation bank `bank` accepted and signed.
fn signed_op(bank: usize, value: &[u8]) -> Operation {
    let mut op = Operation {
        id: Some(OperationId { bank: bank as u32, nonce: 1 }),
        request: Some(put(b"k", value)),
        submitted_ms: NOW,
        ..Default::default()
    };
    domain().sign_batch(std::slice::from_mut(&mut op), |b| SimCrypto { me: bank, n: N }.sign_operation(b));
    op
}

/// `p` signed by its proposer `from`, as a real leader signs it.
fn signed(mut p: bftcd_proto::bftcd::Proposal, from: usize) -> bftcd_proto::bftcd::Proposal {
    super::sign_proposal(&SimCrypto { me: from, n: N }, &domain(), &mut p);
    p
}

fn submit(op: &Operation) -> PeerMessage {
    PeerMessage { kind: Some(Kind::Submit(Submit { operations: vec![op.clone()] })) }
}

fn voted(out: &[Output]) -> bool {
    out.iter().any(|o| matches!(o, Output::Broadcast(PeerMessage { kind: Some(Kind::Vote(_)) })))
}

/// The leader of view 1 proposes a block carrying `op`; returns that proposal.
fn proposal_carrying(op: &Operation) -> PeerMessage {
    let mut leader = core(1);
    let mut out = leader.handle(NOW, Input::Message { from: 3, msg: submit(op) }, &NoLog);
    out.extend(leader.handle(NOW, Input::Tick, &NoLog));
    out.into_iter()
        .find_map(|o| match o {
            Output::Broadcast(m @ PeerMessage { kind: Some(Kind::Proposal(_)) }) => Some(m),
            _ => None,
        })
        .expect("the leader proposes the waiting operation")
}

#[test]
fn replica_votes_for_a_block_carrying_the_operation_it_holds() {
    let op = signed_op(3, b"v");
    let mut replica = core(0);
    replica.handle(NOW, Input::Message { from: 3, msg: submit(&op) }, &NoLog);
    let out = replica.handle(NOW, Input::Message { from: 1, msg: proposal_carrying(&op) }, &NoLog);
    assert!(voted(&out), "{out:?}");
}

#[test]
fn leader_cannot_change_an_operation_the_replica_holds() {
    let op = signed_op(3, b"v");
    let mut replica = core(0);
    replica.handle(NOW, Input::Message { from: 3, msg: submit(&op) }, &NoLog);
    // Same id, same signature, different value: the replica holds the id, not these bytes.
    let mut p = proposal_carrying(&op);
    let Some(Kind::Proposal(prop)) = p.kind.as_mut() else { unreachable!() };
    let carried = &mut prop.block.as_mut().unwrap().operations[0];
    carried.request = Some(put(b"k", b"forged"));
    *prop = signed(prop.clone(), 1);
    let out = replica.handle(NOW, Input::Message { from: 1, msg: p }, &NoLog);
    assert!(!voted(&out), "voted for a forged operation: {out:?}");
    assert!(
        out.iter().any(|o| matches!(o, Output::Rejected { from: 1, reason } if reason.contains("invalid"))),
        "{out:?}"
    );
}

#[test]
fn a_bad_signature_in_a_forwarded_batch_drops_only_what_fails() {
    // Five operations, each signed as a batch of its own (as after re-forwards).
    let mut ops: Vec<Operation> = (0..5u64)
        .map(|i| {
            let mut op = signed_op(3, format!("v{i}").as_bytes());
            op.id = Some(OperationId { bank: 3, nonce: 10 + i });
            domain().sign_batch(std::slice::from_mut(&mut op), |b| SimCrypto { me: 3, n: N }.sign_operation(b));
            op
        })
        .collect();
    ops[3].bank_signature[0] ^= 1;
    let mut replica = core(0);
    let msg = PeerMessage { kind: Some(Kind::Submit(Submit { operations: ops })) };
    let out = replica.handle(NOW, Input::Message { from: 3, msg }, &NoLog);
    assert!(out.iter().any(|o| matches!(o, Output::Rejected { from: 3, .. })), "{out:?}");
    assert_eq!(replica.mempool_len(), 3, "the operations before the bad one are kept");
}

/// Counts aggregate checks, so a test can see each QC checked once, and single checks.
struct Counting {
    inner: SimCrypto,
    aggregates: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    verifies: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Crypto for Counting {
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.inner.sign(msg)
    }
    fn verify(&self, signer: usize, msg: &[u8], sig: &[u8]) -> bool {
        self.verifies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.verify(signer, msg, sig)
    }
    fn signature_len(&self) -> usize {
        self.inner.signature_len()
    }
    fn aggregate(&self, sigs: &[&[u8]]) -> Option<Vec<u8>> {
        self.inner.aggregate(sigs)
    }
    fn verify_aggregate(&self, signers: &[usize], msg: &[u8], agg: &[u8]) -> bool {
        self.aggregates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.verify_aggregate(signers, msg, agg)
    }
    fn sign_operation(&self, msg: &[u8]) -> Vec<u8> {
        self.inner.sign_operation(msg)
    }
    fn verify_operation(&self, bank: usize, msg: &[u8], sig: &[u8]) -> bool {
        self.inner.verify_operation(bank, msg, sig)
    }
}

/// Four cores on a lossless in-order network; every output of every step is kept.
struct Cluster {
    cores: Vec<Core>,
    aggregates: Vec<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    outputs: Vec<Vec<Output>>,
}

impl Cluster {
    fn new() -> Cluster {
        let mut cores = Vec::new();
        let mut aggregates = Vec::new();
        for me in 0..N {
            let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let crypto = Counting { inner: SimCrypto { me, n: N }, aggregates: count.clone(), verifies: Default::default() };
            let cfg = Config::new(me, domain(), [3; 32]);
            cores.push(Core::new(cfg, Box::new(crypto), SafetyRules::new(SafetyState::default()), 1, None, vec![], vec![]));
            aggregates.push(count);
        }
        Cluster { cores, aggregates, outputs: vec![Vec::new(); N] }
    }

    /// Hands `input` to core `to`, then delivers every message until none is left.
    fn run(&mut self, to: usize, input: Input) {
        let mut queue = std::collections::VecDeque::from([(to, None, Some(input))]);
        let mut now = NOW;
        while let Some((to, from, input)) = queue.pop_front() {
            now += 1;
            let input = match (from, input) {
                (_, Some(i)) => i,
                (Some((from, msg)), None) => Input::Message { from, msg },
                (None, None) => unreachable!(),
            };
            let out = self.cores[to].handle(now, input, &NoLog);
            for o in &out {
                match o {
                    Output::Send { to: peer, msg } => queue.push_back((*peer, Some((to, msg.clone())), None)),
                    Output::Broadcast(msg) => {
                        for peer in (0..N).filter(|p| *p != to) {
                            queue.push_back((peer, Some((to, msg.clone())), None));
                        }
                    }
                    _ => {}
                }
            }
            self.outputs[to].extend(out);
        }
    }

    fn count(&self, me: usize, what: impl Fn(&Output) -> bool) -> usize {
        self.outputs[me].iter().filter(|o| what(o)).count()
    }
}

#[test]
fn every_validator_commits_from_the_votes_without_an_announcing_block() {
    let mut c = Cluster::new();
    c.run(3, Input::Submit(vec![Operation { id: Some(OperationId { bank: 3, nonce: 1 }), request: Some(put(b"k", b"v")), ..Default::default() }]));
    for me in 0..N {
        assert_eq!(c.cores[me].committed_height(), 1, "validator {me} committed the write's block");
        let commits = c.count(me, |o| matches!(o, Output::Commit(_)));
        assert_eq!(commits, 1, "validator {me}");
    }
    // The write's block and its certifying child: nothing proposed only to announce the commit.
    let proposals: usize = (0..N)
        .map(|me| c.count(me, |o| matches!(o, Output::Broadcast(PeerMessage { kind: Some(Kind::Proposal(_)) }))))
        .sum();
    assert_eq!(proposals, 2);
}

#[test]
fn each_qc_is_checked_once_per_validator() {
    let mut c = Cluster::new();
    c.run(3, Input::Submit(vec![Operation { id: Some(OperationId { bank: 3, nonce: 1 }), request: Some(put(b"k", b"v")), ..Default::default() }]));
    for me in 0..N {
        // Two QCs (the write's block and its child): one aggregate check each, whether the QC
        // was formed from the votes or arrived in a proposal first.
        let checks = c.aggregates[me].load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(checks, 2, "validator {me} checked {checks} aggregates");
    }
}

#[test]
fn a_second_vote_in_one_view_is_refused() {
    let mut replica = core(0);
    let d = domain();
    let signer = SimCrypto { me: 2, n: N };
    let vote = |hash: [u8; 32]| {
        let signature = signer.sign(&d.vote_bytes(1, &hash, 0));
        PeerMessage {
            kind: Some(Kind::Vote(bftcd_proto::bftcd::Vote {
                epoch: 1,
                view: 1,
                block_hash: hash.to_vec(),
                justify_view: 0,
                signer: 2,
                signature,
                proposal_signature: vec![],
            })),
        }
    };
    let out = replica.handle(NOW, Input::Message { from: 2, msg: vote([1; 32]) }, &NoLog);
    assert!(!out.iter().any(|o| matches!(o, Output::Rejected { .. })), "{out:?}");
    let out = replica.handle(NOW, Input::Message { from: 2, msg: vote([2; 32]) }, &NoLog);
    let ev = evidence_of(&out);
    assert_eq!(ev.len(), 1, "both votes verify alone: evidence {out:?}");
    assert!(matches!(ev[0].kind, Some(bftcd_proto::bftcd::evidence::Kind::DoubleVote(_))) && ev[0].offender == 2);
    assert_eq!(crate::evidence::check(&d, &SimCrypto { me: 0, n: N }, &ev[0]), Ok(()));
    let out3 = replica.handle(NOW, Input::Message { from: 2, msg: vote([3; 32]) }, &NoLog);
    assert!(evidence_of(&out3).is_empty(), "one piece of evidence per equivocation: {out3:?}");
    assert!(
        out.iter().any(|o| matches!(o, Output::Rejected { from: 2, reason } if reason.contains("second vote"))),
        "{out:?}"
    );
}

#[test]
fn a_vote_far_ahead_is_dropped() {
    let mut replica = core(0);
    let d = domain();
    let view = 10_000;
    let signature = SimCrypto { me: 2, n: N }.sign(&d.vote_bytes(view, &[1; 32], 0));
    let msg = PeerMessage {
        kind: Some(Kind::Vote(bftcd_proto::bftcd::Vote { epoch: 1, view, block_hash: vec![1; 32], justify_view: 0, signer: 2, signature, proposal_signature: vec![] })),
    };
    let out = replica.handle(NOW, Input::Message { from: 2, msg }, &NoLog);
    assert!(out.iter().any(|o| matches!(o, Output::Rejected { from: 2, reason } if reason.contains("ahead"))), "{out:?}");
}

#[test]
fn one_signature_covers_a_batch_and_each_operation_checks_alone() {
    let d = domain();
    let crypto = SimCrypto { me: 2, n: N };
    let mut ops: Vec<Operation> = (0..7u64)
        .map(|i| Operation {
            id: Some(OperationId { bank: 2, nonce: i }),
            request: Some(put(format!("k{i}").as_bytes(), b"v")),
            submitted_ms: NOW,
            ..Default::default()
        })
        .collect();
    let mut signatures = 0;
    d.sign_batch(&mut ops, |b| {
        signatures += 1;
        crypto.sign_operation(b)
    });
    assert_eq!(signatures, 1);
    for op in &ops {
        assert!(crypto.verify_operation(2, &d.operation_bytes(op), &op.bank_signature));
        assert!(!crypto.verify_operation(1, &d.operation_bytes(op), &op.bank_signature), "another bank's key");
        // Any change to the operation, its place or the claimed batch size breaks it.
        let mut changed = op.clone();
        changed.request = Some(put(b"other", b"v"));
        assert!(!crypto.verify_operation(2, &d.operation_bytes(&changed), &op.bank_signature));
        let mut moved = op.clone();
        moved.batch_index = (op.batch_index + 1) % 7;
        assert!(!crypto.verify_operation(2, &d.operation_bytes(&moved), &op.bank_signature));
        let mut resized = op.clone();
        resized.batch_size = 8;
        assert!(!crypto.verify_operation(2, &d.operation_bytes(&resized), &op.bank_signature));
        let mut cut = op.clone();
        cut.batch_path.pop();
        assert!(d.operation_bytes(&cut).is_empty(), "a malformed path signs nothing");
    }
}

#[test]
fn a_leader_that_got_the_votes_before_the_block_still_proposes() {
    // Bank 1 leads view 1 with a write; bank 2 leads view 2. Bank 2 hears the votes of banks 0,
    // 1 and 3 for the view-1 block before the block itself: it forms the QC, enters view 2, and
    // must propose on top of that block as soon as the block arrives, not time out.
    let op = Operation { id: Some(OperationId { bank: 1, nonce: 1 }), request: Some(put(b"k", b"v")), ..Default::default() };
    let mut c = Cluster::new();
    let mut leader_out = c.cores[1].handle(NOW, Input::Submit(vec![op]), &NoLog);
    leader_out.extend(c.cores[1].handle(NOW, Input::Tick, &NoLog));
    let proposal = leader_out
        .iter()
        .find_map(|o| match o {
            Output::Broadcast(m @ PeerMessage { kind: Some(Kind::Proposal(_)) }) => Some(m.clone()),
            _ => None,
        })
        .expect("bank 1 proposes");
    let vote_of = |out: &[Output]| {
        out.iter()
            .find_map(|o| match o {
                Output::Broadcast(m @ PeerMessage { kind: Some(Kind::Vote(_)) }) => Some(m.clone()),
                _ => None,
            })
            .expect("a vote")
    };
    let mut votes = vec![(1, vote_of(&leader_out))];
    for b in [0, 3] {
        let out = c.cores[b].handle(NOW, Input::Message { from: 1, msg: proposal.clone() }, &NoLog);
        votes.push((b, vote_of(&out)));
    }
    for (from, v) in votes {
        c.cores[2].handle(NOW + 1, Input::Message { from, msg: v }, &NoLog);
    }
    assert_eq!(c.cores[2].view(), 2, "bank 2 formed the QC and entered view 2");
    let out = c.cores[2].handle(NOW + 2, Input::Message { from: 1, msg: proposal }, &NoLog);
    assert!(
        out.iter().any(|o| matches!(o, Output::Broadcast(PeerMessage { kind: Some(Kind::Proposal(p)) }) if p.block.as_ref().unwrap().view == 2)),
        "bank 2 proposes for view 2 once the late block arrives: {out:?}"
    );
}

#[test]
fn a_proposal_that_arrives_before_its_parent_is_voted_for_once_the_parent_is_synced() {
    // Bank 0 misses the view-1 block and hears of it first as the parent of bank 2's view-2
    // proposal: it keeps that proposal, fetches the parent, then votes for it.
    let first = |out: &[Output], want: &dyn Fn(&PeerMessage) -> bool| {
        out.iter()
            .find_map(|o| match o {
                Output::Broadcast(m) | Output::Send { msg: m, .. } if want(m) => Some(m.clone()),
                _ => None,
            })
            .expect("the expected message")
    };
    let is_proposal = |m: &PeerMessage| matches!(m.kind, Some(Kind::Proposal(_)));
    let is_vote = |m: &PeerMessage| matches!(m.kind, Some(Kind::Vote(_)));
    let op = Operation { id: Some(OperationId { bank: 1, nonce: 1 }), request: Some(put(b"k", b"v")), ..Default::default() };
    let mut c = Cluster::new();
    let mut out1 = c.cores[1].handle(NOW, Input::Submit(vec![op]), &NoLog);
    out1.extend(c.cores[1].handle(NOW, Input::Tick, &NoLog));
    let p1 = first(&out1, &is_proposal);
    let mut votes = vec![(1, first(&out1, &is_vote))];
    let out3 = c.cores[3].handle(NOW, Input::Message { from: 1, msg: p1.clone() }, &NoLog);
    votes.push((3, first(&out3, &is_vote)));
    let mut out2 = c.cores[2].handle(NOW, Input::Message { from: 1, msg: p1 }, &NoLog);
    for (from, v) in votes {
        out2.extend(c.cores[2].handle(NOW + 1, Input::Message { from, msg: v }, &NoLog));
    }
    let p2 = first(&out2, &|m| matches!(&m.kind, Some(Kind::Proposal(p)) if p.block.as_ref().unwrap().view == 2));

    let out0 = c.cores[0].handle(NOW + 2, Input::Message { from: 2, msg: p2 }, &NoLog);
    assert!(!voted(&out0), "no vote without the parent: {out0:?}");
    let ask = first(&out0, &|m| matches!(m.kind, Some(Kind::SyncRequest(_))));
    let answer = c.cores[2].handle(NOW + 3, Input::Message { from: 0, msg: ask }, &NoLog);
    let sync = first(&answer, &|m| matches!(m.kind, Some(Kind::SyncResponse(_))));
    let out0 = c.cores[0].handle(NOW + 4, Input::Message { from: 2, msg: sync }, &NoLog);
    assert!(
        out0.iter().any(|o| matches!(o, Output::Broadcast(PeerMessage { kind: Some(Kind::Vote(v)) }) if v.view == 2)),
        "bank 0 votes for the kept view-2 proposal once its parent arrived: {out0:?}"
    );
}

/// A committed log of `blocks` blocks of about `size` bytes each; the last block of every
/// `chain` consecutive ones carries the commit proof (blocks committed together).
struct BigLog {
    size: usize,
    chain: u64,
}

impl CommittedLog for BigLog {
    fn read(&self, height: u64) -> Option<bftcd_proto::bftcd::CommittedBlock> {
        let block = bftcd_proto::bftcd::Block {
            height,
            operations: vec![Operation { request: Some(put(b"k", &vec![7u8; self.size])), ..Default::default() }],
            ..Default::default()
        };
        let proof = height.is_multiple_of(self.chain).then(bftcd_proto::bftcd::QuorumCert::default);
        Some(bftcd_proto::bftcd::CommittedBlock { block: Some(block), commit_qc: proof, commit_child: None })
    }
}

fn sync_answer(log: &BigLog) -> bftcd_proto::bftcd::SyncResponse {
    let tip = bftcd_proto::bftcd::Block { height: 100, view: 100, ..Default::default() };
    let cfg = Config::new(0, domain(), [3; 32]);
    let mut c = Core::new(
        cfg,
        Box::new(SimCrypto { me: 0, n: N }),
        SafetyRules::new(SafetyState::default()),
        1,
        Some((tip, bftcd_proto::bftcd::QuorumCert::default())),
        vec![],
        vec![],
    );
    let ask = PeerMessage { kind: Some(Kind::SyncRequest(bftcd_proto::bftcd::SyncRequest { committed_height: 0, ..Default::default() })) };
    let out = c.handle(NOW, Input::Message { from: 1, msg: ask }, log);
    out.into_iter()
        .find_map(|o| match o {
            Output::Send { to: 1, msg: PeerMessage { kind: Some(Kind::SyncResponse(r)) } } => Some(r),
            _ => None,
        })
        .expect("a sync answer")
}

#[test]
fn a_sync_answer_stays_within_its_byte_budget_and_is_never_empty() {
    let budget = Config::new(0, domain(), [3; 32]).max_sync_bytes;
    // 1 MiB blocks, each with its own proof: as many as the budget holds, not 128.
    let r = sync_answer(&BigLog { size: 1 << 20, chain: 1 });
    let bytes: usize = r.committed.iter().map(|cb| cb.encoded_len()).sum();
    assert!(!r.committed.is_empty() && bytes <= budget, "{} blocks, {bytes} bytes", r.committed.len());
    assert!(r.committed.len() < 128);
    // Six 1 MiB blocks committed together: the first proof is past the budget, and the answer
    // still reaches it (an answer ending without a proof would be useless).
    let r = sync_answer(&BigLog { size: 1 << 20, chain: 6 });
    assert_eq!(r.committed.len(), 6);
    assert!(r.committed.last().unwrap().commit_qc.is_some());
    // Small blocks: the block count limit still applies.
    let r = sync_answer(&BigLog { size: 10, chain: 1 });
    assert_eq!(r.committed.len(), 100, "everything up to the committed tip");
}

#[test]
fn one_sync_request_is_in_flight_at_a_time() {
    // Bank 0 hears of a block it lacks, again and again (as from the stale messages that reach a
    // bank after a partition heals): it asks once, and again only when the asked peer has not
    // answered within two view timeouts.
    let first = |out: &[Output], want: &dyn Fn(&PeerMessage) -> bool| {
        out.iter().find_map(|o| match o {
            Output::Broadcast(m) | Output::Send { msg: m, .. } if want(m) => Some(m.clone()),
            _ => None,
        })
    };
    let is_ask = |m: &PeerMessage| matches!(m.kind, Some(Kind::SyncRequest(_)));
    let is_vote = |m: &PeerMessage| matches!(m.kind, Some(Kind::Vote(_)));
    let op = Operation { id: Some(OperationId { bank: 1, nonce: 1 }), request: Some(put(b"k", b"v")), ..Default::default() };
    let mut c = Cluster::new();
    let mut out1 = c.cores[1].handle(NOW, Input::Submit(vec![op]), &NoLog);
    out1.extend(c.cores[1].handle(NOW, Input::Tick, &NoLog));
    let p1 = first(&out1, &|m| matches!(m.kind, Some(Kind::Proposal(_)))).unwrap();
    let mut votes = vec![(1, first(&out1, &is_vote).unwrap())];
    let out3 = c.cores[3].handle(NOW, Input::Message { from: 1, msg: p1.clone() }, &NoLog);
    votes.push((3, first(&out3, &is_vote).unwrap()));
    let mut out2 = c.cores[2].handle(NOW, Input::Message { from: 1, msg: p1 }, &NoLog);
    for (from, v) in votes {
        out2.extend(c.cores[2].handle(NOW + 1, Input::Message { from, msg: v }, &NoLog));
    }
    let p2 = first(&out2, &|m| matches!(&m.kind, Some(Kind::Proposal(p)) if p.block.as_ref().unwrap().view == 2)).unwrap();

    let timeout = Config::new(0, domain(), [3; 32]).base_timeout_ms;
    let out = c.cores[0].handle(NOW + 2, Input::Message { from: 2, msg: p2.clone() }, &NoLog);
    assert!(first(&out, &is_ask).is_some(), "bank 0 asks for the missing parent: {out:?}");
    for t in [3, 10, timeout / 2, timeout + 3] {
        let out = c.cores[0].handle(NOW + t, Input::Message { from: 2, msg: p2.clone() }, &NoLog);
        assert!(first(&out, &is_ask).is_none(), "asked again {t} ms later while waiting: {out:?}");
    }
    let out = c.cores[0].handle(NOW + 3 + 2 * timeout, Input::Message { from: 2, msg: p2 }, &NoLog);
    assert!(first(&out, &is_ask).is_some(), "a peer silent for two view timeouts is passed over: {out:?}");
}

fn refused(out: &[Output], why: &str) -> bool {
    out.iter().any(|o| matches!(o, Output::Rejected { reason, .. } if *reason == why))
}

#[test]
fn a_proposal_from_another_than_the_views_leader_or_with_another_failure_record_is_refused() {
    let op = signed_op(3, b"v");
    let PeerMessage { kind: Some(Kind::Proposal(good)) } = proposal_carrying(&op) else { unreachable!() };
    let why = "proposal from a validator that does not lead the view";
    // View 1's leader is validator 1; validator 2 sending the same block as its own is refused.
    let mut other = good.clone();
    other.block.as_mut().unwrap().proposer = 2;
    let other = signed(other, 2);
    let mut replica = core(0);
    replica.handle(NOW, Input::Message { from: 3, msg: submit(&op) }, &NoLog);
    let out = replica.handle(NOW, Input::Message { from: 2, msg: PeerMessage { kind: Some(Kind::Proposal(other)) } }, &NoLog);
    assert!(refused(&out, why) && !voted(&out), "{out:?}");
    // The leader blaming a validator that did not fail.
    let mut blaming = good.clone();
    blaming.block.as_mut().unwrap().failed_leaders = domain().bitmap([2]);
    let blaming = signed(blaming, 1);
    let out = replica.handle(NOW, Input::Message { from: 1, msg: PeerMessage { kind: Some(Kind::Proposal(blaming)) } }, &NoLog);
    assert!(refused(&out, why) && !voted(&out), "{out:?}");
    let out = replica.handle(NOW, Input::Message { from: 1, msg: PeerMessage { kind: Some(Kind::Proposal(good)) } }, &NoLog);
    assert!(voted(&out), "{out:?}");
}

/// A chain of 60 committed blocks in which validator 2 failed at view 57 (recorded by the block
/// of view 58).
fn chain_with_a_failure() -> Vec<bftcd_proto::bftcd::Block> {
    let mut parent = [3u8; 32];
    let mut view = 0;
    (1..=60u64)
        .map(|height| {
            let parent_view = view;
            view += if parent_view == 56 { 2 } else { 1 };
            let failed = if view == 58 { domain().bitmap([2]) } else { Vec::new() };
            let b = bftcd_proto::bftcd::Block {
                height,
                epoch: 1,
                view,
                parent_hash: parent.to_vec(),
                proposer: if view == 58 { 3 } else { (view % N as u64) as u32 },
                justify: Some(bftcd_proto::bftcd::QuorumCert { epoch: 1, view: parent_view, block_hash: parent.to_vec(), ..Default::default() }),
                failed_leaders: failed,
                ..Default::default()
            };
            parent = crate::block::block_hash(&b);
            b
        })
        .collect()
}

#[test]
fn after_a_restart_the_leader_comes_from_the_ledger_as_before() {
    let chain = chain_with_a_failure();
    let tip = chain.last().unwrap().clone();
    let qc = bftcd_proto::bftcd::QuorumCert { epoch: 1, view: tip.view, block_hash: crate::block::block_hash(&tip).to_vec(), ..Default::default() };
    let restarted = |history: &[bftcd_proto::bftcd::Block]| {
        let cfg = Config::new(0, domain(), [3; 32]);
        let safety = SafetyRules::new(SafetyState { last_voted_view: tip.view, locked_view: tip.view - 1 });
        let mut c = Core::new(cfg, Box::new(SimCrypto { me: 0, n: N }), safety, 1, Some((tip.clone(), qc.clone())), vec![], vec![]);
        c.set_committed_history(history);
        c
    };
    let entries: Vec<super::leader::Entry> = chain
        .iter()
        .map(|b| super::leader::Entry { view: b.view, proposer: b.proposer as usize, failed: domain().signers(&b.failed_leaders).unwrap_or_default() })
        .collect();
    let expected = super::leader::leaders_after(N, &entries, tip.view, false);
    // Validator 2 failed 4 views ago: still a suspect, its turn (view 62 = 2 mod 4) goes to another.
    assert_eq!(tip.view, 61);
    assert_eq!(expected, [3, 0]);
    let c = restarted(&chain);
    assert_eq!([c.leader(tip.view + 1), c.leader(tip.view + 2)], expected);
    // Without the ledger's history it would name validator 2: the history is what agrees.
    let forgetful = restarted(&[]);
    assert_eq!(forgetful.leader(tip.view + 1), 2);
}

// ---- peer-fed state stays bounded (issue 11) --------------------------------------------------

use bftcd_proto::bftcd::{Block, CommittedBlock, Proposal, QuorumCert, SyncRequest, SyncResponse, Timeout, Vote};

const GENESIS: [u8; 32] = [3; 32];

fn genesis_qc() -> QuorumCert {
    domain().genesis_qc(&GENESIS)
}

/// A QC for (view, block, justify view) signed by a quorum with the simulator's keys.
fn certified(view: u64, hash: &[u8], justify_view: u64) -> QuorumCert {
    let mut qc = QuorumCert { epoch: 1, view, block_hash: hash.to_vec(), justify_view, ..Default::default() };
    let mut m = PeerMessage { kind: Some(Kind::ReadIndexReply(bftcd_proto::bftcd::ReadIndexReply { high_qc: Some(qc), ..Default::default() })) };
    crate::fuzzing::resign(&mut m, &domain());
    let Some(Kind::ReadIndexReply(r)) = m.kind else { unreachable!() };
    qc = r.high_qc.unwrap();
    qc
}

/// A block of view 1 on the genesis, as its leader (validator 1) would propose it.
fn first_block(timestamp_ms: u64) -> Block {
    Block {
        height: 1,
        epoch: 1,
        view: 1,
        parent_hash: GENESIS.to_vec(),
        timestamp_ms,
        proposer: 1,
        justify: Some(genesis_qc()),
        ..Default::default()
    }
}

fn vote_msg(from: usize, view: u64, signature: Vec<u8>) -> PeerMessage {
    PeerMessage {
        kind: Some(Kind::Vote(Vote { epoch: 1, view, block_hash: vec![1; 32], justify_view: view - 1, signer: from as u32, signature, proposal_signature: vec![] })),
    }
}

fn timeout_msg(from: usize, view: u64) -> PeerMessage {
    let signature = SimCrypto { me: from, n: N }.sign(&domain().timeout_bytes(view, 0));
    PeerMessage {
        kind: Some(Kind::Timeout(Timeout { epoch: 1, view, high_qc: Some(genesis_qc()), signer: from as u32, signature, high_tc: None })),
    }
}

fn sync_msg(committed: Vec<CommittedBlock>, uncommitted: Vec<Block>) -> PeerMessage {
    PeerMessage { kind: Some(Kind::SyncResponse(SyncResponse { committed, uncommitted })) }
}

/// Most a peer can park per kind: one for each view from two before the current one to
/// `VIEWS_AHEAD` after it.
const PARKED_PER_PEER: usize = super::VIEWS_AHEAD as usize + 3;

#[test]
fn a_peer_flooding_votes_parks_one_per_view_near_this_one_and_no_oversized_signature() {
    let mut replica = core(0);
    let d = domain();
    for view in 1..=100_000u64 {
        let mut signature = SimCrypto { me: 2, n: N }.sign(&d.vote_bytes(view, &[1; 32], view - 1));
        if view % 2 == 0 {
            signature.resize(4096, 0);
        }
        replica.handle(NOW, Input::Message { from: 2, msg: vote_msg(2, view, signature) }, &NoLog);
    }
    let parked: Vec<usize> = replica.votes.values().flat_map(|e| e.values()).map(|(sig, _)| sig.len()).collect();
    assert!(parked.len() <= PARKED_PER_PEER, "{} votes parked", parked.len());
    assert!(parked.iter().all(|len| *len == 16), "a vote with an oversized signature was kept: {parked:?}");
    let out = replica.handle(NOW, Input::Message { from: 2, msg: vote_msg(2, 3, vec![0; 4096]) }, &NoLog);
    assert!(refused(&out, "vote with a malformed signature"), "{out:?}");
}

#[test]
fn a_peer_flooding_timeouts_for_views_ahead_parks_one_per_view_near_this_one() {
    let mut replica = core(0);
    for view in 1..=100_000u64 {
        replica.handle(NOW, Input::Message { from: 2, msg: timeout_msg(2, view) }, &NoLog);
    }
    let parked: usize = replica.timeouts.values().map(|e| e.len()).sum();
    assert!(parked <= PARKED_PER_PEER, "{parked} timeouts parked");
    let out = replica.handle(NOW, Input::Message { from: 2, msg: timeout_msg(2, 200_000) }, &NoLog);
    assert!(refused(&out, "timeout too far ahead"), "{out:?}");
}

#[test]
fn a_replayed_timeout_is_checked_once() {
    let verifies = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let crypto = Counting { inner: SimCrypto { me: 0, n: N }, aggregates: Default::default(), verifies: verifies.clone() };
    let cfg = Config::new(0, domain(), GENESIS);
    let mut replica = Core::new(cfg, Box::new(crypto), SafetyRules::new(SafetyState::default()), 1, None, vec![], vec![]);
    let checks = || verifies.load(std::sync::atomic::Ordering::Relaxed);
    // Recorded for the view this validator is in.
    for _ in 0..1000 {
        replica.handle(NOW, Input::Message { from: 2, msg: timeout_msg(2, 1) }, &NoLog);
    }
    assert_eq!(checks(), 1);
    assert_eq!(replica.timeouts[&1].len(), 1);
    // Not recorded (too far ahead), but verified once: the same message again costs no check.
    for _ in 0..1000 {
        replica.handle(NOW, Input::Message { from: 2, msg: timeout_msg(2, 10_000) }, &NoLog);
    }
    assert_eq!(checks(), 2);
}

#[test]
fn a_leaders_extra_proposals_for_one_view_are_not_kept() {
    let mut replica = core(0);
    let mut votes = 0;
    for i in 0..50 {
        let p = signed(Proposal { block: Some(first_block(NOW - i)), tc: None, signature: vec![] }, 1);
        let out = replica.handle(NOW, Input::Message { from: 1, msg: PeerMessage { kind: Some(Kind::Proposal(p)) } }, &NoLog);
        votes += voted(&out) as usize;
        assert!(i < 2 || refused(&out, "third proposal in one view"), "{out:?}");
    }
    assert_eq!(votes, 1);
    assert_eq!(replica.blocks.len(), 3, "the genesis and the first two proposals only");
    // The first two blocks come again (resends): nothing new.
    let p = signed(Proposal { block: Some(first_block(NOW - 1)), tc: None, signature: vec![] }, 1);
    let out = replica.handle(NOW, Input::Message { from: 1, msg: PeerMessage { kind: Some(Kind::Proposal(p)) } }, &NoLog);
    assert!(!out.iter().any(|o| matches!(o, Output::Rejected { .. })), "{out:?}");
}

#[test]
fn sync_answers_are_read_only_when_asked_for_and_only_along_the_chain_asked_for() {
    let mut replica = core(0);
    let out = replica.handle(NOW, Input::Tick, &NoLog);
    assert!(out.iter().any(|o| matches!(o, Output::Send { to: 1, msg: PeerMessage { kind: Some(Kind::SyncRequest(_)) } })), "{out:?}");
    // One hundred blocks, each certified by its parent's QC, from a peer that was not asked.
    let siblings: Vec<Block> = (0..100).map(|i| first_block(NOW - i)).collect();
    let out = replica.handle(NOW, Input::Message { from: 2, msg: sync_msg(vec![], siblings.clone()) }, &NoLog);
    assert!(refused(&out, "sync answer to no request"), "{out:?}");
    // The asked peer answering a plain request with blocks nobody asked for.
    let out = replica.handle(NOW, Input::Message { from: 1, msg: sync_msg(vec![], siblings) }, &NoLog);
    assert!(refused(&out, "sync answer to no request"), "{out:?}");
    // And with more blocks than any answer holds.
    replica.handle(NOW + 100_000, Input::Tick, &NoLog);
    let many: Vec<Block> = (0..1000).map(|i| first_block(NOW - i)).collect();
    let out = replica.handle(NOW + 100_000, Input::Message { from: 1, msg: sync_msg(vec![], many) }, &NoLog);
    assert!(refused(&out, "sync answer too long"), "{out:?}");
    assert_eq!(replica.blocks.len(), 1, "only the genesis");
}

#[test]
fn a_synced_block_claiming_a_height_its_parent_does_not_lead_to_is_not_kept() {
    // Validator 2 proposes on a block B it made up with height u64::MAX (certified, as a
    // Byzantine quorum could in a test), so this validator asks it for B.
    let mut replica = core(0);
    let mut b = first_block(NOW);
    b.height = u64::MAX;
    let b_hash = crate::block::block_hash(&b);
    let child = Block {
        height: 5,
        epoch: 1,
        view: 2,
        parent_hash: b_hash.to_vec(),
        timestamp_ms: NOW,
        proposer: 2,
        justify: Some(certified(1, &b_hash, 0)),
        ..Default::default()
    };
    let p = PeerMessage { kind: Some(Kind::Proposal(signed(Proposal { block: Some(child), tc: None, signature: vec![] }, 2))) };
    let out = replica.handle(NOW, Input::Message { from: 2, msg: p }, &NoLog);
    let asked = |m: &PeerMessage| matches!(&m.kind, Some(Kind::SyncRequest(SyncRequest { want_block, .. })) if *want_block == b_hash.to_vec());
    assert!(out.iter().any(|o| matches!(o, Output::Send { to: 2, msg } if asked(msg))), "{out:?}");
    let out = replica.handle(NOW, Input::Message { from: 2, msg: sync_msg(vec![], vec![b]) }, &NoLog);
    assert!(refused(&out, "sync block does not follow its parent"), "{out:?}");
    assert!(!replica.blocks.contains_key(&b_hash));
}

/// One message of every kind, as honest validators send them (a write committed, a timeout,
/// a sync answer, a read-index round), to start from.
fn every_kind_of_message() -> Vec<PeerMessage> {
    let mut c = Cluster::new();
    c.run(3, Input::Submit(vec![Operation { id: Some(OperationId { bank: 3, nonce: 1 }), request: Some(put(b"k", b"v")), ..Default::default() }]));
    let mut out: Vec<Output> = c.outputs.iter().flatten().cloned().collect();
    let op = Operation { id: Some(OperationId { bank: 0, nonce: 2 }), request: Some(put(b"k", b"w")), ..Default::default() };
    out.extend(c.cores[0].handle(NOW + 10, Input::Submit(vec![op]), &NoLog));
    out.extend(c.cores[0].handle(NOW + 100_000, Input::Tick, &NoLog));
    out.extend(c.cores[0].handle(NOW + 100_000, Input::ReadIndex, &NoLog));
    let ask = PeerMessage { kind: Some(Kind::ReadIndexRequest(bftcd_proto::bftcd::ReadIndexRequest { round: 1 })) };
    out.extend(c.cores[1].handle(NOW + 100_000, Input::Message { from: 0, msg: ask }, &NoLog));
    let mut msgs: Vec<PeerMessage> = out
        .into_iter()
        .filter_map(|o| match o {
            Output::Send { msg, .. } | Output::Broadcast(msg) => Some(msg),
            _ => None,
        })
        .collect();
    let b1 = first_block(NOW);
    let h1 = crate::block::block_hash(&b1);
    let b2 = Block { height: 2, epoch: 1, view: 2, parent_hash: h1.to_vec(), timestamp_ms: NOW + 1, proposer: 2, justify: Some(certified(1, &h1, 0)), ..Default::default() };
    let h2 = crate::block::block_hash(&b2);
    let b3 = Block { height: 3, epoch: 1, view: 3, parent_hash: h2.to_vec(), timestamp_ms: NOW + 2, proposer: 3, justify: Some(certified(2, &h2, 1)), ..Default::default() };
    let proof = CommittedBlock { block: Some(b1), commit_qc: Some(certified(2, &h2, 1)), commit_child: Some(crate::block::header(&b2)) };
    msgs.push(sync_msg(vec![proof], vec![b2, b3]));
    msgs.push(PeerMessage { kind: Some(Kind::SyncRequest(SyncRequest { committed_height: 0, want_block: h1.to_vec() })) });
    for kind in ["proposal", "vote", "timeout", "submit", "sync request", "sync response", "read index request", "read index reply"] {
        let name = |m: &PeerMessage| match &m.kind {
            Some(Kind::Proposal(_)) => "proposal",
            Some(Kind::Vote(_)) => "vote",
            Some(Kind::Timeout(_)) => "timeout",
            Some(Kind::Evidence(_)) => "evidence",
            Some(Kind::Submit(_)) => "submit",
            Some(Kind::SyncRequest(_)) => "sync request",
            Some(Kind::SyncResponse(_)) => "sync response",
            Some(Kind::ReadIndexRequest(_)) => "read index request",
            Some(Kind::ReadIndexReply(_)) => "read index reply",
            Some(Kind::Checkpoint(_)) => "checkpoint",
            None => "",
        };
        assert!(msgs.iter().any(|m| name(m) == kind), "no {kind} to start from");
    }
    msgs
}

#[test]
fn extreme_numbers_in_any_field_of_any_peer_message_are_dropped_not_a_panic() {
    let d = domain();
    let mut variants = Vec::new();
    for m in every_kind_of_message() {
        for value in [u64::MAX, u64::MAX - 1, u64::from(u32::MAX)] {
            for bytes in crate::fuzzing::numeric_variants(&m.encode_to_vec(), value) {
                let Ok(mut msg) = PeerMessage::decode(bytes.as_slice()) else { continue };
                variants.push(msg.clone());
                crate::fuzzing::resign(&mut msg, &d);
                variants.push(msg);
            }
        }
    }
    assert!(variants.len() > 1000, "{} variants", variants.len());
    // A core that has just started (and asked validator 1 for what it missed) for each one, and
    // one core that takes them all in turn.
    let mut long_lived = core(0);
    long_lived.handle(NOW, Input::ReadIndex, &NoLog);
    for msg in &variants {
        let mut fresh = core(0);
        fresh.handle(NOW, Input::ReadIndex, &NoLog);
        for from in 1..N {
            let mut msg = msg.clone();
            if let Some(Kind::ReadIndexReply(r)) = msg.kind.as_mut() {
                r.round = fresh.read_round();
            }
            fresh.handle(NOW, Input::Message { from, msg: msg.clone() }, &NoLog);
            long_lived.handle(NOW, Input::Message { from, msg }, &NoLog);
        }
        fresh.handle(NOW + 100_000, Input::Tick, &NoLog);
    }
    long_lived.handle(NOW + 100_000, Input::Tick, &NoLog);
}

// ---- operation content, mempool shares, fairness (issue 11) --------------------------------

fn core_with(me: usize, limits: crate::validity::Limits, mempool_ops: usize) -> Core {
    let mut cfg = Config::new(me, domain(), [3; 32]).with_limits(limits);
    cfg.mempool_max_operations = mempool_ops;
    Core::new(cfg, Box::new(SimCrypto { me, n: N }), SafetyRules::new(SafetyState::default()), 1, None, vec![], vec![])
}

fn small_limits() -> crate::validity::Limits {
    crate::validity::Limits { max_request_bytes: 1000, ..Default::default() }
}

/// Operations `bank` signed as one batch, nonces from `first`.
fn signed_ops(bank: usize, first: u64, count: u64, key: &[u8], value: &[u8]) -> Vec<Operation> {
    let mut ops: Vec<Operation> = (first..first + count)
        .map(|nonce| Operation {
            id: Some(OperationId { bank: bank as u32, nonce }),
            request: Some(put(key, value)),
            submitted_ms: NOW,
            ..Default::default()
        })
        .collect();
    domain().sign_batch(&mut ops, |b| SimCrypto { me: bank, n: N }.sign_operation(b));
    ops
}

fn forward(ops: Vec<Operation>) -> PeerMessage {
    PeerMessage { kind: Some(Kind::Submit(Submit { operations: ops })) }
}

fn rejected_for(out: &[Output], from: usize, why: &str) -> bool {
    out.iter().any(|o| matches!(o, Output::Rejected { from: f, reason } if *f == from && reason.contains(why)))
}

#[test]
fn a_forwarded_operation_breaking_the_chains_rules_never_enters_the_mempool() {
    let mut replica = core_with(0, small_limits(), 65_536);
    // Validly signed by its bank, but above the chain's request limit ...
    let out = replica.handle(NOW, Input::Message { from: 3, msg: forward(signed_ops(3, 1, 1, b"k", &[0; 2000])) }, &NoLog);
    assert!(rejected_for(&out, 3, "size limit"), "{out:?}");
    // ... or writing the reserved prefix.
    let out = replica.handle(NOW, Input::Message { from: 3, msg: forward(signed_ops(3, 2, 1, b"\x00bftcd/applied", b"x")) }, &NoLog);
    assert!(rejected_for(&out, 3, "reserved prefix"), "{out:?}");
    assert_eq!(replica.mempool_len(), 0);
    // A valid one from the same message's bank still gets in.
    replica.handle(NOW, Input::Message { from: 3, msg: forward(signed_ops(3, 3, 1, b"k", b"v")) }, &NoLog);
    assert_eq!(replica.mempool_len(), 1);
}

#[test]
fn a_block_carrying_an_operation_that_breaks_the_rules_gets_no_vote() {
    // The leader runs with larger limits (a Byzantine or misconfigured bank) ...
    let big = signed_ops(3, 1, 1, b"k", &[0; 2000]).remove(0);
    let p = proposal_carrying(&big);
    // ... the replica checks the operation against the chain's: refused, no vote.
    let mut replica = core_with(0, small_limits(), 65_536);
    let out = replica.handle(NOW, Input::Message { from: 1, msg: p }, &NoLog);
    assert!(!voted(&out), "{out:?}");
    assert!(rejected_for(&out, 1, "invalid"), "{out:?}");
}

#[test]
fn a_flooding_bank_is_held_to_its_share_of_the_mempool() {
    // 40 in all: 10 per bank.
    let mut replica = core_with(0, Default::default(), 40);
    let out = replica.handle(NOW, Input::Message { from: 3, msg: forward(signed_ops(3, 1, 25, b"k", b"v")) }, &NoLog);
    assert!(rejected_for(&out, 3, "mempool share"), "{out:?}");
    assert_eq!(replica.mempool_len(), 10);
    // The other banks' shares are untouched.
    replica.handle(NOW, Input::Message { from: 2, msg: forward(signed_ops(2, 1, 3, b"k", b"v")) }, &NoLog);
    assert_eq!(replica.mempool_len(), 13);
}

#[test]
fn own_writes_beyond_the_share_or_the_rules_are_refused_to_their_clients() {
    let mut me = core_with(0, small_limits(), 8);
    let ops: Vec<Operation> = (1..=4u64)
        .map(|nonce| Operation { id: Some(OperationId { bank: 0, nonce }), request: Some(put(b"k", b"v")), ..Default::default() })
        .chain(std::iter::once(Operation {
            id: Some(OperationId { bank: 0, nonce: 9 }),
            request: Some(put(b"k", &[0; 2000])),
            ..Default::default()
        }))
        .collect();
    let out = me.handle(NOW, Input::Submit(ops), &NoLog);
    let refused: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Refused { id, why } => Some((*id, *why)),
            _ => None,
        })
        .collect();
    use super::Refusal;
    use crate::validity::Invalid;
    assert_eq!(refused, vec![((0, 3), Refusal::Busy), ((0, 4), Refusal::Busy), ((0, 9), Refusal::Invalid(Invalid::TooLarge))]);
    // Only what was accepted is forwarded.
    let forwarded = out.iter().find_map(|o| match o {
        Output::Broadcast(PeerMessage { kind: Some(Kind::Submit(s)) }) => Some(s.operations.len()),
        _ => None,
    });
    assert_eq!(forwarded, Some(2));
}

// ---- deduplication across restarts (issue 11) ------------------------------------------------

#[test]
fn a_restart_remembers_the_whole_acceptance_window_by_block_time_not_a_block_count() {
    let cfg = Config::new(0, domain(), GENESIS);
    let window = cfg.dedup_window_ms();
    assert_eq!(window, cfg.operation_ttl_ms + 4 * cfg.skew_ms);
    // 3,000 blocks 50 ms apart (150 s), one operation each: the window holds 2,561 of them,
    // far more than the 1,024 blocks remembered before.
    let tip_ms = 1_000_000;
    let block = |h: u64| Block {
        height: h,
        timestamp_ms: tip_ms - (3000 - h) * 50,
        operations: vec![Operation { id: Some(OperationId { bank: 2, nonce: h }), ..Default::default() }],
        ..Default::default()
    };
    let mut reads = 0;
    let ids = super::committed_in_window(&cfg, 3000, |h| {
        reads += 1;
        Ok::<_, ()>(block(h))
    })
    .unwrap();
    // Every block with time >= tip - window, oldest first; the walk stops at the first one out.
    assert_eq!(ids.len(), 2561);
    assert_eq!(ids[0], (tip_ms - window, (2, 440)));
    assert_eq!(ids.last(), Some(&(tip_ms, (2, 3000))));
    assert!(ids.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(reads, 2562);
    assert!(cfg.remembers(tip_ms - window, tip_ms) && !cfg.remembers(tip_ms - window - 1, tip_ms));
    // A short chain is read to the genesis; a read error is passed on.
    assert_eq!(super::committed_in_window(&cfg, 3, |h| Ok::<_, ()>(block(h))).unwrap().len(), 3);
    assert_eq!(super::committed_in_window(&cfg, 3000, |h| if h < 2000 { Err("torn") } else { Ok(block(h)) }), Err("torn"));
}

#[test]
fn after_a_restart_a_block_repeating_a_remembered_operation_gets_no_vote() {
    let op = signed_op(3, b"v");
    let restarted = |recent| {
        let cfg = Config::new(0, domain(), [3; 32]);
        Core::new(cfg, Box::new(SimCrypto { me: 0, n: N }), SafetyRules::new(SafetyState::default()), 1, None, vec![], recent)
    };
    // Committed before the restart and read back from the ledger: neither proposed again nor
    // forwarded again into the mempool.
    let mut replica = restarted(vec![(1, (3, 1))]);
    let out = replica.handle(NOW, Input::Message { from: 1, msg: proposal_carrying(&op) }, &NoLog);
    assert!(!voted(&out), "{out:?}");
    assert!(rejected_for(&out, 1, "repeats an operation committed before"), "{out:?}");
    replica.handle(NOW, Input::Message { from: 3, msg: submit(&op) }, &NoLog);
    assert_eq!(replica.mempool_len(), 0);
    // Not remembered: the same block is voted for.
    let mut replica = restarted(vec![]);
    assert!(voted(&replica.handle(NOW, Input::Message { from: 1, msg: proposal_carrying(&op) }, &NoLog)));
}

// ---- evidence ([`crate::evidence`]) ----------------------------------------------------------

fn evidence_of(out: &[Output]) -> Vec<bftcd_proto::bftcd::Evidence> {
    out.iter().filter_map(|o| if let Output::Evidence(e) = o { Some(e.clone()) } else { None }).collect()
}

fn proposal_msg(b: Block, from: usize) -> PeerMessage {
    PeerMessage { kind: Some(Kind::Proposal(signed(Proposal { block: Some(b), tc: None, signature: vec![] }, from))) }
}

/// Validator `signer`'s vote for `b` (justify view 0), passing on `proposal_signature`.
fn vote_for(b: &Block, signer: usize, proposal_signature: Vec<u8>) -> PeerMessage {
    let hash = crate::block::block_hash(b);
    let signature = SimCrypto { me: signer, n: N }.sign(&domain().vote_bytes(b.view, &hash, 0));
    PeerMessage {
        kind: Some(Kind::Vote(Vote { epoch: 1, view: b.view, block_hash: hash.to_vec(), justify_view: 0, signer: signer as u32, signature, proposal_signature })),
    }
}

fn proposal_signature(b: &Block, signer: usize) -> Vec<u8> {
    SimCrypto { me: signer, n: N }.sign_operation(&domain().proposal_bytes(b.view, &crate::block::block_hash(b)))
}

fn evidence_msg(e: bftcd_proto::bftcd::Evidence) -> PeerMessage {
    PeerMessage { kind: Some(Kind::Evidence(e)) }
}

/// A real double proposal by validator 1 in view 1.
fn real_double_proposal() -> bftcd_proto::bftcd::Evidence {
    let (a, b) = (first_block(NOW - 1), first_block(NOW - 2));
    let (ha, hb) = (crate::block::block_hash(&a), crate::block::block_hash(&b));
    crate::evidence::double_proposal(&domain(), 1, 1, (&ha, &proposal_signature(&a, 1)), (&hb, &proposal_signature(&b, 1)))
}

#[test]
fn a_proposal_signed_by_another_than_its_proposer_is_refused() {
    let mut replica = core(0);
    let mut p = signed(Proposal { block: Some(first_block(NOW - 1)), tc: None, signature: vec![] }, 2);
    let out = replica.handle(NOW, Input::Message { from: 1, msg: PeerMessage { kind: Some(Kind::Proposal(p.clone())) } }, &NoLog);
    assert!(refused(&out, "proposal with a bad signature") && !voted(&out), "{out:?}");
    p.signature.clear();
    let out = replica.handle(NOW, Input::Message { from: 1, msg: PeerMessage { kind: Some(Kind::Proposal(p)) } }, &NoLog);
    assert!(refused(&out, "proposal with a bad signature") && !voted(&out), "{out:?}");
}

#[test]
fn two_signed_proposals_for_one_view_become_evidence_sent_to_every_bank() {
    let mut replica = core(0);
    let out = replica.handle(NOW, Input::Message { from: 1, msg: proposal_msg(first_block(NOW - 1), 1) }, &NoLog);
    assert!(voted(&out) && evidence_of(&out).is_empty(), "{out:?}");
    let out = replica.handle(NOW, Input::Message { from: 1, msg: proposal_msg(first_block(NOW - 2), 1) }, &NoLog);
    let ev = evidence_of(&out);
    assert_eq!(ev, vec![real_double_proposal()], "the same bytes whichever block came first");
    assert!(out.iter().any(|o| matches!(o, Output::Broadcast(PeerMessage { kind: Some(Kind::Evidence(_)) }))), "{out:?}");
    assert!(!voted(&out), "one vote per view");
    let out = replica.handle(NOW, Input::Message { from: 1, msg: proposal_msg(first_block(NOW - 3), 1) }, &NoLog);
    assert!(evidence_of(&out).is_empty(), "one piece of evidence per equivocation: {out:?}");
}

#[test]
fn a_vote_for_another_block_of_the_view_proves_a_split_equivocation() {
    // The leader showed this bank `a` and validator 2 `b`: 2's vote for `b` carries the
    // leader's signature of `b`.
    let (a, b) = (first_block(NOW - 1), first_block(NOW - 2));
    let mut replica = core(0);
    replica.handle(NOW, Input::Message { from: 1, msg: proposal_msg(a.clone(), 1) }, &NoLog);
    let out = replica.handle(NOW, Input::Message { from: 2, msg: vote_for(&b, 2, proposal_signature(&b, 1)) }, &NoLog);
    assert_eq!(evidence_of(&out), vec![real_double_proposal()], "{out:?}");
    // A voter passing on a signature the leader never made (its own) proves nothing.
    let c = first_block(NOW - 3);
    let mut replica = core(0);
    replica.handle(NOW, Input::Message { from: 1, msg: proposal_msg(a, 1) }, &NoLog);
    let out = replica.handle(NOW, Input::Message { from: 3, msg: vote_for(&c, 3, proposal_signature(&c, 3)) }, &NoLog);
    assert!(evidence_of(&out).is_empty(), "{out:?}");
}

#[test]
fn evidence_from_a_peer_is_checked_kept_once_and_forged_evidence_is_dropped() {
    let mut replica = core(0);
    let (a, b) = (first_block(NOW - 1), first_block(NOW - 2));
    let (ha, hb) = (crate::block::block_hash(&a), crate::block::block_hash(&b));
    // Validator 3 signs two proposals itself and names validator 1.
    let forged = crate::evidence::double_proposal(&domain(), 1, 1, (&ha, &proposal_signature(&a, 3)), (&hb, &proposal_signature(&b, 3)));
    let out = replica.handle(NOW, Input::Message { from: 3, msg: evidence_msg(forged) }, &NoLog);
    assert!(evidence_of(&out).is_empty() && out.iter().any(|o| matches!(o, Output::Rejected { from: 3, .. })), "{out:?}");
    let out = replica.handle(NOW, Input::Message { from: 2, msg: evidence_msg(real_double_proposal()) }, &NoLog);
    assert_eq!(evidence_of(&out), vec![real_double_proposal()]);
    for from in [2, 3] {
        let out = replica.handle(NOW, Input::Message { from, msg: evidence_msg(real_double_proposal()) }, &NoLog);
        assert!(evidence_of(&out).is_empty() && !out.iter().any(|o| matches!(o, Output::Rejected { .. })), "{out:?}");
    }
}

#[test]
fn a_block_carrying_forged_evidence_gets_no_vote() {
    let (a, b) = (first_block(NOW - 1), first_block(NOW - 2));
    let (ha, hb) = (crate::block::block_hash(&a), crate::block::block_hash(&b));
    // Validator 1's two signatures, named as validator 2's.
    let forged = crate::evidence::double_proposal(&domain(), 2, 1, (&ha, &proposal_signature(&a, 1)), (&hb, &proposal_signature(&b, 1)));
    let mut block = first_block(NOW - 5);
    block.evidence = vec![forged];
    let mut replica = core(0);
    let out = replica.handle(NOW, Input::Message { from: 1, msg: proposal_msg(block.clone(), 1) }, &NoLog);
    let why = |r: &str| r.contains("does not verify");
    assert!(!voted(&out) && out.iter().any(|o| matches!(o, Output::Rejected { from: 1, reason } if why(reason))), "{out:?}");
    // Real evidence twice in one block: refused; once: voted for, and kept.
    block.evidence = vec![real_double_proposal(), real_double_proposal()];
    let mut replica = core(0);
    let out = replica.handle(NOW, Input::Message { from: 1, msg: proposal_msg(block.clone(), 1) }, &NoLog);
    assert!(!voted(&out), "{out:?}");
    block.evidence.pop();
    let mut replica = core(0);
    let out = replica.handle(NOW, Input::Message { from: 1, msg: proposal_msg(block, 1) }, &NoLog);
    assert!(voted(&out), "{out:?}");
    assert_eq!(evidence_of(&out), vec![real_double_proposal()], "kept by every bank that sees it in a block");
}

#[test]
fn pending_evidence_is_committed_once_and_the_chain_then_goes_quiet() {
    let mut c = Cluster::new();
    c.run(2, Input::Message { from: 3, msg: evidence_msg(real_double_proposal()) });
    for me in 0..N {
        c.run(me, Input::Tick);
    }
    for me in 0..N {
        let committed: Vec<Block> = c.outputs[me]
            .iter()
            .filter_map(|o| if let Output::Commit(cb) = o { cb.block.clone() } else { None })
            .collect();
        let evidence: usize = committed.iter().map(|b| b.evidence.len()).sum();
        assert_eq!(evidence, 1, "validator {me}: {committed:?}");
        assert_eq!(c.count(me, |o| matches!(o, Output::Evidence(_))), 1, "validator {me} keeps it once");
    }
    let proposals: usize =
        (0..N).map(|me| c.count(me, |o| matches!(o, Output::Broadcast(PeerMessage { kind: Some(Kind::Proposal(_)) })))).sum();
    assert_eq!(proposals, 2, "the evidence's block and its certifying child, then nothing");
}

#[test]
fn a_leader_sends_its_proposal_only_after_asking_to_persist_its_vote_for_it() {
    let op = signed_op(3, b"v");
    let mut leader = core(1);
    let mut out = leader.handle(NOW, Input::Message { from: 3, msg: submit(&op) }, &NoLog);
    out.extend(leader.handle(NOW, Input::Tick, &NoLog));
    let persist = out.iter().position(|o| matches!(o, Output::Persist(_))).expect("persists its vote");
    let proposal = out
        .iter()
        .position(|o| matches!(o, Output::Broadcast(PeerMessage { kind: Some(Kind::Proposal(_)) })))
        .expect("proposes");
    assert!(persist < proposal, "{out:?}");
}

#[test]
fn after_voting_in_the_view_before_a_leader_proposes_at_once_and_never_again_after_a_restart() {
    let op = signed_op(3, b"v");
    let PeerMessage { kind: Some(Kind::Proposal(p1)) } = proposal_carrying(&op) else { unreachable!() };
    let b1 = p1.block.clone().unwrap();
    let leader2 = core(0).leader(2);
    let run = |replica: &mut Core| {
        replica.handle(NOW, Input::Message { from: 3, msg: submit(&op) }, &NoLog);
        replica.handle(NOW, Input::Message { from: 1, msg: PeerMessage { kind: Some(Kind::Proposal(p1.clone())) } }, &NoLog);
        let mut out = Vec::new();
        for v in (0..N).filter(|v| *v != leader2) {
            out.extend(replica.handle(NOW, Input::Message { from: v, msg: vote_for(&b1, v, p1.signature.clone()) }, &NoLog));
        }
        out
    };
    let is_proposal = |o: &Output| matches!(o, Output::Broadcast(PeerMessage { kind: Some(Kind::Proposal(_)) }));
    let mut replica = core(leader2);
    let out = run(&mut replica);
    let proposal = out.iter().position(is_proposal).unwrap_or_else(|| panic!("the leader of view 2 ({leader2}) proposes: view {} {out:?}", replica.view()));
    let persist = out.iter().position(|o| matches!(o, Output::Persist(_))).expect("and votes for its block");
    assert!(proposal < persist, "its vote in view 1 is on disk: the proposal need not wait: {out:?}");
    // Crashed after that proposal left, before its vote in view 2 was on disk: back with the
    // state of view 1, it must not sign another block for view 2.
    let cfg = Config::new(leader2, domain(), GENESIS);
    let state = SafetyState { last_voted_view: 1, locked_view: 0 };
    let mut restarted = Core::new(cfg, Box::new(SimCrypto { me: leader2, n: N }), SafetyRules::new(state), 1, None, vec![b1.clone()], vec![]);
    let out = run(&mut restarted);
    assert!(restarted.view() >= 2 && !out.iter().any(is_proposal), "{out:?}");
}

#[test]
fn a_peer_flooding_messages_of_a_later_epoch_gets_one_sync_request_per_two_timeouts_and_nothing_kept() {
    // Messages naming a later epoch make a bank ask their sender for a sync (the reconfiguration
    // catch-up); a Byzantine peer sending them at message speed must not make it ask at that
    // speed, nor park anything.
    let mut replica = core(0);
    let timeout = Config::new(0, domain(), [3; 32]).base_timeout_ms;
    let later = |view: u64| {
        let mut m = vote_msg(2, view, vec![7; 16]);
        if let Some(Kind::Vote(v)) = &mut m.kind {
            v.epoch = 2;
        }
        m
    };
    let mut asks = 0;
    for i in 0..10_000u64 {
        let now = NOW + i / 10; // 1,000 ms of messages, ten per millisecond
        let out = replica.handle(now, Input::Message { from: 2, msg: later(1 + i % 50) }, &NoLog);
        asks += out
            .iter()
            .filter(|o| matches!(o, Output::Send { msg: PeerMessage { kind: Some(Kind::SyncRequest(_)) }, .. }))
            .count();
        assert!(!voted(&out), "voted on a later epoch's message: {out:?}");
    }
    let most = 1 + 1_000 / (2 * timeout as usize);
    assert!(asks >= 1 && asks <= most, "{asks} sync requests in 1 s (at most {most} expected)");
    assert!(replica.votes.values().all(|e| e.is_empty()), "a later epoch's vote was parked");
}
