//! Watch: each client stream is proxied to one watch stream on the local etcd. etcd keeps the
//! semantics clients depend on (ordering, progress notify, RequestProgress answered with watch
//! id -1 only when synced, compaction cancels); the front hides reserved keys and rewrites headers.

use std::pin::Pin;
use std::sync::Arc;

use bftcd_proto::etcdserverpb::{watch_server::Watch, WatchRequest, WatchResponse};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

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

#[tonic::async_trait]
impl Watch for WatchFront {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<WatchRequest>(64);
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                if tx.send(req).await.is_err() {
                    break;
                }
            }
        });
        let upstream = self
            .0
            .etcd
            .watch()
            .watch(ReceiverStream::new(rx))
            .await
            .map_err(errors::from_etcd)?
            .into_inner();
        let identity = self.0.identity.clone();
        let out = upstream.filter_map(move |item| {
            let out = match item {
                Ok(resp) => filter(resp, &identity).map(Ok),
                Err(s) => Some(Err(errors::from_etcd(s))),
            };
            std::future::ready(out)
        });
        Ok(Response::new(Box::pin(out)))
    }
}
