//! CPU time by component: where a bank's processor time goes (consensus, crypto, network,
//! persistence, apply, front).
//!
//! Profilers answer this for one run by hand; the benchmark needs it on every run, split the same
//! way each time, so that "CPU per write" can be compared component by component across changes.
//! Each thread keeps the component it is working for; entering a [`section`] or polling an
//! [`Accounted`] future charges the thread's CPU time (user and system, from
//! `CLOCK_THREAD_CPUTIME_ID`) since the last switch to the component that was running, so nested
//! sections (crypto inside consensus) are never counted twice. What runs outside every section
//! (the async runtime, HTTP/2 framing of gRPC connections, logging) stays unattributed: the
//! process total minus the sum of the components.
//!
//! Off by default: two clock reads per poll cost about a microsecond. `bftcd serve` turns it on
//! with its metrics listener, which exports the totals as `bftcd_cpu_nanoseconds_total`.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

/// What a bank spends processor time on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The consensus task: the state machine, the mempool, building and checking blocks.
    Consensus,
    /// Signing and verifying: BLS votes and certificates, Ed25519 batch signatures.
    Crypto,
    /// Peer connections: TLS, framing, encoding and decoding peer messages.
    Network,
    /// The consensus log and the ledger: encoding, writing, fdatasync.
    Persistence,
    /// Applying committed blocks to the local etcd.
    Apply,
    /// Client requests: validation, reads from the local etcd, waiting writes, leases, watches.
    Front,
}

impl Component {
    pub const ALL: [Component; 6] = [
        Component::Consensus,
        Component::Crypto,
        Component::Network,
        Component::Persistence,
        Component::Apply,
        Component::Front,
    ];

    /// The label value in `bftcd_cpu_nanoseconds_total{component=...}`.
    pub fn name(self) -> &'static str {
        match self {
            Component::Consensus => "consensus",
            Component::Crypto => "crypto",
            Component::Network => "network",
            Component::Persistence => "persistence",
            Component::Apply => "apply",
            Component::Front => "front",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// Called with (component, nanoseconds) after every charge; the metrics exporter hooks in here.
static SINK: std::sync::OnceLock<Box<dyn Fn(Component, u64) + Send + Sync>> = std::sync::OnceLock::new();

/// Starts accounting (for the whole process, from now on).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Starts accounting and reports every charge to `sink` as well (first caller wins).
pub fn enable_with_sink(sink: impl Fn(Component, u64) + Send + Sync + 'static) {
    let _ = SINK.set(Box::new(sink));
    enable();
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// CPU nanoseconds charged to each component since the process started, in [`Component::ALL`]
/// order.
pub fn totals() -> [(Component, u64); 6] {
    Component::ALL.map(|c| (c, TOTALS[c as usize].load(Ordering::Relaxed)))
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only into the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn charge(c: Component, ns: u64) {
    if ns == 0 {
        return;
    }
    TOTALS[c as usize].fetch_add(ns, Ordering::Relaxed);
    if let Some(sink) = SINK.get() {
        sink(c, ns);
    }
}

thread_local! {
    /// The component this thread works for, and the thread CPU time when it started to.
    static RUNNING: Cell<Option<(Component, u64)>> = const { Cell::new(None) };
}

/// Charges this thread's CPU time to `c` until the guard drops; the enclosing section (if any)
/// gets the time before and after.
pub fn section(c: Component) -> Section {
    if !enabled() {
        return Section { outer: None, active: false };
    }
    let now = thread_cpu_ns();
    let outer = RUNNING.with(|r| r.replace(Some((c, now))));
    if let Some((o, since)) = outer {
        charge(o, now.saturating_sub(since));
    }
    Section { outer: outer.map(|(o, _)| o), active: true }
}

/// See [`section`].
#[must_use]
pub struct Section {
    outer: Option<Component>,
    active: bool,
}

impl Drop for Section {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let now = thread_cpu_ns();
        let running = RUNNING.with(|r| r.replace(self.outer.map(|o| (o, now))));
        if let Some((c, since)) = running {
            charge(c, now.saturating_sub(since));
        }
    }
}

/// Runs `f` charged to `c`.
pub fn run<T>(c: Component, f: impl FnOnce() -> T) -> T {
    let _s = section(c);
    f()
}

/// A future whose every poll is charged to one component.
pub struct Accounted<F> {
    component: Component,
    inner: F,
}

impl<F: Future> Future for Accounted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned: it is never moved out of `self`.
        let this = unsafe { self.get_unchecked_mut() };
        let _s = section(this.component);
        unsafe { Pin::new_unchecked(&mut this.inner) }.poll(cx)
    }
}

/// `fut.accounted(Component::Network)`.
pub trait AccountedExt: Future + Sized {
    fn accounted(self, component: Component) -> Accounted<Self> {
        Accounted { component, inner: self }
    }
}

impl<F: Future> AccountedExt for F {}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(ms: u64) {
        let start = thread_cpu_ns();
        while thread_cpu_ns() - start < ms * 1_000_000 {
            std::hint::black_box(0u64);
        }
    }

    fn total(c: Component) -> u64 {
        TOTALS[c as usize].load(Ordering::Relaxed)
    }

    // One test touches the process-wide totals, so the charges below are all its own.
    #[test]
    fn nested_sections_charge_each_component_once() {
        enable();
        let (consensus, crypto) = (total(Component::Consensus), total(Component::Crypto));
        let _outer = section(Component::Consensus);
        spin(20);
        run(Component::Crypto, || spin(30));
        spin(20);
        drop(_outer);
        let consensus = (total(Component::Consensus) - consensus) / 1_000_000;
        let crypto = (total(Component::Crypto) - crypto) / 1_000_000;
        // The inner 30 ms go to crypto only; the outer section keeps its own 40 ms.
        assert!((30..40).contains(&crypto), "crypto {crypto} ms");
        assert!((40..55).contains(&consensus), "consensus {consensus} ms");

        // A future charges its polls, not the time it waits.
        let before = total(Component::Network);
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(
            async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                spin(10);
            }
            .accounted(Component::Network),
        );
        let network = (total(Component::Network) - before) / 1_000_000;
        assert!((10..30).contains(&network), "network {network} ms");
    }
}
