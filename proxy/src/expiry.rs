//! Asks for the expiry of leases whose deadline has passed.
//!
//! A bank whose clock is past a lease's deadline may submit a `LeaseExpire` like any other
//! write. Whether it takes effect is decided by the agreed time of the block that carries it
//! (see `apply::leases`), so a bank with a fast clock, or a Byzantine one, can only ask early,
//! not expire early.
//!
//! Who asks, and how often, is bounded so that many short leases cannot flood ordering:
//! - one bank, picked from the lease id, asks at the deadline; bank `rank` places after it asks
//!   only `rank` grace periods later, and only if the lease is still there, so a crashed or
//!   censoring bank delays an expiry by one grace period, not forever;
//! - a bank does not ask again while its earlier request can still commit (its answer is
//!   awaited; after an unknown outcome it waits out the operation's ordering window);
//! - at most [`BATCH`] requests per scan and [`MAX_OUTSTANDING`] awaited or held at once, a
//!   quarter of a bank's mempool share, so its clients keep room;
//! - every scan reads at most [`SCAN_LIMIT`] due leases from the deadline index.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bftcd_proto::bftcd::{operation::Request as Op, LeaseExpire};
use tokio::sync::mpsc;

use crate::apply::OpResponse;
use crate::errors;
use crate::front::{now_ms, Front};

/// How often the table is scanned for due leases.
const SCAN: Duration = Duration::from_millis(200);
/// How long the first asker has before the next bank asks too: above a commit's latency under
/// load, so that one request per lease is the normal case.
pub const GRACE_MS: u64 = 3000;
/// How long before asking again after a request that cannot commit any more (the block that
/// carried it was still before the deadline, or it never entered ordering).
const RETRY_MS: u64 = 1000;
/// How long a request with an unknown outcome (write timeout) may still commit: the
/// sequencer's operation window (`operation_ttl_ms`, 120 s) plus its clock skew bound.
const UNKNOWN_HOLD_MS: u64 = 125_000;
/// New requests per scan at most (5 scans a second).
pub const BATCH: usize = 128;
/// Requests awaited or held at once at most: bounds this task's memory and its use of the
/// bank's mempool share (4,096 operations with four banks and the default caps).
pub const MAX_OUTSTANDING: usize = 1024;
/// Due leases read per scan at most: bounds the time the lease table is locked.
pub const SCAN_LIMIT: usize = 4096;

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It ended the lease.
    Expired,
    /// It committed without effect (block time before the deadline, or the lease was gone or
    /// renewed), or never entered ordering (mempool full, no leader): it cannot commit later.
    Ended,
    /// The write timed out: it may still commit.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// Submitted; its answer has not come back.
    Pending,
    /// Not to be asked again before this time (ms, this bank's clock).
    Hold(u64),
}

/// Decides which due leases this bank asks about; pure (time comes in), so it is tested alone.
pub struct Planner {
    me: u64,
    n: u64,
    asks: HashMap<i64, Ask>,
}

/// A fixed mix of the id (splitmix64's finaliser): client-chosen ids in a row still spread
/// over the banks.
fn mix(id: i64) -> u64 {
    let mut z = id as u64;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Planner {
    pub fn new(me: u32, n: usize) -> Planner {
        let n = n.max(1) as u64;
        Planner { me: u64::from(me) % n, n, asks: HashMap::new() }
    }

    /// This bank's place in asking for `id`: 0 asks first.
    pub fn rank(&self, id: i64) -> u64 {
        (self.me + self.n - mix(id) % self.n) % self.n
    }

    /// When this bank first asks for a lease with this deadline.
    pub fn ask_at(&self, id: i64, deadline_ms: u64) -> u64 {
        deadline_ms.saturating_add(self.rank(id).saturating_mul(GRACE_MS))
    }

    #[cfg(test)]
    fn outstanding(&self) -> usize {
        self.asks.len()
    }

    /// From `due` (id, deadline; soonest first), the leases to ask about now; they count as
    /// pending until [`Planner::answered`]. Drops holds that ran out or whose lease is gone.
    pub fn pick(&mut self, now_ms: u64, due: &[(i64, u64)], alive: impl Fn(i64) -> bool) -> Vec<i64> {
        self.asks.retain(|id, a| match a {
            Ask::Pending => true,
            Ask::Hold(until) => *until > now_ms && alive(*id),
        });
        let mut out = Vec::new();
        for &(id, deadline) in due {
            if out.len() >= BATCH || self.asks.len() >= MAX_OUTSTANDING {
                break;
            }
            if now_ms < self.ask_at(id, deadline) || self.asks.contains_key(&id) {
                continue;
            }
            self.asks.insert(id, Ask::Pending);
            out.push(id);
        }
        out
    }

    pub fn answered(&mut self, id: i64, outcome: Outcome, now_ms: u64) {
        match outcome {
            Outcome::Expired => {
                self.asks.remove(&id);
            }
            Outcome::Ended => {
                self.asks.insert(id, Ask::Hold(now_ms.saturating_add(RETRY_MS)));
            }
            Outcome::Unknown => {
                self.asks.insert(id, Ask::Hold(now_ms.saturating_add(UNKNOWN_HOLD_MS)));
            }
        }
    }
}

pub async fn run(front: Arc<Front>) {
    let n = front.ledger.genesis().validators.len();
    let mut planner = Planner::new(front.identity.bank, n);
    // Bounded in practice by MAX_OUTSTANDING: one message per pending request.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(i64, Outcome)>();
    let mut tick = tokio::time::interval(SCAN);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = now_ms();
        while let Ok((id, outcome)) = done_rx.try_recv() {
            planner.answered(id, outcome, now);
        }
        let due = front.applier.leases_due(now, SCAN_LIMIT);
        let applier = &front.applier;
        for id in planner.pick(now, &due, |id| applier.lease(id).is_some()) {
            let front = front.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                let outcome = match front.writes.submit(Op::LeaseExpire(LeaseExpire { id }), None).await {
                    Ok(OpResponse::LeaseExpire(true)) => {
                        tracing::debug!(lease = format!("{id:016x}"), "lease expired on this bank's request");
                        Outcome::Expired
                    }
                    Ok(_) => Outcome::Ended,
                    Err(e) if e.message() == errors::timeout().message() => {
                        tracing::debug!(lease = format!("{id:016x}"), "expiry request timed out; it may still commit");
                        Outcome::Unknown
                    }
                    Err(e) => {
                        tracing::debug!(lease = format!("{id:016x}"), error = %e.message(), "expiry request not ordered; will ask again");
                        Outcome::Ended
                    }
                };
                let _ = done.send((id, outcome));
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(_: i64) -> bool {
        true
    }

    #[test]
    fn one_bank_asks_first_and_the_others_one_grace_period_apart() {
        let planners: Vec<Planner> = (0..4).map(|b| Planner::new(b, 4)).collect();
        let mut firsts = [0usize; 4];
        for id in 1..4000i64 {
            let mut ranks: Vec<u64> = planners.iter().map(|p| p.rank(id)).collect();
            firsts[ranks.iter().position(|r| *r == 0).unwrap()] += 1;
            ranks.sort_unstable();
            assert_eq!(ranks, vec![0, 1, 2, 3], "lease {id}: every bank a distinct place");
        }
        // Consecutive ids spread evenly over the banks.
        assert!(firsts.iter().all(|c| (800..1200).contains(c)), "{firsts:?}");
        let p = &planners[0];
        let id = (1..).find(|id| p.rank(*id) == 2).unwrap();
        assert_eq!(p.ask_at(id, 10_000), 10_000 + 2 * GRACE_MS);
        assert_eq!(p.ask_at(id, u64::MAX), u64::MAX);
    }

    #[test]
    fn a_bank_asks_once_while_its_request_can_commit() {
        let mut p = Planner::new(0, 1);
        let due = vec![(7, 1000)];
        assert_eq!(p.pick(999, &due, alive), Vec::<i64>::new(), "not due by this bank's clock");
        assert_eq!(p.pick(1000, &due, alive), vec![7]);
        // Pending: never asked again, however long the answer takes.
        assert!(p.pick(900_000, &due, alive).is_empty());
        // Committed before the deadline by the block's time: again after RETRY_MS.
        p.answered(7, Outcome::Ended, 2000);
        assert!(p.pick(2000 + RETRY_MS - 1, &due, alive).is_empty());
        assert_eq!(p.pick(2000 + RETRY_MS, &due, alive), vec![7]);
        // Timed out: it may still commit, so not again within the ordering window ...
        p.answered(7, Outcome::Unknown, 5000);
        assert!(p.pick(5000 + UNKNOWN_HOLD_MS - 1, &due, alive).is_empty());
        assert_eq!(p.pick(5000 + UNKNOWN_HOLD_MS, &due, alive), vec![7]);
        // ... and a hold is dropped as soon as the lease is gone.
        p.answered(7, Outcome::Unknown, 6000);
        assert_eq!(p.outstanding(), 1);
        assert!(p.pick(7000, &[], |_| false).is_empty());
        assert_eq!(p.outstanding(), 0);
        p.pick(8000, &due, alive);
        p.answered(7, Outcome::Expired, 8100);
        assert_eq!(p.outstanding(), 0);
    }

    #[test]
    fn requests_come_in_bounded_batches() {
        let mut p = Planner::new(0, 1);
        let due: Vec<(i64, u64)> = (1..=20_000).map(|id| (id, 0)).collect();
        let mut asked = 0;
        let mut now = 0;
        while asked < MAX_OUTSTANDING {
            let batch = p.pick(now, &due, alive);
            assert!(batch.len() <= BATCH);
            asked += batch.len();
            now += 200;
        }
        assert_eq!(asked, MAX_OUTSTANDING);
        assert!(p.pick(now, &due, alive).is_empty(), "no more while MAX_OUTSTANDING are out");
        for id in 1..=10 {
            p.answered(id, Outcome::Expired, now);
        }
        assert_eq!(p.pick(now, &due, alive).len(), 10);
    }

    #[test]
    fn a_silent_first_asker_is_covered_after_one_grace_period() {
        // Bank 0 is silent; the lease is still in the table at the deadline + GRACE_MS.
        let id = (1..).find(|id| Planner::new(0, 4).rank(*id) == 0).unwrap();
        let second = (0..4).find(|b| Planner::new(*b, 4).rank(id) == 1).unwrap();
        let mut p = Planner::new(second, 4);
        let due = vec![(id, 50_000)];
        assert!(p.pick(50_000 + GRACE_MS - 1, &due, alive).is_empty());
        assert_eq!(p.pick(50_000 + GRACE_MS, &due, alive), vec![id]);
    }
}
