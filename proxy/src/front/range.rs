//! The KV service as clients reach it: Range answered with etcd's own encoded response, every
//! other method by the generated `KvServer`.
//!
//! tonic routes by service name and the generated server decodes and encodes typed messages, so
//! a Range response could not leave as bytes through it. [`KvRoutes`] sits where `KvServer`
//! would, takes exactly `/etcdserverpb.KV/Range` for itself and hands every other path to the
//! `KvServer` it wraps. Its gRPC settings for Range are those the `KvServer` is built with
//! (receive limit `max_recv_bytes`, no send limit, no compression), so a client cannot tell the
//! two apart except by speed.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bftcd_proto::etcdserverpb::{kv_server::KvServer, RangeRequest};
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::Status;
use tower::Service;

use super::kv::KvFront;
use super::Front;
use crate::codec::EncodedReply;
use crate::etcd::RANGE_PATH;
use crate::reheader::Encoded;

#[derive(Clone)]
pub struct KvRoutes {
    front: Arc<Front>,
    kv: KvServer<KvFront>,
}

impl KvRoutes {
    pub fn new(front: Arc<Front>) -> Self {
        let kv = KvServer::new(KvFront(front.clone()))
            .max_decoding_message_size(front.max_recv_bytes)
            .max_encoding_message_size(usize::MAX);
        KvRoutes { front, kv }
    }
}

impl NamedService for KvRoutes {
    const NAME: &'static str = <KvServer<KvFront> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for KvRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != RANGE_PATH {
            return self.kv.call(req);
        }
        let front = self.front.clone();
        Box::pin(async move {
            let mut grpc = Grpc::new(EncodedReply::<RangeRequest>::default())
                .max_decoding_message_size(front.max_recv_bytes)
                .max_encoding_message_size(usize::MAX);
            Ok(grpc.unary(Range(front), req).await)
        })
    }
}

/// One client Range: checked, linearized, then read as encoded bytes.
struct Range(Arc<Front>);

impl UnaryService<RangeRequest> for Range {
    type Response = Encoded;
    type Future = BoxFuture<tonic::Response<Encoded>, Status>;

    fn call(&mut self, request: tonic::Request<RangeRequest>) -> Self::Future {
        let front = self.0.clone();
        Box::pin(async move {
            let r = request.get_ref();
            front.check_read(&request, &r.key, &r.range_end)?;
            let r = front.prepare_range(request.into_inner()).await?;
            Ok(tonic::Response::new(front.range_encoded(r).await?))
        })
    }
}
