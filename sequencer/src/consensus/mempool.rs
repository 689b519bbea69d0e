//! Client operations waiting to be proposed, and the operations committed recently enough that a
//! block repeating them must be refused.

use std::collections::{HashMap, HashSet, VecDeque};

use bftcd_proto::bftcd::Operation;
use bftcd_proto::Message;

pub type OpId = (u32, u64);

pub fn op_id(op: &Operation) -> Option<OpId> {
    op.id.as_ref().map(|i| (i.bank, i.nonce))
}

#[derive(Default)]
pub struct Mempool {
    order: VecDeque<OpId>,
    ops: HashMap<OpId, (Operation, u64)>,
}

impl Mempool {
    pub fn len(&self) -> usize {
        self.ops.len()
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

    /// Adds an operation first seen at `now`; false if already present.
    pub fn insert(&mut self, op: Operation, now: u64) -> bool {
        let Some(id) = op_id(&op) else { return false };
        if self.ops.contains_key(&id) {
            return false;
        }
        self.order.push_back(id);
        self.ops.insert(id, (op, now));
        true
    }

    pub fn remove(&mut self, id: &OpId) {
        self.ops.remove(id);
    }

    /// Oldest first, skipping `exclude`, within the limits.
    pub fn take(&mut self, max_ops: usize, max_bytes: usize, exclude: &HashSet<OpId>) -> Vec<Operation> {
        self.order.retain(|id| self.ops.contains_key(id));
        let mut out = Vec::new();
        let mut bytes = 0;
        for id in &self.order {
            if out.len() >= max_ops {
                break;
            }
            if exclude.contains(id) {
                continue;
            }
            let (op, _) = &self.ops[id];
            let len = op.encoded_len();
            if bytes + len > max_bytes && !out.is_empty() {
                break;
            }
            bytes += len;
            out.push(op.clone());
        }
        out
    }

    /// When the oldest operation not in `exclude` was first seen.
    pub fn oldest_waiting(&self, exclude: &HashSet<OpId>) -> Option<u64> {
        // `order` is by arrival and arrival times never decrease, so the first one found is the
        // oldest (ids whose operation left are skipped).
        self.order.iter().filter(|id| !exclude.contains(id)).find_map(|id| self.ops.get(id).map(|(_, seen)| *seen))
    }

    /// Operations submitted by `bank` not in `exclude` (to forward again after a failed view).
    pub fn own(&self, bank: u32, exclude: &HashSet<OpId>) -> Vec<Operation> {
        self.order
            .iter()
            .filter(|id| id.0 == bank && !exclude.contains(id))
            .filter_map(|id| self.ops.get(id).map(|(op, _)| op.clone()))
            .collect()
    }

    /// Drops operations submitted before `cutoff_ms`: no block may carry them any more.
    pub fn expire(&mut self, cutoff_ms: u64) {
        self.ops.retain(|_, (op, _)| op.submitted_ms >= cutoff_ms);
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
