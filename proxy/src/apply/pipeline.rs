//! Several etcd Txns in flight at once, each guarded so that it lands only right after the one
//! before it.
//!
//! One Txn at a time costs one etcd commit (an fsync) per block, which bounds a bank catching up
//! on thousands of blocks (about 1.6 ms a block on the reference machine). With several in
//! flight, etcd commits them together. etcd may run concurrent requests in any order, so each
//! Txn compares the applied-position key with the position written by the Txn before it; one
//! that arrives early changes nothing and is sent again.
//!
//! Which position a Txn leaves behind is known only once it has run (an operation that changes
//! nothing leaves the key alone, see [`super::wrap`]), so each guard predicts that the Txn before
//! it records. A wrong prediction (a failed compare with a read-only branch, a refusal) costs one
//! more round trip for the Txns behind it, never an apply out of order or twice.
//!
//! Lease operations and compactions are etcd calls of their own that no compare can guard: they
//! wait until everything before them has landed, and nothing after them is sent before they do.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bftcd_proto::bftcd::{operation::Request as Op, Block, CommittedBlock, Operation};
use bftcd_proto::etcdserverpb::{
    request_op::Request, response_op::Response, DeleteRangeResponse, PutResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use bftcd_sequencer::cpu::{AccountedExt, Component};
use bftcd_sequencer::governance::{Approval, ChainRules, Effect, Refusal};
use bftcd_sequencer::Position;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Status;

use super::leases::LeaseDecision;
use super::{batch, is_transient, key_of, leases, refusal, wrap, Applier, Attempt, OpResponse, Outcome};
use crate::errors;
use crate::rewrite::{self, TxnPlan};

/// Txns in flight at most, and their bytes (one Txn may carry up to a block). etcd commits
/// concurrent requests together; on two cores the gain flattens beyond a few dozen, and each Txn
/// that etcd runs out of order costs a resend however large the window.
const WINDOW: usize = 32;
const WINDOW_BYTES: usize = 16 << 20;

/// A unit of applying, in commit order.
enum Work {
    Txn(TxnWork),
    /// A lease operation or compaction (or an empty operation): applied alone.
    Alone { height: u64, block: Arc<CommittedBlock>, index: usize },
    /// An operation that writes keys of a bank other than the one that submitted it: refused
    /// on every bank, without touching etcd, once everything before it has landed.
    Refused { height: u64, block: Arc<CommittedBlock>, index: usize, why: Refusal },
    /// A bank's approval of a change of the chain's rules, or a client's auth call, with the
    /// rules it leaves: changes no key, so it only takes its turn.
    RulesChange { height: u64, block: Arc<CommittedBlock>, index: usize, effect: Effect, rules: Arc<ChainRules> },
    /// Every operation of the block at `height` has been applied once this is reached.
    EndOfBlock { height: u64, operations: usize, started: Instant, t_us: u64 },
}

struct TxnWork {
    height: u64,
    block: Arc<CommittedBlock>,
    run: Range<usize>,
    /// Several operations as nested Txns of one; a refused batch is applied one by one instead.
    batch: bool,
    /// etcd's answer to a send that landed while the Txns around it are being sent again.
    landed: Option<TxnResponse>,
}

impl TxnWork {
    fn ops(&self) -> &[Operation] {
        &block_of(&self.block).operations[self.run.clone()]
    }

    fn first(&self) -> Position {
        Position { height: self.height, index: self.run.start as u32 }
    }

    fn last(&self) -> Position {
        Position { height: self.height, index: self.run.end as u32 - 1 }
    }
}

fn block_of(cb: &CommittedBlock) -> &Block {
    static EMPTY: std::sync::OnceLock<Block> = std::sync::OnceLock::new();
    cb.block.as_ref().unwrap_or_else(|| EMPTY.get_or_init(Block::default))
}

/// How to read etcd's answer to a Txn.
enum Plan {
    Single(wrap::Wrapped),
    Batch(Vec<TxnPlan>),
}

struct Flight {
    work: Work,
    /// The Txn's request and how to read its answer (None for an end-of-block marker).
    plan: Option<Plan>,
    guard: Option<Position>,
    /// Sent with nothing before it in flight: its guard is what etcd holds, unless someone else
    /// moved the position key.
    alone: bool,
    answer: Option<JoinHandle<Result<TxnResponse, Status>>>,
    ready: Option<Result<TxnResponse, Status>>,
    /// The request's encoded size.
    bytes: usize,
}

/// Whether another Txn may be sent: end-of-block markers take no room, and one Txn is always
/// allowed however large.
fn has_room(flights: &VecDeque<Flight>) -> bool {
    let (mut txns, mut bytes) = (0, 0);
    for f in flights.iter().filter(|f| f.plan.is_some()) {
        txns += 1;
        bytes += f.bytes;
    }
    txns == 0 || (txns < WINDOW && bytes < WINDOW_BYTES)
}

impl Flight {
    async fn land(&mut self) -> Result<TxnResponse, Status> {
        if let Some(r) = self.ready.take() {
            return r;
        }
        match self.answer.take() {
            Some(h) => h.await.unwrap_or_else(|e| Err(Status::unavailable(format!("bftcd: apply request task failed: {e}")))),
            None => Err(Status::internal("bftcd: apply flight without a request")),
        }
    }

    /// Waits for the answer without consuming it.
    async fn settle(&mut self) {
        if self.ready.is_none() {
            if let Some(h) = self.answer.as_mut() {
                let r = h.await.unwrap_or_else(|e| Err(Status::unavailable(format!("bftcd: apply request task failed: {e}"))));
                self.answer = None;
                self.ready = Some(r);
            }
        }
    }
}

/// What became of a Txn.
enum Landing {
    /// It ran: each operation's outcome, whether the position key moved, and etcd's revision
    /// after it.
    Applied(Vec<Outcome>, bool, Option<i64>),
    /// The guard did not hold: nothing changed; the position key held this.
    Early(Option<Position>),
    /// etcd refused it for a reason every bank's etcd shares.
    Refused(Status),
    /// The local etcd failed or refused for a reason of its own: unknown whether it ran.
    Failed(Status),
}

/// The committed blocks still to be turned into [`Work`].
struct Cursor {
    /// The chain's rules and lease table as of the last operation turned into work (ahead of
    /// what is applied).
    rules: ChainRules,
    leases: leases::LeaseTable,
    height: u64,
    /// Operations of the first block already applied before a restart.
    skip: usize,
    commits: watch::Receiver<u64>,
}

impl Cursor {
    /// The next block's work, or None while it is not committed yet.
    async fn next_block(&mut self, applier: &Applier) -> anyhow::Result<Option<Vec<Work>>> {
        if applier.ledger.committed_height() < self.height {
            return Ok(None);
        }
        let height = self.height;
        // Just committed, so usually still in memory; only a bank catching up reads the file.
        let committed = match applier.ledger.recent_shared(height) {
            Some(cb) => cb,
            None => {
                let ledger = applier.ledger.clone();
                Arc::new(tokio::task::spawn_blocking(move || ledger.read(height)).await??)
            }
        };
        let (t_us, started) = (bftcd_sequencer::now_us(), Instant::now());
        let block = block_of(&committed);
        if !applier.lag.is_zero() {
            let due = std::time::UNIX_EPOCH + Duration::from_millis(block.timestamp_ms) + applier.lag;
            if let Ok(wait) = due.duration_since(std::time::SystemTime::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        // The rules in order: an approval may change them for the operations after it. Those
        // applied before a restart are in the rules already.
        let skip = std::mem::take(&mut self.skip);
        let mut special: Vec<Option<Work>> = Vec::with_capacity(block.operations.len());
        for (index, op) in block.operations.iter().enumerate() {
            if index < skip {
                special.push(None);
                continue;
            }
            let refused = self.rules.refuses(op).or_else(|| {
                let grantor = |id| self.leases.get(id).map(|l| l.grantor);
                self.rules.owners().foreign_lease(op, grantor).map(Refusal::KeyOwner)
            });
            let pos = Position { height, index: index as u32 };
            // The lease table as the apply engine will hold it at this operation (lease calls
            // are applied later, alone), for the owners' lease rule above.
            leases::step(&applier.ledger.genesis().chain_id, &mut self.leases, op, pos, block.timestamp_ms, self.rules.owners());
            let block = committed.clone();
            special.push(match self.rules.step(op) {
                Some(effect) => Some(Work::RulesChange { height, block, index, effect, rules: Arc::new(self.rules.clone()) }),
                None => refused.map(|why| Work::Refused { height, block, index, why }),
            });
        }
        let runs = match applier.batching {
            Some(limits) => batch::split(&block.operations, limits, |i| special[i].is_some()),
            None => (0..block.operations.len()).map(|i| i..i + 1).collect(),
        };
        let mut work = Vec::with_capacity(runs.len() + 1);
        for run in runs {
            if run.end <= skip {
                continue;
            }
            // A batch is applied atomically, so a restart resumes at a run boundary.
            if run.len() > 1 && run.start >= skip {
                work.push(Work::Txn(TxnWork { height, block: committed.clone(), run, batch: true, landed: None }));
                continue;
            }
            let first = run.start.max(skip);
            for (i, special) in special.iter_mut().enumerate().take(run.end).skip(first) {
                work.push(special.take().unwrap_or_else(|| single(height, &committed, i)));
            }
        }
        work.push(Work::EndOfBlock { height, operations: block.operations.len(), started, t_us });
        self.height += 1;
        Ok(Some(work))
    }
}

fn single(height: u64, block: &Arc<CommittedBlock>, i: usize) -> Work {
    if matches!(block_of(block).operations[i].request, Some(Op::Put(_) | Op::DeleteRange(_) | Op::Txn(_))) {
        Work::Txn(TxnWork { height, block: block.clone(), run: i..i + 1, batch: false, landed: None })
    } else {
        Work::Alone { height, block: block.clone(), index: i }
    }
}

/// Polls a request once here, which queues it on the etcd connection, and hands back the rest.
///
/// A spawned task may run after one spawned later (tokio runs the newest task first), and a Txn
/// that reaches etcd before the one it follows fails its guard and is sent again, together with
/// every Txn sent behind it. Queued from the pipeline task itself, the requests leave in commit
/// order; etcd may still reorder them, but it no longer has to put right an order we made.
fn queue_in_order<F: std::future::Future + Send + 'static>(call: F) -> Result<F::Output, std::pin::Pin<Box<F>>> {
    let mut call = Box::pin(call);
    let waker = futures::task::noop_waker();
    match call.as_mut().poll(&mut std::task::Context::from_waker(&waker)) {
        std::task::Poll::Ready(r) => Ok(r),
        // The spawned task polls it again with its own waker.
        std::task::Poll::Pending => Err(call),
    }
}

/// A Put, DeleteRange or Txn as the client Txn it amounts to.
fn client_txn(op: &Operation) -> Option<TxnRequest> {
    let one = |request| TxnRequest { compare: vec![], success: vec![RequestOp { request: Some(request) }], failure: vec![] };
    match &op.request {
        Some(Op::Put(p)) => Some(one(Request::RequestPut(p.clone()))),
        Some(Op::DeleteRange(d)) => Some(one(Request::RequestDeleteRange(d.clone()))),
        Some(Op::Txn(t)) => Some(t.clone()),
        _ => None,
    }
}

/// The client's response to its operation, from the client Txn's answer.
fn finish(op: &Operation, header: Option<ResponseHeader>, mut t: TxnResponse) -> OpResponse {
    match &op.request {
        Some(Op::Put(_)) => OpResponse::Put(PutResponse {
            header,
            prev_kv: match t.responses.pop().and_then(|r| r.response) {
                Some(Response::ResponsePut(p)) => p.prev_kv,
                _ => None,
            },
        }),
        Some(Op::DeleteRange(_)) => {
            let mut d = match t.responses.pop().and_then(|r| r.response) {
                Some(Response::ResponseDeleteRange(d)) => d,
                _ => DeleteRangeResponse::default(),
            };
            d.header = header;
            OpResponse::DeleteRange(d)
        }
        _ => {
            t.header = header;
            OpResponse::Txn(t)
        }
    }
}

/// Where applying resumes.
pub(super) struct Start {
    pub height: u64,
    pub skip: usize,
    /// The position key in the local etcd (the cursor file may be further on).
    pub in_etcd: Option<Position>,
    /// The revision that wrote it (1, a fresh etcd's, when there is none).
    pub revision: i64,
}

/// The pipeline's view of the local etcd.
struct State {
    /// The position key once every Txn before the front flight has landed.
    recorded: Option<Position>,
    /// The position key once every Txn sent has landed as predicted.
    predicted: Option<Position>,
    /// The last operation that left no trace in etcd since the position key last moved.
    traceless: Option<Position>,
    backoff: Duration,
    /// Txns sent again since the last block was traced (overtaken, or behind a wrong guess).
    resent: u64,
    /// etcd's revision after the last Txn that moved the position key (None: not known, as
    /// after a lost answer): where the state digest of a block is taken ([`super::digest`]).
    revision: Option<i64>,
    /// The last block with operations.
    last_operations: u64,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);

impl Applier {
    /// Applies committed blocks forever, from `start`.
    pub(super) async fn pipeline(self: &Arc<Self>, start: Start) -> anyhow::Result<()> {
        let rules = (*self.rules()).clone();
        let leases = self.leases.lock().unwrap().clone();
        let mut cursor = Cursor { rules, leases, height: start.height, skip: start.skip, commits: self.ledger.subscribe_committed() };
        let mut todo: VecDeque<Work> = VecDeque::new();
        let mut flights: VecDeque<Flight> = VecDeque::new();
        let mut st = State {
            recorded: start.in_etcd,
            predicted: start.in_etcd,
            traceless: None,
            backoff: FIRST_BACKOFF,
            resent: 0,
            revision: Some(start.revision),
            last_operations: start.height.saturating_sub(1),
        };
        loop {
            // Send as much as the window allows.
            let mut waiting_for_commit = false;
            while has_room(&flights) {
                if todo.is_empty() {
                    match cursor.next_block(self).await? {
                        Some(work) => todo.extend(work),
                        None => {
                            waiting_for_commit = true;
                            break;
                        }
                    }
                }
                let Some(work) = todo.pop_front() else { continue };
                match work {
                    Work::Alone { .. } | Work::Refused { .. } | Work::RulesChange { .. } if !flights.is_empty() => {
                        todo.push_front(work);
                        break;
                    }
                    Work::RulesChange { height, block, index, effect, rules } => self.change_rules(height, &block, index, effect, rules, &mut st),
                    Work::Alone { height, block, index } => self.apply_alone(height, &block, index, &mut st).await,
                    Work::Refused { height, block, index, why } => self.refuse(height, &block, index, why, &mut st),
                    Work::EndOfBlock { .. } => flights.push_back(Flight { work, plan: None, guard: None, alone: false, answer: None, ready: None, bytes: 0 }),
                    Work::Txn(t) => {
                        let alone = flights.iter().all(|f| f.plan.is_none());
                        let f = self.send(t, st.predicted, alone);
                        if let Work::Txn(t) = &f.work {
                            st.predicted = Some(t.last());
                        }
                        flights.push_back(f);
                    }
                }
            }
            let room = has_room(&flights);
            let Some(front) = flights.front_mut() else {
                if cursor.commits.changed().await.is_err() {
                    return Ok(());
                }
                continue;
            };
            if let Work::EndOfBlock { height, operations, started, t_us } = front.work {
                if operations > 0 {
                    self.end_of_block(height, &mut st).await;
                }
                self.applied_height.send_replace(height);
                crate::front::answers::set_applied(height);
                tracing::debug!(target: bftcd_sequencer::TRACE, t_us, step = "apply", height, operations,
                    apply_us = started.elapsed().as_micros() as u64, resent = st.resent);
                st.resent = 0;
                flights.pop_front();
                continue;
            }
            let answer = if waiting_for_commit && room {
                // More may commit while the front is on its way: send it behind.
                tokio::select! {
                    _ = front.settle() => front.land().await,
                    changed = cursor.commits.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        continue;
                    }
                }
            } else {
                front.land().await
            };
            let front = flights.pop_front().expect("front exists");
            self.landed(front, answer, &mut flights, &mut todo, &mut st).await;
        }
    }

    /// Hands a block with operations to the state digest. Nothing after it has run yet that a
    /// digest could see: lease calls and rule changes wait for every flight before them, and
    /// Txns behind are read from the watch only up to this block's revision.
    async fn end_of_block(&self, height: u64, st: &mut State) {
        let previous = std::mem::replace(&mut st.last_operations, height);
        let (Some(digests), Some(revision)) = (&self.digests, st.revision) else { return };
        let every = self.full_check_every.max(1);
        let full = height / every > previous / every;
        if full {
            self.check_leases(height).await;
        }
        let leases = self.leases.lock().unwrap().digest();
        let rules = super::digest::rules_digest(&self.rules());
        let end = super::digest::BlockEnd { height, revision, leases, rules, full };
        if let Some(digested) = &self.digested {
            // A replay: this block's digest is done before anything after it is applied.
            if digests.send(end).await.is_ok() {
                let _ = digested.clone().wait_for(|h| *h >= height).await;
            }
        } else if digests.try_send(end).is_err() {
            tracing::debug!(height, "digest: behind; this block's digest is skipped (a later one covers it)");
        }
    }

    /// A full check of the local etcd's leases against the replicated table: a lease revoked or
    /// granted behind the sidecar (one with keys attached also moved the revision).
    async fn check_leases(&self, height: u64) {
        let theirs = match self.etcd_lease_ids().await {
            Ok(ids) => ids,
            Err(e) => return tracing::warn!(height, error = %e, "digest: full check: cannot list the local etcd's leases"),
        };
        let ours: std::collections::BTreeSet<i64> = self.leases.lock().unwrap().ids().into_iter().collect();
        if theirs != ours {
            let show = |s: &std::collections::BTreeSet<i64>, o: &std::collections::BTreeSet<i64>| {
                s.difference(o).map(|i| format!("{i:016x}")).collect::<Vec<_>>()
            };
            tracing::error!(height, missing_in_etcd = ?show(&ours, &theirs), unknown_to_the_chain = ?show(&theirs, &ours),
                "digest: full check: the local etcd's leases differ from the replicated lease table (changed behind the sidecar)");
            crate::corrupt::raise(&self.etcd).await;
        }
    }

    /// Sends a Txn guarded by the position the Txn before it leaves.
    fn send(&self, t: TxnWork, after: Option<Position>, alone: bool) -> Flight {
        let (request, plan) = match t.batch {
            false => {
                let op = &t.ops()[0];
                let client = client_txn(op).unwrap_or_default();
                let w = wrap::wrap(&client, t.first());
                (wrap::guard(w.txn.clone(), after), Plan::Single(w))
            }
            true => {
                let mut plans = Vec::with_capacity(t.run.len());
                let mut success = Vec::with_capacity(t.run.len() + 1);
                for op in t.ops() {
                    let (rewritten, plan) = rewrite::plan_txn(&client_txn(op).unwrap_or_default());
                    success.push(RequestOp { request: Some(Request::RequestTxn(rewritten)) });
                    plans.push(plan);
                }
                success.push(wrap::bookkeeping(t.last()));
                (wrap::guard(TxnRequest { compare: vec![], success, failure: vec![] }, after), Plan::Batch(plans))
            }
        };
        let bytes = prost::Message::encoded_len(&request);
        let (answer, ready) = match t.landed.clone() {
            Some(r) => (None, Some(Ok(r))),
            None => {
                let kv = self.etcd.kv();
                let call = async move { kv.clone().txn(request).await.map(|r| r.into_inner()) };
                match queue_in_order(call.accounted(Component::Apply)) {
                    Ok(r) => (None, Some(r)),
                    Err(rest) => (Some(tokio::spawn(rest)), None),
                }
            }
        };
        Flight { work: Work::Txn(t), plan: Some(plan), guard: after, alone, answer, ready, bytes }
    }

    /// Reads etcd's answer to a guarded Txn.
    fn read_landing(&self, plan: &Plan, t: &TxnWork, answer: Result<TxnResponse, Status>) -> Landing {
        let resp = match answer {
            Ok(r) => r,
            Err(s) => {
                return match refusal(s) {
                    Attempt::Refused(s) => Landing::Refused(s),
                    Attempt::Transient(s) | Attempt::Local(s) => Landing::Failed(s),
                    // `refusal` never says done; if it did, nothing is known to have run.
                    Attempt::Done(..) => Landing::Failed(Status::internal("bftcd: an etcd error read as applied")),
                }
            }
        };
        let after = resp.header.as_ref().map(|h| h.revision);
        let inner = match wrap::unguard(resp, matches!(plan, Plan::Single(w) if w.nested_in_guard())) {
            Ok(inner) => inner,
            Err(found) => return Landing::Early(found),
        };
        let ops = t.ops();
        match plan {
            Plan::Single(w) => {
                let (client, recorded) = w.unwrap(inner);
                let header = self.identity.header(client.header);
                Landing::Applied(vec![Ok(finish(&ops[0], header, client))], recorded, after)
            }
            Plan::Batch(plans) => {
                let header = self.identity.header(inner.header);
                let revision = header.as_ref().map(|h| h.revision).unwrap_or_default();
                let mut responses = inner.responses.into_iter();
                let outcomes = ops
                    .iter()
                    .zip(plans)
                    .map(|(op, plan)| {
                        let nested = match responses.next().and_then(|r| r.response) {
                            Some(Response::ResponseTxn(t)) => t,
                            _ => TxnResponse::default(),
                        };
                        Ok(finish(op, header, rewrite::restore_txn(plan, nested, revision)))
                    })
                    .collect();
                Landing::Applied(outcomes, true, after)
            }
        }
    }

    /// Takes the front flight's answer; when the flights behind it were sent on a wrong guess,
    /// sends them again.
    async fn landed(
        &self,
        front: Flight,
        answer: Result<TxnResponse, Status>,
        flights: &mut VecDeque<Flight>,
        todo: &mut VecDeque<Work>,
        st: &mut State,
    ) {
        let Flight { work: Work::Txn(mut t), plan: Some(plan), guard, alone, .. } = front else { return };
        let landing = self.read_landing(&plan, &t, answer);
        let mut resend_front = false;
        match landing {
            Landing::Applied(outcomes, recorded, revision) => {
                self.deliver(t.ops(), outcomes);
                self.applied.send_replace(Some(t.last()));
                if recorded {
                    st.revision = revision;
                    st.recorded = Some(t.last());
                    st.traceless = None;
                } else {
                    st.traceless = Some(t.last());
                }
                st.backoff = FIRST_BACKOFF;
                if recorded || flights.is_empty() {
                    return;
                }
            }
            // An earlier send landed and its answer was lost.
            Landing::Early(found) if found >= Some(t.last()) => {
                self.deliver(t.ops(), t.ops().iter().map(|_| Err(errors::timeout())).collect());
                self.applied.send_replace(Some(t.last()));
                // Its revision went with the answer: no digest until the next one that records.
                st.revision = None;
                st.recorded = Some(t.last());
                st.traceless = None;
                if flights.is_empty() {
                    return;
                }
            }
            // It overtook the Txn before it inside etcd, which has landed since: the guesses
            // behind it still hold, so send it again, and the others that overtook too.
            Landing::Early(_) if !alone && guard == st.recorded => {
                st.resent += 1;
                t.landed = None;
                flights.push_front(self.send(t, guard, false));
                for f in flights.iter_mut().skip(1) {
                    if f.answer.as_ref().is_some_and(|h| h.is_finished()) {
                        f.settle().await;
                    }
                    if matches!((&f.ready, &f.work), (Some(Ok(r)), Work::Txn(_)) if !r.succeeded) {
                        let placeholder = Work::EndOfBlock { height: 0, operations: 0, started: Instant::now(), t_us: 0 };
                        if let Work::Txn(mut again) = std::mem::replace(&mut f.work, placeholder) {
                            st.resent += 1;
                            again.landed = None;
                            *f = self.send(again, f.guard, false);
                        }
                    }
                }
                return;
            }
            Landing::Early(found) => {
                if alone && found != guard {
                    tracing::error!(position = %t.first(), expected = ?guard.map(|p| p.to_string()),
                        found = ?found.map(|p| p.to_string()),
                        "apply: stopped: the applied-position key in the local etcd moved under this sidecar \
                         (another writer, or a restored snapshot); retrying, and serving no linearizable reads meanwhile");
                    self.back_off(st).await;
                }
                resend_front = true;
            }
            Landing::Refused(s) if !t.batch => {
                self.deliver(t.ops(), vec![Err(s)]);
                self.applied.send_replace(Some(t.last()));
                st.traceless = Some(t.last());
                if flights.is_empty() {
                    return;
                }
            }
            // Some operation in the batch fails: apply them one by one, which fails the same way
            // on every bank.
            Landing::Refused(_) => {
                self.resend_behind(flights, todo, st).await;
                for i in t.run.clone().rev() {
                    todo.push_front(single(t.height, &t.block, i));
                }
                return;
            }
            Landing::Failed(s) => {
                if is_transient(&s) {
                    tracing::warn!(position = %t.first(), error = %s, "apply: local etcd failed; retrying");
                } else {
                    tracing::error!(position = %t.first(), error = %s,
                        "apply: stopped: this bank's etcd refuses an operation the other banks apply (fix the etcd: \
                         alarm, limits, auth); retrying, and serving no linearizable reads meanwhile");
                }
                self.back_off(st).await;
                resend_front = true;
            }
        }
        // The flights behind were guarded by a position that is not there as predicted.
        self.resend_behind(flights, todo, st).await;
        if resend_front {
            t.landed = None;
            todo.push_front(Work::Txn(t));
        }
    }

    /// Waits for every flight behind the front, then queues them to be sent again from the
    /// position actually recorded, keeping the answers of any that landed after all.
    async fn resend_behind(&self, flights: &mut VecDeque<Flight>, todo: &mut VecDeque<Work>, st: &mut State) {
        for f in flights.iter_mut() {
            f.settle().await;
        }
        while let Some(mut f) = flights.pop_back() {
            st.resent += u64::from(matches!(f.work, Work::Txn(_)));
            if let (Work::Txn(t), Some(plan), Some(Ok(resp))) = (&mut f.work, &f.plan, &f.ready) {
                let ran = match wrap::unguard(resp.clone(), matches!(plan, Plan::Single(w) if w.nested_in_guard())) {
                    Ok(_) => Some(resp.clone()),
                    Err(_) => None,
                };
                t.landed = ran;
            }
            todo.push_front(f.work);
        }
        st.predicted = st.recorded;
    }

    async fn back_off(&self, st: &mut State) {
        tokio::time::sleep(st.backoff).await;
        st.backoff = (st.backoff * 2).min(Duration::from_secs(2));
    }

    fn deliver(&self, ops: &[Operation], outcomes: Vec<Outcome>) {
        let mut waiters = self.waiters.lock().unwrap();
        for (op, outcome) in ops.iter().zip(outcomes) {
            if let Some(w) = waiters.remove(&key_of(&op.id)) {
                let _ = w.send(outcome);
            }
        }
    }

    /// A bank's approval of a change of the chain's rules, or a client's auth call, with nothing
    /// else in flight. It changes no key; replayed after a crash, the rules rebuilt from the
    /// ledger meet it again.
    fn change_rules(&self, height: u64, block: &CommittedBlock, index: usize, effect: Effect, rules: Arc<ChainRules>, st: &mut State) {
        let op = &block_of(block).operations[index];
        let pos = Position { height, index: index as u32 };
        let bank = op.id.as_ref().and_then(|i| self.ledger.genesis().validators.get(i.bank as usize)).map_or("?", |v| v.name.as_str());
        let outcome = match effect {
            Effect::Approval(approval) => {
                match &approval {
                    Approval::Enacted { rules_version } => tracing::info!(position = %pos, approved_by = bank, rules_version,
                        key_owners = rules.key_owners().len(), "governance: every bank approved; the new chain rules are in effect"),
                    Approval::Pending { rules_version, approvals, needed } => tracing::info!(position = %pos, approved_by = bank,
                        rules_version, approvals, needed, "governance: a bank approved a change of the chain rules"),
                    Approval::Stale { rules_version } => tracing::info!(position = %pos, approved_by = bank, rules_version,
                        "governance: an approval for other rules than those in effect (or an invalid change) counts for nothing"),
                }
                Ok(super::OpResponse::Governance(approval))
            }
            Effect::Auth(Ok(())) => {
                tracing::info!(position = %pos, submitted_by = bank, auth_revision = rules.auth().revision(),
                    auth_enabled = rules.auth().enabled(), "auth: changed");
                Ok(super::OpResponse::Auth)
            }
            Effect::Auth(Err(e)) => Err(errors::auth(e)),
        };
        *self.rules.write().unwrap() = rules;
        st.traceless = Some(pos);
        self.applied.send_replace(Some(pos));
        self.deliver(std::slice::from_ref(op), vec![outcome]);
    }

    /// An operation every bank refuses (another bank's keys, a client without the permission),
    /// with nothing else in flight. It leaves no trace in etcd; replayed after a crash, it is
    /// refused again.
    fn refuse(&self, height: u64, block: &CommittedBlock, index: usize, why: Refusal, st: &mut State) {
        let op = &block_of(block).operations[index];
        let pos = Position { height, index: index as u32 };
        match why {
            Refusal::KeyOwner(owner) => self.refused_for_owner(op, pos, owner),
            Refusal::Auth(e) => {
                metrics::counter!("bftcd_apply_refused_total", "reason" => "auth").increment(1);
                tracing::debug!(position = %pos, error = e.text(), "apply: refused by etcd's auth");
            }
        }
        st.traceless = Some(pos);
        self.applied.send_replace(Some(pos));
        self.deliver(std::slice::from_ref(op), vec![Err(errors::refusal(why))]);
    }

    fn refused_for_owner(&self, op: &Operation, pos: Position, owner: u32) {
        let name = |i: u32| self.ledger.genesis().validators.get(i as usize).map_or_else(|| format!("#{i}"), |v| v.name.clone());
        let submitter = op.id.as_ref().map_or(u32::MAX, |id| id.bank);
        metrics::counter!("bftcd_apply_refused_total", "reason" => "key_owner").increment(1);
        tracing::warn!(position = %pos, submitted_by = %name(submitter), owner = %name(owner),
            "apply: refused an operation that writes keys owned by another bank (permission denied on every bank)");
    }

    /// A lease operation, compaction or empty operation, with nothing else in flight.
    async fn apply_alone(&self, height: u64, block: &CommittedBlock, index: usize, st: &mut State) {
        let b = block_of(block);
        let op = &b.operations[index];
        let pos = Position { height, index: index as u32 };
        // Such a call changes what a traceless operation before it would see if replayed after a
        // crash: remember that it is done.
        if let Some(p) = st.traceless.take() {
            self.store_cursor(p, st.recorded).await;
        }
        let chain_id = &self.ledger.genesis().chain_id;
        let rules = self.rules();
        let decision = leases::step(chain_id, &mut self.leases.lock().unwrap(), op, pos, b.timestamp_ms, rules.owners());
        if let Some(LeaseDecision::RevokeRefused { owner, .. }) = &decision {
            self.refused_for_owner(op, pos, *owner);
        }
        let (outcome, _) = self.apply(op, pos, decision.as_ref()).await;
        self.applied.send_replace(Some(pos));
        self.deliver(std::slice::from_ref(op), vec![outcome]);
    }
}
