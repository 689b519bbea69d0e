//! Single-core checks of rules the simulator cannot aim at directly (it runs honest leaders).

use bftcd_proto::bftcd::{operation::Request, peer_message::Kind, Operation, OperationId, PeerMessage, Submit};
use bftcd_proto::etcdserverpb::PutRequest;

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
        bank_signature: Vec::new(),
    };
    op.bank_signature = SimCrypto { me: bank, n: N }.sign_operation(&domain().operation_bytes(&op));
    op
}

fn submit(op: &Operation) -> PeerMessage {
    PeerMessage { kind: Some(Kind::Submit(Submit { operations: vec![op.clone()] })) }
}

fn voted(out: &[Output]) -> bool {
    out.iter().any(|o| matches!(o, Output::Send { msg: PeerMessage { kind: Some(Kind::Vote(_)) }, .. }))
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
    let out = replica.handle(NOW, Input::Message { from: 1, msg: p }, &NoLog);
    assert!(!voted(&out), "voted for a forged operation: {out:?}");
    assert!(
        out.iter().any(|o| matches!(o, Output::Rejected { from: 1, reason } if reason.contains("invalid"))),
        "{out:?}"
    );
}

#[test]
fn a_bad_signature_in_a_forwarded_batch_drops_only_what_fails() {
    let mut ops: Vec<Operation> = (0..5u64)
        .map(|i| {
            let mut op = signed_op(3, format!("v{i}").as_bytes());
            op.id = Some(OperationId { bank: 3, nonce: 10 + i });
            op.bank_signature = SimCrypto { me: 3, n: N }.sign_operation(&domain().operation_bytes(&op));
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
