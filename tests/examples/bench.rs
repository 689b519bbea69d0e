//! Write and read throughput, latency and CPU cost: stock etcd used directly, stock etcd behind one
//! bftcd sidecar, a 4-bank BFTcd chain (HotStuff-2) and a 3-member stock etcd Raft cluster,
//! measured in the same run on the same machine (design.md §7: ratios, never absolute numbers).
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p bftcd-tests --example bench -- [--ops N] [--clients 64[,256...]]
//!     [--duration 10] [--value-size 256] [--targets direct,sidecar[,bft4][,raft3][,bft4-crash,bft4-cut,bft4-withhold,bft4-novote]]
//!     [--workload put,txn,range-lin,range-ser,mixed|both|all] [--range-keys 1000]
//!     [--op-timeout 10] [--check-perf s|m|l|xl] [--sidecar-arg ARG]... [--keep] [--rounds 3] [--trace-writes 50]
//! ```
//!
//! Targets (all started up front, so every phase runs under the same conditions):
//! - `direct`: one stock etcd, used directly;
//! - `sidecar`: one stock etcd behind one `bftcd serve` (single bank, n = 1);
//! - `bft4`: four banks (stock etcd + sidecar each) ordering with HotStuff-2, keys and genesis made
//!   by the real `bftcd keygen` / `bftcd genesis`; client `i` talks to bank `i mod 4`;
//! - `bft7`: the same with seven banks (f = 2);
//! - `raft3` (alias `cluster3`): a 3-member stock etcd Raft cluster; client `i` talks to member
//!   `i mod 3`.
//! - fault targets, each a four-bank chain of its own (files prefixed with the target's name) with
//!   bank 4 faulty from right after the start, and clients on banks 1-3 only (client `i` talks to
//!   bank `i mod 3`); the ratios `bft4-<fault> / bft4` show what one faulty bank costs:
//!   - `bft4-crash`: bank 4's sidecar killed (-9);
//!   - `bft4-cut`: bank 4 cut off its peers with iptables (its peer port, and, from a cgroup of
//!     its own, its own dials; see `bftcd_tests::netcut`); needs root; the cut is healed when the
//!     bench ends, also on Ctrl-C or a panic (a `kill -9` leaves rules that the next cut sweeps);
//!   - `bft4-withhold` / `bft4-novote`: bank 4 runs the Byzantine test build with
//!     `--byzantine=withhold` (never sends its proposals) / `no-votes` (never votes), found at
//!     `target/byzantine/release/bftcd` (`cargo build --release -p bftcd-proxy --features
//!     byzantine --target-dir target/byzantine`) or `BFTCD_BYZANTINE_BIN`.
//!
//! Workloads (`--workload`: a comma list; `both` = `put,txn`, the default; `all` = all five):
//! - `put`: a Put of a `--value-size` (256-byte) value, on distinct keys;
//! - `txn`: the conditional create kube-apiserver issues for every new object, on distinct keys:
//!   `Txn If ModRevision(key) == 0 Then Put(key, value) Else Get(key)`;
//! - `range-lin`: a linearizable (default consistency) Range (Get) of one existing key, picked at
//!   random among `--range-keys` (1000) keys of `--value-size` bytes;
//! - `range-ser`: the same with serializable consistency;
//! - `mixed`: what a Kubernetes control plane mostly does, reads with some writes: of every ten
//!   operations, nine linearizable Gets and one Put, all on the preloaded keys (so the writes
//!   keep the read-index rounds busy with fresh heights).
//!
//! Before the first range phase on a target, the `--range-keys` keys are written through it by 16
//! concurrent clients (not timed) and the benchmark waits until every endpoint of the target
//! serves all of them (serializable count); `range-lin` and `range-ser` read the same keys.
//!
//! With `--trace-writes N` it runs no phases: it sends N Puts one at a time (30 ms apart, so the
//! chain is idle each time) through bank 1 of each bft target, with the sidecars' `bftcd::trace`
//! events on, and prints the median write's timeline step by step across the banks (what each
//! step received, how long its consensus code and its disk writes took, what it sent) and the
//! medians of what a write cost in all banks together.
//!
//! With `--rounds N` every phase runs N times, the targets interleaved (bft4, raft3, bft4, raft3,
//! ...) so that a slow minute of this machine hits both; the tables then show every round, and
//! the CPU table and the ratios use the median of the rounds for each figure.
//!
//! For every workload × target it runs these phases, each ending after `--ops` operations or
//! `--duration` seconds, whichever comes first (operations still in flight get at most 5 s more):
//! - `sequential`: one client, one operation at a time;
//! - `concurrent`: once per client count of `--clients` (e.g. `--clients 64,256`): that many
//!   clients, each with its own connection, one operation at a time each.
//!
//! During every phase it reads utime+stime of the target's processes from `/proc/<pid>/stat`, split
//! into sidecar and etcd processes, and reports CPU-ms per 1000 committed operations. The bft
//! targets' sidecars run with `--account-cpu`: their `/metrics` are read before and after every
//! phase for a table of sidecar CPU by component (consensus, crypto, network, persistence, apply,
//! front, and what none claims). It prints progress every 2 s, a results table, a CPU table (both
//! with workload and client count in every row), the component table, the sidecar/direct and
//! bft4/raft3 ratios per workload, phase and client count, the `bft4-<fault> / bft4` ratios of the
//! fault targets and, last, one JSON line with everything (ratio keys: `sequential`,
//! `concurrent-<clients>`; the fault ratios under `ratio_fault_over_bft4.<target>`).
//!
//! With `--check-perf LOAD`, after all phases it runs the stock `etcdctl check perf --load LOAD`
//! (about 60 s each, keys under `/etcdctl-check-perf/`, deleted by etcdctl afterwards) against all
//! client endpoints of each target in turn, prints etcdctl's output prefixed with
//! `[check-perf/<target>]`, and reports PASS (exit status 0 and a final `PASS` line) or FAIL per
//! target in the summary and in the JSON line (`check_perf`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bftcd_tests::netcut::{self, Cgroup, NetCut};
use bftcd_tests::sidecar::BANK_ETCD_ARGS;
use bftcd_tests::{bins, Chain, Deviant, EtcdCluster, EtcdProcess, Etcdctl, Sidecar, TestDir};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// How long operations still in flight at the end of a phase may take before they are abandoned
/// (and counted as errors).
const PHASE_GRACE: Duration = Duration::from_secs(5);

/// Concurrent clients writing the keys the range workloads read (not timed).
const PRELOAD_CLIENTS: usize = 16;

/// Prefix of the keys the range workloads read.
const RANGE_PREFIX: &str = "bench/range/";

/// How long the preloaded keys may take to be visible at every endpoint of a target.
const PRELOAD_VISIBLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Hard limit of one `etcdctl check perf` run (it runs 60 s plus setup and cleanup).
const CHECK_PERF_TIMEOUT: Duration = Duration::from_secs(180);

/// Set by Ctrl-C: phases end early, the remaining ones are skipped, processes are stopped.
static STOP: AtomicBool = AtomicBool::new(false);

const KNOWN_TARGETS: &[&str] =
    &["direct", "sidecar", "bft4", "bft7", "raft3", "cluster3", "bft4-crash", "bft4-cut", "bft4-withhold", "bft4-novote"];

/// Four-bank chains with bank 4 faulty from the start; their clients use banks 1-3 only.
const FAULT_TARGETS: &[&str] = &["bft4-crash", "bft4-cut", "bft4-withhold", "bft4-novote"];

const CHECK_PERF_LOADS: &[&str] = &["s", "m", "l", "xl"];

struct Args {
    ops: u64,
    /// Client counts of the concurrent phases, in the order given, without duplicates.
    clients: Vec<usize>,
    duration: Duration,
    op_timeout: Duration,
    value_size: usize,
    range_keys: usize,
    targets: Vec<String>,
    workloads: Vec<Workload>,
    check_perf: Option<String>,
    sidecar_args: Vec<String>,
    keep: bool,
    rounds: usize,
    trace_writes: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Put,
    Txn,
    RangeLin,
    RangeSer,
    Mixed,
}

const ALL_WORKLOADS: &[Workload] = &[
    Workload::Put,
    Workload::Txn,
    Workload::RangeLin,
    Workload::RangeSer,
    Workload::Mixed,
];

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Txn => "txn",
            Workload::RangeLin => "range-lin",
            Workload::RangeSer => "range-ser",
            Workload::Mixed => "mixed",
        }
    }

    fn parse(s: &str) -> Option<Workload> {
        ALL_WORKLOADS.iter().copied().find(|w| w.name() == s)
    }

    /// Reads of preloaded keys (instead of writes of distinct keys).
    fn is_range(self) -> bool {
        matches!(self, Workload::RangeLin | Workload::RangeSer | Workload::Mixed)
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bench [--ops N (default 50000)] [--clients C[,C...] (default 64)] [--duration SECS (default 10)]\n\
         \x20            [--value-size BYTES (default 256)] [--targets direct,sidecar,bft4,raft3 (default direct,sidecar)]\n\
         \x20            [--workload put,txn,range-lin,range-ser,mixed|both|all (default both = put,txn)]\n\
         \x20            [--range-keys N (default 1000)] [--op-timeout SECS (default 10)]\n\
         \x20            [--check-perf s|m|l|xl] [--sidecar-arg ARG]... [--keep] [--rounds N (default 1)] [--trace-writes N]\n\
         targets: direct = stock etcd; sidecar = stock etcd behind one bftcd; bft4 / bft7 = 4 / 7 banks ordering\n\
         with HotStuff-2; raft3 (alias cluster3) = 3-member stock etcd Raft cluster.\n\
         fault targets (four banks, bank 4 faulty from the start, clients on banks 1-3, compared with bft4):\n\
         bft4-crash = bank 4's sidecar killed; bft4-cut = bank 4 cut off with iptables (root; healed at the end);\n\
         bft4-withhold / bft4-novote = bank 4 runs the Byzantine test build (`cargo build --release -p bftcd-proxy\n\
         --features byzantine --target-dir target/byzantine`, or BFTCD_BYZANTINE_BIN) and never sends its\n\
         proposals / its votes.\n\
         workloads: put, txn (create-if-absent) on distinct keys; range-lin / range-ser = linearizable /\n\
         serializable Get of one of --range-keys preloaded keys; mixed = 9 linearizable Gets and 1 Put\n\
         of every 10 operations on those keys.\n\
         --clients: one concurrent phase per client count (each client has its own connection).\n\
         --check-perf: after the phases, run `etcdctl check perf --load LOAD` (about 60 s) against\n\
         every target's endpoints and report PASS/FAIL.\n\
         --sidecar-arg applies to the `sidecar` target only."
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        ops: 50_000,
        clients: vec![64],
        duration: Duration::from_secs(10),
        op_timeout: Duration::from_secs(10),
        value_size: 256,
        range_keys: 1000,
        targets: vec!["direct".into(), "sidecar".into()],
        workloads: vec![Workload::Put, Workload::Txn],
        check_perf: None,
        sidecar_args: Vec::new(),
        keep: false,
        rounds: 1,
        trace_writes: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .unwrap_or_else(|| usage())
        };
        let secs = |v: String| -> Duration {
            let s: f64 = v.parse().unwrap_or_else(|_| usage());
            if !(s > 0.0 && s.is_finite()) {
                usage()
            }
            Duration::from_secs_f64(s)
        };
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        match name.as_str() {
            "--ops" => a.ops = value().parse().unwrap_or_else(|_| usage()),
            "--clients" => {
                a.clients = Vec::new();
                for c in list(value()) {
                    let c: usize = c.parse().unwrap_or_else(|_| usage());
                    if c == 0 {
                        usage()
                    }
                    if !a.clients.contains(&c) {
                        a.clients.push(c);
                    }
                }
            }
            "--duration" => a.duration = secs(value()),
            "--op-timeout" => a.op_timeout = secs(value()),
            "--value-size" => a.value_size = value().parse().unwrap_or_else(|_| usage()),
            "--range-keys" => a.range_keys = value().parse().unwrap_or_else(|_| usage()),
            "--targets" => {
                a.targets = Vec::new();
                for t in list(value()) {
                    if !a.targets.contains(&t) {
                        a.targets.push(t);
                    }
                }
            }
            "--workload" | "--workloads" => {
                a.workloads = Vec::new();
                for w in list(value()) {
                    let add: Vec<Workload> = match w.as_str() {
                        "both" => vec![Workload::Put, Workload::Txn],
                        "all" => ALL_WORKLOADS.to_vec(),
                        other => match Workload::parse(other) {
                            Some(w) => vec![w],
                            None => {
                                eprintln!("unknown workload {other}");
                                usage()
                            }
                        },
                    };
                    for w in add {
                        if !a.workloads.contains(&w) {
                            a.workloads.push(w);
                        }
                    }
                }
            }
            "--check-perf" => {
                let load = value();
                if !CHECK_PERF_LOADS.contains(&load.as_str()) {
                    eprintln!("unknown check perf load {load} (s, m, l or xl)");
                    usage()
                }
                a.check_perf = Some(load);
            }
            "--sidecar-arg" => a.sidecar_args.push(value()),
            "--keep" => a.keep = true,
            "--trace-writes" => a.trace_writes = value().parse().ok().filter(|r| *r > 0).unwrap_or_else(|| usage()),
            "--rounds" => a.rounds = value().parse().ok().filter(|r| *r > 0).unwrap_or_else(|| usage()),
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("unknown argument {arg}");
                usage()
            }
        }
    }
    if a.ops == 0 || a.clients.is_empty() || a.targets.is_empty() || a.workloads.is_empty() {
        usage()
    }
    if a.range_keys == 0 && a.workloads.iter().any(|w| w.is_range()) {
        eprintln!("--range-keys must be at least 1 for the range workloads");
        usage()
    }
    for t in &a.targets {
        if !KNOWN_TARGETS.contains(&t.as_str()) {
            eprintln!("unknown target {t}");
            usage()
        }
    }
    if a.targets.iter().any(|t| t == "raft3") && a.targets.iter().any(|t| t == "cluster3") {
        eprintln!("raft3 and cluster3 are the same target; name it once");
        usage()
    }
    a
}

/// One system under test: where clients connect, and which processes do its work.
struct Target {
    name: String,
    endpoints: Vec<String>,
    sidecar_pids: Vec<u32>,
    etcd_pids: Vec<u32>,
    /// Sidecar logs, bank order (bft targets only; `--trace-writes` reads them).
    sidecar_logs: Vec<std::path::PathBuf>,
    /// The sidecars' metrics listeners (bft targets), scraped for CPU by component.
    metrics: Vec<String>,
}

impl Target {
    fn all_pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.sidecar_pids.iter().chain(self.etcd_pids.iter()).copied()
    }
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc/<pid>/stat.

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of one process (all its threads), in clock ticks; None if it is gone.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: fields after the last ')'
    // start with field 3 (state), so utime (field 14) and stime (field 15) are at 11 and 12.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn cpu_ticks_sum(pids: impl IntoIterator<Item = u32>) -> u64 {
    pids.into_iter().filter_map(cpu_ticks).sum()
}

/// CPU snapshot of one phase's processes: the target's sidecars and etcds, the benchmark process
/// itself (the clients), and every other target's processes (idle, but on the same 2 cores).
#[derive(Clone, Copy, Default)]
struct CpuTicks {
    sidecar: u64,
    etcd: u64,
    client: u64,
    others: u64,
    /// Sidecar CPU nanoseconds by component, summed over the banks (see `COMPONENTS`).
    components: [u64; COMPONENTS.len()],
}

/// The sidecar's own split of its CPU time (`bftcd_cpu_nanoseconds_total{component}`).
const COMPONENTS: [&str; 6] = ["consensus", "crypto", "network", "persistence", "apply", "front"];

/// Reads `bftcd_cpu_nanoseconds_total` from one sidecar's metrics listener.
fn scrape_components(addr: &str) -> Option<[u64; COMPONENTS.len()]> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let mut out = [0u64; COMPONENTS.len()];
    for line in text.lines().filter(|l| l.starts_with("bftcd_cpu_nanoseconds_total{")) {
        let (labels, value) = line.rsplit_once(' ')?;
        if let Some(i) = COMPONENTS.iter().position(|c| labels.contains(&format!("component=\"{c}\""))) {
            out[i] = value.parse::<f64>().ok()? as u64;
        }
    }
    Some(out)
}

fn cpu_snapshot(target: &Target, others: &[u32]) -> CpuTicks {
    CpuTicks {
        sidecar: cpu_ticks_sum(target.sidecar_pids.iter().copied()),
        etcd: cpu_ticks_sum(target.etcd_pids.iter().copied()),
        client: cpu_ticks(std::process::id()).unwrap_or(0),
        others: cpu_ticks_sum(others.iter().copied()),
        components: target.metrics.iter().filter_map(|m| scrape_components(m)).fold([0; COMPONENTS.len()], |mut acc, c| {
            acc.iter_mut().zip(c).for_each(|(a, c)| *a += c);
            acc
        }),
    }
}

/// CPU milliseconds consumed during a phase.
#[derive(Clone, Copy, Default)]
struct CpuMs {
    sidecar: f64,
    etcd: f64,
    client: f64,
    others: f64,
    /// Sidecar CPU by component (`COMPONENTS` order); all zero when not measured.
    components: [f64; COMPONENTS.len()],
}

fn cpu_delta(before: CpuTicks, after: CpuTicks) -> CpuMs {
    let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 * 1000.0 / clock_ticks_per_sec();
    CpuMs {
        sidecar: ms(before.sidecar, after.sidecar),
        etcd: ms(before.etcd, after.etcd),
        client: ms(before.client, after.client),
        others: ms(before.others, after.others),
        components: std::array::from_fn(|i| after.components[i].saturating_sub(before.components[i]) as f64 / 1e6),
    }
}

// ---------------------------------------------------------------------------------------------
// Phases.

/// `sequential`, or `concurrent-<clients>`: names a phase in labels, keys and the ratio JSON.
fn phase_tag(phase: &str, clients: usize) -> String {
    if phase == "sequential" {
        phase.to_string()
    } else {
        format!("{phase}-{clients}")
    }
}

#[derive(Clone)]
struct PhaseResult {
    /// 1-based; 0 for a median of rounds.
    round: usize,
    target: String,
    workload: Workload,
    phase: &'static str,
    clients: usize,
    ops: u64,
    errors: u64,
    /// Answers that were not the expected ones: for txn the Else branch ran (the key existed;
    /// never expected on distinct keys), for range the key was not found.
    unexpected: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu: CpuMs,
    first_error: Option<String>,
}

impl PhaseResult {
    fn ops_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// CPU-ms per 1000 committed operations.
    fn per_kop(&self, ms: f64) -> Option<f64> {
        if self.ops > 0 {
            Some(ms * 1000.0 / self.ops as f64)
        } else {
            None
        }
    }

    /// Average number of cores busy during the phase.
    fn cores(&self, ms: f64) -> f64 {
        if self.seconds > 0.0 {
            ms / 1000.0 / self.seconds
        } else {
            0.0
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One result per (target, workload, phase, clients): each figure the median of its rounds. The
/// operation count and duration are those of the round with the median throughput, and the CPU
/// figures are scaled so that CPU per operation is the median too.
fn medians(results: &[PhaseResult]) -> Vec<PhaseResult> {
    let mut out: Vec<PhaseResult> = Vec::new();
    for r in results {
        let same = |o: &PhaseResult| o.target == r.target && o.workload == r.workload && o.phase == r.phase && o.clients == r.clients;
        if out.iter().any(same) {
            continue;
        }
        let rounds: Vec<&PhaseResult> = results.iter().filter(|o| same(o)).collect();
        let mut by_rate = rounds.clone();
        by_rate.sort_by(|a, b| a.ops_per_sec().total_cmp(&b.ops_per_sec()));
        let mut m = by_rate[by_rate.len() / 2].clone();
        m.round = 0;
        let pick = |f: &dyn Fn(&PhaseResult) -> f64| median(rounds.iter().map(|r| f(r)).collect());
        m.p50_ms = pick(&|r| r.p50_ms);
        m.p99_ms = pick(&|r| r.p99_ms);
        m.max_ms = pick(&|r| r.max_ms);
        let per_op = |ms: &dyn Fn(&PhaseResult) -> f64| pick(&|r| if r.ops > 0 { ms(r) / r.ops as f64 } else { 0.0 }) * m.ops as f64;
        m.cpu.sidecar = per_op(&|r| r.cpu.sidecar);
        m.cpu.etcd = per_op(&|r| r.cpu.etcd);
        m.cpu.client = per_op(&|r| r.cpu.client);
        m.cpu.others = per_op(&|r| r.cpu.others);
        for i in 0..COMPONENTS.len() {
            m.cpu.components[i] = per_op(&|r| r.cpu.components[i]);
        }
        out.push(m);
    }
    out
}

fn percentile(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let idx = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[idx.min(sorted_us.len() - 1)] as f64 / 1000.0
}

async fn connect(endpoints: &[String]) -> Client {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(30));
    let mut last = None;
    for _ in 0..20 {
        match Client::connect(endpoints, Some(opts.clone())).await {
            Ok(c) => return c,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("cannot connect to {endpoints:?}: {:?}", last);
}

/// Waits until a put through every endpoint of the target succeeds (for bft4: the chain orders).
async fn wait_writable(target: &Target, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for ep in &target.endpoints {
        let mut c = connect(std::slice::from_ref(ep)).await;
        loop {
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                c.put("bench/ready", ep.as_bytes(), None),
            )
            .await;
            match r {
                Ok(Ok(_)) => break,
                Ok(Err(e)) if Instant::now() >= deadline => {
                    panic!("{}: {ep} not writable after {timeout:?}: {e}", target.name)
                }
                Err(_) if Instant::now() >= deadline => {
                    panic!("{}: {ep} not writable after {timeout:?}: timeout", target.name)
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

fn range_key(i: usize) -> String {
    format!("{RANGE_PREFIX}{i:06}")
}

/// Writes the `n` keys the range workloads read, with [`PRELOAD_CLIENTS`] concurrent clients
/// (client `i` on endpoint `i mod n`), then waits until every endpoint of the target serves all
/// of them (serializable count, so a bank or follower that still applies is waited for).
/// Returns the seconds it took.
async fn preload_range_keys(
    target: &Target,
    n: usize,
    value: Arc<Vec<u8>>,
    op_timeout: Duration,
) -> f64 {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for ci in 0..PRELOAD_CLIENTS.min(n) {
        let ep = target.endpoints[ci % target.endpoints.len()].clone();
        let mut conn = connect(std::slice::from_ref(&ep)).await;
        let next = next.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                if STOP.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(());
                }
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let r = tokio::time::timeout(
                        op_timeout,
                        conn.put(range_key(i), value.as_slice(), None),
                    )
                    .await;
                    match r {
                        Ok(Ok(_)) => break,
                        Ok(Err(e)) if attempt >= 5 => {
                            return Err(format!("put {} via {ep}: {e}", range_key(i)))
                        }
                        Err(_) if attempt >= 5 => {
                            return Err(format!(
                                "put {} via {ep}: no answer within {op_timeout:?}",
                                range_key(i)
                            ))
                        }
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
        }));
    }
    for t in tasks {
        if let Err(e) = t.await.expect("preload task") {
            panic!("{}: writing the range keys failed: {e}", target.name);
        }
    }
    let deadline = Instant::now() + PRELOAD_VISIBLE_TIMEOUT;
    let opts = GetOptions::new()
        .with_prefix()
        .with_count_only()
        .with_serializable();
    for ep in &target.endpoints {
        let mut c = connect(std::slice::from_ref(ep)).await;
        loop {
            if STOP.load(Ordering::Relaxed) {
                return started.elapsed().as_secs_f64();
            }
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                c.get(RANGE_PREFIX, Some(opts.clone())),
            )
            .await;
            let count = match &r {
                Ok(Ok(resp)) => resp.count(),
                _ => -1,
            };
            if count >= n as i64 {
                break;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: {ep} serves {count} of the {n} range keys after {PRELOAD_VISIBLE_TIMEOUT:?}",
                    target.name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    started.elapsed().as_secs_f64()
}

/// Outcome of one operation.
enum OpOutcome {
    Done,
    /// A txn whose compare failed (the Else branch ran), or a range that found no key.
    Unexpected,
}

async fn one_op(
    conn: &mut Client,
    workload: Workload,
    key: String,
    value: &[u8],
    i: u64,
) -> Result<OpOutcome, etcd_client::Error> {
    match workload {
        Workload::Mixed if i.is_multiple_of(10) => {
            conn.put(key, value, None).await?;
            Ok(OpOutcome::Done)
        }
        Workload::Put => {
            conn.put(key, value, None).await?;
            Ok(OpOutcome::Done)
        }
        Workload::Txn => {
            // kube-apiserver's create: only if the key does not exist yet.
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value, None)])
                .or_else([TxnOp::get(key, None)]);
            let resp = conn.txn(txn).await?;
            Ok(if resp.succeeded() {
                OpOutcome::Done
            } else {
                OpOutcome::Unexpected
            })
        }
        Workload::RangeLin | Workload::RangeSer | Workload::Mixed => {
            // Default consistency is linearizable.
            let opts = (workload == Workload::RangeSer).then(|| GetOptions::new().with_serializable());
            let resp = conn.get(key, opts).await?;
            Ok(if resp.kvs().is_empty() {
                OpOutcome::Unexpected
            } else {
                OpOutcome::Done
            })
        }
    }
}

struct PhaseSpec<'a> {
    target: &'a Target,
    /// Processes of every other target, for the idle-noise column.
    others: &'a [u32],
    workload: Workload,
    phase: &'static str,
    clients: usize,
    ops: u64,
    duration: Duration,
    op_timeout: Duration,
    value: Arc<Vec<u8>>,
    /// Number of preloaded keys (range workloads).
    range_keys: usize,
}

/// Runs one phase: `clients` connections (client `i` on endpoint `i mod n`) issuing operations
/// until `ops` are issued or time is up.
async fn run_phase(spec: PhaseSpec<'_>) -> PhaseResult {
    let PhaseSpec {
        target,
        others,
        workload,
        phase,
        clients,
        ops,
        duration,
        op_timeout,
        value,
        range_keys,
    } = spec;
    let tag = phase_tag(phase, clients);
    let mut conns = Vec::with_capacity(clients);
    for ci in 0..clients {
        let ep = &target.endpoints[ci % target.endpoints.len()];
        conns.push(connect(std::slice::from_ref(ep)).await);
    }
    // Warm-up, all connections at once: every connection established and the server's caches
    // hot. Writes warm up with a put of their own key, reads with one read of the workload.
    futures::future::join_all(conns.iter_mut().enumerate().map(|(i, c)| {
        let value = value.clone();
        async move {
            let _ = if workload.is_range() {
                tokio::time::timeout(op_timeout, one_op(c, workload, range_key(i % range_keys), &value, 1))
                    .await
                    .map(|r| r.map(|_| ()))
            } else {
                tokio::time::timeout(
                    op_timeout,
                    c.put(format!("bench/warmup/{i}"), value.as_slice(), None),
                )
                .await
                .map(|r| r.map(|_| ()))
            };
        }
    }))
    .await;
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_snapshot(target, others);
    let started = Instant::now();
    let deadline = started + duration;
    let hard_stop = deadline + PHASE_GRACE;

    let progress = {
        let done = done.clone();
        let errors = errors.clone();
        let label = format!("{}/{}/{tag}", target.name, workload.name());
        tokio::spawn(async move {
            let mut last = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = done.load(Ordering::Relaxed);
                eprintln!(
                    "  [{label}] {now} ops, {:.0}/s over the last 2 s, {} errors, {:.1} s elapsed",
                    (now - last) as f64 / 2.0,
                    errors.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                );
                last = now;
            }
        })
    };

    let mut tasks = Vec::with_capacity(clients);
    for (ci, mut conn) in conns.into_iter().enumerate() {
        let issued = issued.clone();
        let done = done.clone();
        let errors = errors.clone();
        let value = value.clone();
        let wl = workload.name();
        let tag = tag.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(0x5eed_0000 + ci as u64);
            let mut lat: Vec<u32> = Vec::new();
            let mut first_error = None;
            let mut unexpected = 0u64;
            loop {
                let now = Instant::now();
                if now >= deadline || STOP.load(Ordering::Relaxed) {
                    break;
                }
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    break;
                }
                let key = if workload.is_range() {
                    // One random preloaded key.
                    range_key(rng.gen_range(0..range_keys))
                } else {
                    // Distinct keys: one per operation of the phase (and client count).
                    format!("bench/{wl}/{tag}/{i:09}")
                };
                let limit = op_timeout.min(hard_stop.saturating_duration_since(now));
                let t0 = Instant::now();
                let r = tokio::time::timeout(limit, one_op(&mut conn, workload, key, &value, i)).await;
                match r {
                    Ok(Ok(outcome)) => {
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        done.fetch_add(1, Ordering::Relaxed);
                        if let OpOutcome::Unexpected = outcome {
                            unexpected += 1;
                        }
                    }
                    Ok(Err(e)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if first_error.is_none() {
                            first_error = Some(e.to_string());
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if first_error.is_none() {
                            first_error = Some(format!("no answer within {limit:?}"));
                        }
                    }
                }
            }
            (lat, first_error, unexpected)
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    let mut first_error = None;
    let mut unexpected = 0;
    for t in tasks {
        let (lat, err, un) = t.await.expect("client task");
        all.extend(lat);
        unexpected += un;
        if first_error.is_none() {
            first_error = err;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_delta(cpu_before, cpu_snapshot(target, others));
    progress.abort();
    all.sort_unstable();
    PhaseResult {
        round: 0,
        target: target.name.clone(),
        workload,
        phase,
        clients,
        ops: all.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        unexpected,
        seconds,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        max_ms: all.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
        cpu,
        first_error,
    }
}

// ---------------------------------------------------------------------------------------------
// Where one idle write's time goes (`--trace-writes`).

/// One `bftcd::trace` event from a sidecar log: its bank (1-based), time and fields.
struct TraceEvent {
    bank: usize,
    t_us: u64,
    fields: Vec<(String, String)>,
}

impl TraceEvent {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    fn us(&self, key: &str) -> u64 {
        self.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

fn read_trace_events(logs: &[std::path::PathBuf]) -> Vec<TraceEvent> {
    let mut events = Vec::new();
    for (i, path) in logs.iter().enumerate() {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let Some((_, rest)) = line.split_once("bftcd::trace: ") else { continue };
            let fields: Vec<(String, String)> = rest
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect();
            let mut e = TraceEvent { bank: i + 1, t_us: 0, fields };
            e.t_us = e.us("t_us");
            if e.t_us > 0 {
                events.push(e);
            }
        }
    }
    events.sort_by_key(|e| e.t_us);
    events
}

/// Sends `n` Puts one at a time, 30 ms apart (an idle chain each time), through the target's
/// first bank, then prints the timeline of the write with the median latency from the sidecars'
/// trace events, and what every write cost in all banks together.
async fn trace_writes(target: &Target, n: usize, value: Arc<Vec<u8>>) {
    eprintln!("bench: {}: tracing {n} idle writes through bank 1 ...", target.name);
    let mut client = connect(&target.endpoints[..1]).await;
    let mut writes: Vec<(u64, u64)> = Vec::new();
    for i in 0..n {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let t0 = bftcd_sequencer::now_us();
        if client.put(format!("bench/trace/{i}"), value.as_slice(), None).await.is_ok() {
            writes.push((t0, bftcd_sequencer::now_us()));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = read_trace_events(&target.sidecar_logs);
    if writes.is_empty() || events.is_empty() {
        eprintln!("bench: {}: no traced write (no trace events in the sidecar logs)", target.name);
        return;
    }
    let within = |(t0, t1): (u64, u64)| events.iter().filter(move |e| e.t_us >= t0 && e.t_us <= t1);
    // What each write cost, summed over every bank: consensus steps (decoding aside, mostly
    // signatures and their checks), consensus log, ledger, etcd.
    let mut costs: Vec<[f64; 5]> = Vec::new();
    for &w in &writes {
        let mut c = [(w.1 - w.0) as f64 / 1000.0, 0.0, 0.0, 0.0, 0.0];
        for e in within(w) {
            match e.get("step") {
                Some("ledger-append") => c[3] += e.us("disk_us") as f64 / 1000.0,
                Some("apply") => c[4] += e.us("apply_us") as f64 / 1000.0,
                Some("client-write") => {}
                _ => {
                    c[1] += e.us("core_us") as f64 / 1000.0;
                    c[2] += e.us("disk_us") as f64 / 1000.0;
                }
            }
        }
        costs.push(c);
    }
    let col = |i: usize| median(costs.iter().map(|c| c[i]).collect());
    let mut order: Vec<usize> = (0..writes.len()).collect();
    order.sort_by(|a, b| costs[*a][0].total_cmp(&costs[*b][0]));
    let pick = order[order.len() / 2];
    let (t0, t1) = writes[pick];
    println!();
    println!(
        "{}: one idle Put through bank 1, the median of {} ({:.2} ms); each step starts at +ms, takes core \
         (consensus code, signatures included) and disk (consensus log) time, and sends what follows ->",
        target.name,
        writes.len(),
        (t1 - t0) as f64 / 1000.0
    );
    println!("{:>8}  {:<6} {:<28} {:>8} {:>8}  -> out", "+ms", "bank", "step", "core ms", "disk ms");
    println!("{:>8.2}  {:<6} {:<28}", 0.0, "client", "Put sent");
    for e in within((t0, t1)) {
        let step = e.get("step").unwrap_or("?");
        let (core, disk) = match step {
            "ledger-append" => (0, e.us("disk_us")),
            "apply" => (e.us("apply_us"), 0),
            "client-write" => (0, 0),
            _ => (e.us("core_us"), e.us("disk_us")),
        };
        let out = match step {
            "ledger-append" => format!("blocks from h{}: {}", e.get("first").unwrap_or("?"), e.get("blocks").unwrap_or("?")),
            "apply" => format!("h{} applied to etcd ({} operations; etcd time in the core column)", e.get("height").unwrap_or("?"), e.get("operations").unwrap_or("?")),
            "client-write" => format!("answer leaves the front, {:.2} ms after the Put arrived", e.us("total_us") as f64 / 1000.0),
            _ => e.get("out").unwrap_or("").to_string(),
        };
        println!(
            "{:>8.2}  {:<6} {:<28} {:>8.2} {:>8.2}  {}",
            (e.t_us - t0) as f64 / 1000.0,
            format!("bank{}", e.bank),
            step,
            core as f64 / 1000.0,
            disk as f64 / 1000.0,
            out
        );
    }
    println!("{:>8.2}  {:<6} {:<28}", (t1 - t0) as f64 / 1000.0, "client", "answer received");
    println!(
        "{}: per write (median of {}), summed over all banks: latency {:.2} ms; consensus steps {:.2} ms; \
         consensus log {:.2} ms; ledger {:.2} ms; etcd apply {:.2} ms",
        target.name,
        writes.len(),
        col(0),
        col(1),
        col(2),
        col(3),
        col(4)
    );
}

// ---------------------------------------------------------------------------------------------
// etcdctl check perf.

struct CheckPerf {
    target: String,
    endpoints: String,
    load: String,
    pass: bool,
    /// Exit code (see `CmdOutput::code`); None when the harness killed it (timeout, Ctrl-C).
    exit_code: Option<i32>,
    timed_out: bool,
    seconds: f64,
    /// etcdctl's output without the progress bar (the PASS / FAIL / "too long" lines, errors).
    lines: Vec<String>,
}

/// The complete lines of `text[*from..]`, advancing `from` past them; a line rewritten with `\r`
/// (etcdctl's progress bar) is reduced to its last version.
fn take_lines(text: &str, from: &mut usize) -> Vec<String> {
    let rest = &text[(*from).min(text.len())..];
    let Some(end) = rest.rfind('\n') else {
        return Vec::new();
    };
    *from += end + 1;
    rest[..end]
        .split('\n')
        .filter_map(|l| {
            let l = l.split('\r').map(str::trim).rfind(|s| !s.is_empty())?;
            Some(l.to_string())
        })
        .collect()
}

/// etcdctl's progress bar (` 60 / 60 Booo...! 100.00% 1m0s`).
fn is_progress_bar(line: &str) -> bool {
    let mut words = line.split_whitespace();
    matches!(
        (words.next(), words.next(), words.next()),
        (Some(a), Some("/"), Some(b)) if a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok()
    )
}

/// Runs `etcdctl --endpoints=<all of the target's> check perf --load=<load>`, printing its output
/// as it comes with a `[check-perf/<target>]` prefix.
fn run_check_perf(target: &Target, load: &str) -> CheckPerf {
    let endpoints = target.endpoints.join(",");
    let label = format!("check-perf/{}", target.name);
    eprintln!(
        "bench: {label}: etcdctl --endpoints={endpoints} check perf --load={load} (about 60 s) ..."
    );
    let ctl = Etcdctl::new(endpoints.clone());
    let started = Instant::now();
    let load_arg = format!("--load={load}");
    let mut bg = ctl.spawn_for(&["check", "perf", load_arg.as_str()], CHECK_PERF_TIMEOUT);
    let (mut out_at, mut err_at) = (0usize, 0usize);
    let mut lines: Vec<String> = Vec::new();
    let mut emit = |stdout: &str, stderr: &str, out_at: &mut usize, err_at: &mut usize| {
        for l in take_lines(stdout, out_at)
            .into_iter()
            .chain(take_lines(stderr, err_at))
        {
            eprintln!("  [{label}] {l}");
            if !is_progress_bar(&l) {
                lines.push(l);
            }
        }
    };
    let mut next_note = Duration::from_secs(15);
    let mut interrupted = false;
    while bg.is_running() && started.elapsed() < CHECK_PERF_TIMEOUT {
        if STOP.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        emit(&bg.stdout_so_far(), &bg.stderr_so_far(), &mut out_at, &mut err_at);
        if started.elapsed() >= next_note {
            eprintln!("  [{label}] running, {:.0} s elapsed", started.elapsed().as_secs_f64());
            next_note += Duration::from_secs(15);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = if interrupted {
        bg.stop()
    } else {
        bg.wait(Duration::from_secs(5))
    };
    // Whatever is left, including a last line without a newline.
    emit(
        &format!("{}\n", out.stdout),
        &format!("{}\n", out.stderr),
        &mut out_at,
        &mut err_at,
    );
    let final_pass = lines.iter().any(|l| l == "PASS");
    let any_fail = lines.iter().any(|l| {
        l.starts_with("FAIL") || l.contains("too long") || l.contains("too high")
    });
    let pass = out.success() && final_pass && !any_fail;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "bench: {label}: {} (exit {}{}) after {seconds:.0} s",
        if pass { "PASS" } else { "FAIL" },
        out.status.map(|_| out.code().to_string()).unwrap_or_else(|| "none".into()),
        if out.timed_out { ", timed out" } else { "" }
    );
    CheckPerf {
        target: target.name.clone(),
        endpoints,
        load: load.to_string(),
        pass,
        exit_code: out.status.map(|_| out.code()),
        timed_out: out.timed_out,
        seconds,
        lines,
    }
}

// ---------------------------------------------------------------------------------------------
// Reporting.

fn ratio(a: f64, b: f64) -> Option<f64> {
    if b > 0.0 {
        Some(a / b)
    } else {
        None
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into())
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "n/a".into())
}

/// The sidecars' own split of their CPU (all banks summed), per 1000 operations: the figures a
/// change to one component should move. "other" is what no component claims: the async runtime,
/// HTTP/2 framing of client and etcd connections, logging.
fn print_components(results: &[PhaseResult]) {
    let measured: Vec<&PhaseResult> = results.iter().filter(|r| r.cpu.components.iter().any(|c| *c > 0.0)).collect();
    if measured.is_empty() {
        return;
    }
    println!();
    println!("Sidecar CPU by component, ms per 1000 ops, all banks (bftcd --account-cpu)");
    print!("{:<13} {:<9} {:<11} {:>7}", "target", "workload", "phase", "clients");
    for c in COMPONENTS {
        print!(" {:>11}", c);
    }
    println!(" {:>11} {:>11}", "other", "sidecar");
    for r in measured {
        print!("{:<13} {:<9} {:<11} {:>7}", r.target, r.workload.name(), r.phase, r.clients);
        for c in r.cpu.components {
            print!(" {:>11}", fmt_opt(r.per_kop(c)));
        }
        let other = r.cpu.sidecar - r.cpu.components.iter().sum::<f64>();
        println!(" {:>11} {:>11}", fmt_opt(r.per_kop(other.max(0.0))), fmt_opt(r.per_kop(r.cpu.sidecar)));
    }
}

/// Prints `a / b` ratios for every workload, phase and client count where both ran; returns them
/// as JSON (`{workload: {"sequential" | "concurrent-<clients>": {...}}}`).
fn print_ratios(
    results: &[PhaseResult],
    workloads: &[Workload],
    clients: &[usize],
    a: &str,
    b: &[&str],
) -> serde_json::Map<String, serde_json::Value> {
    let find = |t: &str, w: Workload, p: &str, c: usize| {
        results
            .iter()
            .find(|r| r.target == t && r.workload == w && r.phase == p && r.clients == c)
    };
    let mut out = serde_json::Map::new();
    let Some(b) = b
        .iter()
        .copied()
        .find(|b| results.iter().any(|r| r.target == *b))
    else {
        return out;
    };
    if !results.iter().any(|r| r.target == a) {
        return out;
    }
    let mut phases = vec![("sequential", 1usize)];
    phases.extend(clients.iter().map(|&c| ("concurrent", c)));
    println!();
    println!(
        "{:<28} {:>10}   {:>11}   {:>11}   {:>10}",
        format!("{a} / {b}"),
        "throughput",
        "p50 latency",
        "p99 latency",
        "CPU per op"
    );
    for &w in workloads {
        let mut per_phase = serde_json::Map::new();
        for &(phase, c) in &phases {
            let (Some(x), Some(y)) = (find(a, w, phase, c), find(b, w, phase, c)) else {
                continue;
            };
            let tp = ratio(x.ops_per_sec(), y.ops_per_sec());
            let p50 = ratio(x.p50_ms, y.p50_ms);
            let p99 = ratio(x.p99_ms, y.p99_ms);
            let cpu = match (
                x.per_kop(x.cpu.sidecar + x.cpu.etcd),
                y.per_kop(y.cpu.sidecar + y.cpu.etcd),
            ) {
                (Some(cx), Some(cy)) => ratio(cx, cy),
                _ => None,
            };
            let tag = phase_tag(phase, c);
            println!(
                "{:<28} {:>10}   {:>11}   {:>11}   {:>10}",
                format!("{}/{tag}", w.name()),
                fmt_ratio(tp),
                fmt_ratio(p50),
                fmt_ratio(p99),
                fmt_ratio(cpu)
            );
            per_phase.insert(
                tag,
                json!({ "clients": c, "throughput": tp, "p50_latency": p50, "p99_latency": p99, "cpu_per_op": cpu }),
            );
        }
        if !per_phase.is_empty() {
            out.insert(w.name().to_string(), serde_json::Value::Object(per_phase));
        }
    }
    out
}

/// A four-bank chain (files prefixed `<fault>-`) with bank 4 faulty from the start:
/// `bft4-crash`: its sidecar killed once the chain is up; `bft4-cut`: cut off its peers with
/// iptables (its sidecar in a cgroup of its own, as in the partition test; the cut is healed when
/// the bench ends, also on Ctrl-C or a panic); `bft4-withhold` / `bft4-novote`: run by the
/// Byzantine test build with `--byzantine=withhold` / `no-votes`.
fn start_faulty_chain(
    dir: &TestDir,
    fault: &str,
    byzantine_bin: Option<&std::path::Path>,
    cgroups: &mut Vec<Cgroup>,
    cuts: &mut Vec<NetCut>,
) -> Chain {
    let byzantine = |m: &str| Deviant {
        bank: 3,
        bin: byzantine_bin.expect("checked up front").to_path_buf(),
        args: vec![format!("--byzantine={m}")],
    };
    let mut cgroup = None;
    let deviant = match fault {
        "bft4-withhold" => Some(byzantine("withhold")),
        "bft4-novote" => Some(byzantine("no-votes")),
        "bft4-cut" => match Cgroup::create() {
            Ok(cg) => {
                let bin = cg.wrapper(dir.path(), "bft4-cut-bftcd-in-cgroup", &bins::bftcd_bin());
                cgroup = Some(cg);
                Some(Deviant { bank: 3, bin, args: Vec::new() })
            }
            Err(why) => {
                eprintln!("bench: {fault}: note: {why}; cutting only bank 4's peer port (it stays able to send)");
                None
            }
        },
        _ => None,
    };
    eprintln!("bench: {fault}: bftcd keygen/genesis, starting 4 banks ...");
    let mut c = Chain::start_named_with(dir, 4, &format!("{fault}-"), true, deviant);
    match fault {
        "bft4-crash" => {
            c.banks[3].sidecar.kill();
            eprintln!("bench: {fault}: bank 4's sidecar killed (-9)");
        }
        "bft4-cut" => {
            let mut cut = NetCut::new();
            let others: Vec<u16> = c.banks[..3].iter().map(|b| b.peer_port).collect();
            cut.isolate(c.banks[3].peer_port, cgroup.as_ref(), &others);
            eprintln!("bench: {fault}: bank 4 cut off its peers (iptables, comment {})", cut.comment());
            cuts.push(cut);
        }
        _ => eprintln!("bench: {fault}: bank 4 runs the Byzantine test build ({})", &fault["bft4-".len()..]),
    }
    cgroups.extend(cgroup);
    eprintln!("bench: {fault}: clients use banks 1-3 at {}", c.endpoints()[..3].join(","));
    c
}

fn main() {
    let args = parse_args();
    if args.trace_writes > 0 {
        if !args.targets.iter().any(|t| t.starts_with("bft")) {
            eprintln!("--trace-writes needs a bft4 or bft7 target");
            usage()
        }
        // Inherited by every sidecar this run starts.
        std::env::set_var("BFTCD_LOG", "info,bftcd::trace=debug");
    }
    if args.targets.iter().any(|t| t == "sidecar" || t.starts_with("bft")) {
        match bins::try_bftcd_bin() {
            Ok(path) => {
                eprintln!("bench: sidecar binary {}", path.display());
                if !cfg!(debug_assertions) && path.components().any(|c| c.as_os_str() == "debug") {
                    eprintln!(
                        "bench: WARNING: that is a debug build; run `cargo build --release --workspace --bins` \
                         (or set BFTCD_BIN) for meaningful numbers"
                    );
                }
            }
            Err(e) => {
                eprintln!("{e}\n(hint: `cargo build --release --workspace --bins`, or `--targets direct`)");
                std::process::exit(1);
            }
        }
    }
    let byzantine_bin = if args.targets.iter().any(|t| t == "bft4-withhold" || t == "bft4-novote") {
        match bins::try_byzantine_bin("release") {
            Ok(path) => {
                eprintln!("bench: Byzantine test build {}", path.display());
                Some(path)
            }
            Err(e) => {
                eprintln!("{e}\n(the bft4-withhold and bft4-novote targets need it)");
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    if args.targets.iter().any(|t| t == "bft4-cut") {
        if let Err(why) = netcut::usable() {
            eprintln!("the bft4-cut target needs iptables (root): {why}");
            std::process::exit(1);
        }
    }
    if args.check_perf.is_some() {
        match bins::try_stock_tool("etcdctl") {
            Ok(path) => eprintln!("bench: check perf with {}", path.display()),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
    if cfg!(debug_assertions) {
        eprintln!("bench: WARNING: the benchmark itself is a debug build; use `cargo run --release`");
    }
    let mut dir = TestDir::new("bench");
    if args.keep {
        let p = dir.keep();
        eprintln!("bench: logs and data kept in {}", p.display());
    }
    let workload_names: Vec<&str> = args.workloads.iter().map(|w| w.name()).collect();
    let clients_list: Vec<String> = args.clients.iter().map(|c| c.to_string()).collect();
    eprintln!(
        "bench: workloads {}, {}-byte values, at most {} ops and {:?} per phase; concurrent phases with {} clients",
        workload_names.join(","),
        args.value_size,
        args.ops,
        args.duration,
        clients_list.join(", ")
    );

    // Start every target up front (same conditions for all phases).
    let mut targets: Vec<Target> = Vec::new();
    let mut direct: Option<EtcdProcess> = None;
    let mut bank: Option<EtcdProcess> = None;
    let mut sidecar: Option<Sidecar> = None;
    let mut cluster: Option<EtcdCluster> = None;
    // Declared before `chains` so that, also when unwinding, they are dropped after the
    // processes in them ended (cuts heal on drop).
    let mut cgroups: Vec<Cgroup> = Vec::new();
    let mut cuts: Vec<NetCut> = Vec::new();
    let mut chains: Vec<Chain> = Vec::new();
    let pid = |p: Option<u32>| p.expect("process is running");
    for t in &args.targets {
        match t.as_str() {
            "direct" => {
                let e = EtcdProcess::start(&dir, "direct");
                eprintln!("bench: direct: stock etcd at {}", e.endpoint());
                targets.push(Target {
                    name: "direct".into(),
                    endpoints: vec![e.endpoint()],
                    sidecar_pids: vec![],
                    etcd_pids: vec![pid(e.pid())],
                    sidecar_logs: vec![],
                    metrics: vec![],
                });
                direct = Some(e);
            }
            "sidecar" => {
                let e = EtcdProcess::start_with_args(&dir, "bank", BANK_ETCD_ARGS);
                let extra: Vec<&str> = args.sidecar_args.iter().map(|s| s.as_str()).collect();
                let s = Sidecar::start_with_args(&dir, "sidecar", &e.endpoint(), &extra);
                eprintln!(
                    "bench: sidecar: bftcd at {} in front of stock etcd at {}",
                    s.endpoint(),
                    e.endpoint()
                );
                targets.push(Target {
                    name: "sidecar".into(),
                    endpoints: vec![s.endpoint()],
                    sidecar_pids: vec![pid(s.pid())],
                    etcd_pids: vec![pid(e.pid())],
                    sidecar_logs: vec![],
                    metrics: vec![],
                });
                bank = Some(e);
                sidecar = Some(s);
            }
            "raft3" | "cluster3" => {
                let c = EtcdCluster::start_named(&dir, "cluster", 3, &[]);
                eprintln!("bench: {t}: stock etcd Raft cluster at {}", c.endpoints_csv());
                targets.push(Target {
                    name: t.clone(),
                    endpoints: c.endpoints(),
                    sidecar_pids: vec![],
                    etcd_pids: c.members().iter().map(|m| pid(m.pid())).collect(),
                    sidecar_logs: vec![],
                    metrics: vec![],
                });
                cluster = Some(c);
            }
            "bft4" | "bft7" => {
                let n = if t == "bft4" { 4 } else { 7 };
                eprintln!("bench: {t}: bftcd keygen/genesis, starting {n} banks ...");
                let c = Chain::start_named(&dir, n, &format!("{t}-"), true);
                eprintln!(
                    "bench: {t}: {n} banks (stock etcd + bftcd each, HotStuff-2) at {}",
                    c.endpoints().join(",")
                );
                targets.push(Target {
                    name: t.clone(),
                    endpoints: c.endpoints(),
                    sidecar_pids: c.banks.iter().map(|b| pid(b.sidecar.pid())).collect(),
                    etcd_pids: c.banks.iter().map(|b| pid(b.etcd.pid())).collect(),
                    sidecar_logs: c.banks.iter().map(|b| b.sidecar.stderr_log().to_path_buf()).collect(),
                    metrics: c.banks.iter().filter_map(|b| b.metrics.clone()).collect(),
                });
                chains.push(c);
            }
            fault if FAULT_TARGETS.contains(&fault) => {
                let c = start_faulty_chain(&dir, fault, byzantine_bin.as_deref(), &mut cgroups, &mut cuts);
                targets.push(Target {
                    name: t.clone(),
                    endpoints: c.endpoints()[..3].to_vec(),
                    sidecar_pids: c.banks.iter().filter_map(|b| b.sidecar.pid()).collect(),
                    etcd_pids: c.banks.iter().map(|b| pid(b.etcd.pid())).collect(),
                    sidecar_logs: c.banks.iter().map(|b| b.sidecar.stderr_log().to_path_buf()).collect(),
                    metrics: c.banks.iter().filter_map(|b| b.metrics.clone()).collect(),
                });
                chains.push(c);
            }
            _ => unreachable!(),
        }
    }

    let value = Arc::new(vec![b'v'; args.value_size]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut results: Vec<PhaseResult> = Vec::new();
    let mut preloads: Vec<(String, f64)> = Vec::new();
    rt.block_on(async {
        tokio::spawn(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("bench: interrupted; finishing the current phase early and shutting down");
                STOP.store(true, Ordering::Relaxed);
            }
        });
        for t in &targets {
            wait_writable(t, Duration::from_secs(60)).await;
        }
        if args.trace_writes > 0 {
            for t in targets.iter().filter(|t| !t.sidecar_logs.is_empty()) {
                trace_writes(t, args.trace_writes, value.clone()).await;
            }
            return;
        }
        let mut phases = vec![("sequential", 1usize)];
        phases.extend(args.clients.iter().map(|&c| ("concurrent", c)));
        'all: for &workload in &args.workloads {
            for &(phase, clients) in &phases {
                for (round, target) in (1..=args.rounds).flat_map(|r| targets.iter().map(move |t| (r, t))) {
                    if STOP.load(Ordering::Relaxed) {
                        break 'all;
                    }
                    let name = &target.name;
                    if workload.is_range() && !preloads.iter().any(|(t, _)| t == name) {
                        eprintln!(
                            "bench: {name}: writing {} keys of {} bytes for the range workloads \
                             ({PRELOAD_CLIENTS} clients, not timed) ...",
                            args.range_keys, args.value_size
                        );
                        let secs =
                            preload_range_keys(target, args.range_keys, value.clone(), args.op_timeout)
                                .await;
                        eprintln!(
                            "bench: {name}: range keys written and visible at every endpoint after {secs:.1} s"
                        );
                        preloads.push((name.clone(), secs));
                        if STOP.load(Ordering::Relaxed) {
                            break 'all;
                        }
                    }
                    let others: Vec<u32> = targets
                        .iter()
                        .filter(|o| o.name != target.name)
                        .flat_map(|o| o.all_pids())
                        .collect();
                    let wl = workload.name();
                    let tag = phase_tag(phase, clients);
                    let tag = if args.rounds > 1 { format!("{tag}#{round}") } else { tag };
                    eprintln!("bench: {name}/{wl}/{tag} ({clients} client(s)) ...");
                    let mut r = run_phase(PhaseSpec {
                        target,
                        others: &others,
                        workload,
                        phase,
                        clients,
                        ops: args.ops,
                        duration: args.duration,
                        op_timeout: args.op_timeout,
                        value: value.clone(),
                        range_keys: args.range_keys,
                    })
                    .await;
                    eprintln!(
                        "bench: {name}/{wl}/{tag}: {} ops in {:.1} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors; \
                         CPU ms per 1000 ops: sidecar {}, etcd {}",
                        r.ops,
                        r.seconds,
                        r.ops_per_sec(),
                        r.p50_ms,
                        r.p99_ms,
                        r.errors,
                        fmt_opt(r.per_kop(r.cpu.sidecar)),
                        fmt_opt(r.per_kop(r.cpu.etcd)),
                    );
                    r.round = round;
                    if let Some(e) = &r.first_error {
                        eprintln!("bench: {name}/{wl}/{tag}: first error: {e}");
                    }
                    if r.unexpected > 0 {
                        eprintln!(
                            "bench: {name}/{wl}/{tag}: WARNING: {} {}",
                            r.unexpected,
                            if workload.is_range() {
                                "reads found no key (a preloaded key was missing)"
                            } else {
                                "txns took the Else branch (key existed)"
                            }
                        );
                    }
                    results.push(r);
                }
            }
        }
    });

    // etcdctl check perf, one target after the other (each writes under /etcdctl-check-perf/
    // and deletes its keys at the end).
    let mut check_perf: Vec<CheckPerf> = Vec::new();
    if let Some(load) = &args.check_perf {
        for target in &targets {
            if STOP.load(Ordering::Relaxed) {
                break;
            }
            check_perf.push(run_check_perf(target, load));
        }
    }

    println!();
    let rows: Vec<PhaseResult> = if args.rounds > 1 {
        let mut all = results.clone();
        all.extend(medians(&results));
        all
    } else {
        results.clone()
    };
    let results = if args.rounds > 1 { medians(&results) } else { results };
    println!(
        "{:<13} {:<6} {:<9} {:<11} {:>7} {:>8} {:>6} {:>9} {:>8} {:>8} {:>8} {:>6}",
        "target", "round", "workload", "phase", "clients", "ops", "secs", "ops/s", "p50 ms", "p99 ms", "max ms", "errors"
    );
    for r in &rows {
        println!(
            "{:<13} {:<6} {:<9} {:<11} {:>7} {:>8} {:>6.1} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>6}",
            r.target,
            if r.round == 0 { "median".to_string() } else { r.round.to_string() },
            r.workload.name(),
            r.phase,
            r.clients,
            r.ops,
            r.seconds,
            r.ops_per_sec(),
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.errors
        );
    }

    println!();
    println!(
        "CPU during the concurrent phases (utime+stime from /proc/<pid>/stat){}",
        if args.rounds > 1 { format!("; medians of {} interleaved rounds", args.rounds) } else { String::new() }
    );
    println!(
        "{:<13} {:<9} {:>7} {:>14} {:>14} {:>14} {:>8} {:>8} {:>8} {:>8}",
        "target", "workload", "clients", "sidecar ms/1k", "etcd ms/1k", "total ms/1k", "sidecar", "etcd", "client", "others"
    );
    println!(
        "{:<13} {:<9} {:>7} {:>14} {:>14} {:>14} {:>8} {:>8} {:>8} {:>8}",
        "", "", "", "", "", "", "cores", "cores", "cores", "cores"
    );
    for r in results.iter().filter(|r| r.phase == "concurrent") {
        let has_sidecar = r.target == "sidecar" || r.target.starts_with("bft");
        println!(
            "{:<13} {:<9} {:>7} {:>14} {:>14} {:>14} {:>8} {:>8.2} {:>8.2} {:>8.2}",
            r.target,
            r.workload.name(),
            r.clients,
            if has_sidecar { fmt_opt(r.per_kop(r.cpu.sidecar)) } else { "-".into() },
            fmt_opt(r.per_kop(r.cpu.etcd)),
            fmt_opt(r.per_kop(r.cpu.sidecar + r.cpu.etcd)),
            if has_sidecar { format!("{:.2}", r.cores(r.cpu.sidecar)) } else { "-".into() },
            r.cores(r.cpu.etcd),
            r.cores(r.cpu.client),
            r.cores(r.cpu.others),
        );
    }
    println!("(client = this benchmark process; others = the idle processes of the other targets)");
    print_components(&results);

    let sidecar_direct =
        print_ratios(&results, &args.workloads, &args.clients, "sidecar", &["direct"]);
    let bft_raft =
        print_ratios(&results, &args.workloads, &args.clients, "bft4", &["raft3", "cluster3"]);
    let bft7_raft =
        print_ratios(&results, &args.workloads, &args.clients, "bft7", &["raft3", "cluster3"]);
    let mut fault_ratios = serde_json::Map::new();
    for fault in FAULT_TARGETS {
        let r = print_ratios(&results, &args.workloads, &args.clients, fault, &["bft4"]);
        if !r.is_empty() {
            fault_ratios.insert(fault.to_string(), serde_json::Value::Object(r));
        }
    }

    if let Some(load) = &args.check_perf {
        println!();
        println!("etcdctl check perf --load={load} (all client endpoints of the target)");
        println!("{:<9} {:<6} {:>5} {:>6}  details", "target", "result", "exit", "secs");
        for c in &check_perf {
            let details: Vec<&str> = c
                .lines
                .iter()
                .map(String::as_str)
                .filter(|l| *l != "PASS" && *l != "FAIL")
                .collect();
            println!(
                "{:<9} {:<6} {:>5} {:>6.0}  {}",
                c.target,
                if c.pass { "PASS" } else { "FAIL" },
                c.exit_code.map(|code| code.to_string()).unwrap_or_else(|| {
                    if c.timed_out { "timeout".into() } else { "killed".into() }
                }),
                c.seconds,
                details.join("; ")
            );
        }
        if check_perf.len() < targets.len() {
            println!("(interrupted: not every target was checked)");
        }
    }

    println!();
    let check_perf_json: serde_json::Map<String, serde_json::Value> = check_perf
        .iter()
        .map(|c| {
            (
                c.target.clone(),
                json!({
                    "result": if c.pass { "PASS" } else { "FAIL" },
                    "load": c.load,
                    "endpoints": c.endpoints,
                    "exit_code": c.exit_code,
                    "timed_out": c.timed_out,
                    "seconds": c.seconds,
                    "output": c.lines,
                }),
            )
        })
        .collect();
    let line = json!({
        "bench": "bftcd-write",
        "workloads": workload_names,
        "concurrent_clients": args.clients,
        "value_size": args.value_size,
        "range_keys": args.range_keys,
        "range_preload_seconds": preloads.iter().map(|(t, s)| (t.clone(), json!(s))).collect::<serde_json::Map<_, _>>(),
        "max_ops_per_phase": args.ops,
        "max_seconds_per_phase": args.duration.as_secs_f64(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "interrupted": STOP.load(Ordering::Relaxed),
        "results": rows.iter().map(|r| json!({
            "round": r.round,
            "target": r.target,
            "workload": r.workload.name(),
            "phase": r.phase,
            "clients": r.clients,
            "ops": r.ops,
            "errors": r.errors,
            "txn_else_branch": if r.workload == Workload::Txn { r.unexpected } else { 0 },
            "range_key_missing": if r.workload.is_range() { r.unexpected } else { 0 },
            "seconds": r.seconds,
            "ops_per_sec": r.ops_per_sec(),
            "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms,
            "max_ms": r.max_ms,
            "cpu_ms": {
                "sidecar": r.cpu.sidecar,
                "etcd": r.cpu.etcd,
                "client": r.cpu.client,
                "other_targets": r.cpu.others,
            },
            "cpu_ms_per_1000_ops": {
                "sidecar": r.per_kop(r.cpu.sidecar),
                "etcd": r.per_kop(r.cpu.etcd),
                "total": r.per_kop(r.cpu.sidecar + r.cpu.etcd),
                "sidecar_components": COMPONENTS.iter().zip(r.cpu.components).map(|(c, ms)| (c.to_string(), json!(r.per_kop(ms)))).collect::<serde_json::Map<_, _>>(),
            },
        })).collect::<Vec<_>>(),
        "ratio_sidecar_over_direct": sidecar_direct,
        "ratio_bft4_over_raft3": bft_raft,
        "ratio_bft7_over_raft3": bft7_raft,
        "ratio_fault_over_bft4": fault_ratios,
        "rounds": args.rounds,
        "check_perf": if args.check_perf.is_some() { serde_json::Value::Object(check_perf_json) } else { serde_json::Value::Null },
    });
    println!("{line}");
    drop(rt);

    // Clean shutdown: SIGTERM to every sidecar, then every etcd (SIGKILL after 10 s).
    eprintln!("bench: stopping processes ...");
    for cut in cuts.iter_mut() {
        cut.heal();
    }
    if let Some(s) = sidecar.as_mut() {
        s.stop();
    }
    for c in chains.iter_mut() {
        for b in c.banks.iter_mut() {
            b.sidecar.stop();
        }
        for b in c.banks.iter_mut() {
            b.etcd.stop();
        }
    }
    for e in [bank.as_mut(), direct.as_mut()].into_iter().flatten() {
        e.stop();
    }
    if let Some(c) = cluster.as_mut() {
        for i in 0..c.len() {
            c.member_mut(i).stop();
        }
    }
    drop((sidecar, chains, bank, direct, cluster));
    drop((cuts, cgroups));
    // The directory is removed unless --keep.
    if !args.keep {
        drop(dir);
    }
    eprintln!("bench: done");
}
