//! Free loopback ports picked at runtime.
//!
//! Tests run in parallel, one process per test under cargo-nextest and one thread per test under
//! `cargo test`, so a port must not be handed out twice:
//! - within a process, every port handed out is remembered and never handed out again;
//! - across processes, a port is reserved by creating `<tmp>/bftcd-test-ports/<port>` (O_EXCL)
//!   holding the owner's pid; a reservation whose owner is dead is taken over;
//! - ports are drawn at random *below* the kernel's ephemeral range, so the outgoing connections
//!   of running etcds and sidecars (which take ephemeral ports) never land on a port we picked
//!   but have not bound yet;
//! - each candidate is bind-checked right before it is handed out.
//!
//! A race with an unrelated program is still possible, so starters retry with fresh ports when a
//! child reports "address already in use".

use std::collections::HashSet;
use std::fs;
use std::io::{ErrorKind, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

struct State {
    handed_out: HashSet<u16>,
    rng: u64,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = nanos ^ ((std::process::id() as u64) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        Mutex::new(State {
            handed_out: HashSet::new(),
            rng: seed | 1,
        })
    })
}

fn next_random(rng: &mut u64) -> u64 {
    // xorshift64*
    let mut x = *rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// The range free ports are drawn from: below the kernel's ephemeral range when there is room.
fn port_range() -> (u16, u16) {
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u32>().ok())
        })
        .unwrap_or(32768);
    if ephemeral_low > 12_000 {
        (10_000, (ephemeral_low - 1).min(u16::MAX as u32) as u16)
    } else {
        // Unusual configuration: fall back to a high range above common ephemeral settings.
        (61_000, 65_000)
    }
}

fn reservation_dir() -> PathBuf {
    std::env::temp_dir().join("bftcd-test-ports")
}

fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence/permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Reserves `port` for this process across processes. False when another live process holds it.
fn reserve_across_processes(port: u16) -> bool {
    let dir = reservation_dir();
    if fs::create_dir_all(&dir).is_err() {
        return true; // cannot coordinate; rely on the bind check
    }
    let path = dir.join(port.to_string());
    let me = std::process::id();
    for _ in 0..3 {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                let _ = write!(f, "{me}");
                return true;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let owner = fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok());
                match owner {
                    Some(pid) if pid as u32 == me => return true,
                    Some(pid) if pid_alive(pid) => return false,
                    // Dead owner (or a half-written file): take it over.
                    _ => {
                        let _ = fs::remove_file(&path);
                    }
                }
            }
            Err(_) => return true,
        }
    }
    false
}

/// Gives back a cross-process reservation made by this process (the port stays unusable for
/// the rest of this process, so a restart of a dropped process cannot race with a new user).
pub fn release_port(port: u16) {
    let path = reservation_dir().join(port.to_string());
    if let Ok(s) = fs::read_to_string(&path) {
        if s.trim() == std::process::id().to_string() {
            let _ = fs::remove_file(&path);
        }
    }
}

/// True when a TCP listener can bind 127.0.0.1:`port` right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A free loopback port, never handed out before in this process and reserved against other
/// test processes.
pub fn free_port() -> u16 {
    let (lo, hi) = port_range();
    let span = (hi - lo) as u64;
    for _ in 0..2000 {
        let port = {
            let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
            let candidate = lo + (next_random(&mut st.rng) % span) as u16;
            if !st.handed_out.insert(candidate) {
                continue;
            }
            candidate
        };
        if !port_is_free(port) {
            continue;
        }
        if !reserve_across_processes(port) {
            continue;
        }
        // Check again: another program may have bound it between the two steps.
        if port_is_free(port) {
            return port;
        }
        release_port(port);
    }
    // Last resort: let the kernel choose (an ephemeral port).
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = l.local_addr().expect("local_addr").port();
    state()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .handed_out
        .insert(port);
    port
}

/// Reserves a given port as [`free_port`] reserves the ones it picks (for a program that
/// derives its ports from one base, such as `bftcd dev-cluster`): true when it is free and now
/// this process's.
pub fn reserve_port(port: u16) -> bool {
    if !state().lock().unwrap_or_else(|e| e.into_inner()).handed_out.insert(port) {
        return false;
    }
    if port_is_free(port) && reserve_across_processes(port) {
        if port_is_free(port) {
            return true;
        }
        release_port(port);
    }
    false
}

/// `n` distinct free ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}
