//! Follows this bank's etcd and makes the state digest after each applied block with operations
//! ([`bftcd_sequencer::state_digest`]), for the checkpoints the banks certify among themselves
//! ([`bftcd_sequencer::checkpoint`]).
//!
//! The keys are followed from etcd's own watch, not from what the apply engine sent: a write
//! made behind the sidecar (someone with access to the bank's etcd) lands in the digest like
//! any other, so the bank's digest then differs from the others' and the bank stops serving.
//! The watch runs on a connection of its own and is read only as far as the block being
//! digested needs, so nothing piles up in the sidecar when digesting falls behind: etcd keeps
//! the events, and flow control holds them there.
//!
//! A block's digest is taken at the revision of the last Txn that recorded the apply position
//! at or before the block's end (every bank has the same revisions, so every honest bank takes
//! it at the same one). At start, after the watch is lost, and every `full_check_every` blocks,
//! the keys are read whole at that revision instead; a full read that disagrees with the
//! followed keys is logged.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bftcd_proto::etcdserverpb::{watch_request::RequestUnion, RangeRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse};
use bftcd_proto::mvccpb::{event::EventType, Event, KeyValue};
use bftcd_sequencer::checkpoint::{Checkpoints, Event as CheckpointEvent};
use bftcd_sequencer::governance::ChainRules;
use bftcd_sequencer::reserved;
use bftcd_sequencer::state_digest::{state_digest, KeyRecord, LtHash, StateParts};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::etcd::LocalEtcd;

/// A block applied, as the apply engine reports it.
#[derive(Debug, Clone)]
pub struct BlockEnd {
    pub height: u64,
    /// The revision the block's digest is taken at.
    pub revision: i64,
    pub leases: [u8; 32],
    pub rules: [u8; 32],
    /// Read the whole store for this one (a full check).
    pub full: bool,
}

/// Blocks a full check reads the whole store after (at the first block with operations past
/// each multiple): the default of `--digest-full-check-every`.
pub const FULL_CHECK_EVERY: u64 = 10_000;
/// Keys read per page of a full read: values may be up to a request's size (1.5 MiB by
/// default), so a page stays under about 100 MiB however large they are.
const PAGE: i64 = 64;
/// How long a wait for etcd's progress answer lasts before it is asked again.
const PROGRESS_WAIT: Duration = Duration::from_millis(200);

/// Logs what a bank whose digest differs changed since the last height certified before,
/// and marks it corrupt.
pub async fn on_checkpoint_events(mut events: mpsc::UnboundedReceiver<CheckpointEvent>, changes: Changes, etcd: LocalEtcd) {
    // The last two heights certified: a difference is reported right after its own height's
    // certificate, so the one agreed before it is the one before that.
    let (mut before, mut last) = (0u64, 0u64);
    while let Some(e) = events.recv().await {
        match e {
            CheckpointEvent::Certified(c) => {
                metrics::counter!("bftcd_digest_checks_total", "result" => "passed").increment(1);
                tracing::debug!(height = c.height, digest = %hex::encode(&c.state_digest), "digest: certified");
                crate::front::answers::set_certified(c.height, &c.state_digest);
                if c.height > last {
                    (before, last) = (last, c.height);
                }
            }
            CheckpointEvent::Differs { height, mine, certified: cert } => {
                metrics::counter!("bftcd_digest_checks_total", "result" => "failed").increment(1);
                let certified = if last >= height { before } else { last };
                let since: Vec<Changed> = changes.lock().unwrap().iter().filter(|c| c.height > certified && c.height <= height).cloned().collect();
                let keys: usize = since.iter().filter_map(|c| c.keys).sum();
                let whole = since.iter().any(|c| c.keys.is_none());
                let first = since.iter().filter(|c| c.keys.unwrap_or(1) > 0).map(|c| c.first.clone()).min();
                let last = since.iter().filter(|c| c.keys.unwrap_or(1) > 0).map(|c| c.last.clone()).max();
                let show = |k: Option<Vec<u8>>| k.map(|k| String::from_utf8_lossy(&k).into_owned()).unwrap_or_else(|| "-".into());
                tracing::error!(
                    block = height,
                    mine = %hex::encode(mine),
                    certified = %hex::encode(&cert.state_digest),
                    certified_by = ?cert.signatures.iter().map(|s| s.signer).collect::<Vec<_>>(),
                    last_agreed_block = certified,
                    revisions = ?since.first().map(|c| c.revision)..=since.last().map(|c| c.revision),
                    keys_changed = keys,
                    store_read_whole = whole,
                    first_key = %show(first),
                    last_key = %show(last),
                    "CORRUPT: this bank's etcd state differs from the state the other banks certified for this block \
                     (written behind the sidecar, or a bug); the keys changed since the last agreed block are in this range"
                );
                crate::corrupt::raise(&etcd).await;
                return;
            }
        }
    }
}

/// A serving bank's digest sink: its own digest goes to checkpointing, to be signed.
pub fn to_checkpoints(checkpoints: Checkpoints) -> impl FnMut(&BlockEnd, Option<[u8; 32]>) {
    move |end, digest| {
        if let Some(d) = digest {
            checkpoints.own(end.height, d);
        }
    }
}

/// What the chain's rules contribute: their version, the key owners and the auth revision.
pub fn rules_digest(rules: &ChainRules) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"bftcd rules v1\0");
    h.update(rules.version().to_be_bytes());
    for o in rules.key_owners() {
        h.update((o.prefix.len() as u64).to_be_bytes());
        h.update(&o.prefix);
        h.update(o.bank.to_be_bytes());
    }
    h.update(rules.auth().revision().to_be_bytes());
    h.finalize().into()
}

fn record_of(kv: &KeyValue) -> [u8; 32] {
    KeyRecord {
        key: &kv.key,
        value: &kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
    .hash()
}

/// What one digest folded in: for the log of a bank whose digest is found to differ.
#[derive(Debug, Clone)]
pub struct Changed {
    pub height: u64,
    pub revision: i64,
    /// Keys changed (None: the store was read whole).
    pub keys: Option<usize>,
    pub first: Vec<u8>,
    pub last: Vec<u8>,
}

/// The last digests' changes, newest last.
pub type Changes = Arc<std::sync::Mutex<VecDeque<Changed>>>;
const KEEP_CHANGES: usize = 256;

/// The keys of the store as of one revision.
#[derive(Default)]
struct Keys {
    records: HashMap<Vec<u8>, [u8; 32]>,
    lthash: LtHash,
}

impl Keys {
    fn put(&mut self, kv: &KeyValue) {
        let r = record_of(kv);
        if let Some(old) = self.records.insert(kv.key.clone(), r) {
            self.lthash.remove(&old);
        }
        self.lthash.add(&r);
    }

    fn delete(&mut self, key: &[u8]) {
        if let Some(old) = self.records.remove(key) {
            self.lthash.remove(&old);
        }
    }
}

/// Every key at `revision`, page by page at that one revision.
async fn read_whole(etcd: &LocalEtcd, revision: i64) -> Result<Keys, Status> {
    let mut keys = Keys::default();
    let mut from = vec![0u8];
    loop {
        let r = RangeRequest { key: from.clone(), range_end: vec![0], revision, limit: PAGE, serializable: true, ..Default::default() };
        let page = etcd.kv().range(r).await?.into_inner();
        for kv in &page.kvs {
            if !reserved::is_reserved(&kv.key) {
                keys.put(kv);
            }
        }
        match page.kvs.last() {
            Some(last) if page.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => return Ok(keys),
        }
    }
}

/// The keys part of the state digest of an etcd at `revision`, read whole as a full check
/// reads it, and the number of keys: for the initial state of a chain started from a snapshot.
pub async fn keys_checksum(etcd: &LocalEtcd, revision: i64) -> Result<([u8; 32], usize), Status> {
    let keys = read_whole(etcd, revision).await?;
    Ok((keys.lthash.checksum(), keys.records.len()))
}

struct Watch {
    requests: mpsc::Sender<WatchRequest>,
    stream: Streaming<WatchResponse>,
    /// Events received and not yet folded, in revision order.
    pending: VecDeque<Event>,
    /// etcd said every event up to here was sent (a progress answer).
    progress: i64,
    /// The newest revision of an event received. etcd never splits one revision's events over
    /// two answers, and a digested revision is always one that wrote the applied-position key,
    /// so once an event of that revision is in, so is everything up to it: no progress request.
    seen: i64,
    asked: bool,
}

pub struct Tracker {
    etcd: LocalEtcd,
    keys: Keys,
    /// The revision `keys` stand at, while they are followed.
    at: Option<i64>,
    watch: Option<Watch>,
    changes: Changes,
    /// Keys folded in since the last digest: count, smallest, largest.
    folded: (usize, Vec<u8>, Vec<u8>),
}

impl Tracker {
    pub fn new(etcd: &LocalEtcd) -> anyhow::Result<Tracker> {
        Ok(Tracker { etcd: etcd.dedicated()?, keys: Keys::default(), at: None, watch: None, changes: Default::default(), folded: Default::default() })
    }

    pub fn changes(&self) -> Changes {
        self.changes.clone()
    }

    fn note(&mut self, height: u64, revision: i64, whole: bool) {
        let (count, first, last) = std::mem::take(&mut self.folded);
        let mut c = self.changes.lock().unwrap();
        c.push_back(Changed { height, revision, keys: (!whole).then_some(count), first, last });
        while c.len() > KEEP_CHANGES {
            c.pop_front();
        }
    }

    /// Digests each block reported and hands the digest to `sink` (None: skipped, a later
    /// block's digest covers it), until the apply engine goes away or the bank is marked
    /// corrupt. A serving bank's sink is checkpointing ([`to_checkpoints`]); a replay's prints.
    pub async fn run(mut self, mut ends: mpsc::Receiver<BlockEnd>, mut sink: impl FnMut(&BlockEnd, Option<[u8; 32]>)) {
        while let Some(end) = ends.recv().await {
            if crate::corrupt::is_corrupt() {
                return;
            }
            let mut backoff = Duration::from_millis(100);
            let digest = loop {
                match self.digest(&end).await {
                    Ok(d) => break d,
                    Err(e) => {
                        tracing::warn!(height = end.height, revision = end.revision, error = %e, "digest: cannot read the local etcd; reading it whole again");
                        self.at = None;
                        self.watch = None;
                        if e.message().contains("compacted") {
                            // This block's revision is gone; a later block's digest covers it.
                            break None;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            };
            sink(&end, digest);
        }
    }

    async fn digest(&mut self, end: &BlockEnd) -> Result<Option<[u8; 32]>, Status> {
        match self.at {
            // Cannot go back (a restart of the apply engine in one run): read whole again.
            Some(at) if at > end.revision => {
                self.at = None;
                self.watch = None;
                return Ok(None);
            }
            Some(_) if !end.full => {
                self.follow(end.revision).await?;
                self.note(end.height, end.revision, false);
            }
            _ => {
                let whole = self.read_whole(end.revision).await?;
                if end.full && self.at.is_some() {
                    self.follow(end.revision).await?;
                    if whole.lthash != self.keys.lthash {
                        tracing::error!(height = end.height, revision = end.revision, followed = ?self.keys.lthash, whole = ?whole.lthash,
                            "digest: full check: the keys followed from the watch differ from the store read whole; the store's are certified");
                    }
                }
                if end.full {
                    tracing::info!(height = end.height, revision = end.revision, keys = whole.records.len(), "digest: full check of the store");
                }
                self.keys = whole;
                self.at = Some(end.revision);
                self.note(end.height, end.revision, true);
                self.watch = Some(self.start_watch(end.revision + 1).await?);
            }
        }
        let parts = StateParts { revision: end.revision, keys: self.keys.lthash.checksum(), leases: end.leases, rules: end.rules };
        Ok(Some(state_digest(&parts)))
    }

    async fn read_whole(&self, revision: i64) -> Result<Keys, Status> {
        read_whole(&self.etcd, revision).await
    }

    async fn start_watch(&self, from: i64) -> Result<Watch, Status> {
        let (requests, rx) = mpsc::channel(4);
        let create = WatchCreateRequest { key: vec![0], range_end: vec![0], start_revision: from, ..Default::default() };
        let _ = requests.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await;
        let stream = self.etcd.watch().watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        Ok(Watch { requests, stream, pending: VecDeque::new(), progress: from - 1, seen: from - 1, asked: false })
    }

    /// Folds every event up to `revision` into the keys.
    async fn follow(&mut self, revision: i64) -> Result<(), Status> {
        let Some(at) = self.at else { return Err(Status::internal("no position to follow from")) };
        if at >= revision {
            return Ok(());
        }
        let Some(w) = self.watch.as_mut() else { return Err(Status::internal("no watch")) };
        loop {
            while w.pending.front().is_some_and(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision) <= revision) {
                let e = w.pending.pop_front().expect("front exists");
                let kind = e.r#type();
                let Some(kv) = e.kv else { continue };
                if reserved::is_reserved(&kv.key) {
                    continue;
                }
                let f = &mut self.folded;
                if f.0 == 0 || kv.key < f.1 {
                    f.1 = kv.key.clone();
                }
                if f.0 == 0 || kv.key > f.2 {
                    f.2 = kv.key.clone();
                }
                f.0 += 1;
                match kind {
                    EventType::Put => self.keys.put(&kv),
                    EventType::Delete => self.keys.delete(&kv.key),
                }
            }
            if !w.pending.is_empty() || w.progress >= revision || w.seen >= revision {
                self.at = Some(revision);
                return Ok(());
            }
            if !w.asked {
                let ask = WatchRequest { request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})) };
                w.requests.send(ask).await.map_err(|_| Status::unavailable("the watch ended"))?;
                w.asked = true;
            }
            let got = match tokio::time::timeout(PROGRESS_WAIT, w.stream.message()).await {
                // etcd answers a progress request only once the watch has caught up: ask again.
                Err(_) => {
                    w.asked = false;
                    continue;
                }
                Ok(got) => got?,
            };
            let Some(resp) = got else { return Err(Status::unavailable("the watch ended")) };
            if resp.canceled || resp.compact_revision > 0 {
                return Err(Status::out_of_range(format!("the watch was cancelled: {} (compacted at {})", resp.cancel_reason, resp.compact_revision)));
            }
            if resp.created {
                continue;
            }
            if resp.events.is_empty() {
                w.progress = w.progress.max(resp.header.map_or(0, |h| h.revision));
                w.asked = false;
            } else {
                w.seen = w.seen.max(resp.events.iter().filter_map(|e| e.kv.as_ref()).map(|kv| kv.mod_revision).max().unwrap_or(0));
                w.pending.extend(resp.events);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_followed_put_by_put_equal_the_same_keys_read_whole() {
        let kv = |k: &str, v: &str, m: i64| KeyValue { key: k.into(), value: v.into(), create_revision: 2, mod_revision: m, version: 1, lease: 0 };
        let mut followed = Keys::default();
        followed.put(&kv("a", "1", 2));
        followed.put(&kv("b", "1", 3));
        followed.put(&kv("a", "2", 4));
        followed.delete(b"b");
        followed.delete(b"never");
        let mut whole = Keys::default();
        whole.put(&kv("a", "2", 4));
        assert!(followed.lthash == whole.lthash);
        whole.put(&kv("c", "1", 5));
        assert!(followed.lthash != whole.lthash);
    }
}
