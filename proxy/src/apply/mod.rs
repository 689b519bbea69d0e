//! The apply engine: committed operations from the ledger, applied to the local etcd in commit
//! order, each exactly once.
//!
//! A Put, DeleteRange or Txn is sent as one etcd Txn that also Puts the reserved applied-position
//! key whenever the operation changes something ([`wrap`]), so the position moves atomically with
//! the data and revisions stay exactly those stock etcd would give.
//!
//! Operations that change nothing (a failed compare with a read-only branch, a delete of missing
//! keys, a write etcd refuses) leave no trace; replaying them after a crash sees the same state
//! and does nothing again. Lease operations are decided by the replicated [`leases`] table, then
//! the local etcd is brought in line with its own lease calls (outside any Txn); Compact is its
//! own call too. Their replay is harmless (a grant of an existing ID, a revoke of a missing lease
//! or a repeated compaction leave the same state). What must not happen is replaying a traceless operation after one of those calls
//! changed what it sees, so before such a call the position of any traceless operation is
//! first stored in a small cursor file, with the position key it was written over, so that a
//! start over an etcd restored from an older snapshot is told apart ([`restore`]).

mod batch;
pub mod digest;
pub mod leases;
mod pipeline;
mod restore;
mod wrap;

pub use batch::BatchLimits;
pub use leases::{Lease, LeaseTable};

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bftcd_proto::bftcd::{operation::Request as Op, Operation, OperationId};
use bftcd_sequencer::governance::{Approval, ChainRules};
use bftcd_proto::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, PutResponse,
    RangeRequest, ResponseHeader, TxnResponse,
};
use bftcd_sequencer::{Ledger, Position};
use tokio::sync::{oneshot, watch};
use tonic::{Code, Status};

use crate::errors;
use crate::etcd::LocalEtcd;
use crate::identity::Identity;
use crate::reserved::APPLIED_KEY;
use leases::LeaseDecision;
use restore::{CursorFile, Verdict};

/// What a client gets back for its write.
#[derive(Debug)]
pub enum OpResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseKeepAlive(LeaseKeepAliveResponse),
    /// A bank's expiry request: whether the lease ended.
    LeaseExpire(bool),
    /// A bank's approval of a change of the chain's rules.
    Governance(Approval),
    /// A client's auth call, done.
    Auth,
}

pub type Outcome = Result<OpResponse, Status>;

enum Attempt {
    /// Applied; `true` when the position key moved with it.
    Done(OpResponse, bool),
    /// etcd refused the operation; every bank refuses it the same way.
    Refused(Status),
    /// The local etcd could not be reached or answered with a local condition; outcome unknown.
    Transient(Status),
    /// The local etcd refused for a reason of its own (an alarm, a limit set differently here,
    /// auth turned on behind the sidecar): the other banks apply the operation, so this one must
    /// not skip it. Applying stops here and retries until an operator fixes the etcd.
    Local(Status),
}

type Key = (u32, u64);

fn key_of(id: &Option<OperationId>) -> Key {
    id.as_ref().map(|i| (i.bank, i.nonce)).unwrap_or_default()
}

pub struct Applier {
    etcd: LocalEtcd,
    ledger: Arc<Ledger>,
    identity: Arc<Identity>,
    waiters: Mutex<HashMap<Key, oneshot::Sender<Outcome>>>,
    applied: watch::Sender<Option<Position>>,
    /// Every block up to this height is applied in full (the read index waits on it).
    applied_height: watch::Sender<u64>,
    leases: Mutex<LeaseTable>,
    cursor_path: PathBuf,
    /// None: `exact` mode, one etcd Txn (and revision) per operation.
    batching: Option<BatchLimits>,
    /// The chain's rules as of the last operation applied (key owners; [`ChainRules`]): an
    /// operation writing another bank's keys is refused here, on every bank alike, whatever its
    /// submitting bank checked. The pipeline plans with its own copy, ahead of this one.
    rules: std::sync::RwLock<Arc<ChainRules>>,
    /// Test builds only (`--byzantine stale-reads`): apply each block this long after its time,
    /// so the bank is reliably behind.
    pub lag: Duration,
    /// Where each applied block with operations goes for its state digest ([`digest`]).
    pub digests: Option<tokio::sync::mpsc::Sender<digest::BlockEnd>>,
    /// Blocks between full checks of the store ([`digest::FULL_CHECK_EVERY`]).
    pub full_check_every: u64,
    /// A replay's: the last height digested. When set, every block with operations is digested
    /// (none skipped when the digest falls behind) and applying waits for each digest, so that
    /// a compaction applied next cannot take away the revision the digest reads.
    pub digested: Option<watch::Receiver<u64>>,
}

/// How far the local etcd may be ahead of the ledger after a crash (blocks applied while the
/// ledger was writing them) and still be caught up from the peers; beyond it, this etcd's data
/// belongs to another ledger.
const MAX_APPLIED_AHEAD: u64 = 4096;

/// etcd's refusals that depend only on the operation and the replicated state, so that every
/// bank's etcd refuses it alike and every bank may skip it. The two limits are configured per
/// etcd: the same on every bank (docs/operations.md); a bank whose etcd is configured lower
/// refuses more than the others and must be fixed, but it skips no more than they do only while
/// they are equal.
const DETERMINISTIC_REFUSALS: &[&str] = &[
    "etcdserver: mvcc: required revision has been compacted",
    "etcdserver: mvcc: required revision is a future revision",
    "etcdserver: requested lease not found",
    "etcdserver: key is not provided",
    "etcdserver: key not found",
    "etcdserver: value is provided",
    "etcdserver: lease is provided",
    "etcdserver: duplicate key given in txn request",
    "etcdserver: too large lease TTL",
    "etcdserver: too many operations in txn request",
    "etcdserver: request is too large",
];

/// Fails closed: a refusal counts as the operation's only when it is one every bank's etcd gives
/// alike; anything else stops applying at this bank rather than skip.
fn refusal(s: Status) -> Attempt {
    if is_transient(&s) {
        Attempt::Transient(s)
    } else if DETERMINISTIC_REFUSALS.contains(&s.message()) {
        Attempt::Refused(errors::from_etcd(s))
    } else {
        Attempt::Local(s)
    }
}

/// Errors that say something about this bank's etcd, not about the operation.
fn is_transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Internal
            | Code::ResourceExhausted | Code::Aborted
    )
}

impl Applier {
    pub fn new(
        etcd: LocalEtcd,
        ledger: Arc<Ledger>,
        identity: Arc<Identity>,
        data_dir: &std::path::Path,
        batching: Option<BatchLimits>,
        rules: ChainRules,
    ) -> Self {
        let (applied, _) = watch::channel(None);
        let (applied_height, _) = watch::channel(0);
        Applier {
            applied_height,
            leases: Mutex::new(LeaseTable::default()),
            etcd,
            ledger,
            identity,
            waiters: Mutex::new(HashMap::new()),
            applied,
            cursor_path: data_dir.join("apply-cursor"),
            batching,
            rules: std::sync::RwLock::new(Arc::new(rules)),
            lag: Duration::ZERO,
            digests: None,
            full_check_every: digest::FULL_CHECK_EVERY,
            digested: None,
        }
    }

    /// The chain's rules as of the last operation applied.
    pub fn rules(&self) -> Arc<ChainRules> {
        self.rules.read().unwrap().clone()
    }

    /// Registers interest in the outcome of an operation about to be submitted.
    pub fn register(&self, id: &OperationId) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert((id.bank, id.nonce), tx);
        rx
    }

    pub fn forget(&self, id: &OperationId) {
        self.waiters.lock().unwrap().remove(&(id.bank, id.nonce));
    }

    /// The last applied position; wakes on every apply.
    pub fn applied(&self) -> watch::Receiver<Option<Position>> {
        self.applied.subscribe()
    }

    /// The height up to which every block is applied; wakes after each block.
    pub fn applied_height(&self) -> watch::Receiver<u64> {
        self.applied_height.subscribe()
    }

    pub fn lease(&self, id: i64) -> Option<Lease> {
        self.leases.lock().unwrap().get(id)
    }

    pub fn lease_ids(&self) -> Vec<i64> {
        self.leases.lock().unwrap().ids()
    }

    /// At most `limit` leases whose deadline is not after `now_ms`, soonest first, with their
    /// deadlines.
    pub fn leases_due(&self, now_ms: u64, limit: usize) -> Vec<(i64, u64)> {
        self.leases.lock().unwrap().due(now_ms, limit)
    }

    /// Applies committed blocks forever. Returns only on an error that needs an operator.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let (last, in_etcd) = self.recover().await?;
        let revision = match self.read_state().await {
            Ok((Some(_), key_revision, _)) => key_revision,
            Ok((None, _, _)) => self.first_revision(),
            Err(e) => anyhow::bail!("reading the local etcd's applied position: {e}"),
        };
        tracing::info!(applied = ?last.map(|p| p.to_string()), ledger_height = self.ledger.height(), "apply: resuming");
        self.applied.send_replace(last);
        let (height, skip) = match last {
            None => (1, 0),
            Some(p) => (p.height, p.index as usize + 1),
        };
        self.applied_height.send_replace(height - 1);
        self.pipeline(pipeline::Start { height, skip, in_etcd, revision }).await
    }

    /// Where to resume, and the position key in etcd. Usually the later of that key and the
    /// cursor file; from etcd's own position when its etcd was rolled back ([`restore`]).
    async fn recover(&self) -> anyhow::Result<(Option<Position>, Option<Position>)> {
        let mut warned = false;
        let (in_etcd, key_revision, revision) = loop {
            match self.read_state().await {
                Ok(s) => break s,
                Err(e) => {
                    if !warned {
                        tracing::warn!(etcd = %self.etcd.endpoint, error = %e, "apply: waiting for the local etcd");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let cursor = match std::fs::read(&self.cursor_path) {
            Ok(b) => Some(CursorFile::from_bytes(&b).ok_or_else(|| {
                anyhow::anyhow!("{} is damaged; remove it only if you know the local etcd is current", self.cursor_path.display())
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let show = |p: Option<Position>| p.map(|p| p.to_string()).unwrap_or_else(|| "none".into());
        let base = match cursor.map(|c| c.base) {
            Some(Some(b)) => show(b),
            Some(None) => "unrecorded".into(),
            None => "none".into(),
        };
        tracing::info!(in_etcd = %show(in_etcd), cursor = %show(cursor.map(|c| c.last)), cursor_base = %base, revision,
            ledger_height = self.ledger.height(), "apply: applied position found");
        let first = if crate::migrate::is_imported(self.ledger.genesis()) { i64::MAX } else { 1 };
        let mut verdict = restore::judge(in_etcd, revision, cursor, first);
        if let (Verdict::Resume(Some(p)), Some(c)) = (&verdict, cursor) {
            // The cursor is ahead of the key, as after a crash; but a snapshot taken between the
            // cursor's base and the cursor looks the same and may lack lease calls made before
            // the cursor. etcd's leases tell: after a crash they are the table's at the cursor
            // or after a lease call that followed it.
            if Some(*p) > in_etcd && p.height <= self.ledger.height() {
                let ledger = self.ledger.clone();
                let p = *p;
                let (_, sets, _) = tokio::task::spawn_blocking(move || restore::replay_leases(&ledger, Some(p))).await??;
                if !sets.contains(&self.etcd_lease_ids().await?) {
                    verdict = Verdict::Behind { from: in_etcd, cursor: c.last, base: in_etcd };
                }
            }
        }
        let (last, behind) = match verdict {
            Verdict::Refuse(why) => anyhow::bail!("{why}"),
            Verdict::Resume(p) => {
                // A cursor file of an earlier version gets the base it lacks: the key now.
                if let Some(c @ CursorFile { base: None, .. }) = cursor {
                    self.write_cursor(CursorFile { base: Some(in_etcd), ..c })?;
                }
                (p, None)
            }
            Verdict::Behind { from, cursor, base } => (from, Some((cursor, base))),
        };
        if let Some(p) = last {
            // With several banks, blocks are applied as soon as they commit, while the ledger
            // writes them: a crash can leave etcd a few blocks ahead of the ledger. Those blocks
            // are committed, so the peers hand them over again; wait for them.
            let several = self.ledger.genesis().validators.len() > 1;
            if several && p.height > self.ledger.height() && p.height <= self.ledger.height() + MAX_APPLIED_AHEAD {
                tracing::info!(
                    applied = p.height,
                    ledger_height = self.ledger.height(),
                    "apply: the local etcd is ahead of the ledger (a crash before the ledger write); \
                     waiting for the ledger to catch up from the peers"
                );
                let mut heights = self.ledger.subscribe();
                while self.ledger.height() < p.height {
                    if heights.changed().await.is_err() {
                        anyhow::bail!("the ledger closed while catching up");
                    }
                }
            }
            if p.height > self.ledger.height() {
                anyhow::bail!(
                    "the local etcd has applied up to block {} but the ledger {} ends at block {}: \
                     this etcd's data does not belong to this ledger (another chain's or bank's snapshot?). \
                     Restore a snapshot of this bank's own etcd, or give it an empty data directory and remove \
                     the apply-cursor file to rebuild it from the ledger",
                    p.height,
                    self.ledger.path().display(),
                    self.ledger.height()
                );
            }
        }
        if let Some((cursor, base)) = behind {
            tracing::info!(resume_after = %show(last), cursor = %cursor, cursor_base = %show(base),
                ledger_height = self.ledger.height(),
                "apply: the local etcd is behind this sidecar's apply cursor (restored from an older snapshot); \
                 replaying the ledger from the etcd's own position");
            self.rewind(last, key_revision, revision).await?;
        }
        let ledger = self.ledger.clone();
        let (table, _, rules) = tokio::task::spawn_blocking(move || restore::replay_leases(&ledger, last)).await??;
        tracing::info!(leases = table.ids().len(), rules_version = rules.version(), "apply: lease table and chain rules rebuilt from the ledger");
        *self.leases.lock().unwrap() = table;
        *self.rules.write().unwrap() = Arc::new(rules);
        Ok((last, in_etcd))
    }

    /// Puts a rolled-back etcd's leases back as they stood right after `from`, so that the
    /// replay meets the state the original apply met ([`restore`]), then forgets the cursor
    /// file, which describes an etcd that is gone. Repeatable: a crash midway redoes it.
    async fn rewind(&self, from: Option<Position>, key_revision: i64, revision: i64) -> anyhow::Result<()> {
        // A fresh etcd is at revision 1 (a snapshot's at its own); the Txn that wrote the key
        // made its revision.
        let expected = if from.is_some() { key_revision } else { self.first_revision() };
        if revision != expected {
            anyhow::bail!(
                "the local etcd was restored from a snapshot taken after a lease revoke or expiry deleted keys beyond its \
                 applied position {} (etcd at revision {revision}, the position written at {expected}): replaying from \
                 there would meet different keys than the other banks did. Restore a snapshot taken at another moment, or \
                 give this etcd an empty data directory and remove the apply-cursor file to rebuild it from the ledger",
                from.map(|p| p.to_string()).unwrap_or_else(|| "none".into())
            );
        }
        let ledger = self.ledger.clone();
        let (table, _, _) = tokio::task::spawn_blocking(move || restore::replay_leases(&ledger, from)).await??;
        let (revoke, grant) = restore::lease_fix(&table, &self.etcd_lease_ids().await?);
        for id in &revoke {
            // Checked before anything is touched: revoking a lease with keys would delete them.
            let ttl = self.etcd.lease().lease_time_to_live(LeaseTimeToLiveRequest { id: *id, keys: true }).await?.into_inner();
            anyhow::ensure!(
                ttl.keys.is_empty(),
                "the local etcd holds lease {id:016x} with keys attached, which the ledger had not granted at the etcd's \
                 applied position: this etcd's data does not belong to this ledger. Restore a snapshot of this bank's own \
                 etcd, or give it an empty data directory and remove the apply-cursor file to rebuild it from the ledger"
            );
        }
        for id in &revoke {
            // Granted after `from`: nothing can be attached to it (that would have moved the key).
            if let Err(s) = self.etcd.lease().lease_revoke(LeaseRevokeRequest { id: *id }).await {
                anyhow::ensure!(s.message() == errors::lease_not_found().message(), "revoking lease {id:016x} in the local etcd: {s}");
            }
        }
        for id in &grant {
            // Revoked after `from` while no key was attached (no revision moved): granted again.
            if let Err(s) = self.etcd.lease().lease_grant(LeaseGrantRequest { ttl: leases::LOCAL_TTL, id: *id }).await {
                anyhow::ensure!(s.message() == errors::lease_exists().message(), "granting lease {id:016x} in the local etcd: {s}");
            }
        }
        let (_, _, now) = self.read_state().await?;
        anyhow::ensure!(now == revision, "the local etcd's revision moved from {revision} to {now} while its leases were put back");
        tracing::info!(revoked = ?revoke.iter().map(|i| format!("{i:016x}")).collect::<Vec<_>>(),
            granted = ?grant.iter().map(|i| format!("{i:016x}")).collect::<Vec<_>>(),
            "apply: the local etcd's leases put back as they stood at its applied position");
        match std::fs::remove_file(&self.cursor_path) {
            Ok(()) => {
                if let Some(dir) = self.cursor_path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// The revision of an etcd that has applied nothing of the chain: a fresh etcd's, or the
    /// snapshot's the chain starts from.
    fn first_revision(&self) -> i64 {
        self.ledger.genesis().initial_revision.max(1)
    }

    /// The applied-position key, the revision that wrote it, and etcd's current revision.
    async fn read_state(&self) -> Result<(Option<Position>, i64, i64), Status> {
        let r = self
            .etcd
            .kv()
            .range(RangeRequest { key: APPLIED_KEY.to_vec(), serializable: true, ..Default::default() })
            .await?
            .into_inner();
        let revision = r.header.map(|h| h.revision).unwrap_or_default();
        match r.kvs.first() {
            None => Ok((None, 0, revision)),
            Some(kv) => Position::from_bytes(&kv.value)
                .map(|p| (Some(p), kv.mod_revision, revision))
                .ok_or_else(|| Status::data_loss("bftcd: the applied-position key in the local etcd is damaged")),
        }
    }

    /// The IDs of every lease the local etcd holds.
    async fn etcd_lease_ids(&self) -> anyhow::Result<BTreeSet<i64>> {
        let r = self.etcd.lease().lease_leases(LeaseLeasesRequest {}).await?.into_inner();
        Ok(r.leases.into_iter().map(|l| l.id).collect())
    }

    async fn read_position(&self) -> Result<Option<Position>, Status> {
        let r = self
            .etcd
            .kv()
            .range(RangeRequest { key: APPLIED_KEY.to_vec(), ..Default::default() })
            .await?
            .into_inner();
        match r.kvs.first() {
            None => Ok(None),
            Some(kv) => Position::from_bytes(&kv.value)
                .map(Some)
                .ok_or_else(|| Status::data_loss("bftcd: the applied-position key in the local etcd is damaged")),
        }
    }

    fn write_cursor(&self, cursor: CursorFile) -> std::io::Result<()> {
        let tmp = self.cursor_path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &cursor.to_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.cursor_path)?;
        if let Some(dir) = self.cursor_path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// `base`: the applied-position key in etcd now, so that a later start can tell a rolled
    /// back etcd from one that merely did not move since.
    async fn store_cursor(&self, pos: Position, base: Option<Position>) {
        while let Err(e) = self.write_cursor(CursorFile { last: pos, base: Some(base) }) {
            tracing::error!(error = %e, path = %self.cursor_path.display(), "apply: cannot write the apply cursor; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Applies one operation, riding out outages of the local etcd. Also says whether the
    /// position key moved with it.
    async fn apply(&self, op: &Operation, pos: Position, lease: Option<&LeaseDecision>) -> (Outcome, bool) {
        let mut retrying = false;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.attempt(op, lease, retrying).await {
                Attempt::Done(r, recorded) => return (Ok(r), recorded),
                Attempt::Refused(status) => return (Err(status), false),
                Attempt::Transient(status) | Attempt::Local(status) => {
                    if !is_transient(&status) {
                        tracing::error!(position = %pos, error = %status,
                            "apply: stopped: this bank's etcd refuses an operation the other banks apply (fix the etcd: \
                             alarm, limits, auth); retrying, and serving no linearizable reads meanwhile");
                    } else {
                        tracing::warn!(position = %pos, error = %status, "apply: local etcd failed; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    // The failed call may or may not have landed. The position key says which.
                    match self.read_position().await {
                        Ok(Some(p)) if p >= pos => return (Err(errors::timeout()), true),
                        Ok(_) => retrying = true,
                        Err(_) => {}
                    }
                }
            }
        }
    }

    async fn attempt(&self, op: &Operation, lease: Option<&LeaseDecision>, retrying: bool) -> Attempt {
        let Some(request) = &op.request else {
            // Validated before ordering; an empty operation from the ledger changes nothing.
            return Attempt::Refused(errors::key_not_found());
        };
        match request {
            // The pipeline applies these, guarded (and approvals, which change no key).
            Op::Put(_) | Op::DeleteRange(_) | Op::Txn(_) | Op::Governance(_) | Op::Auth(_) => {
                Attempt::Local(Status::internal("bftcd: a Put, DeleteRange or Txn reached the single-call path"))
            }
            Op::Compact(c) => match self.etcd.kv().compact(*c).await {
                Ok(r) => Attempt::Done(OpResponse::Compact(CompactionResponse { header: self.identity.header(r.into_inner().header) }), false),
                Err(s) if is_transient(&s) => Attempt::Transient(s),
                // A compaction that already happened before the outage.
                Err(s) if retrying && s.message() == errors::compacted().message() => Attempt::Refused(errors::timeout()),
                Err(s) => refusal(s),
            },
            Op::LeaseGrant(_) | Op::LeaseRevoke(_) | Op::LeaseKeepAlive(_) | Op::LeaseExpire(_) => match lease {
                Some(d) => self.apply_lease(d).await,
                None => Attempt::Refused(errors::lease_not_found()),
            },
        }
    }

    /// Brings the local etcd in line with a lease decision and answers as etcd would.
    async fn apply_lease(&self, decision: &LeaseDecision) -> Attempt {
        let result = match decision {
            LeaseDecision::Grant { result: Err(s), .. } => return Attempt::Refused(s.clone()),
            LeaseDecision::Grant { id, result: Ok(ttl) } => {
                let granted = match self.etcd.lease().lease_grant(LeaseGrantRequest { ttl: leases::LOCAL_TTL, id: *id }).await {
                    Ok(r) => Ok(r.into_inner().header),
                    // Granted before a crash: the table is what counts.
                    Err(s) if s.message() == errors::lease_exists().message() => self.current_header().await,
                    Err(s) => Err(s),
                };
                granted.map(|h| {
                    OpResponse::LeaseGrant(LeaseGrantResponse { header: self.identity.header(h), id: *id, ttl: *ttl, error: String::new() })
                })
            }
            LeaseDecision::Revoke { found: false, .. } => return Attempt::Refused(errors::lease_not_found()),
            LeaseDecision::RevokeRefused { .. } => return Attempt::Refused(errors::permission_denied()),
            LeaseDecision::Revoke { id, found: true } => {
                self.revoke_local(*id).await.map(|h| OpResponse::LeaseRevoke(LeaseRevokeResponse { header: self.identity.header(h) }))
            }
            LeaseDecision::Expire { expired: false, .. } => return Attempt::Done(OpResponse::LeaseExpire(false), false),
            LeaseDecision::Expire { id, expired: true } => {
                tracing::info!(lease = format!("{id:016x}"), "apply: lease expired at the agreed block time");
                self.revoke_local(*id).await.map(|_| OpResponse::LeaseExpire(true))
            }
            // etcd answers a keepalive of an unknown lease with TTL 0, not an error.
            LeaseDecision::KeepAlive { id, ttl } => self.current_header().await.map(|h| {
                OpResponse::LeaseKeepAlive(LeaseKeepAliveResponse { header: self.identity.header(h), id: *id, ttl: ttl.unwrap_or(0) })
            }),
        };
        match result {
            Ok(r) => Attempt::Done(r, false),
            Err(s) if is_transient(&s) => Attempt::Transient(s),
            // The replicated table allowed it, so every other bank did it.
            Err(s) => Attempt::Local(s),
        }
    }

    /// Revokes the local etcd's copy of a lease, deleting its keys in one revision.
    async fn revoke_local(&self, id: i64) -> Result<Option<ResponseHeader>, Status> {
        match self.etcd.lease().lease_revoke(LeaseRevokeRequest { id }).await {
            Ok(r) => Ok(r.into_inner().header),
            // Revoked before a crash.
            Err(s) if s.message() == errors::lease_not_found().message() => self.current_header().await,
            Err(s) => Err(s),
        }
    }

    /// The local etcd's header now (as etcd gave it), for answers that change nothing in etcd.
    pub async fn current_header(&self) -> Result<Option<ResponseHeader>, Status> {
        let probe = RangeRequest { key: APPLIED_KEY.to_vec(), count_only: true, serializable: true, ..Default::default() };
        Ok(self.etcd.kv().range(probe).await?.into_inner().header)
    }
}
