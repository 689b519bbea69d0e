//! Connection tasks: the accept loop with its inbound readers, and one dialer/writer per peer.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, trace, warn};

use super::frame::{read_frame, write_frame, ReadError};
use super::pki::fingerprint;
use super::{tls, Shared, HANDSHAKE_TIMEOUT};
use crate::cpu::{AccountedExt, Component};

const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connection that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(2);
const WRITE_BUFFER: usize = 64 * 1024;

/// Accepts connections until aborted. Dropping this future aborts every inbound reader.
pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    inbound_tx: mpsc::Sender<(u32, Bytes)>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => match shared.handshakes.clone().try_acquire_owned() {
                    Ok(permit) => {
                        conns.spawn(serve_inbound(
                            shared.clone(), tcp, addr, permit, inbound_tx.clone(),
                        ).accounted(Component::Network));
                    }
                    Err(_) => {
                        shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
                        debug!(%addr, "too many pending handshakes; refusing connection");
                    }
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

fn reject(shared: &Shared, addr: SocketAddr, reason: &dyn std::fmt::Display) {
    shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
    warn!(%addr, %reason, "rejected inbound peer connection");
}

/// Authenticates one inbound connection and delivers its frames.
async fn serve_inbound(
    shared: Arc<Shared>,
    tcp: TcpStream,
    addr: SocketAddr,
    permit: OwnedSemaphorePermit,
    inbound_tx: mpsc::Sender<(u32, Bytes)>,
) {
    let _ = tcp.set_nodelay(true);
    let mut tls = match timeout(HANDSHAKE_TIMEOUT, shared.acceptor.accept(tcp)).await {
        Err(_) => return reject(&shared, addr, &"TLS handshake timed out"),
        Ok(Err(e)) => return reject(&shared, addr, &e),
        Ok(Ok(tls)) => tls,
    };
    drop(permit);
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
    let counters = shared
        .peer(from)
        .expect("authenticated peers have counters");
    let mut buf = BytesMut::new();
    loop {
        tokio::select! {
            r = read_frame(&mut tls, &mut buf, shared.max_frame) => match r {
                Ok(Some(frame)) => {
                    counters.received(frame.len());
                    if inbound_tx.send((from, frame)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {
                    debug!(peer = from, "inbound peer closed the connection");
                    break;
                }
                Err(ReadError::Invalid(reason)) => {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                    warn!(peer = from, %addr, %reason, "protocol violation; closing connection");
                    break;
                }
                Err(ReadError::Io(e)) => {
                    debug!(peer = from, error = %e, "inbound connection failed");
                    break;
                }
            },
            _ = &mut kill_rx => {
                debug!(peer = from, "inbound connection replaced by a newer one");
                break;
            }
        }
    }
    let mut live = shared.inbound.lock().unwrap_or_else(|e| e.into_inner());
    if live.get(&from).is_some_and(|(cur, _)| *cur == id) {
        live.remove(&from);
    }
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.85..1.15))
}

/// Why a writer stopped.
enum Stop {
    /// The queue's sender is gone (network dropped): end the task.
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
    mut queue: mpsc::Receiver<Bytes>,
) {
    let counters = shared.peer(index).expect("dialed peers have counters");
    let name = tls::server_name_for(&address);
    let mut backoff = BACKOFF_INITIAL;
    let mut failures = 0u32;
    // A message taken from the queue but not written survives into the next connection.
    let mut pending: Option<Bytes> = None;
    loop {
        let attempt = async {
            let tcp = TcpStream::connect(address.as_str()).await?;
            tcp.set_nodelay(true)?;
            connector.connect(name.clone(), tcp).await
        };
        match timeout(HANDSHAKE_TIMEOUT, attempt).await {
            Ok(Ok(stream)) => {
                failures = 0;
                counters.connects.fetch_add(1, Ordering::Relaxed);
                counters.connected.store(true, Ordering::Relaxed);
                info!(peer = index, %address, "outbound peer connected");
                let since = Instant::now();
                let stop = write_queue(stream, &mut queue, &mut pending, counters).await;
                counters.connected.store(false, Ordering::Relaxed);
                match stop {
                    Stop::QueueClosed => return,
                    Stop::Failed(e) => warn!(peer = index, error = %e, "outbound connection lost"),
                }
                if since.elapsed() >= STABLE_AFTER {
                    backoff = BACKOFF_INITIAL;
                }
            }
            res => {
                failures += 1;
                let error = match res {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                if failures.is_power_of_two() {
                    warn!(peer = index, %address, %error, failures, "cannot connect to peer");
                } else {
                    debug!(peer = index, %address, %error, failures, "cannot connect to peer");
                }
            }
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Writes frames from `queue` until the connection fails or the queue closes. Also watches the
/// read side, so that a peer closing the connection is noticed without waiting for a write.
async fn write_queue(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    queue: &mut mpsc::Receiver<Bytes>,
    pending: &mut Option<Bytes>,
    counters: &super::stats::PeerCounters,
) -> Stop {
    let (mut rd, wr) = tokio::io::split(stream);
    let mut wr = BufWriter::with_capacity(WRITE_BUFFER, wr);
    let mut sink = [0u8; 256];
    loop {
        if let Some(msg) = pending.as_ref() {
            if let Err(e) = write_frame(&mut wr, msg).await {
                return Stop::Failed(e);
            }
            counters.sent(msg.len());
            *pending = None;
        }
        match queue.try_recv() {
            Ok(msg) => {
                *pending = Some(msg);
                continue;
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return Stop::QueueClosed,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if let Err(e) = wr.flush().await {
            return Stop::Failed(e);
        }
        tokio::select! {
            msg = queue.recv() => match msg {
                Some(msg) => *pending = Some(msg),
                None => return Stop::QueueClosed,
            },
            r = rd.read(&mut sink) => match r {
                Ok(0) => return Stop::Failed(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => trace!(n, "ignoring unexpected bytes from the accepting side"),
                Err(e) => return Stop::Failed(e),
            },
        }
    }
}
