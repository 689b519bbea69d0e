//! Signing the streams' messages (Watch, LeaseKeepAlive) on their gRPC frames.
//!
//! Each response message's statement names its place in the stream, the statement of the last
//! signed message before it, and the chain of every request read on the stream so far (the
//! request a message answers is always among them: a watch's events come after its create, a
//! keepalive's answer after the keepalive). Messages ready at once go to the signer together.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bftcd_proto::bftcd::AnswerStatement;
use bftcd_sequencer::answer;
use bftcd_sequencer::merkle::Hash;
use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use http_body::{Body as HttpBody, Frame, SizeHint};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tonic::body::Body;

use super::{frame_len, Answer, BoxError, Signer, APPLIED, CERTIFIED};

/// The request messages read on a stream so far, chained (`AnswerStatement.stream_requests`).
/// Fed with the request body's data as it is read; a message may span data frames.
#[derive(Default)]
struct Requests {
    header: [u8; 5],
    have: usize,
    left: usize,
    message: Sha256,
    count: u64,
    chain: Hash,
}

impl Requests {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.have < 5 {
                let n = (5 - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have == 5 {
                    self.left = frame_len(&self.header);
                    if self.left == 0 {
                        self.finish();
                    }
                }
                continue;
            }
            let n = self.left.min(data.len());
            self.message.update(&data[..n]);
            self.left -= n;
            data = &data[n..];
            if self.left == 0 {
                self.finish();
            }
        }
    }

    fn finish(&mut self) {
        let digest = std::mem::take(&mut self.message).finalize();
        self.chain = answer::chain_request(&self.chain, &digest);
        self.count += 1;
        self.have = 0;
    }
}

struct CountedRequests {
    inner: Body,
    requests: Arc<Mutex<Requests>>,
}

impl HttpBody for CountedRequests {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
            if let Some(data) = f.data_ref() {
                self.requests.lock().unwrap_or_else(|e| e.into_inner()).feed(data);
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

pub(super) fn call<S, B>(inner: &mut S, signer: &'static Signer, method: String, request: http::Request<Body>) -> Answer<S::Error>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError> + Send,
{
    let requests = Arc::new(Mutex::new(Requests::default()));
    let request = request.map(|b| Body::new(CountedRequests { inner: b, requests: requests.clone() }));
    let answer = inner.call(request);
    Box::pin(async move {
        let (parts, body) = answer.await?.into_parts();
        // A trailers-only answer is an error: not signed.
        if parts.headers.contains_key("grpc-status") {
            return Ok(http::Response::from_parts(parts, Body::new(body)));
        }
        let frames = Frames(Box::pin(signed(signer, method, requests, body)));
        Ok(http::Response::from_parts(parts, Body::new(frames)))
    })
}

/// Where a stream's signing stands.
struct Chain {
    /// Messages sent so far, signed or not.
    sequence: u64,
    /// The leaf of the last statement sent to the signer.
    previous: Vec<u8>,
}

/// The response body with every whole message signed; a message split across data frames waits
/// for its end.
fn signed<B>(signer: &'static Signer, method: String, requests: Arc<Mutex<Requests>>, mut body: B) -> impl Stream<Item = Result<Frame<Bytes>, BoxError>> + Send
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError> + Send,
{
    async_stream::stream! {
        let mut chain = Chain { sequence: 0, previous: Vec::new() };
        let mut partial = BytesMut::new();
        loop {
            let frame = match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => break,
                Some(Err(e)) => {
                    yield Err(e.into());
                    break;
                }
                Some(Ok(f)) => f,
            };
            let data = match frame.into_data() {
                Ok(d) => d,
                Err(other) => {
                    if !partial.is_empty() {
                        yield Ok(Frame::data(partial.split().freeze()));
                    }
                    yield Ok(other);
                    continue;
                }
            };
            let data = if partial.is_empty() {
                data
            } else {
                partial.extend_from_slice(&data);
                partial.split().freeze()
            };
            let mut messages = Vec::new();
            let mut at = 0;
            while data.len() - at >= 5 {
                let end = at.saturating_add(5).saturating_add(frame_len(&data[at..]));
                if end > data.len() {
                    break;
                }
                messages.push(data.slice(at..end));
                at = end;
            }
            partial.extend_from_slice(&data[at..]);
            if !messages.is_empty() {
                yield Ok(Frame::data(sign(signer, &method, &requests, &mut chain, messages).await));
            }
        }
        if !partial.is_empty() {
            yield Ok(Frame::data(partial.freeze()));
        }
    }
}

/// Signs whole framed messages as one batch (when the signer has room: else they go unsigned,
/// as unary answers do) and returns them framed again, each with its signature appended.
async fn sign(signer: &Signer, method: &str, requests: &Mutex<Requests>, chain: &mut Chain, messages: Vec<Bytes>) -> Bytes {
    let (certified_height, certified_digest) = CERTIFIED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let applied_height = APPLIED.load(Ordering::Relaxed);
    let (stream_requests, request_digest) = {
        let r = requests.lock().unwrap_or_else(|e| e.into_inner());
        (r.count, r.chain.to_vec())
    };
    let mut waiting = Vec::with_capacity(messages.len());
    for m in messages {
        chain.sequence += 1;
        // A compressed message (this front never compresses) would have to be decoded: unsigned.
        if m[0] != 0 {
            waiting.push((m, None));
            continue;
        }
        let response = &m[5..];
        let statement = AnswerStatement {
            chain_id: signer.chain_id.clone(),
            epoch: signer.epoch,
            bank: signer.bank,
            method: method.to_owned(),
            request_digest: request_digest.clone(),
            response_digest: Sha256::digest(response).to_vec(),
            revision: answer::header_revision(response).unwrap_or_default(),
            certified_height,
            certified_digest: certified_digest.clone(),
            applied_height,
            stream_sequence: chain.sequence,
            stream_previous: chain.previous.clone(),
            stream_requests,
        };
        let leaf = answer::leaf(&statement);
        let (tx, rx) = oneshot::channel();
        if signer.queue.try_send((statement, tx)).is_ok() {
            chain.previous = leaf.to_vec();
            waiting.push((m, Some(rx)));
        } else {
            waiting.push((m, None));
        }
    }
    let mut out = BytesMut::new();
    for (m, rx) in waiting {
        let field = match rx {
            Some(rx) => rx.await.ok().map(|s| answer::signature_field(&s)),
            None => None,
        };
        match field.and_then(|f| u32::try_from(m.len() - 5 + f.len()).ok().map(|len| (f, len))) {
            Some((f, len)) => {
                out.reserve(5 + len as usize);
                out.put_u8(0);
                out.put_u32(len);
                out.extend_from_slice(&m[5..]);
                out.extend_from_slice(&f);
            }
            None => out.extend_from_slice(&m),
        }
    }
    out.freeze()
}

/// A stream of frames as a response body.
struct Frames(Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, BoxError>> + Send>>);

impl HttpBody for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn requests_chain_whatever_the_data_frames() {
        let messages: [&[u8]; 3] = [b"first", b"", b"the third message"];
        let bytes: Vec<u8> = messages.iter().flat_map(|m| framed(m)).collect();
        let expected = messages.iter().fold(answer::NO_REQUESTS, |c, m| answer::chain_request(&c, &Sha256::digest(m)));
        for split in [1, 2, 3, 7, bytes.len()] {
            let mut r = Requests::default();
            for chunk in bytes.chunks(split) {
                r.feed(chunk);
            }
            assert_eq!((r.count, r.chain), (3, expected), "split {split}");
        }
    }
}
