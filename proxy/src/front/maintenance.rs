//! Maintenance: per-bank operations pass to the local etcd (alarms, defragment, hashes,
//! snapshots); Status reports the emulated etcd version and BFTcd's own positions.

use std::pin::Pin;
use std::sync::Arc;

use bftcd_proto::etcdserverpb::{
    alarm_request::AlarmAction, maintenance_server::Maintenance, AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::Front;
use crate::errors;

pub struct MaintenanceFront(pub Arc<Front>);

/// Shortest time between two defragmentations of a bank's etcd on clients' request.
pub const DEFRAG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a snapshot waits for its client to take the next chunk.
const SNAPSHOT_STALL: std::time::Duration = std::time::Duration::from_secs(30);

#[tonic::async_trait]
impl Maintenance for MaintenanceFront {
    /// GET and DEACTIVATE as etcd; ACTIVATE is refused: an alarm raised at one bank's etcd
    /// (CORRUPT makes etcd refuse writes, NOSPACE stalls them) would stop that bank applying what
    /// every other bank applies. Alarms are raised by the bank itself, never by a client.
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let request = request.into_inner();
        if request.action() == AlarmAction::Activate {
            return Err(errors::permission_denied());
        }
        let mut r = self.0.etcd.maintenance().alarm(request).await.map_err(errors::from_etcd)?.into_inner();
        r.header = self.0.identity.header(r.header);
        // The hidden etcd's member id means nothing to clients; alarms belong to this bank.
        for a in &mut r.alarms {
            a.member_id = self.0.identity.member_id;
        }
        Ok(Response::new(r))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let up = self.0.etcd.maintenance().status(StatusRequest {}).await.map_err(errors::from_etcd)?.into_inner();
        let applied = (*self.0.applier.applied().borrow()).map(|p| p.height).unwrap_or_default();
        Ok(Response::new(StatusResponse {
            header: self.0.identity.header(up.header),
            // Kubernetes gates features on this version; BFTcd honours the semantics it promises.
            version: self.0.emulated_version.clone(),
            db_size: up.db_size,
            db_size_in_use: up.db_size_in_use,
            // With one bank it leads itself; with HotStuff-2, the current view's leader.
            leader: match &self.0.consensus {
                Some(c) => {
                    let leader = c.borrow().leader;
                    self.0.identity.members.get(leader).map(|m| m.id).unwrap_or_default()
                }
                None => self.0.identity.member_id,
            },
            raft_index: self.0.ledger.height(),
            raft_term: self.0.identity.term,
            raft_applied_index: applied,
            errors: up.errors,
            is_learner: false,
        }))
    }

    /// Passed to this bank's etcd (never ordered: every bank's etcd would stop at once), at most
    /// one at a time and one per [`DEFRAG_INTERVAL`]: etcd blocks its writes while it defragments,
    /// so a client calling it in a loop would stall this bank's apply. Others get etcd's
    /// `too many requests`.
    async fn defragment(&self, request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        self.0.require_admin(&request)?;
        let Ok(mut last) = self.0.defrag.try_lock() else { return Err(errors::too_many_requests()) };
        if last.is_some_and(|at| at.elapsed() < DEFRAG_INTERVAL) {
            return Err(errors::too_many_requests());
        }
        let started = std::time::Instant::now();
        let answer = self.0.etcd.maintenance().defragment(request.into_inner()).await;
        *last = Some(std::time::Instant::now());
        tracing::info!(took_ms = started.elapsed().as_millis() as u64, ok = answer.is_ok(), "maintenance: defragmented this bank's etcd");
        let mut r = answer.map_err(errors::from_etcd)?.into_inner();
        r.header = self.0.identity.header(r.header);
        Ok(Response::new(r))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.0.require_admin(&request)?;
        let mut r = self.0.etcd.maintenance().hash(request.into_inner()).await.map_err(errors::from_etcd)?.into_inner();
        r.header = self.0.identity.header(r.header);
        Ok(Response::new(r))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.0.require_admin(&request)?;
        let mut r = self.0.etcd.maintenance().hash_kv(request.into_inner()).await.map_err(errors::from_etcd)?.into_inner();
        r.header = self.0.identity.header(r.header);
        Ok(Response::new(r))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

    /// At most [`MAX_SNAPSHOTS`](super::MAX_SNAPSHOTS) at once, each on a connection to etcd of
    /// its own (a client that stops reading must not hold the shared connection's flow-control
    /// window), and closed with an error when its client takes nothing for [`SNAPSHOT_STALL`],
    /// so that a client cannot hold the slots by not reading.
    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        self.0.require_admin(&request)?;
        let slot = self.0.snapshots.clone().try_acquire_owned().map_err(|_| errors::too_many_requests())?;
        let etcd = self.0.etcd.dedicated().map_err(|e| Status::unavailable(e.to_string()))?;
        let mut upstream = etcd.maintenance().snapshot(request.into_inner()).await.map_err(errors::from_etcd)?.into_inner();
        let identity = self.0.identity.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stall = stalled.clone();
        tokio::spawn(async move {
            let _slot = slot;
            while let Some(item) = upstream.next().await {
                let item = item
                    .map(|mut r: SnapshotResponse| {
                        r.header = identity.header(r.header);
                        r
                    })
                    .map_err(errors::from_etcd);
                match tx.send_timeout(item, SNAPSHOT_STALL).await {
                    Ok(()) => {}
                    Err(tokio::sync::mpsc::error::SendTimeoutError::Timeout(_)) => {
                        stall.store(true, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                    Err(_) => break,
                }
            }
        });
        let out = async_stream::stream! {
            while let Some(item) = rx.recv().await {
                yield item;
            }
            // Ending without an error would pass a truncated snapshot off as complete.
            if stalled.load(std::sync::atomic::Ordering::Relaxed) {
                yield Err(Status::unavailable("bftcd: snapshot stream closed: the client read nothing for 30 s"));
            }
        };
        Ok(Response::new(Box::pin(out)))
    }

    async fn move_leader(&self, _request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(errors::unsupported("leaders rotate every view under HotStuff-2; MoveLeader has nothing to move"))
    }

    async fn downgrade(&self, _request: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Err(errors::unsupported("downgrade is done per bank on its stock etcd, not through the sidecar"))
    }
}
