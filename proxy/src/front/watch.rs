//! Watch: each client stream is proxied to one watch stream on the local etcd. etcd keeps the
//! semantics clients depend on (ordering, progress notify, RequestProgress answered with watch
//! id -1 only when synced, compaction cancels); the front hides reserved keys and rewrites headers,
//! and keeps each client within its watch and buffer limits.

use std::pin::Pin;
use std::sync::Arc;

use std::sync::atomic::{AtomicUsize, Ordering};

use bftcd_proto::etcdserverpb::{watch_request::RequestUnion, watch_server::Watch, WatchRequest, WatchResponse};
use bftcd_proto::Message;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::conns::ClientConnInfo;
use super::limits::{Charge, ClientBudget};
use super::Front;
use crate::identity::Identity;
use crate::{errors, reserved};

pub struct WatchFront(pub Arc<Front>);

/// Drops reserved keys' events. A response left with no events is dropped too: sending it empty
/// would look like a progress notification the client never asked for.
fn filter(mut resp: WatchResponse, identity: &Identity) -> Option<WatchResponse> {
    let had_events = !resp.events.is_empty();
    resp.events.retain(|e| e.kv.as_ref().is_none_or(|kv| !reserved::is_reserved(&kv.key)));
    if had_events && resp.events.is_empty() && !resp.created && !resp.canceled && !resp.fragment {
        return None;
    }
    resp.header = identity.header(resp.header);
    Some(resp)
}

/// How a stream ends when its client does not take its events: etcd clients watch again from
/// the last revision they received (Unavailable is not a halting error for them).
fn too_slow() -> Status {
    Status::unavailable("bftcd: watch stream closed: the client did not read its events; watch again from the last revision received")
}

/// The watches one stream holds, counted against its client's cap until the stream ends.
struct StreamWatches {
    budget: Option<Arc<ClientBudget>>,
    open: AtomicUsize,
}

impl StreamWatches {
    /// A create counts when it is asked for, so a flood cannot outrun the cap.
    fn create(&self) -> Result<(), Status> {
        if let Some(b) = &self.budget {
            b.add_watches(1)?;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// etcd answers every cancel, asked for or not (compaction, a refused create), with one
    /// canceled response.
    fn canceled(&self) {
        if self.open.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            if let Some(b) = &self.budget {
                b.remove_watches(1);
            }
        }
    }
}

impl Drop for StreamWatches {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.remove_watches(*self.open.get_mut());
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchFront {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    /// etcd's stream is always read at once, whether or not the client reads ours: a stalled
    /// stream on the one HTTP/2 connection to etcd would hold its flow-control window and stall
    /// the apply engine's Txns behind it. What the client has not taken is charged to its
    /// buffer; a client over it loses the stream ([`too_slow`]).
    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let budget = request.extensions().get::<ClientConnInfo>().map(|c| c.budget.clone());
        let watches = Arc::new(StreamWatches { budget: budget.clone(), open: AtomicUsize::new(0) });
        // The stream's etcd user (its token's, or its certificate's), fixed when it opens.
        let user = self.0.auth_user(&request)?;
        let (out_tx, out_rx) = mpsc::unbounded_channel::<(Result<WatchResponse, Status>, Option<Charge>)>();
        let (front, denied_tx, denied_budget) = (self.0.clone(), out_tx.clone(), budget.clone());
        let mut inbound = request.into_inner();
        let (up_tx, up_rx) = mpsc::channel::<WatchRequest>(64);
        let (refused_tx, mut refused_rx) = mpsc::channel::<Status>(1);
        let counted = watches.clone();
        tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    r = inbound.message() => r,
                    _ = up_tx.closed() => break,
                };
                let req = match req {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(s) => {
                        let _ = refused_tx.send(s).await;
                        break;
                    }
                };
                if let Some(RequestUnion::CreateRequest(c)) = &req.request_union {
                    // Without read permission: answered here, created and canceled at once, as
                    // etcd does; the stream goes on.
                    if let Err(e) = front.applier.rules().auth().check_range(user.as_deref(), &c.key, &c.range_end, false) {
                        let header = front.current_header().await.unwrap_or_default();
                        let denied = WatchResponse {
                            header,
                            watch_id: c.watch_id,
                            created: true,
                            canceled: true,
                            // etcd puts the gRPC error's full text here (grpc-go's form).
                            cancel_reason: format!("rpc error: code = {:?} desc = {}", errors::auth(e).code(), e.text()),
                            ..Default::default()
                        };
                        let charge = match &denied_budget {
                            Some(b) => match b.try_charge(denied.encoded_len(), false) {
                                Some(c) => Some(c),
                                None => break,
                            },
                            None => None,
                        };
                        if denied_tx.send((Ok(denied), charge)).is_err() {
                            break;
                        }
                        continue;
                    }
                    if let Err(s) = counted.create() {
                        let _ = refused_tx.send(s).await;
                        break;
                    }
                }
                if up_tx.send(req).await.is_err() {
                    break;
                }
            }
        });
        // etcd answers the stream's opening only with its first message: a client whose first
        // create is refused here must not wait for it.
        let mut etcd = self.0.etcd.watch();
        let identity = self.0.identity.clone();
        let counted = watches.clone();
        tokio::spawn(async move {
            let opened = tokio::select! {
                o = etcd.watch(ReceiverStream::new(up_rx)) => o,
                _ = out_tx.closed() => return,
            };
            let mut upstream = match opened {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    let _ = out_tx.send((Err(errors::from_etcd(s)), None));
                    return;
                }
            };
            loop {
                let item = tokio::select! {
                    i = upstream.next() => i,
                    Some(s) = refused_rx.recv() => Some(Err(s)),
                    _ = out_tx.closed() => break,
                };
                let item = match item {
                    None => break,
                    Some(Ok(resp)) => {
                        if resp.canceled {
                            counted.canceled();
                        }
                        match filter(resp, &identity) {
                            Some(r) => Ok(r),
                            None => continue,
                        }
                    }
                    Some(Err(s)) => Err(errors::from_etcd(s)),
                };
                let charge = match (&item, &budget) {
                    (Ok(r), Some(b)) => match b.try_charge(r.encoded_len(), false) {
                        Some(c) => Some(c),
                        None => {
                            let _ = b.refused("watch_events");
                            let _ = out_tx.send((Err(too_slow()), None));
                            break;
                        }
                    },
                    _ => None,
                };
                let last = item.is_err();
                if out_tx.send((item, charge)).is_err() || last {
                    break;
                }
            }
        });
        // The stream holds the count of its watches until the client's stream is dropped.
        let out = UnboundedReceiverStream::new(out_rx).map(move |(item, charge)| {
            let _ = (&watches, charge);
            item
        });
        Ok(Response::new(Box::pin(out)))
    }
}
