//! Deterministic simulation of HotStuff-2 validators: virtual time, a seeded network that delays,
//! drops, reorders and partitions messages before a global stabilisation time (GST), crashes and
//! restarts (from the persisted safety state, blocks and TC and the ledger, like a real restart; half of them
//! strike in the middle of a step, keeping a prefix of its outputs and none of its ledger
//! appends), and Twins:
//! up to f validators run as two instances with the same keys, which is how equivocating leaders
//! and double votes arise. A bank may also be down for good, or Byzantine against the leader
//! choice ([`Misbehaviour`]). The same seed always replays the same run.
//!
//! The checker: no two honest instances commit different blocks at the same height, no honest
//! instance reports a safety violation, every operation submitted to an honest instance
//! that was not crashed afterwards commits everywhere (after GST), every read index covers every
//! block with operations any honest instance had committed when the read began, and reads
//! begun after GST get their index.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use bftcd_proto::bftcd::{operation, peer_message::Kind, CommittedBlock, Operation, OperationId, PeerMessage};
use bftcd_proto::etcdserverpb::PutRequest;
use bftcd_proto::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::block::block_hash;
use crate::consensus::certs::sim::{KeyedSimCrypto, SimCrypto};
use crate::consensus::{CommittedLog, Config, Core, Domain, EpochRule, Input, Output, SafetyRules, SafetyState};

/// A Byzantine bank's play against the leader choice; otherwise it runs honest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Never proposes (it still votes and times out).
    Withhold,
    /// Withholds every other proposal, to win its place back in between.
    Alternate,
    /// Alternates, and sends each vote to one validator only: a QC then forms at that one alone
    /// while the others time out, which is how it could get an honest leader blamed.
    AlternateSplitVotes,
}

#[derive(Debug, Clone, Default)]
pub struct Scenario {
    pub seed: u64,
    pub n: usize,
    /// Validators (ids 0..twins) that run as two instances; at most f for a safe setting.
    pub twins: usize,
    pub gst_ms: u64,
    pub end_ms: u64,
    /// Before GST: probability a message is lost, and the largest delay.
    pub drop_rate: f64,
    pub max_delay_ms: u64,
    /// After GST, delays are 1..=this.
    pub stable_delay_ms: u64,
    /// Random two-way partitions before GST; messages across one are held until it ends.
    pub partitions: bool,
    /// Crash-restarts of honest instances before GST.
    pub crashes: usize,
    /// Client operations, spread over [0, gst + 2 s], or over [0, load_ms] if that is later.
    pub operations: usize,
    pub load_ms: u64,
    /// Every instance uses the deliberately broken voting rule.
    pub broken_voting_rule: bool,
    /// A partition held for the whole time before GST instead of random ones: side per
    /// instance (0, 1, or 2 = hears both sides). Twins tests choose these deliberately.
    pub fixed_partition: Option<Vec<u8>>,
    /// Linearizable reads at random honest instances, spread over [0, end - 10 s].
    pub reads: usize,
    /// Every instance answers reads from its own state alone (the checker must notice).
    pub broken_read_index: bool,
    /// Validators down from this time (ms) to the end: (validator, from). Honest, but not
    /// expected to commit anything; with twins and `byzantine`, at most f faults.
    pub down: Vec<(usize, u64)>,
    /// A Byzantine validator (not a twin) and what it does.
    pub byzantine: Option<(usize, Misbehaviour)>,
    /// Every instance uses plain round-robin leaders (the baseline).
    pub round_robin_leaders: bool,
    /// A validator-set change committed during the run (no twins with it).
    pub reconfig: Option<Reconfig>,
}

/// Reconfiguration: an operation, submitted at `at_ms`, enacts the set of epoch 2 when the
/// block carrying it commits ([`RECONFIG_KEY`]); epoch 1 ends at that block.
#[derive(Debug, Clone, Default)]
pub struct Reconfig {
    /// Validators of epoch 2 (0..next_n): more than `n` adds validators, fewer removes the
    /// last ones.
    pub next_n: usize,
    /// A validator whose (voting) key is replaced in epoch 2.
    pub rotate: Option<usize>,
    pub at_ms: u64,
    /// Every instance takes its epoch-1 pipeline (highest QC and blocks above the boundary)
    /// into epoch 2 and accepts epoch-1 QCs there (the checker must notice).
    pub broken_carry_old_qc: bool,
}

/// The key of the operation that enacts the reconfiguration.
pub const RECONFIG_KEY: &[u8] = b"__reconfig";
/// Its nonce (its submitting bank is a validator staying in the set).
const RECONFIG_NONCE: u64 = u64::MAX / 2;

impl Scenario {
    /// A random scenario from a seed (n and faults chosen by the seed too).
    pub fn random(seed: u64, n: usize) -> Scenario {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let f = (n - 1) / 3;
        let twins = if rng.gen_bool(0.5) { rng.gen_range(0..=f) } else { 0 };
        let crashes = if twins == 0 { rng.gen_range(0..=2) } else { 0 };
        Scenario {
            seed,
            n,
            twins,
            gst_ms: rng.gen_range(1_000..6_000),
            end_ms: 0,
            drop_rate: rng.gen_range(0.0..0.3),
            max_delay_ms: rng.gen_range(5..1_500),
            stable_delay_ms: 40,
            partitions: rng.gen_bool(0.5),
            crashes,
            operations: rng.gen_range(1..40),
            load_ms: 0,
            broken_voting_rule: false,
            fixed_partition: None,
            // From the seed alone, so adding reads left the other draws (and old seeds) as they were.
            reads: (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 59) as usize,
            broken_read_index: false,
            down: Vec::new(),
            byzantine: None,
            round_robin_leaders: false,
            reconfig: None,
        }
        .with_faults(seed)
        .with_end()
    }

    /// Without twins: sometimes a Byzantine bank playing the leader choice, or a bank going down
    /// for good before GST (one fault; from their own generator, so the other draws stay).
    fn with_faults(mut self, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xfa17);
        if self.twins > 0 || self.n < 4 {
            return self;
        }
        let who = rng.gen_range(0..self.n);
        match rng.gen_range(0..8) {
            0 => self.byzantine = Some((who, Misbehaviour::Withhold)),
            1 => self.byzantine = Some((who, Misbehaviour::Alternate)),
            2 => self.byzantine = Some((who, Misbehaviour::AlternateSplitVotes)),
            3 | 4 => self.down = vec![(who, rng.gen_range(0..self.gst_ms))],
            _ => {}
        }
        self
    }

    fn with_end(mut self) -> Self {
        self.end_ms = self.gst_ms + 40_000;
        self
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<String>,
    /// Committed height of each honest instance at the end.
    pub heights: Vec<u64>,
    pub operations_checked: usize,
    /// Messages and bytes sent after GST, and blocks committed (by instance 0's view) after GST.
    pub messages_after_gst: u64,
    pub bytes_after_gst: u64,
    pub blocks_after_gst: u64,
    pub events: u64,
    /// Read indexes checked (completed reads).
    pub reads_checked: usize,
    /// Crashes that struck in the middle of a step.
    pub crashes_in_step: usize,
    /// Views in which some honest instance gave up (sent a timeout) after GST.
    pub views_timed_out_after_gst: u64,
    /// Blocks after GST on the longest honest ledger: by proposer, and the views skipped.
    pub led_after_gst: Vec<u64>,
    pub skipped_views_after_gst: u64,
    /// How often each validator is recorded as a failed leader after GST.
    pub failed_after_gst: Vec<u64>,
    /// Evidence of equivocation that honest instances reported, by offender (each instance
    /// reports each equivocation once), and the evidence in honest instances' ledgers.
    pub evidence_reported: Vec<u64>,
    pub evidence_committed: u64,
    /// Reconfiguration: instances that left epoch 1, those of them that did so on a sync answer
    /// (caught up across the boundary), and boundaries committed without a proof of their own
    /// (proven by the abandoned blocks above them).
    pub epoch_switches: u64,
    pub switches_on_sync: u64,
    pub boundaries_proven_above: u64,
}

struct Instance {
    validator: usize,
    /// In the current validator set: a validator added by a reconfiguration is not before
    /// the boundary, a removed one not after it.
    member: bool,
    epoch: u64,
    /// The epoch's root (height, hash, block time) when past the genesis, and the proof of
    /// that boundary handed over by the epoch before (`Output::EpochEnded`).
    root: Option<(u64, [u8; 32], u64)>,
    boundary_proof: Vec<CommittedBlock>,
    core: Core,
    ledger: Vec<CommittedBlock>,
    persisted: SafetyState,
    stored_blocks: Vec<bftcd_proto::bftcd::Block>,
    stored_tc: Option<bftcd_proto::bftcd::TimeoutCert>,
    up: bool,
    clock_offset: u64,
    wake: Option<u64>,
}

struct Ledger<'a>(&'a [CommittedBlock]);

impl CommittedLog for Ledger<'_> {
    fn read(&self, height: u64) -> Option<CommittedBlock> {
        self.0.get((height as usize).checked_sub(1)?).cloned()
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Deliver { to: usize, from: usize, msg: Vec<u8> },
    Wake { to: usize },
    Submit { to: usize, nonce: u64 },
    Read { to: usize },
    Crash { to: usize },
    Restart { to: usize },
    /// Down for good (no step is cut short: what it did is done).
    Down { to: usize },
}

const GENESIS_MS: u64 = 1_000_000;
/// An instance in this partition hears both sides.
const BRIDGE: u8 = 2;
const GENESIS_HASH: [u8; 32] = [7u8; 32];
/// After GST, how long a read may wait between getting its index and its instance committing
/// that far (a few message delays and one view, not a sync probe interval).
const READ_SERVE_MS: u64 = 3_000;

fn config(n: usize, me: usize, broken_read_index: bool, round_robin: bool) -> Config {
    let domain = Domain { chain_id: "sim".into(), epoch: 1, n };
    let mut cfg = Config::new(me, domain, GENESIS_HASH);
    cfg.base_timeout_ms = 500;
    cfg.max_timeout_ms = 4_000;
    cfg.inclusion_deadline_ms = 3_000;
    cfg.sync_probe_max_ms = 8_000;
    cfg.broken_read_index = broken_read_index;
    cfg.round_robin_leaders = round_robin;
    cfg
}

/// Does a committed block enact the reconfiguration (carry its operation)?
fn enacts(b: &bftcd_proto::bftcd::Block) -> bool {
    b.operations.iter().any(|op| match &op.request {
        Some(operation::Request::Put(p)) => p.key == RECONFIG_KEY,
        _ => false,
    })
}

/// Epoch 2's domain and the keys of its validators.
fn epoch2(r: &Reconfig) -> (Domain, Vec<usize>) {
    let keys = (0..r.next_n).map(|v| if r.rotate == Some(v) { v + 1_000 } else { v }).collect();
    (Domain { chain_id: "sim".into(), epoch: 2, n: r.next_n }, keys)
}

#[allow(clippy::too_many_arguments)]
fn new_core(
    s: &Scenario,
    validator: usize,
    epoch: u64,
    root: Option<(u64, [u8; 32], u64)>,
    persisted: SafetyState,
    ledger: &[CommittedBlock],
    stored: &[bftcd_proto::bftcd::Block],
    tc: Option<&bftcd_proto::bftcd::TimeoutCert>,
) -> Core {
    if epoch > 1 {
        return new_core_epoch2(s, validator, root.unwrap_or((0, GENESIS_HASH, GENESIS_MS)), persisted, ledger, stored, tc);
    }
    let safety = if s.broken_voting_rule { SafetyRules::broken_for_tests(persisted) } else { SafetyRules::new(persisted) };
    let tip = ledger.last().and_then(|cb| {
        let qc = cb.commit_child.as_ref()?.justify.clone()?;
        Some((cb.block.clone()?, qc))
    });
    let n = s.n;
    let mut cfg = config(n, validator, s.broken_read_index, s.round_robin_leaders);
    if let Some(r) = &s.reconfig {
        cfg.epoch_end = Some(EpochRule(std::sync::Arc::new(enacts)));
        cfg.broken_epoch_carry = r.broken_carry_old_qc;
    }
    // As the runtime does (`HotStuff::start`): the whole deduplication window, by block time.
    let recent = crate::consensus::committed_in_window(&cfg, ledger.len() as u64, |h| {
        ledger.get(h as usize - 1).and_then(|cb| cb.block.clone()).ok_or(())
    })
    .unwrap_or_default();
    let mut core = Core::new(cfg, Box::new(SimCrypto { me: validator, n }), safety, GENESIS_MS, tip, stored.to_vec(), recent);
    let last_operations = ledger.iter().rev().filter_map(|cb| cb.block.as_ref()).find(|b| !b.operations.is_empty()).map_or(0, |b| b.height);
    core.set_last_committed_operations(last_operations);
    core.set_committed_history(ledger.iter().filter_map(|cb| cb.block.as_ref()));
    if let Some(tc) = tc {
        core.set_high_tc(tc.clone());
    }
    core
}

/// A core of epoch 2, rooted at the block epoch 1 ended at (`root`: height, hash, time).
fn new_core_epoch2(
    s: &Scenario,
    validator: usize,
    root: (u64, [u8; 32], u64),
    persisted: SafetyState,
    ledger: &[CommittedBlock],
    stored: &[bftcd_proto::bftcd::Block],
    tc: Option<&bftcd_proto::bftcd::TimeoutCert>,
) -> Core {
    let r = s.reconfig.as_ref().expect("epoch 2 without a reconfiguration");
    let (domain, keys) = epoch2(r);
    let mut cfg = config(r.next_n, validator, s.broken_read_index, s.round_robin_leaders);
    cfg.domain = domain;
    cfg.genesis_hash = root.1;
    cfg.root_height = root.0;
    cfg.broken_epoch_carry = r.broken_carry_old_qc;
    let safety = if s.broken_voting_rule { SafetyRules::broken_for_tests(persisted) } else { SafetyRules::new(persisted) };
    // Past the root, the ledger's tip and the QC certifying it (from this epoch).
    let tip = ledger.last().filter(|cb| cb.block.as_ref().is_some_and(|b| b.height > root.0)).and_then(|cb| {
        let qc = cb.commit_child.as_ref()?.justify.clone()?;
        Some((cb.block.clone()?, qc))
    });
    let recent = crate::consensus::committed_in_window(&cfg, ledger.len() as u64, |h| {
        ledger.get(h as usize - 1).and_then(|cb| cb.block.clone()).ok_or(())
    })
    .unwrap_or_default();
    let crypto = KeyedSimCrypto { me: validator, keys };
    let mut core = Core::new(cfg, Box::new(crypto), safety, root.2, tip, stored.to_vec(), recent);
    let last_operations = ledger.iter().rev().filter_map(|cb| cb.block.as_ref()).find(|b| !b.operations.is_empty()).map_or(0, |b| b.height);
    core.set_last_committed_operations(last_operations);
    core.set_committed_history(ledger.iter().filter_map(|cb| cb.block.as_ref()));
    if let Some(tc) = tc {
        core.set_high_tc(tc.clone());
    }
    core
}

/// Instance `to` committed the block that ended epoch 1 (`height`, `hash`): as the runtime
/// would, it starts its epoch-2 core rooted there with a fresh safety state (views begin again;
/// every signature names epoch 2), handing over the operations still waiting (those of the
/// abandoned blocks above the boundary among them) and the boundary's proof. The epoch goes with
/// the ledger: a crash keeps both. A removed validator stops. The first instance to get there
/// also starts the added validators, with a copy of its ledger (the state transfer a joining
/// bank needs, not modelled further).
fn enter_epoch2(s: &Scenario, nodes: &mut [Instance], to: usize, now: u64, height: u64, hash: [u8; 32], proof: Vec<CommittedBlock>) {
    let r = s.reconfig.as_ref().expect("an epoch ended without a reconfiguration");
    let time = nodes[to].ledger.last().and_then(|cb| cb.block.as_ref()).map_or(GENESIS_MS, |b| b.timestamp_ms);
    let root = Some((height, hash, time));
    let node = &mut nodes[to];
    let ops = node.core.take_operations();
    let carried = r.broken_carry_old_qc.then(|| node.core.pipeline_for_tests());
    node.epoch = 2;
    if node.validator >= r.next_n {
        node.member = false;
        return;
    }
    node.root = root;
    node.boundary_proof = proof;
    node.persisted = SafetyState::default();
    node.stored_tc = None;
    if carried.is_none() {
        node.stored_blocks.clear();
    }
    node.core = new_core(s, node.validator, 2, root, node.persisted, &node.ledger, &node.stored_blocks, None);
    node.core.set_boundary_proof(node.boundary_proof.clone());
    node.core.adopt_operations(ops, GENESIS_MS + now + node.clock_offset);
    if let Some((qc, blocks)) = carried {
        node.core.carry_pipeline_for_tests(qc, blocks);
    }
    let ledger = node.ledger.clone();
    let proof = node.boundary_proof.clone();
    for node in nodes.iter_mut().filter(|n| !n.member && n.epoch == 1 && n.validator < r.next_n) {
        node.ledger = ledger.clone();
        node.epoch = 2;
        node.member = true;
        node.root = root;
        node.boundary_proof = proof.clone();
        node.core = new_core(s, node.validator, 2, root, SafetyState::default(), &node.ledger, &[], None);
        node.core.set_boundary_proof(proof.clone());
        node.core.adopt_operations(Vec::new(), GENESIS_MS + now + node.clock_offset);
    }
}

/// The checker's part for a reconfiguration, over every honest instance's ledger: each is one
/// hash chain; epoch 1 ends at the first block that enacts the change (the same height
/// everywhere, checked with the other heights), no epoch-1 block lies above it and no epoch-2
/// block below; every certificate verifies under its own epoch's set and keys (so only epoch
/// 2's validators, with their new keys, sign in epoch 2); and every instance of the new set
/// that was not down for good (`live`) reached epoch 2 and committed in it.
fn check_epochs(s: &Scenario, nodes: &[Instance], live: &dyn Fn(usize) -> bool, report: &mut Report) {
    let r = s.reconfig.as_ref().unwrap();
    let d1 = Domain { chain_id: "sim".into(), epoch: 1, n: s.n };
    let c1 = SimCrypto { me: 0, n: s.n };
    let (d2, keys) = epoch2(r);
    let c2 = KeyedSimCrypto { me: 0, keys };
    for (i, node) in nodes.iter().enumerate() {
        let mut parent = GENESIS_HASH;
        let mut boundary: Option<(u64, [u8; 32])> = None;
        for cb in &node.ledger {
            let b = cb.block.as_ref().unwrap();
            if b.parent_hash != parent {
                report.violations.push(format!("instance {i}: block {} does not extend block {}", b.height, b.height - 1));
            }
            let want_epoch = if boundary.is_some() { 2 } else { 1 };
            if b.epoch != want_epoch {
                report.violations.push(format!("instance {i}: block {} of epoch {} committed in epoch {want_epoch}", b.height, b.epoch));
            }
            // A block's justify and commit proof name its own epoch, and verify under that
            // epoch's validators and keys (epoch 2's root QC certifies the boundary).
            let certs = b.justify.iter().chain(cb.commit_child.as_ref().and_then(|c| c.justify.as_ref())).chain(cb.commit_qc.iter());
            for qc in certs {
                let ok = match (qc.epoch, boundary) {
                    (e, _) if e != b.epoch => false,
                    (1, _) => d1.verify_qc(qc, &GENESIS_HASH, &c1),
                    (2, Some((_, root))) => d2.verify_qc(qc, &root, &c2),
                    _ => false,
                };
                if !ok {
                    report.violations.push(format!(
                        "instance {i}: block {} (epoch {}): a certificate of epoch {} that does not verify under its epoch's validators",
                        b.height, b.epoch, qc.epoch
                    ));
                }
            }
            parent = block_hash(b);
            if boundary.is_none() && enacts(b) {
                boundary = Some((b.height, parent));
            }
        }
        if live(i) && node.validator < r.next_n && !node.ledger.is_empty() {
            let past = boundary.is_some_and(|(h, _)| (node.ledger.len() as u64) > h);
            if node.epoch != 2 || !past {
                report.violations.push(format!("instance {i}: never committed in epoch 2 (epoch {}, height {})", node.epoch, node.ledger.len()));
            }
        }
    }
}

/// A Byzantine validator's outputs: its honest core's, with proposals withheld (all, or every
/// other one) and votes sent to one validator instead of all.
fn misbehave(play: Misbehaviour, me: usize, n: usize, proposals: &mut u64, outputs: Vec<Output>) -> Vec<Output> {
    outputs
        .into_iter()
        .filter_map(|o| match o {
            Output::Broadcast(PeerMessage { kind: Some(Kind::Proposal(_)) }) => {
                *proposals += 1;
                let keep = play != Misbehaviour::Withhold && proposals.is_multiple_of(2);
                keep.then_some(o)
            }
            Output::Broadcast(PeerMessage { kind: Some(Kind::Vote(v)) }) if play == Misbehaviour::AlternateSplitVotes => {
                let to = (me + 1 + (v.view % (n as u64 - 1)) as usize) % n;
                Some(Output::Send { to, msg: PeerMessage { kind: Some(Kind::Vote(v)) } })
            }
            o => Some(o),
        })
        .collect()
}

fn kind(m: &PeerMessage) -> String {
    match &m.kind {
        Some(Kind::Proposal(p)) => {
            let b = p.block.as_ref().unwrap();
            format!("proposal(v{} h{} ops{} j{} tc{:?})", b.view, b.height, b.operations.len(), b.justify.as_ref().map(|j| j.view).unwrap_or(0), p.tc.as_ref().map(|t| t.view))
        }
        Some(Kind::Vote(v)) => format!("vote(v{})", v.view),
        Some(Kind::Timeout(t)) => format!("timeout(v{} hqc{})", t.view, t.high_qc.as_ref().map(|q| q.view).unwrap_or(0)),
        Some(Kind::Submit(s)) => format!("submit({})", s.operations.len()),
        Some(Kind::SyncRequest(r)) => format!("syncreq(h{})", r.committed_height),
        Some(Kind::SyncResponse(r)) => format!("syncresp({}c {}u)", r.committed.len(), r.uncommitted.len()),
        Some(Kind::ReadIndexRequest(r)) => format!("readreq({})", r.round),
        Some(Kind::ReadIndexReply(r)) => format!("readreply({} h{})", r.round, r.height),
        Some(Kind::Checkpoint(c)) => format!("checkpoint(h{})", c.height),
        Some(Kind::Evidence(e)) => format!("evidence(v{} of {})", e.view, e.offender),
        None => "empty".into(),
    }
}

pub fn run(s: &Scenario) -> Report {
    let trace = std::env::var_os("BFTCD_SIM_TRACE").is_some();
    let mut rng = StdRng::seed_from_u64(s.seed);
    let mut report = Report::default();
    assert!(s.reconfig.is_none() || s.twins == 0, "no twins with a reconfiguration");
    // Every validator of either epoch (the added ones wait for the boundary).
    let validators = s.reconfig.as_ref().map_or(s.n, |r| r.next_n.max(s.n));
    let next_n = s.reconfig.as_ref().map_or(s.n, |r| r.next_n);
    let instances_n = validators + s.twins;
    let validator_of = |i: usize| if i < validators { i } else { i - validators };
    let byzantine = s.byzantine.map(|(v, _)| v);
    let honest = |i: usize| validator_of(i) >= s.twins && Some(validator_of(i)) != byzantine;
    // Down for good from some time: honest, but nothing is expected of it.
    let down_from = |i: usize| s.down.iter().find(|(v, _)| *v == validator_of(i)).map(|(_, t)| *t);
    let mut nodes: Vec<Instance> = (0..instances_n)
        .map(|i| Instance {
            validator: validator_of(i),
            member: validator_of(i) < s.n,
            epoch: 1,
            root: None,
            boundary_proof: Vec::new(),
            // An added validator's core is a placeholder until it joins at the boundary.
            core: new_core(s, validator_of(i), if validator_of(i) < s.n { 1 } else { 2 }, None, SafetyState::default(), &[], &[], None),
            ledger: Vec::new(),
            persisted: SafetyState::default(),
            stored_blocks: Vec::new(),
            stored_tc: None,
            up: true,
            clock_offset: rng.gen_range(0..200),
            wake: None,
        })
        .collect();

    let mut queue: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |q: &mut BinaryHeap<Reverse<(u64, u64, Event)>>, t: u64, e: Event| {
        seq += 1;
        q.push(Reverse((t, seq, e)));
    };

    // Client operations: to random honest instances; remember which must commit.
    let mut must_commit: HashSet<u64> = HashSet::new();
    let mut submitted_at: HashMap<u64, (usize, u64)> = HashMap::new();
    // With a reconfiguration, clients (and crashes and reads) go to validators of both sets.
    let honest_ids: Vec<usize> = (0..instances_n).filter(|&i| honest(i) && validator_of(i) < s.n.min(next_n)).collect();
    let mut withheld = 0u64;
    let mut timed_out_views: HashSet<u64> = HashSet::new();
    for nonce in 0..s.operations as u64 {
        let to = honest_ids[rng.gen_range(0..honest_ids.len())];
        let t = rng.gen_range(0..(s.gst_ms + 2_000).max(s.load_ms));
        submitted_at.insert(nonce, (to, t));
        push(&mut queue, t, Event::Submit { to, nonce });
    }
    // Crash-restarts of honest instances, before GST.
    // Last restart time of each instance that crashes: operations it accepted before then
    // (or while down) may be lost legitimately, since their clients were never answered.
    let mut back_up_at: HashMap<usize, u64> = HashMap::new();
    for _ in 0..s.crashes {
        let to = honest_ids[rng.gen_range(0..honest_ids.len())];
        let t = rng.gen_range(0..s.gst_ms.max(1));
        let back = (t + rng.gen_range(100..3_000)).min(s.gst_ms);
        let e = back_up_at.entry(to).or_insert(back);
        *e = (*e).max(back);
        push(&mut queue, t, Event::Crash { to });
        push(&mut queue, back, Event::Restart { to });
    }
    for &(v, t) in &s.down {
        push(&mut queue, t, Event::Down { to: v });
        back_up_at.insert(v, u64::MAX);
    }
    // Once the network is stable, something must commit again: one more operation, at an
    // honest bank that stays up.
    let live: Vec<usize> = honest_ids.iter().copied().filter(|&i| down_from(i).is_none()).collect();
    if !live.is_empty() {
        let nonce = s.operations as u64;
        let to = live[(s.seed % live.len() as u64) as usize];
        submitted_at.insert(nonce, (to, s.gst_ms + 500));
        push(&mut queue, s.gst_ms + 500, Event::Submit { to, nonce });
    }
    if let Some(r) = &s.reconfig {
        // At a bank that does not crash, so that the change must happen.
        let steady: Vec<usize> = honest_ids.iter().copied().filter(|i| !back_up_at.contains_key(i)).collect();
        let pick = if steady.is_empty() { &honest_ids } else { &steady };
        let to = pick[(s.seed as usize / 7) % pick.len()];
        submitted_at.insert(RECONFIG_NONCE, (to, r.at_ms));
        push(&mut queue, r.at_ms, Event::Submit { to, nonce: RECONFIG_NONCE });
        // And one well after GST, which the new set must commit.
        let nonce = s.operations as u64 + 1;
        submitted_at.insert(nonce, (to, s.gst_ms + 10_000));
        push(&mut queue, s.gst_ms + 10_000, Event::Submit { to, nonce });
    }
    for (nonce, (to, t)) in &submitted_at {
        if back_up_at.get(to).is_none_or(|back| back < t) {
            must_commit.insert(*nonce);
        }
    }
    // Reads, from their own generator so the other draws stay as they were.
    let mut read_rng = StdRng::seed_from_u64(s.seed ^ 0x7ead);
    for _ in 0..s.reads {
        let to = honest_ids[read_rng.gen_range(0..honest_ids.len())];
        let t = read_rng.gen_range(0..s.end_ms.saturating_sub(10_000).max(1));
        push(&mut queue, t, Event::Read { to });
    }
    // Per instance: reads waiting (what they must cover, their round once one starts, when issued).
    let mut reads: Vec<Vec<(u64, Option<u64>, u64)>> = vec![Vec::new(); instances_n];
    // Highest block with operations that an honest instance has committed (and so could have
    // acknowledged to a client).
    let mut acknowledged = 0u64;
    let mut last_crash: HashMap<usize, u64> = HashMap::new();
    // Reads that got their index and wait for their instance to commit that far:
    // (instance, index, issued, indexed at). After GST, once any honest instance committed that
    // far, the reader must follow within READ_SERVE_MS.
    let mut indexed: Vec<(usize, u64, u64, u64)> = Vec::new();
    let mut first_commit_ms: HashMap<u64, u64> = HashMap::new();
    // Partitions before GST: a new random split every so often.
    let mut partition_of: Vec<u8> = vec![0; instances_n];
    // Crashes that strike in the middle of an instance's next step, drawn from their own
    // generator so the other draws (and old seeds) stay as they were.
    let mut crash_rng = StdRng::seed_from_u64(s.seed ^ 0xc4a5);
    let mut crash_in_step = vec![false; instances_n];
    let mut next_partition = 0u64;
    for i in 0..instances_n {
        push(&mut queue, 0, Event::Wake { to: i });
    }

    let mut now = 0u64;
    while let Some(Reverse((t, _, event))) = queue.pop() {
        if t > s.end_ms {
            break;
        }
        now = t;
        report.events += 1;
        if let (Some(fixed), true) = (&s.fixed_partition, now < s.gst_ms) {
            partition_of.clone_from(fixed);
            next_partition = s.gst_ms;
        } else if s.partitions && now < s.gst_ms && now >= next_partition {
            for p in partition_of.iter_mut() {
                *p = rng.gen_range(0..2);
            }
            // Twins: split each pair so each twin talks to a different side, and let some honest
            // instances bridge both sides, so they see both twins' proposals in the same view.
            for k in 0..s.twins {
                partition_of[k] = 0;
                partition_of[s.n + k] = 1;
            }
            if s.twins > 0 {
                for p in partition_of.iter_mut().take(s.n).skip(s.twins) {
                    if rng.gen_bool(0.4) {
                        *p = BRIDGE;
                    }
                }
            }
            next_partition = now + rng.gen_range(200..1_500);
        } else if now >= s.gst_ms {
            partition_of.iter_mut().for_each(|p| *p = 0);
        }
        let trace_in = match &event {
            Event::Deliver { from, msg, .. } => format!("from {from} {}", PeerMessage::decode(msg.as_slice()).map(|m| kind(&m)).unwrap_or_default()),
            Event::Wake { .. } => "tick".into(),
            Event::Submit { nonce, .. } => format!("submit {nonce}"),
            Event::Read { .. } => "read".into(),
            Event::Crash { to } => format!("CRASH {to}"),
            Event::Restart { to } => format!("RESTART {to}"),
            Event::Down { to } => format!("DOWN {to}"),
        };
        if trace && matches!(event, Event::Crash { .. } | Event::Restart { .. } | Event::Down { .. }) {
            eprintln!("t={now} {trace_in}");
        }
        let mut on_sync = false;
        let (to, input) = match event {
            Event::Deliver { to, from, msg } => match PeerMessage::decode(msg.as_slice()) {
                Ok(m) if matches!(m.kind, Some(Kind::SyncResponse(_))) => {
                    on_sync = true;
                    (to, Input::Message { from, msg: m })
                }
                Ok(m) => (to, Input::Message { from, msg: m }),
                Err(_) => continue,
            },
            Event::Wake { to } => {
                nodes[to].wake = None;
                (to, Input::Tick)
            }
            Event::Submit { to, nonce } => {
                let op = Operation {
                    id: Some(OperationId { bank: nodes[to].validator as u32, nonce }),
                    request: Some(operation::Request::Put(PutRequest {
                        key: if nonce == RECONFIG_NONCE { RECONFIG_KEY.to_vec() } else { format!("k{nonce}").into_bytes() },
                        ..Default::default()
                    })),
                    ..Default::default()
                };
                (to, Input::Submit(vec![op]))
            }
            Event::Read { to } => {
                if !nodes[to].up || !nodes[to].member {
                    continue;
                }
                reads[to].push((acknowledged, None, now));
                (to, Input::ReadIndex)
            }
            Event::Crash { to } => {
                if nodes[to].up && crash_rng.gen_bool(0.5) {
                    // In the middle of its next step instead (see `crash_in_step`).
                    crash_in_step[to] = true;
                    continue;
                }
                nodes[to].up = false;
                // Its clients' reads are gone with it.
                reads[to].clear();
                last_crash.insert(to, now);
                continue;
            }
            Event::Down { to } => {
                nodes[to].up = false;
                reads[to].clear();
                last_crash.insert(to, now);
                continue;
            }
            Event::Restart { to } => {
                if down_from(to).is_some_and(|t| t <= now) {
                    continue;
                }
                if std::mem::take(&mut crash_in_step[to]) {
                    // It took no step since: it crashes now, between steps.
                    reads[to].clear();
                    last_crash.insert(to, now);
                }
                let node = &mut nodes[to];
                node.core = new_core(s, node.validator, node.epoch, node.root, node.persisted, &node.ledger, &node.stored_blocks, node.stored_tc.as_ref());
                node.core.set_boundary_proof(node.boundary_proof.clone());
                node.up = true;
                push(&mut queue, now, Event::Wake { to });
                continue;
            }
        };
        if !nodes[to].up || !nodes[to].member {
            continue;
        }
        let node = &mut nodes[to];
        let local = GENESIS_MS + now + node.clock_offset;
        let outputs = {
            let ledger = std::mem::take(&mut node.ledger);
            let out = node.core.handle(local, input, &Ledger(&ledger));
            node.ledger = ledger;
            out
        };
        let me_validator = node.validator;
        // A crash in the middle of this step: the runtime carries out a step's outputs in
        // order (a message leaves only after the blocks and safety state before it are on disk,
        // and a torn consensus-log write keeps a prefix of its records), so what survives is a
        // prefix of the outputs; the step's ledger appends run on their own and are lost.
        let crashing = std::mem::take(&mut crash_in_step[to]);
        let outputs = if crashing {
            let keep = crash_rng.gen_range(0..=outputs.len());
            outputs.into_iter().take(keep).filter(|o| !matches!(o, Output::Commit(_) | Output::EpochEnded { .. })).collect()
        } else {
            outputs
        };
        let outputs = match s.byzantine {
            Some((v, play)) if v == me_validator => misbehave(play, v, s.n, &mut withheld, outputs),
            _ => outputs,
        };
        if honest(to) && now >= s.gst_ms {
            for o in &outputs {
                if let Output::Broadcast(PeerMessage { kind: Some(Kind::Timeout(t)) }) = o {
                    timed_out_views.insert(t.view);
                }
            }
        }
        if trace {
            let what: Vec<String> = outputs
                .iter()
                .map(|o| match o {
                    Output::Send { to, msg } => format!("send {to} {}", kind(msg)),
                    Output::Broadcast(msg) => format!("bcast {}", kind(msg)),
                    Output::Persist(st) => format!("persist {st:?}"),
                    Output::PersistBlock(b) => format!("store block {}", b.height),
                    Output::PersistTc(tc) => format!("store tc {}", tc.view),
                    Output::Commit(cb) => format!("commit {}", cb.block.as_ref().unwrap().height),
                    Output::Rejected { from, reason } => format!("reject {from}: {reason}"),
                    Output::Refused { id, why } => format!("refuse {id:?}: {why:?}"),
                    Output::SafetyViolation(w) => format!("VIOLATION {w}"),
                    Output::ReadRoundStarted(r) => format!("read round {r}"),
                    Output::ReadIndex { round, height } => format!("read index {round} -> {height}"),
                    Output::Evidence(e) => format!("evidence v{} against {}", e.view, e.offender),
                    Output::EpochEnded { height, .. } => format!("EPOCH ENDED at {height}"),
                })
                .collect();
            eprintln!("t={now} i={to} view={} committed={} {trace_in} -> {what:?}", node.core.view(), node.core.committed_height());
        }
        let mut sends: Vec<(usize, PeerMessage)> = Vec::new();
        let mut switch = None;
        for o in outputs {
            match o {
                Output::EpochEnded { height, hash, proof } => switch = Some((height, hash, proof)),
                Output::Persist(state) => nodes[to].persisted = state,
                Output::PersistTc(tc) => nodes[to].stored_tc = Some(tc),
                Output::PersistBlock(b) => {
                    let committed = nodes[to].ledger.len() as u64;
                    let store = &mut nodes[to].stored_blocks;
                    store.retain(|x| x.height > committed);
                    store.push((*b).clone());
                }
                Output::Commit(cb) => {
                    let b = cb.block.as_ref().unwrap();
                    if honest(to) && !b.operations.is_empty() {
                        acknowledged = acknowledged.max(b.height);
                    }
                    if honest(to) {
                        first_commit_ms.entry(b.height).or_insert(now);
                    }
                    nodes[to].ledger.push(cb)
                }
                Output::ReadRoundStarted(round) => {
                    for r in reads[to].iter_mut().filter(|r| r.1.is_none()) {
                        r.1 = Some(round);
                    }
                }
                Output::ReadIndex { round, height } => {
                    let (done, waiting): (Vec<_>, Vec<_>) = reads[to].drain(..).partition(|r| r.1.is_some_and(|x| x <= round));
                    reads[to] = waiting;
                    for (needed, _, issued) in done {
                        report.reads_checked += 1;
                        indexed.push((to, height, issued, now));
                        if height < needed {
                            report.violations.push(format!(
                                "instance {to}: read issued at {issued} ms got index {height}, but block {needed} with operations was already committed"
                            ));
                        }
                    }
                }
                Output::Send { to: v, msg } => sends.push((v, msg)),
                Output::Broadcast(msg) => {
                    for v in 0..validators {
                        if v != me_validator {
                            sends.push((v, msg.clone()));
                        }
                    }
                }
                Output::Rejected { .. } | Output::Refused { .. } => {}
                Output::Evidence(e) => {
                    if honest(to) {
                        let offender = e.offender as usize;
                        if report.evidence_reported.len() < s.n {
                            report.evidence_reported.resize(s.n, 0);
                        }
                        if let Some(c) = report.evidence_reported.get_mut(offender) {
                            *c += 1;
                        }
                        // Only a twin signs twice for one view (or everyone, under the broken
                        // voting rule): evidence against anyone else is forged or a bug.
                        if offender >= s.twins && !s.broken_voting_rule {
                            report.violations.push(format!("instance {to}: evidence against honest validator {offender} (view {})", e.view));
                        }
                        let domain = Domain { chain_id: "sim".into(), epoch: 1, n: s.n };
                        if crate::evidence::check(&domain, &SimCrypto { me: 0, n: s.n }, &e).is_err() {
                            report.violations.push(format!("instance {to}: reported evidence that does not check"));
                        }
                    }
                }
                Output::SafetyViolation(what) => {
                    if honest(to) {
                        report.violations.push(format!("instance {to}: {what}"));
                    }
                }
            }
        }
        if let Some((height, hash, proof)) = switch {
            report.epoch_switches += 1;
            report.switches_on_sync += u64::from(on_sync);
            report.boundaries_proven_above += u64::from(!proof.is_empty());
            enter_epoch2(s, &mut nodes, to, now, height, hash, proof);
            for (i, node) in nodes.iter().enumerate() {
                if node.member && node.epoch == 2 && node.wake.is_none() {
                    push(&mut queue, now, Event::Wake { to: i });
                }
            }
        }
        for (v, m) in sends {
            let bytes = m.encode_to_vec();
            if now >= s.gst_ms {
                report.messages_after_gst += 1;
                report.bytes_after_gst += bytes.len() as u64;
            }
            // Deliver to every instance of validator v (both twins).
            for dest in (0..instances_n).filter(|&d| validator_of(d) == v) {
                let delay = if now < s.gst_ms {
                    if rng.gen_bool(s.drop_rate) {
                        continue;
                    }
                    let (a, b) = (partition_of[dest], partition_of[to]);
                    if (s.partitions || s.fixed_partition.is_some()) && a != b && a != BRIDGE && b != BRIDGE {
                        // Held by the network until this partition ends (as TCP and the peer
                        // transport's queues would), then delivered.
                        next_partition.saturating_sub(now) + rng.gen_range(1..=s.max_delay_ms)
                    } else {
                        rng.gen_range(1..=s.max_delay_ms)
                    }
                } else {
                    rng.gen_range(1..=s.stable_delay_ms)
                };
                push(&mut queue, now + delay, Event::Deliver { to: dest, from: me_validator, msg: bytes.clone() });
            }
        }
        if crashing {
            report.crashes_in_step += 1;
            nodes[to].up = false;
            reads[to].clear();
            last_crash.insert(to, now);
        }
        // Reads served (their instance committed far enough), or waiting too long.
        indexed.retain(|(i, index, issued, at)| {
            if (nodes[*i].ledger.len() as u64) >= *index || last_crash.get(i).is_some_and(|c| c >= issued) {
                return false;
            }
            let Some(&committed_at) = first_commit_ms.get(index) else { return true };
            if now > (*at).max(s.gst_ms).max(committed_at) + READ_SERVE_MS {
                report.violations.push(format!(
                    "instance {i}: read issued at {issued} ms still waits for block {index} at {now} ms (committed: {})",
                    nodes[*i].ledger.len()
                ));
                return false;
            }
            true
        });
        // Wake again when the core asks, and at least every 250 ms.
        let node = &mut nodes[to];
        let want = node.core.next_wakeup().map(|w| w.saturating_sub(GENESIS_MS + node.clock_offset)).unwrap_or(u64::MAX);
        let at = want.max(now + 1).min(now + 250);
        if node.wake.is_none_or(|w| at < w) {
            node.wake = Some(at);
            push(&mut queue, at, Event::Wake { to });
        }
    }
    let _ = now;

    // Safety: every height agrees across honest instances.
    let mut by_height: BTreeMap<u64, (usize, [u8; 32])> = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| honest(*i)) {
        for cb in &node.ledger {
            let b = cb.block.as_ref().unwrap();
            let h = block_hash(b);
            match by_height.get(&b.height) {
                Some((j, other)) if *other != h => {
                    report.violations.push(format!("height {}: instance {i} and instance {j} committed different blocks", b.height));
                }
                Some(_) => {}
                None => {
                    by_height.insert(b.height, (i, h));
                }
            }
        }
        report.heights.push(node.ledger.len() as u64);
        if i == honest_ids[0] {
            report.evidence_committed = node.ledger.iter().map(|cb| cb.block.as_ref().unwrap().evidence.len() as u64).sum();
        }
    }
    // Liveness: every operation that must commit is in every honest ledger (of a bank not down
    // for good), exactly once.
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| honest(*i)) {
        let mut seen: HashMap<(u32, u64), usize> = HashMap::new();
        for cb in &node.ledger {
            for op in &cb.block.as_ref().unwrap().operations {
                let id = op.id.as_ref().unwrap();
                *seen.entry((id.bank, id.nonce)).or_default() += 1;
            }
        }
        if seen.values().any(|&c| c > 1) {
            report.violations.push(format!("instance {i} committed an operation twice"));
        }
        // A removed validator stops at the boundary: nothing after it is expected of it.
        if down_from(i).is_some() || validator_of(i) >= next_n {
            continue;
        }
        let committed: HashSet<u64> = seen.keys().map(|k| k.1).collect();
        let missing: Vec<_> = must_commit.iter().filter(|n| !committed.contains(n)).collect();
        if !missing.is_empty() {
            report.violations.push(format!("instance {i} never committed operations {missing:?}"));
        }
    }
    report.operations_checked = must_commit.len();
    if s.reconfig.is_some() {
        check_epochs(s, &nodes, &|i| honest(i) && down_from(i).is_none(), &mut report);
    }
    for (i, index, issued, _) in &indexed {
        if *issued + 10_000 <= s.end_ms {
            report.violations.push(format!("instance {i}: read issued at {issued} ms never reached its index {index}"));
        }
    }
    // Liveness of reads: one begun after GST (and after its instance's last crash) is answered.
    for (i, waiting) in reads.iter().enumerate() {
        for (_, _, issued) in waiting {
            if *issued >= s.gst_ms && last_crash.get(&i).is_none_or(|c| c < issued) && *issued + 10_000 <= s.end_ms {
                report.violations.push(format!("instance {i}: read issued at {issued} ms never got its index"));
            }
        }
    }
    report.views_timed_out_after_gst = timed_out_views.len() as u64;
    let longest = nodes.iter().enumerate().filter(|(i, _)| honest(*i)).map(|(_, n)| &n.ledger).max_by_key(|l| l.len());
    report.led_after_gst = vec![0; validators];
    report.failed_after_gst = vec![0; validators];
    for b in longest.into_iter().flatten().filter_map(|cb| cb.block.as_ref()).filter(|b| b.timestamp_ms >= GENESIS_MS + s.gst_ms) {
        report.led_after_gst[b.proposer as usize] += 1;
        report.skipped_views_after_gst += b.view - b.justify.as_ref().map_or(0, |j| j.view) - 1;
        for (v, failed) in report.failed_after_gst.iter_mut().enumerate() {
            if b.failed_leaders.get(v / 8).is_some_and(|byte| byte & (1 << (v % 8)) != 0) {
                *failed += 1;
            }
        }
    }
    report.blocks_after_gst = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| honest(*i))
        .map(|(_, n)| n.ledger.iter().filter(|cb| cb.block.as_ref().unwrap().timestamp_ms >= GENESIS_MS + s.gst_ms).count() as u64)
        .max()
        .unwrap_or(0);
    report
}
