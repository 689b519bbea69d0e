//! The HotStuff-2 sequencer: the pure [`consensus::Core`] driven by real time, the mTLS peer
//! network, the ledger, and the consensus log (voted blocks and the safety state).
//!
//! One task owns the core. It wakes on a peer message, on client operations, or when the core
//! asks for a tick, and carries out the core's outputs in order: the blocks and safety state a
//! step produced go to the [`ConsensusLog`] in one fdatasync before anything after them (a vote,
//! a timeout) leaves. Committed blocks go to the ledger's own writer task, which appends them in
//! order and then answers the submitter of each committed operation: no message waits for the
//! ledger's disk write. (After a crash, commits the ledger had not stored yet come back from the
//! peers; their blocks are still in the consensus log, and nothing in them was acknowledged.)

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bftcd_proto::bftcd::{Block, CommittedBlock, Genesis, Operation, PeerMessage};
use bftcd_proto::Message;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::consensus::mempool::{op_id, OpId};
use crate::consensus_log::ConsensusLog;
use crate::cpu::{self, AccountedExt, Component};
use crate::consensus::{CommittedLog, Config, Core, Domain, Input, Output, Refusal, SafetyRules, SafetyState};
use crate::keys::{BankKeys, ChainCrypto};
use crate::net::{NetConfig, Network, PeerInfo};
use crate::stages::{self, Checked, Submission};
use crate::{genesis_hash, Ledger, Position, Sequencer, SequencerError};

/// What the rest of the bank can see of consensus (metrics, Status, logs).
#[derive(Debug, Clone, Default)]
pub struct ConsensusStatus {
    pub view: u64,
    pub leader: usize,
    pub committed_height: u64,
    pub mempool: usize,
    pub rejected_messages: u64,
    /// Equivocations this bank learned of (evidence kept in `<data-dir>/evidence`).
    pub evidence: u64,
    /// Height of the block the highest known QC certifies.
    pub certified_height: u64,
    /// Bytes of the operations in the mempool.
    pub mempool_bytes: usize,
    /// Views this bank gave up on (broadcast a timeout for), since start.
    pub views_timed_out: u64,
    /// Views given up on since the highest QC last moved: a bank whose ordering is stuck
    /// counts up; an idle chain stays at 0 (no view runs a timer when nothing waits).
    pub timeouts_since_certificate: u64,
    /// Times the current view's leader differed from the previous view's, since start.
    pub leader_changes: u64,
    /// Batches of this bank's own operations sent to the other banks' mempools.
    pub forwarded_batches: u64,
    /// Peer messages dropped, by why: undecodable or with a bad signature (`unverified`),
    /// refused by the consensus rules (`invalid`), over the peer's share of the backlog
    /// (`backlog_full`).
    pub refused_unverified: u64,
    pub refused_invalid: u64,
    pub refused_backlog_full: u64,
    /// A height at least one honest peer has reached: the (f+1)-th highest of the peers' latest
    /// claims (heights of the blocks they proposed, committed heights in their read-index
    /// replies), so f Byzantine peers cannot raise it. A bank far below it is catching up.
    pub peers_height: u64,
}

/// The (f+1)-th highest of `claims` (one per peer, f = (n − 1) / 3 for n banks): at least one
/// of the f+1 highest is an honest bank's.
pub fn honest_height(n: usize, claims: &[u64]) -> u64 {
    let f = n.saturating_sub(1) / 3;
    let mut sorted = claims.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.get(f).copied().unwrap_or(0)
}

pub struct HotStuffOptions {
    pub me: usize,
    pub data_dir: PathBuf,
    pub listen_peer: std::net::SocketAddr,
    /// A view's first timeout (it doubles after repeated failures).
    pub view_timeout: Duration,
    #[cfg(feature = "byzantine")]
    pub misbehaviour: Vec<crate::byzantine::Misbehaviour>,
}

type Waiters = HashMap<OpId, oneshot::Sender<Result<Position, SequencerError>>>;
/// Shared by the consensus task (which registers) and the ledger writer (which answers).
type SharedWaiters = Arc<std::sync::Mutex<Waiters>>;

pub struct HotStuff {
    ledger: Arc<Ledger>,
    submit: mpsc::Sender<(Operation, oneshot::Sender<Result<Position, SequencerError>>)>,
    reads: mpsc::Sender<oneshot::Sender<u64>>,
    status: watch::Receiver<ConsensusStatus>,
    network: Network,
    /// Why the consensus task ended, once it has.
    stopped: watch::Receiver<Option<String>>,
    checkpoints: crate::checkpoint::Checkpoints,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

struct LedgerLog(Arc<Ledger>);

impl CommittedLog for LedgerLog {
    fn read(&self, height: u64) -> Option<CommittedBlock> {
        self.0.read(height).ok()
    }
}

impl HotStuff {
    pub async fn start(
        genesis: &Genesis,
        keys: &BankKeys,
        ledger: Arc<Ledger>,
        opts: HotStuffOptions,
    ) -> anyhow::Result<HotStuff> {
        let crypto = Arc::new(ChainCrypto::new(keys, genesis)?);
        let n = genesis.validators.len();
        let domain = Domain { chain_id: genesis.chain_id.clone(), epoch: genesis.epoch, n };
        let limits = crate::validity::Limits::of(genesis);
        limits.check().map_err(|e| anyhow::anyhow!("the genesis's limits: {e}"))?;
        let mut cfg = Config::new(opts.me, domain, genesis_hash(genesis)).with_limits(limits);
        cfg.base_timeout_ms = opts.view_timeout.as_millis().max(50) as u64;
        cfg.max_timeout_ms = cfg.max_timeout_ms.max(cfg.base_timeout_ms * 16);

        let (consensus_log, remembered) = ConsensusLog::open(&opts.data_dir, ledger.height())?;
        // The committed tip and a QC certifying it (carried by its commit proof).
        let tip = match ledger.height() {
            0 => None,
            h => {
                let cb = ledger.read(h)?;
                let qc = cb.commit_child.as_ref().and_then(|c| c.justify.clone());
                match (cb.block, qc) {
                    (Some(b), Some(qc)) => Some((b, qc)),
                    _ => anyhow::bail!("the ledger's last block has no commit proof"),
                }
            }
        };
        // Every operation a later block could still repeat: the whole acceptance window by block
        // time, however many blocks that is (ids only, not the operations).
        let recent = crate::consensus::committed_in_window(&cfg, ledger.height(), |h| {
            ledger.read(h).map(|cb| cb.block.unwrap_or_default())
        })?;
        let mut last_operations = 0;
        // The leader choice looks back on the last blocks' headers (consensus::leader).
        let mut history = Vec::new();
        let window = crate::consensus::leader::window_blocks(n) as u64;
        let from = ledger.height().saturating_sub(window) + 1;
        for h in from..=ledger.height() {
            let mut b = ledger.read(h)?.block.unwrap_or_default();
            if !b.operations.is_empty() {
                last_operations = h;
            }
            b.operations.clear();
            history.push(b);
        }
        if last_operations == 0 {
            for h in (1..from).rev() {
                if !ledger.read(h)?.block.unwrap_or_default().operations.is_empty() {
                    last_operations = h;
                    break;
                }
            }
        }
        let stage_domain = cfg.domain.clone();
        let (max_blocks, max_bytes) = (cfg.max_sync_blocks, cfg.max_sync_bytes);
        let mut core = Core::new(
            cfg,
            Box::new(crypto.clone()),
            SafetyRules::new(remembered.safety),
            genesis.genesis_time_ms,
            tip,
            remembered.blocks,
            recent,
        );
        core.set_last_committed_operations(last_operations);
        core.set_committed_history(&history);
        if let Some(tc) = remembered.high_tc {
            core.set_high_tc(tc);
        }
        drop(history);

        let peers = genesis
            .validators
            .iter()
            .enumerate()
            .map(|(i, v)| PeerInfo { index: i as u32, name: v.name.clone(), address: v.peer_address.clone(), cert_der: v.tls_certificate.clone() })
            .collect();
        let net_cfg = NetConfig::new(
            opts.me as u32,
            opts.listen_peer,
            peers,
            crate::block::genesis_hash(genesis),
            keys.tls_cert_pem.clone(),
            keys.tls_key_pem.clone(),
        );
        let (network, raw_incoming) = Network::start(net_cfg).await?;
        let (checked_tx, incoming) = mpsc::channel(1024);
        let (checkpoint_tx, checkpoint_rx) = mpsc::channel(4096);
        let committed_ledger = ledger.clone();
        let checkpoints = crate::checkpoint::start(
            crate::checkpoint::Setup {
                domain: stage_domain.clone(),
                me: opts.me as u32,
                crypto: Some(crypto.clone()),
                network: Some(network.clone()),
                data_dir: opts.data_dir.clone(),
                committed: Arc::new(move || committed_ledger.committed_height()),
                #[cfg(feature = "byzantine")]
                wrong_digest: opts.misbehaviour.contains(&crate::byzantine::Misbehaviour::WrongDigest),
                #[cfg(not(feature = "byzantine"))]
                wrong_digest: false,
            },
            checkpoint_rx,
        )?;
        let (sync_tx, sync_requests) = mpsc::channel(16);
        tokio::spawn(stages::serve_sync(sync_requests, ledger.clone(), network.clone(), max_blocks, max_bytes).accounted(Component::Network));
        let sync = stages::SyncDiversion { ledger: ledger.clone(), requests: sync_tx, max_blocks, budget: Default::default() };
        tokio::spawn(
            stages::check_incoming(raw_incoming, crypto.clone(), stage_domain.clone(), checked_tx, Some(sync), Some(checkpoint_tx))
                .accounted(Component::Consensus),
        );
        let (submit, raw_submissions) = mpsc::channel(65_536);
        let (signed_tx, submissions) = mpsc::channel(64);
        #[cfg(feature = "byzantine")]
        let forge = (crypto.clone(), stage_domain.clone());
        let chain_id = stage_domain.chain_id.clone();
        tokio::spawn(stages::sign_submissions(raw_submissions, crypto, stage_domain, signed_tx).accounted(Component::Consensus));
        let (reads, read_requests) = mpsc::channel(65_536);
        let (status_tx, status) = watch::channel(ConsensusStatus::default());
        let waiters: SharedWaiters = Default::default();
        let (commits, committed) = mpsc::unbounded_channel();
        tokio::spawn(write_ledger(ledger.clone(), waiters.clone(), committed).accounted(Component::Persistence));
        let driver = Driver {
            evidence_dir: opts.data_dir.join("evidence"),
            chain_id,
            evidence: 0,
            core,
            network: network.clone(),
            ledger: ledger.clone(),
            consensus_log: Arc::new(std::sync::Mutex::new(consensus_log)),
            waiters,
            commits,
            reads_unassigned: Vec::new(),
            reads_assigned: Vec::new(),
            status: status_tx,
            rejected: 0,
            refused_unverified: 0,
            views_timed_out: 0,
            timeouts_since_certificate: 0,
            last_timeout_view: 0,
            leader_changes: 0,
            forwarded_batches: 0,
            qc_view: 0,
            entered: std::collections::VecDeque::new(),
            reads_sent: std::collections::VecDeque::new(),
            peer_names: genesis.validators.iter().map(|v| v.name.clone()).collect(),
            peer_claims: vec![0; n],
            gave_up_logged: None,
            gave_up_quiet: 0,
            disk_us: 0,
            backlog: Default::default(),
            deferred: Vec::new(),
            #[cfg(feature = "byzantine")]
            misbehaviour: opts.misbehaviour,
            #[cfg(feature = "byzantine")]
            n,
            #[cfg(feature = "byzantine")]
            me: opts.me,
            #[cfg(feature = "byzantine")]
            forger: Default::default(),
            #[cfg(feature = "byzantine")]
            spammer: Default::default(),
            #[cfg(feature = "byzantine")]
            replayer: Default::default(),
            #[cfg(feature = "byzantine")]
            forge,
        };
        let task = tokio::spawn(driver.run(incoming, submissions, read_requests).accounted(Component::Consensus));
        let (stopped_tx, stopped) = watch::channel(None);
        tokio::spawn(async move {
            let why = match task.await {
                Ok(Some(why)) => why,
                Ok(None) => "shut down".to_string(),
                Err(e) if e.is_panic() => {
                    let payload = e.into_panic();
                    let text = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    format!("the consensus task panicked: {text}")
                }
                Err(e) => format!("the consensus task ended: {e}"),
            };
            stopped_tx.send_replace(Some(why));
        });
        Ok(HotStuff { ledger, submit, reads, status, network, stopped, checkpoints })
    }

    pub fn status(&self) -> watch::Receiver<ConsensusStatus> {
        self.status.clone()
    }

    /// Resolves, with the reason, when this bank's consensus task has ended (a disk error, a
    /// safety violation, a bug): from then on the bank can order nothing, and its process should
    /// stop rather than look healthy.
    pub fn stopped(&self) -> impl Future<Output = String> + Send + 'static {
        let mut stopped = self.stopped.clone();
        async move {
            loop {
                if let Some(why) = stopped.borrow_and_update().clone() {
                    return why;
                }
                if stopped.changed().await.is_err() {
                    return "the consensus task ended".to_string();
                }
            }
        }
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// State digest checkpoints ([`crate::checkpoint`]).
    pub fn checkpoints(&self) -> &crate::checkpoint::Checkpoints {
        &self.checkpoints
    }
}

impl Sequencer for HotStuff {
    fn submit(&self, op: Operation) -> Pin<Box<dyn Future<Output = Result<Position, SequencerError>> + Send + '_>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.submit.send((op, tx)).await.map_err(|_| SequencerError::Stopped)?;
            rx.await.map_err(|_| SequencerError::Stopped)?
        })
    }

    fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    fn read_index(&self) -> Pin<Box<dyn Future<Output = Result<u64, SequencerError>> + Send + '_>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.reads.send(tx).await.map_err(|_| SequencerError::Stopped)?;
            rx.await.map_err(|_| SequencerError::Stopped)
        })
    }
}

/// What the core asked to be on disk before its next message leaves.
#[derive(Default)]
struct Durable {
    blocks: Vec<Arc<Block>>,
    safety: Option<SafetyState>,
    tc: Option<bftcd_proto::bftcd::TimeoutCert>,
}

impl Durable {
    fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.safety.is_none() && self.tc.is_none()
    }
}

/// The ledger's writer: appends committed blocks in commit order (everything that queued up
/// while the last write ran goes in one write and one fsync), then answers the submitters. On a
/// write error it fails every waiting submitter and stops; the consensus task stops with it.
async fn write_ledger(ledger: Arc<Ledger>, waiters: SharedWaiters, mut committed: mpsc::UnboundedReceiver<Arc<CommittedBlock>>) {
    while let Some(first) = committed.recv().await {
        let mut blocks = vec![first];
        while let Ok(more) = committed.try_recv() {
            blocks.push(more);
        }
        let answers: Vec<(OpId, Position)> = blocks
            .iter()
            .filter_map(|cb| cb.block.as_ref())
            .flat_map(|b| {
                b.operations
                    .iter()
                    .enumerate()
                    .filter_map(move |(i, op)| op_id(op).map(|id| (id, Position { height: b.height, index: i as u32 })))
            })
            .collect();
        let l = ledger.clone();
        let (t_us, started) = (crate::now_us(), std::time::Instant::now());
        let heights = (blocks[0].block.as_ref().map_or(0, |b| b.height), blocks.len());
        let written = tokio::task::spawn_blocking(move || cpu::run(Component::Persistence, || l.append_all(&blocks))).await;
        tracing::debug!(target: crate::TRACE, t_us, step = "ledger-append", first = heights.0, blocks = heights.1,
            disk_us = started.elapsed().as_micros() as u64);
        let error = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        let mut w = waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = error {
            tracing::error!(error = %e, "ledger: write failed; this bank orders nothing more until restarted");
            for (_, waiter) in w.drain() {
                let _ = waiter.send(Err(SequencerError::Ledger(e.clone())));
            }
            return;
        }
        for (id, pos) in answers {
            if let Some(waiter) = w.remove(&id) {
                let _ = waiter.send(Ok(pos));
            }
        }
    }
}

/// Most peer messages handled in one step (one consensus-log write for all of them).
const GROUP_INPUTS: usize = 64;

/// Most checked peer messages moved into the backlog at once (the rest wait in the channel).
const TAKE_AT_ONCE: usize = 256;

/// What arrived while the consensus log was being written.
// Short-lived, one at a time: boxing the message would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Side {
    Peer(Option<Checked>),
    Read(Option<oneshot::Sender<u64>>),
}

fn is_read_index(m: &PeerMessage) -> bool {
    use bftcd_proto::bftcd::peer_message::Kind;
    matches!(m.kind, Some(Kind::ReadIndexRequest(_) | Kind::ReadIndexReply(_)))
}

/// Outputs that may leave before the step's durable state is written: read-index messages and
/// answers (they report certified heights, facts that need nothing of this bank's disk) and
/// refusals.
fn independent_of_disk(o: &Output) -> bool {
    match o {
        Output::Send { msg, .. } | Output::Broadcast(msg) => is_read_index(msg),
        Output::ReadRoundStarted(_) | Output::ReadIndex { .. } | Output::Rejected { .. } | Output::Refused { .. } => true,
        _ => false,
    }
}

/// At most one info line this often for views given up on (the rest at debug).
const GAVE_UP_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

struct Driver {
    /// Where evidence of equivocation is kept, one file each ([`crate::evidence`]).
    evidence_dir: PathBuf,
    chain_id: String,
    evidence: u64,
    core: Core,
    network: Network,
    ledger: Arc<Ledger>,
    /// Shared with the blocking threads that write it; only one write is ever in flight.
    consensus_log: Arc<std::sync::Mutex<ConsensusLog>>,
    waiters: SharedWaiters,
    /// To the ledger writer, in commit order.
    commits: mpsc::UnboundedSender<Arc<CommittedBlock>>,
    /// Reads waiting for the next read-index round to start, and reads in a round.
    reads_unassigned: Vec<oneshot::Sender<u64>>,
    reads_assigned: Vec<(u64, oneshot::Sender<u64>)>,
    status: watch::Sender<ConsensusStatus>,
    rejected: u64,
    /// Of `rejected`: messages the checking stage refused (undecodable, bad signature).
    refused_unverified: u64,
    views_timed_out: u64,
    timeouts_since_certificate: u64,
    last_timeout_view: u64,
    leader_changes: u64,
    forwarded_batches: u64,
    /// View of the highest QC when last looked at.
    qc_view: u64,
    /// When this bank entered its last views (for the QC latency histogram).
    entered: std::collections::VecDeque<(u64, std::time::Instant)>,
    /// When this bank's last read-index rounds were sent (for the peer round-trip histogram).
    reads_sent: std::collections::VecDeque<(u64, std::time::Instant)>,
    /// Validator names, for the `To` label of the round-trip histogram.
    peer_names: Vec<String>,
    /// Per validator: the highest height it claimed to have reached (see `peers_height`).
    peer_claims: Vec<u64>,
    /// When "giving up on view" was last logged, and how many since went unlogged: a bank cut
    /// off times out view after view, and one line per view says nothing new.
    gave_up_logged: Option<std::time::Instant>,
    gave_up_quiet: u64,
    /// Time this step spent writing the consensus log (for trace events).
    disk_us: u64,
    /// Checked peer messages not yet handled, per peer, taken in turn (see [`crate::backlog`]);
    /// those that arrived while the consensus log was being written come before anything newer.
    backlog: crate::backlog::Backlog,
    /// Outputs of read-index steps taken while the log was being written that had to wait.
    deferred: Vec<Output>,
    #[cfg(feature = "byzantine")]
    misbehaviour: Vec<crate::byzantine::Misbehaviour>,
    #[cfg(feature = "byzantine")]
    n: usize,
    #[cfg(feature = "byzantine")]
    me: usize,
    #[cfg(feature = "byzantine")]
    forger: crate::byzantine::Forger,
    #[cfg(feature = "byzantine")]
    spammer: crate::byzantine::Spammer,
    #[cfg(feature = "byzantine")]
    replayer: crate::byzantine::Replayer,
    /// This bank's own signing key and domain, to sign what the forger makes up.
    #[cfg(feature = "byzantine")]
    forge: (Arc<ChainCrypto>, Domain),
}


impl Driver {
    async fn run(
        mut self,
        mut incoming: mpsc::Receiver<Checked>,
        mut submissions: mpsc::Receiver<Vec<Submission>>,
        mut read_requests: mpsc::Receiver<oneshot::Sender<u64>>,
    ) -> Option<String> {
        #[cfg(feature = "byzantine")]
        let mut steps = 0u64;
        loop {
            #[cfg(feature = "byzantine")]
            {
                steps += 1;
                for m in &self.misbehaviour {
                    if let crate::byzantine::Misbehaviour::PanicAfter(n) = m {
                        assert!(steps <= *n, "test build: consensus task panics after {n} steps on purpose");
                    }
                }
            }
            #[cfg(feature = "byzantine")]
            self.forge();
            let wake = self.core.next_wakeup().map(|t| t.saturating_sub(now_ms())).unwrap_or(1000).min(1000);
            // A forging bank wakes often enough to pace what it makes up.
            #[cfg(feature = "byzantine")]
            let wake = if self.misbehaviour.iter().any(|m| matches!(m, crate::byzantine::Misbehaviour::ForwardInvalid | crate::byzantine::Misbehaviour::Flood(_) | crate::byzantine::Misbehaviour::Spam(_))) { wake.min(100) } else { wake };
            let input = tokio::select! {
                // What waited out a consensus-log write comes before anything newer from peers,
                // but takes its turn with this bank's own writes and reads.
                _ = std::future::ready(()), if !self.backlog.is_empty() => match self.backlog.pop() {
                    Some(Checked::Message { from, msg }) => Input::Message { from, msg },
                    _ => {
                        self.rejected += 1;
                        self.refused_unverified += 1;
                        continue;
                    }
                },
                m = incoming.recv(), if self.backlog.is_empty() => match m {
                    None => return None,
                    // Whatever else is waiting goes into the backlog, so that peers take turns.
                    Some(first) => {
                        self.backlog.push(first);
                        self.take_waiting(&mut incoming);
                        continue;
                    }
                },
                s = submissions.recv() => match s {
                    None => return None,
                    // Already stamped and signed as one batch (stages::sign_submissions).
                    Some(batch) => {
                        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
                        let ops = batch
                            .into_iter()
                            .map(|(op, reply)| {
                                if let Some(id) = op_id(&op) {
                                    waiters.insert(id, reply);
                                }
                                op
                            })
                            .collect();
                        drop(waiters);
                        Input::Submit(ops)
                    }
                },
                r = read_requests.recv() => match r {
                    None => return None,
                    Some(first) => {
                        self.reads_unassigned.push(first);
                        while let Ok(more) = read_requests.try_recv() {
                            self.reads_unassigned.push(more);
                        }
                        self.reads_unassigned.retain(|r| !r.is_closed());
                        Input::ReadIndex
                    }
                },
                _ = tokio::time::sleep(Duration::from_millis(wake)) => Input::Tick,
            };
            let log = LedgerLog(self.ledger.clone());
            let view = self.core.view();
            let trace = tracing::enabled!(target: crate::TRACE, tracing::Level::DEBUG);
            // Group commit: peer messages already waiting join this step, so that one write of
            // the consensus log (and one trip to a blocking thread) covers all of them.
            let mut outputs = Vec::new();
            let mut traced = Vec::new();
            let mut next = Some(input);
            let mut grouped = 0;
            while let Some(input) = next.take() {
                let (t_us, what) = if trace { (crate::now_us(), describe_input(&input)) } else { (0, String::new()) };
                let started = std::time::Instant::now();
                self.observe_input(&input);
                let out = self.core.handle(now_ms(), input, &log);
                let core_us = started.elapsed().as_micros() as u64;
                if trace {
                    traced.push((t_us, what, core_us, describe_outputs(&out)));
                }
                #[cfg(feature = "byzantine")]
                let out = self.replay(out);
                #[cfg(feature = "byzantine")]
                let out = self.tampered(out);
                outputs.extend(out);
                grouped += 1;
                while next.is_none() && grouped < GROUP_INPUTS {
                    if self.backlog.is_empty() {
                        self.take_waiting(&mut incoming);
                    }
                    let waiting = self.backlog.pop().ok_or(());
                    match waiting {
                        Ok(Checked::Message { from, msg }) => next = Some(Input::Message { from, msg }),
                        Ok(Checked::Refused { .. }) => {
                            self.rejected += 1;
                            self.refused_unverified += 1;
                        }
                        Err(_) => break,
                    }
                }
            }
            if self.core.view() != view {
                tracing::debug!(view = self.core.view(), leader = self.core.leader(self.core.view()), "consensus: new view");
                if self.core.leader(self.core.view()) != self.core.leader(view) {
                    self.leader_changes += 1;
                }
                self.entered.push_back((self.core.view(), std::time::Instant::now()));
                if self.entered.len() > 16 {
                    self.entered.pop_front();
                }
            }
            self.observe_certificate();
            self.disk_us = 0;
            let mut carried = self.carry_out(outputs, &mut incoming, &mut read_requests).await;
            // Read-index steps taken during the write may have left outputs that must wait for
            // a write of their own.
            while carried.is_ok() && !self.deferred.is_empty() {
                let deferred = std::mem::take(&mut self.deferred);
                carried = self.carry_out(deferred, &mut incoming, &mut read_requests).await;
            }
            for (t_us, what, core_us, did) in traced.into_iter().filter(|t| !t.3.is_empty()) {
                tracing::debug!(target: crate::TRACE, t_us, step = %what, core_us, disk_us = self.disk_us, out = %did, view = self.core.view());
            }
            if let Err(e) = carried {
                tracing::error!(error = %e, "consensus: stopping; this bank orders nothing more until restarted");
                for (_, w) in self.waiters.lock().unwrap_or_else(|e| e.into_inner()).drain() {
                    let _ = w.send(Err(SequencerError::Ledger(e.to_string())));
                }
                return Some(e.to_string());
            }
            self.status.send_replace(ConsensusStatus {
                view: self.core.view(),
                leader: self.core.leader(self.core.view()),
                committed_height: self.core.committed_height(),
                mempool: self.core.mempool_len(),
                // Undecodable, oversized, or over the peer's share of the backlog.
                rejected_messages: self.rejected + self.backlog.dropped,
                evidence: self.evidence,
                certified_height: self.core.certified_height(),
                mempool_bytes: self.core.mempool_bytes(),
                views_timed_out: self.views_timed_out,
                timeouts_since_certificate: self.timeouts_since_certificate,
                leader_changes: self.leader_changes,
                forwarded_batches: self.forwarded_batches,
                refused_unverified: self.refused_unverified,
                refused_invalid: self.rejected.saturating_sub(self.refused_unverified),
                refused_backlog_full: self.backlog.dropped,
                peers_height: {
                    let me = self.network.me() as usize;
                    let others: Vec<u64> = self.peer_claims.iter().enumerate().filter(|(i, _)| *i != me).map(|(_, h)| *h).collect();
                    honest_height(self.peer_claims.len(), &others)
                },
            });
        }
    }

    /// Acts on one step's outputs. What the step asked to make durable is written in one write;
    /// a message the core decided before any of it leaves at once, every later one only after the
    /// write (a leader's proposal usually comes first, unless it has to wait for its own vote:
    /// see `Core::try_propose`): a message may leave later than the core decided it, never before
    /// the state it depends on is on disk.
    async fn carry_out(
        &mut self,
        outputs: Vec<Output>,
        incoming: &mut mpsc::Receiver<Checked>,
        reads: &mut mpsc::Receiver<oneshot::Sender<u64>>,
    ) -> anyhow::Result<()> {
        let mut durable = Durable::default();
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for o in outputs {
            match o {
                Output::Commit(cb) => {
                    // The apply engine may start on it while the ledger writer writes it; both
                    // share this one copy.
                    let cb = Arc::new(cb);
                    self.ledger.stage(cb.clone());
                    if self.commits.send(cb).is_err() {
                        anyhow::bail!("the ledger writer stopped");
                    }
                }
                Output::PersistBlock(b) => durable.blocks.push(b),
                // Each state supersedes the ones before it.
                Output::Persist(state) => durable.safety = Some(state),
                Output::PersistTc(tc) => durable.tc = Some(tc),
                // Nothing after it is acted on, commits included.
                Output::SafetyViolation(what) => anyhow::bail!("safety violation: {what}"),
                // Read-index answers depend on no durable state.
                o if durable.is_empty() || independent_of_disk(&o) => before.push(o),
                o => after.push(o),
            }
        }
        for o in before {
            self.act(o);
        }
        if !durable.is_empty() {
            self.write_durably(durable, incoming, reads).await?;
        }
        for o in after {
            self.act(o);
        }
        Ok(())
    }

    /// What the runtime measures of a message before the core takes it: a read-index reply
    /// closes a round trip to its sender.
    fn observe_input(&mut self, input: &Input) {
        use bftcd_proto::bftcd::peer_message::Kind;
        let Input::Message { from, msg } = input else { return };
        let claim = match &msg.kind {
            Some(Kind::ReadIndexReply(r)) => {
                if let Some((_, at)) = self.reads_sent.iter().find(|(round, _)| *round == r.round) {
                    let to = self.peer_names.get(*from).cloned().unwrap_or_else(|| from.to_string());
                    metrics::histogram!("etcd_network_peer_round_trip_time_seconds", "To" => to).record(at.elapsed().as_secs_f64());
                }
                r.committed_height
            }
            // Its parent is certified (the proposal's justify QC).
            Some(Kind::Proposal(p)) => p.block.as_ref().map_or(0, |b| b.height.saturating_sub(1)),
            _ => return,
        };
        if let Some(c) = self.peer_claims.get_mut(*from) {
            *c = (*c).max(claim);
        }
    }

    /// A new highest QC: how long its view took, from when this bank entered it.
    fn observe_certificate(&mut self) {
        let qc_view = self.core.high_qc().view;
        if qc_view > self.qc_view {
            self.qc_view = qc_view;
            self.timeouts_since_certificate = 0;
            if let Some((_, at)) = self.entered.iter().find(|(v, _)| *v == qc_view) {
                metrics::histogram!("bftcd_qc_latency_seconds").record(at.elapsed().as_secs_f64());
            }
        }
    }

    /// Notes a read-index round leaving, to time the replies.
    fn note_sent(&mut self, msg: &PeerMessage) {
        use bftcd_proto::bftcd::peer_message::Kind;
        match &msg.kind {
            Some(Kind::ReadIndexRequest(r)) if !self.reads_sent.iter().any(|(round, _)| *round == r.round) => {
                self.reads_sent.push_back((r.round, std::time::Instant::now()));
                if self.reads_sent.len() > 64 {
                    self.reads_sent.pop_front();
                }
            }
            Some(Kind::Submit(_)) => self.forwarded_batches += 1,
            _ => {}
        }
    }

    /// One output that needs no disk write.
    fn act(&mut self, o: Output) {
        match o {
            // The runtime sets no `Config::epoch_end` yet, so this never happens here: switching to
            // the next epoch's core is not wired in (docs/consensus.md, "Reconfiguration").
            Output::EpochEnded { height, .. } => {
                tracing::error!(height, "consensus: epoch ended, but the runtime cannot switch epochs yet")
            }
            Output::Send { to, msg } => {
                self.note_sent(&msg);
                self.network.send(to as u32, Bytes::from(msg.encode_to_vec()))
            }
            Output::Broadcast(msg) => {
                self.note_sent(&msg);
                if let Some(bftcd_proto::bftcd::peer_message::Kind::Timeout(t)) = &msg.kind {
                    // A timeout is sent again until the view moves on: count each view once.
                    if t.view > self.last_timeout_view {
                        self.last_timeout_view = t.view;
                        self.views_timed_out += 1;
                        self.timeouts_since_certificate += 1;
                    }
                    if self.gave_up_logged.is_none_or(|at| at.elapsed() >= GAVE_UP_LOG_INTERVAL) {
                        tracing::info!(view = t.view, leader = self.core.leader(t.view), since_last_line = self.gave_up_quiet,
                            "consensus: giving up on view");
                        self.gave_up_logged = Some(std::time::Instant::now());
                        self.gave_up_quiet = 0;
                    } else {
                        self.gave_up_quiet += 1;
                        tracing::debug!(view = t.view, leader = self.core.leader(t.view), "consensus: giving up on view");
                    }
                }
                self.network.broadcast(Bytes::from(msg.encode_to_vec()))
            }
            Output::Evidence(ev) => self.keep_evidence(ev),
            Output::Rejected { from, reason } => {
                self.rejected += 1;
                tracing::warn!(peer = from, reason, "consensus: message dropped");
            }
            Output::Refused { id, why } => {
                let waiter = self.waiters.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                if let Some(w) = waiter {
                    let _ = w.send(Err(match why {
                        Refusal::Invalid(e) => SequencerError::Invalid(e),
                        Refusal::Busy => SequencerError::Busy,
                    }));
                }
            }
            Output::ReadRoundStarted(round) => {
                self.reads_assigned.extend(self.reads_unassigned.drain(..).map(|r| (round, r)));
            }
            Output::ReadIndex { round, height } => {
                let (done, waiting): (Vec<_>, Vec<_>) = self.reads_assigned.drain(..).partition(|(r, _)| *r <= round);
                self.reads_assigned = waiting;
                for (_, r) in done {
                    let _ = r.send(height);
                }
            }
            Output::Commit(_) | Output::PersistBlock(_) | Output::Persist(_) | Output::PersistTc(_) | Output::SafetyViolation(_) => {
                unreachable!("carry_out handles these")
            }
        }
    }

    /// Evidence of an equivocation: logged, counted, and written to its own file (atomically:
    /// a file there is always whole), which `bftcd-verify evidence` checks.
    fn keep_evidence(&mut self, ev: bftcd_proto::bftcd::Evidence) {
        self.evidence += 1;
        let kind = match ev.kind {
            Some(bftcd_proto::bftcd::evidence::Kind::DoubleVote(_)) => "double-vote",
            _ => "double-proposal",
        };
        let name = format!("view-{}-validator-{}-{kind}.pb", ev.view, ev.offender);
        let path = self.evidence_dir.join(&name);
        let file = bftcd_proto::bftcd::EvidenceFile { chain_id: self.chain_id.clone(), evidence: Some(ev.clone()) };
        let tmp = self.evidence_dir.join(format!(".{name}.tmp"));
        let written = std::fs::create_dir_all(&self.evidence_dir)
            .and_then(|()| std::fs::write(&tmp, file.encode_to_vec()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => tracing::warn!(offender = ev.offender, view = ev.view, kind, file = %path.display(),
                "consensus: EVIDENCE of equivocation: a validator signed two conflicting messages for one view"),
            Err(e) => tracing::warn!(offender = ev.offender, view = ev.view, kind, error = %e,
                "consensus: EVIDENCE of equivocation (could not write its file)"),
        }
    }

    /// Moves checked messages already waiting in the channel into the backlog (at most
    /// [`TAKE_AT_ONCE`]), so the next ones are taken per peer in turn, not in arrival order.
    fn take_waiting(&mut self, incoming: &mut mpsc::Receiver<Checked>) {
        for _ in 0..TAKE_AT_ONCE {
            match incoming.try_recv() {
                Ok(c) => self.backlog.push(c),
                Err(_) => break,
            }
        }
    }

    /// Stores voted blocks and the safety state in the consensus log: one write and one
    /// fdatasync, in one trip to a blocking thread (each trip costs two thread switches). The
    /// ledger is not written here: see [`write_ledger`].
    ///
    /// Reads do not wait for the write: meanwhile read-index requests from peers are answered,
    /// their replies counted and this bank's own reads started, each as a step of its own; any
    /// output of those steps that is not a read-index message waits in `deferred`, and every other
    /// peer message in `backlog`, for after the write.
    async fn write_durably(
        &mut self,
        d: Durable,
        incoming: &mut mpsc::Receiver<Checked>,
        reads: &mut mpsc::Receiver<oneshot::Sender<u64>>,
    ) -> anyhow::Result<()> {
        let ledger = self.ledger.clone();
        let log = self.consensus_log.clone();
        let started = std::time::Instant::now();
        let mut write = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let _cpu = cpu::section(Component::Persistence);
            let committed = ledger.height();
            let started = std::time::Instant::now();
            log.lock().unwrap_or_else(|e| e.into_inner()).append(&d.blocks, d.safety, d.tc.as_ref(), committed)?;
            // One write and one fdatasync: etcd's WAL fsync histogram has the same meaning.
            metrics::histogram!("etcd_disk_wal_fsync_duration_seconds").record(started.elapsed().as_secs_f64());
            Ok(())
        });
        let (mut peers_open, mut reads_open) = (true, true);
        let written = loop {
            let side = tokio::select! {
                written = &mut write => break written,
                m = incoming.recv(), if peers_open => Side::Peer(m),
                r = reads.recv(), if reads_open => Side::Read(r),
            };
            match side {
                Side::Peer(None) => peers_open = false,
                Side::Read(None) => reads_open = false,
                Side::Peer(Some(Checked::Message { from, msg })) if is_read_index(&msg) => {
                    self.side_step(Input::Message { from, msg })
                }
                Side::Peer(Some(other)) => self.backlog.push(other),
                Side::Read(Some(first)) => {
                    self.reads_unassigned.push(first);
                    while let Ok(more) = reads.try_recv() {
                        self.reads_unassigned.push(more);
                    }
                    self.reads_unassigned.retain(|r| !r.is_closed());
                    self.side_step(Input::ReadIndex);
                }
            }
        };
        self.disk_us += started.elapsed().as_micros() as u64;
        written?
    }

    /// Test builds only: forwards the operations the forger makes up, signed with this bank's
    /// own key but never put in its own mempool (`forward-invalid`, `flood`).
    #[cfg(feature = "byzantine")]
    fn forge(&mut self) {
        use crate::consensus::Crypto;
        use bftcd_proto::bftcd::{peer_message::Kind, Submit};
        let now = now_ms();
        for mut batch in self.forger.due(self.me, &self.misbehaviour, now) {
            for op in &mut batch {
                op.submitted_ms = now;
            }
            let (crypto, domain) = &self.forge;
            domain.sign_batch(&mut batch, |b| crypto.sign_operation(b));
            let msg = PeerMessage { kind: Some(Kind::Submit(Submit { operations: batch })) };
            self.network.broadcast(Bytes::from(msg.encode_to_vec()));
        }
        let spam = self.misbehaviour.iter().find_map(|m| match m {
            crate::byzantine::Misbehaviour::Spam(r) => Some(*r),
            _ => None,
        });
        if let Some(rate) = spam {
            let (crypto, domain) = &self.forge;
            let view = self.core.view();
            let after = self.misbehaviour.iter().find_map(|m| match m {
                crate::byzantine::Misbehaviour::After(ms) => Some(*ms),
                _ => None,
            });
            for frame in self.spammer.due(self.me, rate, after, now, view, domain, |b| crypto.sign(b)) {
                self.network.broadcast(frame);
            }
        }
    }

    /// Test builds only (`replay=<blocks>`): its proposals repeat an operation committed long ago.
    #[cfg(feature = "byzantine")]
    fn replay(&mut self, mut out: Vec<Output>) -> Vec<Output> {
        let Some(depth) = self.misbehaviour.iter().find_map(|m| match m {
            crate::byzantine::Misbehaviour::Replay(d) => Some(*d),
            _ => None,
        }) else {
            return out;
        };
        if !out.iter().any(|o| matches!(o, Output::Broadcast(PeerMessage { kind: Some(bftcd_proto::bftcd::peer_message::Kind::Proposal(_)) }))) {
            return out;
        }
        let ledger = self.ledger.clone();
        let op = self.replayer.pick(ledger.height(), depth, now_ms(), |h| ledger.read(h).ok().and_then(|cb| cb.block));
        if let Some(op) = op {
            if crate::byzantine::replay(&op, &mut out) {
                tracing::warn!(id = ?op.id, "THIS BANK IS BYZANTINE: replaying a committed operation");
            }
        }
        out
    }

    /// Test builds only: the core's outputs as this bank's misbehaviour changes them (changed
    /// proposals signed again, as a Byzantine leader would).
    #[cfg(feature = "byzantine")]
    fn tampered(&self, out: Vec<Output>) -> Vec<Output> {
        let (crypto, domain) = &self.forge;
        crate::byzantine::tamper(self.me, self.n, &self.misbehaviour, out, &|p| crate::consensus::sign_proposal(crypto.as_ref(), domain, p))
    }

    /// A read-index step taken while the consensus log is being written (see `write_durably`).
    fn side_step(&mut self, input: Input) {
        let log = LedgerLog(self.ledger.clone());
        self.observe_input(&input);
        let out = self.core.handle(now_ms(), input, &log);
        #[cfg(feature = "byzantine")]
        let out = self.tampered(out);
        for o in out {
            if independent_of_disk(&o) {
                self.act(o);
            } else {
                self.deferred.push(o);
            }
        }
    }
}

/// A peer message in a few characters, for [`crate::TRACE`] events (no spaces: the benchmark
/// splits on them).
fn describe_message(m: &PeerMessage) -> String {
    use bftcd_proto::bftcd::peer_message::Kind;
    match &m.kind {
        Some(Kind::Proposal(p)) => format!("proposal:h{}", p.block.as_ref().map_or(0, |b| b.height)),
        Some(Kind::Vote(v)) => format!("vote:v{}", v.view),
        Some(Kind::Timeout(t)) => format!("timeout:v{}", t.view),
        Some(Kind::Submit(s)) => format!("forward:{}", s.operations.len()),
        Some(Kind::SyncRequest(_)) => "sync-request".into(),
        Some(Kind::SyncResponse(_)) => "sync-response".into(),
        Some(Kind::ReadIndexRequest(_)) => "read-request".into(),
        Some(Kind::ReadIndexReply(_)) => "read-reply".into(),
        Some(Kind::Checkpoint(c)) => format!("checkpoint:h{}", c.height),
        Some(Kind::Evidence(e)) => format!("evidence:v{}", e.view),
        None => "empty".into(),
    }
}

fn describe_input(input: &Input) -> String {
    match input {
        Input::Tick => "tick".into(),
        Input::Submit(ops) => format!("client-writes:{}", ops.len()),
        Input::ReadIndex => "read".into(),
        Input::Message { from, msg } => format!("{}<bank{}", describe_message(msg), from + 1),
    }
}

/// What a step produced: messages sent, blocks stored, commits.
fn describe_outputs(outputs: &[Output]) -> String {
    let parts: Vec<String> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { to, msg } => Some(format!("{}>bank{}", describe_message(msg), to + 1)),
            Output::Broadcast(msg) => Some(format!("{}>all", describe_message(msg))),
            Output::PersistBlock(b) => Some(format!("store:h{}", b.height)),
            Output::Commit(cb) => Some(format!("commit:h{}", cb.block.as_ref().map_or(0, |b| b.height))),
            Output::ReadIndex { height, .. } => Some(format!("read-index:h{height}")),
            _ => None,
        })
        .collect();
    parts.join(",")
}

#[cfg(test)]
mod status_tests {
    use super::honest_height;

    #[test]
    fn f_byzantine_claims_cannot_raise_the_honest_height() {
        // Four banks, three peers' claims: one may lie.
        assert_eq!(honest_height(4, &[1_000_000, 50, 40]), 50);
        assert_eq!(honest_height(4, &[50, 40, 0]), 40);
        // Seven banks (f = 2), six peers.
        assert_eq!(honest_height(7, &[900, 800, 30, 20, 10, 0]), 30);
        assert_eq!(honest_height(1, &[]), 0);
        assert_eq!(honest_height(4, &[7]), 0);
    }
}
