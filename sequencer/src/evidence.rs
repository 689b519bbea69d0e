//! Evidence of equivocation: a validator's two signatures over conflicting messages for one view.
//!
//! An honest validator proposes at most one block per view (a proposal leaves only once a vote or
//! timeout of its in that view or the one before is on disk, and after a restart it proposes in
//! neither: not even a crash makes it propose twice) and votes at most once per view
//! ([`crate::consensus::SafetyRules`]). So two signed proposals, or two votes, of one
//! validator for one view prove that it is Byzantine, to anyone holding the genesis keys: the
//! [`Evidence`] is self-contained. Banks keep it, send it to each other, and commit it into the
//! ledger (`Block.evidence`); `bftcd-verify evidence` checks it offline.
//!
//! Nothing here can incriminate an honest validator: both halves must verify under the offender's
//! own key, and an honest key never signs the second half.

use std::collections::{BTreeMap, VecDeque};

use bftcd_proto::bftcd::{evidence::Kind, DoubleProposal, DoubleVote, Evidence};

use crate::consensus::{Crypto, Domain};

/// Evidence a block may carry at most: each costs its voters up to two signature checks.
pub const MAX_PER_BLOCK: usize = 8;
/// Evidence waiting for a block at most; beyond, the oldest is dropped (it is kept on disk).
const PENDING_MAX: usize = 64;
/// Evidence remembered as known (checked or committed), so it is checked and proposed once.
const KNOWN_MAX: usize = 4096;

/// What identifies one equivocation: offender, view, kind (0 proposal, 1 vote).
pub type EvidenceKey = (u32, u64, u8);

pub fn key(ev: &Evidence) -> EvidenceKey {
    let kind = match ev.kind {
        Some(Kind::DoubleVote(_)) => 1,
        _ => 0,
    };
    (ev.offender, ev.view, kind)
}

/// A double proposal, halves in canonical order (smaller block hash first).
pub fn double_proposal(domain: &Domain, offender: usize, view: u64, a: (&[u8], &[u8]), b: (&[u8], &[u8])) -> Evidence {
    let ((ha, sa), (hb, sb)) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    Evidence {
        epoch: domain.epoch,
        offender: offender as u32,
        view,
        kind: Some(Kind::DoubleProposal(DoubleProposal {
            block_hash_a: ha.to_vec(),
            signature_a: sa.to_vec(),
            block_hash_b: hb.to_vec(),
            signature_b: sb.to_vec(),
        })),
    }
}

/// A double vote: each half (block hash, justify view, signature), in canonical order.
pub fn double_vote(domain: &Domain, offender: usize, view: u64, a: (&[u8], u64, &[u8]), b: (&[u8], u64, &[u8])) -> Evidence {
    let (a, b) = if (a.0, a.1) <= (b.0, b.1) { (a, b) } else { (b, a) };
    Evidence {
        epoch: domain.epoch,
        offender: offender as u32,
        view,
        kind: Some(Kind::DoubleVote(DoubleVote {
            block_hash_a: a.0.to_vec(),
            justify_view_a: a.1,
            signature_a: a.2.to_vec(),
            block_hash_b: b.0.to_vec(),
            justify_view_b: b.1,
            signature_b: b.2.to_vec(),
        })),
    }
}

/// Checks evidence against the chain's keys: both halves signed by the offender, for the same
/// view, and different. `Err` names what is wrong.
pub fn check(domain: &Domain, crypto: &dyn Crypto, ev: &Evidence) -> Result<(), &'static str> {
    if ev.epoch != domain.epoch {
        return Err("evidence of another epoch");
    }
    let offender = ev.offender as usize;
    if offender >= domain.n {
        return Err("evidence names no validator");
    }
    if ev.view == 0 {
        return Err("evidence for view 0");
    }
    match &ev.kind {
        Some(Kind::DoubleProposal(d)) => {
            if d.block_hash_a.len() != 32 || d.block_hash_b.len() != 32 || d.block_hash_a >= d.block_hash_b {
                return Err("double proposal: hashes malformed, equal or out of order");
            }
            let a = crypto.verify_operation(offender, &domain.proposal_bytes(ev.view, &d.block_hash_a), &d.signature_a);
            let b = a && crypto.verify_operation(offender, &domain.proposal_bytes(ev.view, &d.block_hash_b), &d.signature_b);
            if !b {
                return Err("double proposal: a signature does not verify under the offender's key");
            }
        }
        Some(Kind::DoubleVote(d)) => {
            let (a, b) = ((&d.block_hash_a, d.justify_view_a), (&d.block_hash_b, d.justify_view_b));
            if d.block_hash_a.len() != 32 || d.block_hash_b.len() != 32 || a >= b {
                return Err("double vote: hashes malformed, equal or out of order");
            }
            if d.justify_view_a >= ev.view || d.justify_view_b >= ev.view {
                return Err("double vote: justify view not below the view");
            }
            let len = crypto.signature_len();
            if d.signature_a.len() != len || d.signature_b.len() != len {
                return Err("double vote: malformed signature");
            }
            let ok = crypto.verify(offender, &domain.vote_bytes(ev.view, &d.block_hash_a, d.justify_view_a), &d.signature_a)
                && crypto.verify(offender, &domain.vote_bytes(ev.view, &d.block_hash_b, d.justify_view_b), &d.signature_b);
            if !ok {
                return Err("double vote: a signature does not verify under the offender's key");
            }
        }
        None => return Err("evidence of no kind"),
    }
    Ok(())
}

/// What a validator knows of evidence: what waits to be committed, and what it checked or saw
/// committed (by [`key`], with the checked bytes, so an exact repeat costs no check).
#[derive(Default)]
pub struct Pool {
    pending: VecDeque<Evidence>,
    known: BTreeMap<EvidenceKey, Evidence>,
    order: VecDeque<EvidenceKey>,
}

impl Pool {
    /// Was this exact evidence checked (or committed) here before?
    pub fn checked(&self, ev: &Evidence) -> bool {
        self.known.get(&key(ev)).is_some_and(|k| k == ev)
    }

    /// Whether the equivocation is known here, in whatever form.
    pub fn knows(&self, k: &EvidenceKey) -> bool {
        self.known.contains_key(k)
    }

    fn remember(&mut self, ev: &Evidence) -> bool {
        let k = key(ev);
        if self.known.contains_key(&k) {
            return false;
        }
        self.known.insert(k, ev.clone());
        self.order.push_back(k);
        while self.order.len() > KNOWN_MAX {
            if let Some(old) = self.order.pop_front() {
                self.known.remove(&old);
            }
        }
        true
    }

    /// Checked evidence found or received: true when it is new (then it waits for a block).
    pub fn add(&mut self, ev: Evidence) -> bool {
        if !self.remember(&ev) {
            return false;
        }
        self.pending.push_back(ev);
        while self.pending.len() > PENDING_MAX {
            self.pending.pop_front();
        }
        true
    }

    /// Evidence checked as part of a block: known from now on (true when new here), not pending.
    pub fn seen_in_block(&mut self, ev: &Evidence) -> bool {
        self.remember(ev)
    }

    /// Committed: never proposed again.
    pub fn committed(&mut self, ev: &Evidence) {
        let k = key(ev);
        self.pending.retain(|p| key(p) != k);
        self.remember(ev);
    }

    /// Up to [`MAX_PER_BLOCK`] pending, leaving out those for which `in_chain` is true (already in
    /// a block on the chain being extended).
    pub fn for_block(&self, in_chain: impl Fn(&EvidenceKey) -> bool) -> Vec<Evidence> {
        self.pending.iter().filter(|e| !in_chain(&key(e))).take(MAX_PER_BLOCK).cloned().collect()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::certs::sim::SimCrypto;

    fn domain() -> Domain {
        Domain { chain_id: "t".into(), epoch: 1, n: 4 }
    }

    fn proposal(signer: usize, view: u64, hash: &[u8]) -> Vec<u8> {
        SimCrypto { me: signer, n: 4 }.sign_operation(&domain().proposal_bytes(view, hash))
    }

    fn vote(signer: usize, view: u64, hash: &[u8], justify: u64) -> Vec<u8> {
        SimCrypto { me: signer, n: 4 }.sign(&domain().vote_bytes(view, hash, justify))
    }

    #[test]
    fn real_double_proposals_and_votes_verify_and_are_canonical() {
        let d = domain();
        let c = SimCrypto { me: 0, n: 4 };
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let e1 = double_proposal(&d, 2, 7, (&b, &proposal(2, 7, &b)), (&a, &proposal(2, 7, &a)));
        let e2 = double_proposal(&d, 2, 7, (&a, &proposal(2, 7, &a)), (&b, &proposal(2, 7, &b)));
        assert_eq!(e1, e2, "the same equivocation found two ways gives the same bytes");
        assert_eq!(check(&d, &c, &e1), Ok(()));
        let v = double_vote(&d, 3, 9, (&b, 8, &vote(3, 9, &b, 8)), (&a, 8, &vote(3, 9, &a, 8)));
        assert_eq!(check(&d, &c, &v), Ok(()));
        assert_ne!(key(&e1), key(&v));
    }

    #[test]
    fn evidence_against_an_honest_validator_cannot_be_made() {
        let d = domain();
        let c = SimCrypto { me: 0, n: 4 };
        let (a, b) = ([1u8; 32], [2u8; 32]);
        // Validator 1 signed only `a`; the forger signs `b` itself and names 1.
        let forged = double_proposal(&d, 1, 7, (&a, &proposal(1, 7, &a)), (&b, &proposal(0, 7, &b)));
        assert!(check(&d, &c, &forged).is_err());
        // The same signature twice, or the same block twice.
        let same = double_proposal(&d, 1, 7, (&a, &proposal(1, 7, &a)), (&a, &proposal(1, 7, &a)));
        assert!(check(&d, &c, &same).is_err());
        // One proposal of view 7 and one of view 8: no conflict, and the view 8 one fails.
        let views = double_proposal(&d, 1, 7, (&a, &proposal(1, 7, &a)), (&b, &proposal(1, 8, &b)));
        assert!(check(&d, &c, &views).is_err());
        // Votes: one real, the other with the proposal key or another view.
        let v = double_vote(&d, 1, 9, (&a, 8, &vote(1, 9, &a, 8)), (&b, 8, &vote(1, 10, &b, 8)));
        assert!(check(&d, &c, &v).is_err());
        // Another epoch, a validator out of range, no kind.
        let mut e = double_proposal(&d, 1, 7, (&a, &proposal(1, 7, &a)), (&b, &proposal(1, 7, &b)));
        assert_eq!(check(&d, &c, &e), Ok(()));
        e.epoch = 2;
        assert!(check(&d, &c, &e).is_err());
        e.epoch = 1;
        e.offender = 9;
        assert!(check(&d, &c, &e).is_err());
        e.offender = 1;
        e.kind = None;
        assert!(check(&d, &c, &e).is_err());
    }

    #[test]
    fn the_pool_proposes_each_equivocation_until_committed_and_stays_bounded() {
        let d = domain();
        let mut pool = Pool::default();
        let ev = |view: u64| double_proposal(&d, 1, view, (&[1u8; 32], &[0u8; 16]), (&[2u8; 32], &[0u8; 16]));
        assert!(pool.add(ev(1)));
        assert!(!pool.add(ev(1)), "known already");
        assert!(pool.checked(&ev(1)));
        assert_eq!(pool.for_block(|_| false).len(), 1);
        assert!(pool.for_block(|k| *k == key(&ev(1))).is_empty(), "already in the chain");
        pool.committed(&ev(1));
        assert!(pool.for_block(|_| false).is_empty());
        for v in 2..200 {
            pool.add(ev(v));
        }
        assert_eq!(pool.pending_len(), PENDING_MAX);
        assert_eq!(pool.for_block(|_| false).len(), MAX_PER_BLOCK);
    }
}
