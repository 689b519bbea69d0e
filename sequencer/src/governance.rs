//! The chain's rules and how they change: only by a change every bank approves.
//!
//! The rules (today the key owners; the membership issue adds the validator set) start as the
//! genesis has them. A bank's operator approves a change through its own sidecar, which orders
//! the approval as an operation signed by that bank. Once every bank has approved the same
//! change for the same rules version, it takes effect at that operation's position, on every
//! bank alike: the rules are a fold over the committed operations, which every bank and any
//! auditor computes identically from the genesis and the ledger.
//!
//! Each bank has one approval pending at a time (a new one replaces it), so a Byzantine bank
//! can neither grow this state nor, alone, change anything.

use std::collections::BTreeMap;

use bftcd_proto::bftcd::{operation::Request as Op, ChainChange, Genesis, KeyOwner, Operation};
use bftcd_proto::Message;
use sha2::{Digest, Sha256};

use crate::auth::{AuthError, AuthStore};
use crate::ownership::Owners;

/// What an approval did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Approval {
    /// For an earlier (or later) rules version than the one in effect: no effect.
    Stale { rules_version: u64 },
    /// Counted; `approvals` of `needed` banks approve this change.
    Pending { rules_version: u64, approvals: u32, needed: u32 },
    /// The last approval needed: the change is in effect from here, as `rules_version`.
    Enacted { rules_version: u64 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChainRules {
    version: u64,
    owners: Owners,
    /// The genesis with the rules in effect written into it (the form [`Owners::of`] checks).
    rules: Genesis,
    /// Each bank's pending approval for the current version: its change and that change's hash.
    pending: BTreeMap<u32, ([u8; 32], ChainChange)>,
    /// etcd's auth state (users, roles, permissions), changed by clients' auth calls.
    auth: AuthStore,
}

/// What an operation did to the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A bank's approval of a change of the chain's rules.
    Approval(Approval),
    /// A client's auth call: done, or refused with etcd's error.
    Auth(Result<(), AuthError>),
}

/// Why every bank refuses an operation at apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It writes keys of this bank, not the submitter.
    KeyOwner(u32),
    /// The client it was submitted for lacks the permission (etcd's auth).
    Auth(AuthError),
}

fn hash(change: &ChainChange) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"bftcd.chain-change.v1\0");
    h.update(change.encode_to_vec());
    h.finalize().into()
}

impl ChainRules {
    /// The genesis's rules (checked when the genesis is made and when a bank starts).
    pub fn of(genesis: &Genesis) -> Result<ChainRules, String> {
        let owners = Owners::of(genesis)?;
        let rules = Genesis { validators: genesis.validators.clone(), key_owners: genesis.key_owners.clone(), ..Default::default() };
        Ok(ChainRules { version: 0, owners, rules, pending: BTreeMap::new(), auth: AuthStore::default() })
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn owners(&self) -> &Owners {
        &self.owners
    }

    pub fn auth(&self) -> &AuthStore {
        &self.auth
    }

    /// Whether every bank refuses `op` when it applies it, and why. Key writes only: the key
    /// owners first, then etcd's permissions of the client its bank named.
    pub fn refuses(&self, op: &Operation) -> Option<Refusal> {
        if let Some(owner) = self.owners.refuses(op) {
            return Some(Refusal::KeyOwner(owner));
        }
        if !self.auth.enabled() {
            return None;
        }
        let user = op.client.as_ref().map(|c| c.user.as_str()).filter(|u| !u.is_empty());
        let checked = match op.request.as_ref()? {
            Op::Put(p) => self.auth.check_range(user, &p.key, b"", true).and_then(|_| match p.prev_kv {
                true => self.auth.check_range(user, &p.key, b"", false),
                false => Ok(()),
            }),
            Op::DeleteRange(d) => self.auth.check_range(user, &d.key, &d.range_end, true).and_then(|_| match d.prev_kv {
                true => self.auth.check_range(user, &d.key, &d.range_end, false),
                false => Ok(()),
            }),
            Op::Txn(t) => self.auth.check_txn(user, t),
            _ => Ok(()),
        };
        checked.err().map(Refusal::Auth)
    }

    pub fn key_owners(&self) -> &[KeyOwner] {
        &self.rules.key_owners
    }

    /// Each bank's pending approval for the current version.
    pub fn pending(&self) -> impl Iterator<Item = (u32, &ChainChange)> {
        self.pending.iter().map(|(b, (_, c))| (*b, c))
    }

    /// Is `change` one the rules could become? Checked before an approval is ordered and by
    /// every bank before it enters a block, so that an enacted change is always valid.
    pub fn check_change(genesis: &Genesis, change: &ChainChange) -> Result<(), String> {
        let Some(k) = &change.key_owners else { return Err("a change without a kind".into()) };
        let g = Genesis { validators: genesis.validators.clone(), key_owners: k.owners.clone(), ..Default::default() };
        Owners::of(&g).map(|_| ())
    }

    /// The next operation in commit order: an approval changes the rules or counts towards a
    /// change, a client's auth call changes the auth state; anything else leaves them alone
    /// (None).
    pub fn step(&mut self, op: &Operation) -> Option<Effect> {
        match &op.request {
            Some(Op::Governance(change)) => self.approve(op, change).map(Effect::Approval),
            Some(Op::Auth(change)) => {
                let user = op.client.as_ref().map(|c| c.user.as_str()).filter(|u| !u.is_empty());
                Some(Effect::Auth(self.auth.step(change, user)))
            }
            _ => None,
        }
    }

    fn approve(&mut self, op: &Operation, change: &ChainChange) -> Option<Approval> {
        let bank = op.id.as_ref()?.bank;
        if change.rules_version != self.version || Self::check_change(&self.rules, change).is_err() {
            return Some(Approval::Stale { rules_version: self.version });
        }
        let h = hash(change);
        self.pending.insert(bank, (h, change.clone()));
        let approvals = self.pending.values().filter(|(p, _)| *p == h).count() as u32;
        let needed = self.rules.validators.len() as u32;
        if approvals < needed {
            return Some(Approval::Pending { rules_version: self.version, approvals, needed });
        }
        if let Some(k) = &change.key_owners {
            self.rules.key_owners = k.owners.clone();
        }
        self.owners = Owners::of(&self.rules).expect("checked above");
        self.version += 1;
        self.pending.clear();
        Some(Approval::Enacted { rules_version: self.version })
    }

    /// The rules after every operation of the committed blocks `blocks`, from the genesis.
    pub fn replay<'a>(genesis: &Genesis, ops: impl IntoIterator<Item = &'a Operation>) -> Result<ChainRules, String> {
        let mut rules = Self::of(genesis)?;
        for op in ops {
            rules.step(op);
        }
        Ok(rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftcd_proto::bftcd::{KeyOwnersChange, OperationId, Validator};
    use bftcd_proto::etcdserverpb::PutRequest;

    fn genesis() -> Genesis {
        Genesis {
            validators: vec![Validator::default(); 4],
            key_owners: vec![KeyOwner { prefix: b"/a/".to_vec(), bank: 0 }],
            ..Default::default()
        }
    }

    fn approve(bank: u32, version: u64, owners: &[(&[u8], u32)]) -> Operation {
        let owners = owners.iter().map(|(p, b)| KeyOwner { prefix: p.to_vec(), bank: *b }).collect();
        let change = ChainChange { rules_version: version, key_owners: Some(KeyOwnersChange { owners }) };
        Operation { id: Some(OperationId { bank, nonce: 1 }), request: Some(Op::Governance(change)), ..Default::default() }
    }

    fn put(bank: u32, key: &[u8]) -> Operation {
        let p = PutRequest { key: key.to_vec(), ..Default::default() };
        Operation { id: Some(OperationId { bank, nonce: 2 }), request: Some(Op::Put(p)), ..Default::default() }
    }

    #[test]
    fn a_change_takes_effect_when_every_bank_approves_it() {
        let mut r = ChainRules::of(&genesis()).unwrap();
        let to_b: &[(&[u8], u32)] = &[(b"/a/", 1)];
        assert_eq!(r.owners().refuses(&put(1, b"/a/x")), Some(0));
        for bank in 0..3 {
            assert_eq!(r.step(&approve(bank, 0, to_b)), Some(Effect::Approval(Approval::Pending { rules_version: 0, approvals: bank + 1, needed: 4 })));
            assert_eq!(r.owners().refuses(&put(1, b"/a/x")), Some(0), "three of four change nothing");
        }
        assert_eq!(r.step(&approve(3, 0, to_b)), Some(Effect::Approval(Approval::Enacted { rules_version: 1 })));
        assert_eq!(r.owners().refuses(&put(1, b"/a/x")), None);
        assert_eq!(r.owners().refuses(&put(0, b"/a/x")), Some(1));
        assert_eq!(r.pending().count(), 0);
        // The same approvals again are for version 0: stale.
        assert_eq!(r.step(&approve(0, 0, to_b)), Some(Effect::Approval(Approval::Stale { rules_version: 1 })));
        assert_eq!(r.step(&put(0, b"/z")), None);
    }

    #[test]
    fn one_bank_cannot_change_the_rules_or_grow_the_state() {
        let mut r = ChainRules::of(&genesis()).unwrap();
        // A Byzantine bank approving many changes keeps one pending approval.
        for i in 0..100u32 {
            let prefix = format!("/mine{i}/");
            r.step(&approve(3, 0, &[(prefix.as_bytes(), 3)]));
        }
        assert_eq!(r.pending().count(), 1);
        // Others approving a different change do not count towards its.
        for bank in 0..3 {
            r.step(&approve(bank, 0, &[(b"/shared/", 0)]));
        }
        assert_eq!(r.version(), 0);
        // A bank changing its mind replaces its approval; then all four agree.
        assert_eq!(r.step(&approve(3, 0, &[(b"/shared/", 0)])), Some(Effect::Approval(Approval::Enacted { rules_version: 1 })));
        assert_eq!(r.key_owners(), [KeyOwner { prefix: b"/shared/".to_vec(), bank: 0 }]);
    }

    #[test]
    fn invalid_changes_count_for_nothing_and_replay_matches() {
        let mut r = ChainRules::of(&genesis()).unwrap();
        assert_eq!(r.step(&approve(0, 0, &[(b"/a/", 9)])), Some(Effect::Approval(Approval::Stale { rules_version: 0 })));
        assert_eq!(r.step(&approve(0, 0, &[(b"/a/", 0), (b"/a/b", 1)])), Some(Effect::Approval(Approval::Stale { rules_version: 0 })));
        assert!(ChainRules::check_change(&genesis(), &ChainChange::default()).is_err());
        let ops: Vec<Operation> = (0..4).map(|b| approve(b, 0, &[])).collect();
        let replayed = ChainRules::replay(&genesis(), &ops).unwrap();
        assert_eq!(replayed.version(), 1);
        assert!(replayed.owners().is_empty());
        for op in &ops {
            r.step(op);
        }
        assert_eq!(r, replayed);
    }
}
