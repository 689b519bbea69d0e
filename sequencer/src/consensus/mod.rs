//! HotStuff-2 as a pure state machine: [`Input`]s in, [`Output`]s out, no I/O, no clock, no
//! randomness (time arrives as an argument). The runtime and the simulator drive the same code.
//!
//! Protocol (two-phase, chained, pipelined):
//! * View v's leader is chosen from the chain the proposal extends ([`leader`]): round robin over
//!   the validators the chain shows working. It proposes a block extending the highest QC it
//!   knows, justified by that QC, and after a failed view also by a timeout certificate (TC).
//! * Validators vote ([`safety`]) and send the vote to every validator. Each aggregates 2f+1
//!   votes into a QC itself and enters v + 1; the leader of v + 1 proposes on top of it.
//! * A block commits when its direct child in the next view is certified; the child's QC and
//!   header are the commit proof stored in the ledger. Since every validator forms that QC from
//!   the votes, every one learns of the commit in the same message delay as the next leader: no
//!   block is needed only to announce a commit.
//! * Each QC is checked once per validator: a certificate for something it already holds a
//!   verified certificate for (its own, formed from the votes) is replaced by that one.
//! * A validator whose view makes no progress times out: it broadcasts its highest QC, signed.
//!   2f+1 timeouts form a TC, everyone enters v + 1, and the new leader must extend the highest
//!   QC in the TC. That QC is at least every honest lock, so no hidden lock can stall the view
//!   change (the liveness bug of two-phase HotStuff without it).
//! * An idle cluster stays quiet: leaders propose only for pending operations or to certify
//!   blocks that still carry uncommitted operations, and timers run only while something waits.
//! * Reconfiguration: a core runs one epoch. The first committed block that enacts a new
//!   validator set ([`Config::epoch_end`]) ends it: nothing above it is committed in that epoch,
//!   the core stops signing and says so ([`Output::EpochEnded`]), and the next epoch's core is
//!   rooted at that block ([`Config::root_height`]) with fresh views. Every signature names its
//!   epoch, so no certificate counts across epochs, and the committed chains of consecutive
//!   epochs join at the boundary without a fork (docs/consensus.md, "Reconfiguration").

pub mod certs;
pub mod leader;
pub mod mempool;
pub mod read_index;
pub mod safety;
pub mod sync;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bftcd_proto::bftcd::{
    peer_message::Kind, Block, CommittedBlock, Evidence, Operation, PeerMessage, Proposal, QuorumCert, ReadIndexReply,
    ReadIndexRequest, Submit, SyncRequest, SyncResponse, Timeout, TimeoutCert, TimeoutVote, Vote,
};
use bftcd_proto::Message;

use crate::block::{block_hash, header};
use crate::evidence;
use crate::validity::{self, Invalid, Limits};
pub use certs::{Crypto, Domain};
use mempool::{op_id, Mempool, OpId, Recent};
use read_index::ReadRounds;
pub use safety::{SafetyRules, SafetyState};

pub type Hash = [u8; 32];

/// (view, block hash, justify view) of a vote, and what a QC certifies.
type VoteKey = (u64, Hash, u64);
/// How many verified QCs a validator keeps to recognise them again without a BLS check.
const VERIFIED_QCS: usize = 64;
/// Votes and timeouts for views further ahead than this are not kept. Views move on only with a
/// certificate (a QC or TC for the view before) or when f+1 validators gave up, so an honest
/// peer is never far ahead of a certificate it can show: its timeouts and proposals carry one,
/// which moves this validator up first, and its votes are followed by one. 64 views leaves room
/// for a validator that missed a few certificates, and caps what one peer can park here at one
/// vote and one timeout for each of 67 views (the window, the current view and the two before).
const VIEWS_AHEAD: u64 = 64;
/// Sync requests remembered per peer; an answer is read only against one of them, so a peer
/// can send at most this many answers that were not asked for (older requests are forgotten).
const SYNC_ASKS_PER_PEER: usize = 4;
/// A proposal seen for (view, proposer): its hash and signature, and a second block's hash.
type ProposalSeen = (Hash, Vec<u8>, Option<Hash>);
/// The chain ends an in-flight set was collected from (high QC's block, last voted block), and the set.
type InFlight = ((Hash, Option<Hash>), std::sync::Arc<HashSet<OpId>>);

#[derive(Debug, Clone)]
pub struct Config {
    pub me: usize,
    pub domain: Domain,
    pub genesis_hash: Hash,
    /// First view's timeout; doubles per consecutive failed view up to `max_timeout_ms`.
    pub base_timeout_ms: u64,
    pub max_timeout_ms: u64,
    /// How far a block's time may be from a validator's clock.
    pub skew_ms: u64,
    pub max_block_operations: usize,
    pub max_block_bytes: usize,
    /// The genesis's limits every operation is checked against ([`crate::validity`]); set with
    /// [`Config::with_limits`], which also sets the block limits from them.
    pub limits: Limits,
    /// Caps of this bank's mempool, shared equally among the submitting banks (local memory
    /// bounds: banks may differ).
    pub mempool_max_operations: usize,
    pub mempool_max_bytes: usize,
    /// An operation waiting this long without being proposed makes validators leave the view.
    pub inclusion_deadline_ms: u64,
    /// Operations older than this (by their submitted time vs. the block time) are refused.
    pub operation_ttl_ms: u64,
    /// Blocks in one sync answer at most. A bank behind by minutes needs thousands: each answer
    /// costs a round trip and one batch verification, so the fewer the better, while every
    /// certificate of one answer must stay in the check stage's cache until the core uses it
    /// (`keys::BLS_CAPACITY`).
    pub max_sync_blocks: usize,
    /// Byte budget of one sync answer: a frame above the transport's limit (16 MiB) would never
    /// arrive, and a lagging bank would ask for it forever. An answer always reaches the first
    /// commit proof, whatever its size, so it is never empty for a lack of budget.
    pub max_sync_bytes: usize,
    /// A validator asks one peer at a time for commits it may have missed: right after start,
    /// then less and less often, down to once per this interval.
    pub sync_probe_max_ms: u64,
    /// Tests only: answer reads from this validator's own state, skipping the quorum (the
    /// simulator must catch the stale reads this allows).
    pub broken_read_index: bool,
    /// Tests only: plain round-robin leaders, the baseline the simulator compares with.
    pub round_robin_leaders: bool,
    /// Height of this epoch's root: 0 for the genesis, else the block that ended the epoch
    /// before (`genesis_hash` is then that block's hash). See "Reconfiguration" below.
    pub root_height: u64,
    /// Which committed block ends this epoch (it enacts a new validator set); None: none does.
    pub epoch_end: Option<EpochRule>,
    /// Tests only: accept the previous epoch's QCs, and keep the blocks above the boundary
    /// ([`Core::pipeline_for_tests`]); the simulator must catch the fork across epochs.
    pub broken_epoch_carry: bool,
}

/// Decides from a committed block alone whether it enacts a validator-set change (the
/// governance fold over committed operations does in production; tests pick a marker). Must be
/// a pure function of the block, so that every validator ends the epoch at the same block.
#[derive(Clone)]
pub struct EpochRule(pub Arc<dyn Fn(&Block) -> bool + Send + Sync>);

impl std::fmt::Debug for EpochRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EpochRule")
    }
}

impl Config {
    pub fn new(me: usize, domain: Domain, genesis_hash: Hash) -> Self {
        Config {
            me,
            domain,
            genesis_hash,
            base_timeout_ms: 1000,
            max_timeout_ms: 16_000,
            skew_ms: 2000,
            max_block_operations: Limits::default().max_block_operations,
            max_block_bytes: Limits::default().max_block_bytes,
            limits: Limits::default(),
            // A quarter each with four banks: one full block's operations per bank, and ten
            // requests of the largest size; more would only wait past the write timeout.
            mempool_max_operations: 16_384,
            mempool_max_bytes: 64 << 20,
            inclusion_deadline_ms: 5000,
            operation_ttl_ms: 120_000,
            max_sync_blocks: 512,
            max_sync_bytes: 4 << 20,
            sync_probe_max_ms: 30_000,
            broken_read_index: false,
            round_robin_leaders: false,
            root_height: 0,
            epoch_end: None,
            broken_epoch_carry: false,
        }
    }

    /// How far back, by block time from the newest committed block, committed operations are
    /// remembered so that no later block repeats one. A block of time t takes an operation only
    /// if it was submitted at or after t - ttl. Honest banks voted for the block that committed
    /// it only if it was submitted at most 4 skews after that block's time (at most one skew
    /// ahead of a bank's clock when it arrived, the block at most three behind when voted). So a
    /// block after the tip can only repeat one committed within ttl + 4 skews of the tip's time.
    pub fn dedup_window_ms(&self) -> u64 {
        self.operation_ttl_ms.saturating_add(self.skew_ms.saturating_mul(4))
    }

    /// Must the operations of a committed block of time `block_ms` still be remembered while the
    /// newest committed block's time is `tip_ms`? Block times grow along the chain, so once
    /// one block is out, every block below it is too.
    pub fn remembers(&self, block_ms: u64, tip_ms: u64) -> bool {
        block_ms.saturating_add(self.dedup_window_ms()) >= tip_ms
    }

    /// The chain's limits (from the genesis), block limits included.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.max_block_operations = limits.max_block_operations;
        self.max_block_bytes = limits.max_block_bytes;
        self.limits = limits;
        self
    }
}

/// After a restart: (block time, id) of the operations committed in the blocks the
/// deduplication must remember (`Config::remembers`), oldest first, reading the committed chain
/// back from `height` (`read` gives the block at a height). By block time, not a block count:
/// a busy chain commits thousands of blocks within one acceptance window.
pub fn committed_in_window<E>(
    cfg: &Config,
    height: u64,
    mut read: impl FnMut(u64) -> Result<Block, E>,
) -> Result<Vec<(u64, OpId)>, E> {
    let mut ids = Vec::new();
    let mut tip_ms = None;
    for h in (1..=height).rev() {
        let b = read(h)?;
        let tip = *tip_ms.get_or_insert(b.timestamp_ms);
        if !cfg.remembers(b.timestamp_ms, tip) {
            break;
        }
        ids.extend(b.operations.iter().rev().filter_map(op_id).map(|id| (b.timestamp_ms, id)));
    }
    ids.reverse();
    Ok(ids)
}

/// Signs a proposal as its leader ([`Domain::proposal_bytes`], operation key); for test builds
/// that change a proposal after the core made it.
pub fn sign_proposal(crypto: &dyn Crypto, domain: &Domain, p: &mut Proposal) {
    if let Some(b) = &p.block {
        p.signature = crypto.sign_operation(&domain.proposal_bytes(b.view, &block_hash(b)));
    }
}

/// Read access to the committed ledger (for answering peers that are behind).
pub trait CommittedLog {
    fn read(&self, height: u64) -> Option<CommittedBlock>;
}

#[allow(clippy::large_enum_variant)] // one input at a time; boxing buys nothing
pub enum Input {
    /// Time passed; check timers.
    Tick,
    Message { from: usize, msg: PeerMessage },
    /// Operations accepted from this bank's clients: stamped and signed as one batch, or
    /// unsigned (then the core stamps and signs them).
    Submit(Vec<Operation>),
    /// Linearizable reads are waiting: find the read index ([`read_index`]).
    ReadIndex,
}

#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // handed on at once; boxing buys nothing
pub enum Output {
    Send { to: usize, msg: PeerMessage },
    /// To every other validator.
    Broadcast(PeerMessage),
    /// Must be durable before any later output is acted on.
    Persist(SafetyState),
    /// A block this validator is about to vote for: durable before the vote leaves, so a
    /// certified block survives crashes on at least f+1 honest validators. Handed back to
    /// `Core::new` after a restart.
    PersistBlock(Arc<Block>),
    /// The highest TC, for the consensus log: after a restart this validator can still show the
    /// others why it is in its view. Handed back with `Core::set_high_tc`.
    PersistTc(TimeoutCert),
    /// Append to the ledger, in order.
    Commit(CommittedBlock),
    /// Checked evidence of a validator's equivocation, new to this validator (found, received
    /// from a peer, or seen in a block): to keep and report. Once per equivocation.
    Evidence(Evidence),
    /// A message was dropped; for logs and counters.
    Rejected { from: usize, reason: &'static str },
    /// One of this bank's own operations was not accepted for ordering: answer its submitter.
    Refused { id: OpId, why: Refusal },
    /// More than f validators are Byzantine: the committed chain would fork. Stop.
    SafetyViolation(String),
    /// A read-index round began: it answers every read that arrived before this output.
    ReadRoundStarted(u64),
    /// A read-index round ended: reads it answers may be served once every block up to
    /// `height` is applied.
    ReadIndex { round: u64, height: u64 },
    /// The block at `height` (`hash`) enacted a new validator set and was committed: this epoch
    /// ended there and this core does nothing more but answer sync requests. The driver starts
    /// the next epoch's core rooted at that block ([`Config::root_height`]), hands it the
    /// operations still waiting ([`Core::take_operations`]) and `proof`
    /// ([`Core::set_boundary_proof`]): the abandoned blocks above the boundary that prove it
    /// committed when its own ledger entry carries no commit proof (empty when it does).
    EpochEnded { height: u64, hash: Hash, proof: Vec<CommittedBlock> },
}

/// Why this bank's own operation was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It breaks the chain's rules ([`crate::validity`]).
    Invalid(Invalid),
    /// This bank's share of the mempool is full.
    Busy,
}

/// Where the committed chain ends.
#[derive(Debug, Clone)]
struct Tip {
    height: u64,
    hash: Hash,
    timestamp_ms: u64,
}

pub struct Core {
    cfg: Config,
    crypto: Box<dyn Crypto>,
    safety: SafetyRules,
    now: u64,
    view: u64,
    high_qc: QuorumCert,
    high_tc: Option<TimeoutCert>,
    /// Blocks above the committed tip (and the tip itself), by hash.
    /// Shared with the consensus log's writes (`Output::PersistBlock`): never copied.
    blocks: HashMap<Hash, Arc<Block>>,
    /// Headers of blocks in `blocks`, each computed once: a commit proof and every read-index
    /// answer carry one, and a header hashes all of its block's operations.
    headers: std::cell::RefCell<HashMap<Hash, Block>>,
    committed: Tip,
    /// Hashes of recently committed blocks by height, to recognise a conflicting commit.
    committed_hashes: BTreeMap<u64, Hash>,
    /// Votes by (view, block, justify view): signature, and whether it was checked alone.
    votes: HashMap<VoteKey, BTreeMap<usize, (Vec<u8>, bool)>>,
    /// (view, signer) of every vote counted: one vote per validator and view.
    voted: HashSet<(u64, usize)>,
    /// QCs this validator formed or verified, by what they certify.
    verified_qcs: BTreeMap<VoteKey, QuorumCert>,
    timeouts: HashMap<u64, BTreeMap<usize, (QuorumCert, Vec<u8>)>>,
    /// Per peer, the last timeout whose signature and QC verified (view, signature, QC as
    /// sent): a peer resends its timeout until the view moves on, and a replay costs no check.
    timeout_verified: Vec<Option<(u64, Vec<u8>, QuorumCert)>>,
    /// Blocks proposed for the current view and the one before, by (view, proposer): the first
    /// one's hash and the proposer's signature of it, and the second's hash (an equivocation);
    /// both blocks are kept, any further one is refused.
    proposals: BTreeMap<(u64, usize), ProposalSeen>,
    /// Evidence of equivocation: pending for a block, and known ([`evidence`]).
    evidence: evidence::Pool,
    /// (view, validator) pairs already looked at for evidence: each costs signature checks, so
    /// a Byzantine peer gets at most one look per view.
    evidence_looked: HashSet<(u64, usize, u8)>,
    /// Timeouts signed for views this validator had left, for validators still in them (see
    /// `help_behind`), by view.
    helped: BTreeMap<u64, Timeout>,
    /// Highest view each validator is known to have timed out in (view synchronisation).
    gave_up: Vec<u64>,
    mempool: Mempool,
    recent: Recent,
    proposed_view: u64,
    timed_out_view: u64,
    my_timeout: Option<Timeout>,
    /// When this view gives up, if anything is waiting (0: no timer).
    deadline: u64,
    view_entered_ms: u64,
    failed_views: u32,
    last_voted_block: Option<Hash>,
    /// Proposals waiting for their parent's chain (a sync), one per sender so that nobody can
    /// push the real leader's out.
    pending: BTreeMap<usize, Proposal>,
    /// Committed blocks the leader choice looks back on, by height (the last
    /// `leader::window_blocks`; the blocks above the tip are in `blocks`).
    history: BTreeMap<u64, leader::Entry>,
    /// The leaders of the two views after a block (and its view), by its hash.
    leaders_cache: std::cell::RefCell<HashMap<Hash, (u64, [usize; 2])>>,
    /// The sync request in flight (peer, when asked): one at a time, since answers are large
    /// and overlapping ones repeat each other.
    sync_waiting: Option<(usize, u64)>,
    /// The peer last probed and when: no second probe while its answer may be on its way (a
    /// full answer takes a while to check). Any answer from it ends the wait; a probe never holds
    /// up a request for a block this validator lacks.
    probe_waiting: Option<(usize, u64)>,
    /// Per peer, the sync requests sent to it and not answered yet (the block each asked for):
    /// answers to nothing are dropped unread.
    sync_asks: Vec<std::collections::VecDeque<Option<Hash>>>,
    next_probe_ms: u64,
    probe_interval_ms: u64,
    probes: usize,
    read: ReadRounds,
    /// Height of the last committed block that carries operations.
    committed_operations: u64,
    /// Operations in uncommitted blocks, by the chain ends they were collected from (high QC's
    /// block, last voted block). Chains are content-addressed, so the set only goes stale in
    /// holding operations that committed since, which have left the mempool anyway.
    in_flight_cache: std::cell::RefCell<Option<InFlight>>,
    /// The block this epoch ended at, once committed (see `Output::EpochEnded`).
    ended: Option<(u64, Hash)>,
    /// Blocks above the previous epoch's boundary that prove it committed, for validators still
    /// in that epoch (`Output::EpochEnded`).
    boundary_proof: Vec<CommittedBlock>,
    out: Vec<Output>,
}

fn hash32(b: &[u8]) -> Option<Hash> {
    b.try_into().ok()
}

fn msg(kind: Kind) -> PeerMessage {
    PeerMessage { kind: Some(kind) }
}

impl Core {
    /// `tip` is the last committed block from the ledger (None: only the genesis), with a QC
    /// certifying it; `stored` the blocks persisted by `PersistBlock` before a restart;
    /// `recent` are (block time, operation id) committed lately ([`committed_in_window`]).
    pub fn new(
        cfg: Config,
        crypto: Box<dyn Crypto>,
        safety: SafetyRules,
        genesis_time_ms: u64,
        tip: Option<(Block, QuorumCert)>,
        stored: Vec<Block>,
        recent: Vec<(u64, OpId)>,
    ) -> Core {
        let genesis_qc = cfg.domain.genesis_qc(&cfg.genesis_hash);
        let (committed, high_qc, tip_block) = match tip {
            None => (
                Tip { height: cfg.root_height, hash: cfg.genesis_hash, timestamp_ms: genesis_time_ms },
                genesis_qc,
                None,
            ),
            Some((b, qc)) => {
                let hash = block_hash(&b);
                (Tip { height: b.height, hash, timestamp_ms: b.timestamp_ms }, qc, Some(b))
            }
        };
        let mut blocks = HashMap::new();
        match tip_block {
            Some(b) => {
                blocks.insert(committed.hash, Arc::new(b));
            }
            None => {
                blocks.insert(
                    committed.hash,
                    // The epoch's root: the genesis, or the block the epoch before ended at, which
                    // this epoch's views begin after (view 0, certified by definition).
                    Arc::new(Block {
                        height: cfg.root_height,
                        view: 0,
                        timestamp_ms: genesis_time_ms,
                        epoch: cfg.domain.epoch,
                        ..Default::default()
                    }),
                );
            }
        }
        // Blocks voted for before a restart; their QCs include our lock.
        let mut high_qc = high_qc;
        for b in stored {
            // Blocks of another epoch never count here: their QCs are another validator set's.
            if b.height <= committed.height || b.epoch != cfg.domain.epoch {
                continue;
            }
            if let Some(j) = &b.justify {
                if j.view > high_qc.view {
                    high_qc = j.clone();
                }
            }
            blocks.insert(block_hash(&b), Arc::new(b));
        }
        let mut r = Recent::default();
        for (ms, id) in recent {
            r.insert(ms, id);
        }
        r.forget_before(committed.timestamp_ms.saturating_sub(cfg.dedup_window_ms()));
        // Back in the view it last voted or timed out in (not past it: its timeout there may
        // never have arrived, and with a bank down the others need it again); it may time out
        // there again, but never vote or propose again.
        let last_voted = safety.state().last_voted_view;
        let view = last_voted.max(high_qc.view.saturating_add(1));
        let n = cfg.domain.n;
        let mempool = Mempool::new(n, cfg.mempool_max_operations, cfg.mempool_max_bytes);
        Core {
            cfg,
            crypto,
            safety,
            now: 0,
            view,
            high_qc,
            high_tc: None,
            committed_hashes: BTreeMap::from([(committed.height, committed.hash)]),
            blocks,
            committed,
            votes: HashMap::new(),
            voted: HashSet::new(),
            verified_qcs: BTreeMap::new(),
            timeouts: HashMap::new(),
            timeout_verified: vec![None; n],
            proposals: BTreeMap::new(),
            evidence: evidence::Pool::default(),
            evidence_looked: HashSet::new(),
            helped: BTreeMap::new(),
            gave_up: vec![0; n],
            mempool,
            recent: r,
            // Never in the view after its last vote or timeout: it may have proposed there before
            // the crash without anything on disk saying so (see `try_propose`).
            proposed_view: if last_voted > 0 { last_voted.saturating_add(1) } else { 0 },
            timed_out_view: 0,
            my_timeout: None,
            deadline: 0,
            view_entered_ms: 0,
            failed_views: 0,
            last_voted_block: None,
            pending: BTreeMap::new(),
            history: BTreeMap::new(),
            leaders_cache: Default::default(),
            sync_waiting: None,
            probe_waiting: None,
            sync_asks: vec![Default::default(); n],
            next_probe_ms: 0,
            probe_interval_ms: 0,
            probes: 0,
            read: ReadRounds::default(),
            committed_operations: 0,
            in_flight_cache: Default::default(),
            headers: Default::default(),
            ended: None,
            boundary_proof: Vec::new(),
            out: Vec::new(),
        }
    }

    /// After a restart: the last block with operations in the ledger (the read index needs it;
    /// `new` only sees the tip).
    pub fn set_last_committed_operations(&mut self, height: u64) {
        self.committed_operations = height;
    }

    /// The current read-index round (fuzzing aims replies at it).
    pub fn read_round(&self) -> u64 {
        self.read.round
    }

    pub fn view(&self) -> u64 {
        self.view
    }

    pub fn committed_height(&self) -> u64 {
        self.committed.height
    }

    /// The block this epoch ended at (height, hash), once committed.
    pub fn epoch_ended(&self) -> Option<(u64, Hash)> {
        self.ended
    }

    /// The operations still waiting in the mempool, oldest first per bank, emptying it: at an
    /// epoch boundary they go to the next epoch's core ([`Core::adopt_operations`]), with the
    /// operations of blocks abandoned above the boundary among them (an operation leaves the
    /// mempool only when it commits).
    pub fn take_operations(&mut self) -> Vec<Operation> {
        self.mempool.drain()
    }

    /// Operations handed over from the epoch before ([`Core::take_operations`]) at time `now`.
    /// A bank's signature names the epoch, so each bank takes back its own operations (not
    /// committed already), signs them again for this epoch and forwards them as new, with
    /// their ids: every bank does the same with its own, so nothing waiting is lost. The
    /// others' are dropped here. The forwarding goes out with the next `handle`'s outputs.
    pub fn adopt_operations(&mut self, ops: Vec<Operation>, now: u64) {
        self.now = self.now.max(now);
        self.view_entered_ms = self.now;
        let me = self.cfg.me as u32;
        let own: Vec<Operation> = ops
            .into_iter()
            .filter(|op| op_id(op).is_some_and(|id| id.0 == me && !self.recent.contains(&id)))
            .map(|mut op| {
                op.bank_signature.clear();
                op.batch_path.clear();
                op.batch_index = 0;
                op.batch_size = 0;
                op
            })
            .collect();
        if !own.is_empty() {
            self.on_submit_local(own);
        }
    }

    /// Tests only: the highest QC and the blocks above the committed tip, which the broken
    /// variant takes into the next epoch ([`Config::broken_epoch_carry`]).
    pub fn pipeline_for_tests(&self) -> (QuorumCert, Vec<Block>) {
        let floor = self.committed.height;
        (self.high_qc.clone(), self.blocks.values().filter(|b| b.height > floor).map(|b| (**b).clone()).collect())
    }

    /// Tests only: the broken variant's carry-over into a new epoch's core.
    pub fn carry_pipeline_for_tests(&mut self, qc: QuorumCert, blocks: Vec<Block>) {
        for b in blocks {
            self.blocks.insert(block_hash(&b), Arc::new(b));
        }
        if qc.view > self.high_qc.view {
            self.view = self.view.max(qc.view.saturating_add(1));
            self.high_qc = qc;
        }
    }

    /// The previous epoch's boundary proof (`Output::EpochEnded`), kept to help validators
    /// still in that epoch catch up (`on_sync_request`).
    pub fn set_boundary_proof(&mut self, proof: Vec<CommittedBlock>) {
        self.boundary_proof = proof;
    }

    /// After a restart: the committed blocks below the tip the leader choice looks back on (the
    /// last `leader::window_blocks(n)` of the ledger; more or fewer are fine, in any order).
    pub fn set_committed_history<'a>(&mut self, blocks: impl IntoIterator<Item = &'a Block>) {
        for b in blocks {
            if b.height > self.cfg.root_height && b.height <= self.committed.height && b.epoch == self.cfg.domain.epoch {
                self.history.insert(b.height, self.leader_entry(b));
            }
        }
        self.prune_history();
    }

    fn leader_entry(&self, b: &Block) -> leader::Entry {
        let failed = if b.failed_leaders.is_empty() { Vec::new() } else { self.cfg.domain.signers(&b.failed_leaders).unwrap_or_default() };
        leader::Entry { view: b.view, proposer: b.proposer as usize, failed }
    }

    fn prune_history(&mut self) {
        let keep = leader::window_blocks(self.cfg.domain.n) as u64;
        let floor = self.committed.height.saturating_sub(keep);
        self.history.retain(|h, _| *h > floor);
    }

    /// After a restart: the highest TC from the consensus log. A bank whose timeout went into it
    /// may be gone for good, and without it the others could never form it again.
    pub fn set_high_tc(&mut self, tc: TimeoutCert) {
        if self.high_tc.as_ref().is_none_or(|h| h.view < tc.view) {
            self.view = self.view.max(tc.view.saturating_add(1));
            self.high_tc = Some(tc);
        }
    }

    /// The leader of `view` as this validator would propose in it (on its high QC); for logs.
    pub fn leader(&self, view: u64) -> usize {
        let anchor = hash32(&self.high_qc.block_hash).unwrap_or_default();
        self.expected_leader(view, &anchor).map_or((view % self.cfg.domain.n as u64) as usize, |(l, _)| l)
    }

    /// The leader of `view` for a block extending `anchor`, and the `failed_leaders` that block
    /// must record; None when this validator lacks part of the anchor's chain.
    fn expected_leader(&self, view: u64, anchor: &Hash) -> Option<(usize, Vec<u8>)> {
        let (anchor_view, after) = self.leaders_after(anchor)?;
        if view <= anchor_view {
            return None;
        }
        let failed = leader::failed_leaders(after, anchor_view, view);
        let bitmap = if failed.is_empty() { Vec::new() } else { self.cfg.domain.bitmap(failed) };
        Some((leader::leader(self.cfg.domain.n, after, anchor_view, view), bitmap))
    }

    fn leaders_after(&self, anchor: &Hash) -> Option<(u64, [usize; 2])> {
        if let Some(known) = self.leaders_cache.borrow().get(anchor) {
            return Some(*known);
        }
        let n = self.cfg.domain.n;
        let want = leader::window_blocks(n);
        let mut chain = Vec::new();
        let mut cur = *anchor;
        let mut below = None;
        while chain.len() < want {
            let b = self.blocks.get(&cur)?;
            if b.height <= self.cfg.root_height {
                break; // the genesis or the epoch's root
            }
            chain.push(self.leader_entry(b));
            if b.height <= self.committed.height {
                below = Some(b.height); // the committed tip: the rest is history
                break;
            }
            cur = hash32(&b.parent_hash)?;
        }
        if let Some(top) = below {
            let room = want - chain.len();
            chain.extend(self.history.range(..top).rev().take(room).map(|(_, e)| e.clone()));
        }
        chain.reverse();
        let anchor_view = self.blocks.get(anchor)?.view;
        let after = leader::leaders_after(n, &chain, anchor_view, self.cfg.round_robin_leaders);
        let mut cache = self.leaders_cache.borrow_mut();
        if cache.len() >= 256 {
            cache.clear();
        }
        cache.insert(*anchor, (anchor_view, after));
        Some((anchor_view, after))
    }

    pub fn mempool_len(&self) -> usize {
        self.mempool.len()
    }

    pub fn mempool_bytes(&self) -> usize {
        self.mempool.bytes()
    }

    pub fn high_qc(&self) -> &QuorumCert {
        &self.high_qc
    }

    /// Height of the block the highest QC certifies, when this validator holds it (else the
    /// committed height: it certifies at least that much).
    pub fn certified_height(&self) -> u64 {
        let h = self.high_qc.block_hash.as_slice().try_into().ok().and_then(|h: Hash| self.blocks.get(&h)).map_or(0, |b| b.height);
        h.max(self.committed_height())
    }

    /// When the driver should call `Tick` next (None: nothing is waiting).
    pub fn next_wakeup(&self) -> Option<u64> {
        if self.ended.is_some() {
            return None;
        }
        let mut next = Some(if self.deadline > 0 { self.deadline.min(self.next_probe_ms) } else { self.next_probe_ms });
        let waiting = self.waiting_operations();
        if let Some(seen) = waiting {
            let t = seen.saturating_add(self.cfg.inclusion_deadline_ms);
            next = Some(next.map_or(t, |n: u64| n.min(t)));
        }
        if self.read.in_flight {
            let t = self.read.started_ms + self.cfg.base_timeout_ms;
            next = Some(next.map_or(t, |n: u64| n.min(t)));
        }
        if self.expecting_progress() && self.deadline == 0 {
            next = Some(self.now);
        }
        next
    }

    pub fn handle(&mut self, now: u64, input: Input, log: &dyn CommittedLog) -> Vec<Output> {
        self.now = self.now.max(now);
        if self.ended.is_some() {
            // An ended epoch only answers sync requests (its ledger is the new epoch's past).
            if let Input::Message { from, msg: PeerMessage { kind: Some(Kind::SyncRequest(r)) } } = input {
                if from < self.cfg.domain.n && from != self.cfg.me {
                    self.on_sync_request(from, r, log);
                }
            }
            return std::mem::take(&mut self.out);
        }
        match input {
            Input::Tick => {}
            Input::Submit(ops) => self.on_submit_local(ops),
            Input::Message { from, msg } => self.on_message(from, msg, log),
            Input::ReadIndex => self.on_read_index(),
        }
        self.on_tick();
        std::mem::take(&mut self.out)
    }

    fn reject(&mut self, from: usize, reason: &'static str) {
        self.out.push(Output::Rejected { from, reason });
    }

    fn on_message(&mut self, from: usize, m: PeerMessage, log: &dyn CommittedLog) {
        if from >= self.cfg.domain.n || from == self.cfg.me {
            return self.reject(from, "sender is not another validator");
        }
        // A peer already in a later epoch: this validator missed the commit that ended its own.
        // Ask that peer for the committed blocks (with the boundary's proof, `on_sync_request`);
        // the message itself is dropped below (another epoch's signatures never count here).
        let later = match &m.kind {
            Some(Kind::Proposal(p)) => p.block.as_ref().is_some_and(|b| b.epoch > self.cfg.domain.epoch),
            Some(Kind::Vote(v)) => v.epoch > self.cfg.domain.epoch,
            Some(Kind::Timeout(t)) => t.epoch > self.cfg.domain.epoch,
            _ => false,
        };
        if later && !self.sync_in_flight() {
            self.sync_waiting = Some((from, self.now));
            self.send_sync_request(from, None);
        }
        match m.kind {
            Some(Kind::Proposal(p)) => self.on_proposal(from, p),
            Some(Kind::Vote(v)) => self.on_vote(from, v),
            Some(Kind::Timeout(t)) => self.on_timeout_msg(from, t),
            Some(Kind::Submit(s)) => self.on_submit_remote(from, s),
            Some(Kind::SyncRequest(r)) => self.on_sync_request(from, r, log),
            Some(Kind::SyncResponse(r)) => self.on_sync_response(from, r),
            Some(Kind::ReadIndexRequest(r)) => self.on_read_index_request(from, r),
            Some(Kind::ReadIndexReply(r)) => self.on_read_index_reply(from, r),
            // The check stage hands these to the checkpoint task.
            Some(Kind::Checkpoint(_)) => self.reject(from, "a checkpoint is not for the consensus core"),
            Some(Kind::Evidence(e)) => self.on_evidence(from, e),
            None => self.reject(from, "empty message"),
        }
    }

    // ---- operations -------------------------------------------------------------------------

    fn on_submit_local(&mut self, mut ops: Vec<Operation>) {
        // The runtime stamps and signs off this task (stages::sign_submissions); the simulator
        // hands operations over unsigned.
        if ops.iter().any(|op| op.bank_signature.is_empty()) {
            for op in &mut ops {
                op.submitted_ms = self.now;
            }
            // One signature for the whole batch (a Merkle root), not one per operation.
            let crypto = &self.crypto;
            self.cfg.domain.sign_batch(&mut ops, |bytes| crypto.sign_operation(bytes));
        }
        // The front checked them already; the same rules again here, so that nothing this bank
        // forwards is refused by the others, and its share of the mempool bounds its clients.
        ops.retain(|op| {
            let Some(id) = op_id(op) else { return false };
            let refused = match validity::check_operation(op, &self.cfg.limits) {
                Err(e) => Some(Refusal::Invalid(e)),
                Ok(()) => self.mempool.insert(op.clone(), self.now).err().map(|_| Refusal::Busy),
            };
            if let Some(why) = refused {
                self.out.push(Output::Refused { id, why });
            }
            refused.is_none()
        });
        if !ops.is_empty() {
            self.out.push(Output::Broadcast(msg(Kind::Submit(Submit { operations: ops }))));
        }
    }

    /// Everything about an operation but its signature.
    fn operation_well_formed(&self, op: &Operation, at_ms: u64) -> bool {
        let Some(id) = op_id(op) else { return false };
        (id.0 as usize) < self.cfg.domain.n
            && op.request.is_some()
            && op.submitted_ms.saturating_add(self.cfg.operation_ttl_ms) >= at_ms
            && op.submitted_ms <= at_ms.saturating_add(self.cfg.skew_ms)
    }

    fn on_submit_remote(&mut self, from: usize, s: Submit) {
        let mut fresh = Vec::with_capacity(s.operations.len());
        let mut malformed = false;
        let mut invalid = None;
        // The forwarding bank's share of the mempool: what is beyond it is dropped unverified.
        let (mut ops_left, mut bytes_left) = self.mempool.room(from as u32);
        let mut over_quota = false;
        for op in s.operations {
            let Some(id) = op_id(&op) else { return self.reject(from, "operation without id") };
            if id.0 as usize != from {
                return self.reject(from, "forwarded another bank's operation");
            }
            if self.recent.contains(&id) || self.mempool.contains(&id) {
                continue;
            }
            if !self.operation_well_formed(&op, self.now) {
                malformed = true;
                break;
            }
            // Content as every bank checks it: one bad operation must not enter a mempool,
            // where a leader would propose it and every bank refuse the block.
            if let Err(e) = validity::check_operation(&op, &self.cfg.limits) {
                invalid = Some(e);
                continue;
            }
            let len = mempool::block_bytes(&op);
            if ops_left == 0 || bytes_left < len {
                over_quota = true;
                continue;
            }
            ops_left -= 1;
            bytes_left -= len;
            fresh.push(op);
        }
        if let Some(e) = invalid {
            self.reject(from, e.reason());
        }
        if over_quota {
            self.reject(from, "forwarded operations beyond the bank's mempool share");
        }
        // One bank signed all of them, usually with one signature over one batch's root: check
        // each distinct (root, signature) once, all of them as one Ed25519 batch, and one by one
        // only if the batch fails, to keep the operations whose signature verifies.
        let signed: Vec<(Vec<u8>, &[u8])> =
            fresh.iter().map(|op| (self.cfg.domain.operation_bytes(op), op.bank_signature.as_slice())).collect();
        let mut distinct: HashMap<(&[u8], &[u8]), bool> = HashMap::new();
        for (msg, sig) in &signed {
            distinct.insert((msg.as_slice(), sig), false);
        }
        let unique: Vec<(Vec<u8>, &[u8])> = distinct.keys().map(|(m, s)| (m.to_vec(), *s)).collect();
        let all_verify = self.crypto.verify_operations(from, &unique);
        for ((msg, sig), ok) in distinct.iter_mut() {
            *ok = all_verify || self.crypto.verify_operation(from, msg, sig);
        }
        let verified: Vec<bool> = signed.iter().map(|(msg, sig)| distinct[&(msg.as_slice(), *sig)]).collect();
        drop(distinct);
        drop(signed);
        for (op, ok) in fresh.into_iter().zip(verified) {
            if !ok {
                return self.reject(from, "invalid operation");
            }
            // Room was checked above, so this only fails if the caps changed meanwhile.
            let _ = self.mempool.insert(op, self.now);
        }
        if malformed {
            self.reject(from, "invalid operation");
        }
    }

    /// Ids of operations in blocks above the committed tip, along the chain ending at `from`.
    fn in_flight(&self, from: &Hash) -> HashSet<OpId> {
        let mut ids = HashSet::new();
        let mut cur = *from;
        while let Some(b) = self.blocks.get(&cur) {
            if b.height <= self.committed.height {
                break;
            }
            ids.extend(b.operations.iter().filter_map(op_id));
            match hash32(&b.parent_hash) {
                Some(p) => cur = p,
                None => break,
            }
        }
        ids
    }

    fn waiting_operations(&self) -> Option<u64> {
        if self.mempool.is_empty() {
            return None;
        }
        let tip = hash32(&self.high_qc.block_hash).unwrap_or_default();
        let key = (tip, self.last_voted_block);
        let cached = self.in_flight_cache.borrow().as_ref().filter(|(k, _)| *k == key).map(|(_, set)| set.clone());
        let exclude = cached.unwrap_or_else(|| {
            let mut set = self.in_flight(&tip);
            if let Some(v) = self.last_voted_block {
                set.extend(self.in_flight(&v));
            }
            let set = std::sync::Arc::new(set);
            *self.in_flight_cache.borrow_mut() = Some((key, set.clone()));
            set
        });
        self.mempool.oldest_waiting(&exclude)
    }

    /// Does a block above the committed tip, on the chain ending at `hash`, carry operations?
    fn uncommitted_operations(&self, hash: &Hash) -> bool {
        let mut cur = *hash;
        while let Some(b) = self.blocks.get(&cur) {
            if b.height <= self.committed.height {
                return false;
            }
            if !b.operations.is_empty() || !b.evidence.is_empty() {
                return true;
            }
            match hash32(&b.parent_hash) {
                Some(p) => cur = p,
                None => return false,
            }
        }
        // An unknown ancestor: we are behind, so something is pending.
        cur != self.committed.hash
    }

    /// Is this validator waiting for the current view to produce something?
    fn expecting_progress(&self) -> bool {
        if self.waiting_operations().is_some() {
            return true;
        }
        let newest = self
            .last_voted_block
            .filter(|h| self.blocks.get(h).is_some_and(|b| b.view >= self.high_qc.view))
            .or_else(|| hash32(&self.high_qc.block_hash))
            .unwrap_or_default();
        self.uncommitted_operations(&newest)
    }

    // ---- pacemaker ------------------------------------------------------------------------

    fn timeout_ms(&self) -> u64 {
        // Votes go to every validator, so a crashed one fails only its own view; with the
        // leader choice ([`leader`]) two failures in a row are still ordinary (a bank that just
        // crashed, then a retried one): back off only beyond that.
        let exp = self.failed_views.saturating_sub(2).min(8);
        (self.cfg.base_timeout_ms << exp).min(self.cfg.max_timeout_ms)
    }

    fn probe(&mut self) {
        let probing = self.probe_waiting.is_some_and(|(_, at)| self.now < at.saturating_add(2 * self.cfg.base_timeout_ms));
        if self.now < self.next_probe_ms || self.cfg.domain.n < 2 || self.sync_in_flight() || probing {
            return;
        }
        let n = self.cfg.domain.n;
        let peer = (self.cfg.me + 1 + self.probes % (n - 1)) % n;
        self.probes += 1;
        self.probe_interval_ms = (self.probe_interval_ms * 2).clamp(self.cfg.base_timeout_ms, self.cfg.sync_probe_max_ms);
        self.next_probe_ms = self.now + self.probe_interval_ms;
        self.probe_waiting = Some((peer, self.now));
        self.send_sync_request(peer, None);
    }

    fn on_tick(&mut self) {
        if self.ended.is_some() {
            return; // the epoch ended: nothing more is signed in it
        }
        self.probe();
        if self.read.in_flight && self.now >= self.read.started_ms + self.cfg.base_timeout_ms {
            // No quorum answered in time (partition, crashed peers): ask afresh.
            self.start_read_round();
        }
        self.mempool.expire(self.now.saturating_sub(self.cfg.operation_ttl_ms));
        // An operation waiting past the inclusion deadline means this view's leader ignores it;
        // give every view one base timeout before blaming its leader.
        let censored = self.waiting_operations().is_some_and(|seen| self.now >= seen.saturating_add(self.cfg.inclusion_deadline_ms))
            && self.now >= self.view_entered_ms + self.cfg.base_timeout_ms;
        if self.deadline == 0 && self.expecting_progress() {
            self.deadline = self.now + self.timeout_ms();
        }
        if (self.deadline > 0 && self.now >= self.deadline) || (censored && self.timed_out_view < self.view) {
            self.on_local_timeout();
        }
        self.try_propose();
    }

    fn enter_view(&mut self, view: u64, after_failure: bool) {
        if self.ended.is_some() {
            return; // the epoch ended: nothing more is signed in it
        }
        if view <= self.view {
            return;
        }
        self.view = view;
        self.view_entered_ms = self.now;
        self.failed_views = if after_failure { self.failed_views.saturating_add(1) } else { 0 };
        self.deadline = 0;
        self.my_timeout = None;
        self.prune_views();
        self.try_propose();
    }

    /// Forgets what peers sent for views this validator left: nothing for them is accepted any
    /// more (late votes and timeouts are dropped on arrival), so none of it can complete.
    fn prune_views(&mut self) {
        let keep = self.view.saturating_sub(1);
        self.votes.retain(|(v, _, _), _| v.saturating_add(1) >= keep);
        self.voted.retain(|(v, _)| v.saturating_add(1) >= keep);
        self.timeouts.retain(|v, _| *v >= keep);
        self.proposals.retain(|(v, _), _| *v >= keep);
        self.evidence_looked.retain(|(v, _, _)| v.saturating_add(VIEWS_AHEAD) >= keep);
    }

    fn on_local_timeout(&mut self) {
        if self.ended.is_some() {
            return; // the epoch ended: nothing more is signed in it
        }
        let view = self.view;
        if self.timed_out_view < view {
            let Some(state) = self.safety.timeout(view, self.high_qc.view) else {
                // Our high QC is below our lock (just restarted): wait to learn a higher one.
                self.deadline = self.now + self.timeout_ms();
                return;
            };
            self.out.push(Output::Persist(state));
            self.timed_out_view = view;
            let t = self.signed_timeout(view, self.high_tc.clone().filter(|tc| tc.view >= self.high_qc.view));
            // Send before recording: recording may complete a TC and move to the next view.
            self.out.push(Output::Broadcast(msg(Kind::Timeout(t.clone()))));
            self.my_timeout = Some(t.clone());
            self.record_timeout(self.cfg.me, t);
        } else if let Some(t) = self.my_timeout.clone() {
            // Resend: before the network stabilises a timeout may be lost.
            self.out.push(Output::Broadcast(msg(Kind::Timeout(t))));
        }
        // Our own operations may never have reached the others.
        let exclude = self.in_flight(&hash32(&self.high_qc.block_hash).unwrap_or_default());
        let own = self.mempool.own(self.cfg.me as u32, &exclude);
        if !own.is_empty() {
            self.out.push(Output::Broadcast(msg(Kind::Submit(Submit { operations: own }))));
        }
        if self.view == view {
            self.failed_views = self.failed_views.saturating_add(1);
            self.deadline = self.now + self.timeout_ms();
            // Alone in giving up? Then perhaps we missed commits (no block announces one): ask
            // a peer that has not given up on this view, which may have committed, else a
            // different peer each time.
            let n = self.cfg.domain.n;
            let content = (1..n).map(|k| (self.cfg.me + k) % n).find(|p| self.gave_up[*p] < view);
            let peer = content.unwrap_or((self.cfg.me + 1 + self.failed_views as usize % (n - 1)) % n);
            let want = hash32(&self.high_qc.block_hash).unwrap_or_default();
            self.ask_sync(peer, &want);
        }
    }

    fn on_timeout_msg(&mut self, from: usize, t: Timeout) {
        if t.signer as usize != from || t.epoch != self.cfg.domain.epoch {
            return self.reject(from, "timeout signer or epoch mismatch");
        }
        if t.signature.len() != self.crypto.signature_len() {
            return self.reject(from, "timeout with a malformed signature");
        }
        // A peer resends its timeout until the view moves on: once recorded, a copy adds nothing
        // (and a different one for the same view is not worth two pairings either).
        if self.timeouts.get(&t.view).is_some_and(|e| e.contains_key(&from)) {
            return;
        }
        let Some(sent) = t.high_qc.clone() else { return self.reject(from, "timeout without QC") };
        if sent.view >= t.view {
            return self.reject(from, "timeout with an invalid QC");
        }
        let replay = self.timeout_verified[from]
            .as_ref()
            .is_some_and(|(view, sig, qc)| *view == t.view && *sig == t.signature && *qc == sent);
        let qc = if replay {
            // Verified when it first came: this validator's copy if it holds one, else as sent.
            let key = hash32(&sent.block_hash).map(|h| (sent.view, h, sent.justify_view));
            key.and_then(|k| self.verified_qcs.get(&k).cloned()).unwrap_or(sent)
        } else {
            let Some(qc) = self.checked_qc(&sent) else { return self.reject(from, "timeout with an invalid QC") };
            if !self.crypto.verify(from, &self.cfg.domain.timeout_bytes(t.view, qc.view), &t.signature) {
                return self.reject(from, "timeout with a bad signature");
            }
            self.timeout_verified[from] = Some((t.view, t.signature.clone(), sent));
            qc
        };
        self.process_qc(&qc, from);
        if let Some(tc) = t.high_tc.as_ref().filter(|tc| tc.view >= self.view) {
            if self.cfg.domain.verify_tc(tc, &self.cfg.genesis_hash, self.crypto.as_ref()) {
                self.process_tc(tc, from);
            } else {
                return self.reject(from, "timeout with an invalid TC");
            }
        }
        self.gave_up[from] = self.gave_up[from].max(t.view);
        if t.view < self.view {
            self.help_behind(from, t.view);
        }
        if t.view > self.view.saturating_add(VIEWS_AHEAD) {
            // Its certificates did not bring this validator near: not kept (see VIEWS_AHEAD).
            self.reject(from, "timeout too far ahead");
        } else if t.view >= self.view {
            self.record_timeout(from, t);
        }
        self.synchronise_view();
    }

    /// This validator's timeout for `view`, reporting its high QC (the safety rules must have
    /// allowed it already).
    fn signed_timeout(&self, view: u64, high_tc: Option<TimeoutCert>) -> Timeout {
        Timeout {
            epoch: self.cfg.domain.epoch,
            view,
            high_qc: Some(self.high_qc.clone()),
            signer: self.cfg.me as u32,
            signature: self.crypto.sign(&self.cfg.domain.timeout_bytes(view, self.high_qc.view)),
            high_tc,
        }
    }

    /// `to` gave up on `view`, which this validator left with a certificate it no longer holds
    /// (lost in a restart). If a bank whose timeout went into that certificate is down for
    /// good, `to` can only move on with a TC for `view`, and this validator's timeout for it may
    /// be the one missing: send it (signed once per view; `SafetyRules::timeout`).
    fn help_behind(&mut self, to: usize, view: u64) {
        if self.ended.is_some() {
            return; // the epoch ended: nothing more is signed in it
        }
        let carried = self.high_qc.view >= view || self.high_tc.as_ref().is_some_and(|tc| tc.view >= view);
        if carried || view.saturating_add(VIEWS_AHEAD) < self.view {
            return; // this validator's own timeouts carry what moves `to` on, or it is far behind
        }
        let t = match self.helped.get(&view) {
            Some(t) => t.clone(),
            None => {
                let Some(state) = self.safety.timeout(view, self.high_qc.view) else { return };
                self.out.push(Output::Persist(state));
                let t = self.signed_timeout(view, None);
                let floor = self.high_qc.view;
                self.helped.retain(|v, _| *v > floor);
                self.helped.insert(view, t.clone());
                t
            }
        };
        self.out.push(Output::Send { to, msg: msg(Kind::Timeout(t)) });
    }

    /// When f+1 validators gave up on views at or above w, at least one honest one did: move
    /// to w and give up there too, so validators scattered over views meet in one.
    fn synchronise_view(&mut self) {
        let mut views = self.gave_up.clone();
        views.sort_unstable_by(|a, b| b.cmp(a));
        let w = views[self.cfg.domain.f()];
        if w > self.view || (w == self.view && w > 0 && self.timed_out_view < w) {
            if w > self.view {
                self.view = w;
                self.view_entered_ms = self.now;
                self.deadline = 0;
                self.my_timeout = None;
                self.prune_views();
            }
            self.on_local_timeout();
        }
    }

    fn record_timeout(&mut self, from: usize, t: Timeout) {
        let view = t.view;
        let qc = t.high_qc.clone().unwrap_or_default();
        self.timeouts.entry(view).or_default().insert(from, (qc, t.signature));
        self.gave_up[from] = self.gave_up[from].max(view);
        let entry = &self.timeouts[&view];
        if entry.len() >= self.cfg.domain.quorum() && view >= self.view {
            let votes: Vec<TimeoutVote> = entry
                .iter()
                .map(|(s, (qc, sig))| TimeoutVote { signer: *s as u32, high_qc_view: qc.view, signature: sig.clone() })
                .collect();
            let high = entry.values().map(|(qc, _)| qc.clone()).max_by_key(|qc| qc.view).unwrap_or_default();
            let tc = self.cfg.domain.make_tc(view, votes, high);
            self.out.push(Output::PersistTc(tc.clone()));
            self.high_tc = Some(tc);
            self.enter_view(view.saturating_add(1), true);
        }
    }

    fn process_tc(&mut self, tc: &TimeoutCert, from: usize) {
        if let Some(qc) = &tc.high_qc {
            self.process_qc(qc, from);
        }
        if self.high_tc.as_ref().is_none_or(|h| h.view < tc.view) {
            self.out.push(Output::PersistTc(tc.clone()));
            self.high_tc = Some(tc.clone());
        }
        self.enter_view(tc.view.saturating_add(1), true);
    }

    // ---- certificates and commits ---------------------------------------------------------

    /// The QC as this validator keeps it, if it verifies: one it already holds for the same
    /// (view, block, justify view) is returned without a BLS check.
    fn checked_qc(&mut self, qc: &QuorumCert) -> Option<QuorumCert> {
        let hash = hash32(&qc.block_hash)?;
        // A certificate of another epoch never counts: its signers were another set's, and its
        // block may lie above the boundary that ended that epoch (abandoned, never committed).
        let old = self.cfg.broken_epoch_carry && qc.epoch.checked_add(1) == Some(self.cfg.domain.epoch);
        if qc.epoch != self.cfg.domain.epoch && !old {
            return None;
        }
        if let Some(known) = self.verified_qcs.get(&(qc.view, hash, qc.justify_view)) {
            return Some(known.clone());
        }
        let domain = if old { Domain { epoch: qc.epoch, ..self.cfg.domain.clone() } } else { self.cfg.domain.clone() };
        if !domain.verify_qc(qc, &self.cfg.genesis_hash, self.crypto.as_ref()) {
            return None;
        }
        self.remember_qc(qc);
        Some(qc.clone())
    }

    /// Does this validator hold a verified QC certifying the same as `qc`?
    fn known_qc(&self, qc: &QuorumCert) -> bool {
        (qc.epoch == self.cfg.domain.epoch || self.cfg.broken_epoch_carry)
            && hash32(&qc.block_hash).is_some_and(|h| self.verified_qcs.contains_key(&(qc.view, h, qc.justify_view)))
    }

    fn remember_qc(&mut self, qc: &QuorumCert) {
        let Some(hash) = hash32(&qc.block_hash) else { return };
        self.verified_qcs.entry((qc.view, hash, qc.justify_view)).or_insert_with(|| qc.clone());
        while self.verified_qcs.len() > VERIFIED_QCS {
            self.verified_qcs.pop_first();
        }
    }

    /// `qc` has been verified (or formed here).
    fn process_qc(&mut self, qc: &QuorumCert, from: usize) {
        let Some(hash) = hash32(&qc.block_hash) else { return };
        self.remember_qc(qc);
        if qc.view > self.high_qc.view {
            self.high_qc = qc.clone();
        }
        match self.blocks.get(&hash).cloned() {
            Some(b) => {
                if let Some(parent) = hash32(&b.parent_hash).and_then(|p| self.blocks.get(&p)).cloned() {
                    if parent.view.checked_add(1) == Some(b.view) && b.justify.as_ref().is_some_and(|j| j.view == parent.view) {
                        self.commit(&parent, qc, &b, from);
                    }
                }
            }
            None if qc.view > 0 => self.ask_sync(from, &hash),
            None => {}
        }
        self.enter_view(qc.view.saturating_add(1), false);
    }

    /// Commits `block` and every uncommitted ancestor; `qc` certifies `child`, its direct child
    /// in the next view.
    fn commit(&mut self, block: &Arc<Block>, qc: &QuorumCert, child: &Block, from: usize) {
        if block.height <= self.committed.height {
            // Already committed at that height: it must be the same block, or the chain forked.
            let hash = block_hash(block);
            // (The epoch's root stands in for a block hashed otherwise: never compared.)
            if block.height > self.cfg.root_height && self.committed_hashes.get(&block.height).is_some_and(|h| *h != hash) {
                self.out.push(Output::SafetyViolation(format!(
                    "a different block was certified for commit at committed height {}",
                    block.height
                )));
            }
            return;
        }
        let Some(child_hash) = hash32(&qc.block_hash) else { return };
        let mut chain = vec![(hash32(&child.parent_hash).unwrap_or_default(), block.clone())];
        let mut cur = hash32(&block.parent_hash).unwrap_or_default();
        while chain.last().map(|(_, b)| b.height).unwrap_or(0) > self.committed.height.saturating_add(1) {
            match self.blocks.get(&cur) {
                Some(b) => {
                    chain.push((cur, b.clone()));
                    cur = hash32(&b.parent_hash).unwrap_or_default();
                }
                None => return self.ask_sync(from, &cur),
            }
        }
        if cur != self.committed.hash {
            // Conflicting committed chains: impossible with at most f Byzantine validators.
            // Refuse to commit and say so loudly; the runtime stops this bank.
            self.out.push(Output::SafetyViolation(format!(
                "block {} certified for commit does not extend the committed block {}",
                block.height, self.committed.height
            )));
            return;
        }
        chain.reverse();
        let mut last = chain.len() - 1;
        // Reconfiguration: the first block that enacts a new validator set ends the epoch. The
        // blocks above it are never committed in this epoch (the next one starts from it), so
        // the boundary is the same block at every validator: the rule reads committed blocks
        // only, and the committed chain is one.
        let mut boundary_proof = None;
        if let Some(rule) = &self.cfg.epoch_end {
            if let Some(k) = chain.iter().position(|(_, b)| (rule.0)(b)) {
                if k < last {
                    boundary_proof = Some(self.boundary_proof_above(&chain, k, qc, &child_hash, child));
                    chain.truncate(k + 1);
                    last = k;
                } else {
                    boundary_proof = Some((None, Vec::new()));
                }
            }
        }
        let boundary_direct = boundary_proof.as_ref().and_then(|(direct, _)| direct.clone());
        for (i, (hash, b)) in chain.into_iter().enumerate() {
            if !b.operations.is_empty() {
                self.committed_operations = b.height;
            }
            for op in &b.operations {
                if let Some(id) = op_id(op) {
                    self.mempool.remove(&id);
                    self.recent.insert(b.timestamp_ms, id);
                }
            }
            for ev in &b.evidence {
                if !self.evidence.knows(&evidence::key(ev)) {
                    self.out.push(Output::Evidence(ev.clone()));
                }
                self.evidence.committed(ev);
            }
            self.committed = Tip { height: b.height, hash, timestamp_ms: b.timestamp_ms };
            self.committed_hashes.insert(b.height, hash);
            let entry = self.leader_entry(&b);
            self.history.insert(b.height, entry);
            let (commit_qc, commit_child) = match (i == last, &boundary_direct) {
                (true, Some((q, c))) => (Some(q.clone()), Some(c.clone())),
                (true, None) if boundary_proof.as_ref().is_some_and(|(_, p)| !p.is_empty()) => (None, None),
                (true, None) => (Some(qc.clone()), Some(self.header_of(&child_hash, child))),
                _ => (None, None),
            };
            let b = Arc::try_unwrap(b).unwrap_or_else(|shared| (*shared).clone());
            self.out.push(Output::Commit(CommittedBlock { block: Some(b), commit_qc, commit_child }));
        }
        self.recent.forget_before(self.committed.timestamp_ms.saturating_sub(self.cfg.dedup_window_ms()));
        while self.committed_hashes.len() > 4096 {
            self.committed_hashes.pop_first();
        }
        self.prune_history();
        if let Some((_, proof)) = boundary_proof {
            // Abandon the pipeline above the boundary: nothing more is voted, proposed or
            // committed in this epoch. Its operations are still in the mempool.
            self.ended = Some((self.committed.height, self.committed.hash));
            if !self.cfg.broken_epoch_carry {
                self.blocks.retain(|h, _| *h == self.committed.hash);
            }
            self.pending.clear();
            self.deadline = 0;
            self.out.push(Output::EpochEnded { height: self.committed.height, hash: self.committed.hash, proof });
            return;
        }
        let floor = self.committed.height;
        let tip = self.committed.hash;
        self.blocks.retain(|h, b| b.height > floor || *h == tip);
        let blocks = &self.blocks;
        self.headers.get_mut().retain(|h, _| blocks.contains_key(h));
    }

    /// The commit proof of `chain[k]`, the boundary, when the batch `chain` (ending with the
    /// block `child` certified by `qc` commits) goes on above it: a direct one (its child in
    /// the chain is one view later, and certified by the next block's justify), or else the
    /// blocks above it up to the end of the batch, the last carrying the batch's proof. A
    /// validator still in this epoch checks those blocks and their QCs like any sync answer,
    /// and commits up to the boundary only.
    #[allow(clippy::type_complexity)]
    fn boundary_proof_above(
        &self,
        chain: &[(Hash, Arc<Block>)],
        k: usize,
        qc: &QuorumCert,
        child_hash: &Hash,
        child: &Block,
    ) -> (Option<(QuorumCert, Block)>, Vec<CommittedBlock>) {
        let (boundary, above) = (&chain[k].1, &chain[k + 1]);
        if boundary.view.checked_add(1) == Some(above.1.view) {
            let cert = match chain.get(k + 2) {
                Some((_, b)) => b.justify.clone(),
                None => child.justify.clone(),
            };
            if let Some(cert) = cert {
                return (Some((cert, self.header_of(&above.0, &above.1))), Vec::new());
            }
        }
        let last = chain.len() - 1;
        let proof = chain[k + 1..]
            .iter()
            .enumerate()
            .map(|(i, (_, b))| {
                let end = k + 1 + i == last;
                CommittedBlock {
                    block: Some((**b).clone()),
                    commit_qc: end.then(|| qc.clone()),
                    commit_child: end.then(|| self.header_of(child_hash, child)),
                }
            })
            .collect();
        (None, proof)
    }

    // ---- proposing and voting -------------------------------------------------------------

    fn try_propose(&mut self) {
        if self.ended.is_some() {
            return; // the epoch ended: nothing more is signed in it
        }
        let view = self.view;
        if self.proposed_view >= view || self.timed_out_view >= view {
            return;
        }
        let tc = if self.high_qc.view.checked_add(1) == Some(view) {
            None
        } else {
            match &self.high_tc {
                Some(tc) if tc.view.checked_add(1) == Some(view) => Some(tc.clone()),
                _ => return,
            }
        };
        let Some(parent_hash) = hash32(&self.high_qc.block_hash) else { return };
        let Some((leader, failed_leaders)) = self.expected_leader(view, &parent_hash) else { return };
        if leader != self.cfg.me {
            return;
        }
        let Some(parent) = self.blocks.get(&parent_hash).cloned() else { return };
        let exclude = self.in_flight(&parent_hash);
        let ops: Vec<Operation> = self
            .mempool
            .take(self.cfg.max_block_operations, self.cfg.max_block_bytes, &exclude, (view % self.cfg.domain.n as u64) as usize)
            .into_iter()
            .filter(|op| self.operation_valid_in_block(op, self.now.max(parent.timestamp_ms.saturating_add(1))))
            .collect();
        let evidence = if self.evidence.pending_len() == 0 {
            Vec::new()
        } else {
            let in_chain = self.evidence_in_chain(&parent_hash);
            self.evidence.for_block(|k| in_chain.contains(k))
        };
        // Propose also when blocks above the tip carry operations: they need certifying. A commit
        // needs no announcing: every validator forms the QC that commits from the votes.
        if ops.is_empty() && evidence.is_empty() && !self.uncommitted_operations(&parent_hash) {
            return; // nothing to order and nothing left to certify: an idle cluster stays quiet
        }
        let block = Block {
            height: parent.height.saturating_add(1),
            epoch: self.cfg.domain.epoch,
            view,
            parent_hash: parent_hash.to_vec(),
            timestamp_ms: self.now.max(parent.timestamp_ms.saturating_add(1)),
            proposer: self.cfg.me as u32,
            operations: ops,
            justify: Some(self.high_qc.clone()),
            failed_leaders,
            evidence,
            ..Default::default()
        };
        self.proposed_view = view;
        let head = header(&block);
        let hash = block_hash(&head);
        let signature = self.crypto.sign_operation(&self.cfg.domain.proposal_bytes(view, &hash));
        let p = Proposal { block: Some(block), tc, signature };
        // A validator must never sign two proposals for one view, not even across a crash (that
        // would be evidence against an honest bank). Usually its vote or timeout in the view
        // before is on disk already (or will be before anything after it leaves): after a
        // restart it never proposes in the view after its last one (`Core::new`), so the
        // proposal leaves at once. Otherwise (view 1, a view reached by others' certificates
        // alone) it leaves only after this validator's vote for it is durable: the vote's
        // `Persist` comes first, and the runtime writes it before acting on anything after it.
        let last = self.safety.state().last_voted_view;
        let reserved = last > 0 && last.saturating_add(1) >= view;
        let start = self.out.len();
        self.on_proposal_hashed(self.cfg.me, p.clone(), Some((head, hash)));
        let at = if reserved {
            Some(start)
        } else {
            self.out[start..].iter().position(|o| matches!(o, Output::Persist(_))).map(|at| start + at + 1)
        };
        // Without a vote of its own for it (refused by its safety rules), nothing leaves.
        if let Some(at) = at.filter(|_| self.safety.state().last_voted_view >= view) {
            self.out.insert(at, Output::Broadcast(msg(Kind::Proposal(p))));
        }
    }

    /// Keys of the evidence in the blocks above the committed tip on the chain ending at `from`.
    fn evidence_in_chain(&self, from: &Hash) -> HashSet<evidence::EvidenceKey> {
        let mut keys = HashSet::new();
        let mut cur = *from;
        while let Some(b) = self.blocks.get(&cur) {
            if b.height <= self.committed.height {
                break;
            }
            keys.extend(b.evidence.iter().map(evidence::key));
            match hash32(&b.parent_hash) {
                Some(p) => cur = p,
                None => break,
            }
        }
        keys
    }

    /// New evidence found here or received: kept, reported, and sent to every other validator
    /// (a Byzantine sender may have shown it to some only).
    fn found_evidence(&mut self, ev: Evidence) {
        if self.evidence.add(ev.clone()) {
            self.out.push(Output::Broadcast(msg(Kind::Evidence(ev.clone()))));
            self.out.push(Output::Evidence(ev));
        }
    }

    /// Evidence from a peer: checked once (an exact repeat, or an equivocation known here in any
    /// form, costs nothing) and at most once per sender and view.
    fn on_evidence(&mut self, from: usize, ev: Evidence) {
        if self.evidence.knows(&evidence::key(&ev)) {
            return;
        }
        if !self.evidence_looked.insert((ev.view, from, 2)) {
            return self.reject(from, "more evidence for one view");
        }
        if ev.view.saturating_add(VIEWS_AHEAD) < self.view || ev.view > self.view.saturating_add(VIEWS_AHEAD) {
            // Older equivocations reach the ledger through the banks that saw them then; a
            // window keeps what one peer can make this validator check bounded per view.
            return self.reject(from, "evidence for a view out of range");
        }
        match evidence::check(&self.cfg.domain, self.crypto.as_ref(), &ev) {
            Ok(()) => self.found_evidence(ev),
            Err(why) => self.reject(from, why),
        }
    }

    /// A proposal's evidence: at most [`evidence::MAX_PER_BLOCK`], distinct, each valid.
    fn evidence_acceptable(&self, block: &Block) -> Result<(), &'static str> {
        if block.evidence.len() > evidence::MAX_PER_BLOCK {
            return Err("block carries too much evidence");
        }
        let mut keys = HashSet::new();
        for ev in &block.evidence {
            if !keys.insert(evidence::key(ev)) {
                return Err("block carries the same evidence twice");
            }
            if !self.evidence.checked(ev) {
                evidence::check(&self.cfg.domain, self.crypto.as_ref(), ev)?;
            }
        }
        Ok(())
    }

    /// A vote names the block and passes on its proposer's signature: if this validator holds
    /// another block of that view from a proposer whose key made that signature too, the
    /// proposer equivocated (the split case: each honest bank saw only one of the blocks).
    fn look_for_double_proposal(&mut self, from: usize, v: &Vote, hash: &Hash) {
        let view = v.view;
        let held: Vec<(usize, Hash, Vec<u8>)> = self
            .proposals
            .range((view, 0)..=(view, usize::MAX))
            .filter(|(_, (first, _, second))| first != hash && *second != Some(*hash))
            .map(|((_, leader), (first, sig, _))| (*leader, *first, sig.clone()))
            .collect();
        for (leader, first, first_sig) in held {
            if self.evidence.knows(&(leader as u32, view, 0)) || !self.evidence_looked.insert((view, from, 0)) {
                continue;
            }
            if self.crypto.verify_operation(leader, &self.cfg.domain.proposal_bytes(view, hash), &v.proposal_signature) {
                let ev = evidence::double_proposal(&self.cfg.domain, leader, view, (&first, &first_sig), (hash, &v.proposal_signature));
                self.found_evidence(ev);
            }
        }
    }

    /// A second vote of `from` in one view: with its first (kept until its view is left), that is
    /// evidence once both signatures verify alone (votes are checked in aggregate otherwise).
    fn look_for_double_vote(&mut self, from: usize, v: &Vote, hash: &Hash) {
        if self.evidence.knows(&(from as u32, v.view, 1)) || !self.evidence_looked.insert((v.view, from, 1)) {
            return;
        }
        let first = self
            .votes
            .iter()
            .filter(|((view, h, j), _)| *view == v.view && (h, *j) != (hash, v.justify_view))
            .find_map(|((_, h, j), signers)| signers.get(&from).map(|(sig, _)| (*h, *j, sig.clone())));
        let Some((first_hash, first_justify, first_sig)) = first else { return };
        let ev = evidence::double_vote(
            &self.cfg.domain,
            from,
            v.view,
            (&first_hash, first_justify, &first_sig),
            (hash, v.justify_view, &v.signature),
        );
        if evidence::check(&self.cfg.domain, self.crypto.as_ref(), &ev).is_ok() {
            self.found_evidence(ev);
        }
    }

    fn operation_valid_in_block(&self, op: &Operation, block_ms: u64) -> bool {
        op.submitted_ms.saturating_add(self.cfg.operation_ttl_ms) >= block_ms
            && op.submitted_ms <= block_ms.saturating_add(self.cfg.skew_ms)
            && op_id(op).is_some_and(|id| !self.recent.contains(&id))
    }

    fn on_proposal(&mut self, from: usize, p: Proposal) {
        self.on_proposal_hashed(from, p, None)
    }

    /// `known`: the block's header and hash, when the caller computed them already.
    fn on_proposal_hashed(&mut self, from: usize, mut p: Proposal, known: Option<(Block, Hash)>) {
        let Some(mut block) = p.block.take() else { return self.reject(from, "proposal without block") };
        let Some(justify) = block.justify.clone() else { return self.reject(from, "block without justify") };
        if block.epoch != self.cfg.domain.epoch
            || block.proposer as usize != from
            || block.view <= justify.view
            || !block.operations_digest.is_empty()
            || block.parent_hash != justify.block_hash
        {
            return self.reject(from, "malformed proposal");
        }
        // A leader proposes in the view right after its justify QC or its TC (`try_propose`):
        // anything else is never voted for, and the check bounds how far ahead a proposal can
        // reach to the certificates it must carry.
        let follows = justify.view.checked_add(1) == Some(block.view)
            || p.tc.as_ref().is_some_and(|tc| tc.view.checked_add(1) == Some(block.view));
        if !follows {
            return self.reject(from, "proposal for a view its certificates do not lead to");
        }
        let me = from == self.cfg.me;
        let (head, hash) = known.unwrap_or_else(|| {
            let head = header(&block);
            let hash = block_hash(&head);
            (head, hash)
        });
        if !me && !self.crypto.verify_operation(from, &self.cfg.domain.proposal_bytes(block.view, &hash), &p.signature) {
            return self.reject(from, "proposal with a bad signature");
        }
        if let Some((first, first_sig, second)) = self.proposals.get(&(block.view, from)).cloned() {
            // Equivocation. This validator votes at most once per view anyway; the second block
            // is kept in case it is the one certified (its parent for the next view, without a
            // sync). The two signed hashes are evidence. More blocks are not kept.
            if hash != first {
                let ev = evidence::double_proposal(&self.cfg.domain, from, block.view, (&first, &first_sig), (&hash, &p.signature));
                if !self.evidence.knows(&evidence::key(&ev)) {
                    self.found_evidence(ev);
                }
                if second.is_some_and(|s| s != hash) {
                    return self.reject(from, "third proposal in one view");
                }
            }
        }
        let Some(parent_hash) = hash32(&block.parent_hash) else { return self.reject(from, "bad parent hash") };
        // Checked before any signature when the parent's chain is known (the usual case); else
        // once a sync brought it. A late block skips it: its QC shows 2f+1 validators checked it.
        let expected = self.expected_leader(block.view, &parent_hash);
        if expected.as_ref().is_some_and(|(l, failed)| *l != from || *failed != block.failed_leaders) {
            return self.reject(from, "proposal from a validator that does not lead the view");
        }
        // Usually this validator formed the same QC from the votes already: keep its own copy
        // (the block hash does not cover who signed) rather than check the leader's.
        let justify = if me {
            justify
        } else {
            match self.checked_qc(&justify) {
                Some(qc) => qc,
                None => return self.reject(from, "proposal with an invalid QC"),
            }
        };
        block.justify = Some(justify.clone());
        if let Some(tc) = &p.tc {
            if !me && !self.cfg.domain.verify_tc(tc, &self.cfg.genesis_hash, self.crypto.as_ref()) {
                return self.reject(from, "proposal with an invalid TC");
            }
            self.process_tc(tc, from);
        }
        self.process_qc(&justify, from);
        if block.view < self.view {
            // Late: the votes for it arrived first (they travel on other connections), so this
            // validator already holds its QC and moved on. A certified block is still needed, as
            // the parent the next leader extends and for the commit its QC may complete.
            if let Some(qc) = self.verified_qcs.get(&(block.view, hash, justify.view)).cloned() {
                if !self.blocks.contains_key(&hash) && block.height > self.committed.height {
                    self.blocks.insert(hash, Arc::new(block));
                    self.process_qc(&qc, from);
                }
            }
            return;
        }
        if block.view != self.view {
            return; // claims a view not reached
        }
        let parent = self.blocks.get(&parent_hash).cloned();
        let Some(parent) = parent.filter(|_| expected.is_some() || self.expected_leader(block.view, &parent_hash).is_some()) else {
            p.block = Some(block);
            self.pending.insert(from, p);
            return self.ask_sync(from, &parent_hash);
        };
        if expected.is_none() {
            // The parent's chain arrived since the first check.
            return self.on_proposal_hashed(from, Proposal { block: Some(block), tc: p.tc, signature: p.signature }, Some((head, hash)));
        }
        if parent.height.checked_add(1) != Some(block.height) || block.timestamp_ms <= parent.timestamp_ms {
            return self.reject(from, "block height or time does not follow its parent");
        }
        if !me && (block.timestamp_ms > self.now.saturating_add(self.cfg.skew_ms) || block.timestamp_ms.saturating_add(3 * self.cfg.skew_ms) < self.now) {
            return self.reject(from, "block time too far from this validator's clock");
        }
        if block.operations.len() > self.cfg.max_block_operations || block.encoded_len() > self.cfg.max_block_bytes + 4096 {
            return self.reject(from, "block too large");
        }
        if !me {
            if let Err(why) = self.operations_acceptable(&block, &parent_hash).and_then(|()| self.evidence_acceptable(&block)) {
                return self.reject(from, why);
            }
            for ev in &block.evidence {
                if self.evidence.seen_in_block(ev) {
                    self.out.push(Output::Evidence(ev.clone()));
                }
            }
        }
        // The banks whose operations it carries had their turn (the inclusion deadline of each
        // bank's backlog restarts: see Mempool::oldest_waiting).
        self.mempool.note_included(&block.operations, self.now);
        let tc_info = p.tc.as_ref().map(|tc| (tc.view, tc.high_qc.as_ref().map(|q| q.view).unwrap_or(0)));
        self.headers.get_mut().insert(hash, head);
        let block = Arc::new(block);
        self.blocks.insert(hash, block.clone());
        match self.proposals.entry((block.view, from)) {
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert((hash, p.signature.clone(), None));
            }
            std::collections::btree_map::Entry::Occupied(mut e) => {
                let (first, _, second) = e.get_mut();
                if *first != hash && second.is_none() {
                    *second = Some(hash);
                }
            }
        }
        if self.ended.is_some() {
            return; // its justify ended the epoch: the block is abandoned
        }
        let Some(state) = self.safety.vote(block.view, justify.view, tc_info) else { return };
        self.out.push(Output::PersistBlock(block.clone()));
        self.out.push(Output::Persist(state));
        self.last_voted_block = Some(hash);
        let vote = Vote {
            epoch: self.cfg.domain.epoch,
            view: block.view,
            block_hash: hash.to_vec(),
            justify_view: justify.view,
            signer: self.cfg.me as u32,
            signature: self.crypto.sign(&self.cfg.domain.vote_bytes(block.view, &hash, justify.view)),
            proposal_signature: p.signature,
        };
        // To every validator: each forms the QC itself, so all learn of a commit at once.
        self.out.push(Output::Broadcast(msg(Kind::Vote(vote.clone()))));
        self.on_vote(self.cfg.me, vote);
    }

    fn operations_acceptable(&self, block: &Block, parent: &Hash) -> Result<(), &'static str> {
        // A replay of a committed operation is named apart: it is what a Byzantine leader tries
        // after honest banks restart (the threat model).
        if block.operations.iter().filter_map(op_id).any(|id| self.recent.contains(&id)) {
            return Err("block repeats an operation committed before");
        }
        let ancestors = self.in_flight(parent);
        let mut seen = HashSet::new();
        // Signatures still to check, each distinct (bank, batch root, signature) once.
        let mut unchecked: HashSet<(usize, Vec<u8>, &[u8])> = HashSet::new();
        let fine = block.operations.iter().all(|op| {
            let Some(id) = op_id(op) else { return false };
            if !seen.insert(id) || ancestors.contains(&id) {
                return false;
            }
            if self.mempool.holds(op) && op.submitted_ms.saturating_add(self.cfg.operation_ttl_ms) >= block.timestamp_ms {
                return true;
            }
            if !self.operation_well_formed(op, block.timestamp_ms) || validity::check_operation(op, &self.cfg.limits).is_err() {
                return false;
            }
            unchecked.insert((id.0 as usize, self.cfg.domain.operation_bytes(op), op.bank_signature.as_slice()));
            true
        });
        if fine && unchecked.iter().all(|(bank, msg, sig)| self.crypto.verify_operation(*bank, msg, sig)) {
            Ok(())
        } else {
            Err("block carries invalid or repeated operations")
        }
    }

    fn on_vote(&mut self, from: usize, v: Vote) {
        if v.signer as usize != from || v.epoch != self.cfg.domain.epoch {
            return self.reject(from, "vote signer or epoch mismatch");
        }
        let Some(hash) = hash32(&v.block_hash) else { return self.reject(from, "vote with a bad hash") };
        if v.justify_view >= v.view {
            return self.reject(from, "vote with a bad justify view");
        }
        // Kept unchecked until a quorum is in (below): only a signature of the one valid length.
        if v.signature.len() != self.crypto.signature_len() {
            return self.reject(from, "vote with a malformed signature");
        }
        if v.view.saturating_add(1) < self.view {
            return; // late
        }
        if v.view > self.view.saturating_add(VIEWS_AHEAD) {
            return self.reject(from, "vote too far ahead");
        }
        if from != self.cfg.me && !v.proposal_signature.is_empty() && !self.voted.contains(&(v.view, from)) {
            self.look_for_double_proposal(from, &v, &hash);
        }
        // Signatures are checked optimistically: once a quorum is in, their aggregate is checked
        // with one pairing instead of each vote with its own; only when the aggregate fails are
        // the votes checked one by one and the bad ones dropped.
        let key = (v.view, hash, v.justify_view);
        if self.verified_qcs.contains_key(&key) {
            return; // certified already (by our votes, or by a QC a proposal carried)
        }
        let quorum = self.cfg.domain.quorum();
        if self.votes.get(&key).is_some_and(|e| e.len() >= quorum || e.contains_key(&from)) {
            return; // the QC is formed (or this validator already voted)
        }
        if !self.voted.insert((v.view, from)) {
            // A vote for another block in the same view: only a Byzantine validator does that.
            self.look_for_double_vote(from, &v, &hash);
            return self.reject(from, "second vote in one view");
        }
        let entry = self.votes.entry(key).or_default();
        entry.insert(from, (v.signature, from == self.cfg.me));
        if entry.len() < quorum {
            return;
        }
        let msg = self.cfg.domain.vote_bytes(v.view, &hash, v.justify_view);
        let signers: Vec<usize> = entry.keys().copied().collect();
        let sigs: Vec<&[u8]> = entry.values().map(|(s, _)| s.as_slice()).collect();
        let aggregate = self.crypto.aggregate_verified(&signers, &msg, &sigs);
        let Some(aggregate_signature) = aggregate else {
            let bad: Vec<usize> = entry
                .iter()
                .filter(|(signer, (sig, checked))| !*checked && !self.crypto.verify(**signer, &msg, sig))
                .map(|(signer, _)| *signer)
                .collect();
            for (_, checked) in entry.values_mut() {
                *checked = true;
            }
            for signer in bad {
                entry.remove(&signer);
                self.out.push(Output::Rejected { from: signer, reason: "vote with a bad signature" });
            }
            return;
        };
        let qc = QuorumCert {
            epoch: self.cfg.domain.epoch,
            view: v.view,
            block_hash: hash.to_vec(),
            justify_view: v.justify_view,
            signers: self.cfg.domain.bitmap(signers),
            aggregate_signature,
        };
        self.process_qc(&qc, from);
    }

    // ---- catching up ----------------------------------------------------------------------

    /// A peer that has not answered within two view timeouts is passed over: a full answer
    /// (hundreds of blocks, each certificate checked) can take longer than one, and asking
    /// another peer then only doubles the work.
    fn sync_in_flight(&self) -> bool {
        self.sync_waiting.is_some_and(|(_, at)| self.now < at.saturating_add(2 * self.cfg.base_timeout_ms))
    }

    fn ask_sync(&mut self, to: usize, want: &Hash) {
        if to == self.cfg.me {
            return;
        }
        if self.sync_in_flight() {
            return;
        }
        self.sync_waiting = Some((to, self.now));
        self.send_sync_request(to, Some(*want));
    }

    /// Asks `to` for the committed blocks above this validator's tip and, with `want`, the
    /// chain ending at that block; remembers the request so that the answer is read.
    fn send_sync_request(&mut self, to: usize, want: Option<Hash>) {
        let asks = &mut self.sync_asks[to];
        if asks.len() >= SYNC_ASKS_PER_PEER {
            asks.pop_front();
        }
        asks.push_back(want);
        let req = SyncRequest { committed_height: self.committed.height, want_block: want.map_or(Vec::new(), |h| h.to_vec()) };
        self.out.push(Output::Send { to, msg: msg(Kind::SyncRequest(req)) });
    }

    fn on_sync_request(&mut self, from: usize, r: SyncRequest, log: &dyn CommittedLog) {
        if r.committed_height < self.cfg.root_height {
            return self.answer_previous_epoch(from, r.committed_height, log);
        }
        let (committed, mut bytes) = sync::committed_answer(
            r.committed_height.saturating_add(1),
            self.committed.height,
            self.cfg.max_sync_blocks,
            self.cfg.max_sync_bytes,
            |h| log.read(h),
        );
        let mut uncommitted = Vec::new();
        if let Some(mut cur) = hash32(&r.want_block) {
            while let Some(b) = self.blocks.get(&cur) {
                if b.height <= self.committed.height || bytes + b.encoded_len() > self.cfg.max_sync_bytes {
                    break;
                }
                bytes += b.encoded_len();
                uncommitted.push((**b).clone());
                match hash32(&b.parent_hash) {
                    Some(p) => cur = p,
                    None => break,
                }
                if uncommitted.len() >= self.cfg.max_sync_blocks {
                    break;
                }
            }
            uncommitted.reverse();
        }
        // Nothing to send: no answer. Answering anyway lets a bank that keeps hearing of a
        // block nobody it asks has (a fork's, under the broken-rule self-test) ask again at
        // message speed; silence makes it wait a view timeout.
        if committed.is_empty() && uncommitted.is_empty() {
            return;
        }
        self.out.push(Output::Send { to: from, msg: msg(Kind::SyncResponse(SyncResponse { committed, uncommitted })) });
    }

    /// A validator still in the epoch before, up to `height`: the committed blocks up to this
    /// epoch's root (the previous epoch's boundary) and, when the root's ledger entry carries no
    /// commit proof, the abandoned blocks above it that carry one (`Output::EpochEnded`). It
    /// checks them as any sync answer, with its own epoch's keys, and commits up to the
    /// boundary only (its epoch rule stops it there). Nothing of this epoch is sent: the asker
    /// could not check it.
    fn answer_previous_epoch(&mut self, from: usize, height: u64, log: &dyn CommittedLog) {
        let root = self.cfg.root_height;
        let (mut committed, _) =
            sync::committed_answer(height.saturating_add(1), root, self.cfg.max_sync_blocks, self.cfg.max_sync_bytes, |h| log.read(h));
        let reached = committed.last().and_then(|cb| cb.block.as_ref()).map_or(height, |b| b.height);
        let rest = root - reached;
        if reached < root && rest as usize + self.boundary_proof.len() <= self.cfg.max_sync_blocks.saturating_sub(committed.len()) {
            // The end of the previous epoch, up to the root, lacks a commit proof on the root.
            let tail: Option<Vec<CommittedBlock>> = (reached + 1..=root).map(|h| log.read(h)).collect();
            let Some(tail) = tail else { return };
            committed.extend(tail);
            committed.extend(self.boundary_proof.iter().cloned());
            if committed.last().is_some_and(|cb| cb.commit_qc.is_none()) {
                return;
            }
        }
        if !committed.is_empty() {
            self.out.push(Output::Send { to: from, msg: msg(Kind::SyncResponse(SyncResponse { committed, uncommitted: Vec::new() })) });
        }
    }

    fn on_sync_response(&mut self, from: usize, r: SyncResponse) {
        // Every block of an answer costs a QC check and may be kept: read only answers to a
        // request, no longer than a request allows (`committed_answer`, `on_sync_request`).
        let limit = self.cfg.max_sync_blocks;
        if r.committed.len() > limit || r.uncommitted.len() > limit {
            return self.reject(from, "sync answer too long");
        }
        // Uncommitted blocks end at the block asked for; an answer without them may answer any
        // request (a peer that lacks the block sends only committed ones), a plain one first.
        let asks = &mut self.sync_asks[from];
        let matched = match r.uncommitted.last().map(block_hash) {
            Some(top) => asks.iter().position(|want| *want == Some(top)),
            None => asks.iter().position(Option::is_none).or((!asks.is_empty()).then_some(0)),
        };
        let Some(i) = matched else { return self.reject(from, "sync answer to no request") };
        asks.remove(i);
        let before = self.committed.height;
        self.apply_sync_response(from, r);
        if self.committed.height > before {
            // There was something to catch up on; there may be more.
            self.probe_interval_ms = 0;
            self.next_probe_ms = self.now;
        }
    }

    fn apply_sync_response(&mut self, from: usize, r: SyncResponse) {
        // Committed blocks: a hash chain from our tip to a block with a valid commit proof.
        let mut run: Vec<Block> = Vec::new();
        let mut expect_parent = self.committed.hash;
        let mut expect_height = self.committed.height.saturating_add(1);
        let mut progressed = false;
        for cb in r.committed {
            let Some(mut b) = cb.block else { return self.reject(from, "sync block missing") };
            if b.height < expect_height && run.is_empty() {
                continue; // we already have it
            }
            if b.height != expect_height || b.parent_hash != expect_parent {
                return self.reject(from, "sync blocks do not chain");
            }
            // The hash chain does not cover who signed a justify QC: check each one, so that
            // this validator's ledger holds only certificates an auditor can verify.
            match b.justify.as_ref().map(|j| self.checked_qc(j)) {
                Some(Some(j)) if j.block_hash == b.parent_hash => b.justify = Some(j),
                _ => return self.reject(from, "sync block with an invalid QC"),
            }
            expect_parent = block_hash(&b);
            let Some(next) = expect_height.checked_add(1) else { return self.reject(from, "sync block height out of range") };
            expect_height = next;
            run.push(b);
            if let (Some(qc), Some(mut child)) = (cb.commit_qc, cb.commit_child) {
                let last = run.last().unwrap().clone();
                let shape = child.parent_hash == expect_parent.to_vec()
                    && last.view.checked_add(1) == Some(child.view)
                    && qc.block_hash == block_hash(&child).to_vec()
                    && child.justify.as_ref().is_some_and(|j| j.view == last.view && j.block_hash == expect_parent.to_vec());
                // The child's justify becomes this validator's high QC (and, after a restart,
                // the QC it proposes on): it must verify too.
                let checked = shape
                    .then(|| self.checked_qc(&qc).zip(child.justify.as_ref().and_then(|j| self.checked_qc(j))))
                    .flatten();
                let Some((qc, child_justify)) = checked else {
                    return self.reject(from, "sync commit proof invalid");
                };
                child.justify = Some(child_justify);
                for b in run.drain(..) {
                    self.blocks.insert(block_hash(&b), Arc::new(b));
                }
                self.commit(&Arc::new(last), &qc, &child, from);
                progressed = true;
                if self.ended.is_some() {
                    return; // the rest is the next epoch's
                }
                if let Some(j) = child.justify.clone() {
                    if j.view > self.high_qc.view {
                        self.high_qc = j;
                    }
                }
                if qc.view > self.high_qc.view {
                    self.high_qc = qc.clone();
                }
                // A higher QC always moves the view on.
                let next = self.high_qc.view.saturating_add(1);
                self.enter_view(next, false);
            }
        }
        // Uncommitted blocks: one chain (ending at the block asked for, `on_sync_response`),
        // each block one above its parent and carrying a valid QC for it. Those whose parent
        // this validator lacks (below its tip, or the answer began too low) are passed over;
        // a fork's below the tip is kept until the next commit prunes it (a proposal may
        // extend it, and without it the asking would go on).
        let mut previous: Option<Hash> = None;
        for mut b in r.uncommitted {
            let hash = block_hash(&b);
            if previous.is_some_and(|p| b.parent_hash != p) {
                return self.reject(from, "sync blocks do not chain");
            }
            previous = Some(hash);
            let Some(parent_hash) = hash32(&b.parent_hash) else { return self.reject(from, "sync block with a bad parent hash") };
            let Some(parent) = self.blocks.get(&parent_hash) else { continue };
            if b.epoch != self.cfg.domain.epoch || parent.height.checked_add(1) != Some(b.height) {
                return self.reject(from, "sync block does not follow its parent");
            }
            let parent_view = parent.view;
            let Some(j) = &b.justify else { return self.reject(from, "sync block without QC") };
            if j.block_hash != b.parent_hash || j.view != parent_view || b.view <= j.view {
                return self.reject(from, "sync block with an invalid QC");
            }
            let Some(j) = self.checked_qc(j) else { return self.reject(from, "sync block with an invalid QC") };
            b.justify = Some(j.clone());
            self.blocks.insert(hash, Arc::new(b));
            self.process_qc(&j, from);
            progressed = true;
        }
        // An answer that brought nothing counts as none: the next request waits out the view
        // timeout as for a silent peer, rather than going out again at once (to the same peer,
        // for the same kept proposal, answered the same way, over and over). One that brought
        // something, from any peer, ends the wait: the request still out asked from a lower
        // height, and its answer, when it comes, brings blocks already here (a probe's answer
        // and a request's overlap so during a catch-up; waiting for it stalled each for two
        // view timeouts).
        if progressed {
            self.sync_waiting = None;
        }
        if self.probe_waiting.is_some_and(|(peer, _)| peer == from) {
            self.probe_waiting = None;
        }
        for (from, p) in std::mem::take(&mut self.pending) {
            self.on_proposal(from, p);
        }
    }

    // ---- read index ([`read_index`]) --------------------------------------------------------

    /// This validator's answer: the highest block carrying operations that it knows to be
    /// certified (on the chain its high QC certifies, or committed), and that QC's block.
    /// Empty blocks do not count: nothing guarantees they ever commit everywhere, and a read
    /// waiting for one could wait for good.
    fn read_answer(&self) -> (u64, Option<(Hash, &Block)>) {
        let top = hash32(&self.high_qc.block_hash).unwrap_or_default();
        let Some(top_block) = self.blocks.get(&top) else { return (self.committed_operations, None) };
        let mut cur = top;
        let mut lowest_seen = top_block.height.saturating_add(1);
        let height = loop {
            match self.blocks.get(&cur) {
                Some(b) if b.height <= self.committed.height => break self.committed_operations,
                Some(b) if !b.operations.is_empty() => break b.height,
                Some(b) => match hash32(&b.parent_hash) {
                    Some(p) => {
                        lowest_seen = b.height;
                        cur = p;
                    }
                    None => break top_block.height,
                },
                // A gap: claim the highest block not seen rather than risk under-reporting. Not
                // more: the empty blocks above it are seen, and a claim of one at the idle top of
                // the chain would keep the reader waiting for a commit nobody proposes.
                None => break lowest_seen.saturating_sub(1).max(self.committed_operations),
            }
        };
        (height, Some((top, top_block)))
    }

    /// The header of `block`, whose hash is `hash`; computed once per block.
    fn header_of(&self, hash: &Hash, block: &Block) -> Block {
        self.headers.borrow_mut().entry(*hash).or_insert_with(|| header(block)).clone()
    }

    fn on_read_index(&mut self) {
        if self.read.in_flight {
            self.read.again = true;
        } else {
            self.start_read_round();
        }
    }

    fn start_read_round(&mut self) {
        let own = self.read_answer().0;
        let round = self.read.start(self.now, own);
        self.out.push(Output::ReadRoundStarted(round));
        if self.cfg.domain.quorum() <= 1 || self.cfg.broken_read_index {
            return self.finish_read_round(own);
        }
        self.out.push(Output::Broadcast(msg(Kind::ReadIndexRequest(ReadIndexRequest { round }))));
    }

    fn finish_read_round(&mut self, height: u64) {
        self.read.in_flight = false;
        self.read.replies.clear();
        self.out.push(Output::ReadIndex { round: self.read.round, height });
        if self.read.again {
            self.start_read_round();
        }
    }

    fn on_read_index_request(&mut self, from: usize, r: ReadIndexRequest) {
        let (height, block) = self.read_answer();
        let Some((hash, block)) = block else { return };
        let header = self.header_of(&hash, block);
        let reply = ReadIndexReply {
            round: r.round,
            height,
            high_qc: Some(self.high_qc.clone()),
            header: Some(header),
            committed_height: self.committed.height,
        };
        self.out.push(Output::Send { to: from, msg: msg(Kind::ReadIndexReply(reply)) });
    }

    fn on_read_index_reply(&mut self, from: usize, r: ReadIndexReply) {
        if !self.read.in_flight || r.round != self.read.round {
            return; // an earlier round's, answered or abandoned
        }
        self.read.replies.insert(from, r);
        self.try_finish_read_round();
    }

    /// With a quorum of answers, the highest one that checks out is the read index.
    fn try_finish_read_round(&mut self) {
        loop {
            if self.read.replies.len() + 1 < self.cfg.domain.quorum() {
                return;
            }
            let own = self.read.own;
            let best = self.read.by_height().into_iter().find(|(_, h)| *h > own);
            let Some((from, height)) = best else { return self.finish_read_round(own) };
            if self.read_reply_valid(&self.read.replies[&from]) {
                // A quorum certified blocks this validator has not committed: it missed votes
                // or a commit (no block announces one), so fetch them from that validator now
                // rather than at the next sync probe.
                if height > self.committed.height {
                    let ahead = self.read.replies.iter().max_by_key(|(_, r)| r.committed_height);
                    let to = ahead.filter(|(_, r)| r.committed_height > self.committed.height).map_or(from, |(p, _)| *p);
                    let want = self.read.replies[&from].header.as_ref().map(block_hash).unwrap_or_default();
                    self.ask_sync(to, &want);
                }
                return self.finish_read_round(height);
            }
            self.read.replies.remove(&from);
            self.reject(from, "read index reply not backed by its QC");
        }
    }

    fn read_reply_valid(&self, r: &ReadIndexReply) -> bool {
        let (Some(qc), Some(h)) = (&r.high_qc, &r.header) else { return false };
        h.operations.is_empty()
            && r.height <= h.height
            && qc.block_hash == block_hash(h).to_vec()
            && (self.known_qc(qc) || self.cfg.domain.verify_qc(qc, &self.cfg.genesis_hash, self.crypto.as_ref()))
    }
}
