//! Inbound messages, one bounded queue per peer, drained round-robin.
//!
//! Before, every peer's frames went into one FIFO channel, so a peer sending thousands of
//! messages put an honest peer's vote behind all of them. Now each validator (`me` included,
//! for local delivery) has its own lane, bounded by message count and payload bytes, and the
//! consumer takes one message from each non-empty lane in turn. A message at the head of its lane
//! is therefore handed out before the consumer takes more than one message from any other lane:
//! it waits behind at most `n - 1` others, whatever the others send.
//!
//! When a lane is full, its *oldest* messages are dropped (and counted for that peer), for the
//! reason the outbound queue does the same: consensus traffic ages badly, and a peer whose
//! messages pile up is best served by its latest view's messages and sync probe, not the first of
//! the pile. Dropping means a reader never waits for the consumer, so one peer's flood costs the
//! others nothing but the CPU to read and decrypt it (it is never decoded beyond the frame). A
//! flood only pushes out the flooder's own messages.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

struct Lane {
    index: u32,
    items: VecDeque<Bytes>,
    bytes: usize,
}

struct State {
    /// One per validator, in the order of `NetConfig::peers` (sorted by index).
    lanes: Vec<Lane>,
    /// The lane the next round starts at.
    next: usize,
    /// No more pushes (the network shut down or the receiver was dropped).
    closed: bool,
}

/// The shared queues; the network pushes, one [`InboundReceiver`] pops.
pub(crate) struct Inbox {
    state: Mutex<State>,
    ready: Notify,
    max_len: usize,
    max_bytes: usize,
}

/// Why a push did not happen.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The receiver is gone or the network shut down.
    Closed,
    /// Not a listed validator's lane.
    UnknownSlot,
}

impl Inbox {
    /// Lanes for `indices` (a lane's slot is its position), each holding at most `max_len`
    /// messages (≥ 1) and `max_bytes` payload bytes (≥ the largest frame).
    pub fn new(indices: impl IntoIterator<Item = u32>, max_len: usize, max_bytes: usize) -> Inbox {
        let lanes = indices
            .into_iter()
            .map(|index| Lane { index, items: VecDeque::new(), bytes: 0 })
            .collect();
        Inbox {
            state: Mutex::new(State { lanes, next: 0, closed: false }),
            ready: Notify::new(),
            max_len,
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `msg` to lane `slot`, first dropping as many of that lane's oldest messages as
    /// needed to stay within both bounds. Returns how many were dropped. Never waits.
    pub fn push(&self, slot: usize, msg: Bytes) -> Result<usize, PushError> {
        let mut s = self.lock();
        if s.closed {
            return Err(PushError::Closed);
        }
        let lane = s.lanes.get_mut(slot).ok_or(PushError::UnknownSlot)?;
        let mut dropped = 0;
        while lane.items.len() >= self.max_len || (lane.bytes + msg.len() > self.max_bytes && !lane.items.is_empty()) {
            let Some(old) = lane.items.pop_front() else { break };
            lane.bytes -= old.len();
            dropped += 1;
        }
        lane.bytes += msg.len();
        lane.items.push_back(msg);
        drop(s);
        self.ready.notify_one();
        Ok(dropped)
    }

    /// Moves up to `limit` messages into `out`, one per non-empty lane per round, starting where
    /// the last call stopped. Returns how many.
    fn take(&self, out: &mut Vec<(u32, Bytes)>, limit: usize) -> usize {
        let mut s = self.lock();
        let n = s.lanes.len();
        let mut taken = 0;
        let mut idle = 0;
        while taken < limit && idle < n && n > 0 {
            let at = s.next % n;
            s.next = (at + 1) % n;
            let lane = &mut s.lanes[at];
            match lane.items.pop_front() {
                Some(msg) => {
                    lane.bytes -= msg.len();
                    out.push((lane.index, msg));
                    taken += 1;
                    idle = 0;
                }
                None => idle += 1,
            }
        }
        taken
    }

    /// Refuses further pushes and wakes the consumer, which still gets what is queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Messages waiting from the validator in `slot`.
    pub fn len(&self, slot: usize) -> usize {
        self.lock().lanes.get(slot).map_or(0, |l| l.items.len())
    }
}

/// The consumer's end: `(from_index, payload)` for every frame from an authenticated peer and
/// every local send, fairly across peers (see the module documentation). Ends (`recv` gives
/// `None`) once the network shut down and everything queued was taken. Dropping it makes the
/// network refuse further inbound frames and close inbound connections.
pub struct InboundReceiver {
    inbox: Arc<Inbox>,
}

impl InboundReceiver {
    pub(crate) fn new(inbox: Arc<Inbox>) -> InboundReceiver {
        InboundReceiver { inbox }
    }

    /// Waits for at least one message, then appends up to `limit` (round-robin across peers) to
    /// `buf`. Returns how many; 0 only once the receiver has ended (or `limit` is 0).
    /// Cancel-safe: messages are taken only when this returns them.
    pub async fn recv_many(&mut self, buf: &mut Vec<(u32, Bytes)>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        loop {
            let got = self.inbox.take(buf, limit);
            if got > 0 {
                return got;
            }
            if self.inbox.lock().closed {
                return 0;
            }
            // `notify_one` keeps a permit when nobody waits, so a push between the take above
            // and this await is not missed.
            self.inbox.ready.notified().await;
        }
    }

    /// The next message, or `None` once the receiver has ended.
    pub async fn recv(&mut self) -> Option<(u32, Bytes)> {
        let mut one = Vec::with_capacity(1);
        self.recv_many(&mut one, 1).await;
        one.pop()
    }
}

impl Drop for InboundReceiver {
    fn drop(&mut self) {
        self.inbox.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn lanes_drop_their_own_oldest_by_count_and_by_bytes() {
        let inbox = Inbox::new([0, 1], 3, 10);
        for m in ["a", "b", "c"] {
            assert_eq!(inbox.push(0, b(m)), Ok(0));
        }
        assert_eq!(inbox.push(0, b("d")), Ok(1), "count bound");
        assert_eq!(inbox.push(1, b("0123456789")), Ok(0), "the other lane is untouched");
        assert_eq!(inbox.push(1, b("xy")), Ok(1), "byte bound");
        assert_eq!(inbox.push(7, b("x")), Err(PushError::UnknownSlot));
        assert_eq!((inbox.len(0), inbox.len(1)), (3, 1));
        let mut out = Vec::new();
        assert_eq!(inbox.take(&mut out, 10), 4);
        let got: Vec<(u32, &[u8])> = out.iter().map(|(i, m)| (*i, &m[..])).collect();
        assert_eq!(got, [(0, &b"b"[..]), (1, b"xy"), (0, b"c"), (0, b"d")]);
        inbox.close();
        assert_eq!(inbox.push(0, b("late")), Err(PushError::Closed));
    }

    #[test]
    fn round_robin_continues_where_the_last_take_stopped() {
        let inbox = Inbox::new([0, 1, 2], 100, 1 << 20);
        for i in 0..50 {
            inbox.push(0, Bytes::from(vec![i])).unwrap();
        }
        inbox.push(2, b("honest")).unwrap();
        let mut out = Vec::new();
        // One message per call: the honest one still comes within one round.
        for _ in 0..2 {
            inbox.take(&mut out, 1);
        }
        assert_eq!(out[1], (2, b("honest")));
        assert_eq!(inbox.take(&mut out, 100), 49);
    }

    #[tokio::test]
    async fn receiver_ends_after_close_once_drained() {
        let inbox = Arc::new(Inbox::new([0], 8, 1 << 20));
        let mut rx = InboundReceiver::new(inbox.clone());
        let waiter = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = rx.recv().await {
                got.push(m);
            }
            got
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        inbox.push(0, b("one")).unwrap();
        inbox.push(0, b("two")).unwrap();
        inbox.close();
        assert_eq!(waiter.await.unwrap().len(), 2);
    }
}
