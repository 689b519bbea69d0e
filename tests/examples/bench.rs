//! Write throughput, latency and CPU cost: stock etcd used directly, stock etcd behind one bftcd
//! sidecar, a 4-bank BFTcd chain (HotStuff-2) and a 3-member stock etcd Raft cluster, measured in
//! the same run on the same machine (design.md §7: ratios, never absolute numbers).
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p bftcd-tests --example bench -- [--ops N] [--clients 64] [--duration 10]
//!     [--value-size 256] [--targets direct,sidecar[,bft4][,raft3]] [--workload put|txn|both]
//!     [--op-timeout 10] [--sidecar-arg ARG]... [--keep]
//! ```
//!
//! Targets (all started up front, so every phase runs under the same conditions):
//! - `direct`: one stock etcd, used directly;
//! - `sidecar`: one stock etcd behind one `bftcd serve` (single bank, n = 1);
//! - `bft4`: four banks (stock etcd + sidecar each) ordering with HotStuff-2, keys and genesis made
//!   by the real `bftcd keygen` / `bftcd genesis`; client `i` talks to bank `i mod 4`;
//! - `raft3` (alias `cluster3`): a 3-member stock etcd Raft cluster; client `i` talks to member
//!   `i mod 3`.
//!
//! Workloads, each on distinct keys:
//! - `put`: a Put of a `--value-size` (256-byte) value;
//! - `txn`: the conditional create kube-apiserver issues for every new object:
//!   `Txn If ModRevision(key) == 0 Then Put(key, value) Else Get(key)`.
//!
//! For every workload × target it runs two phases, each ending after `--ops` operations or
//! `--duration` seconds, whichever comes first (operations still in flight get at most 5 s more):
//! - `sequential`: one client, one operation at a time;
//! - `concurrent`: `--clients` clients, each with its own connection, one operation at a time each.
//!
//! During every phase it reads utime+stime of the target's processes from `/proc/<pid>/stat`, split
//! into sidecar and etcd processes, and reports CPU-ms per 1000 committed operations. It prints
//! progress every 2 s, a results table, a CPU table, the sidecar/direct and bft4/raft3 ratios and,
//! last, one JSON line with everything.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bftcd_tests::sidecar::BANK_ETCD_ARGS;
use bftcd_tests::{bins, Chain, EtcdCluster, EtcdProcess, Sidecar, TestDir};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use serde_json::json;

/// How long operations still in flight at the end of a phase may take before they are abandoned
/// (and counted as errors).
const PHASE_GRACE: Duration = Duration::from_secs(5);

/// Set by Ctrl-C: phases end early, the remaining ones are skipped, processes are stopped.
static STOP: AtomicBool = AtomicBool::new(false);

const KNOWN_TARGETS: &[&str] = &["direct", "sidecar", "bft4", "raft3", "cluster3"];

struct Args {
    ops: u64,
    clients: usize,
    duration: Duration,
    op_timeout: Duration,
    value_size: usize,
    targets: Vec<String>,
    workloads: Vec<Workload>,
    sidecar_args: Vec<String>,
    keep: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Put,
    Txn,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Txn => "txn",
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bench [--ops N (default 50000)] [--clients C (default 64)] [--duration SECS (default 10)]\n\
         \x20            [--value-size BYTES (default 256)] [--targets direct,sidecar,bft4,raft3 (default direct,sidecar)]\n\
         \x20            [--workload put|txn|both (default both)] [--op-timeout SECS (default 10)]\n\
         \x20            [--sidecar-arg ARG]... [--keep]\n\
         targets: direct = stock etcd; sidecar = stock etcd behind one bftcd; bft4 = 4 banks ordering with\n\
         HotStuff-2; raft3 (alias cluster3) = 3-member stock etcd Raft cluster.\n\
         --sidecar-arg applies to the `sidecar` target only."
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        ops: 50_000,
        clients: 64,
        duration: Duration::from_secs(10),
        op_timeout: Duration::from_secs(10),
        value_size: 256,
        targets: vec!["direct".into(), "sidecar".into()],
        workloads: vec![Workload::Put, Workload::Txn],
        sidecar_args: Vec::new(),
        keep: false,
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
        match name.as_str() {
            "--ops" => a.ops = value().parse().unwrap_or_else(|_| usage()),
            "--clients" => a.clients = value().parse().unwrap_or_else(|_| usage()),
            "--duration" => a.duration = secs(value()),
            "--op-timeout" => a.op_timeout = secs(value()),
            "--value-size" => a.value_size = value().parse().unwrap_or_else(|_| usage()),
            "--targets" => {
                a.targets = Vec::new();
                for t in value().split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if !a.targets.iter().any(|x| x == t) {
                        a.targets.push(t.to_string());
                    }
                }
            }
            "--workload" | "--workloads" => {
                a.workloads = match value().as_str() {
                    "put" => vec![Workload::Put],
                    "txn" => vec![Workload::Txn],
                    "both" | "put,txn" => vec![Workload::Put, Workload::Txn],
                    other => {
                        eprintln!("unknown workload {other}");
                        usage()
                    }
                }
            }
            "--sidecar-arg" => a.sidecar_args.push(value()),
            "--keep" => a.keep = true,
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("unknown argument {arg}");
                usage()
            }
        }
    }
    if a.ops == 0 || a.clients == 0 || a.targets.is_empty() {
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
}

fn cpu_snapshot(target: &Target, others: &[u32]) -> CpuTicks {
    CpuTicks {
        sidecar: cpu_ticks_sum(target.sidecar_pids.iter().copied()),
        etcd: cpu_ticks_sum(target.etcd_pids.iter().copied()),
        client: cpu_ticks(std::process::id()).unwrap_or(0),
        others: cpu_ticks_sum(others.iter().copied()),
    }
}

/// CPU milliseconds consumed during a phase.
#[derive(Clone, Copy, Default)]
struct CpuMs {
    sidecar: f64,
    etcd: f64,
    client: f64,
    others: f64,
}

fn cpu_delta(before: CpuTicks, after: CpuTicks) -> CpuMs {
    let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 * 1000.0 / clock_ticks_per_sec();
    CpuMs {
        sidecar: ms(before.sidecar, after.sidecar),
        etcd: ms(before.etcd, after.etcd),
        client: ms(before.client, after.client),
        others: ms(before.others, after.others),
    }
}

// ---------------------------------------------------------------------------------------------
// Phases.

#[derive(Clone)]
struct PhaseResult {
    target: String,
    workload: Workload,
    phase: &'static str,
    clients: usize,
    ops: u64,
    errors: u64,
    /// txn only: how many took the Else branch (the key existed; never expected on distinct keys).
    else_branch: u64,
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

/// Outcome of one operation.
enum OpOutcome {
    Done,
    /// A txn whose compare failed (the Else branch ran).
    DoneElse,
}

async fn one_op(
    conn: &mut Client,
    workload: Workload,
    key: String,
    value: &[u8],
) -> Result<OpOutcome, etcd_client::Error> {
    match workload {
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
                OpOutcome::DoneElse
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
    } = spec;
    let mut conns = Vec::with_capacity(clients);
    for ci in 0..clients {
        let ep = &target.endpoints[ci % target.endpoints.len()];
        conns.push(connect(std::slice::from_ref(ep)).await);
    }
    // Warm-up: every connection established and the server's caches hot.
    for (i, c) in conns.iter_mut().enumerate() {
        let _ = tokio::time::timeout(
            op_timeout,
            c.put(format!("bench/warmup/{i}"), value.as_slice(), None),
        )
        .await;
    }
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
        let label = format!("{}/{}/{phase}", target.name, workload.name());
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
    for mut conn in conns.into_iter() {
        let issued = issued.clone();
        let done = done.clone();
        let errors = errors.clone();
        let value = value.clone();
        let wl = workload.name();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::new();
            let mut first_error = None;
            let mut else_branch = 0u64;
            loop {
                let now = Instant::now();
                if now >= deadline || STOP.load(Ordering::Relaxed) {
                    break;
                }
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    break;
                }
                // Distinct keys: one per operation of the phase.
                let key = format!("bench/{wl}/{phase}/{i:09}");
                let limit = op_timeout.min(hard_stop.saturating_duration_since(now));
                let t0 = Instant::now();
                let r = tokio::time::timeout(limit, one_op(&mut conn, workload, key, &value)).await;
                match r {
                    Ok(Ok(outcome)) => {
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        done.fetch_add(1, Ordering::Relaxed);
                        if let OpOutcome::DoneElse = outcome {
                            else_branch += 1;
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
            (lat, first_error, else_branch)
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    let mut first_error = None;
    let mut else_branch = 0;
    for t in tasks {
        let (lat, err, el) = t.await.expect("client task");
        all.extend(lat);
        else_branch += el;
        if first_error.is_none() {
            first_error = err;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_delta(cpu_before, cpu_snapshot(target, others));
    progress.abort();
    all.sort_unstable();
    PhaseResult {
        target: target.name.clone(),
        workload,
        phase,
        clients,
        ops: all.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        else_branch,
        seconds,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        max_ms: all.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
        cpu,
        first_error,
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

/// Prints `a / b` ratios for every workload and phase where both ran; returns them as JSON
/// (`{workload: {phase: {...}}}`).
fn print_ratios(
    results: &[PhaseResult],
    workloads: &[Workload],
    a: &str,
    b: &[&str],
) -> serde_json::Map<String, serde_json::Value> {
    let find = |t: &str, w: Workload, p: &str| {
        results
            .iter()
            .find(|r| r.target == t && r.workload == w && r.phase == p)
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
    println!();
    println!(
        "{:<23} {:>10}   {:>11}   {:>11}   {:>10}",
        format!("{a} / {b}"),
        "throughput",
        "p50 latency",
        "p99 latency",
        "CPU per op"
    );
    for &w in workloads {
        let mut per_phase = serde_json::Map::new();
        for phase in ["sequential", "concurrent"] {
            let (Some(x), Some(y)) = (find(a, w, phase), find(b, w, phase)) else {
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
            println!(
                "{:<23} {:>10}   {:>11}   {:>11}   {:>10}",
                format!("{}/{phase}", w.name()),
                fmt_ratio(tp),
                fmt_ratio(p50),
                fmt_ratio(p99),
                fmt_ratio(cpu)
            );
            per_phase.insert(
                phase.to_string(),
                json!({ "throughput": tp, "p50_latency": p50, "p99_latency": p99, "cpu_per_op": cpu }),
            );
        }
        out.insert(w.name().to_string(), serde_json::Value::Object(per_phase));
    }
    out
}

fn main() {
    let args = parse_args();
    if args.targets.iter().any(|t| t == "sidecar" || t == "bft4") {
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
    if cfg!(debug_assertions) {
        eprintln!("bench: WARNING: the benchmark itself is a debug build; use `cargo run --release`");
    }
    let mut dir = TestDir::new("bench");
    if args.keep {
        let p = dir.keep();
        eprintln!("bench: logs and data kept in {}", p.display());
    }
    let workload_names: Vec<&str> = args.workloads.iter().map(|w| w.name()).collect();
    eprintln!(
        "bench: workloads {}, {}-byte values, at most {} ops and {:?} per phase; concurrent phase with {} clients",
        workload_names.join(","),
        args.value_size,
        args.ops,
        args.duration,
        args.clients
    );

    // Start every target up front (same conditions for all phases).
    let mut targets: Vec<Target> = Vec::new();
    let mut direct: Option<EtcdProcess> = None;
    let mut bank: Option<EtcdProcess> = None;
    let mut sidecar: Option<Sidecar> = None;
    let mut cluster: Option<EtcdCluster> = None;
    let mut chain: Option<Chain> = None;
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
                });
                cluster = Some(c);
            }
            "bft4" => {
                eprintln!("bench: bft4: bftcd keygen/genesis, starting 4 banks ...");
                let c = Chain::start(&dir, 4);
                eprintln!(
                    "bench: bft4: 4 banks (stock etcd + bftcd each, HotStuff-2) at {}",
                    c.endpoints().join(",")
                );
                targets.push(Target {
                    name: "bft4".into(),
                    endpoints: c.endpoints(),
                    sidecar_pids: c.banks.iter().map(|b| pid(b.sidecar.pid())).collect(),
                    etcd_pids: c.banks.iter().map(|b| pid(b.etcd.pid())).collect(),
                });
                chain = Some(c);
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
        'all: for &workload in &args.workloads {
            for (phase, clients) in [("sequential", 1usize), ("concurrent", args.clients)] {
                for target in &targets {
                    if STOP.load(Ordering::Relaxed) {
                        break 'all;
                    }
                    let others: Vec<u32> = targets
                        .iter()
                        .filter(|o| o.name != target.name)
                        .flat_map(|o| o.all_pids())
                        .collect();
                    let name = &target.name;
                    let wl = workload.name();
                    eprintln!("bench: {name}/{wl}/{phase} ({clients} client(s)) ...");
                    let r = run_phase(PhaseSpec {
                        target,
                        others: &others,
                        workload,
                        phase,
                        clients,
                        ops: args.ops,
                        duration: args.duration,
                        op_timeout: args.op_timeout,
                        value: value.clone(),
                    })
                    .await;
                    eprintln!(
                        "bench: {name}/{wl}/{phase}: {} ops in {:.1} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors; \
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
                    if let Some(e) = &r.first_error {
                        eprintln!("bench: {name}/{wl}/{phase}: first error: {e}");
                    }
                    if r.else_branch > 0 {
                        eprintln!(
                            "bench: {name}/{wl}/{phase}: WARNING: {} txns took the Else branch (key existed)",
                            r.else_branch
                        );
                    }
                    results.push(r);
                }
            }
        }
    });

    println!();
    println!(
        "{:<9} {:<4} {:<11} {:>7} {:>8} {:>6} {:>9} {:>8} {:>8} {:>8} {:>6}",
        "target", "op", "phase", "clients", "ops", "secs", "ops/s", "p50 ms", "p99 ms", "max ms", "errors"
    );
    for r in &results {
        println!(
            "{:<9} {:<4} {:<11} {:>7} {:>8} {:>6.1} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>6}",
            r.target,
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
    println!("CPU during the concurrent phases (utime+stime from /proc/<pid>/stat)");
    println!(
        "{:<9} {:<4} {:>14} {:>14} {:>14} {:>8} {:>8} {:>8} {:>8}",
        "target", "op", "sidecar ms/1k", "etcd ms/1k", "total ms/1k", "sidecar", "etcd", "client", "others"
    );
    println!(
        "{:<9} {:<4} {:>14} {:>14} {:>14} {:>8} {:>8} {:>8} {:>8}",
        "", "", "", "", "", "cores", "cores", "cores", "cores"
    );
    for r in results.iter().filter(|r| r.phase == "concurrent") {
        let has_sidecar = r.target == "sidecar" || r.target == "bft4";
        println!(
            "{:<9} {:<4} {:>14} {:>14} {:>14} {:>8} {:>8.2} {:>8.2} {:>8.2}",
            r.target,
            r.workload.name(),
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

    let sidecar_direct = print_ratios(&results, &args.workloads, "sidecar", &["direct"]);
    let bft_raft = print_ratios(&results, &args.workloads, "bft4", &["raft3", "cluster3"]);

    println!();
    let line = json!({
        "bench": "bftcd-write",
        "workloads": workload_names,
        "value_size": args.value_size,
        "max_ops_per_phase": args.ops,
        "max_seconds_per_phase": args.duration.as_secs_f64(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "interrupted": STOP.load(Ordering::Relaxed),
        "results": results.iter().map(|r| json!({
            "target": r.target,
            "workload": r.workload.name(),
            "phase": r.phase,
            "clients": r.clients,
            "ops": r.ops,
            "errors": r.errors,
            "txn_else_branch": r.else_branch,
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
            },
        })).collect::<Vec<_>>(),
        "ratio_sidecar_over_direct": sidecar_direct,
        "ratio_bft4_over_raft3": bft_raft,
    });
    println!("{line}");
    drop(rt);

    // Clean shutdown: SIGTERM to every sidecar, then every etcd (SIGKILL after 10 s).
    eprintln!("bench: stopping processes ...");
    if let Some(s) = sidecar.as_mut() {
        s.stop();
    }
    if let Some(c) = chain.as_mut() {
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
    drop((sidecar, chain, bank, direct, cluster));
    // The directory is removed unless --keep.
    if !args.keep {
        drop(dir);
    }
    eprintln!("bench: done");
}
