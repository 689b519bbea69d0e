//! Leases as replicated state.
//!
//! A stock etcd expires a lease when its own clock says so; four etcds would each decide at a
//! different moment, and a key could vanish on one bank while another still serves it. Here a
//! lease's TTL and deadline live in this table, a pure function of the ledger: a grant or a
//! keepalive sets `deadline = block time + TTL`, and a lease ends only by a revoke or by a
//! committed [`LeaseExpire`](bftcd_proto::bftcd::LeaseExpire) whose block time is past the
//! deadline. The local etcd holds each lease under the same ID with a TTL it never reaches
//! ([`LOCAL_TTL`]), so it attaches and deletes keys but never decides anything by itself.
//!
//! The table lives in memory and is rebuilt at start by replaying the ledger up to the applied
//! position; every bank therefore holds the same table after the same operations.

use std::collections::{BTreeMap, BTreeSet};

use bftcd_proto::bftcd::{operation::Request as Op, Genesis, Operation};
use bftcd_sequencer::ownership::Owners;
use bftcd_sequencer::Position;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::errors;

/// etcd's upper bound for a lease TTL in seconds.
pub const MAX_TTL: i64 = 9_000_000_000;

/// The smallest TTL a lease gets, as a stock etcd with its default election timeout (1 s)
/// rounds up: 1.5 election timeouts, in whole seconds.
pub const MIN_TTL: i64 = 2;

/// The TTL the local etcd's copy of a lease is granted with: about 95 years, so it cannot expire
/// on its own, and far enough below etcd's limit that etcd's own renewals cannot overflow it.
pub const LOCAL_TTL: i64 = 3_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The TTL in seconds the lease was granted with (after rounding up to [`MIN_TTL`]).
    pub granted_ttl: i64,
    /// Block time (ms) from which a `LeaseExpire` ends it.
    pub deadline_ms: u64,
    /// The bank that submitted the grant: with key ownership, only it may revoke the lease.
    pub grantor: u32,
}

#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
    /// The same leases by (deadline, id): due leases and the soonest-first listing come from
    /// here in O(log n + k), never from a scan of every lease.
    by_deadline: BTreeSet<(u64, i64)>,
}

fn deadline(block_ms: u64, ttl: i64) -> u64 {
    block_ms.saturating_add((ttl.max(0) as u64).saturating_mul(1000))
}

impl LeaseTable {
    /// Grants `id` (never 0: the caller has picked one) for `ttl` seconds at `block_ms`.
    /// Returns the TTL the client is told, or etcd's error.
    pub fn grant(&mut self, id: i64, ttl: i64, block_ms: u64) -> Result<i64, Status> {
        if ttl > MAX_TTL {
            return Err(errors::lease_ttl_too_large());
        }
        if self.leases.contains_key(&id) {
            return Err(errors::lease_exists());
        }
        let ttl = ttl.max(MIN_TTL);
        let deadline_ms = deadline(block_ms, ttl);
        self.leases.insert(id, Lease { granted_ttl: ttl, deadline_ms, grantor: u32::MAX });
        self.by_deadline.insert((deadline_ms, id));
        Ok(ttl)
    }

    /// The leases a chain starts with (a genesis made from an etcd snapshot): each with its
    /// full TTL from the genesis time, granted by no bank.
    pub fn initial(genesis: &Genesis) -> Result<LeaseTable, String> {
        let mut t = LeaseTable::default();
        let mut last = None;
        for l in &genesis.initial_leases {
            if l.id == 0 || last.is_some_and(|p| p >= l.id) {
                return Err(format!("initial lease {:016x}: the IDs must be non-zero and in ascending order", l.id));
            }
            if !(1..=MAX_TTL).contains(&l.ttl) {
                return Err(format!("initial lease {:016x}: TTL {} out of range (1 to {MAX_TTL} s)", l.id, l.ttl));
            }
            last = Some(l.id);
            let deadline_ms = deadline(genesis.genesis_time_ms, l.ttl);
            t.leases.insert(l.id, Lease { granted_ttl: l.ttl, deadline_ms, grantor: u32::MAX });
            t.by_deadline.insert((deadline_ms, l.id));
        }
        Ok(t)
    }

    /// Ends `id`; false when there is no such lease.
    pub fn revoke(&mut self, id: i64) -> bool {
        match self.leases.remove(&id) {
            Some(l) => {
                self.by_deadline.remove(&(l.deadline_ms, id));
                true
            }
            None => false,
        }
    }

    /// Renews `id` from `block_ms`; its TTL, or None when there is no such lease.
    pub fn keep_alive(&mut self, id: i64, block_ms: u64) -> Option<i64> {
        let lease = self.leases.get_mut(&id)?;
        let old = lease.deadline_ms;
        lease.deadline_ms = old.max(deadline(block_ms, lease.granted_ttl));
        if lease.deadline_ms != old {
            self.by_deadline.remove(&(old, id));
            self.by_deadline.insert((lease.deadline_ms, id));
        }
        Some(lease.granted_ttl)
    }

    /// Ends `id` if its deadline is not after `block_ms`; true when it did.
    pub fn expire(&mut self, id: i64, block_ms: u64) -> bool {
        match self.leases.get(&id) {
            Some(l) if l.deadline_ms <= block_ms => self.revoke(id),
            _ => false,
        }
    }

    pub fn get(&self, id: i64) -> Option<Lease> {
        self.leases.get(&id).copied()
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// SHA-256 over every lease (ID, TTL, deadline, grantor) in ID order, for the state digest.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"bftcd leases v1\0");
        for (id, l) in &self.leases {
            h.update(id.to_be_bytes());
            h.update(l.granted_ttl.to_be_bytes());
            h.update(l.deadline_ms.to_be_bytes());
            h.update(l.grantor.to_be_bytes());
        }
        h.finalize().into()
    }

    /// Every lease ID, soonest deadline first (etcd lists leases by expiry).
    pub fn ids(&self) -> Vec<i64> {
        self.by_deadline.iter().map(|(_, id)| *id).collect()
    }

    /// At most `limit` leases whose deadline is not after `now_ms`, soonest first, with their
    /// deadlines.
    pub fn due(&self, now_ms: u64, limit: usize) -> Vec<(i64, u64)> {
        self.by_deadline.iter().take_while(|(d, _)| *d <= now_ms).take(limit).map(|(d, id)| (*id, *d)).collect()
    }
}

/// What a lease operation does to the table, decided once from the table alone; the local
/// etcd is then brought in line (and a replay after a crash decides the same again).
#[derive(Debug)]
pub enum LeaseDecision {
    Grant { id: i64, result: Result<i64, Status> },
    Revoke { id: i64, found: bool },
    /// A revocation by a bank other than the grantor of a lease whose grantor owns keys
    /// (docs/operations.md, "Key ownership"): refused, the table unchanged.
    RevokeRefused { owner: u32 },
    KeepAlive { id: i64, ttl: Option<i64> },
    Expire { id: i64, expired: bool },
}

/// Applies `op` (committed at `pos`, in a block with time `block_ms`) to the table; None for
/// operations that are not about leases.
///
/// With key ownership, a lease granted through a bank that owns keys may be revoked only through
/// that bank: revoking deletes the lease's keys, which may be the owner's. (A bank that attaches
/// its keys to another bank's lease has handed that bank their lifetime anyway: the grantor can
/// let the lease expire.) Decided from the table alone, so a replay decides the same.
pub fn step(
    chain_id: &str,
    table: &mut LeaseTable,
    op: &Operation,
    pos: Position,
    block_ms: u64,
    owners: &Owners,
) -> Option<LeaseDecision> {
    let bank = op.id.as_ref().map_or(u32::MAX, |i| i.bank);
    Some(match op.request.as_ref()? {
        Op::LeaseGrant(g) => {
            let id = if g.id == 0 { pick_id(chain_id, pos, table) } else { g.id };
            let result = table.grant(id, g.ttl, block_ms);
            if let (Ok(_), Some(l)) = (&result, table.leases.get_mut(&id)) {
                l.grantor = bank;
            }
            LeaseDecision::Grant { id, result }
        }
        Op::LeaseRevoke(r) => match table.get(r.id) {
            Some(l) if l.grantor != bank && owners.owns_any(l.grantor) => LeaseDecision::RevokeRefused { owner: l.grantor },
            _ => LeaseDecision::Revoke { id: r.id, found: table.revoke(r.id) },
        },
        Op::LeaseKeepAlive(k) => LeaseDecision::KeepAlive { id: k.id, ttl: table.keep_alive(k.id, block_ms) },
        Op::LeaseExpire(e) => LeaseDecision::Expire { id: e.id, expired: table.expire(e.id, block_ms) },
        _ => return None,
    })
}

/// The ID for a grant that asked for 0: a function of the chain and the position only, so every
/// bank picks the same one. Positive and never 0 (etcd's "pick one for me"); on the rare clash
/// with a live lease the hash is taken again.
fn pick_id(chain_id: &str, pos: Position, table: &LeaseTable) -> i64 {
    let mut round = 0u32;
    loop {
        let mut h = Sha256::new();
        h.update(b"bftcd.lease\0");
        h.update(chain_id.as_bytes());
        h.update([0u8]);
        h.update(pos.to_bytes());
        if round > 0 {
            h.update(round.to_be_bytes());
        }
        let d = h.finalize();
        let id = ((u64::from_be_bytes(d[..8].try_into().unwrap()) >> 1) as i64).max(1);
        if !table.contains(id) {
            return id;
        }
        round += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_grantor_revokes_a_lease_of_a_bank_that_owns_keys() {
        use bftcd_proto::bftcd::{KeyOwner, OperationId, Validator};
        use bftcd_proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
        let g = Genesis {
            validators: vec![Validator::default(); 4],
            key_owners: vec![KeyOwner { prefix: b"/a/".to_vec(), bank: 0 }],
            ..Default::default()
        };
        let owners = Owners::of(&g).unwrap();
        let op = |bank, request| Operation { id: Some(OperationId { bank, nonce: 1 }), request: Some(request), ..Default::default() };
        let pos = Position { height: 1, index: 0 };
        let mut t = LeaseTable::default();
        for (bank, id) in [(0, 10), (1, 11)] {
            step("c", &mut t, &op(bank, Op::LeaseGrant(LeaseGrantRequest { ttl: 60, id })), pos, 0, &owners);
        }
        let revoke = |t: &mut LeaseTable, bank, id| step("c", t, &op(bank, Op::LeaseRevoke(LeaseRevokeRequest { id })), pos, 0, &owners);
        assert!(matches!(revoke(&mut t, 1, 10), Some(LeaseDecision::RevokeRefused { owner: 0 })));
        assert!(t.contains(10), "a refused revocation leaves the lease");
        assert!(matches!(revoke(&mut t, 0, 11), Some(LeaseDecision::Revoke { found: true, .. })), "bank 2 owns no keys");
        assert!(matches!(revoke(&mut t, 0, 10), Some(LeaseDecision::Revoke { found: true, .. })));
        // Without rules anyone revokes anything, as in etcd.
        step("c", &mut t, &op(0, Op::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 12 })), pos, 0, &owners);
        assert!(matches!(step("c", &mut t, &op(3, Op::LeaseRevoke(LeaseRevokeRequest { id: 12 })), pos, 0, &Owners::default()),
            Some(LeaseDecision::Revoke { found: true, .. })));
    }

    #[test]
    fn grant_rounds_up_and_refuses_duplicates_and_huge_ttls() {
        let mut t = LeaseTable::default();
        assert_eq!(t.grant(7, 1, 1000).unwrap(), MIN_TTL);
        assert_eq!(t.get(7).unwrap().deadline_ms, 1000 + 2000);
        assert_eq!(t.grant(7, 10, 2000).unwrap_err().message(), errors::lease_exists().message());
        assert_eq!(t.grant(8, MAX_TTL + 1, 0).unwrap_err().message(), errors::lease_ttl_too_large().message());
        assert_eq!(t.grant(9, MAX_TTL, u64::MAX - 5).unwrap(), MAX_TTL);
        assert_eq!(t.get(9).unwrap().deadline_ms, u64::MAX);
    }

    #[test]
    fn expiry_needs_the_block_time_past_the_deadline() {
        let mut t = LeaseTable::default();
        t.grant(1, 5, 10_000).unwrap();
        assert!(!t.expire(1, 14_999), "a block before the deadline cannot expire the lease");
        assert!(t.contains(1));
        assert_eq!(t.keep_alive(1, 14_000), Some(5));
        assert!(!t.expire(1, 15_000), "the keepalive moved the deadline");
        assert_eq!(t.due(18_999, 10), vec![]);
        assert_eq!(t.due(19_000, 10), vec![(1, 19_000)]);
        assert!(t.expire(1, 19_000));
        assert!(!t.contains(1));
        assert_eq!(t.keep_alive(1, 19_001), None);
        assert!(!t.revoke(1));
    }

    #[test]
    fn the_deadline_index_follows_every_change() {
        let mut t = LeaseTable::default();
        for id in 1..=5 {
            t.grant(id, 10, 1000 * (6 - id) as u64).unwrap();
        }
        // Deadlines 15 s (id 1) down to 11 s (id 5): soonest first, bounded.
        assert_eq!(t.ids(), vec![5, 4, 3, 2, 1]);
        assert_eq!(t.due(13_000, 10), vec![(5, 11_000), (4, 12_000), (3, 13_000)]);
        assert_eq!(t.due(13_000, 2), vec![(5, 11_000), (4, 12_000)]);
        t.keep_alive(5, 8_000);
        assert!(t.revoke(4));
        assert!(t.expire(3, 13_000));
        assert_eq!(t.due(18_000, 10), vec![(2, 14_000), (1, 15_000), (5, 18_000)]);
        assert_eq!(t.ids(), vec![2, 1, 5]);
        assert_eq!(t.leases.len(), 3);
        assert_eq!(t.by_deadline.len(), 3);
    }

    #[test]
    fn initial_leases_run_from_the_genesis_time_and_bad_lists_are_refused() {
        use bftcd_proto::bftcd::InitialLease;
        let mut g = Genesis { genesis_time_ms: 10_000, ..Default::default() };
        g.initial_leases = vec![InitialLease { id: 3, ttl: 60 }, InitialLease { id: 9, ttl: 5 }];
        let t = LeaseTable::initial(&g).unwrap();
        assert_eq!(t.get(3), Some(Lease { granted_ttl: 60, deadline_ms: 70_000, grantor: u32::MAX }));
        assert_eq!(t.ids(), vec![9, 3]);
        assert_eq!(t.due(15_000, 10), vec![(9, 15_000)]);
        assert_eq!(LeaseTable::initial(&Genesis::default()).unwrap(), LeaseTable::default());
        for bad in [
            vec![InitialLease { id: 0, ttl: 60 }],
            vec![InitialLease { id: 9, ttl: 60 }, InitialLease { id: 3, ttl: 60 }],
            vec![InitialLease { id: 3, ttl: 60 }, InitialLease { id: 3, ttl: 60 }],
            vec![InitialLease { id: 3, ttl: 0 }],
            vec![InitialLease { id: 3, ttl: MAX_TTL + 1 }],
        ] {
            assert!(LeaseTable::initial(&Genesis { initial_leases: bad.clone(), ..Default::default() }).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_keepalive_with_an_older_block_time_never_shortens_a_lease() {
        let mut t = LeaseTable::default();
        t.grant(1, 10, 50_000).unwrap();
        t.keep_alive(1, 40_000);
        assert_eq!(t.get(1).unwrap().deadline_ms, 60_000);
    }
}
