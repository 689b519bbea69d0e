//! Wraps a client's Put, DeleteRange or Txn into the one etcd Txn that applies it together with
//! the applied-position bookkeeping, and unwraps etcd's answer into the client's response.
//!
//! The bookkeeping Put must land exactly when the client's operation changes something: stock
//! etcd creates a revision only then, and a bank must end with the same revisions as etcd would
//! have given. The client's compares become the outer Txn's compares, and in each branch:
//! * a branch with a Put (or a nested Txn that may write) always writes: the bookkeeping Put is
//!   appended;
//! * a branch with deletes but no puts writes only if one of its ranges holds a key: a nested
//!   check Txn placed just before the first delete, `If Version(r) == 0 for every range Then
//!   nothing Else Put(bookkeeping)`, decides inside the same etcd Txn (reads before the first
//!   delete see the old revision, as on etcd; reads between a delete that removed nothing and a
//!   later one that removes something see the new revision one op early);
//! * a read-only branch writes nothing and records nothing.
//!
//! A nested client Txn that writes only in some branches still records (one extra revision where
//! etcd would create none); nothing Kubernetes or etcdctl sends nests Txns.

use bftcd_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    response_op::Response,
    Compare, PutRequest, RangeRequest, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};

use crate::reserved::{self, APPLIED_KEY};
use crate::rewrite::{plan_op, restore_ops, OpPlan};
use crate::validate::txn_writes;
use bftcd_sequencer::Position;

struct Branch {
    /// Index of the check Txn among the branch's etcd ops (just before its first delete).
    check_at: Option<usize>,
    /// The bookkeeping Put closes the branch.
    always: bool,
    plan: Vec<OpPlan>,
}

/// The etcd Txn to send and what is needed to unwrap its answer.
pub struct Wrapped {
    pub txn: TxnRequest,
    success: Branch,
    failure: Branch,
}

pub fn bookkeeping(pos: Position) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: APPLIED_KEY.to_vec(),
            value: pos.to_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// `If every range is empty Then {} Else Put(bookkeeping)`; "Version == 0" holds for a range
/// exactly when no key in it exists.
fn check_txn(ranges: Vec<(Vec<u8>, Vec<u8>)>, pos: Position) -> RequestOp {
    let compare = ranges
        .into_iter()
        .map(|(key, range_end)| Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key,
            range_end,
            target_union: Some(TargetUnion::Version(0)),
        })
        .collect();
    RequestOp {
        request: Some(Request::RequestTxn(TxnRequest { compare, success: vec![], failure: vec![bookkeeping(pos)] })),
    }
}

fn wrap_branch(ops: &[RequestOp], pos: Position, out: &mut Vec<RequestOp>) -> Branch {
    let mut puts = false;
    let mut deletes = Vec::new();
    for op in ops {
        match &op.request {
            Some(Request::RequestPut(_)) => puts = true,
            Some(Request::RequestTxn(t)) if txn_writes(t) => puts = true,
            Some(Request::RequestDeleteRange(d)) => deletes.extend(reserved::split(&d.key, &d.range_end)),
            _ => {}
        }
    }
    let check = !puts && !deletes.is_empty();
    let mut check_txn_op = check.then(|| check_txn(deletes, pos));
    let mut check_at = None;
    let start = out.len();
    let mut plan = Vec::with_capacity(ops.len());
    for op in ops {
        // Just before the first delete, so reads placed before it see the revision etcd would
        // show them (the bookkeeping Put raises it).
        if matches!(op.request, Some(Request::RequestDeleteRange(_))) {
            if let Some(c) = check_txn_op.take() {
                check_at = Some(out.len() - start);
                out.push(c);
            }
        }
        plan.push(plan_op(op, out));
    }
    if puts {
        out.push(bookkeeping(pos));
    }
    Branch { check_at, always: puts, plan }
}

/// Wraps a client Txn (a Put or DeleteRange is a Txn with one op and no compares).
pub fn wrap(client: &TxnRequest, pos: Position) -> Wrapped {
    let mut success = Vec::new();
    let mut failure = Vec::new();
    let s = wrap_branch(&client.success, pos, &mut success);
    let f = wrap_branch(&client.failure, pos, &mut failure);
    Wrapped { txn: TxnRequest { compare: client.compare.clone(), success, failure }, success: s, failure: f }
}

impl Wrapped {
    /// The client's TxnResponse (header left as etcd sent it), and whether the bookkeeping
    /// Put was applied.
    pub fn unwrap(&self, resp: TxnResponse) -> (TxnResponse, bool) {
        let branch = if resp.succeeded { &self.success } else { &self.failure };
        let revision = resp.header.as_ref().map(|h| h.revision).unwrap_or_default();
        let mut responses: Vec<ResponseOp> = resp.responses;
        let mut recorded = branch.always;
        if let Some(at) = branch.check_at.filter(|&i| i < responses.len()) {
            if let Some(Response::ResponseTxn(check)) = responses.remove(at).response {
                recorded = !check.succeeded;
            }
        }
        if branch.always {
            responses.pop();
        }
        let mut it = responses.into_iter();
        let restored = restore_ops(&branch.plan, &mut it, revision);
        (TxnResponse { header: resp.header, succeeded: resp.succeeded, responses: restored }, recorded)
    }
}

/// Makes `txn` run only while the position key holds `after` (absent for None), so that Txns in
/// flight together land in order; otherwise it reads the key. A Txn without compares takes its
/// success branch, so the guard can take their place; one with compares is nested whole.
pub fn guard(txn: TxnRequest, after: Option<Position>) -> TxnRequest {
    let compare = match after {
        Some(p) => Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: APPLIED_KEY.to_vec(),
            range_end: vec![],
            target_union: Some(TargetUnion::Value(p.to_bytes().to_vec())),
        },
        None => Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: APPLIED_KEY.to_vec(),
            range_end: vec![],
            target_union: Some(TargetUnion::Version(0)),
        },
    };
    let read = RequestOp { request: Some(Request::RequestRange(RangeRequest { key: APPLIED_KEY.to_vec(), ..Default::default() })) };
    let success = if txn.compare.is_empty() { txn.success } else { vec![RequestOp { request: Some(Request::RequestTxn(txn)) }] };
    TxnRequest { compare: vec![compare], success, failure: vec![read] }
}

/// The guarded Txn's own answer (header included), or, when the guard did not hold, the
/// position found instead (None: absent or unreadable).
pub fn unguard(resp: TxnResponse, nested: bool) -> Result<TxnResponse, Option<Position>> {
    if !resp.succeeded {
        let found = match resp.responses.into_iter().next().and_then(|r| r.response) {
            Some(Response::ResponseRange(r)) => r.kvs.first().and_then(|kv| Position::from_bytes(&kv.value)),
            _ => None,
        };
        return Err(found);
    }
    if !nested {
        return Ok(resp);
    }
    match resp.responses.into_iter().next().and_then(|r| r.response) {
        Some(Response::ResponseTxn(mut inner)) => {
            inner.header = resp.header;
            Ok(inner)
        }
        _ => Ok(TxnResponse { header: resp.header, ..Default::default() }),
    }
}

impl Wrapped {
    /// Whether [`guard`] nests this Txn (it has compares of its own).
    pub fn nested_in_guard(&self) -> bool {
        !self.txn.compare.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftcd_proto::etcdserverpb::DeleteRangeRequest;

    fn op(r: Request) -> RequestOp {
        RequestOp { request: Some(r) }
    }

    fn del_again() -> RequestOp {
        op(Request::RequestDeleteRange(DeleteRangeRequest { key: b"a".to_vec(), ..Default::default() }))
    }

    #[test]
    fn branches_record_exactly_when_they_write() {
        let pos = Position { height: 3, index: 1 };
        let put = op(Request::RequestPut(PutRequest { key: b"a".to_vec(), ..Default::default() }));
        let get = op(Request::RequestRange(RangeRequest { key: b"a".to_vec(), ..Default::default() }));
        let del = op(Request::RequestDeleteRange(DeleteRangeRequest { key: b"a".to_vec(), ..Default::default() }));
        let w = wrap(&TxnRequest { compare: vec![], success: vec![put.clone()], failure: vec![get.clone()] }, pos);
        assert_eq!(w.txn.success.len(), 2); // put + bookkeeping
        assert_eq!(w.txn.failure.len(), 1); // read only: nothing added
        let w = wrap(&TxnRequest { compare: vec![], success: vec![del], failure: vec![] }, pos);
        assert_eq!(w.txn.success.len(), 2); // check txn + delete
        let Some(Request::RequestTxn(check)) = &w.txn.success[0].request else { panic!() };
        let w2 = wrap(&TxnRequest { compare: vec![], success: vec![get.clone(), del_again()], failure: vec![] }, pos);
        assert!(matches!(w2.txn.success[1].request, Some(Request::RequestTxn(_))), "check right before the delete");
        assert_eq!(check.compare.len(), 1);
        assert_eq!(check.failure.len(), 1);
        // etcd answers: the check found the key, so bookkeeping was written.
        let answer = TxnResponse {
            header: None,
            succeeded: true,
            responses: vec![
                ResponseOp { response: Some(Response::ResponseTxn(TxnResponse { succeeded: false, ..Default::default() })) },
                ResponseOp { response: Some(Response::ResponseDeleteRange(Default::default())) },
            ],
        };
        let (client, recorded) = w.unwrap(answer);
        assert!(recorded);
        assert_eq!(client.responses.len(), 1);
    }
}
