//! KV: reads from the local etcd, writes through ordering.

use std::sync::Arc;

use bftcd_proto::bftcd::operation::Request as Op;
use bftcd_proto::etcdserverpb::{
    kv_server::Kv, request_op::Request as ReqOp, response_op::Response as RespOp, CompactionRequest,
    CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use bytes::Bytes;
use prost::Message;
use tonic::{Request, Response, Status};

use super::Front;
use crate::apply::OpResponse;
use crate::reheader::{self, Encoded};
use crate::reserved::{self, APPLIED_KEY};
use crate::{errors, rewrite, validate};

pub struct KvFront(pub Arc<Front>);

fn unexpected() -> Status {
    Status::internal("bftcd: apply engine returned a response of the wrong kind")
}

/// Pass-through Range reads from the local etcd under way at once, for all clients: more than
/// the two-core etcd serves in parallel, so it only bounds memory, not throughput.
static RANGE_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(64);

impl Front {
    /// What every client Range goes through before it is read: etcd's checks, then the read
    /// index unless the client asked for a serializable read.
    pub async fn prepare_range(&self, mut r: RangeRequest) -> Result<RangeRequest, Status> {
        validate::check_range(&r)?;
        if !r.serializable {
            self.linearize().await?;
            // The read index already made this read linearizable; the local etcd's own read
            // index would only cost a trip through its raft loop.
            r.serializable = true;
        }
        Ok(r)
    }

    /// A Range as the client sees it, already encoded. The common case, a range clear of the
    /// reserved keys, is etcd's answer passed through with only its header swapped; a range
    /// that includes them is split and merged by [`Front::read_range`].
    pub async fn range_encoded(&self, r: RangeRequest) -> Result<Encoded, Status> {
        if reserved::overlaps(&r.key, &r.range_end) {
            return Ok(Bytes::from(self.read_range(r).await?.encode_to_vec()).into());
        }
        // An answer read from etcd is charged to its client only once it is whole; bounding the
        // reads under way bounds what a flood of large Ranges holds before the limits see it.
        let _reading = RANGE_READS.acquire().await.map_err(|_| errors::timeout())?;
        let body = self.etcd.range_raw(r).await.map_err(errors::from_etcd)?;
        Ok(reheader::replace_header(body, |h| self.identity.header(h))?)
    }

    /// A Range as the client sees it: reserved keys never appear in kvs, count or more.
    pub async fn read_range(&self, r: RangeRequest) -> Result<RangeResponse, Status> {
        if !reserved::overlaps(&r.key, &r.range_end) {
            let mut resp = self.etcd.kv().range(r).await.map_err(errors::from_etcd)?.into_inner();
            resp.header = self.identity.header(resp.header);
            return Ok(resp);
        }
        let parts = rewrite::range_parts(&r);
        if parts.is_empty() {
            // Nothing the client may see; still answer at (and check) the asked revision.
            let probe = RangeRequest {
                key: APPLIED_KEY.to_vec(),
                count_only: true,
                revision: r.revision,
                serializable: r.serializable,
                ..Default::default()
            };
            let resp = self.etcd.kv().range(probe).await.map_err(errors::from_etcd)?.into_inner();
            return Ok(RangeResponse { header: self.identity.header(resp.header), ..Default::default() });
        }
        // All parts in one Txn: one revision for all of them.
        let success = parts.into_iter().map(|p| RequestOp { request: Some(ReqOp::RequestRange(p)) }).collect();
        let txn = TxnRequest { compare: vec![], success, failure: vec![] };
        let resp = self.etcd.kv().txn(txn).await.map_err(errors::from_etcd)?.into_inner();
        let ranges = resp
            .responses
            .into_iter()
            .filter_map(|op| match op.response {
                Some(RespOp::ResponseRange(r)) => Some(r),
                _ => None,
            })
            .collect();
        let mut merged = rewrite::merge_ranges(&r, ranges);
        merged.header = self.identity.header(resp.header);
        Ok(merged)
    }
}

/// etcd's rule: a read-only Txn is served serializably only if every operation in both branches
/// is a serializable Range.
fn txn_serializable(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).all(|op| matches!(&op.request, Some(ReqOp::RequestRange(r)) if r.serializable))
}

/// Marks every Range of a read-only Txn (nested ones included) serializable, once a read index
/// has linearized it.
fn make_serializable(t: &mut TxnRequest) {
    for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
        match &mut op.request {
            Some(ReqOp::RequestRange(r)) => r.serializable = true,
            Some(ReqOp::RequestTxn(nested)) => make_serializable(nested),
            _ => {}
        }
    }
}

#[tonic::async_trait]
impl Kv for KvFront {
    /// Clients' Ranges are served by [`super::range::KvRoutes`] without decoding etcd's answer;
    /// this decoded form is only reached when `KvServer` is mounted on its own.
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.0.check_read(&request, &request.get_ref().key, &request.get_ref().range_end)?;
        let r = self.0.prepare_range(request.into_inner()).await?;
        Ok(Response::new(self.0.read_range(r).await?))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let client = self.0.client_of(&request)?;
        let r = request.into_inner();
        validate::check_put(&r)?;
        match self.0.writes.submit(Op::Put(r), client).await? {
            OpResponse::Put(resp) => Ok(Response::new(resp)),
            _ => Err(unexpected()),
        }
    }

    async fn delete_range(&self, request: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        let client = self.0.client_of(&request)?;
        let r = request.into_inner();
        validate::check_delete(&r)?;
        match self.0.writes.submit(Op::DeleteRange(r), client).await? {
            OpResponse::DeleteRange(resp) => Ok(Response::new(resp)),
            _ => Err(unexpected()),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let client = self.0.client_of(&request)?;
        let r = request.into_inner();
        validate::check_txn(&r, self.0.max_txn_ops)?;
        if validate::txn_writes(&r) {
            return match self.0.writes.submit(Op::Txn(r), client).await? {
                OpResponse::Txn(resp) => Ok(Response::new(resp)),
                _ => Err(unexpected()),
            };
        }
        // A read-only Txn is answered here: etcd's permission check on its compares and reads.
        let user = client.map(|c| c.user).filter(|u| !u.is_empty());
        self.0.applier.rules().auth().check_txn(user.as_deref(), &r).map_err(errors::auth)?;
        let mut r = r;
        if !txn_serializable(&r) {
            self.0.linearize().await?;
            make_serializable(&mut r);
        }
        let (t, plan) = rewrite::plan_txn(&r);
        let resp = self.0.etcd.kv().txn(t).await.map_err(errors::from_etcd)?.into_inner();
        let revision = resp.header.as_ref().map(|h| h.revision).unwrap_or_default();
        let mut restored = rewrite::restore_txn(&plan, resp, revision);
        restored.header = self.0.identity.header(restored.header);
        Ok(Response::new(restored))
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let client = self.0.client_of(&request)?;
        match self.0.writes.submit(Op::Compact(request.into_inner()), client).await? {
            OpResponse::Compact(resp) => Ok(Response::new(resp)),
            _ => Err(unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(serializable: bool) -> RequestOp {
        RequestOp { request: Some(ReqOp::RequestRange(RangeRequest { key: b"k".to_vec(), serializable, ..Default::default() })) }
    }

    #[test]
    fn linearized_txn_is_read_serializably_at_every_depth() {
        let nested = TxnRequest { compare: vec![], success: vec![range(false)], failure: vec![range(false)] };
        let mut t = TxnRequest {
            compare: vec![],
            success: vec![range(false), RequestOp { request: Some(ReqOp::RequestTxn(nested)) }],
            failure: vec![range(true)],
        };
        assert!(!txn_serializable(&t));
        make_serializable(&mut t);
        let Some(ReqOp::RequestTxn(inner)) = &t.success[1].request else { panic!("nested txn lost") };
        assert!(txn_serializable(inner));
        assert!(matches!(&t.success[0].request, Some(ReqOp::RequestRange(r)) if r.serializable));
        assert!(matches!(&t.failure[0].request, Some(ReqOp::RequestRange(r)) if r.serializable));
    }
}
