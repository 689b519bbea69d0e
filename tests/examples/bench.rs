//! Write throughput and latency: stock etcd used directly vs. stock etcd behind a bftcd sidecar,
//! measured in the same run on the same machine (design.md §7: ratios, never absolute numbers).
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p bftcd-tests --example bench -- [--ops N] [--clients 64] [--duration 12]
//!     [--value-size 256] [--targets direct,sidecar[,cluster3]] [--sidecar-arg ARG]... [--keep]
//! ```
//!
//! For every target it runs two phases, each ending after `--ops` puts or `--duration` seconds,
//! whichever comes first:
//! - `sequential`: one client, one put at a time;
//! - `concurrent`: `--clients` clients, each with its own connection, one put at a time each.
//!
//! Prints a table, the sidecar/direct ratios and, last, one JSON line with everything.
//! `cluster3` (optional) is a 3-member stock etcd Raft cluster, for scale.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bftcd_tests::sidecar::BANK_ETCD_ARGS;
use bftcd_tests::{bins, EtcdCluster, EtcdProcess, Sidecar, TestDir};
use etcd_client::{Client, ConnectOptions};
use serde_json::json;

struct Args {
    ops: u64,
    clients: usize,
    duration: Duration,
    value_size: usize,
    targets: Vec<String>,
    sidecar_args: Vec<String>,
    keep: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench [--ops N (default 50000)] [--clients C (default 64)] [--duration SECS (default 12)]\n\
         \x20            [--value-size BYTES (default 256)] [--targets direct,sidecar[,cluster3]]\n\
         \x20            [--sidecar-arg ARG]... [--keep]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        ops: 50_000,
        clients: 64,
        duration: Duration::from_secs(12),
        value_size: 256,
        targets: vec!["direct".into(), "sidecar".into()],
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
        match name.as_str() {
            "--ops" => a.ops = value().parse().unwrap_or_else(|_| usage()),
            "--clients" => a.clients = value().parse().unwrap_or_else(|_| usage()),
            "--duration" => {
                a.duration = Duration::from_secs_f64(value().parse().unwrap_or_else(|_| usage()))
            }
            "--value-size" => a.value_size = value().parse().unwrap_or_else(|_| usage()),
            "--targets" => {
                a.targets = value()
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
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
        if !["direct", "sidecar", "cluster3"].contains(&t.as_str()) {
            eprintln!("unknown target {t}");
            usage()
        }
    }
    a
}

#[derive(Clone)]
struct PhaseResult {
    target: String,
    phase: &'static str,
    clients: usize,
    ops: u64,
    errors: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
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

/// Runs one phase: `clients` connections issuing puts until `ops` are issued or time is up.
async fn run_phase(
    target: &str,
    phase: &'static str,
    endpoints: &[String],
    clients: usize,
    ops: u64,
    duration: Duration,
    value: Arc<Vec<u8>>,
) -> PhaseResult {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(connect(endpoints).await);
    }
    // Warm-up: every connection established and the server's caches hot.
    for (i, c) in conns.iter_mut().enumerate() {
        let _ = c
            .put(format!("bench/warmup/{i}"), value.as_slice(), None)
            .await;
    }
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;

    let progress = {
        let done = done.clone();
        let label = format!("{target}/{phase}");
        tokio::spawn(async move {
            let mut last = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = done.load(Ordering::Relaxed);
                eprintln!(
                    "  [{label}] {now} puts, {:.0}/s over the last 2 s, {:.1} s elapsed",
                    (now - last) as f64 / 2.0,
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
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::new();
            let mut first_error = None;
            let mut n = 0u64;
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    break;
                }
                // A bounded key space per client keeps the database small.
                let key = format!("bench/{phase}/{ci:03}/{:05}", n % 10_000);
                n += 1;
                let t0 = Instant::now();
                match conn.put(key, value.as_slice(), None).await {
                    Ok(_) => {
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if first_error.is_none() {
                            first_error = Some(e.to_string());
                        }
                    }
                }
            }
            (lat, first_error)
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    let mut first_error = None;
    for t in tasks {
        let (lat, err) = t.await.expect("client task");
        all.extend(lat);
        if first_error.is_none() {
            first_error = err;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.abort();
    all.sort_unstable();
    PhaseResult {
        target: target.to_string(),
        phase,
        clients,
        ops: all.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        max_ms: all.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
        first_error,
    }
}

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

fn main() {
    let args = parse_args();
    if args.targets.iter().any(|t| t == "sidecar") {
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
    let mut dir = TestDir::new("bench");
    if args.keep {
        let p = dir.keep();
        eprintln!("bench: logs and data kept in {}", p.display());
    }
    eprintln!(
        "bench: {} puts of {} bytes per phase at most, {:?} at most per phase; concurrent phase with {} clients",
        args.ops, args.value_size, args.duration, args.clients
    );

    // Start every target up front (same conditions for all phases).
    let mut targets: Vec<(String, Vec<String>)> = Vec::new();
    let mut _direct = None;
    let mut _bank = None;
    let mut _sidecar = None;
    let mut _cluster = None;
    for t in &args.targets {
        match t.as_str() {
            "direct" => {
                let e = EtcdProcess::start(&dir, "direct");
                eprintln!("bench: direct: stock etcd at {}", e.endpoint());
                targets.push(("direct".into(), vec![e.endpoint()]));
                _direct = Some(e);
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
                targets.push(("sidecar".into(), vec![s.endpoint()]));
                _bank = Some(e);
                _sidecar = Some(s);
            }
            "cluster3" => {
                let c = EtcdCluster::start_named(&dir, "cluster", 3, &[]);
                eprintln!(
                    "bench: cluster3: stock etcd cluster at {}",
                    c.endpoints_csv()
                );
                targets.push(("cluster3".into(), c.endpoints()));
                _cluster = Some(c);
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
        for (phase, clients) in [("sequential", 1usize), ("concurrent", args.clients)] {
            for (name, endpoints) in &targets {
                eprintln!("bench: {name}/{phase} ({clients} client(s)) ...");
                let r = run_phase(name, phase, endpoints, clients, args.ops, args.duration, value.clone()).await;
                eprintln!(
                    "bench: {name}/{phase}: {} puts in {:.1} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                    r.ops,
                    r.seconds,
                    r.ops_per_sec(),
                    r.p50_ms,
                    r.p99_ms,
                    r.errors
                );
                if let Some(e) = &r.first_error {
                    eprintln!("bench: {name}/{phase}: first error: {e}");
                }
                results.push(r);
            }
        }
    });

    println!();
    println!(
        "{:<9} {:<11} {:>7} {:>8} {:>7} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "target",
        "phase",
        "clients",
        "puts",
        "secs",
        "puts/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors"
    );
    for r in &results {
        println!(
            "{:<9} {:<11} {:>7} {:>8} {:>7.1} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7}",
            r.target,
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

    let find = |t: &str, p: &str| results.iter().find(|r| r.target == t && r.phase == p);
    let mut ratios = serde_json::Map::new();
    let have_both =
        find("direct", "sequential").is_some() && find("sidecar", "sequential").is_some();
    if have_both {
        println!();
        println!("sidecar / direct   throughput   p50 latency   p99 latency");
        for phase in ["sequential", "concurrent"] {
            let (d, s) = (
                find("direct", phase).unwrap(),
                find("sidecar", phase).unwrap(),
            );
            let (tp, p50, p99) = (
                ratio(s.ops_per_sec(), d.ops_per_sec()),
                ratio(s.p50_ms, d.p50_ms),
                ratio(s.p99_ms, d.p99_ms),
            );
            println!(
                "{phase:<18} {:>10}   {:>11}   {:>11}",
                fmt_ratio(tp),
                fmt_ratio(p50),
                fmt_ratio(p99)
            );
            ratios.insert(
                phase.to_string(),
                json!({ "throughput": tp, "p50_latency": p50, "p99_latency": p99 }),
            );
        }
    }
    println!();
    let line = json!({
        "bench": "bftcd-put",
        "value_size": args.value_size,
        "max_ops_per_phase": args.ops,
        "max_seconds_per_phase": args.duration.as_secs_f64(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "results": results.iter().map(|r| json!({
            "target": r.target,
            "phase": r.phase,
            "clients": r.clients,
            "ops": r.ops,
            "errors": r.errors,
            "seconds": r.seconds,
            "ops_per_sec": r.ops_per_sec(),
            "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms,
            "max_ms": r.max_ms,
        })).collect::<Vec<_>>(),
        "ratio_sidecar_over_direct": ratios,
    });
    println!("{line}");
    drop(rt);
    // Processes are killed when dropped; the directory is removed unless --keep.
    drop(_sidecar);
    drop(_bank);
    drop(_direct);
    drop(_cluster);
    if !args.keep {
        drop(dir);
    }
}
