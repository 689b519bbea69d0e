//! The read index: how far a linearizable read must wait.
//!
//! A write is acknowledged only once its block is committed, i.e. once a child of it is certified.
//! The 2f+1 validators that voted for that child all hold a QC for the write's block, so any 2f+1
//! validators asked *after* the acknowledgement include at least one honest voter whose answer
//! covers it. The reading bank therefore asks everyone, takes the highest answer among the
//! first 2f+1 (its own included), and serves the read once its etcd has applied that far.
//!
//! An answer is the height of the highest block carrying operations on the chain certified by
//! the answering validator's high QC (blocks without operations change nothing a read could
//! see, and waiting for them could wait for blocks nobody will ever propose on an idle chain).
//! The answer comes with that QC and the certified block's header: a Byzantine validator can
//! under-report, which the quorum absorbs, but cannot report a height no quorum has certified.
//! Only an answer above the reader's own is worth a signature check, so a reader that keeps up
//! verifies almost nothing.
//!
//! Many reads share one round: a round answers every read that arrived before it started. A
//! round that gets no quorum within a view timeout is abandoned for a fresh one, so replies from
//! before a partition or a restart (older round numbers) never count.

use std::collections::BTreeMap;

use bftcd_proto::bftcd::ReadIndexReply;

#[derive(Debug, Default)]
pub struct ReadRounds {
    /// Number of the current (or last) round; seeded from the clock so a restarted validator
    /// never reuses one.
    pub round: u64,
    pub in_flight: bool,
    /// A read arrived while a round was in flight: start another when it ends.
    pub again: bool,
    pub started_ms: u64,
    /// This validator's own answer when the round started.
    pub own: u64,
    pub replies: BTreeMap<usize, ReadIndexReply>,
}

impl ReadRounds {
    pub fn start(&mut self, now_ms: u64, own: u64) -> u64 {
        self.round = (self.round + 1).max(now_ms.saturating_mul(1024));
        self.in_flight = true;
        self.again = false;
        self.started_ms = now_ms;
        self.own = own;
        self.replies.clear();
        self.round
    }

    /// Replies of the current round, highest answer first.
    pub fn by_height(&self) -> Vec<(usize, u64)> {
        let mut v: Vec<(usize, u64)> = self.replies.iter().map(|(from, r)| (*from, r.height)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}
