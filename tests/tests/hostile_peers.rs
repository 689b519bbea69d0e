//! Anyone who reaches a bank's peer port, without a validator certificate, cannot keep the banks
//! from connecting to it. Four real sidecars and etcds; an attacker holds 300 TCP connections
//! from 30 addresses (127.0.0.2 to 127.0.0.31) to bank 1's peer port without ever speaking
//! (opening a new one whenever one is closed), while bank 2's sidecar restarts and must dial
//! bank 1 again. Bank 1 must accept bank 2 (from 127.0.0.1, the address it is listed with) well
//! before the attacker's handshakes time out (10 s), writes through banks 1 and 2 commit, and all
//! four banks end with the same HashKV.
//!
//! Before, the 64 pre-authentication slots were shared by every source: the attacker held them
//! all and bank 2 was refused for as long as the attack went on; then, with at most 4 per
//! source, 16 or more addresses still held all 64 (30 × 4 here).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bftcd_tests::kv::{get, hashkv, put};
use bftcd_tests::{Chain, TestDir};
use tokio::io::AsyncReadExt;

const ATTACKERS: usize = 300;
/// Source addresses the attacker spreads its connections over.
const SOURCES: usize = 30;
/// Bank 2 must be accepted by bank 1 within this of its restart (the handshake timeout, which
/// frees the attacker's slots at the earliest, is 10 s).
const RECONNECT_LIMIT: Duration = Duration::from_secs(6);

/// Lines of bank `bank`'s log about validator `peer` (0-based) that contain `what`.
fn count(chain: &Chain, bank: usize, peer: usize, what: &str) -> usize {
    let log = std::fs::read_to_string(chain.banks[bank].sidecar.stderr_log()).unwrap_or_default();
    let tag = format!("peer={peer}");
    log.lines().filter(|l| l.contains(what) && l.split_whitespace().any(|w| w == tag)).count()
}

/// Holds one silent connection from `source` to `port`, opening another when it is closed.
async fn hold_silently(port: u16, source: [u8; 4], open: Arc<AtomicUsize>) {
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        let Ok(sock) = tokio::net::TcpSocket::new_v4() else { return };
        if sock.bind((source, 0).into()).is_err() {
            return;
        }
        if let Ok(mut conn) = sock.connect(target).await {
            open.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 1024];
            while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
            open.fetch_sub(1, Ordering::Relaxed);
        }
        // A refused connection comes back soon, without spinning.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Sequential writes through `endpoint` for `d`: writes per second (printed, not asserted).
async fn write_rate(endpoint: &str, phase: &str, d: Duration) -> f64 {
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < d {
        put(endpoint, &format!("hostile/rate/{phase}/{n}"), "v").await.unwrap_or_else(|e| panic!("honest write ({phase}): {e}"));
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_cannot_lock_a_bank_out() {
    let dir = TestDir::new("hostile-peers");
    let mut chain = Chain::start(&dir, 4);
    let endpoints = chain.endpoints();
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    put(&endpoints[0], "hostile/before", "v").await.expect("a write before the attack");
    let before = write_rate(&endpoints[0], "before", Duration::from_secs(3)).await;

    let open = Arc::new(AtomicUsize::new(0));
    let attack: Vec<_> =
        (0..ATTACKERS)
        .map(|i| tokio::spawn(hold_silently(chain.banks[0].peer_port, [127, 0, 0, 2 + (i % SOURCES) as u8], open.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("attacker: {} of {ATTACKERS} connections open from {SOURCES} addresses", open.load(Ordering::Relaxed));

    // Bank 2 comes back and must dial bank 1 through the attack.
    let accepted_before = count(&chain, 0, 1, "inbound peer connected");
    let restarted = Instant::now();
    tokio::task::block_in_place(|| chain.banks[1].sidecar.restart());
    eprintln!("bank 2 restarted (READY after {:?})", restarted.elapsed());
    loop {
        if count(&chain, 0, 1, "inbound peer connected") > accepted_before {
            break;
        }
        assert!(
            restarted.elapsed() < RECONNECT_LIMIT,
            "bank 1 did not accept bank 2 within {RECONNECT_LIMIT:?} of its restart; bank 1's log:\n{}",
            bftcd_tests::log_tail(chain.banks[0].sidecar.stderr_log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("bank 1 accepted bank 2 {:?} after its restart", restarted.elapsed());
    let during = write_rate(&endpoints[0], "during", Duration::from_secs(3)).await;
    eprintln!(
        "honest writes through bank 1: {before:.1}/s before the attack, {during:.1}/s under it: {:.2} of the rate without it",
        during / before.max(f64::MIN_POSITIVE)
    );

    for round in 0..5 {
        for b in [0, 1] {
            let key = format!("hostile/{b}/{round}");
            put(&endpoints[b], &key, "during the attack")
                .await
                .unwrap_or_else(|e| panic!("write {key} through bank {} failed: {e}", b + 1));
        }
    }
    assert_eq!(
        get(&endpoints[0], "hostile/1/4", Duration::from_secs(10)).await.expect("a read at bank 1").as_deref(),
        Some(&b"during the attack"[..])
    );
    eprintln!("attacker: {} connections open at the end", open.load(Ordering::Relaxed));
    for a in attack {
        a.abort();
    }
    let rev = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    let hashes: Vec<(i64, i64)> = (0..4).map(|b| hashkv(&chain.etcdctl(b))).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "HashKV or revision differs between banks: {hashes:?}");
    assert_eq!(hashes[0].1, rev);
    // The refusals were noticed, and rate-limited (one warning per 10 s at most).
    let log = std::fs::read_to_string(chain.banks[0].sidecar.stderr_log()).unwrap_or_default();
    let warnings = log.lines().filter(|l| l.contains("inbound connections refused before authentication")).count();
    assert!(warnings >= 1, "bank 1 never warned about the refused connections");
    eprintln!("bank 1 warned {warnings} times about refused connections; converged at revision {rev}");
}
