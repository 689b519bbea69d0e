//! Health: what `/health`, `/livez` and `/readyz` on the metrics listener and
//! `grpc.health.v1.Health` on the client port answer, and the sampler that exports the
//! sequencer's counters as metrics.
//!
//! Once a second the sampler reads what consensus, the network, the ledger and the apply engine
//! already count (the consensus core keeps no globals; its driver publishes a
//! [`ConsensusStatus`]) and sets the gauges and counters from it, then evaluates the checks:
//!
//! * `data_corruption`: the etcd CORRUPT alarm is not raised ([`crate::corrupt`]).
//! * `serializable_read`: a serializable Range on the local etcd answers.
//! * `linearizable_read`: ordering makes progress, so read indexes and writes are served: at
//!   least a quorum of banks (this one included) connected, and fewer than
//!   [`STUCK_TIMEOUTS`] views given up on since the last new certificate (an idle chain runs no
//!   view timers, so it never counts up).
//! * `caught_up`: the applied height is at most [`MAX_APPLY_LAG`] blocks behind the highest
//!   height this bank knows certified: by a QC it verified, or reached by at least one honest
//!   peer (the (f+1)-th highest of the peers' claims, see `ConsensusStatus::peers_height`).
//!
//! Ready iff all pass; live iff `serializable_read` passes (etcd's `/livez` check). Until the
//! sampler first runs (the sidecar is replaying its ledger) the bank is live but not ready.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bftcd_proto::etcdserverpb::RangeRequest;
use bftcd_proto::grpc_health::health_check_response::ServingStatus;
use bftcd_proto::grpc_health::health_server::{Health as HealthService, HealthServer};
use bftcd_proto::grpc_health::{HealthCheckRequest, HealthCheckResponse};
use bftcd_sequencer::hotstuff::ConsensusStatus;
use bftcd_sequencer::net::Network;
use bftcd_sequencer::Ledger;
use tokio::sync::watch;

use crate::etcd::LocalEtcd;

/// Views given up on without a new certificate before ordering counts as stuck.
pub const STUCK_TIMEOUTS: u64 = 3;
/// Blocks the apply engine may be behind the certified height and still be ready.
pub const MAX_APPLY_LAG: u64 = 256;

/// One check's outcome: its name and, when it failed, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub ready: Vec<Check>,
    pub live: Vec<Check>,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        self.ready.iter().all(|c| c.error.is_none())
    }
}

/// Process-wide, like the metrics recorder: the listener starts before the bank does.
static STATE: LazyLock<watch::Sender<Health>> = LazyLock::new(|| {
    watch::Sender::new(Health {
        ready: vec![Check { name: "started", error: Some("the sidecar is starting (replaying its ledger into the local etcd)".into()) }],
        live: vec![Check { name: "started", error: None }],
    })
});

pub fn current() -> Health {
    STATE.borrow().clone()
}

pub fn subscribe() -> watch::Receiver<Health> {
    STATE.subscribe()
}

/// What the sampler reads.
pub struct Sources {
    /// With several banks: consensus and the peer network.
    pub consensus: Option<(watch::Receiver<ConsensusStatus>, Network)>,
    pub banks: usize,
    /// Validator names (genesis order), for the per-peer labels.
    pub names: Vec<String>,
    pub ledger: Arc<Ledger>,
    pub applied: watch::Receiver<u64>,
    pub etcd: LocalEtcd,
}

/// Runs until the process ends.
pub async fn run(sources: Sources) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let serializable = serializable_read(&sources.etcd).await;
        let health = sample(&sources, serializable);
        metrics::gauge!("bftcd_ready").set(if health.is_ready() { 1.0 } else { 0.0 });
        STATE.send_if_modified(|h| {
            let changed = *h != health;
            if changed && h.is_ready() != health.is_ready() {
                let failed: Vec<String> =
                    health.ready.iter().filter_map(|c| c.error.as_ref().map(|e| format!("{}: {e}", c.name))).collect();
                match health.is_ready() {
                    true => tracing::info!("health: ready"),
                    false => tracing::warn!(failed = ?failed, "health: not ready"),
                }
            }
            *h = health;
            changed
        });
    }
}

async fn serializable_read(etcd: &LocalEtcd) -> Option<String> {
    let req = RangeRequest { key: vec![0], keys_only: true, limit: 1, serializable: true, ..Default::default() };
    match tokio::time::timeout(Duration::from_secs(2), etcd.kv().range(req)).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("range error: {}", e.message())),
        Err(_) => Some("range error: no answer from the local etcd within 2 s".into()),
    }
}

/// Sets the metrics from the sources and evaluates the checks.
fn sample(s: &Sources, serializable: Option<String>) -> Health {
    let applied = *s.applied.borrow();
    let committed = s.ledger.committed_height();
    let mut ordering = None;
    let mut certified = committed;
    if let Some((status, net)) = &s.consensus {
        let st = status.borrow().clone();
        let stats = net.stats();
        certified = st.certified_height.max(st.peers_height).max(committed);
        metrics::gauge!("bftcd_view").set(st.view as f64);
        metrics::gauge!("bftcd_leader").set(st.leader as f64);
        metrics::gauge!("bftcd_mempool_operations").set(st.mempool as f64);
        metrics::gauge!("bftcd_mempool_bytes").set(st.mempool_bytes as f64);
        metrics::counter!("bftcd_views_timed_out_total").absolute(st.views_timed_out);
        metrics::counter!("bftcd_leader_changes_total").absolute(st.leader_changes);
        metrics::counter!("bftcd_forwarded_batches_total").absolute(st.forwarded_batches);
        metrics::counter!("bftcd_evidence_total").absolute(st.evidence);
        let inbound_full: u64 = stats.peers.iter().map(|p| p.inbound_dropped).sum();
        for (reason, v) in [
            ("unverified", st.refused_unverified),
            ("invalid", st.refused_invalid),
            ("backlog_full", st.refused_backlog_full),
            ("malformed_frame", stats.malformed_frames),
            ("inbound_queue_full", inbound_full),
        ] {
            metrics::counter!("bftcd_peer_messages_refused_total", "reason" => reason).absolute(v);
        }
        metrics::counter!("bftcd_peer_connections_refused_total").absolute(stats.rejected_connections);
        let mismatches: u64 = stats.peers.iter().map(|p| p.genesis_mismatches).sum();
        metrics::counter!("bftcd_peer_genesis_mismatches_total").absolute(mismatches);
        let me = net.me();
        let mut connected = 0;
        for p in stats.peers.iter().filter(|p| p.index != me) {
            let up = p.connected || p.inbound_connected;
            connected += up as usize;
            let name = s.names.get(p.index as usize).cloned().unwrap_or_else(|| p.index.to_string());
            metrics::gauge!("bftcd_peer_connected", "peer" => name).set(if up { 1.0 } else { 0.0 });
        }
        metrics::gauge!("etcd_server_is_leader").set(if st.leader == me as usize { 1.0 } else { 0.0 });
        ordering = ordering_stuck(s.banks, connected, st.timeouts_since_certificate);
    }
    let has_leader = ordering.is_none();
    metrics::gauge!("etcd_server_has_leader").set(if has_leader { 1.0 } else { 0.0 });
    metrics::counter!("etcd_server_proposals_committed_total").absolute(committed);
    metrics::counter!("etcd_server_proposals_applied_total").absolute(applied);
    metrics::gauge!("bftcd_certified_height").set(certified as f64);
    metrics::gauge!("bftcd_committed_height").set(committed as f64);
    metrics::gauge!("bftcd_applied_height").set(applied as f64);
    let behind = certified.saturating_sub(applied);
    let caught_up =
        (behind > MAX_APPLY_LAG).then(|| format!("applied height {applied} is {behind} blocks behind the certified height {certified}"));
    let corruption = crate::corrupt::is_corrupt().then(|| "alarm activated: CORRUPT".to_string());
    Health {
        ready: vec![
            Check { name: "data_corruption", error: corruption },
            Check { name: "serializable_read", error: serializable.clone() },
            Check { name: "linearizable_read", error: ordering },
            Check { name: "caught_up", error: caught_up },
        ],
        live: vec![Check { name: "serializable_read", error: serializable }],
    }
}

/// Why ordering cannot make progress, if it cannot: fewer than a quorum (n − f, this bank
/// included) connected, or [`STUCK_TIMEOUTS`] views given up on since the last certificate.
fn ordering_stuck(banks: usize, connected: usize, timeouts_since_certificate: u64) -> Option<String> {
    if banks <= 1 {
        return None;
    }
    let f = (banks - 1) / 3;
    let needed = banks - f - 1;
    if connected < needed {
        Some(format!("{connected} of {} other banks connected; ordering needs {needed}", banks - 1))
    } else if timeouts_since_certificate >= STUCK_TIMEOUTS {
        Some(format!("{timeouts_since_certificate} views timed out since the last certificate"))
    } else {
        None
    }
}

/// `grpc.health.v1.Health` on the client port: the server (service `""`) is SERVING iff ready.
#[derive(Clone, Copy, Default)]
pub struct GrpcHealth;

impl GrpcHealth {
    pub fn server() -> HealthServer<GrpcHealth> {
        HealthServer::new(GrpcHealth)
    }
}

fn status_of(h: &Health) -> ServingStatus {
    if h.is_ready() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

type WatchStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<HealthCheckResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl HealthService for GrpcHealth {
    async fn check(&self, request: tonic::Request<HealthCheckRequest>) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        if !request.get_ref().service.is_empty() {
            return Err(tonic::Status::not_found("unknown service"));
        }
        Ok(tonic::Response::new(HealthCheckResponse { status: status_of(&current()) as i32 }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: tonic::Request<HealthCheckRequest>) -> Result<tonic::Response<WatchStream>, tonic::Status> {
        if !request.get_ref().service.is_empty() {
            let unknown = HealthCheckResponse { status: ServingStatus::ServiceUnknown as i32 };
            let s = async_stream::stream! {
                yield Ok(unknown);
                std::future::pending::<()>().await;
            };
            return Ok(tonic::Response::new(Box::pin(s)));
        }
        let mut rx = subscribe();
        let s = async_stream::stream! {
            // The current status first, then every change of it (not every change of a reason).
            let mut last = status_of(&rx.borrow_and_update());
            yield Ok(HealthCheckResponse { status: last as i32 });
            while rx.changed().await.is_ok() {
                let now = status_of(&rx.borrow_and_update());
                if now != last {
                    last = now;
                    yield Ok(HealthCheckResponse { status: now as i32 });
                }
            }
        };
        Ok(tonic::Response::new(Box::pin(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passes() {
        let ok = |name| Check { name, error: None };
        let mut h = Health { ready: vec![ok("a"), ok("b")], live: vec![] };
        assert!(h.is_ready());
        assert_eq!(status_of(&h), ServingStatus::Serving);
        h.ready[1].error = Some("no".into());
        assert!(!h.is_ready());
        assert_eq!(status_of(&h), ServingStatus::NotServing);
    }

    #[test]
    fn ordering_is_stuck_without_a_quorum_or_certificates() {
        // Four banks: this one and two others are a quorum.
        assert_eq!(ordering_stuck(4, 3, 0), None);
        assert_eq!(ordering_stuck(4, 2, 2), None);
        assert_eq!(ordering_stuck(4, 1, 0).as_deref(), Some("1 of 3 other banks connected; ordering needs 2"));
        assert_eq!(ordering_stuck(4, 3, 3).as_deref(), Some("3 views timed out since the last certificate"));
        // Seven banks (f = 2): four others needed.
        assert!(ordering_stuck(7, 4, 0).is_none() && ordering_stuck(7, 3, 0).is_some());
        assert_eq!(ordering_stuck(1, 0, 9), None);
    }

    #[test]
    fn a_bank_is_not_ready_before_it_serves() {
        assert!(!current().is_ready());
        assert!(current().live.iter().all(|c| c.error.is_none()));
    }
}
