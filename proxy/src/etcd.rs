//! The connection to this bank's own stock etcd. One HTTP/2 channel carries every call; tonic
//! reconnects it by itself when etcd restarts.

use bftcd_proto::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    watch_client::WatchClient, RangeRequest,
};
use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};
use tonic::{GrpcMethod, Status};

use crate::codec::RawReply;

/// etcd's Range, on the local etcd and on the sidecar's own front alike.
pub const RANGE_PATH: &str = "/etcdserverpb.KV/Range";

#[derive(Clone)]
pub struct LocalEtcd {
    channel: Channel,
    pub endpoint: String,
}

/// Ranges and snapshot chunks from etcd may be large; the client-facing limits are enforced on
/// the way in, not here.
const MAX_MESSAGE: usize = 512 << 20;

impl LocalEtcd {
    pub fn connect_lazy(endpoint: &str) -> anyhow::Result<Self> {
        let url = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
        let channel = Endpoint::from_shared(url.clone())?
            .connect_timeout(std::time::Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(std::time::Duration::from_secs(10))
            .keep_alive_timeout(std::time::Duration::from_secs(5))
            .connect_lazy();
        Ok(LocalEtcd { channel, endpoint: url })
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE)
    }

    /// A Range whose response is the message exactly as etcd encoded it, for the pass-through
    /// read path: same channel, limits and errors as `kv().range(..)`, minus the decoding.
    pub async fn range_raw(&self, r: RangeRequest) -> Result<Bytes, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        // The generated clients report a channel that cannot get ready with this text.
        grpc.ready().await.map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
        let mut req = tonic::Request::new(r);
        req.extensions_mut().insert(GrpcMethod::new("etcdserverpb.KV", "Range"));
        let path = http::uri::PathAndQuery::from_static(RANGE_PATH);
        Ok(grpc.unary(req, path, RawReply::default()).await?.into_inner())
    }

    /// A connection of its own, for a stream the client paces (Snapshot): on the shared channel
    /// a client that stops reading would hold its flow-control window, and the apply engine's
    /// Txns would wait behind it.
    pub fn dedicated(&self) -> anyhow::Result<LocalEtcd> {
        Self::connect_lazy(&self.endpoint)
    }

    pub fn watch(&self) -> WatchClient<Channel> {
        WatchClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    pub fn auth(&self) -> AuthClient<Channel> {
        AuthClient::new(self.channel.clone())
    }

    pub fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel.clone())
    }

    pub fn maintenance(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
}
