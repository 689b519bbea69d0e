//! Connection tasks: the accept loop with its inbound readers, and one dialer/writer per peer.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tracing::{debug, error, info, trace, warn};

use super::frame::{encode_header, read_frame, Frame, ReadError, PING};
use super::pki::fingerprint;
use super::queue::PeerQueue;
use super::stats::PeerCounters;
use super::{
    source_key, tls, Keepalive, Shared, HANDSHAKE_TIMEOUT, MAX_HANDSHAKES_PER_SOURCE,
};
use crate::cpu::{AccountedExt, Component};

/// First pause between reconnect attempts; doubles up to `Keepalive::reconnect_max`.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// A connection that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(2);
const WRITE_BUFFER: usize = 64 * 1024;
/// Writes are issued (and deadlined) in pieces of at most this many bytes.
const WRITE_CHUNK: usize = 64 * 1024;

/// How often at most a connection refused before authentication is logged as a warning (each
/// one is logged at debug): anyone can cause them, as fast as they can connect.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

/// A handshake slot of one source address, given back when dropped.
struct SourceSlot {
    shared: Arc<Shared>,
    key: IpAddr,
}

impl SourceSlot {
    /// A slot for `addr`'s source, if it has fewer than [`MAX_HANDSHAKES_PER_SOURCE`].
    fn take(shared: &Arc<Shared>, addr: SocketAddr) -> Option<SourceSlot> {
        let key = source_key(addr.ip());
        let mut pending = shared.pending_by_source.lock().unwrap_or_else(|e| e.into_inner());
        let n = pending.entry(key).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot { shared: shared.clone(), key })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut pending = self.shared.pending_by_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = pending.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&self.key);
            }
        }
    }
}

/// Counts and logs a connection refused before it was authenticated (no slot, or a failed or
/// timed-out handshake): at debug each time, and as a warning at most once per
/// [`REFUSAL_WARN_EVERY`] with the number refused since the last one.
fn refuse(shared: &Shared, addr: SocketAddr, why: &dyn std::fmt::Display) {
    shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
    debug!(%addr, %why, "inbound connection refused before authentication");
    let mut w = shared.refusal_warning.lock().unwrap_or_else(|e| e.into_inner());
    w.1 += 1;
    if w.0.is_none_or(|at| at.elapsed() >= REFUSAL_WARN_EVERY) {
        warn!(%addr, %why, refused = w.1, "inbound connections refused before authentication (count since the last warning)");
        *w = (Some(Instant::now()), 0);
    }
}

/// Accepts connections until aborted. Dropping this future aborts every inbound reader.
pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                // The per-source slot first: a source at its limit must not take global ones.
                Ok((tcp, addr)) => match SourceSlot::take(&shared, addr) {
                    None => refuse(&shared, addr, &"too many handshakes from this address"),
                    // A listed peer's address has its own per-source slots only.
                    Some(slot) if shared.peer_sources.contains(&slot.key) => {
                        conns.spawn(serve_inbound(shared.clone(), tcp, addr, (None, slot)).accounted(Component::Network));
                    }
                    Some(slot) => match shared.handshakes.clone().try_acquire_owned() {
                        Ok(permit) => {
                            conns.spawn(serve_inbound(
                                shared.clone(), tcp, addr, (Some(permit), slot),
                            ).accounted(Component::Network));
                        }
                        Err(_) => refuse(&shared, addr, &"too many pending handshakes"),
                    },
                },
                Err(e) => {
                    // Typically out of file descriptors: pause instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// The hello: each side's first frame on a connection, this tag and its genesis hash.
const HELLO_TAG: &[u8] = b"bftcd.hello.v1\0";
/// Room for a hello; a longer first frame is a protocol violation (and never allocated).
const HELLO_MAX: usize = 64;

/// Why a hello exchange failed.
enum HelloError {
    /// The peer's genesis hash differs from ours.
    Mismatch([u8; 32]),
    /// No valid hello arrived.
    Bad(String),
}

/// A whole hello frame (header and payload), for tests that speak the protocol by hand.
#[cfg(test)]
pub(super) fn hello_frame(hash: &[u8; 32]) -> Vec<u8> {
    let payload = [HELLO_TAG, &hash[..]].concat();
    [&encode_header(payload.len())[..], &payload].concat()
}

/// Sends our hello and reads the peer's, within `limit` each. Both sides write first, so
/// neither waits for the other. Bytes read past the peer's hello stay in `buf`.
async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    mine: &[u8; 32],
    limit: Duration,
) -> Result<(), HelloError> {
    let payload = [HELLO_TAG, &mine[..]].concat();
    let sent = async {
        write_frame_within(stream, &payload, limit).await?;
        within(limit, stream.flush()).await
    };
    sent.await
        .map_err(|e| HelloError::Bad(format!("sending the hello: {e}")))?;
    let frame = match read_frame(stream, buf, HELLO_MAX, limit).await {
        Ok(Some(Frame::Data(frame))) => frame,
        Ok(Some(Frame::Ping)) => return Err(HelloError::Bad("a ping before its hello".into())),
        Ok(None) => return Err(HelloError::Bad("closed before its hello".into())),
        Err(ReadError::Invalid(reason)) => {
            return Err(HelloError::Bad(format!("bad hello: {reason}")))
        }
        Err(ReadError::Silent(idle)) => {
            return Err(HelloError::Bad(format!("no hello within {idle:?}")))
        }
        Err(ReadError::Io(e)) => return Err(HelloError::Bad(format!("reading the hello: {e}"))),
    };
    let theirs: [u8; 32] = frame
        .strip_prefix(HELLO_TAG)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| HelloError::Bad("malformed hello (an older bftcd?)".into()))?;
    if &theirs != mine {
        return Err(HelloError::Mismatch(theirs));
    }
    Ok(())
}

/// Counts a peer whose genesis differs and logs it (the first time and then at powers of two:
/// it keeps reconnecting).
fn genesis_mismatch(shared: &Shared, peer: u32, theirs: &[u8; 32]) {
    let n = shared.peer(peer).map_or(1, |c| {
        c.genesis_mismatches.fetch_add(1, Ordering::Relaxed) + 1
    });
    if n.is_power_of_two() {
        error!(
            peer,
            refused = n,
            "peer {} has genesis {}, this bank has {}: refusing",
            shared.name(peer),
            hex::encode(theirs),
            hex::encode(shared.genesis_hash)
        );
    }
}

fn reject(shared: &Shared, addr: SocketAddr, reason: &dyn std::fmt::Display) {
    shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
    warn!(%addr, %reason, "rejected inbound peer connection");
}

/// Authenticates one inbound connection and delivers its frames. `slots` are held until the
/// handshake ends.
async fn serve_inbound(
    shared: Arc<Shared>,
    tcp: TcpStream,
    addr: SocketAddr,
    slots: (Option<OwnedSemaphorePermit>, SourceSlot),
) {
    let _ = tcp.set_nodelay(true);
    let mut tls = match timeout(HANDSHAKE_TIMEOUT, shared.acceptor.accept(tcp)).await {
        Err(_) => return refuse(&shared, addr, &"TLS handshake timed out"),
        Ok(Err(e)) => return refuse(&shared, addr, &e),
        Ok(Ok(tls)) => tls,
    };
    let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
        return reject(&shared, addr, &"no client certificate");
    };
    let from = match shared.by_cert.get(leaf.as_ref()) {
        Some(&i) if i != shared.me => i,
        _ => {
            let reason = format!(
                "certificate {} is not another validator's",
                fingerprint(leaf)
            );
            return reject(&shared, addr, &reason);
        }
    };
    if let Err(reason) = tls::negotiated(tls.get_ref().1.alpn_protocol()) {
        let _ = timeout(Duration::from_secs(1), tls.shutdown()).await;
        return reject(&shared, addr, &format!("validator {from}: {reason}"));
    }
    let mut buf = BytesMut::new();
    match hello(&mut tls, &mut buf, &shared.genesis_hash, HANDSHAKE_TIMEOUT).await {
        Ok(()) => {}
        Err(HelloError::Mismatch(theirs)) => {
            genesis_mismatch(&shared, from, &theirs);
            let _ = timeout(Duration::from_secs(1), tls.shutdown()).await;
            return;
        }
        Err(HelloError::Bad(reason)) => {
            return reject(&shared, addr, &format!("{}: {reason}", shared.name(from)));
        }
    }
    // The hello is part of the handshake: until it is done the connection holds its slots, so
    // a peer stalling in it cannot open connections without bound.
    drop(slots);

    // One live inbound connection per peer: a newer one replaces (closes) the older one.
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (kill_tx, mut kill_rx) = oneshot::channel();
    if let Some((_, old)) = shared
        .inbound
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(from, (id, kill_tx))
    {
        let _ = old.send(());
    }
    info!(peer = from, %addr, "inbound peer connected");
    let Some(counters) = shared.peer(from) else {
        return reject(&shared, addr, &format!("validator {from} has no counters"));
    };
    counters.inbound_connected.store(true, Ordering::Relaxed);
    counters.heard(shared.counters.epoch);
    let keepalive = shared.keepalive;
    let (mut rd, wr) = tokio::io::split(tls);
    let reader = async {
        loop {
            match read_frame(&mut rd, &mut buf, shared.max_frame, keepalive.idle_timeout).await {
                Ok(Some(Frame::Data(frame))) => {
                    counters.received(frame.len(), shared.counters.epoch);
                    if shared.deliver(from, frame).is_err() {
                        return;
                    }
                }
                Ok(Some(Frame::Ping)) => counters.heard(shared.counters.epoch),
                Ok(None) => {
                    debug!(peer = from, "inbound peer closed the connection");
                    return;
                }
                Err(ReadError::Invalid(reason)) => {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                    warn!(peer = from, %addr, %reason, "protocol violation; closing connection");
                    return;
                }
                Err(ReadError::Silent(idle)) => {
                    counters.keepalive_timeouts.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        peer = from,
                        ?idle,
                        "inbound peer silent; closing connection"
                    );
                    return;
                }
                Err(ReadError::Io(e)) => {
                    debug!(peer = from, error = %e, "inbound connection failed");
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = reader => {}
        e = ping_every(wr, keepalive) => {
            if e.kind() == io::ErrorKind::TimedOut {
                counters.keepalive_timeouts.fetch_add(1, Ordering::Relaxed);
                warn!(peer = from, error = %e, "inbound peer not reading; closing connection");
            } else {
                debug!(peer = from, error = %e, "inbound connection failed");
            }
        }
        _ = &mut kill_rx => {
            debug!(peer = from, "inbound connection replaced by a newer one");
        }
    }
    let mut live = shared.inbound.lock().unwrap_or_else(|e| e.into_inner());
    if live.get(&from).is_some_and(|(cur, _)| *cur == id) {
        live.remove(&from);
        counters.inbound_connected.store(false, Ordering::Relaxed);
    }
}

/// The accepting side's half of the keepalive: a ping every `ping_interval`, so that the dialer
/// hears from us. Returns the error that ended it.
async fn ping_every<W: AsyncWrite + Unpin>(mut wr: W, keepalive: Keepalive) -> io::Error {
    let mut tick = tokio::time::interval(keepalive.ping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = write_ping(&mut wr, keepalive.write_timeout).await {
            return e;
        }
    }
}

/// `op`, or a `TimedOut` error if it does not finish within `limit`.
async fn within<T>(
    limit: Duration,
    op: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    timeout(limit, op).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("write made no progress for {limit:?}"),
        ))
    })
}

async fn write_ping<W: AsyncWrite + Unpin>(wr: &mut W, limit: Duration) -> io::Result<()> {
    within(limit, async {
        wr.write_all(&PING).await?;
        wr.flush().await
    })
    .await
}

/// Writes one frame (no flush), each chunk of up to `WRITE_CHUNK` bytes within `limit`: a slow
/// peer that keeps reading is fine, one that stopped is noticed.
async fn write_frame_within<W: AsyncWrite + Unpin>(
    wr: &mut W,
    payload: &[u8],
    limit: Duration,
) -> io::Result<()> {
    within(limit, wr.write_all(&encode_header(payload.len()))).await?;
    for chunk in payload.chunks(WRITE_CHUNK) {
        within(limit, wr.write_all(chunk)).await?;
    }
    Ok(())
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.85..1.15))
}

/// Why a writer stopped.
enum Stop {
    /// The queue was closed (network shut down): end the task.
    QueueClosed,
    /// The connection failed; reconnect.
    Failed(io::Error),
}

/// Dials `index` and writes its queue to it, reconnecting with backoff, until aborted.
pub(super) async fn dial_loop(
    shared: Arc<Shared>,
    index: u32,
    address: String,
    connector: TlsConnector,
    queue: Arc<PeerQueue>,
) {
    let counters = shared.peer(index).expect("dialed peers have counters");
    let keepalive = shared.keepalive;
    let name = tls::server_name_for(&address);
    let mut backoff = BACKOFF_INITIAL.min(keepalive.reconnect_max);
    let mut failures = 0u32;
    // A message taken from the queue but not written survives into the next connection.
    let mut pending: Option<Bytes> = None;
    loop {
        let started = Instant::now();
        let attempt = async {
            let tcp = connect_staggered(&address, keepalive.connect_timeout).await?;
            tcp.set_nodelay(true)?;
            let stream = timeout(HANDSHAKE_TIMEOUT, connector.connect(name.clone(), tcp))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            let mut stream = stream;
            tls::negotiated(stream.get_ref().1.alpn_protocol())
                .map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, reason))?;
            // What the acceptor sends after its hello (pings) is not parsed: nothing to keep.
            let mut buf = BytesMut::new();
            match hello(
                &mut stream,
                &mut buf,
                &shared.genesis_hash,
                HANDSHAKE_TIMEOUT,
            )
            .await
            {
                Ok(()) => {}
                Err(HelloError::Mismatch(theirs)) => {
                    genesis_mismatch(&shared, index, &theirs);
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "another genesis",
                    ));
                }
                Err(HelloError::Bad(reason)) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, reason))
                }
            }
            Ok::<_, io::Error>(stream)
        };
        match attempt.await {
            Ok(stream) => {
                failures = 0;
                counters.connects.fetch_add(1, Ordering::Relaxed);
                counters.connected.store(true, Ordering::Relaxed);
                counters.heard(shared.counters.epoch);
                info!(peer = index, %address, "outbound peer connected");
                let stop = run_outbound(stream, &queue, &mut pending, &shared, counters).await;
                counters.connected.store(false, Ordering::Relaxed);
                match stop {
                    Stop::QueueClosed => return,
                    Stop::Failed(e) if e.kind() == io::ErrorKind::TimedOut => {
                        counters.keepalive_timeouts.fetch_add(1, Ordering::Relaxed);
                        warn!(peer = index, error = %e, "outbound peer silent or stuck; reconnecting");
                    }
                    Stop::Failed(e) => warn!(peer = index, error = %e, "outbound connection lost"),
                }
                if started.elapsed() >= STABLE_AFTER {
                    backoff = BACKOFF_INITIAL.min(keepalive.reconnect_max);
                }
            }
            Err(error) => {
                failures += 1;
                // A genesis mismatch was logged by `genesis_mismatch`.
                if error.kind() == io::ErrorKind::PermissionDenied {
                } else if failures.is_power_of_two() {
                    warn!(peer = index, %address, %error, failures, "cannot connect to peer");
                } else {
                    debug!(peer = index, %address, %error, failures, "cannot connect to peer");
                }
            }
        }
        // Attempts start at most once per (jittered) backoff: one that already waited that long
        // (a connect hanging on a cut link) is followed by the next at once.
        let pause = jittered(backoff).saturating_sub(started.elapsed());
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(keepalive.reconnect_max);
    }
}

/// A fresh TCP connect starts this often while earlier ones still wait for an answer.
const CONNECT_STAGGER: Duration = Duration::from_millis(200);

/// Opens a TCP connection within `limit`, starting a fresh attempt every [`CONNECT_STAGGER`]
/// while the earlier ones hang.
///
/// On a cut link the SYN is lost, and the kernel sends it again only 1 s later, then 3 s: an
/// attempt under way when the cut heals would find out up to a second late. A fresh attempt
/// sends its SYN at once, so the link is back within the stagger of the heal, while a far peer
/// still gets the whole `limit` to answer. A quick refusal ends the attempt at once (the
/// caller backs off).
pub(super) async fn connect_staggered(address: &str, limit: Duration) -> io::Result<TcpStream> {
    let mut attempts = JoinSet::new();
    let race = async {
        let mut next = tokio::time::interval(CONNECT_STAGGER);
        next.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = next.tick() => {
                    let address = address.to_string();
                    attempts.spawn(async move { TcpStream::connect(address).await });
                }
                Some(done) = attempts.join_next() => {
                    return done.unwrap_or_else(|e| Err(io::Error::other(format!("connect task failed: {e}"))));
                }
            }
        }
    };
    // Dropping the set aborts the attempts still waiting.
    timeout(limit, race)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))?
}

/// Runs one outbound connection: writes the queue (pinging when idle) while listening for the
/// acceptor's pings, until either side fails, the peer goes silent, or the queue closes.
async fn run_outbound(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    queue: &PeerQueue,
    pending: &mut Option<Bytes>,
    shared: &Shared,
    counters: &PeerCounters,
) -> Stop {
    let keepalive = shared.keepalive;
    let (mut rd, wr) = tokio::io::split(stream);
    // Anything the acceptor sends (its pings) shows it is alive; nothing for `idle_timeout`
    // means it is gone. The content is not needed, so it is not parsed.
    let listen = async {
        let mut sink = [0u8; 256];
        loop {
            match timeout(keepalive.idle_timeout, rd.read(&mut sink)).await {
                Err(_) => {
                    return io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing heard for {:?}", keepalive.idle_timeout),
                    )
                }
                Ok(Ok(0)) => return io::ErrorKind::UnexpectedEof.into(),
                Ok(Ok(n)) => {
                    trace!(n, "heard from the accepting side");
                    counters.heard(shared.counters.epoch);
                }
                Ok(Err(e)) => return e,
            }
        }
    };
    tokio::select! {
        e = listen => Stop::Failed(e),
        stop = write_queue(wr, queue, pending, keepalive, counters) => stop,
    }
}

/// Writes frames from `queue` until the connection fails or the queue closes; pings after
/// `ping_interval` without a write.
async fn write_queue<W: AsyncWrite + Unpin>(
    wr: W,
    queue: &PeerQueue,
    pending: &mut Option<Bytes>,
    keepalive: Keepalive,
    counters: &PeerCounters,
) -> Stop {
    let mut wr = BufWriter::with_capacity(WRITE_BUFFER, wr);
    loop {
        if let Some(msg) = pending.as_ref() {
            if let Err(e) = write_frame_within(&mut wr, msg, keepalive.write_timeout).await {
                return Stop::Failed(e);
            }
            counters.sent(msg.len());
            *pending = None;
        }
        if let Some(msg) = queue.try_pop() {
            *pending = Some(msg);
            continue;
        }
        if let Err(e) = within(keepalive.write_timeout, wr.flush()).await {
            return Stop::Failed(e);
        }
        match timeout(keepalive.ping_interval, queue.pop()).await {
            Ok(Some(msg)) => *pending = Some(msg),
            Ok(None) => return Stop::QueueClosed,
            Err(_) => {
                if let Err(e) = write_ping(&mut wr, keepalive.write_timeout).await {
                    return Stop::Failed(e);
                }
            }
        }
    }
}
