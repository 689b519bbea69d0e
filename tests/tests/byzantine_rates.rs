//! The honest write rate while one Byzantine bank attacks (issue 11's adversarial harness, the
//! test-only build's `--byzantine=<modes>`), as a fraction of the rate without the attack in the
//! same run: each attack starts 15 s after the Byzantine bank does (`after=15000`; `spam`'s
//! default), so the honest rate is measured first without it, then under it.
//!
//! * `spam=3000`: 3,000 peer messages per second to every peer, on top of its honest ones:
//!   correctly signed votes and timeouts for the next views, votes for far-future views, sync
//!   requests from height 0 and from u64::MAX, unrequested sync answers claiming huge heights,
//!   read-index requests and undecodable frames.
//! * `flood=40000`: 40,000 valid, signed operations forwarded at once every 10 s.
//! * `forward-invalid`: every 2 s, operations that break the chain's rules (one larger than any
//!   block, one writing the reserved prefix, a Txn putting one key twice), validly signed.
//!
//! Asserted: honest writes through banks 1 and 2 keep committing within the write timeout, the
//! honest sidecars' memory stays under a bound, and the three honest banks end with the same
//! HashKV.
//! The fraction is printed, not asserted (timings are for benchmarks).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bftcd_tests::kv::{hashkv, honest_writer};
use bftcd_tests::{rss_mib, Chain, Deviant, TestDir};

/// Bound on an honest sidecar's resident memory during the spam.
const RSS_BOUND_MIB: u64 = 400;
const UNDER_ATTACK: Duration = Duration::from_secs(12);

/// Runs the honest writers (banks 1 and 2) for `d` and returns their writes per second.
async fn measure(chain: &Chain, phase: &'static str, d: Duration, sample: impl Fn()) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let endpoints = chain.endpoints();
    let writers: Vec<_> =
        (0..2).map(|b| tokio::spawn(honest_writer(endpoints[b].clone(), format!("honest/{phase}/{b}"), stop.clone()))).collect();
    let started = Instant::now();
    while started.elapsed() < d {
        sample();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut n = 0;
    for w in writers {
        n += w.await.expect("honest writer").0;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Runs bank 4 with `--byzantine=<modes>`, measures the honest rate before and under the attack
/// (which must announce itself in bank 4's log with `marker`), and checks the chain stays whole.
async fn honest_rate_under(name: &str, modes: &str, marker: &str) {
    let bin = bftcd_tests::bins::try_byzantine_bin("debug").unwrap_or_else(|e| panic!("{e}"));
    let dir = TestDir::new(&format!("byzantine-rates-{name}"));
    let deviant = Deviant { bank: 3, bin, args: vec![format!("--byzantine={modes}")] };
    let started = Instant::now();
    let chain = tokio::task::block_in_place(|| Chain::start_with(&dir, 4, Some(deviant)));
    tokio::task::block_in_place(|| chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30)));
    let pids: Vec<u32> = (0..3).filter_map(|b| chain.banks[b].sidecar.pid()).collect();
    let peak = std::sync::Mutex::new(0u64);
    let sample = || {
        let m = pids.iter().map(|&p| rss_mib(p)).max().unwrap_or(0);
        let mut p = peak.lock().unwrap();
        *p = (*p).max(m);
    };

    // Without the attack: what is left of its first 15 s, minus a margin.
    let quiet = Duration::from_secs(13).saturating_sub(started.elapsed()).max(Duration::from_secs(2));
    let before = measure(&chain, "before", quiet, &sample).await;
    let idle_peak = *peak.lock().unwrap();

    let deviant_log = || std::fs::read_to_string(chain.banks[3].sidecar.stderr_log()).unwrap_or_default();
    let waited = Instant::now();
    while !deviant_log().contains(marker) {
        assert!(waited.elapsed() < Duration::from_secs(30), "bank 4 never started its attack ({marker:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    *peak.lock().unwrap() = 0;
    let during = measure(&chain, "during", UNDER_ATTACK, &sample).await;
    let attack_peak = *peak.lock().unwrap();
    eprintln!(
        "byzantine-rates {name} (--byzantine={modes}): honest writes through banks 1-2: {before:.1}/s without, \
         {during:.1}/s under the attack: {:.2} of the rate without it; honest sidecars' RSS at most {idle_peak} MiB \
         before, {attack_peak} MiB under the attack (bound {RSS_BOUND_MIB} MiB)",
        during / before.max(f64::MIN_POSITIVE)
    );
    assert!(during > 0.0, "no honest write committed under the attack");
    assert!(attack_peak < RSS_BOUND_MIB, "an honest sidecar grew to {attack_peak} MiB under the attack");

    // The honest banks end identical. Bank 4's own state is its own affair: its messages, honest
    // ones included, wait in the same per-peer queues as its spam and are dropped with it.
    let rev = tokio::task::block_in_place(|| chain.wait_converged(&[0, 1, 2], Duration::from_secs(60)));
    let hashes: Vec<(i64, i64)> = (0..3).map(|b| hashkv(&chain.etcdctl(b))).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "HashKV or revision differs between the honest banks: {hashes:?}");
    assert_eq!(hashes[0].1, rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spamming_bank_cannot_halt_or_exhaust_the_others() {
    honest_rate_under("spam", "spam=3000", "THIS BANK IS BYZANTINE: spamming").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_rate_under_a_flood_of_valid_operations() {
    honest_rate_under("flood", "flood=40000,after=15000", "THIS BANK IS BYZANTINE: forging operations").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_rate_under_invalid_operations() {
    honest_rate_under("invalid", "forward-invalid,after=15000", "THIS BANK IS BYZANTINE: forging operations").await;
}
