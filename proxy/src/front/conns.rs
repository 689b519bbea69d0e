//! Admission of client connections: at most so many at once, in all and per source IP, so that
//! one client cannot use up the bank's file descriptors and memory with idle connections. Each
//! admitted connection gets its own [`ClientBudget`].
//!
//! A connection over a cap is closed as soon as it is accepted (the client sees the connection
//! drop, which etcd clients retry); nothing is read from it. With TLS on the client port, an
//! admitted connection then does its handshake in a task of its own (see [`Handshakes`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bftcd_sequencer::cpu::{AccountedExt, Component};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpIncoming};

use super::limits::{ClientBudget, ClientKey, ClientLimits, SharedBudget};
use super::tls::ClientTls;

/// What every request on a connection carries (as a request extension, put there by tonic).
#[derive(Clone)]
pub struct ClientConnInfo {
    pub budget: Arc<ClientBudget>,
    /// The common name of the client's certificate, when client certificate auth is on.
    pub certificate_cn: Option<String>,
}

/// A client's byte stream: plain TCP, or TLS over it.
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An admitted client connection; its slot is given back when hyper drops it.
pub struct ClientConn {
    stream: Transport,
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
    /// Counts what left for the client, so that its budget knows what HTTP/2 still holds. Over
    /// TLS a write counts once rustls has taken it; rustls holds at most 64 KiB not yet sent
    /// (its default buffer limit), so the bound stays what it is in plain TCP plus that.
    fn wrote(&self, written: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = written {
            self.info.budget.wrote(*n);
        }
    }
}

/// Calls `$method` on whichever stream the connection has.
macro_rules! on_stream {
    ($self:expr, $s:ident => $call:expr) => {
        match &mut $self.stream {
            Transport::Plain($s) => {
                let $s = Pin::new($s);
                $call
            }
            Transport::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for ClientConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for ClientConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = on_stream!(self, s => s.poll_write(cx, buf));
        self.wrote(&written);
        written
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let written = on_stream!(self, s => s.poll_write_vectored(cx, bufs));
        self.wrote(&written);
        written
    }
    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, s => s.poll_shutdown(cx))
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

/// An accepted connection that passed admission, before its budget.
struct Admitted {
    stream: TcpStream,
    remote: SocketAddr,
    slot: Slot,
}

/// The client listener's connections, each admitted or closed at once; with `tls`, each
/// admitted connection is handed on once its handshake succeeded.
pub fn incoming(listener: TcpListener, limits: ClientLimits, tls: Option<ClientTls>) -> impl Stream<Item = io::Result<ClientConn>> {
    let admission = Arc::new(Admission { limits, counts: Mutex::default() });
    let shared = SharedBudget::new(limits.max_buffered_bytes_total);
    // tonic applies no socket options to an incoming stream it is handed, so Nagle is switched
    // off here: left on, every small response waits for the client's delayed ACK (about 40 ms).
    let admitted = TcpIncoming::from(listener).with_nodelay(Some(true)).filter_map(move |accepted| {
        let admitted = match accepted {
            Err(e) => Some(Err(e)),
            Ok(stream) => stream.peer_addr().ok().and_then(|remote| {
                let slot = admission.admit(remote.ip())?;
                Some(Ok(Admitted { stream, remote, slot }))
            }),
        };
        std::future::ready(admitted)
    });
    Handshakes { admitted: Box::pin(admitted), tls, pending: JoinSet::new(), ended: false, limits, shared, identities: Default::default() }
}

/// The budgets of clients known by a certificate, by CN: all connections with one certificate
/// are one client, so opening more connections buys no more room.
#[derive(Clone, Default)]
struct Identities(Arc<Mutex<HashMap<String, std::sync::Weak<ClientBudget>>>>);

impl Identities {
    fn budget_for(&self, cn: &str, limits: ClientLimits, shared: &Arc<SharedBudget>) -> Arc<ClientBudget> {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = known.get(cn).and_then(|w| w.upgrade()) {
            return b;
        }
        // Forget identities whose last connection closed, now and then, not on every connect.
        if known.len() >= 64 && known.len().is_power_of_two() {
            known.retain(|_, w| w.strong_count() > 0);
        }
        let b = ClientBudget::new(ClientKey::Certificate(cn.to_string()), limits, shared.clone());
        known.insert(cn.to_string(), Arc::downgrade(&b));
        b
    }
}

/// Admitted connections made into [`ClientConn`]s. A TLS handshake runs in a task of its own,
/// so that a slow or silent client holds up neither the accept loop nor other handshakes; each
/// pending handshake holds its connection's slot, so the caps bound them too.
struct Handshakes<S> {
    admitted: Pin<Box<S>>,
    tls: Option<ClientTls>,
    pending: JoinSet<Option<ClientConn>>,
    ended: bool,
    limits: ClientLimits,
    shared: Arc<SharedBudget>,
    identities: Identities,
}

impl<S: Stream<Item = io::Result<Admitted>>> Stream for Handshakes<S> {
    type Item = io::Result<ClientConn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if !this.ended {
                match this.admitted.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(a))) => match &this.tls {
                        None => {
                            let budget = ClientBudget::new(ClientKey::Connection(a.remote), this.limits, this.shared.clone());
                            let info = ClientConnInfo { budget, certificate_cn: None };
                            return Poll::Ready(Some(Ok(ClientConn { stream: Transport::Plain(a.stream), info, _slot: a.slot })));
                        }
                        Some(tls) => {
                            let (tls, limits, shared, identities) = (tls.clone(), this.limits, this.shared.clone(), this.identities.clone());
                            let handshake = async move {
                                match tls.handshake(a.stream).await {
                                    Ok((stream, cn)) => {
                                        // The certificate's name is who the client is, whichever connection it uses.
                                        let budget = match &cn {
                                            Some(cn) => identities.budget_for(cn, limits, &shared),
                                            None => ClientBudget::new(ClientKey::Connection(a.remote), limits, shared),
                                        };
                                        let info = ClientConnInfo { budget, certificate_cn: cn };
                                        tracing::debug!(remote = %a.remote, certificate_cn = ?info.certificate_cn, "client connected over TLS");
                                        Some(ClientConn { stream: Transport::Tls(Box::new(stream)), info, _slot: a.slot })
                                    }
                                    Err(error) => {
                                        metrics::counter!("bftcd_client_tls_handshakes_failed_total").increment(1);
                                        tracing::debug!(remote = %a.remote, %error, "client TLS handshake failed; connection closed");
                                        None
                                    }
                                }
                            };
                            this.pending.spawn(handshake.accounted(Component::Front));
                            continue;
                        }
                    },
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => this.ended = true,
                    Poll::Pending => {}
                }
            }
            return match this.pending.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(conn)))) => Poll::Ready(Some(Ok(conn))),
                // A failed handshake (its connection is closed): look for the next.
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) if this.ended => Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Limits with these connection caps and everything else at its smallest.
    fn capped(max_connections: usize, max_connections_per_ip: usize) -> ClientLimits {
        ClientLimits {
            max_connections,
            max_connections_per_ip,
            max_concurrent_streams: 8,
            max_in_flight: 1,
            requests_per_second: 1,
            max_buffered_bytes: 1,
            max_watches: 8,
            max_buffered_bytes_total: 1 << 20,
            max_recv_bytes: 1 << 20,
        }
    }

    #[test]
    fn connections_are_capped_in_all_and_per_ip() {
        let limits = capped(3, 2);
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

    /// A client that connects and never speaks holds up neither the accept loop nor another
    /// client's handshake; a verified client is known by its certificate's CN; a connection
    /// over the cap is closed before any handshake.
    #[tokio::test]
    async fn handshakes_run_apart_and_name_the_client() {
        use bftcd_sequencer::net::DevCa;
        use tokio::io::AsyncReadExt;

        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate("test client CA");
        let (server, alice) = (ca.issue("server"), ca.issue("alice"));
        let file = |name: &str, pem: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).unwrap();
            Some(p)
        };
        let files = super::super::tls::TlsFiles {
            cert_file: file("server.pem", &server.cert_pem),
            key_file: file("server-key.pem", &server.key_pem),
            trusted_ca_file: file("ca.pem", &ca.cert_pem),
            client_cert_auth: true,
        };
        let tls = ClientTls::load(&files).unwrap().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ClientLimits { max_in_flight: 8, requests_per_second: 100, max_buffered_bytes: 1 << 20, ..capped(2, 2) };
        let mut incoming = Box::pin(incoming(listener, limits, Some(tls)));

        let _silent = TcpStream::connect(addr).await.unwrap();
        let client = tokio::spawn(async move {
            use bftcd_sequencer::net::pki::{certs_from_pem, private_key_from_pem};
            let mut roots = rustls::RootCertStore::empty();
            roots.add(certs_from_pem(&ca.cert_pem).unwrap().remove(0)).unwrap();
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(certs_from_pem(&alice.cert_pem).unwrap(), private_key_from_pem(&alice.key_pem).unwrap())
                .unwrap();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap()
        });
        let conn = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await.expect("a handshake while another client is silent");
        let conn = conn.unwrap().unwrap();
        assert_eq!(conn.info.certificate_cn.as_deref(), Some("alice"));
        assert_eq!(conn.info.budget.key, ClientKey::Certificate("alice".into()));
        let alice_side = client.await.unwrap();
        assert_eq!(alice_side.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));

        // The silent client and alice hold both slots: a third is closed unread.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        tokio::select! {
            r = third.read(&mut byte) => assert!(matches!(r, Ok(0) | Err(_)), "over the cap: closed"),
            _ = incoming.next() => panic!("a connection over the cap was handed on"),
            _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("a connection over the cap was left open"),
        }
    }

    #[test]
    fn connections_with_one_certificate_share_one_budget() {
        let limits = capped(4, 4);
        let (ids, shared) = (Identities::default(), SharedBudget::new(1));
        let a = ids.budget_for("alice", limits, &shared);
        let a2 = ids.budget_for("alice", limits, &shared);
        let b = ids.budget_for("bob", limits, &shared);
        assert!(Arc::ptr_eq(&a, &a2), "a second connection of alice is alice");
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(a.take_token() && !a2.take_token(), "one rate for both connections");
        drop((a, a2));
        let again = ids.budget_for("alice", limits, &shared);
        assert!(again.take_token(), "a client that came back starts afresh");
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
