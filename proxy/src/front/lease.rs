//! Lease: grant, revoke and keepalive are ordered writes; TimeToLive and Leases answer from the
//! replicated lease table (see `apply::leases`), the attached keys from the local etcd.

use std::pin::Pin;
use std::sync::Arc;

use bftcd_proto::bftcd::{operation::Request as Op, ClientIdentity};
use bftcd_proto::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest,
    LeaseStatus, LeaseTimeToLiveResponse,
};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::Front;
use crate::apply::OpResponse;
use crate::errors;

pub struct LeaseFront(pub Arc<Front>);

use crate::apply::leases::MAX_TTL as MAX_LEASE_TTL;

fn unexpected() -> Status {
    Status::internal("bftcd: apply engine returned a response of the wrong kind")
}

#[tonic::async_trait]
impl Lease for LeaseFront {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let client = self.0.client_of(&request)?;
        let r = request.into_inner();
        if r.ttl > MAX_LEASE_TTL {
            return Err(errors::lease_ttl_too_large());
        }
        match self.0.writes.submit(Op::LeaseGrant(r), client).await? {
            OpResponse::LeaseGrant(resp) => Ok(Response::new(resp)),
            _ => Err(unexpected()),
        }
    }

    async fn lease_revoke(&self, request: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        let client = self.0.client_of(&request)?;
        let user = client.as_ref().map(|c| c.user.as_str()).filter(|u| !u.is_empty());
        self.0.check_lease_keys(user, request.get_ref().id, true).await?;
        match self.0.writes.submit(Op::LeaseRevoke(request.into_inner()), client).await? {
            OpResponse::LeaseRevoke(resp) => Ok(Response::new(resp)),
            _ => Err(unexpected()),
        }
    }

    type LeaseKeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let client = self.0.client_of(&request)?;
        let mut inbound = request.into_inner();
        let front = self.0.clone();
        let out = async_stream::stream! {
            loop {
                match inbound.message().await {
                    Ok(Some(req)) => match front.keep_alive(req, client.clone()).await {
                        Ok(resp) => yield Ok(resp),
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
        let user = self.0.auth_user(&request)?;
        let r = request.into_inner();
        // etcd answers from its leader, so the answer reflects every grant, keepalive and
        // attachment acknowledged before: the same read index as a linearizable Range.
        self.0.linearize().await?;
        self.0.check_lease_keys(user.as_deref(), r.id, false).await?;
        let header = self.0.current_header().await?;
        let Some(lease) = self.0.applier.lease(r.id) else {
            // etcd's answer for a lease that does not exist (etcdctl prints "already expired").
            return Ok(Response::new(LeaseTimeToLiveResponse { header, id: r.id, ttl: -1, ..Default::default() }));
        };
        // Remaining time by this bank's clock against the agreed deadline; only expiry itself
        // needs agreement.
        let remaining_ms = lease.deadline_ms.saturating_sub(super::now_ms());
        let mut keys = vec![];
        if r.keys {
            // The local etcd's copy of the lease carries the same attachments on every bank.
            let local = self.0.etcd.lease().lease_time_to_live(r).await.map_err(errors::from_etcd)?.into_inner();
            keys = local.keys.into_iter().filter(|k| !crate::reserved::is_reserved(k)).collect();
        }
        Ok(Response::new(LeaseTimeToLiveResponse {
            header,
            id: r.id,
            ttl: (remaining_ms / 1000) as i64,
            granted_ttl: lease.granted_ttl,
            keys,
        }))
    }

    async fn lease_leases(&self, _request: Request<LeaseLeasesRequest>) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.0.linearize().await?;
        let header = self.0.current_header().await?;
        let leases = self.0.applier.lease_ids().into_iter().map(|id| LeaseStatus { id }).collect();
        Ok(Response::new(LeaseLeasesResponse { header, leases }))
    }
}

/// A keepalive being ordered, shared by every keepalive of the same lease that arrives meanwhile.
pub type KeepAliveInFlight = Shared<BoxFuture<'static, Result<LeaseKeepAliveResponse, Status>>>;

impl super::Front {
    /// Renews a lease through ordering. Keepalives of one lease that arrive while one is being
    /// ordered (several clients, or a client retrying) ride on it instead of each becoming a
    /// committed operation; the renewal they get is at most one commit older than their arrival.
    async fn keep_alive(self: &Arc<Self>, req: LeaseKeepAliveRequest, client: Option<ClientIdentity>) -> Result<LeaseKeepAliveResponse, Status> {
        let key = (req.id, client.clone());
        let shared = {
            let mut inflight = self.keep_alives.lock().unwrap();
            inflight
                .entry(key.clone())
                .or_insert_with(|| {
                    let front = self.clone();
                    async move {
                        match front.writes.submit(Op::LeaseKeepAlive(req), client).await? {
                            OpResponse::LeaseKeepAlive(resp) => Ok(resp),
                            _ => Err(unexpected()),
                        }
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let result = shared.clone().await;
        let mut inflight = self.keep_alives.lock().unwrap();
        if inflight.get(&key).is_some_and(|f| f.ptr_eq(&shared)) {
            inflight.remove(&key);
        }
        result
    }

    /// etcd's permission check for a lease call: every key attached to the lease must be
    /// readable (TimeToLive) or writable (Revoke, which deletes them) by the user. Made here,
    /// before ordering, from this bank's etcd: the attached keys are etcd's state, which a
    /// replay of the ledger cannot reconstruct, so no bank checks them again at apply.
    pub async fn check_lease_keys(&self, user: Option<&str>, id: i64, write: bool) -> Result<(), Status> {
        let rules = self.applier.rules();
        let auth = rules.auth();
        if !auth.enabled() || auth.check_admin(user).is_ok() {
            return Ok(());
        }
        let keys = match self.etcd.lease().lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true }).await {
            Ok(r) => r.into_inner().keys,
            Err(s) if s.message() == errors::lease_not_found().message() => Vec::new(),
            Err(s) => return Err(errors::from_etcd(s)),
        };
        for k in keys.iter().filter(|k| !crate::reserved::is_reserved(k)) {
            auth.check_range(user, k, b"", write).map_err(errors::auth)?;
        }
        Ok(())
    }

    /// This bank's header at the local etcd's current revision.
    pub async fn current_header(&self) -> Result<Option<bftcd_proto::etcdserverpb::ResponseHeader>, Status> {
        let h = self.applier.current_header().await.map_err(errors::from_etcd)?;
        Ok(self.identity.header(h))
    }
}
