//! Request validation before ordering, with etcd's own rules and error texts (etcd 3.5,
//! api/v3rpc/key.go). Anything rejected here never reaches the sequencer; anything that can
//! still fail later fails identically on every bank because it depends only on replicated state.

use std::collections::HashSet;

use bftcd_proto::etcdserverpb::{
    request_op::Request, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use tonic::Status;

use crate::errors;
use crate::reserved;

pub fn check_range(r: &RangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    // etcd 3.5 accepts unknown sort enums (an unknown order means no sorting), so do we.
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(errors::value_provided());
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(errors::lease_provided());
    }
    if reserved::is_reserved(&r.key) {
        return Err(errors::reserved_key());
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    // A delete that only names reserved keys is a write to them; one that merely spans the
    // prefix (`del --prefix ""`) is split around it.
    if reserved::overlaps(&r.key, &r.range_end) && reserved::split(&r.key, &r.range_end).is_empty() {
        return Err(errors::reserved_key());
    }
    Ok(())
}

pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), Status> {
    check_txn_ops(r, max_txn_ops as i64)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_ops: i64) -> Result<(), Status> {
    let widest = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if widest > max_ops {
        return Err(errors::too_many_ops());
    }
    for c in &r.compare {
        if c.key.is_empty() {
            return Err(errors::empty_key());
        }
        if reserved::overlaps(&c.key, &c.range_end) {
            return Err(errors::reserved_key());
        }
    }
    // etcd charges nested Txns against what the enclosing level left over.
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, max_ops - widest)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: i64) -> Result<(), Status> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(r)) => check_put(r),
        Some(Request::RequestDeleteRange(r)) => check_delete(r),
        Some(Request::RequestTxn(r)) => check_txn_ops(r, max_ops),
        None => Err(errors::key_not_found()),
    }
}

/// Keys deleted by a set of operations: a point or a `[start, end)` interval. An end of "\0" is
/// taken literally here, as etcd's own duplicate check does.
#[derive(Default)]
struct Deletes(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl Deletes {
    fn contains(&self, key: &[u8]) -> bool {
        self.0.iter().any(|(start, end)| match end {
            None => start.as_slice() == key,
            Some(end) => start.as_slice() <= key && key < end.as_slice(),
        })
    }
}

/// etcd's duplicate-key rule: within one branch, a key may be put once and not also deleted;
/// a nested Txn's then and else branches are exclusive, so they may put the same key.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Deletes), Status> {
    let mut deletes = Deletes::default();
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            let end = (!d.range_end.is_empty()).then(|| d.range_end.clone());
            deletes.0.push((d.key.clone(), end));
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else { continue };
        let (puts_then, deletes_then) = check_intervals(&t.success)?;
        let (puts_else, deletes_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deletes.contains(k) {
                return Err(errors::duplicate_key());
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deletes.contains(k) {
                return Err(errors::duplicate_key());
            }
            puts.insert(k.clone());
        }
        deletes.0.extend(deletes_then.0);
        deletes.0.extend(deletes_else.0);
    }
    for op in ops {
        if let Some(Request::RequestPut(p)) = &op.request {
            if puts.contains(&p.key) || deletes.contains(&p.key) {
                return Err(errors::duplicate_key());
            }
            puts.insert(p.key.clone());
        }
    }
    Ok((puts, deletes))
}

/// Does the Txn write anything (in any branch, at any depth)? Read-only Txns skip ordering.
pub fn txn_writes(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => true,
        Some(Request::RequestTxn(t)) => txn_writes(t),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp { request: Some(Request::RequestPut(PutRequest { key: k.into(), ..Default::default() })) }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest { compare: vec![], success, failure }
    }
    fn nested(t: TxnRequest) -> RequestOp {
        RequestOp { request: Some(Request::RequestTxn(t)) }
    }
    fn msg(r: Result<(), Status>) -> String {
        r.err().map(|s| s.message().to_string()).unwrap_or_default()
    }

    #[test]
    fn duplicate_keys_follow_etcd() {
        let dup = "etcdserver: duplicate key given in txn request";
        assert_eq!(msg(check_txn(&txn(vec![put("a"), put("a")], vec![]), 128)), dup);
        assert_eq!(msg(check_txn(&txn(vec![put("b"), del("a", "c")], vec![]), 128)), dup);
        assert_eq!(msg(check_txn(&txn(vec![put("a")], vec![put("a")]), 128)), "");
        // then/else of one nested txn are exclusive ...
        let t = txn(vec![nested(txn(vec![put("a")], vec![put("a")]))], vec![]);
        assert_eq!(msg(check_txn(&t, 128)), "");
        // ... but a nested put may not repeat an outer one.
        let t = txn(vec![put("a"), nested(txn(vec![put("a")], vec![]))], vec![]);
        assert_eq!(msg(check_txn(&t, 128)), dup);
    }

    #[test]
    fn limits_and_empty_ops() {
        let many = txn((0..129).map(|i| put(&format!("k{i}"))).collect(), vec![]);
        assert_eq!(msg(check_txn(&many, 128)), "etcdserver: too many operations in txn request");
        let empty = txn(vec![RequestOp { request: None }], vec![]);
        assert_eq!(msg(check_txn(&empty, 128)), "etcdserver: key not found");
        assert_eq!(msg(check_txn(&txn(vec![put("")], vec![]), 128)), "etcdserver: key is not provided");
    }

    #[test]
    fn reserved_keys_are_not_writable() {
        assert!(msg(check_put(&PutRequest { key: reserved::APPLIED_KEY.to_vec(), ..Default::default() }))
            .starts_with("bftcd: keys under the reserved prefix"));
        let d = DeleteRangeRequest { key: b"\x00".to_vec(), range_end: b"\x00".to_vec(), ..Default::default() };
        assert!(check_delete(&d).is_ok());
        assert!(txn_writes(&txn(vec![], vec![nested(txn(vec![del("a", "")], vec![]))])));
        assert!(!txn_writes(&txn(vec![], vec![])));
    }
}
