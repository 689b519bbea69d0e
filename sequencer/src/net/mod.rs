//! Peer transport among validators: TCP with rustls mutual TLS 1.3 and length-prefixed frames.
//!
//! Each node dials every other validator and sends to it only over that outbound connection;
//! connections a node accepts are only read from. A peer's identity is the exact leaf
//! certificate listed for it in genesis ([`PeerInfo::cert_der`]), never anything it claims.
//!
//! Outbound messages wait in a bounded per-peer queue that survives reconnects; when it is full,
//! [`Network::send`] drops the oldest message and counts it (see `queue.rs` for why the oldest).
//! `send` never waits, so the consensus task is never blocked by a slow or silent peer. Inbound
//! frames are delivered as `(from_index, payload)` through the [`InboundReceiver`] returned by
//! [`Network::start`]: each peer has its own bounded inbound queue, drained round-robin, so one
//! peer's flood does not delay the others' messages (see `inbox.rs`, also for why a full queue
//! drops its oldest message).
//!
//! Before a connection is authenticated it holds one of [`MAX_PENDING_HANDSHAKES`] slots, and at
//! most [`MAX_HANDSHAKES_PER_SOURCE`] of them per source address, for at most
//! [`HANDSHAKE_TIMEOUT`]: anyone who reaches the port can hold a few slots, but connections from
//! one address cannot keep a peer connecting from another one out. Connections from a listed
//! peer's address take no shared slot (only its per-source ones), so strangers holding all the
//! shared slots from many addresses cannot keep a bank out either, as long as it dials from the
//! address it is listed with.
//!
//! # Liveness of connections (peer protocol `bftcd-peer/2`)
//!
//! A peer that vanishes silently (packets dropped, no RST) would otherwise leave a connection
//! looking alive for many minutes of TCP retransmissions. So both ends of every connection
//! watch it, with the defaults of [`Keepalive`]:
//!
//! - The dialer sends a ping (a zero-length frame) whenever it has written nothing for
//!   `ping_interval` (1 s); the acceptor, which otherwise never writes, pings every
//!   `ping_interval` back.
//! - Each end reads with an idle deadline: no byte for `idle_timeout` (3 s) closes the
//!   connection. A large frame may take longer than that as long as bytes keep arriving.
//! - Every write (in chunks of 64 KiB) and flush has a deadline, `write_timeout` (10 s), so a
//!   peer that keeps the connection open but stops reading is noticed too (its queue keeps only
//!   the newest messages meanwhile).
//! - The dialer reconnects with a backoff from 100 ms, doubling, capped at `reconnect_max`
//!   (1 s), ±15 % jitter, and paces attempts by their start. While a TCP connect hangs on a cut
//!   link (its SYN lost, resent by the kernel only after 1 s), a fresh one starts every 200 ms,
//!   up to `connect_timeout` (2 s); then the next round starts at once. So after a cut heals a
//!   connection is back within about 200 ms plus a round trip.
//!
//! Pings change the framing (version 1 treated a zero length as a violation), so the version is
//! negotiated with TLS ALPN ([`PEER_PROTOCOL`]); a peer that does not offer it is refused at the
//! handshake, with the reason logged, instead of being cut off at its first ping.

mod conn;
mod frame;
mod inbox;
pub mod pki;
mod queue;
mod stats;
mod tls;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use queue::PeerQueue;
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

pub use frame::{decode_frame, encode_header, FrameDecode, FrameError, HEADER_LEN};
pub use inbox::InboundReceiver;
use inbox::{Inbox, PushError};
pub use pki::{DevCa, Issued, PkiError};
pub use stats::{NetStats, PeerStats};
pub use tls::check_certificate;
use crate::cpu::{AccountedExt, Component};

/// Default [`NetConfig::max_frame_bytes`]: 16 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;
/// Default [`NetConfig::queue_per_peer`].
pub const DEFAULT_QUEUE_PER_PEER: usize = 4096;
/// Default [`NetConfig::queue_bytes_per_peer`]: 64 MiB (four largest frames).
pub const DEFAULT_QUEUE_BYTES_PER_PEER: usize = 64 << 20;
/// Default [`NetConfig::inbound_per_peer`].
pub const DEFAULT_INBOUND_PER_PEER: usize = 4096;
/// Default [`NetConfig::inbound_bytes_per_peer`]: 32 MiB (two largest frames), so all peers
/// together hold at most n times that before the check stage takes it.
pub const DEFAULT_INBOUND_BYTES_PER_PEER: usize = 32 << 20;
/// Limit for TCP connect plus TLS handshake, both directions.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The peer protocol spoken on every connection, negotiated with TLS ALPN. Version 2 added
/// keepalive pings (zero-length frames); version 3 the hello (see [`conn`]'s `hello`): each
/// side's first frame is its genesis hash, and a connection between banks of different geneses
/// is closed before any message passes.
pub const PEER_PROTOCOL: &[u8] = b"bftcd-peer/3";

/// Timers that notice a silent or stuck peer and bring the connection back (see the module
/// documentation). Invariants checked at start: all positive, `ping_interval < idle_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// The dialer pings after writing nothing for this long; the acceptor pings this often.
    pub ping_interval: Duration,
    /// A connection on which no byte arrived for this long is closed.
    pub idle_timeout: Duration,
    /// A write or flush that makes no progress for this long closes the connection.
    pub write_timeout: Duration,
    /// Limit for one TCP connect (the TLS handshake has [`HANDSHAKE_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// Largest pause between reconnect attempts.
    pub reconnect_max: Duration,
}

impl Default for Keepalive {
    fn default() -> Keepalive {
        Keepalive {
            ping_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3),
            write_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            reconnect_max: Duration::from_secs(1),
        }
    }
}
/// Inbound handshakes in progress at once; further connections are refused until one finishes.
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// Inbound handshakes in progress at once from one source address (an IPv4 address, or an IPv6
/// /64, the least one host usually gets). Peers dial each other once, so an honest address has
/// one handshake in progress per bank behind it; beyond this, connections are refused.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 4;

/// One validator as listed in genesis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub index: u32,
    /// Its name in the genesis (for logs).
    pub name: String,
    /// `host:port` to dial.
    pub address: String,
    /// The validator's certificate (DER) pinned in the genesis; its identity on the wire.
    pub cert_der: Vec<u8>,
}

/// Transport configuration.
#[derive(Clone)]
pub struct NetConfig {
    /// My validator index.
    pub me: u32,
    /// Where I accept peers (ignored by [`Network::start_with_listener`]).
    pub listen: SocketAddr,
    /// All validators including me.
    pub peers: Vec<PeerInfo>,
    /// The hash of this bank's genesis: exchanged in the hello, a peer with another is refused.
    pub genesis_hash: [u8; 32],
    /// My certificate (PEM, the one pinned in the genesis) and private key (PEM).
    pub my_cert_pem: String,
    pub my_key_pem: String,
    /// Largest accepted or sent payload.
    pub max_frame_bytes: usize,
    /// Outbound messages buffered per peer; beyond it the oldest are dropped.
    pub queue_per_peer: usize,
    /// Outbound payload bytes buffered per peer; beyond it the oldest are dropped. At least
    /// `max_frame_bytes`.
    pub queue_bytes_per_peer: usize,
    /// Inbound messages buffered per peer until the receiver takes them; beyond it that peer's
    /// oldest are dropped.
    pub inbound_per_peer: usize,
    /// Inbound payload bytes buffered per peer; at least `max_frame_bytes`.
    pub inbound_bytes_per_peer: usize,
    /// Keepalive, deadlines and reconnection.
    pub keepalive: Keepalive,
}

impl NetConfig {
    /// A configuration with default limits.
    pub fn new(
        me: u32,
        listen: SocketAddr,
        peers: Vec<PeerInfo>,
        genesis_hash: [u8; 32],
        my_cert_pem: String,
        my_key_pem: String,
    ) -> NetConfig {
        NetConfig {
            me,
            listen,
            peers,
            genesis_hash,
            my_cert_pem,
            my_key_pem,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            queue_per_peer: DEFAULT_QUEUE_PER_PEER,
            queue_bytes_per_peer: DEFAULT_QUEUE_BYTES_PER_PEER,
            inbound_per_peer: DEFAULT_INBOUND_PER_PEER,
            inbound_bytes_per_peer: DEFAULT_INBOUND_BYTES_PER_PEER,
            keepalive: Keepalive::default(),
        }
    }
}

impl std::fmt::Debug for NetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetConfig")
            .field("me", &self.me)
            .field("listen", &self.listen)
            .field(
                "peers",
                &self
                    .peers
                    .iter()
                    .map(|p| (p.index, &p.address))
                    .collect::<Vec<_>>(),
            )
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("queue_per_peer", &self.queue_per_peer)
            .field("queue_bytes_per_peer", &self.queue_bytes_per_peer)
            .field("inbound_per_peer", &self.inbound_per_peer)
            .field("inbound_bytes_per_peer", &self.inbound_bytes_per_peer)
            .field("keepalive", &self.keepalive)
            .finish_non_exhaustive()
    }
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid network configuration: {0}")]
    Config(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// State shared with the background tasks (which never hold the [`Network`] itself, so dropping
/// every handle aborts them).
pub(crate) struct Shared {
    me: u32,
    max_frame: usize,
    keepalive: Keepalive,
    counters: stats::Counters,
    /// Position of a validator index in `counters.peers`.
    slot_of: HashMap<u32, usize>,
    /// Leaf DER → validator index.
    by_cert: Arc<HashMap<Vec<u8>, u32>>,
    /// Validator index → name, for logs.
    names: HashMap<u32, String>,
    /// This bank's genesis hash, sent and compared in the hello.
    genesis_hash: [u8; 32],
    acceptor: TlsAcceptor,
    handshakes: Arc<Semaphore>,
    /// Sources (see [`source_key`]) of the listed peers' addresses: their handshakes take no
    /// shared slot, so strangers holding every shared slot from many addresses cannot keep a
    /// bank that dials from the address it is listed with out.
    peer_sources: HashSet<IpAddr>,
    /// Handshakes in progress per source (see [`source_key`]).
    pending_by_source: Mutex<HashMap<IpAddr, usize>>,
    /// Rate limit for the warning about refused connections: when it was last given and how
    /// many refusals were only logged at debug since.
    refusal_warning: Mutex<(Option<std::time::Instant>, u64)>,
    /// Every peer's inbound queue (and mine, for local delivery).
    inbox: Arc<Inbox>,
    /// The live inbound connection per peer: (connection id, kill switch).
    inbound: Mutex<HashMap<u32, (u64, oneshot::Sender<()>)>>,
    next_conn: AtomicU64,
}

impl Shared {
    /// A validator's name for logs (its index when it has none).
    fn name(&self, index: u32) -> String {
        match self.names.get(&index) {
            Some(n) if !n.is_empty() => n.clone(),
            _ => format!("validator {index}"),
        }
    }

    fn peer(&self, index: u32) -> Option<&stats::PeerCounters> {
        self.slot_of.get(&index).map(|&s| &self.counters.peers[s].1)
    }

    /// Queues an inbound message from `from`, counting what its full queue dropped. `Err` once
    /// the receiver is gone or the network shut down.
    fn deliver(&self, from: u32, payload: Bytes) -> Result<(), PushError> {
        let slot = *self.slot_of.get(&from).ok_or(PushError::UnknownSlot)?;
        let dropped = self.inbox.push(slot, payload)?;
        if dropped > 0 {
            self.counters.peers[slot]
                .1
                .inbound_dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
            debug!(peer = from, dropped, "inbound queue full; dropped its oldest");
        }
        Ok(())
    }
}

/// The sources a peer listed at `address` may dial from: its IP, or what its host name resolves
/// to at start (best effort; a bank dialing from elsewhere only shares the strangers' slots).
fn listed_sources(address: &str) -> Vec<IpAddr> {
    use std::net::ToSocketAddrs;
    match address.parse::<SocketAddr>() {
        Ok(a) => vec![source_key(a.ip())],
        Err(_) => address.to_socket_addrs().map(|it| it.map(|a| source_key(a.ip())).collect()).unwrap_or_default(),
    }
}

/// What the per-source handshake limit counts by: an IPv4 address (IPv4-mapped IPv6 included),
/// or the /64 of an IPv6 address.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
}

struct Inner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// Outbound queue per other validator.
    queues: HashMap<u32, Arc<PeerQueue>>,
    tasks: Mutex<Option<JoinSet<()>>>,
    closed: AtomicBool,
}

/// Handle to a running transport. Cheap to clone.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("me", &self.inner.shared.me)
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

fn validate(cfg: &NetConfig, my_leaf: &[u8]) -> Result<(), NetError> {
    let bad = |m: String| Err(NetError::Config(m));
    if cfg.max_frame_bytes == 0 || cfg.max_frame_bytes > u32::MAX as usize {
        return bad(format!(
            "max_frame_bytes {} not in 1..=2^32-1",
            cfg.max_frame_bytes
        ));
    }
    if cfg.queue_per_peer == 0 {
        return bad("queue_per_peer must be positive".into());
    }
    if cfg.inbound_per_peer == 0 {
        return bad("inbound_per_peer must be positive".into());
    }
    if cfg.inbound_bytes_per_peer < cfg.max_frame_bytes {
        return bad(format!(
            "inbound_bytes_per_peer {} is below max_frame_bytes {}",
            cfg.inbound_bytes_per_peer, cfg.max_frame_bytes
        ));
    }
    if cfg.queue_bytes_per_peer < cfg.max_frame_bytes {
        return bad(format!(
            "queue_bytes_per_peer {} is below max_frame_bytes {}",
            cfg.queue_bytes_per_peer, cfg.max_frame_bytes
        ));
    }
    let k = &cfg.keepalive;
    if [k.ping_interval, k.idle_timeout, k.write_timeout, k.connect_timeout, k.reconnect_max]
        .contains(&Duration::ZERO)
        || k.ping_interval >= k.idle_timeout
    {
        return bad(format!(
            "keepalive {k:?}: every duration must be positive and ping_interval below idle_timeout"
        ));
    }
    let mut seen_index = std::collections::HashSet::new();
    let mut seen_cert = std::collections::HashSet::new();
    for p in &cfg.peers {
        if !seen_index.insert(p.index) {
            return bad(format!("validator index {} listed twice", p.index));
        }
        if p.cert_der.is_empty() || !seen_cert.insert(p.cert_der.as_slice()) {
            return bad(format!(
                "validator {} has an empty or duplicate certificate",
                p.index
            ));
        }
    }
    match cfg.peers.iter().find(|p| p.index == cfg.me) {
        None => bad(format!("my index {} is not among the peers", cfg.me)),
        Some(p) if p.cert_der != my_leaf => bad(format!(
            "my certificate differs from the one listed for validator {}",
            cfg.me
        )),
        Some(_) => Ok(()),
    }
}

impl Network {
    /// Binds `cfg.listen`, spawns the accept and dial tasks. Returns the handle and a receiver of
    /// `(from_index, payload)` for every valid frame from an authenticated peer (and for local
    /// sends to `me`). The receiver ends after [`Network::shutdown`].
    pub async fn start(
        cfg: NetConfig,
    ) -> Result<(Network, InboundReceiver), NetError> {
        // Configuration errors win over bind errors.
        let identity = tls::Identity::from_pem(&cfg.my_cert_pem, &cfg.my_key_pem)?;
        validate(&cfg, identity.chain[0].as_ref())?;
        let listener = TcpListener::bind(cfg.listen).await?;
        Self::start_with_listener(cfg, listener).await
    }

    /// Like [`Network::start`] with an already bound listener (`cfg.listen` is ignored). Useful
    /// when listeners are bound to port 0 first and peer addresses are known only afterwards.
    pub async fn start_with_listener(
        mut cfg: NetConfig,
        listener: TcpListener,
    ) -> Result<(Network, InboundReceiver), NetError> {
        let identity = tls::Identity::from_pem(&cfg.my_cert_pem, &cfg.my_key_pem)?;
        validate(&cfg, identity.chain[0].as_ref())?;
        cfg.peers.sort_by_key(|p| p.index);
        let provider = tls::provider();
        let by_cert: Arc<HashMap<Vec<u8>, u32>> = Arc::new(
            cfg.peers
                .iter()
                .map(|p| (p.cert_der.clone(), p.index))
                .collect(),
        );
        let server = tls::server_config(&provider, by_cert.clone(), &identity)?;
        let local_addr = listener.local_addr()?;

        let inbox = Arc::new(Inbox::new(
            cfg.peers.iter().map(|p| p.index),
            cfg.inbound_per_peer,
            cfg.inbound_bytes_per_peer,
        ));
        let shared = Arc::new(Shared {
            me: cfg.me,
            max_frame: cfg.max_frame_bytes,
            keepalive: cfg.keepalive,
            counters: stats::Counters::new(cfg.peers.iter().map(|p| p.index)),
            slot_of: cfg
                .peers
                .iter()
                .enumerate()
                .map(|(s, p)| (p.index, s))
                .collect(),
            by_cert,
            names: cfg
                .peers
                .iter()
                .map(|p| (p.index, p.name.clone()))
                .collect(),
            genesis_hash: cfg.genesis_hash,
            acceptor: TlsAcceptor::from(server),
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
            peer_sources: cfg.peers.iter().filter(|p| p.index != cfg.me).flat_map(|p| listed_sources(&p.address)).collect(),
            pending_by_source: Mutex::new(HashMap::new()),
            refusal_warning: Mutex::new((None, 0)),
            inbox: inbox.clone(),
            inbound: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        let mut tasks = JoinSet::new();
        let mut queues = HashMap::new();
        for p in cfg.peers.iter().filter(|p| p.index != cfg.me) {
            let client = tls::client_config(&provider, p.cert_der.clone(), &identity)?;
            let queue = Arc::new(PeerQueue::new(cfg.queue_per_peer, cfg.queue_bytes_per_peer));
            queues.insert(p.index, queue.clone());
            tasks.spawn(conn::dial_loop(
                shared.clone(),
                p.index,
                p.address.clone(),
                TlsConnector::from(client),
                queue,
            ).accounted(Component::Network));
        }
        tasks.spawn(conn::accept_loop(shared.clone(), listener).accounted(Component::Network));
        info!(me = cfg.me, %local_addr, peers = cfg.peers.len(), "peer transport started");
        let inner = Inner {
            shared,
            local_addr,
            queues,
            tasks: Mutex::new(Some(tasks)),
            closed: AtomicBool::new(false),
        };
        Ok((
            Network {
                inner: Arc::new(inner),
            },
            InboundReceiver::new(inbox),
        ))
    }

    fn drop_for(&self, to: u32) {
        self.dropped_for(to, 1)
    }

    fn dropped_for(&self, to: u32, n: u64) {
        match self.inner.shared.peer(to) {
            Some(c) => c.dropped.fetch_add(n, Ordering::Relaxed),
            None => self
                .inner
                .shared
                .counters
                .dropped_unknown
                .fetch_add(n, Ordering::Relaxed),
        };
    }

    /// Queues `payload` for validator `to`. Never blocks: when that peer's queue is full the
    /// oldest queued message makes room and is counted as dropped; an empty or oversized payload
    /// or an unknown `to` is dropped and counted. Sending to `me` delivers locally through the
    /// receiver, in my own inbound queue (which, when full, drops its oldest like any peer's).
    pub fn send(&self, to: u32, payload: Bytes) {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let shared = &inner.shared;
        if payload.is_empty() || payload.len() > shared.max_frame {
            warn!(
                to,
                len = payload.len(),
                max = shared.max_frame,
                "refusing to send: bad size"
            );
            return self.drop_for(to);
        }
        if to == shared.me {
            let len = payload.len();
            match shared.deliver(to, payload) {
                Ok(()) => {
                    if let Some(c) = shared.peer(to) {
                        c.sent(len);
                        c.received(len, shared.counters.epoch);
                    }
                }
                Err(e) => {
                    debug!(to, error = ?e, "local delivery refused; dropping");
                    self.drop_for(to);
                }
            }
            return;
        }
        match inner.queues.get(&to) {
            Some(q) => {
                let dropped = q.push(payload);
                if dropped > 0 {
                    debug!(to, dropped, "outbound queue full; dropped the oldest");
                    self.dropped_for(to, dropped as u64);
                }
            }
            None => {
                debug!(to, "send to unknown validator; dropping");
                self.drop_for(to);
            }
        }
    }

    /// Queues `payload` for every other validator.
    pub fn broadcast(&self, payload: Bytes) {
        for p in &self.inner.shared.counters.peers {
            if p.0 != self.inner.shared.me {
                self.send(p.0, payload.clone());
            }
        }
    }

    /// A snapshot of the counters and of each peer's connectivity.
    pub fn stats(&self) -> NetStats {
        let mut s = self.inner.shared.counters.snapshot();
        for p in &mut s.peers {
            if let Some(q) = self.inner.queues.get(&p.index) {
                p.queued = q.len() as u64;
            }
            if let Some(&slot) = self.inner.shared.slot_of.get(&p.index) {
                p.inbound_queued = self.inner.shared.inbox.len(slot) as u64;
            }
        }
        s
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// My validator index.
    pub fn me(&self) -> u32 {
        self.inner.shared.me
    }

    /// Stops accepting and dialing, closes every connection and the listener (the port can be
    /// bound again once this returns), and ends the receiver. Queued messages are discarded.
    /// Idempotent.
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        for q in self.inner.queues.values() {
            q.close();
        }
        if let Some(mut tasks) = tasks {
            tasks.shutdown().await;
            info!(me = self.inner.shared.me, "peer transport stopped");
        }
        for (_, c) in &self.inner.shared.counters.peers {
            c.connected.store(false, Ordering::Relaxed);
            c.inbound_connected.store(false, Ordering::Relaxed);
        }
        self.inner
            .shared
            .inbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.inner.shared.inbox.close();
    }
}
