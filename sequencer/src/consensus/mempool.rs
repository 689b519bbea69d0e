//! Client operations waiting to be proposed, and the operations committed recently enough that a
//! block repeating them must be refused.

use std::collections::{HashMap, HashSet, VecDeque};

use bftcd_proto::bftcd::Operation;
use bftcd_proto::Message;

pub type OpId = (u32, u64);

pub fn op_id(op: &Operation) -> Option<OpId> {
    op.id.as_ref().map(|i| (i.bank, i.nonce))
}

/// A bank's share of the mempool is full: its own clients get etcd's "too many requests", a
/// peer's forwarded operations beyond it are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Bytes an operation takes in a block: itself and its field's tag and length prefix.
pub fn block_bytes(op: &Operation) -> usize {
    let len = op.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// Operations waiting to be proposed, one FIFO queue per submitting bank. Each bank may hold
/// at most an equal share (1/n) of the count and byte caps, so one bank's flood, Byzantine or
/// not, cannot crowd the others out of memory; and the leader takes operations round-robin
/// across banks ([`Mempool::take`]), so it cannot crowd them out of blocks either.
pub struct Mempool {
    /// Per submitting bank, ids by arrival (ids whose operation left are skipped lazily).
    queues: Vec<VecDeque<OpId>>,
    /// Per submitting bank: operations held and their bytes.
    used: Vec<(usize, usize)>,
    ops: HashMap<OpId, (Operation, u64)>,
    quota_ops: usize,
    quota_bytes: usize,
    /// Per submitting bank: when a block this validator accepted last carried one of its
    /// operations. A bank's backlog waits its turn, not a censor: see [`Mempool::oldest_waiting`].
    included_ms: Vec<u64>,
}

impl Mempool {
    /// For `n` banks, holding at most `max_operations` and `max_bytes` in all.
    pub fn new(n: usize, max_operations: usize, max_bytes: usize) -> Mempool {
        let n = n.max(1);
        Mempool {
            queues: vec![VecDeque::new(); n],
            used: vec![(0, 0); n],
            ops: HashMap::new(),
            quota_ops: (max_operations / n).max(1),
            quota_bytes: (max_bytes / n).max(1),
            included_ms: vec![0; n],
        }
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Bytes held (as counted against the banks' shares).
    pub fn bytes(&self) -> usize {
        self.used.iter().map(|u| u.1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn contains(&self, id: &OpId) -> bool {
        self.ops.contains_key(id)
    }

    /// Is this exact operation (same id and same bytes) waiting here? Only then may a block's
    /// copy skip the signature check: a leader could keep an id and change what it asks for.
    pub fn holds(&self, op: &Operation) -> bool {
        op_id(op).and_then(|id| self.ops.get(&id)).is_some_and(|(mine, _)| mine == op)
    }

    /// Room left in `bank`'s share: (operations, bytes).
    pub fn room(&self, bank: u32) -> (usize, usize) {
        match self.used.get(bank as usize) {
            Some(&(count, bytes)) => (self.quota_ops.saturating_sub(count), self.quota_bytes.saturating_sub(bytes)),
            None => (0, 0),
        }
    }

    /// Adds an operation first seen at `now`: Ok(false) if already present, Err when its
    /// bank's share is full (or the bank is unknown).
    pub fn insert(&mut self, op: Operation, now: u64) -> Result<bool, Full> {
        let Some(id) = op_id(&op) else { return Ok(false) };
        if self.ops.contains_key(&id) {
            return Ok(false);
        }
        let len = block_bytes(&op);
        let (ops_left, bytes_left) = self.room(id.0);
        if ops_left == 0 || bytes_left < len {
            return Err(Full);
        }
        let b = id.0 as usize;
        self.used[b].0 += 1;
        self.used[b].1 += len;
        self.queues[b].push_back(id);
        self.ops.insert(id, (op, now));
        Ok(true)
    }

    fn forget(&mut self, id: &OpId, op: &Operation) {
        let b = id.0 as usize;
        if let Some(u) = self.used.get_mut(b) {
            u.0 = u.0.saturating_sub(1);
            u.1 = u.1.saturating_sub(block_bytes(op));
        }
    }

    /// Drops ids whose operation left from a queue grown well past what it holds (amortised).
    fn compact(&mut self) {
        for (b, q) in self.queues.iter_mut().enumerate() {
            if q.len() > 2 * self.used[b].0 + 64 {
                q.retain(|id| self.ops.contains_key(id));
            }
        }
    }

    /// Every operation held, oldest first per bank, emptying the mempool.
    pub fn drain(&mut self) -> Vec<Operation> {
        let mut out = Vec::with_capacity(self.ops.len());
        for q in self.queues.iter_mut() {
            for id in q.drain(..) {
                if let Some((op, _)) = self.ops.remove(&id) {
                    out.push(op);
                }
            }
        }
        self.ops.clear();
        self.used.iter_mut().for_each(|u| *u = (0, 0));
        out
    }

    pub fn remove(&mut self, id: &OpId) {
        if let Some((op, _)) = self.ops.remove(id) {
            self.forget(id, &op);
            self.compact();
        }
    }

    /// Up to `max_ops` operations in at most `max_bytes` (block bytes, [`block_bytes`]),
    /// skipping `exclude`: one from each bank in turn, starting at bank `start`, each bank's in
    /// arrival order. A bank whose next operation does not fit the room left gives no more; an
    /// operation that could never fit is never taken. Deterministic given the mempool.
    pub fn take(&mut self, max_ops: usize, max_bytes: usize, exclude: &HashSet<OpId>, start: usize) -> Vec<Operation> {
        let n = self.queues.len();
        for q in &mut self.queues {
            q.retain(|id| self.ops.contains_key(id));
        }
        let mut next = vec![0usize; n];
        let mut done = vec![false; n];
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max_ops && done.iter().any(|d| !d) {
            for k in 0..n {
                let b = (start + k) % n;
                if done[b] || out.len() >= max_ops {
                    continue;
                }
                let q = &self.queues[b];
                loop {
                    let Some(id) = q.get(next[b]) else {
                        done[b] = true;
                        break;
                    };
                    next[b] += 1;
                    if exclude.contains(id) {
                        continue;
                    }
                    let (op, _) = &self.ops[id];
                    let len = block_bytes(op);
                    if len > max_bytes {
                        continue; // no block could carry it
                    }
                    if bytes + len > max_bytes {
                        done[b] = true; // keep this bank's order: nothing of it jumps the queue
                        break;
                    }
                    bytes += len;
                    out.push(op.clone());
                    break;
                }
            }
        }
        out
    }

    /// A block this validator accepted at `now_ms` carries these operations.
    pub fn note_included(&mut self, ops: &[Operation], now_ms: u64) {
        for id in ops.iter().filter_map(op_id) {
            if let Some(t) = self.included_ms.get_mut(id.0 as usize) {
                *t = now_ms;
            }
        }
    }

    /// Since when the longest-waiting bank has been waiting for its turn: for each bank, its
    /// oldest operation not in `exclude`, counted from when it was first seen or from the last
    /// block that carried one of the bank's operations, whichever is later. A bank's long
    /// backlog (a flood) thus shows no censorship while blocks keep taking from it, round-robin;
    /// a leader that leaves a bank out lets its wait grow to the inclusion deadline.
    pub fn oldest_waiting(&self, exclude: &HashSet<OpId>) -> Option<u64> {
        // Each queue is by arrival and arrival times never decrease, so each queue's first one
        // found is its oldest (ids whose operation left are skipped).
        self.queues
            .iter()
            .enumerate()
            .filter_map(|(b, q)| {
                let seen = q.iter().filter(|id| !exclude.contains(id)).find_map(|id| self.ops.get(id).map(|(_, seen)| *seen))?;
                Some(seen.max(self.included_ms[b]))
            })
            .min()
    }

    /// Operations submitted by `bank` not in `exclude` (to forward again after a failed view).
    pub fn own(&self, bank: u32, exclude: &HashSet<OpId>) -> Vec<Operation> {
        let Some(q) = self.queues.get(bank as usize) else { return Vec::new() };
        q.iter().filter(|id| !exclude.contains(id)).filter_map(|id| self.ops.get(id).map(|(op, _)| op.clone())).collect()
    }

    /// Drops operations submitted before `cutoff_ms`: no block may carry them any more.
    pub fn expire(&mut self, cutoff_ms: u64) {
        let gone: Vec<OpId> = self.ops.iter().filter(|(_, (op, _))| op.submitted_ms < cutoff_ms).map(|(id, _)| *id).collect();
        for id in gone {
            self.remove(&id);
        }
    }
}

/// Operation ids committed in blocks whose time is within the window.
#[derive(Default)]
pub struct Recent {
    by_time: VecDeque<(u64, OpId)>,
    ids: HashSet<OpId>,
}

impl Recent {
    pub fn contains(&self, id: &OpId) -> bool {
        self.ids.contains(id)
    }

    pub fn insert(&mut self, block_ms: u64, id: OpId) {
        if self.ids.insert(id) {
            self.by_time.push_back((block_ms, id));
        }
    }

    pub fn forget_before(&mut self, cutoff_ms: u64) {
        while let Some(&(t, id)) = self.by_time.front() {
            if t >= cutoff_ms {
                break;
            }
            self.by_time.pop_front();
            self.ids.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftcd_proto::bftcd::{operation::Request, OperationId};
    use bftcd_proto::etcdserverpb::PutRequest;

    fn op(bank: u32, nonce: u64, value: usize) -> Operation {
        Operation {
            id: Some(OperationId { bank, nonce }),
            request: Some(Request::Put(PutRequest { key: b"k".to_vec(), value: vec![7; value], ..Default::default() })),
            submitted_ms: nonce,
            ..Default::default()
        }
    }

    fn ids(ops: &[Operation]) -> Vec<(u32, u64)> {
        ops.iter().map(|o| op_id(o).unwrap()).collect()
    }

    #[test]
    fn a_banks_flood_fills_only_its_own_share() {
        let mut m = Mempool::new(4, 40, 1 << 20);
        for i in 0..10 {
            assert_eq!(m.insert(op(1, i, 10), i), Ok(true));
        }
        // Bank 1's share (10 of 40) is full; the others' shares are untouched.
        assert_eq!(m.insert(op(1, 99, 10), 99), Err(Full));
        assert_eq!(m.insert(op(2, 0, 10), 99), Ok(true));
        assert_eq!(m.insert(op(2, 0, 10), 99), Ok(false));
        assert_eq!(m.insert(op(9, 0, 10), 99), Err(Full), "unknown bank");
        // Committing frees the share.
        m.remove(&(1, 0));
        assert_eq!(m.room(1).0, 1);
        assert_eq!(m.insert(op(1, 100, 10), 100), Ok(true));
    }

    #[test]
    fn byte_caps_bound_each_share() {
        let mut m = Mempool::new(2, 1000, 4000);
        assert_eq!(m.insert(op(0, 0, 1500), 0), Ok(true));
        assert_eq!(m.insert(op(0, 1, 1500), 1), Err(Full));
        assert_eq!(m.insert(op(1, 0, 1500), 1), Ok(true));
        m.expire(1);
        assert!(!m.contains(&(0, 0)));
        assert_eq!(m.insert(op(0, 1, 1500), 1), Ok(true));
    }

    #[test]
    fn the_leader_takes_round_robin_across_banks() {
        let mut m = Mempool::new(4, 1 << 20, 1 << 30);
        // Bank 0 floods first; banks 2 and 3 submit one each afterwards.
        for i in 0..100 {
            m.insert(op(0, i, 10), i).unwrap();
        }
        m.insert(op(2, 0, 10), 200).unwrap();
        m.insert(op(3, 0, 10), 201).unwrap();
        let none = HashSet::new();
        let block = m.take(4, 1 << 20, &none, 0);
        assert_eq!(ids(&block), vec![(0, 0), (2, 0), (3, 0), (0, 1)]);
        // The start bank rotates who goes first; each bank's own order is kept.
        let block = m.take(3, 1 << 20, &none, 3);
        assert_eq!(ids(&block), vec![(3, 0), (0, 0), (2, 0)]);
        // Operations in flight are skipped.
        let exclude: HashSet<OpId> = [(0, 0), (2, 0)].into();
        assert_eq!(ids(&m.take(3, 1 << 20, &exclude, 0)), vec![(0, 1), (3, 0), (0, 2)]);
        assert_eq!(m.oldest_waiting(&exclude), Some(1));
        // Once a block carried bank 0's operations, its backlog waits from then on.
        m.note_included(&block, 150);
        assert_eq!(m.oldest_waiting(&exclude), Some(150));
        m.note_included(&[op(3, 0, 10)], 300);
        assert_eq!(m.oldest_waiting(&exclude), Some(150));
    }

    #[test]
    fn an_operation_that_cannot_fit_is_never_taken() {
        let mut m = Mempool::new(2, 100, 1 << 30);
        m.insert(op(0, 0, 5000), 0).unwrap();
        m.insert(op(0, 1, 10), 1).unwrap();
        m.insert(op(1, 0, 10), 2).unwrap();
        // The oversized one is skipped (it must not block its bank's queue), the rest proposed.
        assert_eq!(ids(&m.take(10, 1000, &HashSet::new(), 0)), vec![(0, 1), (1, 0)]);
        // One that merely does not fit the room left ends its bank's turn, in order.
        m.insert(op(1, 1, 620), 3).unwrap();
        m.insert(op(1, 2, 10), 4).unwrap();
        let taken = m.take(10, 700, &HashSet::new(), 1);
        assert_eq!(ids(&taken), vec![(1, 0), (0, 1), (1, 1)]);
        assert!(taken.iter().map(block_bytes).sum::<usize>() <= 700);
    }
}
