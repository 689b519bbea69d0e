//! Test-only misbehaviour (cargo feature `byzantine`, never in release builds): a bank that
//! runs honest code but tampers with what it sends, so process-level tests can show that the
//! honest banks stay safe and live.

use bftcd_proto::bftcd::{peer_message::Kind, PeerMessage};

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
}

/// `equivocate`, `bad-signatures`, `censor=<index>`, `panic-after=<steps>`; comma-separated.
pub fn parse(s: &str) -> Result<Vec<Misbehaviour>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.trim() {
            "equivocate" => Ok(Misbehaviour::Equivocate),
            "bad-signatures" => Ok(Misbehaviour::BadSignatures),
            other => {
                if let Some(i) = other.strip_prefix("censor=").and_then(|i| i.parse().ok()) {
                    Ok(Misbehaviour::Censor(i))
                } else if let Some(n) = other.strip_prefix("panic-after=").and_then(|n| n.parse().ok()) {
                    Ok(Misbehaviour::PanicAfter(n))
                } else {
                    Err(format!("unknown misbehaviour {other:?} (equivocate, bad-signatures, censor=<index>, panic-after=<steps>)"))
                }
            }
        })
        .collect()
}

fn spoil(sig: &mut [u8]) {
    if let Some(b) = sig.first_mut() {
        *b ^= 0x01;
    }
}

pub fn tamper(me: usize, n: usize, modes: &[Misbehaviour], outputs: Vec<Output>) -> Vec<Output> {
    let mut out = Vec::with_capacity(outputs.len());
    for o in outputs {
        match o {
            Output::Broadcast(PeerMessage { kind: Some(Kind::Proposal(mut p)) }) => {
                for m in modes {
                    if let (Misbehaviour::Censor(bank), Some(b)) = (m, p.block.as_mut()) {
                        b.operations.retain(|op| op_id(op).is_none_or(|id| id.0 != *bank));
                    }
                }
                if modes.contains(&Misbehaviour::Equivocate) {
                    let mut other = p.clone();
                    if let Some(b) = other.block.as_mut() {
                        b.timestamp_ms += 1;
                        b.operations.reverse();
                    }
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
