//! Transport counters. Byte counts are payload bytes (the 4-byte length prefix is not counted).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

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
    /// Whether the outbound connection to this peer is currently up.
    pub connected: bool,
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
    /// validator's, too many concurrent handshakes.
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
}

impl PeerCounters {
    pub fn sent(&self, bytes: usize) {
        self.frames_sent.fetch_add(1, Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Relaxed);
    }

    pub fn received(&self, bytes: usize) {
        self.frames_received.fetch_add(1, Relaxed);
        self.bytes_received.fetch_add(bytes as u64, Relaxed);
    }
}

pub(crate) struct Counters {
    /// Parallel to the sorted validator list.
    pub peers: Vec<(u32, PeerCounters)>,
    pub rejected: AtomicU64,
    /// Drops not attributable to a validator (unknown index).
    pub dropped_unknown: AtomicU64,
}

impl Counters {
    pub fn new(indices: impl IntoIterator<Item = u32>) -> Counters {
        Counters {
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
        for (index, c) in &self.peers {
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
