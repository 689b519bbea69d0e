//! Turns client requests into etcd requests that never touch the reserved prefix, and etcd's
//! responses back into exactly what the client asked for.
//!
//! Only ranges that overlap the prefix are rewritten (a Range or DeleteRange becomes one op per
//! part, see [`reserved::split`]); everything else passes through untouched. Parts are always
//! read in one etcd Txn, so they share one revision.

use std::cmp::Ordering;

use bftcd_proto::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    DeleteRangeRequest, DeleteRangeResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader,
    ResponseOp, TxnRequest, TxnResponse,
};
use bftcd_proto::mvccpb::KeyValue;

use crate::reserved;

/// How one client op became etcd ops.
#[derive(Debug, Clone)]
pub enum OpPlan {
    Same,
    Range { parts: usize, request: RangeRequest },
    Delete { parts: usize },
    Txn(TxnPlan),
}

#[derive(Debug, Clone, Default)]
pub struct TxnPlan {
    success: Vec<OpPlan>,
    failure: Vec<OpPlan>,
}

impl OpPlan {
    fn is_same(&self) -> bool {
        matches!(self, OpPlan::Same)
    }
}

pub fn range_parts(r: &RangeRequest) -> Vec<RangeRequest> {
    reserved::split(&r.key, &r.range_end)
        .into_iter()
        .map(|(key, range_end)| RangeRequest { key, range_end, ..r.clone() })
        .collect()
}

pub fn delete_parts(d: &DeleteRangeRequest) -> Vec<DeleteRangeRequest> {
    reserved::split(&d.key, &d.range_end)
        .into_iter()
        .map(|(key, range_end)| DeleteRangeRequest { key, range_end, ..d.clone() })
        .collect()
}

/// One client op as the etcd ops to send, appended to `out`.
pub fn plan_op(op: &RequestOp, out: &mut Vec<RequestOp>) -> OpPlan {
    let wrap = |r: Request| RequestOp { request: Some(r) };
    match &op.request {
        Some(Request::RequestRange(r)) if reserved::overlaps(&r.key, &r.range_end) => {
            let parts = range_parts(r);
            let n = parts.len();
            out.extend(parts.into_iter().map(|p| wrap(Request::RequestRange(p))));
            OpPlan::Range { parts: n, request: r.clone() }
        }
        Some(Request::RequestDeleteRange(d)) if reserved::overlaps(&d.key, &d.range_end) => {
            let parts = delete_parts(d);
            let n = parts.len();
            out.extend(parts.into_iter().map(|p| wrap(Request::RequestDeleteRange(p))));
            OpPlan::Delete { parts: n }
        }
        Some(Request::RequestTxn(t)) => {
            let (t, plan) = plan_txn(t);
            out.push(wrap(Request::RequestTxn(t)));
            if plan.success.iter().chain(&plan.failure).all(OpPlan::is_same) {
                OpPlan::Same
            } else {
                OpPlan::Txn(plan)
            }
        }
        _ => {
            out.push(op.clone());
            OpPlan::Same
        }
    }
}

pub fn plan_txn(t: &TxnRequest) -> (TxnRequest, TxnPlan) {
    let mut success = Vec::with_capacity(t.success.len());
    let mut failure = Vec::with_capacity(t.failure.len());
    let plan = TxnPlan {
        success: t.success.iter().map(|op| plan_op(op, &mut success)).collect(),
        failure: t.failure.iter().map(|op| plan_op(op, &mut failure)).collect(),
    };
    (TxnRequest { compare: t.compare.clone(), success, failure }, plan)
}

/// Puts etcd's responses to the planned ops back into one response per client op.
pub fn restore_ops(
    plans: &[OpPlan],
    responses: &mut impl Iterator<Item = ResponseOp>,
    revision: i64,
) -> Vec<ResponseOp> {
    let nested_header = || Some(ResponseHeader { revision, ..Default::default() });
    plans
        .iter()
        .map(|plan| match plan {
            OpPlan::Same => responses.next().unwrap_or_default(),
            OpPlan::Range { parts, request } => {
                let parts: Vec<RangeResponse> = responses
                    .take(*parts)
                    .filter_map(|r| match r.response {
                        Some(Response::ResponseRange(r)) => Some(r),
                        _ => None,
                    })
                    .collect();
                // etcd's own header for the part (the revision the read saw inside the Txn).
                let header = parts.first().and_then(|p| p.header).or_else(nested_header);
                let mut merged = merge_ranges(request, parts);
                merged.header = header;
                ResponseOp { response: Some(Response::ResponseRange(merged)) }
            }
            OpPlan::Delete { parts } => {
                let parts: Vec<DeleteRangeResponse> = responses
                    .take(*parts)
                    .filter_map(|r| match r.response {
                        Some(Response::ResponseDeleteRange(r)) => Some(r),
                        _ => None,
                    })
                    .collect();
                let header = parts.first().and_then(|p| p.header).or_else(nested_header);
                let mut merged = merge_deletes(parts);
                merged.header = header;
                ResponseOp { response: Some(Response::ResponseDeleteRange(merged)) }
            }
            OpPlan::Txn(plan) => match responses.next() {
                Some(ResponseOp { response: Some(Response::ResponseTxn(t)) }) => ResponseOp {
                    response: Some(Response::ResponseTxn(restore_txn(plan, t, revision))),
                },
                other => other.unwrap_or_default(),
            },
        })
        .collect()
}

pub fn restore_txn(plan: &TxnPlan, t: TxnResponse, revision: i64) -> TxnResponse {
    let plans = if t.succeeded { &plan.success } else { &plan.failure };
    let mut it = t.responses.into_iter();
    TxnResponse { header: t.header, succeeded: t.succeeded, responses: restore_ops(plans, &mut it, revision) }
}

fn sort_key_cmp(target: SortTarget, a: &KeyValue, b: &KeyValue) -> Ordering {
    match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    }
}

/// Merges the parts of one split range as etcd would have answered the whole range.
pub fn merge_ranges(request: &RangeRequest, parts: Vec<RangeResponse>) -> RangeResponse {
    let target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(request.sort_order).unwrap_or(SortOrder::None);
    // etcd sorts ascending by default only when the target is not the key.
    if order == SortOrder::None && target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    let header = parts.first().and_then(|p| p.header);
    let count = parts.iter().map(|p| p.count).sum();
    let mut more = parts.iter().any(|p| p.more);
    let mut kvs: Vec<KeyValue> = parts.into_iter().flat_map(|p| p.kvs).collect();
    // Parts come in key order and each is sorted, so a stable sort is a merge.
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(|a, b| sort_key_cmp(target, a, b)),
        SortOrder::Descend => kvs.sort_by(|a, b| sort_key_cmp(target, b, a)),
    }
    if request.limit > 0 && kvs.len() as i64 > request.limit {
        kvs.truncate(request.limit as usize);
        more = true;
    }
    RangeResponse { header, kvs, more, count }
}

pub fn merge_deletes(parts: Vec<DeleteRangeResponse>) -> DeleteRangeResponse {
    let header = parts.first().and_then(|p| p.header);
    let deleted = parts.iter().map(|p| p.deleted).sum();
    let prev_kvs = parts.into_iter().flat_map(|p| p.prev_kvs).collect();
    DeleteRangeResponse { header, deleted, prev_kvs }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str, m: i64) -> KeyValue {
        KeyValue { key: k.into(), value: v.into(), mod_revision: m, ..Default::default() }
    }

    #[test]
    fn merge_respects_limit_count_and_order() {
        let req = RangeRequest { key: b"\x00".to_vec(), range_end: b"\x00".to_vec(), limit: 2, ..Default::default() };
        let a = RangeResponse { kvs: vec![kv("\x00a", "1", 5)], count: 1, ..Default::default() };
        let b = RangeResponse { kvs: vec![kv("a", "0", 3), kv("b", "2", 4)], count: 3, more: true, ..Default::default() };
        let m = merge_ranges(&req, vec![a.clone(), b.clone()]);
        assert_eq!(m.count, 4);
        assert!(m.more);
        assert_eq!(m.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(), vec![b"\x00a".to_vec(), b"a".to_vec()]);

        let by_mod_desc = RangeRequest { sort_target: SortTarget::Mod as i32, sort_order: SortOrder::Descend as i32, limit: 0, ..req };
        let m = merge_ranges(&by_mod_desc, vec![a, b]);
        assert_eq!(m.kvs.iter().map(|k| k.mod_revision).collect::<Vec<_>>(), vec![5, 4, 3]);
    }

    #[test]
    fn txn_plan_round_trip() {
        let all = RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: b"\x00".to_vec(),
                range_end: b"\x00".to_vec(),
                ..Default::default()
            })),
        };
        let (t, plan) = plan_txn(&TxnRequest { compare: vec![], success: vec![all], failure: vec![] });
        assert_eq!(t.success.len(), 2);
        let part = |k: &str| ResponseOp {
            response: Some(Response::ResponseRange(RangeResponse { kvs: vec![kv(k, "", 1)], count: 1, ..Default::default() })),
        };
        let resp = TxnResponse { header: None, succeeded: true, responses: vec![part("\x00x"), part("z")] };
        let r = restore_txn(&plan, resp, 9);
        assert_eq!(r.responses.len(), 1);
        let Some(Response::ResponseRange(rr)) = &r.responses[0].response else { panic!() };
        assert_eq!(rr.count, 2);
        assert_eq!(rr.header.as_ref().unwrap().revision, 9);
    }
}
