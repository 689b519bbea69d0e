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
    /// As leader, never send its proposals (it still votes for others' blocks): every view it
    /// leads fails.
    Withhold,
    /// Never send votes (it still proposes when leader): the others need every one of their
    /// own votes for a quorum.
    NoVotes,
}

/// `equivocate`, `bad-signatures`, `censor=<index>`, `panic-after=<steps>`, `withhold`,
/// `no-votes`; comma-separated.
pub fn parse(s: &str) -> Result<Vec<Misbehaviour>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.trim() {
            "equivocate" => Ok(Misbehaviour::Equivocate),
            "bad-signatures" => Ok(Misbehaviour::BadSignatures),
            "withhold" => Ok(Misbehaviour::Withhold),
            "no-votes" => Ok(Misbehaviour::NoVotes),
            other => {
                if let Some(i) = other.strip_prefix("censor=").and_then(|i| i.parse().ok()) {
                    Ok(Misbehaviour::Censor(i))
                } else if let Some(n) = other.strip_prefix("panic-after=").and_then(|n| n.parse().ok()) {
                    Ok(Misbehaviour::PanicAfter(n))
                } else {
                    Err(format!("unknown misbehaviour {other:?} (equivocate, bad-signatures, censor=<index>, panic-after=<steps>, withhold, no-votes)"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_misbehaviour() {
        assert_eq!(
            parse("equivocate,bad-signatures,censor=2,panic-after=7,withhold,no-votes").unwrap(),
            vec![
                Misbehaviour::Equivocate,
                Misbehaviour::BadSignatures,
                Misbehaviour::Censor(2),
                Misbehaviour::PanicAfter(7),
                Misbehaviour::Withhold,
                Misbehaviour::NoVotes,
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
        assert_eq!(kinds(&tamper(0, 4, &[Misbehaviour::Withhold], sample())), ["vote", "vote", "timeout"]);
    }

    #[test]
    fn no_votes_drops_only_votes() {
        assert_eq!(kinds(&tamper(0, 4, &[Misbehaviour::NoVotes], sample())), ["proposal", "timeout"]);
    }
}
