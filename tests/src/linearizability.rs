//! A linearizability checker for recorded etcd client histories, in the style of Wing & Gong's
//! search with Lowe's memoization ("WGL"), specialised to a per-key register.
//!
//! Tests record what their clients did with [`History`] and hand [`History::entries`] to
//! [`check`]. The checker answers one question: is there a total order of the operations, each
//! placed somewhere between its invocation and its response, in which every result is what a
//! single etcd key (absent or holding a value) would have answered?
//!
//! Why the search stays tractable on histories of a few thousand operations:
//!
//! - Keys are checked one at a time. Every operation touches a single key and each key is an
//!   independent register, so the history is linearizable iff every key's sub-history is
//!   (linearizability is local, and single-key operations make the split exact).
//! - A configuration of the search is (the set of operations already linearized, the register
//!   value). Two paths reaching the same configuration have the same futures, so each is explored
//!   once; the linearized set is stored compactly because every operation before the first
//!   un-linearized one (in invocation order) is known to be in it.
//! - A pending read-only operation (a `Get`, a `Delete` of an absent key, a failed `Cas`) that is
//!   consistent with the current value is linearized greedily, without trying alternatives:
//!   moving it to the front of any valid continuation keeps the continuation valid.
//! - Values that no operation ever compares against are merged into one, so the search does not
//!   tell apart orders of concurrent writes that nobody could distinguish.
//! - Operations whose outcome is unknown are optional. A configuration that used some of them is
//!   no better than one with the same completed operations and value that used a subset of those
//!   (it has fewer options left), so such dominated configurations are pruned, completed operations are tried before
//!   optional ones, and no blind write (a `Put`, or an optional `Delete`) is placed directly after
//!   an optional operation (that operation's effect would be overwritten unseen, so omitting it
//!   is equivalent). Of several optional operations with the same effect, only the earliest
//!   invoked unused one is ever tried. The search ends as soon as every *completed* operation is
//!   linearized.
//! - A budget on explored configurations turns a pathological history into an inconclusive
//!   result instead of a hung test.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::Instant;

/// One client operation on ONE key (histories are checked key by key: single-key operations on a
/// register are P-compositional, so each key's sub-history is checked alone).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Call {
    Put {
        key: String,
        value: String,
    },
    /// A linearizable (not serializable) `Range` of one key: only those are obliged to see every
    /// write that completed before they started.
    Get {
        key: String,
    },
    /// `DeleteRange` of one key.
    Delete {
        key: String,
    },
    /// `Txn If Value(key) == expect Then Put(key, new)`. `expect: None` stands for the
    /// `CreateRevision(key) == 0` comparison, because etcd cannot compare the value of an absent
    /// key.
    Cas {
        key: String,
        expect: Option<String>,
        new: String,
    },
}

impl Call {
    /// The key the operation touches; the checker groups by it.
    pub fn key(&self) -> &str {
        match self {
            Call::Put { key, .. } | Call::Get { key } | Call::Delete { key } | Call::Cas { key, .. } => key,
        }
    }
}

/// What the server answered. The variant must match the [`Call`]'s; a mismatch is reported as a
/// malformed history rather than guessed at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ret {
    Put,
    Get(Option<String>),
    Delete { deleted: u64 },
    Cas { succeeded: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub client: usize,
    pub call: Call,
    /// Monotonic nanoseconds (any monotonic unit works for the check; explanations print it as
    /// nanoseconds converted to milliseconds).
    pub invoked: u64,
    /// None: outcome unknown (timeout, connection lost, error of unknown effect): the operation
    /// may have taken effect at any point after `invoked`, or never. Reads with unknown outcome
    /// constrain nothing and are dropped.
    pub completed: Option<(u64, Ret)>,
}

/// Why a history was rejected, or why the check could not decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    pub explanation: String,
    /// Distinguishes "the search gave up" from "no linearization exists": a test may want to
    /// treat the former as a harness problem (history too concurrent) rather than a bug.
    budget_exhausted: bool,
}

impl Violation {
    /// True when the search ran out of budget: the history was neither proved nor disproved.
    pub fn budget_exhausted(&self) -> bool {
        self.budget_exhausted
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.budget_exhausted {
            write!(f, "linearizability check of key {:?} is inconclusive: {}", self.key, self.explanation)
        } else {
            write!(f, "linearizability violation on key {:?}:\n{}", self.key, self.explanation)
        }
    }
}

impl std::error::Error for Violation {}

/// Returned on success so that a test can assert that it checked what it meant to check (a
/// history that is silently empty passes trivially).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckStats {
    /// Distinct keys in the history.
    pub keys: usize,
    /// Operations taken into account (reads with unknown outcome are dropped and not counted).
    pub operations: usize,
    /// Search configurations visited over all keys; a measure of how hard the history was.
    pub states_explored: u64,
}

/// Configurations [`check`] may visit before giving up. Linearizable histories of a few thousand
/// operations need roughly one configuration per operation; the slack is for refuting violations,
/// which must exhaust every ordering of the operations before the offending one. At ~100 bytes per
/// configuration of the key being checked, this also caps memory at a few hundred megabytes.
pub const DEFAULT_BUDGET: u64 = 1_000_000;

/// Checks `history` with [`DEFAULT_BUDGET`].
pub fn check(history: &[Entry]) -> Result<CheckStats, Violation> {
    check_with_budget(history, DEFAULT_BUDGET)
}

/// Checks `history`, visiting at most `max_states` configurations over all keys. Running out is
/// reported as a [`Violation`] whose [`Violation::budget_exhausted`] is true.
pub fn check_with_budget(history: &[Entry], max_states: u64) -> Result<CheckStats, Violation> {
    let origin = history.iter().map(|e| e.invoked).min().unwrap_or(0);
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in history.iter().enumerate() {
        by_key.entry(e.call.key()).or_default().push(i);
    }
    let mut stats = CheckStats { keys: by_key.len(), operations: 0, states_explored: 0 };
    for (key, indices) in by_key {
        let h = KeyHistory::build(key, history, &indices)?;
        stats.operations += h.ops.len();
        let mut search = Search::new(&h, max_states.saturating_sub(stats.states_explored));
        let outcome = search.run();
        stats.states_explored += search.states;
        let report = Report { h: &h, history, origin };
        match outcome {
            Outcome::Linearizable => {}
            Outcome::Stuck(deepest) => {
                return Err(Violation {
                    key: key.to_string(),
                    explanation: report.stuck(&deepest, search.states),
                    budget_exhausted: false,
                })
            }
            Outcome::OutOfBudget(deepest) => {
                return Err(Violation {
                    key: key.to_string(),
                    explanation: report.out_of_budget(&deepest, search.states, max_states),
                    budget_exhausted: true,
                })
            }
        }
    }
    Ok(stats)
}

/// Proof that an operation was invoked through a [`History`]; consumed by exactly one of
/// [`History::complete`] or [`History::unknown`] so an outcome cannot be recorded twice.
#[derive(Debug)]
#[must_use = "record the outcome with History::complete or History::unknown"]
pub struct Ticket {
    index: usize,
}

/// A history shared by many client tasks (wrap it in an `Arc`). Times are nanoseconds since the
/// history was created, from one `Instant`, so they are comparable across tasks and threads.
#[derive(Debug)]
pub struct History {
    origin: Instant,
    entries: Mutex<Vec<Entry>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        History { origin: Instant::now(), entries: Mutex::new(Vec::new()) }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A client task that panicked while holding the lock left the vector intact (every
        // critical section is a single push or assignment), so the history is still worth
        // checking.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Call right before sending the request: the clock is read before taking the lock, so the
    /// recorded time can only be earlier than the real invocation, which keeps the check sound.
    pub fn invoke(&self, client: usize, call: Call) -> Ticket {
        let invoked = self.now();
        let mut entries = self.lock();
        entries.push(Entry { client, call, invoked, completed: None });
        Ticket { index: entries.len() - 1 }
    }

    /// Call right after the response arrived: the clock is read before taking the lock, so the
    /// recorded time can only be later than the real response.
    pub fn complete(&self, ticket: Ticket, ret: Ret) {
        let completed = self.now();
        self.lock()[ticket.index].completed = Some((completed, ret));
    }

    /// The request may or may not have taken effect (timeout, lost connection, ambiguous error).
    /// Equivalent to dropping the ticket; it exists so call sites say so explicitly.
    pub fn unknown(&self, ticket: Ticket) {
        drop(ticket);
    }

    /// A snapshot of everything recorded so far, in invocation-recording order. Operations still
    /// in flight appear with an unknown outcome.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().clone()
    }
}

// ---------------------------------------------------------------------------------------------
// One key's sub-history, with values interned so that the search compares integers.

/// Interned value 0 is "absent".
const ABSENT: u32 = 0;
/// Every value that no operation of the key ever compares against (no read returned it, no `Cas`
/// expected it) is interned as this one symbol. Those values are indistinguishable to the rest of
/// the history (only their presence is visible, to `Delete` and to `Cas` failing), so merging them
/// loses nothing, while it makes the order of unobserved concurrent writes irrelevant to the
/// memoization. Observed values get ids from 2, indices into `KeyHistory::values` shifted by 2.
const UNOBSERVED: u32 = 1;
/// Marks the search's root frame, which linearized no operation.
const ROOT: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Put {
        value: u32,
    },
    Get {
        observed: u32,
    },
    /// `deleted: None` when the outcome is unknown.
    Delete {
        deleted: Option<u64>,
    },
    /// `succeeded: None` when the outcome is unknown.
    Cas {
        expect: u32,
        new: u32,
        succeeded: Option<bool>,
    },
}

#[derive(Debug)]
struct Op {
    /// Index into the full history, to print the operation as the client recorded it.
    entry: usize,
    invoked: u64,
    /// None: outcome unknown, the operation is optional.
    completed: Option<u64>,
    kind: Kind,
}

impl Op {
    /// The register value after this operation, or None if its recorded result is impossible
    /// from `value`.
    fn apply(&self, value: u32) -> Option<u32> {
        match self.kind {
            Kind::Put { value: v } => Some(v),
            Kind::Get { observed } => (observed == value).then_some(value),
            Kind::Delete { deleted: None } => Some(ABSENT),
            Kind::Delete { deleted: Some(n) } => (n == u64::from(value != ABSENT)).then_some(ABSENT),
            Kind::Cas { expect, new, succeeded } => {
                let matches = value == expect;
                match succeeded {
                    Some(s) if s != matches => None,
                    _ => Some(if matches { new } else { value }),
                }
            }
        }
    }

    /// Operations that leave the value unchanged wherever their recorded result is possible. Such
    /// an operation, once it is consistent with the current value, can be moved to the front of
    /// any valid continuation without changing any value the others see, so the search takes it at
    /// once and tries nothing else. (A `Put` of the value already there is not one: further along
    /// a continuation it may be what re-creates a value after a `Delete`.)
    fn is_read_only(&self) -> bool {
        match self.kind {
            Kind::Get { .. } | Kind::Delete { deleted: Some(0) } | Kind::Cas { succeeded: Some(false), .. } => true,
            Kind::Cas { expect, new, succeeded: Some(true) } => expect == new,
            _ => false,
        }
    }

    /// Writes whose result does not depend on the previous value: placed right after an optional
    /// operation, one hides that operation's effect, making the pair equivalent to the blind
    /// write alone. (A `Delete` with a known count is not blind: the count observes presence.)
    fn is_blind_write(&self) -> bool {
        matches!(self.kind, Kind::Put { .. } | Kind::Delete { .. })
    }
}

struct KeyHistory<'a> {
    key: &'a str,
    /// Completed operations sorted by invocation, then the unknown-outcome ones sorted by
    /// invocation: both sorts let the candidate scan stop at the first operation invoked after
    /// the horizon.
    ops: Vec<Op>,
    /// Number of completed operations (indices `0..completed` of `ops`).
    completed: usize,
    /// Completed operations sorted by response time: the first un-linearized one bounds which
    /// operations may be linearized next.
    by_completion: Vec<u32>,
    /// For each unknown-outcome operation (index minus `completed`), the previous one with the
    /// identical effect. Such operations are interchangeable except that the earlier one may be
    /// placed anywhere the later one may, so the search only ever uses the earliest unused one:
    /// without this, k interchangeable optional operations (typically retried `Delete`s or
    /// unobserved `Put`s) would be combined in up to 2^k ways.
    previous_twin: Vec<Option<u32>>,
    /// Interned observed values, `values[id - 2]`.
    values: Vec<&'a str>,
}

impl<'a> KeyHistory<'a> {
    fn build(key: &'a str, history: &'a [Entry], indices: &[usize]) -> Result<Self, Violation> {
        let mut observed: HashSet<&'a str> = HashSet::new();
        for &i in indices {
            match &history[i] {
                Entry { call: Call::Get { .. }, completed: Some((_, Ret::Get(Some(v)))), .. } => observed.insert(v),
                Entry { call: Call::Cas { expect: Some(v), .. }, .. } => observed.insert(v),
                _ => false,
            };
        }
        let mut values: Vec<&'a str> = Vec::new();
        let mut ids: HashMap<&'a str, u32> = HashMap::new();
        let mut intern_opt = |v: Option<&'a str>| -> u32 {
            match v {
                None => ABSENT,
                Some(v) if !observed.contains(v) => UNOBSERVED,
                Some(v) => *ids.entry(v).or_insert_with(|| {
                    values.push(v);
                    u32::try_from(values.len() + 1).expect("fewer than 2^32 values")
                }),
            }
        };
        let mut completed_ops = Vec::new();
        let mut unknown_ops = Vec::new();
        for &i in indices {
            let e = &history[i];
            let malformed = |why: &str| Violation {
                key: key.to_string(),
                explanation: format!("malformed history entry #{i} ({why}): {e:?}"),
                budget_exhausted: false,
            };
            let (completed, kind) = match (&e.call, &e.completed) {
                (Call::Get { .. }, None) => continue,
                (Call::Put { value, .. }, None) => (None, Kind::Put { value: intern_opt(Some(value)) }),
                (Call::Put { value, .. }, Some((t, Ret::Put))) => {
                    (Some(*t), Kind::Put { value: intern_opt(Some(value)) })
                }
                (Call::Get { .. }, Some((t, Ret::Get(v)))) => {
                    (Some(*t), Kind::Get { observed: intern_opt(v.as_deref()) })
                }
                (Call::Delete { .. }, None) => (None, Kind::Delete { deleted: None }),
                (Call::Delete { .. }, Some((t, Ret::Delete { deleted }))) => {
                    (Some(*t), Kind::Delete { deleted: Some(*deleted) })
                }
                (Call::Cas { expect, new, .. }, outcome) => {
                    let (completed, succeeded) = match outcome {
                        None => (None, None),
                        Some((t, Ret::Cas { succeeded })) => (Some(*t), Some(*succeeded)),
                        Some(_) => return Err(malformed("result does not match the call")),
                    };
                    (
                        completed,
                        Kind::Cas { expect: intern_opt(expect.as_deref()), new: intern_opt(Some(new)), succeeded },
                    )
                }
                (_, Some(_)) => return Err(malformed("result does not match the call")),
            };
            if completed.is_some_and(|t| t < e.invoked) {
                return Err(malformed("completed before it was invoked"));
            }
            let op = Op { entry: i, invoked: e.invoked, completed, kind };
            if completed.is_some() {
                completed_ops.push(op);
            } else {
                unknown_ops.push(op);
            }
        }
        completed_ops.sort_by_key(|o| (o.invoked, o.completed, o.entry));
        unknown_ops.sort_by_key(|o| (o.invoked, o.entry));
        let completed = completed_ops.len();
        let mut ops = completed_ops;
        ops.extend(unknown_ops);
        let mut by_completion: Vec<u32> = (0..completed as u32).collect();
        by_completion.sort_by_key(|&i| (ops[i as usize].completed, i));
        let mut last_of_kind: HashMap<Kind, u32> = HashMap::new();
        let previous_twin =
            (0..ops.len() - completed).map(|j| last_of_kind.insert(ops[completed + j].kind, j as u32)).collect();
        Ok(KeyHistory { key, ops, completed, by_completion, previous_twin, values })
    }

    fn unknown(&self) -> usize {
        self.ops.len() - self.completed
    }

    fn value(&self, id: u32) -> String {
        match id {
            ABSENT => "absent".to_string(),
            UNOBSERVED => "a value no operation observes".to_string(),
            _ => show(self.values[id as usize - 2]),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The search.

#[inline(always)]
fn bit(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

fn flip(bits: &mut [u64], i: usize) {
    bits[i / 64] ^= 1 << (i % 64);
}

fn is_subset(small: &[u64], big: &[u64]) -> bool {
    (0..small.len()).all(|i| small[i] & !big[i] == 0)
}

/// The memo of visited configurations. It is the search's only large data structure (millions
/// of entries on hard histories), hence the layout: the linearized-set words of all entries live
/// in one arena, entries are found through their 64-bit hash with collisions chained, and nothing
/// is allocated per lookup. A sizeable part of the time of a big search is otherwise spent in the
/// allocator and in SipHash.
#[derive(Default)]
struct Visited {
    by_hash: HashMap<u64, usize, BuildHasherDefault<PassThrough>>,
    entries: Vec<VisitedEntry>,
    words: Vec<u64>,
}

/// A configuration minus its optional operations. `first_pending` (the first un-linearized
/// completed operation in invocation order) makes the stored words canonical: every completed
/// operation before it is linearized, so only the words from its own onwards are kept, which is
/// usually one or two however long the history.
struct VisitedEntry {
    first_pending: u32,
    value: u32,
    after_unknown: bool,
    /// `Visited::words[start..start + len]`.
    start: usize,
    len: usize,
    /// The sets of optional operations this configuration was reached with, flattened
    /// (`Search::linearized_unknown.len()` words each). Reaching it with a superset of one of
    /// them is pointless: see the module documentation.
    optional: Vec<u64>,
    /// The next entry with the same hash.
    next: Option<usize>,
}

/// The keys of `Visited::by_hash` are already well-mixed hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn mix(h: u64, w: u64) -> u64 {
    let x = (h ^ w).wrapping_add(0x9e37_79b9_7f4a_7c15);
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Visited {
    /// Records a configuration; false if it, or one that dominates it, was recorded before.
    fn insert(
        &mut self,
        first_pending: usize,
        value: u32,
        after_unknown: bool,
        words: &[u64],
        optional: &[u64],
    ) -> bool {
        let head = u64::from(first_pending as u32) << 33 | u64::from(value) << 1 | u64::from(after_unknown);
        let hash = words.iter().fold(mix(0, head), |h, &w| mix(h, w));
        let first = self.by_hash.get(&hash).copied();
        let mut cursor = first;
        while let Some(i) = cursor {
            let e = &mut self.entries[i];
            if e.first_pending == first_pending as u32
                && e.value == value
                && e.after_unknown == after_unknown
                && self.words[e.start..e.start + e.len] == *words
            {
                if optional.is_empty() || e.optional.chunks_exact(optional.len()).any(|s| is_subset(s, optional)) {
                    return false;
                }
                let mut kept: Vec<u64> = Vec::with_capacity(e.optional.len() + optional.len());
                for s in e.optional.chunks_exact(optional.len()).filter(|s| !is_subset(optional, s)) {
                    kept.extend_from_slice(s);
                }
                kept.extend_from_slice(optional);
                e.optional = kept;
                return true;
            }
            cursor = e.next;
        }
        self.entries.push(VisitedEntry {
            first_pending: first_pending as u32,
            value,
            after_unknown,
            start: self.words.len(),
            len: words.len(),
            optional: optional.to_vec(),
            next: first,
        });
        self.words.extend_from_slice(words);
        self.by_hash.insert(hash, self.entries.len() - 1);
        true
    }
}

struct Frame {
    /// The operation whose linearization created this frame, or [`ROOT`].
    op: u32,
    value: u32,
    /// The last linearized operation had an unknown outcome: no blind write may come next.
    after_unknown: bool,
    /// Index into `by_completion` of the earliest-responding un-linearized completed operation.
    horizon: usize,
    /// Index into `ops` of the first un-linearized completed operation.
    first_pending: usize,
    /// Index into `ops` of the first completed operation invoked after the horizon's response.
    /// Every linearized operation comes before it (it was invoked no later than some earlier,
    /// hence no later than the current, horizon), which bounds every scan of the linearized set.
    cut: usize,
    candidates: Vec<u32>,
    next: usize,
}

/// The configuration with the most completed operations linearized: where a human should look.
struct Deepest {
    linearized_completed: usize,
    value: u32,
    /// The earliest-responding operation not yet linearized there.
    stuck: u32,
    linearized: Vec<u64>,
    linearized_unknown: Vec<u64>,
    /// The operation that wrote the value, when the value is [`UNOBSERVED`] (to print the real one).
    writer: Option<u32>,
    /// The last few operations of the linearization prefix with the value (and writer) after each.
    tail: Vec<(u32, u32, Option<u32>)>,
}

enum Outcome {
    Linearizable,
    Stuck(Deepest),
    OutOfBudget(Deepest),
}

struct Search<'h> {
    h: &'h KeyHistory<'h>,
    /// Linearized completed operations (bit per index of `ops`).
    linearized: Vec<u64>,
    /// Linearized unknown-outcome operations (bit per index minus `h.completed`).
    linearized_unknown: Vec<u64>,
    linearized_completed: usize,
    visited: Visited,
    states: u64,
    budget: u64,
    deepest: Option<Deepest>,
}

impl<'h> Search<'h> {
    fn new(h: &'h KeyHistory<'h>, budget: u64) -> Self {
        Search {
            h,
            linearized: vec![0; h.completed.div_ceil(64)],
            linearized_unknown: vec![0; h.unknown().div_ceil(64)],
            linearized_completed: 0,
            visited: Visited::default(),
            states: 0,
            budget,
            deepest: None,
        }
    }

    fn toggle(&mut self, op: u32, on: bool) {
        let i = op as usize;
        if i < self.h.completed {
            flip(&mut self.linearized, i);
            if on {
                self.linearized_completed += 1;
            } else {
                self.linearized_completed -= 1;
            }
        } else {
            flip(&mut self.linearized_unknown, i - self.h.completed);
        }
    }

    /// Records a configuration; false if it (or one that dominates it) was seen before.
    fn visit(&mut self, frame: &Frame) -> bool {
        let start = frame.first_pending / 64;
        let mut end = frame.cut.div_ceil(64).max(start);
        while end > start && self.linearized[end - 1] == 0 {
            end -= 1;
        }
        let words = &self.linearized[start..end];
        let (first_pending, value, after_unknown) = (frame.first_pending, frame.value, frame.after_unknown);
        if !self.visited.insert(first_pending, value, after_unknown, words, &self.linearized_unknown) {
            return false;
        }
        self.states += 1;
        true
    }

    /// Fills `frame.candidates` with the operations that may come next and are consistent with
    /// the register value: those invoked no later than the earliest response among un-linearized
    /// completed operations (anything invoked after it must follow it).
    ///
    /// The order only affects speed: completed operations by response time (the one that must
    /// come first soonest is usually the right next one, which on a contended key backtracks
    /// several times less than invocation order), then the optional ones.
    fn fill_candidates(&self, frame: &mut Frame) {
        let h = self.h;
        let out = &mut frame.candidates;
        out.clear();
        frame.next = 0;
        let horizon = h.ops[h.by_completion[frame.horizon] as usize].completed.expect("completed op");
        // Plain index loops: the harness is built unoptimised, where iterator adapters in this,
        // the innermost loop of the search, cost several times more.
        let mut i = frame.first_pending;
        while i < frame.cut {
            let overwrites_optional = frame.after_unknown && matches!(h.ops[i].kind, Kind::Put { .. });
            if !bit(&self.linearized, i) && !overwrites_optional {
                let op = &h.ops[i];
                match op.apply(frame.value) {
                    Some(_) if op.is_read_only() => {
                        out.clear();
                        out.push(i as u32);
                        return;
                    }
                    Some(_) => out.push(i as u32),
                    None => {}
                }
            }
            i += 1;
        }
        out.sort_by_key(|&i| h.ops[i as usize].completed);
        let mut j = 0;
        while h.completed + j < h.ops.len() && h.ops[h.completed + j].invoked <= horizon {
            let op = &h.ops[h.completed + j];
            let skip = bit(&self.linearized_unknown, j)
                || (frame.after_unknown && op.is_blind_write())
                || h.previous_twin[j].is_some_and(|t| !bit(&self.linearized_unknown, t as usize));
            if !skip && op.apply(frame.value).is_some_and(|v| v != frame.value) {
                out.push((h.completed + j) as u32);
            }
            j += 1;
        }
    }

    /// Moves a frame's bounds forward after an operation was linearized (they only ever move
    /// forward along a path, so each scan resumes where the parent's stopped).
    fn advance(&self, frame: &mut Frame) {
        let h = self.h;
        while frame.horizon < h.completed && bit(&self.linearized, h.by_completion[frame.horizon] as usize) {
            frame.horizon += 1;
        }
        while frame.first_pending < h.completed && bit(&self.linearized, frame.first_pending) {
            frame.first_pending += 1;
        }
        if frame.horizon < h.completed {
            let horizon = h.ops[h.by_completion[frame.horizon] as usize].completed.expect("completed op");
            while frame.cut < h.completed && h.ops[frame.cut].invoked <= horizon {
                frame.cut += 1;
            }
        }
    }

    /// Which operation on the path up to `stack[k]` wrote the current value, if it is one of the
    /// merged unobserved ones: the explanation should name the real value.
    fn writer(&self, stack: &[Frame], k: usize) -> Option<u32> {
        if stack[k].value != UNOBSERVED {
            return None;
        }
        (1..=k).rev().map(|i| stack[i].op).zip((0..k).rev()).find_map(|(op, parent)| {
            match self.h.ops[op as usize].kind {
                Kind::Put { .. } => Some(op),
                Kind::Cas { expect, .. } if stack[parent].value == expect => Some(op),
                _ => None,
            }
        })
    }

    fn note_depth(&mut self, stack: &[Frame]) {
        if self.deepest.as_ref().is_some_and(|d| d.linearized_completed >= self.linearized_completed) {
            return;
        }
        let top = stack.last().expect("non-empty stack");
        let tail = (1..stack.len()).rev().take(5).rev().map(|k| (stack[k].op, stack[k].value, self.writer(stack, k)));
        let tail = tail.collect();
        self.deepest = Some(Deepest {
            writer: self.writer(stack, stack.len() - 1),
            linearized_completed: self.linearized_completed,
            value: top.value,
            stuck: self.h.by_completion[top.horizon],
            linearized: self.linearized.clone(),
            linearized_unknown: self.linearized_unknown.clone(),
            tail,
        });
    }

    fn run(&mut self) -> Outcome {
        let h = self.h;
        if h.completed == 0 {
            return Outcome::Linearizable;
        }
        let mut root = Frame {
            op: ROOT,
            value: ABSENT,
            after_unknown: false,
            horizon: 0,
            first_pending: 0,
            cut: 0,
            candidates: Vec::new(),
            next: 0,
        };
        self.advance(&mut root);
        self.visit(&root);
        self.fill_candidates(&mut root);
        let mut stack = vec![root];
        let mut spare: Vec<Vec<u32>> = Vec::new();
        self.note_depth(&stack);
        while let Some(top) = stack.last_mut() {
            let Some(&op) = top.candidates.get(top.next) else {
                let done = stack.pop().expect("non-empty stack");
                if done.op != ROOT {
                    self.toggle(done.op, false);
                }
                spare.push(done.candidates);
                continue;
            };
            top.next += 1;
            let mut frame = Frame {
                op,
                value: h.ops[op as usize].apply(top.value).expect("candidates are consistent"),
                after_unknown: op as usize >= h.completed,
                horizon: top.horizon,
                first_pending: top.first_pending,
                cut: top.cut,
                candidates: spare.pop().unwrap_or_default(),
                next: 0,
            };
            self.toggle(op, true);
            self.advance(&mut frame);
            if frame.horizon == h.completed {
                return Outcome::Linearizable;
            }
            self.fill_candidates(&mut frame);
            // A dead end is not worth a memo entry (finding its candidates again is as cheap as a
            // lookup), but it may be the deepest point, which the explanation wants.
            let dead_end = frame.candidates.is_empty();
            if dead_end || !self.visit(&frame) {
                if dead_end && self.linearized_completed > self.deepest.as_ref().map_or(0, |d| d.linearized_completed) {
                    stack.push(frame);
                    self.note_depth(&stack);
                    frame = stack.pop().expect("just pushed");
                }
                spare.push(frame.candidates);
                self.toggle(op, false);
                continue;
            }
            stack.push(frame);
            self.note_depth(&stack);
            if self.states >= self.budget {
                return Outcome::OutOfBudget(self.deepest.take().expect("recorded at the root"));
            }
        }
        Outcome::Stuck(self.deepest.take().expect("recorded at the root"))
    }
}

// ---------------------------------------------------------------------------------------------
// Explanations.

/// Values can be long (serialized protobufs in some tests); a prefix is enough to tell them apart.
fn show(value: &str) -> String {
    const MAX: usize = 40;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let prefix: String = value.chars().take(MAX - 3).collect();
        format!("{:?}...", prefix)
    }
}

fn describe_call(call: &Call) -> String {
    match call {
        Call::Put { value, .. } => format!("put {}", show(value)),
        Call::Get { .. } => "get".to_string(),
        Call::Delete { .. } => "delete".to_string(),
        Call::Cas { expect, new, .. } => {
            let expect = expect.as_deref().map_or_else(|| "absent".to_string(), show);
            format!("cas if {expect} then put {}", show(new))
        }
    }
}

fn describe_ret(ret: &Ret) -> String {
    match ret {
        Ret::Put => "ok".to_string(),
        Ret::Get(v) => v.as_deref().map_or_else(|| "absent".to_string(), show),
        Ret::Delete { deleted } => format!("deleted {deleted}"),
        Ret::Cas { succeeded: true } => "succeeded".to_string(),
        Ret::Cas { succeeded: false } => "failed".to_string(),
    }
}

struct Report<'a> {
    h: &'a KeyHistory<'a>,
    history: &'a [Entry],
    origin: u64,
}

impl Report<'_> {
    fn ms(&self, t: u64) -> String {
        format!("{:.3}ms", t.saturating_sub(self.origin) as f64 / 1e6)
    }

    fn value(&self, value: u32, writer: Option<u32>) -> String {
        let written = writer.map(|w| &self.history[self.h.ops[w as usize].entry].call);
        match written {
            Some(Call::Put { value: v, .. } | Call::Cas { new: v, .. }) if value == UNOBSERVED => {
                format!("{} (which no operation observes)", show(v))
            }
            _ => self.h.value(value),
        }
    }

    fn describe(&self, op: u32) -> String {
        let op = &self.h.ops[op as usize];
        let e = &self.history[op.entry];
        let (ret, done) = match &e.completed {
            Some((t, ret)) => (describe_ret(ret), self.ms(*t)),
            None => ("? (outcome unknown)".to_string(), "?".to_string()),
        };
        format!("client {}: {} -> {}  [{} .. {}]", e.client, describe_call(&e.call), ret, self.ms(e.invoked), done)
    }

    /// The prefix that could be linearized and the operations around the first one that could not.
    fn context(&self, d: &Deepest) -> String {
        use fmt::Write;
        let h = self.h;
        let mut s = String::new();
        let total = h.completed;
        let unknown = h.unknown();
        let _ = writeln!(
            s,
            "{total} completed and {unknown} unknown-outcome operations on this key; the longest linearizable \
             prefix found holds {} of the completed ones.",
            d.linearized_completed
        );
        if d.tail.is_empty() {
            let _ = writeln!(s, "Not even the first operation fits: the key starts absent.");
        } else {
            let _ = writeln!(s, "That prefix ends with (oldest first, value after each):");
            for &(op, value, writer) in &d.tail {
                let _ = writeln!(s, "    {}   => {}", self.describe(op), self.value(value, writer));
            }
        }
        let _ = writeln!(s, "Value at that point: {}.", self.value(d.value, d.writer));
        let stuck = &h.ops[d.stuck as usize];
        let stuck_done = stuck.completed.expect("stuck op is completed");
        let _ = writeln!(
            s,
            "Stuck at the earliest-responding operation not in the prefix; no order of the operations \
             concurrent with it works:\n    {}",
            self.describe(d.stuck)
        );
        let mut window: Vec<u32> = (0..h.ops.len() as u32)
            .filter(|&i| {
                let o = &h.ops[i as usize];
                o.invoked <= stuck_done && o.completed.is_none_or(|c| c >= stuck.invoked)
            })
            .collect();
        const MAX_WINDOW: usize = 30;
        let omitted = window.len().saturating_sub(MAX_WINDOW);
        if omitted > 0 {
            window.sort_by_key(|&i| h.ops[i as usize].invoked.abs_diff(stuck.invoked));
            window.truncate(MAX_WINDOW);
        }
        window.sort_by_key(|&i| (h.ops[i as usize].invoked, i));
        let _ = writeln!(
            s,
            "Operations on this key overlapping it in time (\"in prefix\": linearized before the stuck point; \
             \"next?\": could have come next):"
        );
        for i in window {
            let o = &h.ops[i as usize];
            let in_prefix = if (i as usize) < h.completed {
                bit(&d.linearized, i as usize)
            } else {
                bit(&d.linearized_unknown, i as usize - h.completed)
            };
            let (mark, note) = if in_prefix {
                ("in prefix", String::new())
            } else if o.invoked <= stuck_done {
                match o.apply(d.value) {
                    None => {
                        ("next?    ", format!("   <- impossible when the value is {}", self.value(d.value, d.writer)))
                    }
                    Some(_) => ("next?    ", String::new()),
                }
            } else {
                ("         ", String::new())
            };
            let _ = writeln!(s, "  {mark} {}{note}", self.describe(i));
        }
        if omitted > 0 {
            let _ = writeln!(s, "  ({omitted} more overlapping operations not shown)");
        }
        s
    }

    fn stuck(&self, d: &Deepest, states: u64) -> String {
        format!("{}({states} search states explored on this key)", self.context(d))
    }

    fn out_of_budget(&self, d: &Deepest, states: u64, budget: u64) -> String {
        format!(
            "the search budget of {budget} states ran out on key {:?} after {states} states on this key, \
             without finding a linearization or proving there is none (too many concurrent operations; \
             raise the budget with check_with_budget or record a less concurrent history).\n\
             Deepest point reached:\n{}",
            self.h.key,
            self.context(d)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    const MS: u64 = 1_000_000;

    fn entry(client: usize, call: Call, invoked: u64, completed: u64, ret: Ret) -> Entry {
        Entry { client, call, invoked: invoked * MS, completed: Some((completed * MS, ret)) }
    }

    fn put(client: usize, key: &str, value: &str, invoked: u64, completed: u64) -> Entry {
        let call = Call::Put { key: key.into(), value: value.into() };
        entry(client, call, invoked, completed, Ret::Put)
    }

    fn get(client: usize, key: &str, observed: Option<&str>, invoked: u64, completed: u64) -> Entry {
        entry(client, Call::Get { key: key.into() }, invoked, completed, Ret::Get(observed.map(Into::into)))
    }

    fn del(client: usize, key: &str, deleted: u64, invoked: u64, completed: u64) -> Entry {
        entry(client, Call::Delete { key: key.into() }, invoked, completed, Ret::Delete { deleted })
    }

    fn cas(
        client: usize,
        key: &str,
        expect: Option<&str>,
        new: &str,
        succeeded: bool,
        invoked: u64,
        completed: u64,
    ) -> Entry {
        let call = Call::Cas { key: key.into(), expect: expect.map(Into::into), new: new.into() };
        entry(client, call, invoked, completed, Ret::Cas { succeeded })
    }

    fn unknown(mut e: Entry) -> Entry {
        e.completed = None;
        e
    }

    fn violation(history: &[Entry]) -> Violation {
        let v = check(history).expect_err("history must be rejected");
        assert!(!v.budget_exhausted(), "expected a real violation, got: {v}");
        v
    }

    #[test]
    fn sequential_legal_history_passes() {
        let h = vec![
            get(0, "k", None, 0, 1),
            put(0, "k", "a", 2, 3),
            get(1, "k", Some("a"), 4, 5),
            cas(1, "k", Some("a"), "b", true, 6, 7),
            cas(0, "k", Some("a"), "c", false, 8, 9),
            get(0, "k", Some("b"), 10, 11),
            del(1, "k", 1, 12, 13),
            get(0, "k", None, 14, 15),
            cas(0, "k", None, "d", true, 16, 17),
            get(1, "k", Some("d"), 18, 19),
        ];
        let stats = check(&h).unwrap();
        assert_eq!(stats, CheckStats { keys: 1, operations: 10, states_explored: stats.states_explored });
        assert!(stats.states_explored >= 1);
    }

    #[test]
    fn stale_read_fails() {
        let h = vec![put(0, "k", "old", 0, 1), put(0, "k", "new", 2, 3), get(1, "k", Some("old"), 4, 5)];
        let v = violation(&h);
        assert_eq!(v.key, "k");
        // The explanation must point at the offending read and the value it should have seen.
        assert!(v.explanation.contains("client 1: get -> \"old\""), "{v}");
        assert!(v.explanation.contains("Value at that point: \"new\""), "{v}");
        assert!(v.explanation.contains("4.000ms .. 5.000ms"), "{v}");
        assert!(v.to_string().starts_with("linearizability violation on key \"k\""), "{v}");
    }

    #[test]
    fn overlapping_operations_may_be_ordered_either_way() {
        // Two overlapping puts: reads after both may see either, but all later reads the same one.
        for winner in ["a", "b"] {
            let h = vec![
                put(0, "k", "a", 0, 10),
                put(1, "k", "b", 5, 15),
                get(2, "k", Some(winner), 20, 21),
                get(3, "k", Some(winner), 22, 23),
            ];
            check(&h).unwrap();
        }
        // A read overlapping a put may see the old or the new value ...
        for seen in [None, Some("a")] {
            check(&[put(0, "k", "a", 0, 10), get(1, "k", seen, 2, 8)]).unwrap();
        }
        // ... but once one read saw the new value, a later read may not see the old one.
        let h = vec![put(0, "k", "a", 0, 10), get(1, "k", Some("a"), 1, 2), get(2, "k", None, 3, 4)];
        violation(&h);
        // And two sequential reads after both puts cannot disagree.
        let h = vec![
            put(0, "k", "a", 0, 10),
            put(1, "k", "b", 5, 15),
            get(2, "k", Some("a"), 20, 21),
            get(3, "k", Some("b"), 22, 23),
        ];
        violation(&h);
    }

    #[test]
    fn lost_write_fails() {
        let h = vec![put(0, "k", "a", 0, 1), get(1, "k", Some("a"), 2, 3), get(1, "k", None, 4, 5)];
        let v = violation(&h);
        assert!(v.explanation.contains("client 1: get -> absent"), "{v}");
        // The same with the write never read: a later absent read is still a lost write.
        violation(&[put(0, "k", "a", 0, 1), get(1, "k", None, 2, 3)]);
    }

    #[test]
    fn cas_semantics() {
        // Two concurrent Cas with the same expectation cannot both succeed.
        let base = put(0, "k", "a", 0, 1);
        let both =
            vec![base.clone(), cas(1, "k", Some("a"), "x", true, 2, 10), cas(2, "k", Some("a"), "y", true, 3, 11)];
        violation(&both);
        // One winner, one loser, and the value the winner wrote.
        let one = vec![
            base.clone(),
            cas(1, "k", Some("a"), "x", false, 2, 10),
            cas(2, "k", Some("a"), "y", true, 3, 11),
            get(0, "k", Some("y"), 12, 13),
        ];
        check(&one).unwrap();
        // The loser's value must not appear.
        let mut wrong = one.clone();
        wrong[3] = get(0, "k", Some("x"), 12, 13);
        violation(&wrong);
        // "Create if absent": only one of two concurrent creators wins.
        let creators = vec![cas(1, "k", None, "x", true, 0, 10), cas(2, "k", None, "y", true, 1, 11)];
        violation(&creators);
        let creators = vec![cas(1, "k", None, "x", true, 0, 10), cas(2, "k", None, "y", false, 1, 11)];
        check(&creators).unwrap();
        // A failing Cas on an absent key with a value expectation is fine; a succeeding one is not.
        check(&[cas(0, "k", Some("a"), "b", false, 0, 1)]).unwrap();
        violation(&[cas(0, "k", Some("a"), "b", true, 0, 1)]);
    }

    #[test]
    fn delete_counts() {
        check(&[del(0, "k", 0, 0, 1), put(0, "k", "a", 2, 3), del(0, "k", 1, 4, 5), get(0, "k", None, 6, 7)]).unwrap();
        violation(&[del(0, "k", 1, 0, 1)]);
        violation(&[put(0, "k", "a", 0, 1), del(0, "k", 0, 2, 3)]);
        violation(&[put(0, "k", "a", 0, 1), del(0, "k", 2, 2, 3)]);
        // Two concurrent deletes of one present key: exactly one deletes it.
        violation(&[put(0, "k", "a", 0, 1), del(1, "k", 1, 2, 10), del(2, "k", 1, 3, 11)]);
        check(&[put(0, "k", "a", 0, 1), del(1, "k", 1, 2, 10), del(2, "k", 0, 3, 11)]).unwrap();
    }

    #[test]
    fn unknown_outcome_put_later_observed_passes() {
        let h = vec![
            put(0, "k", "a", 0, 1),
            unknown(put(1, "k", "lost?", 2, 3)),
            get(2, "k", Some("a"), 10, 11),
            get(2, "k", Some("lost?"), 20, 21),
            get(0, "k", Some("lost?"), 30, 31),
        ];
        check(&h).unwrap();
        // Its effect is permanent once seen: seeing the older value again is a violation.
        let mut h2 = h.clone();
        h2.push(get(0, "k", Some("a"), 40, 41));
        violation(&h2);
        // And it cannot be seen before it was invoked.
        let h3 = vec![get(2, "k", Some("early"), 0, 1), unknown(put(1, "k", "early", 2, 3))];
        violation(&h3);
    }

    #[test]
    fn unknown_outcome_put_never_observed_passes() {
        let h = vec![
            put(0, "k", "a", 0, 1),
            unknown(put(1, "k", "lost", 2, 3)),
            get(2, "k", Some("a"), 10, 11),
            get(2, "k", Some("a"), 20, 21),
            unknown(get(3, "k", Some("garbage"), 22, 23)),
            unknown(del(1, "k", 1, 24, 25)),
            unknown(cas(0, "k", Some("nope"), "z", true, 26, 27)),
            get(0, "k", Some("a"), 30, 31),
        ];
        let stats = check(&h).unwrap();
        assert_eq!(stats.operations, 7, "the unknown read is dropped");
    }

    #[test]
    fn unknown_outcome_cas_and_delete_may_take_effect() {
        let h = vec![
            put(0, "k", "a", 0, 1),
            unknown(cas(1, "k", Some("a"), "b", true, 2, 3)),
            get(2, "k", Some("b"), 10, 11),
            unknown(del(1, "k", 1, 12, 13)),
            get(2, "k", None, 20, 21),
        ];
        check(&h).unwrap();
        // An unknown Cas only takes effect if its comparison holds.
        let h = vec![
            put(0, "k", "a", 0, 1),
            unknown(cas(1, "k", Some("other"), "b", true, 2, 3)),
            get(2, "k", Some("b"), 10, 11),
        ];
        violation(&h);
    }

    #[test]
    fn identical_unknown_operations_each_take_effect_at_most_once() {
        // Two retried deletes whose outcomes were lost, both needed: one before each absent read.
        let mut h = vec![
            put(0, "k", "a", 0, 1),
            unknown(del(1, "k", 1, 2, 3)),
            unknown(del(2, "k", 1, 2, 3)),
            get(0, "k", None, 10, 11),
            put(0, "k", "b", 12, 13),
            get(0, "k", None, 14, 15),
        ];
        check(&h).unwrap();
        // With only one of them, the second absent read has no explanation.
        h.remove(2);
        violation(&h);
    }

    #[test]
    fn keys_are_independent() {
        // Interleaved operations on two keys that would clash if they shared one register.
        let h = vec![
            put(0, "a", "1", 0, 1),
            get(1, "b", None, 2, 3),
            put(1, "b", "2", 4, 5),
            get(0, "a", Some("1"), 6, 7),
            get(0, "b", Some("2"), 8, 9),
        ];
        let stats = check(&h).unwrap();
        assert_eq!((stats.keys, stats.operations), (2, 5));
        // A violation on one key is reported under that key, not the other.
        let mut bad = h.clone();
        bad.push(get(2, "b", None, 10, 11));
        assert_eq!(violation(&bad).key, "b");
    }

    #[test]
    fn malformed_entries_are_reported() {
        let mismatch = entry(0, Call::Get { key: "k".into() }, 0, 1, Ret::Put);
        assert!(violation(&[mismatch]).explanation.contains("does not match"));
        let backwards = put(0, "k", "a", 5, 4);
        assert!(violation(&[backwards]).explanation.contains("completed before it was invoked"));
    }

    #[test]
    fn budget_exhaustion_is_distinct() {
        let h = generate(7, 400, 1, 8, 0);
        check(&h).unwrap();
        let v = check_with_budget(&h, 10).expect_err("10 states cannot cover 400 operations");
        assert!(v.budget_exhausted());
        assert!(v.explanation.contains("budget of 10 states ran out"), "{v}");
        assert!(v.to_string().contains("inconclusive"), "{v}");
    }

    // -- Randomized histories ------------------------------------------------------------------

    /// Marsaglia's xorshift64: deterministic across platforms and dependency versions, so a
    /// failing seed reproduces forever.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A linearizable history by construction: each client issues operations back to back with
    /// random durations and gaps; every operation takes effect at a random instant within its
    /// interval and the results are computed by applying the effects in that order. Unknown-outcome
    /// writes (`unknown_permille`) take effect or not with equal probability.
    fn generate(seed: u64, ops: usize, keys: usize, clients: usize, unknown_permille: u64) -> Vec<Entry> {
        struct Planned {
            entry: Entry,
            effect_at: Option<u64>,
        }
        let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut clock = vec![0u64; clients];
        let mut written: Vec<Vec<String>> = vec![Vec::new(); keys];
        let mut planned = Vec::with_capacity(ops);
        for n in 0..ops {
            let client = n % clients;
            let key_index = rng.below(keys as u64) as usize;
            let key = format!("key{key_index}");
            let invoked = clock[client] + rng.below(20);
            let duration = 1 + rng.below(60);
            let completed = invoked + duration;
            let effect = invoked + rng.below(duration + 1);
            clock[client] = completed;
            let fresh = format!("v{n}");
            let call = match rng.below(100) {
                0..35 => Call::Get { key },
                35..65 => Call::Put { key, value: fresh.clone() },
                65..75 => Call::Delete { key },
                _ => {
                    let recent = &written[key_index];
                    let pick = rng.below(4) as usize;
                    let expect = (pick < recent.len()).then(|| recent[recent.len() - 1 - pick].clone());
                    Call::Cas { key, expect, new: fresh.clone() }
                }
            };
            if !matches!(call, Call::Get { .. } | Call::Delete { .. }) {
                written[key_index].push(fresh);
            }
            let known = rng.below(1000) >= unknown_permille;
            let effect_at = if known || rng.below(2) == 0 { Some(effect * 1000) } else { None };
            // A known outcome carries a placeholder result, filled in by the replay below.
            let completed = known.then_some((completed * 1000, Ret::Put));
            planned.push(Planned { entry: Entry { client, call, invoked: invoked * 1000, completed }, effect_at });
        }
        let mut order: Vec<usize> = (0..ops).filter(|&i| planned[i].effect_at.is_some()).collect();
        order.sort_by_key(|&i| (planned[i].effect_at, i));
        let mut store: HashMap<String, String> = HashMap::new();
        for i in order {
            let e = &mut planned[i].entry;
            let ret = match &e.call {
                Call::Put { key, value } => {
                    store.insert(key.clone(), value.clone());
                    Ret::Put
                }
                Call::Get { key } => Ret::Get(store.get(key).cloned()),
                Call::Delete { key } => Ret::Delete { deleted: u64::from(store.remove(key).is_some()) },
                Call::Cas { key, expect, new } => {
                    let succeeded = store.get(key) == expect.as_ref();
                    if succeeded {
                        store.insert(key.clone(), new.clone());
                    }
                    Ret::Cas { succeeded }
                }
            };
            if let Some((_, r)) = &mut e.completed {
                *r = ret;
            }
        }
        planned.into_iter().map(|p| p.entry).collect()
    }

    /// Replaces the result of a read roughly in the middle of the history with a value nobody
    /// wrote; returns its key.
    fn corrupt_a_read(history: &mut [Entry]) -> String {
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i], Entry { call: Call::Get { .. }, completed: Some(_), .. }))
            .collect();
        let victim = &mut history[reads[reads.len() / 2]];
        victim.completed.as_mut().unwrap().1 = Ret::Get(Some("never written".into()));
        victim.call.key().to_string()
    }

    #[test]
    fn randomized_linearizable_history_passes_and_corruption_fails() {
        let mut history = generate(1, 2000, 5, 12, 10);
        assert!(history.iter().any(|e| e.completed.is_none()), "some unknown outcomes");
        let started = Instant::now();
        let stats = check(&history).unwrap_or_else(|v| panic!("{v}"));
        let pass_time = started.elapsed();
        assert_eq!(stats.keys, 5);
        assert!(stats.operations > 1900, "{stats:?}");
        // Roughly one configuration per operation: the search barely backtracks.
        assert!(stats.states_explored < 10 * stats.operations as u64, "{stats:?}");

        let key = corrupt_a_read(&mut history);
        let started = Instant::now();
        let v = check(&history).expect_err("a read of a value never written");
        let fail_time = started.elapsed();
        assert!(!v.budget_exhausted(), "{v}");
        assert_eq!(v.key, key);
        assert!(v.explanation.contains("\"never written\""), "{v}");
        eprintln!("randomized: pass {pass_time:?} ({stats:?}), refutation {fail_time:?}\n{v}");
    }

    #[test]
    fn randomized_histories_over_many_seeds() {
        // Smaller histories, many shapes: one hot key with 16 clients, or several keys.
        for seed in 0..40 {
            let keys = 1 + (seed % 4) as usize;
            let mut history = generate(seed, 300, keys, 16, 30);
            let stats = check(&history).unwrap_or_else(|v| panic!("seed {seed}: {v}"));
            // One hot key with 16 clients backtracks up to ~30 states per operation on these seeds;
            // an exponential blow-up would be orders of magnitude more.
            assert!(stats.states_explored < 100 * stats.operations as u64, "seed {seed}: {stats:?}");
            let key = corrupt_a_read(&mut history);
            let v = check(&history).expect_err("corrupted read");
            assert!(!v.budget_exhausted(), "seed {seed}: {v}");
            assert_eq!(v.key, key, "seed {seed}");
        }
    }

    // -- Cross-check against exhaustive enumeration ---------------------------------------------

    /// The definition, executed literally: try every order that respects real time, with every
    /// unknown-outcome operation either placed somewhere after its invocation or left out. Only
    /// usable on a handful of operations, which is the point: it shares none of the search's
    /// shortcuts (memoization, greedy reads, merged values, optional-operation pruning).
    fn brute_force(history: &[Entry]) -> bool {
        fn apply(value: &Option<String>, e: &Entry) -> Option<Option<String>> {
            let ret = e.completed.as_ref().map(|(_, r)| r);
            match (&e.call, ret) {
                (Call::Put { value: v, .. }, _) => Some(Some(v.clone())),
                (Call::Get { .. }, Some(Ret::Get(seen))) => (seen == value).then(|| value.clone()),
                (Call::Delete { .. }, Some(Ret::Delete { deleted })) => {
                    (*deleted == u64::from(value.is_some())).then_some(None)
                }
                (Call::Delete { .. }, None) => Some(None),
                (Call::Cas { expect, new, .. }, ret) => {
                    let matches = value == expect;
                    match ret {
                        Some(Ret::Cas { succeeded }) if *succeeded != matches => None,
                        _ => Some(if matches { Some(new.clone()) } else { value.clone() }),
                    }
                }
                _ => unreachable!("generated histories are well formed"),
            }
        }
        fn search(ops: &[&Entry], used: &mut Vec<bool>, value: &Option<String>) -> bool {
            let pending = |j: usize, used: &[bool]| !used[j] && ops[j].completed.is_some();
            if !(0..ops.len()).any(|j| pending(j, used)) {
                return true;
            }
            for i in 0..ops.len() {
                let blocked =
                    (0..ops.len()).any(|j| pending(j, used) && ops[j].completed.as_ref().unwrap().0 < ops[i].invoked);
                if used[i] || blocked {
                    continue;
                }
                if let Some(next) = apply(value, ops[i]) {
                    used[i] = true;
                    if search(ops, used, &next) {
                        return true;
                    }
                    used[i] = false;
                }
            }
            false
        }
        let keys: std::collections::BTreeSet<&str> = history.iter().map(|e| e.call.key()).collect();
        keys.into_iter().all(|key| {
            let ops: Vec<&Entry> = history
                .iter()
                .filter(|e| e.call.key() == key && !(matches!(e.call, Call::Get { .. }) && e.completed.is_none()))
                .collect();
            search(&ops, &mut vec![false; ops.len()], &None)
        })
    }

    /// Up to 7 operations on at most 2 keys with values drawn from three, so that values repeat,
    /// `Delete` and `Put` re-create each other's states and unknown outcomes are frequent. Half of
    /// the histories come out of a simulated register; half of those get one result perturbed.
    fn small_history(rng: &mut XorShift) -> Vec<Entry> {
        const VALUES: [&str; 3] = ["a", "b", "c"];
        let n = 1 + rng.below(7) as usize;
        let keys = 1 + rng.below(2);
        let pick = |rng: &mut XorShift| match rng.below(4) {
            0 => None,
            i => Some(VALUES[i as usize - 1].to_string()),
        };
        let mut planned = Vec::new();
        for client in 0..n {
            let key = format!("k{}", rng.below(keys));
            let call = match rng.below(4) {
                0 => Call::Get { key },
                1 => Call::Put { key, value: VALUES[rng.below(3) as usize].into() },
                2 => Call::Delete { key },
                _ => Call::Cas { key, expect: pick(rng), new: VALUES[rng.below(3) as usize].into() },
            };
            let invoked = rng.below(12);
            let completed = invoked + rng.below(8);
            let effect = invoked + rng.below(completed - invoked + 1);
            let known = rng.below(5) != 0;
            planned.push((Entry { client, call, invoked, completed: known.then_some((completed, Ret::Put)) }, effect));
        }
        let simulate = rng.below(2) == 0;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (planned[i].1, i));
        let mut store: HashMap<String, String> = HashMap::new();
        for i in order {
            let e = &mut planned[i].0;
            let takes_effect = e.completed.is_some() || rng.below(2) == 0;
            let ret = match &e.call {
                Call::Put { key, value } => {
                    if takes_effect {
                        store.insert(key.clone(), value.clone());
                    }
                    Ret::Put
                }
                Call::Get { key } => Ret::Get(if simulate { store.get(key).cloned() } else { pick(rng) }),
                Call::Delete { key } => {
                    let present = if takes_effect { store.remove(key).is_some() } else { store.contains_key(key) };
                    Ret::Delete { deleted: if simulate { u64::from(present) } else { rng.below(2) } }
                }
                Call::Cas { key, expect, new } => {
                    let succeeded = store.get(key) == expect.as_ref();
                    if succeeded && takes_effect {
                        store.insert(key.clone(), new.clone());
                    }
                    Ret::Cas { succeeded: if simulate { succeeded } else { rng.below(2) == 0 } }
                }
            };
            if let Some((_, r)) = &mut e.completed {
                *r = ret;
            }
        }
        let mut history: Vec<Entry> = planned.into_iter().map(|(e, _)| e).collect();
        if simulate && rng.below(2) == 0 {
            let victim = &mut history[rng.below(n as u64) as usize];
            if let Some((_, r)) = &mut victim.completed {
                *r = match r {
                    Ret::Put => Ret::Put,
                    Ret::Get(_) => Ret::Get(pick(rng)),
                    Ret::Delete { deleted } => Ret::Delete { deleted: 1 - *deleted },
                    Ret::Cas { succeeded } => Ret::Cas { succeeded: !*succeeded },
                };
            }
        }
        history
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let mut rng = XorShift(0x5eed);
        let (mut accepted, mut rejected) = (0, 0);
        for round in 0..20_000 {
            let history = small_history(&mut rng);
            let expected = brute_force(&history);
            let got = check(&history);
            assert_eq!(
                got.is_ok(),
                expected,
                "round {round}: {history:#?}
{got:?}"
            );
            if expected {
                accepted += 1;
            } else {
                rejected += 1;
            }
        }
        // Both verdicts must be well represented for the comparison to mean anything.
        assert!(accepted > 4000 && rejected > 4000, "accepted {accepted}, rejected {rejected}");
    }

    // -- The recorder --------------------------------------------------------------------------

    #[test]
    fn history_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<History>();
        shared::<Ticket>();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn history_records_concurrent_tasks() {
        // A toy linearizable store (one mutex) driven by many tasks: what they record must pass.
        let history = Arc::new(History::new());
        let store = Arc::new(Mutex::new(HashMap::<String, String>::new()));
        let mut tasks = Vec::new();
        for client in 0..8 {
            let (history, store) = (history.clone(), store.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0..50 {
                    let key = format!("k{}", n % 3);
                    let call = if (n + client) % 2 == 0 {
                        Call::Put { key: key.clone(), value: format!("{client}-{n}") }
                    } else {
                        Call::Get { key: key.clone() }
                    };
                    let ticket = history.invoke(client, call.clone());
                    tokio::task::yield_now().await;
                    let ret = {
                        let mut store = store.lock().unwrap();
                        match call {
                            Call::Put { key, value } => {
                                store.insert(key, value);
                                Ret::Put
                            }
                            _ => Ret::Get(store.get(&key).cloned()),
                        }
                    };
                    tokio::task::yield_now().await;
                    if n == 49 {
                        history.unknown(ticket);
                    } else {
                        history.complete(ticket, ret);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let entries = history.entries();
        assert_eq!(entries.len(), 400);
        assert_eq!(entries.iter().filter(|e| e.completed.is_none()).count(), 8);
        assert!(entries.iter().all(|e| e.completed.as_ref().is_none_or(|(t, _)| *t >= e.invoked)));
        let stats = check(&entries).unwrap_or_else(|v| panic!("{v}"));
        assert_eq!(stats.keys, 3);
    }
}
