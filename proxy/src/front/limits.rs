//! Per-client limits on the client front (issue 11): one client must not exhaust a bank for its
//! other clients. A client over a limit gets etcd's own overload error (`etcdserver: too many
//! requests`), never a silent drop.
//!
//! Each connection gets a [`ClientBudget`] when it is accepted ([`super::conns`]); the
//! [`ClientLimitLayer`] (a tower layer on the gRPC server) charges every request to it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::Status;

use super::conns::ClientConnInfo;
use crate::errors;

/// Whom a budget belongs to: a connection, or with client certificate auth every connection
/// that presents one certificate CN, so that a client cannot escape its limits by opening more
/// connections.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Connection(SocketAddr),
    /// The Subject CN of a client certificate verified against `--trusted-ca-file`.
    Certificate(String),
}

/// The front's limits (`bftcd serve` flags; docs/operations.md, "Client limits").
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    /// Connections served at once, in all and per source IP.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// HTTP/2 streams a connection may open (SETTINGS_MAX_CONCURRENT_STREAMS, as etcd's flag).
    pub max_concurrent_streams: u32,
    /// Calls a client may have in progress: a unary call until its answer is handed to HTTP/2,
    /// a stream (Watch, LeaseKeepAlive, Snapshot) until it ends.
    pub max_in_flight: usize,
    /// Requests, and messages on streams, a client may send per second (burst: one second's).
    pub requests_per_second: u32,
    /// Bytes the bank holds for a client on each side: requests still arriving, and answers
    /// (and watch events) the client has not taken yet.
    pub max_buffered_bytes: usize,
    /// Watches a client may hold open.
    pub max_watches: usize,
    /// What all clients together may make the bank hold ([`SharedBudget`]).
    pub max_buffered_bytes_total: usize,
    /// gRPC's receive limit (max-request-bytes + 512 KiB, as etcd).
    pub max_recv_bytes: usize,
}

/// The bytes every client together holds, requests and answers alike.
///
/// Per-client buffers alone let a thousand connections each fill their own. Within the total,
/// a client takes what its own buffer allows; beyond it, only what keeps it within an equal
/// share of the total among the clients connected, so a few clients that fill the total do
/// not lock the others out. Everything held thus stays within twice the total (plus answers to
/// writes, which are always delivered).
pub struct SharedBudget {
    cap: usize,
    held: AtomicUsize,
    clients: AtomicUsize,
}

impl SharedBudget {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(SharedBudget { cap, held: AtomicUsize::new(0), clients: AtomicUsize::new(0) })
    }

    /// Takes `bytes` for a client that would then hold `own` in all.
    fn take(&self, bytes: usize, own: usize) -> bool {
        let share = self.cap / self.clients.load(Ordering::Relaxed).max(1);
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| (held + bytes <= self.cap || own <= share).then_some(held + bytes))
            .is_ok()
    }

    fn add(&self, bytes: usize) {
        self.held.fetch_add(bytes, Ordering::Relaxed);
    }

    fn give_back(&self, bytes: usize) {
        let _ = self.held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| Some(h.saturating_sub(bytes)));
    }

    /// Bytes held for all clients.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// What one client may still use. Dropped with the client's last connection and request.
pub struct ClientBudget {
    pub key: ClientKey,
    pub limits: ClientLimits,
    shared: Arc<SharedBudget>,
    in_flight: Arc<Semaphore>,
    tokens: Mutex<(f64, Instant)>,
    inbound: AtomicUsize,
    outbound: AtomicUsize,
    watches: AtomicUsize,
    /// Bytes of answers handed to HTTP/2 less the bytes since written to the socket (never
    /// below zero, so that HTTP/2's framing earns no credit): what HTTP/2 still buffers, which
    /// flow control does not bound when a client advertises large windows and then stops
    /// reading its socket.
    unwritten: AtomicUsize,
}

/// Bytes charged to a client, given back when dropped.
pub struct Charge {
    budget: Arc<ClientBudget>,
    bytes: usize,
    inbound: bool,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.counter(self.inbound).fetch_sub(self.bytes, Ordering::Relaxed);
        self.budget.shared.give_back(self.bytes);
    }
}

impl Drop for ClientBudget {
    fn drop(&mut self) {
        // What HTTP/2 still held for the client went with its connection.
        self.shared.give_back(self.unwritten.load(Ordering::Relaxed));
        self.shared.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ClientBudget {
    pub fn new(key: ClientKey, limits: ClientLimits, shared: Arc<SharedBudget>) -> Arc<Self> {
        shared.clients.fetch_add(1, Ordering::Relaxed);
        Arc::new(ClientBudget {
            key,
            limits,
            shared,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            tokens: Mutex::new((limits.requests_per_second as f64, Instant::now())),
            inbound: AtomicUsize::new(0),
            outbound: AtomicUsize::new(0),
            watches: AtomicUsize::new(0),
            unwritten: AtomicUsize::new(0),
        })
    }

    fn counter(&self, inbound: bool) -> &AtomicUsize {
        if inbound {
            &self.inbound
        } else {
            &self.outbound
        }
    }

    /// One request or stream message, from a token bucket refilled at the client's rate.
    pub fn take_token(&self) -> bool {
        let rate = self.limits.requests_per_second as f64;
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        t.0 = (t.0 + now.duration_since(t.1).as_secs_f64() * rate).min(rate.max(1.0));
        t.1 = now;
        if t.0 >= 1.0 {
            t.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// The connection wrote `n` bytes to its socket.
    pub fn wrote(&self, n: usize) {
        if let Ok(before) = self.unwritten.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(n))) {
            self.shared.give_back(before.min(n));
        }
    }

    /// HTTP/2 took `n` bytes of answers to write.
    fn handed(&self, n: usize) {
        self.unwritten.fetch_add(n, Ordering::Relaxed);
        self.shared.add(n);
    }

    /// Bytes of answers HTTP/2 has taken but not yet written (an estimate: HTTP/2's own framing
    /// counts as written).
    fn backlog(&self) -> usize {
        self.unwritten.load(Ordering::Relaxed)
    }

    /// Charges `bytes` if they fit in the client's buffer (on the way out, beside what HTTP/2
    /// has not written yet) and in the bank's [`SharedBudget`]. The first charge always fits
    /// the client's buffer, so a single request or answer of any allowed size goes through
    /// unless the bank as a whole is full.
    pub fn try_charge(self: &Arc<Self>, bytes: usize, inbound: bool) -> Option<Charge> {
        let cap = self.limits.max_buffered_bytes;
        let backlog = if inbound { 0 } else { self.backlog() };
        let before = self
            .counter(inbound)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                (cur + backlog == 0 || cur + backlog + bytes <= cap).then_some(cur + bytes)
            })
            .ok()?;
        let own = self.inbound.load(Ordering::Relaxed) + self.outbound.load(Ordering::Relaxed) + self.backlog();
        if !self.shared.take(bytes, own) {
            self.counter(inbound).fetch_sub(bytes, Ordering::Relaxed);
            tracing::trace!(held = self.shared.held(), before, "the bank's client buffers are full");
            return None;
        }
        Some(Charge { budget: self.clone(), bytes, inbound })
    }

    /// Charges `bytes` whatever the buffers hold: for answers to writes, which must reach the
    /// client once the write is done.
    pub fn charge(self: &Arc<Self>, bytes: usize, inbound: bool) -> Charge {
        self.counter(inbound).fetch_add(bytes, Ordering::Relaxed);
        self.shared.add(bytes);
        Charge { budget: self.clone(), bytes, inbound }
    }

    /// Counts `n` more watches, or refuses them all when the client would hold too many.
    pub fn add_watches(&self, n: usize) -> Result<(), Status> {
        let max = self.limits.max_watches;
        self.watches
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| (cur + n <= max).then_some(cur + n))
            .map(|_| ())
            .map_err(|_| self.refused("watches"))
    }

    /// etcd's overload error for this client, counted by the limit it hit.
    pub fn refused(&self, limit: &'static str) -> Status {
        tracing::debug!(client = ?self.key, limit, "refused: over the client's limit");
        refused(limit)
    }

    pub fn remove_watches(&self, n: usize) {
        let _ = self.watches.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| Some(cur.saturating_sub(n)));
    }
}

/// etcd's overload error, counted by what ran out.
fn refused(limit: &'static str) -> Status {
    metrics::counter!("bftcd_client_requests_refused_total", "limit" => limit).increment(1);
    errors::too_many_requests()
}

/// Calls whose answer is a stream: they hold their in-flight slot until the stream ends.
fn is_stream(path: &str) -> bool {
    matches!(path, "/etcdserverpb.Watch/Watch" | "/etcdserverpb.Lease/LeaseKeepAlive" | "/etcdserverpb.Maintenance/Snapshot")
}

/// Calls that only read: their answer may be refused when the client has too much unread (it
/// can ask again). An answer to a write is always delivered: the write is done.
fn is_read(path: &str) -> bool {
    path == "/etcdserverpb.KV/Range"
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Applies [`ClientLimits`] to every call, keyed by the connection's [`ClientBudget`].
#[derive(Clone, Copy, Default)]
pub struct ClientLimitLayer;

impl<S> tower::Layer<S> for ClientLimitLayer {
    type Service = ClientLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientLimitService(inner)
    }
}

#[derive(Clone)]
pub struct ClientLimitService<S>(S);

type Answer<E> = Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

/// Answers with etcd's overload error. A unary request is read to its end first, as grpc-go
/// does: answering before it would reset the stream, which some clients (hyper's) report as a
/// broken connection instead of the error. Reading stops at gRPC's receive limit.
fn refuse<E: Send + 'static>(budget: &ClientBudget, limit: &'static str, request: http::Request<Body>) -> Answer<E> {
    let status = budget.refused(limit);
    let max = budget.limits.max_recv_bytes + 5;
    let unary = !is_stream(request.uri().path());
    let mut body = request.into_body();
    Box::pin(async move {
        let mut read = 0;
        while unary && read <= max {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
        Ok(status.into_http())
    })
}

impl<S, B> tower::Service<http::Request<Body>> for ClientLimitService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError> + Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Answer<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if crate::corrupt::refuses(request.uri().path()) {
            let unary = !is_stream(request.uri().path());
            let mut body = request.into_body();
            return Box::pin(async move {
                // A unary call's request is read first (a bounded amount), as etcd would.
                let mut read = 0;
                while unary && read <= 2 << 20 {
                    match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                        Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                        _ => break,
                    }
                }
                Ok(crate::errors::corrupt().into_http())
            });
        }
        let Some(budget) = request.extensions().get::<ClientConnInfo>().map(|c| c.budget.clone()) else {
            // Not from the client listener (tests of the services alone): no limits.
            let answer = self.0.call(request);
            return Box::pin(async move { Ok(answer.await?.map(Body::new)) });
        };
        if !budget.take_token() {
            return refuse(&budget, "rate", request);
        }
        let Ok(slot) = budget.in_flight.clone().try_acquire_owned() else {
            return refuse(&budget, "in_flight", request);
        };
        let path = request.uri().path().to_owned();
        let request = request.map(|b| Body::new(MeteredRequest { inner: b, budget: budget.clone(), frame: Framing::default() }));
        let answer = self.0.call(request);
        Box::pin(async move {
            let (parts, mut body) = answer.await?.into_parts();
            let mut first = None;
            if !is_stream(&path) {
                // A unary answer is ready: its size is known before HTTP/2 takes it.
                first = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
            }
            let held = match &first {
                Some(Ok(f)) => match f.data_ref().map(|d| d.len()) {
                    Some(n) if is_read(&path) => match budget.try_charge(n, false) {
                        Some(c) => Some(c),
                        None => return Ok(budget.refused("buffered_answers").into_http()),
                    },
                    Some(n) => Some(budget.charge(n, false)),
                    None => None,
                },
                _ => None,
            };
            let body = HeldAnswer { inner: body, first: first.map(|f| f.map_err(Into::into)), held, budget, _slot: slot };
            Ok(http::Response::from_parts(parts, Body::new(body)))
        })
    }
}

/// An answer's body: holds the call's in-flight slot until HTTP/2 drops it, keeps a unary
/// answer charged to the client until HTTP/2 takes it, and counts what HTTP/2 takes as handed
/// (part of the connection's backlog until written).
struct HeldAnswer<B> {
    inner: B,
    first: Option<Result<Frame<Bytes>, BoxError>>,
    held: Option<Charge>,
    budget: Arc<ClientBudget>,
    _slot: OwnedSemaphorePermit,
}

impl<B> HttpBody for HeldAnswer<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match self.first.take() {
            Some(first) => Poll::Ready(Some(first)),
            None => Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into),
        };
        if let Poll::Ready(Some(Ok(f))) = &polled {
            if let Some(d) = f.data_ref() {
                self.budget.handed(d.len());
            }
        }
        self.held = None;
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.first {
            Some(_) => SizeHint::default(),
            None => self.inner.size_hint(),
        }
    }
}

/// Where a request body is in gRPC's message framing (1-byte flag, 4-byte length, message).
#[derive(Default)]
struct Framing {
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message still to come, and their charge.
    left: usize,
    charge: Option<Charge>,
    messages: u64,
}

/// A request body that charges each message to the client as it arrives: the bytes tonic
/// buffers until a message is complete count against the client's buffer, each message after
/// a stream's first takes a rate token, and one above gRPC's receive limit is refused with
/// etcd's (grpc-go's) error before it is buffered.
struct MeteredRequest {
    inner: Body,
    budget: Arc<ClientBudget>,
    frame: Framing,
}

impl MeteredRequest {
    fn observe(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            let f = &mut self.frame;
            if f.left > 0 {
                let n = f.left.min(data.len());
                f.left -= n;
                data = &data[n..];
                if f.left == 0 {
                    f.charge = None;
                }
                continue;
            }
            let n = (5 - f.header_len).min(data.len());
            f.header[f.header_len..f.header_len + n].copy_from_slice(&data[..n]);
            f.header_len += n;
            data = &data[n..];
            if f.header_len < 5 {
                continue;
            }
            f.header_len = 0;
            let len = u32::from_be_bytes([f.header[1], f.header[2], f.header[3], f.header[4]]) as usize;
            let max = self.budget.limits.max_recv_bytes;
            if len > max {
                return Err(Status::resource_exhausted(format!("grpc: received message larger than max ({len} vs. {max})")));
            }
            f.messages += 1;
            if f.messages > 1 && !self.budget.take_token() {
                return Err(self.budget.refused("rate"));
            }
            f.left = len;
            if len > 0 {
                f.charge = Some(self.budget.try_charge(len, true).ok_or_else(|| self.budget.refused("buffered_requests"))?);
            }
        }
        Ok(())
    }
}

impl HttpBody for MeteredRequest {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => f,
            other => return other.map_err(Into::into),
        };
        if let Some(d) = polled.data_ref() {
            if let Err(s) = self.observe(d.chunk()) {
                return Poll::Ready(Some(Err(Box::new(s))));
            }
        }
        Poll::Ready(Some(Ok(polled)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ClientLimits {
        ClientLimits {
            max_connections: 4,
            max_connections_per_ip: 2,
            max_concurrent_streams: 8,
            max_in_flight: 2,
            requests_per_second: 3,
            max_buffered_bytes: 100,
            max_watches: 5,
            max_buffered_bytes_total: 1 << 20,
            max_recv_bytes: 1000,
        }
    }

    fn budget() -> Arc<ClientBudget> {
        client(&SharedBudget::new(1 << 20))
    }

    fn client(shared: &Arc<SharedBudget>) -> Arc<ClientBudget> {
        ClientBudget::new(ClientKey::Connection("127.0.0.1:1".parse().unwrap()), limits(), shared.clone())
    }

    #[test]
    fn beyond_the_banks_total_a_client_gets_only_its_share() {
        // Four clients, 300 bytes in all: a share is 75.
        let shared = SharedBudget::new(300);
        let [a, b, c, d] = [(); 4].map(|_| client(&shared));
        let _a = a.try_charge(100, true).unwrap();
        let _a2 = a.try_charge(100, false).unwrap();
        let _b = b.try_charge(100, true).unwrap();
        assert_eq!(shared.held(), 300);
        assert!(b.try_charge(10, false).is_none(), "b holds more than its share");
        assert!(c.try_charge(80, true).is_none(), "80 is more than a share");
        let c1 = c.try_charge(70, true).expect("within its share");
        let _forced = d.charge(500, false);
        assert_eq!(shared.held(), 870);
        assert_eq!(c.inbound.load(Ordering::Relaxed), 70, "a refused charge leaves nothing behind");
        drop(c1);
        drop(_forced);
        assert_eq!(shared.held(), 300);
        // What HTTP/2 holds counts; written or dropped with the connection, it is given back.
        d.handed(40);
        assert_eq!(shared.held(), 340);
        d.wrote(10);
        d.wrote(1000);
        assert_eq!(shared.held(), 300);
        d.handed(25);
        drop(d);
        assert_eq!(shared.held(), 300);
        assert_eq!(shared.clients.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_rate_allows_a_seconds_burst_then_refuses() {
        let b = budget();
        assert!((0..3).all(|_| b.take_token()));
        assert!(!b.take_token());
    }

    #[test]
    fn the_buffer_takes_one_charge_of_any_size_then_only_what_fits() {
        let b = budget();
        let big = b.try_charge(500, true).expect("the first charge always fits");
        assert!(b.try_charge(1, true).is_none());
        assert!(b.try_charge(1, false).is_some(), "each side has its own buffer");
        drop(big);
        let a = b.try_charge(60, true).unwrap();
        assert!(b.try_charge(50, true).is_none());
        let _c = b.try_charge(40, true).unwrap();
        drop(a);
        assert_eq!(b.inbound.load(Ordering::Relaxed), 40);
    }

    #[test]
    fn what_http2_has_not_written_counts_against_answers() {
        let b = budget();
        b.handed(90);
        assert!(b.try_charge(20, false).is_none(), "90 bytes not yet written");
        assert!(b.try_charge(20, true).is_some(), "requests have their own buffer");
        b.wrote(50);
        assert!(b.try_charge(20, false).is_some());
        // Framing written beyond the answers earns no credit for answers handed later.
        b.wrote(1000);
        assert_eq!(b.backlog(), 0);
        b.handed(90);
        assert_eq!(b.backlog(), 90);
    }

    #[test]
    fn watches_are_capped() {
        let b = budget();
        b.add_watches(5).unwrap();
        assert_eq!(b.add_watches(1).unwrap_err().message(), "etcdserver: too many requests");
        b.remove_watches(2);
        b.add_watches(2).unwrap();
    }

    fn metered(b: &Arc<ClientBudget>) -> MeteredRequest {
        MeteredRequest { inner: Body::empty(), budget: b.clone(), frame: Framing::default() }
    }

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.resize(5 + len, 7);
        m
    }

    #[test]
    fn a_message_is_charged_while_it_arrives_in_pieces() {
        let b = budget();
        let mut r = metered(&b);
        let m = message(80);
        r.observe(&m[..3]).unwrap();
        assert_eq!(b.inbound.load(Ordering::Relaxed), 0);
        r.observe(&m[3..40]).unwrap();
        assert_eq!(b.inbound.load(Ordering::Relaxed), 80);
        // Another call's message does not fit beside it.
        let mut other = metered(&b);
        assert_eq!(other.observe(&message(30)).unwrap_err().message(), "etcdserver: too many requests");
        r.observe(&m[40..]).unwrap();
        assert_eq!(b.inbound.load(Ordering::Relaxed), 0);
        // Two whole messages in one frame: the second takes a rate token.
        let mut two = message(10);
        two.extend(message(0));
        metered(&b).observe(&two).unwrap();
        assert_eq!(b.inbound.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_message_above_grpcs_limit_gets_grpcs_error() {
        let b = budget();
        let e = metered(&b).observe(&message(1001)[..5]).unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::ResourceExhausted, "grpc: received message larger than max (1001 vs. 1000)"));
    }

    #[test]
    fn dropping_a_request_midway_gives_its_bytes_back() {
        let b = budget();
        let mut r = metered(&b);
        r.observe(&message(50)[..10]).unwrap();
        assert_eq!(b.inbound.load(Ordering::Relaxed), 50);
        drop(r);
        assert_eq!(b.inbound.load(Ordering::Relaxed), 0);
    }
}
