//! Lease: grant, revoke and keepalive are ordered writes; TimeToLive and Leases read the local etcd.

use std::pin::Pin;
use std::sync::Arc;

use bftcd_proto::bftcd::operation::Request as Op;
use bftcd_proto::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::Front;
use crate::apply::OpResponse;
use crate::errors;

pub struct LeaseFront(pub Arc<Front>);

/// etcd's upper bound for a lease TTL in seconds.
const MAX_LEASE_TTL: i64 = 9_000_000_000;

fn unexpected() -> Status {
    Status::internal("bftcd: apply engine returned a response of the wrong kind")
}

#[tonic::async_trait]
impl Lease for LeaseFront {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let r = request.into_inner();
        if r.ttl > MAX_LEASE_TTL {
            return Err(errors::lease_ttl_too_large());
        }
        match self.0.writes.submit(Op::LeaseGrant(r)).await? {
            OpResponse::LeaseGrant(resp) => Ok(Response::new(resp)),
            _ => Err(unexpected()),
        }
    }

    async fn lease_revoke(&self, request: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        match self.0.writes.submit(Op::LeaseRevoke(request.into_inner())).await? {
            OpResponse::LeaseRevoke(resp) => Ok(Response::new(resp)),
            _ => Err(unexpected()),
        }
    }

    type LeaseKeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let front = self.0.clone();
        let out = async_stream::stream! {
            loop {
                match inbound.message().await {
                    Ok(Some(req)) => match front.writes.submit(Op::LeaseKeepAlive(req)).await {
                        Ok(OpResponse::LeaseKeepAlive(resp)) => yield Ok(resp),
                        Ok(_) => { yield Err(unexpected()); break; }
                        Err(s) => { yield Err(s); break; }
                    },
                    Ok(None) => break,
                    Err(s) => { yield Err(s); break; }
                }
            }
        };
        Ok(Response::new(Box::pin(out)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let mut r = self.0.etcd.lease().lease_time_to_live(request.into_inner()).await.map_err(errors::from_etcd)?.into_inner();
        r.header = self.0.identity.header(r.header);
        Ok(Response::new(r))
    }

    async fn lease_leases(&self, request: Request<LeaseLeasesRequest>) -> Result<Response<LeaseLeasesResponse>, Status> {
        let mut r = self.0.etcd.lease().lease_leases(request.into_inner()).await.map_err(errors::from_etcd)?.into_inner();
        r.header = self.0.identity.header(r.header);
        Ok(Response::new(r))
    }
}
