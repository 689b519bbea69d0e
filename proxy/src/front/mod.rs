//! The etcd v3 gRPC front: every service a stock etcd client calls.
//!
//! Writes are validated here and then go through [`Writes::submit`]; reads, watches and
//! maintenance go to the local etcd, with reserved keys hidden and headers rewritten.

pub mod answers;
mod auth;
mod cluster;
pub mod conns;
pub mod gateway;
pub mod grpc_metrics;
mod kv;
mod lease;
pub mod limits;
mod maintenance;
mod range;
pub mod tokens;
pub mod tls;
mod watch;

use std::sync::Arc;

use bftcd_proto::bftcd::ClientIdentity;
use bftcd_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use bftcd_sequencer::cpu::{self, AccountedExt};
use bftcd_sequencer::{Ledger, Sequencer};
use tonic::service::RoutesBuilder;
use tonic::Status;

use crate::apply::Applier;
use crate::errors;
use crate::etcd::LocalEtcd;
use crate::identity::Identity;
use crate::writes::Writes;

/// Snapshots a bank streams at once; more get etcd's `too many requests`.
pub const MAX_SNAPSHOTS: usize = 2;

/// What every service of the front shares.
pub struct Front {
    pub etcd: LocalEtcd,
    pub writes: Writes,
    pub identity: Arc<Identity>,
    pub ledger: Arc<Ledger>,
    pub applier: Arc<Applier>,
    pub sequencer: Arc<dyn Sequencer>,
    /// How long a linearizable read may wait for its read index and the local apply.
    pub read_timeout: std::time::Duration,
    /// Test builds only: serve linearizable reads without a read index.
    pub stale_reads: bool,
    /// Keyed by lease and client, so that a coalesced keepalive names the client that sent it.
    pub keep_alives: std::sync::Mutex<std::collections::HashMap<(i64, Option<ClientIdentity>), lease::KeepAliveInFlight>>,
    pub max_txn_ops: usize,
    pub emulated_version: String,
    /// gRPC's own receive limit; etcd allows 512 KiB of framing on top of max-request-bytes.
    pub max_recv_bytes: usize,
    /// HotStuff-2's view of things, when ordering with several banks.
    pub consensus: Option<tokio::sync::watch::Receiver<bftcd_sequencer::hotstuff::ConsensusStatus>>,
    /// When a client's defragmentation last finished; held while one runs.
    pub defrag: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// Snapshots streaming at once; each holds a connection to etcd and an etcd read
    /// transaction (which keeps etcd from reusing freed pages) for as long as its client reads.
    pub snapshots: Arc<tokio::sync::Semaphore>,
    /// This bank's auth tokens.
    pub tokens: tokens::Tokens,
}

impl Front {
    /// The etcd user a request acts as while auth is enabled: its token's, else its client
    /// certificate's CN (as etcd 3.5). None while auth is off, or for a client with neither;
    /// a token this bank did not issue, or that expired, gets etcd's `invalid auth token`.
    pub fn auth_user<T>(&self, request: &tonic::Request<T>) -> Result<Option<String>, Status> {
        if !self.applier.rules().auth().enabled() {
            return Ok(None);
        }
        if let Some(token) = request.metadata().get("token").and_then(|t| t.to_str().ok()) {
            return match self.tokens.user(token) {
                Some(user) => Ok(Some(user)),
                None => Err(errors::auth(bftcd_sequencer::auth::AuthError::InvalidToken)),
            };
        }
        Ok(request.extensions().get::<conns::ClientConnInfo>().and_then(|c| c.certificate_cn.clone()))
    }

    /// Who the client of `request` is, as this bank authenticated it (None: nobody).
    pub fn client_of<T>(&self, request: &tonic::Request<T>) -> Result<Option<ClientIdentity>, Status> {
        let user = self.auth_user(request)?.unwrap_or_default();
        let cn = request.extensions().get::<conns::ClientConnInfo>().and_then(|c| c.certificate_cn.clone()).unwrap_or_default();
        Ok((!cn.is_empty() || !user.is_empty()).then_some(ClientIdentity { certificate_cn: cn, user }))
    }

    /// etcd's read permission check for `[key, range_end)`.
    pub fn check_read<T>(&self, request: &tonic::Request<T>, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        let user = self.auth_user(request)?;
        self.applier.rules().auth().check_range(user.as_deref(), key, range_end, false).map_err(errors::auth)
    }

    /// Admin-only maintenance calls once auth is enabled. etcd 3.5 refuses these with its
    /// auth store's own error, `auth: ...` and code Unknown, not the `etcdserver:` form.
    pub fn require_admin<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        let user = self.auth_user(request)?;
        self.applier.rules().auth().check_admin(user.as_deref()).map_err(|e| {
            let text = e.text().strip_prefix("etcdserver: ").unwrap_or(e.text());
            Status::unknown(format!("auth: {text}"))
        })
    }

    /// Makes a linearizable read safe to serve from the local etcd: gets a read index agreed
    /// with a quorum of banks, then waits until this bank has applied every block up to it. A
    /// bank that is behind waits; one cut off from a quorum times out rather than answer.
    pub async fn linearize(&self) -> Result<(), Status> {
        if self.stale_reads {
            return Ok(());
        }
        let wait = async {
            let started = std::time::Instant::now();
            let index = self.sequencer.read_index().await.map_err(|_| errors::no_leader())?;
            metrics::histogram!("bftcd_read_index_duration_seconds").record(started.elapsed().as_secs_f64());
            let mut applied = self.applier.applied_height();
            while *applied.borrow_and_update() < index {
                applied.changed().await.map_err(|_| errors::no_leader())?;
            }
            Ok(())
        };
        tokio::time::timeout(self.read_timeout, wait).await.map_err(|_| errors::timeout())?
    }

    pub fn routes(self: Arc<Self>) -> tonic::service::Routes {
        let max = self.max_recv_bytes;
        let mut b = RoutesBuilder::default();
        b.add_service(range::KvRoutes::new(self.clone()))
            .add_service(WatchServer::new(watch::WatchFront(self.clone())).max_decoding_message_size(max))
            .add_service(LeaseServer::new(lease::LeaseFront(self.clone())).max_decoding_message_size(max))
            .add_service(ClusterServer::new(cluster::ClusterFront(self.clone())).max_decoding_message_size(max))
            .add_service(MaintenanceServer::new(maintenance::MaintenanceFront(self.clone())).max_decoding_message_size(max))
            .add_service(AuthServer::new(auth::AuthFront(self.clone())).max_decoding_message_size(max))
            .add_service(crate::health::GrpcHealth::server());
        b.routes()
    }
}

/// Charges every client request's polls to [`cpu::Component::Front`] (a tower layer on the gRPC
/// server, so every service is covered; the HTTP/2 framing itself runs in the connection tasks
/// and stays unattributed).
#[derive(Clone, Copy, Default)]
pub struct FrontCpu;

impl<S> tower::Layer<S> for FrontCpu {
    type Service = FrontCpuService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FrontCpuService(inner)
    }
}

#[derive(Clone)]
pub struct FrontCpuService<S>(S);

impl<S: tower::Service<R>, R> tower::Service<R> for FrontCpuService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = cpu::Accounted<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let _cpu = cpu::section(cpu::Component::Front);
        self.0.call(request).accounted(cpu::Component::Front)
    }
}

/// This bank's wall clock in ms; used only for answers, never for what is written.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
