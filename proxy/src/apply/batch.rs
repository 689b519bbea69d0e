//! Which consecutive operations share one etcd Txn.
//!
//! Operations whose key sets do not conflict (no write/write or read/write overlap, ranges
//! included) can be applied as nested Txns of one outer etcd Txn: none can observe another, so
//! the result is the same as applying them one by one, except that they share one revision.
//! The split is a pure function of the operations, so every bank computes the same batches.

use bftcd_proto::bftcd::{operation::Request as Op, Operation};
use bftcd_proto::etcdserverpb::{request_op::Request, RequestOp, TxnRequest};
use bftcd_proto::Message;

/// `[start, end)`; `end` empty means the single key `start`; `end` "\0" means "to the end".
#[derive(Debug, Clone)]
struct KeyRange {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl KeyRange {
    fn new(key: &[u8], range_end: &[u8]) -> Self {
        KeyRange { start: key.to_vec(), end: range_end.to_vec() }
    }

    /// Exclusive upper bound, None for "to the end of the key space".
    fn upper(&self) -> Option<Vec<u8>> {
        if self.end.is_empty() {
            let mut k = self.start.clone();
            k.push(0);
            Some(k)
        } else if self.end == [0] {
            None
        } else {
            Some(self.end.clone())
        }
    }

    fn overlaps(&self, other: &KeyRange) -> bool {
        let below = |a: &KeyRange, b: &KeyRange| a.upper().is_some_and(|u| u <= b.start);
        !(below(self, other) || below(other, self))
    }
}

#[derive(Default)]
struct Footprint {
    reads: Vec<KeyRange>,
    writes: Vec<KeyRange>,
}

impl Footprint {
    fn ops(&mut self, ops: &[RequestOp]) {
        for op in ops {
            match &op.request {
                Some(Request::RequestRange(r)) => self.reads.push(KeyRange::new(&r.key, &r.range_end)),
                Some(Request::RequestPut(p)) => self.writes.push(KeyRange::new(&p.key, b"")),
                Some(Request::RequestDeleteRange(d)) => self.writes.push(KeyRange::new(&d.key, &d.range_end)),
                Some(Request::RequestTxn(t)) => self.txn(t),
                None => {}
            }
        }
    }

    fn txn(&mut self, t: &TxnRequest) {
        for c in &t.compare {
            self.reads.push(KeyRange::new(&c.key, &c.range_end));
        }
        self.ops(&t.success);
        self.ops(&t.failure);
    }

    fn of(op: &Operation) -> Option<Footprint> {
        let mut f = Footprint::default();
        match op.request.as_ref()? {
            Op::Put(p) => f.writes.push(KeyRange::new(&p.key, b"")),
            Op::DeleteRange(d) => f.writes.push(KeyRange::new(&d.key, &d.range_end)),
            Op::Txn(t) => f.txn(t),
            _ => return None, // lease and compaction calls cannot sit in a Txn
        }
        Some(f)
    }

    fn conflicts(&self, other: &Footprint) -> bool {
        let any = |a: &[KeyRange], b: &[KeyRange]| a.iter().any(|x| b.iter().any(|y| x.overlaps(y)));
        any(&self.writes, &other.writes) || any(&self.writes, &other.reads) || any(&self.reads, &other.writes)
    }

    fn absorb(&mut self, other: Footprint) {
        self.reads.extend(other.reads);
        self.writes.extend(other.writes);
    }
}

/// Limits that keep the outer Txn within a stock etcd's defaults (`--max-txn-ops` 128,
/// `--max-request-bytes` 1.5 MiB): the bookkeeping Put makes one more op.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_operations: usize,
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits { max_operations: 100, max_bytes: 1 << 20 }
    }
}

/// Splits `ops` into runs, in order: each run is one operation, or several that can share a Txn.
/// Operations for which `alone` holds (refused ones) get a run of their own.
pub fn split(ops: &[Operation], limits: BatchLimits, alone: impl Fn(usize) -> bool) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut acc: Option<Footprint> = None;
    let mut bytes = 0;
    for (i, op) in ops.iter().enumerate() {
        let f = if alone(i) { None } else { Footprint::of(op) };
        let len = op.encoded_len();
        let fits = i - start < limits.max_operations && bytes + len <= limits.max_bytes;
        match (f, acc.as_mut()) {
            (Some(f), Some(a)) if fits && !a.conflicts(&f) => {
                a.absorb(f);
                bytes += len;
                continue;
            }
            (f, _) => {
                if i > start {
                    runs.push(start..i);
                }
                start = i;
                bytes = len;
                acc = f;
                if acc.is_none() {
                    // A lease or compaction call: alone.
                    runs.push(i..i + 1);
                    start = i + 1;
                    bytes = 0;
                }
            }
        }
    }
    if start < ops.len() {
        runs.push(start..ops.len());
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftcd_proto::etcdserverpb::{DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest};

    fn put(k: &str) -> Operation {
        Operation { request: Some(Op::Put(PutRequest { key: k.into(), ..Default::default() })), ..Default::default() }
    }
    fn del(k: &str, end: &str) -> Operation {
        Operation {
            request: Some(Op::DeleteRange(DeleteRangeRequest { key: k.into(), range_end: end.into(), ..Default::default() })),
            ..Default::default()
        }
    }
    fn read_txn(k: &str, end: &str) -> Operation {
        let get = RequestOp { request: Some(Request::RequestRange(RangeRequest { key: k.into(), range_end: end.into(), ..Default::default() })) };
        Operation { request: Some(Op::Txn(TxnRequest { compare: vec![], success: vec![get], failure: vec![] })), ..Default::default() }
    }
    fn grant() -> Operation {
        Operation { request: Some(Op::LeaseGrant(LeaseGrantRequest { ttl: 5, id: 0 })), ..Default::default() }
    }

    #[test]
    fn independent_writes_share_a_batch_conflicts_split_it() {
        let ops = vec![put("a"), put("b"), put("c"), put("a"), put("d")];
        assert_eq!(split(&ops, BatchLimits::default(), |_| false), vec![0..3, 3..5]);
    }

    #[test]
    fn ranges_reads_and_lease_calls() {
        let ops = vec![put("b"), del("a", "c"), read_txn("x", "z"), put("y"), grant(), put("q")];
        // del [a,c) overlaps b; the read of [x,z) conflicts with the put of y; the grant stands alone.
        assert_eq!(split(&ops, BatchLimits::default(), |_| false), vec![0..1, 1..3, 3..4, 4..5, 5..6]);
        let everything = vec![put("k"), del("\0", "\0")];
        assert_eq!(split(&everything, BatchLimits::default(), |_| false), vec![0..1, 1..2]);
    }

    #[test]
    fn limits_cut_batches() {
        let ops: Vec<Operation> = (0..250).map(|i| put(&format!("k{i}"))).collect();
        let runs = split(&ops, BatchLimits::default(), |_| false);
        assert_eq!(runs, vec![0..100, 100..200, 200..250]);
    }
}
