//! The bounded outbound queue of one peer: never blocks the sender, drops the oldest message when
//! full.
//!
//! Why the oldest: consensus traffic ages badly. After a partition the peer needs the current
//! view's proposal, votes, timeouts and its latest sync probe, not the first messages of the cut,
//! which are about views long decided (it catches up on those through sync). Dropping the newest
//! would instead hand it thousands of stale messages first and none of the current ones. Order is
//! kept for what remains, so per-peer FIFO delivery still holds for every message delivered.
//!
//! For the same reason a message that waited longer than [`STALE_AFTER`] (the peer was cut off
//! or silent) is dropped when its turn comes: a bank back from a cut of minutes would otherwise
//! first check the signatures of thousands of proposals and votes about long-decided views.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

/// Older than this, a queued message is not worth sending: views move on within a few base
/// timeouts, and what the peer missed it catches up on through sync.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    items: VecDeque<(Instant, Bytes)>,
    bytes: usize,
    closed: bool,
}

/// A FIFO bounded by message count and by payload bytes, with one consumer.
pub(crate) struct PeerQueue {
    state: Mutex<State>,
    ready: Notify,
    max_len: usize,
    max_bytes: usize,
    max_age: Duration,
}

impl PeerQueue {
    /// `max_len` ≥ 1; `max_bytes` ≥ the largest message pushed.
    pub fn new(max_len: usize, max_bytes: usize) -> PeerQueue {
        PeerQueue {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            max_len,
            max_bytes,
            max_age: STALE_AFTER,
        }
    }

    #[cfg(test)]
    fn with_max_age(mut self, max_age: Duration) -> PeerQueue {
        self.max_age = max_age;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `msg`, first dropping as many of the oldest messages as needed to stay within both
    /// bounds. Returns how many were dropped. Never waits (the lock is held for a few pointer
    /// moves only). A closed queue drops `msg` itself (counted as one).
    pub fn push(&self, msg: Bytes) -> usize {
        let mut s = self.lock();
        if s.closed {
            return 1;
        }
        let mut dropped = 0;
        while !s.items.is_empty()
            && (s.items.len() >= self.max_len || s.bytes + msg.len() > self.max_bytes)
        {
            let (_, old) = s.items.pop_front().expect("not empty");
            s.bytes -= old.len();
            dropped += 1;
        }
        s.bytes += msg.len();
        s.items.push_back((Instant::now(), msg));
        drop(s);
        self.ready.notify_one();
        dropped
    }

    /// The oldest message that is not stale, if any; stale ones before it are dropped.
    pub fn try_pop(&self) -> Option<Bytes> {
        let mut s = self.lock();
        loop {
            let (at, msg) = s.items.pop_front()?;
            s.bytes -= msg.len();
            if at.elapsed() <= self.max_age {
                return Some(msg);
            }
        }
    }

    /// Waits for the oldest message; `None` once closed. Cancel-safe: a message is only taken
    /// when this returns it.
    pub async fn pop(&self) -> Option<Bytes> {
        loop {
            if let Some(msg) = self.try_pop() {
                return Some(msg);
            }
            if self.lock().closed {
                return None;
            }
            // `notify_one` stores a permit when nobody waits, so a push between the check above
            // and this await is not missed.
            self.ready.notified().await;
        }
    }

    /// Discards everything queued and refuses further messages; wakes the consumer.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.items.clear();
        s.bytes = 0;
        drop(s);
        self.ready.notify_one();
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn drops_the_oldest_by_count_and_by_bytes() {
        let q = PeerQueue::new(3, 10);
        assert_eq!(q.push(b("a")), 0);
        assert_eq!(q.push(b("b")), 0);
        assert_eq!(q.push(b("c")), 0);
        assert_eq!(q.push(b("d")), 1, "count bound");
        assert_eq!(q.len(), 3);
        assert_eq!(q.try_pop(), Some(b("b")));
        // Bytes: "c" + "d" = 2; "12345678" makes 10 in three messages; "xy" evicts "c" for the
        // count and "d" for the bytes.
        assert_eq!(q.push(b("12345678")), 0);
        assert_eq!(q.push(b("xy")), 2);
        assert_eq!(q.try_pop(), Some(b("12345678")));
        // A message of the whole budget evicts everything before it.
        assert_eq!(q.push(b("0123456789")), 1);
        assert_eq!(q.try_pop(), Some(b("0123456789")));
        assert_eq!(q.try_pop(), None);
        q.close();
        assert_eq!(q.push(b("late")), 1);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn stale_messages_are_dropped_when_their_turn_comes() {
        let q = PeerQueue::new(8, 1 << 20).with_max_age(Duration::from_millis(30));
        q.push(b("old-1"));
        q.push(b("old-2"));
        std::thread::sleep(Duration::from_millis(60));
        q.push(b("fresh"));
        assert_eq!(q.try_pop(), Some(b("fresh")));
        assert_eq!(q.try_pop(), None);
        assert_eq!(q.len(), 0);
    }

    #[tokio::test]
    async fn pop_waits_and_ends_on_close() {
        let q = std::sync::Arc::new(PeerQueue::new(8, 1 << 20));
        let q2 = q.clone();
        let consumer = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = q2.pop().await {
                got.push(m);
            }
            got
        });
        for i in 0..5 {
            q.push(Bytes::from(vec![i]));
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        q.close();
        let got = consumer.await.unwrap();
        assert_eq!(got.len(), 5);
        assert!(got.iter().enumerate().all(|(i, m)| m[0] == i as u8));
    }
}
