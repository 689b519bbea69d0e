//! gRPC server metrics with the names and labels etcd's go-grpc-prometheus exports:
//! `grpc_server_started_total{grpc_type,grpc_service,grpc_method}` when a call arrives and
//! `grpc_server_handled_total{...,grpc_code}` when its status is known (the trailers, or the
//! headers of a trailers-only answer; a call whose answer is dropped before its end counts as
//! `Canceled`). The outermost layer, so calls the client limits refuse are counted too.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics(inner)
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S>(S);

/// The methods served: a path outside them is labelled `unknown`, so that clients cannot make
/// up label values without end.
const METHODS: &[(&str, &[&str])] = &[
    ("etcdserverpb.KV", &["Range", "Put", "DeleteRange", "Txn", "Compact"]),
    ("etcdserverpb.Watch", &["Watch"]),
    ("etcdserverpb.Lease", &["LeaseGrant", "LeaseRevoke", "LeaseKeepAlive", "LeaseTimeToLive", "LeaseLeases"]),
    ("etcdserverpb.Cluster", &["MemberAdd", "MemberRemove", "MemberUpdate", "MemberList", "MemberPromote"]),
    ("etcdserverpb.Maintenance", &["Alarm", "Status", "Defragment", "Hash", "HashKV", "Snapshot", "MoveLeader", "Downgrade"]),
    (
        "etcdserverpb.Auth",
        &[
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    ),
    ("grpc.health.v1.Health", &["Check", "Watch"]),
];

/// (grpc_type, grpc_service, grpc_method) of a path.
fn labels(path: &str) -> Option<(&'static str, String, String)> {
    let known = path.strip_prefix('/').and_then(|p| p.split_once('/')).and_then(|(service, method)| {
        let (service, methods) = METHODS.iter().find(|(s, _)| *s == service)?;
        let method = methods.iter().find(|m| **m == method)?;
        Some((*service, *method))
    });
    let Some((service, method)) = known else {
        return Some(("unary", "unknown".into(), "unknown".into()));
    };
    let kind = match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot") | ("grpc.health.v1.Health", "Watch") => "server_stream",
        _ => "unary",
    };
    Some((kind, service.to_string(), method.to_string()))
}

/// Go's names of the gRPC codes, as go-grpc-prometheus labels them.
fn code_name(code: &[u8]) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    std::str::from_utf8(code).ok().and_then(|c| c.trim().parse::<usize>().ok()).and_then(|i| NAMES.get(i).copied()).unwrap_or("Unknown")
}

/// A call's labels until its code is counted, once.
struct Pending {
    labels: Option<(&'static str, String, String)>,
}

impl Pending {
    fn handled(&mut self, code: &'static str) {
        if let Some((kind, service, method)) = self.labels.take() {
            metrics::counter!("grpc_server_handled_total", "grpc_type" => kind, "grpc_service" => service,
                "grpc_method" => method, "grpc_code" => code)
            .increment(1);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.handled("Canceled");
    }
}

pub struct CountedBody<B> {
    inner: B,
    pending: Pending,
}

impl<B> HttpBody for CountedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(code) = f.trailers_ref().and_then(|t| t.get("grpc-status")) {
                    let name = code_name(code.as_bytes());
                    self.pending.handled(name);
                }
            }
            Poll::Ready(Some(Err(_))) => self.pending.handled("Unknown"),
            _ => {}
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

impl<S, B> tower::Service<http::Request<Body>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError> + Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<http::Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let labels = labels(request.uri().path());
        if let Some((kind, service, method)) = &labels {
            metrics::counter!("grpc_server_started_total", "grpc_type" => *kind, "grpc_service" => service.clone(),
                "grpc_method" => method.clone())
            .increment(1);
        }
        let mut pending = Pending { labels };
        let answer = self.0.call(request);
        Box::pin(async move {
            let (parts, body) = answer.await?.into_parts();
            // A trailers-only answer (an error, usually) carries its status in the headers.
            if let Some(code) = parts.headers.get("grpc-status") {
                pending.handled(code_name(code.as_bytes()));
            }
            Ok(http::Response::from_parts(parts, Body::new(CountedBody { inner: body, pending })))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_as_go_grpc_prometheus() {
        assert_eq!(labels("/etcdserverpb.KV/Range"), Some(("unary", "etcdserverpb.KV".into(), "Range".into())));
        assert_eq!(labels("/etcdserverpb.Watch/Watch").unwrap().0, "bidi_stream");
        assert_eq!(labels("/etcdserverpb.Maintenance/Snapshot").unwrap().0, "server_stream");
        assert_eq!(labels("/a/b/c"), Some(("unary", "unknown".into(), "unknown".into())));
        assert_eq!(labels("/etcdserverpb.KV/Made-Up"), Some(("unary", "unknown".into(), "unknown".into())));
        assert_eq!(code_name(b"0"), "OK");
        assert_eq!(code_name(b"14"), "Unavailable");
        assert_eq!(code_name(b"99"), "Unknown");
        assert_eq!(code_name(b"\xff"), "Unknown");
    }
}
