//! Admission of client connections: at most so many at once, in all and per source IP, so that
//! one client cannot use up the bank's file descriptors and memory with idle connections. Each
//! admitted connection gets its own [`ClientBudget`].
//!
//! A connection over a cap is closed as soon as it is accepted (the client sees the connection
//! drop, which etcd clients retry); nothing is read from it.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpIncoming};

use super::limits::{ClientBudget, ClientKey, ClientLimits, SharedBudget};

/// What every request on a connection carries (as a request extension, put there by tonic).
#[derive(Clone)]
pub struct ClientConnInfo {
    pub budget: Arc<ClientBudget>,
    /// The common name of the client's certificate, when client certificate auth is on.
    pub certificate_cn: Option<String>,
}

/// An admitted client connection; its slot is given back when hyper drops it.
pub struct ClientConn {
    stream: TcpStream,
    info: ClientConnInfo,
    _slot: Slot,
}

impl Connected for ClientConn {
    type ConnectInfo = ClientConnInfo;
    fn connect_info(&self) -> ClientConnInfo {
        self.info.clone()
    }
}

impl ClientConn {
    /// Counts what left for the client, so that its budget knows what HTTP/2 still holds.
    fn wrote(&self, written: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = written {
            self.info.budget.wrote(*n);
        }
    }
}

impl AsyncRead for ClientConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&written);
        written
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&written);
        written
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    last_warned: Option<Instant>,
}

struct Admission {
    limits: ClientLimits,
    counts: Mutex<Counts>,
}

/// One admitted connection's place in the counts.
struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
        metrics::gauge!("bftcd_client_connections").set(c.total as f64);
    }
}

/// The source a per-IP cap counts: an IPv4 address, or an IPv6 /64 (one host usually has a
/// whole /64 to pick addresses from).
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

impl Admission {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = source(ip);
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if c.total >= self.limits.max_connections || from_ip >= self.limits.max_connections_per_ip {
            metrics::counter!("bftcd_client_connections_refused_total").increment(1);
            // Once per 10 s at most: a flood of connections must not become a flood of logs.
            if c.last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                c.last_warned = Some(Instant::now());
                tracing::warn!(
                    %ip, connections = c.total, from_ip, max = self.limits.max_connections,
                    max_per_ip = self.limits.max_connections_per_ip,
                    "refusing client connections over the cap (--max-client-connections, --max-client-connections-per-ip)"
                );
            }
            return None;
        }
        c.total += 1;
        *c.per_ip.entry(ip).or_default() += 1;
        metrics::gauge!("bftcd_client_connections").set(c.total as f64);
        Some(Slot { admission: self.clone(), ip })
    }
}

/// The client listener's connections, each admitted or closed at once.
pub fn incoming(listener: TcpListener, limits: ClientLimits) -> impl Stream<Item = io::Result<ClientConn>> {
    let admission = Arc::new(Admission { limits, counts: Mutex::default() });
    let shared = SharedBudget::new(limits.max_buffered_bytes_total);
    // tonic applies no socket options to an incoming stream it is handed, so Nagle is switched
    // off here: left on, every small response waits for the client's delayed ACK (about 40 ms).
    TcpIncoming::from(listener).with_nodelay(Some(true)).filter_map(move |accepted| {
        let admitted = match accepted {
            Err(e) => Some(Err(e)),
            Ok(stream) => stream.peer_addr().ok().and_then(|remote| {
                let slot = admission.admit(remote.ip())?;
                let budget = ClientBudget::new(ClientKey::Connection(remote), limits, shared.clone());
                Some(Ok(ClientConn { stream, info: ClientConnInfo { budget, certificate_cn: None }, _slot: slot }))
            }),
        };
        std::future::ready(admitted)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_in_all_and_per_ip() {
        let limits = ClientLimits {
            max_connections: 3,
            max_connections_per_ip: 2,
            max_concurrent_streams: 1,
            max_in_flight: 1,
            requests_per_second: 1,
            max_buffered_bytes: 1,
            max_watches: 1,
            max_buffered_bytes_total: 1,
            max_recv_bytes: 1,
        };
        let a = Arc::new(Admission { limits, counts: Mutex::default() });
        let (ip1, ip2): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let s1 = a.admit(ip1).unwrap();
        let _s2 = a.admit(ip1).unwrap();
        assert!(a.admit(ip1).is_none(), "third from one IP");
        let _s3 = a.admit(ip2).unwrap();
        assert!(a.admit(ip2).is_none(), "fourth in all");
        drop(s1);
        assert!(a.admit(ip1).is_some(), "a closed connection frees its slot");
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64() {
        let ip = |s: &str| source(s.parse().unwrap());
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::7"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:10.0.0.1"), ip("10.0.0.1"));
        assert_ne!(ip("10.0.0.1"), ip("10.0.0.2"));
    }
}
