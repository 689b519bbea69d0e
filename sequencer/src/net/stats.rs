//! Transport counters. Byte counts are payload bytes (the 4-byte length prefix is not counted).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Counters for one validator, as seen by this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub index: u32,
    /// Frames (and payload bytes) handed to this peer's outbound connection. For `me`: local
    /// deliveries.
    pub frames_sent: u64,
    pub bytes_sent: u64,
    /// Frames (and payload bytes) received from this peer. For `me`: local deliveries.
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Messages for this peer dropped because its queue was full or the payload was invalid.
    pub dropped: u64,
    /// Protocol violations by this peer (each closed a connection).
    pub malformed_frames: u64,
    /// Successful outbound handshakes to this peer so far.
    pub connects: u64,
    /// Whether the outbound connection to this peer is currently up (handshake done, and not
    /// yet found silent, stalled or closed).
    pub connected: bool,
    /// Whether an authenticated inbound connection from this peer is currently open.
    pub inbound_connected: bool,
    /// How long ago anything (a frame or a keepalive ping, on either connection) last arrived
    /// from this peer; `None` if nothing ever did. For `me`: the last local delivery.
    pub last_heard: Option<Duration>,
    /// Connections to or from this peer closed because it went silent past the idle timeout or
    /// a write to it made no progress within the write timeout.
    pub keepalive_timeouts: u64,
    /// Messages waiting in this peer's outbound queue.
    pub queued: u64,
    /// Messages from this peer dropped because its inbound queue was full (the oldest go).
    pub inbound_dropped: u64,
    /// Messages from this peer waiting for the receiver.
    pub inbound_queued: u64,
    /// Connections to or from this peer closed because its hello named another genesis.
    pub genesis_mismatches: u64,
}

/// A snapshot of all transport counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// One entry per validator in `NetConfig::peers`, in ascending index order.
    pub peers: Vec<PeerStats>,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// All dropped outbound messages, including those for unknown validator indices.
    pub dropped: u64,
    /// Inbound connections refused: failed or timed-out handshakes, certificates that are not a
    /// validator's, too many concurrent handshakes (in all or from one source address).
    pub rejected_connections: u64,
    pub malformed_frames: u64,
}

impl NetStats {
    /// The entry for validator `index`, if it is one.
    pub fn peer(&self, index: u32) -> Option<&PeerStats> {
        self.peers.iter().find(|p| p.index == index)
    }
}

#[derive(Default)]
pub(crate) struct PeerCounters {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub dropped: AtomicU64,
    pub malformed: AtomicU64,
    pub connects: AtomicU64,
    pub connected: AtomicBool,
    pub inbound_connected: AtomicBool,
    /// Milliseconds since `Counters::epoch` plus one when last heard; 0 for never.
    pub last_heard_ms: AtomicU64,
    pub keepalive_timeouts: AtomicU64,
    pub inbound_dropped: AtomicU64,
    pub genesis_mismatches: AtomicU64,
}

impl PeerCounters {
    pub fn sent(&self, bytes: usize) {
        self.frames_sent.fetch_add(1, Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Relaxed);
    }

    pub fn received(&self, bytes: usize, epoch: Instant) {
        self.frames_received.fetch_add(1, Relaxed);
        self.bytes_received.fetch_add(bytes as u64, Relaxed);
        self.heard(epoch);
    }

    /// Something arrived from this peer now.
    pub fn heard(&self, epoch: Instant) {
        let ms = epoch.elapsed().as_millis() as u64 + 1;
        self.last_heard_ms.fetch_max(ms, Relaxed);
    }
}

pub(crate) struct Counters {
    /// Time origin of `last_heard_ms`.
    pub epoch: Instant,
    /// Parallel to the sorted validator list.
    pub peers: Vec<(u32, PeerCounters)>,
    pub rejected: AtomicU64,
    /// Drops not attributable to a validator (unknown index).
    pub dropped_unknown: AtomicU64,
}

impl Counters {
    pub fn new(indices: impl IntoIterator<Item = u32>) -> Counters {
        Counters {
            epoch: Instant::now(),
            peers: indices
                .into_iter()
                .map(|i| (i, PeerCounters::default()))
                .collect(),
            rejected: AtomicU64::new(0),
            dropped_unknown: AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self) -> NetStats {
        let mut s = NetStats {
            rejected_connections: self.rejected.load(Relaxed),
            dropped: self.dropped_unknown.load(Relaxed),
            ..NetStats::default()
        };
        let now_ms = self.epoch.elapsed().as_millis() as u64 + 1;
        for (index, c) in &self.peers {
            let heard = c.last_heard_ms.load(Relaxed);
            let p = PeerStats {
                index: *index,
                frames_sent: c.frames_sent.load(Relaxed),
                bytes_sent: c.bytes_sent.load(Relaxed),
                frames_received: c.frames_received.load(Relaxed),
                bytes_received: c.bytes_received.load(Relaxed),
                dropped: c.dropped.load(Relaxed),
                malformed_frames: c.malformed.load(Relaxed),
                connects: c.connects.load(Relaxed),
                connected: c.connected.load(Relaxed),
                inbound_connected: c.inbound_connected.load(Relaxed),
                last_heard: (heard > 0)
                    .then(|| Duration::from_millis(now_ms.saturating_sub(heard))),
                keepalive_timeouts: c.keepalive_timeouts.load(Relaxed),
                queued: 0,
                inbound_dropped: c.inbound_dropped.load(Relaxed),
                inbound_queued: 0,
                genesis_mismatches: c.genesis_mismatches.load(Relaxed),
            };
            s.frames_sent += p.frames_sent;
            s.bytes_sent += p.bytes_sent;
            s.frames_received += p.frames_received;
            s.bytes_received += p.bytes_received;
            s.dropped += p.dropped;
            s.malformed_frames += p.malformed_frames;
            s.peers.push(p);
        }
        s
    }
}
