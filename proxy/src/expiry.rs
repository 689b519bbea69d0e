//! Asks for the expiry of leases whose deadline has passed.
//!
//! Every bank watches the replicated lease table and, once its own clock is past a lease's
//! deadline, submits a `LeaseExpire` like any other write. Whether it takes effect is decided by
//! the agreed time of the block that carries it (see `apply::leases`), so a bank with a fast
//! clock, or a Byzantine one, can only ask early, not expire early; the duplicates the other
//! banks submit find the lease gone and change nothing. With every bank asking, one crashed or
//! silent bank cannot keep a lease alive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bftcd_proto::bftcd::{operation::Request as Op, LeaseExpire};

use crate::apply::OpResponse;
use crate::front::{now_ms, Front};

/// How often the table is scanned for due leases.
const SCAN: Duration = Duration::from_millis(200);
/// How long before asking again for the same lease (the first request may have landed in a
/// block whose time was still before the deadline, by the leader's clock).
const RETRY: Duration = Duration::from_secs(1);

pub async fn run(front: Arc<Front>) {
    let mut asked: HashMap<i64, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(SCAN);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let due = front.applier.leases_due(now_ms());
        asked.retain(|id, _| due.contains(id));
        for id in due {
            if asked.get(&id).is_some_and(|at| at.elapsed() < RETRY) {
                continue;
            }
            asked.insert(id, Instant::now());
            let front = front.clone();
            tokio::spawn(async move {
                match front.writes.submit(Op::LeaseExpire(LeaseExpire { id })).await {
                    Ok(OpResponse::LeaseExpire(true)) => tracing::debug!(lease = format!("{id:016x}"), "lease expired on this bank's request"),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(lease = format!("{id:016x}"), error = %e.message(), "expiry request not committed; will ask again"),
                }
            });
        }
    }
}
