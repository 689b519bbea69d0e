//! Signed answers: every unary KV and Lease answer carries, in the gRPC trailer
//! `bftcd-answer-bin`, this bank's signature over the request's digest, the response's digest,
//! the revision, the newest certified state digest and the applied height
//! ([`bftcd_sequencer::answer`]). Stock clients skip trailers they do not know; an auditor
//! keeps the answer and proves what the bank said (`bftcd-verify get`, `response`).
//!
//! Answers ready together are signed together: the signer task takes every statement waiting,
//! signs the Merkle root of the batch once, and hands each answer its path. Under load that is
//! one signature for many answers; alone, one signature per answer.
//!
//! Streams (Watch, LeaseKeepAlive) are signed message by message: each response message gets its
//! `AnswerSignature` appended as protobuf field 1000, which etcd's messages do not use and every
//! decoder skips, so no stock client sees a difference. Their statements chain (sequence number,
//! previous statement's hash) so that a kept stream proves what the bank sent and in which order
//! ([`bftcd_sequencer::answer::verify_stream`]). Done here on the gRPC frames: appending a field
//! is appending bytes and fixing the frame's length, with no decoding or re-encoding. Errors are
//! not signed.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use base64::Engine;
use bftcd_proto::bftcd::{AnswerSignature, AnswerStatement};
use bftcd_proto::Message;
use bftcd_sequencer::answer;
use bftcd_sequencer::consensus::Crypto;
use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tonic::body::Body;

mod stream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The trailer an answer's signature travels in (binary metadata: base64 on the wire).
pub const TRAILER: &str = "bftcd-answer-bin";

const SIGNED: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
];

/// Statements waiting for the signer at most; beyond, answers go out unsigned rather than wait.
const QUEUE: usize = 65_536;
const BATCH: usize = 1024;

struct Signer {
    chain_id: String,
    epoch: u64,
    bank: u32,
    queue: mpsc::Sender<(AnswerStatement, oneshot::Sender<AnswerSignature>)>,
}

static SIGNER: OnceLock<Signer> = OnceLock::new();
static CERTIFIED: Mutex<(u64, Vec<u8>)> = Mutex::new((0, Vec::new()));
static APPLIED: AtomicU64 = AtomicU64::new(0);

/// Turns signing on for this process, with the bank's operation key.
pub fn start(crypto: Arc<dyn Crypto>, chain_id: String, epoch: u64, bank: u32) {
    let (queue, mut rx) = mpsc::channel::<(AnswerStatement, oneshot::Sender<AnswerSignature>)>(QUEUE);
    let _ = SIGNER.set(Signer { chain_id, epoch, bank, queue });
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            let (statements, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
            let signed = {
                let _cpu = bftcd_sequencer::cpu::section(bftcd_sequencer::cpu::Component::Crypto);
                bftcd_sequencer::answer::sign_batch(crypto.as_ref(), statements)
            };
            for (s, reply) in signed.into_iter().zip(replies) {
                let _ = reply.send(s);
            }
        }
    });
}

/// The newest certified state digest (from the checkpoint events).
pub fn set_certified(height: u64, digest: &[u8]) {
    let mut c = CERTIFIED.lock().unwrap_or_else(|e| e.into_inner());
    if height > c.0 {
        *c = (height, digest.to_vec());
    }
}

pub fn set_applied(height: u64) {
    APPLIED.store(height, Ordering::Relaxed);
}

/// Test builds only (`--byzantine forged-reads`): Range answers carry made-up values, signed.
#[cfg(feature = "byzantine")]
pub static FORGE_READS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Clone, Copy)]
pub struct AnswerSigningLayer;

impl<S> tower::Layer<S> for AnswerSigningLayer {
    type Service = AnswerSigningService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AnswerSigningService(inner)
    }
}

#[derive(Clone)]
pub struct AnswerSigningService<S>(S);

type Answer<E> = Pin<Box<dyn std::future::Future<Output = Result<http::Response<Body>, E>> + Send>>;

/// The request message's hash, fed as the request body is read (the gRPC frame's 5-byte
/// prefix left out).
#[derive(Default)]
struct RequestHash {
    hasher: Sha256,
    prefix: usize,
}

struct HashedRequest {
    inner: Body,
    hash: Arc<Mutex<RequestHash>>,
}

impl HttpBody for HashedRequest {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
            if let Some(data) = f.data_ref() {
                let mut h = self.hash.lock().unwrap_or_else(|e| e.into_inner());
                let skip = (5 - h.prefix).min(data.len());
                h.prefix += skip;
                h.hasher.update(&data[skip..]);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<S, B> tower::Service<http::Request<Body>> for AnswerSigningService<S>
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
        let path = request.uri().path().to_owned();
        if let Some(signer) = SIGNER.get().filter(|_| answer::STREAM_METHODS.contains(&path.as_str())) {
            return stream::call(&mut self.0, signer, path, request);
        }
        let Some(signer) = SIGNER.get().filter(|_| SIGNED.contains(&path.as_str())) else {
            let answer = self.0.call(request);
            return Box::pin(async move { Ok(answer.await?.map(Body::new)) });
        };
        let hash = Arc::new(Mutex::new(RequestHash::default()));
        let request = request.map(|b| Body::new(HashedRequest { inner: b, hash: hash.clone() }));
        let answer = self.0.call(request);
        Box::pin(async move {
            let (parts, mut body) = answer.await?.into_parts();
            // A trailers-only answer is an error: not signed.
            if parts.headers.contains_key("grpc-status") {
                return Ok(http::Response::from_parts(parts, Body::new(body)));
            }
            // The answer's one gRPC message, usually one data frame (kept as it is, not copied).
            let mut message = Bytes::new();
            let mut next = None;
            loop {
                match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) => {
                            message = if message.is_empty() {
                                d
                            } else {
                                let mut joined = BytesMut::with_capacity(message.len() + d.len());
                                joined.extend_from_slice(&message);
                                joined.extend_from_slice(&d);
                                joined.freeze()
                            };
                            if message.len() >= 5 && message.len() >= 5 + frame_len(&message) {
                                break;
                            }
                        }
                        Err(f) => {
                            next = Some(Ok(f));
                            break;
                        }
                    },
                    Some(Err(e)) => {
                        next = Some(Err(e.into()));
                        break;
                    }
                    None => break,
                }
            }
            let mut trailer = None;
            if message.len() >= 5 && message.len() == 5 + frame_len(&message) {
                #[cfg(feature = "byzantine")]
                if FORGE_READS.load(Ordering::Relaxed) && path == "/etcdserverpb.KV/Range" {
                    message = forge(&message).freeze();
                }
                let msg = &message[5..];
                let request_digest = std::mem::take(&mut hash.lock().unwrap_or_else(|e| e.into_inner()).hasher).finalize().to_vec();
                let (certified_height, certified_digest) = CERTIFIED.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let statement = AnswerStatement {
                    chain_id: signer.chain_id.clone(),
                    epoch: signer.epoch,
                    bank: signer.bank,
                    method: path,
                    request_digest,
                    response_digest: Sha256::digest(msg).to_vec(),
                    revision: bftcd_sequencer::answer::header_revision(msg).unwrap_or_default(),
                    certified_height,
                    certified_digest,
                    applied_height: APPLIED.load(Ordering::Relaxed),
                    ..Default::default()
                };
                let (tx, rx) = oneshot::channel();
                if signer.queue.try_send((statement, tx)).is_ok() {
                    if let Ok(sig) = rx.await {
                        let value = base64::engine::general_purpose::STANDARD_NO_PAD.encode(sig.encode_to_vec());
                        trailer = http::HeaderValue::from_str(&value).ok();
                    }
                }
            }
            let first = (!message.is_empty()).then(|| Ok(Frame::data(message)));
            let signed = SignedAnswer { first, next, inner: body, trailer };
            Ok(http::Response::from_parts(parts, Body::new(signed)))
        })
    }
}

fn frame_len(framed: &[u8]) -> usize {
    u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize
}

#[cfg(feature = "byzantine")]
fn forge(framed: &[u8]) -> BytesMut {
    let Ok(mut r) = bftcd_proto::etcdserverpb::RangeResponse::decode(&framed[5..]) else { return BytesMut::from(framed) };
    for kv in &mut r.kvs {
        kv.value = b"forged by a Byzantine bank".to_vec();
    }
    let body = r.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The answer as the inner service gave it, with the signature added to its trailers.
struct SignedAnswer<B> {
    first: Option<Result<Frame<Bytes>, BoxError>>,
    next: Option<Result<Frame<Bytes>, BoxError>>,
    inner: B,
    trailer: Option<http::HeaderValue>,
}

impl<B> SignedAnswer<B> {
    fn with_trailer(&mut self, f: Frame<Bytes>) -> Frame<Bytes> {
        match f.into_trailers() {
            Ok(mut t) => {
                if let Some(v) = self.trailer.take() {
                    t.insert(TRAILER, v);
                }
                Frame::trailers(t)
            }
            Err(f) => f,
        }
    }
}

impl<B> HttpBody for SignedAnswer<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(first));
        }
        let polled = match self.next.take() {
            Some(n) => Poll::Ready(Some(n)),
            None => Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into),
        };
        match polled {
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(self.with_trailer(f)))),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.next.is_none() && self.inner.is_end_stream()
    }
}
