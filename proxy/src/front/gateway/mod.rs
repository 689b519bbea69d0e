//! etcd's JSON gateway on the client port: HTTP/1.1 requests (`POST /v3/kv/range` with a JSON
//! body, `GET /health`, `GET /version`), as etcd 3.5 serves them on its client URL next to gRPC.
//!
//! hyper tells HTTP/2 (gRPC) from HTTP/1.x per connection, after TLS and admission, so a gateway
//! connection is counted, limited and identified (certificate CN) as any other. This layer sits
//! outside every other layer of the front: a JSON request becomes the gRPC request it stands for
//! (protobuf, framed, the `Authorization` header as etcd's `token` metadata, the connection's
//! extensions kept) and goes through the same stack a gRPC client's does: client limits, auth,
//! key ownership, ordering and answer signing. Its gRPC answer is turned back into etcd's JSON.

mod json;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bftcd_proto::bftcd::{AnswerEvidence, AnswerRecord, AnswerSignature};
use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use http_body::{Body as HttpBody, Frame};
use prost::Message;
use prost_reflect::MessageDescriptor;
use tokio::sync::oneshot;
use tonic::body::Body;
use tonic::{Code, Status};

use super::conns::ClientConnInfo;
use super::limits::{Charge, ClientBudget};

/// The header a unary KV or Lease answer's signature travels in (the gRPC trailer
/// `bftcd-answer-bin`'s value: an `AnswerSignature`, base64 without padding).
pub const ANSWER_HEADER: &str = "bftcd-answer";
/// Sent with `bftcd-answer: evidence`, the answer comes with this header as well: an
/// `AnswerEvidence` holding the protobuf request and response the signature covers (base64),
/// which `bftcd-verify response` checks as it is.
pub const EVIDENCE_HEADER: &str = "bftcd-answer-evidence";

/// How long a client may take to send a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unary,
    /// One request, a stream of answers (Snapshot).
    ServerStream,
    /// Watch and LeaseKeepAlive: every request in the body.
    Bidi,
}

struct Route {
    path: &'static str,
    method: &'static str,
    request: &'static str,
    response: &'static str,
    kind: Kind,
}

const fn route(
    path: &'static str,
    method: &'static str,
    request: &'static str,
    response: &'static str,
    kind: Kind,
) -> Route {
    Route {
        path,
        method,
        request,
        response,
        kind,
    }
}

use Kind::*;

/// etcd 3.5's gateway paths (api/etcdserverpb/rpc.proto's http rules).
const ROUTES: &[Route] = &[
    route(
        "/v3/kv/range",
        "/etcdserverpb.KV/Range",
        "RangeRequest",
        "RangeResponse",
        Unary,
    ),
    route(
        "/v3/kv/put",
        "/etcdserverpb.KV/Put",
        "PutRequest",
        "PutResponse",
        Unary,
    ),
    route(
        "/v3/kv/deleterange",
        "/etcdserverpb.KV/DeleteRange",
        "DeleteRangeRequest",
        "DeleteRangeResponse",
        Unary,
    ),
    route(
        "/v3/kv/txn",
        "/etcdserverpb.KV/Txn",
        "TxnRequest",
        "TxnResponse",
        Unary,
    ),
    route(
        "/v3/kv/compaction",
        "/etcdserverpb.KV/Compact",
        "CompactionRequest",
        "CompactionResponse",
        Unary,
    ),
    route(
        "/v3/watch",
        "/etcdserverpb.Watch/Watch",
        "WatchRequest",
        "WatchResponse",
        Bidi,
    ),
    route(
        "/v3/lease/grant",
        "/etcdserverpb.Lease/LeaseGrant",
        "LeaseGrantRequest",
        "LeaseGrantResponse",
        Unary,
    ),
    route(
        "/v3/lease/revoke",
        "/etcdserverpb.Lease/LeaseRevoke",
        "LeaseRevokeRequest",
        "LeaseRevokeResponse",
        Unary,
    ),
    route(
        "/v3/kv/lease/revoke",
        "/etcdserverpb.Lease/LeaseRevoke",
        "LeaseRevokeRequest",
        "LeaseRevokeResponse",
        Unary,
    ),
    route(
        "/v3/lease/keepalive",
        "/etcdserverpb.Lease/LeaseKeepAlive",
        "LeaseKeepAliveRequest",
        "LeaseKeepAliveResponse",
        Bidi,
    ),
    route(
        "/v3/lease/timetolive",
        "/etcdserverpb.Lease/LeaseTimeToLive",
        "LeaseTimeToLiveRequest",
        "LeaseTimeToLiveResponse",
        Unary,
    ),
    route(
        "/v3/kv/lease/timetolive",
        "/etcdserverpb.Lease/LeaseTimeToLive",
        "LeaseTimeToLiveRequest",
        "LeaseTimeToLiveResponse",
        Unary,
    ),
    route(
        "/v3/lease/leases",
        "/etcdserverpb.Lease/LeaseLeases",
        "LeaseLeasesRequest",
        "LeaseLeasesResponse",
        Unary,
    ),
    route(
        "/v3/kv/lease/leases",
        "/etcdserverpb.Lease/LeaseLeases",
        "LeaseLeasesRequest",
        "LeaseLeasesResponse",
        Unary,
    ),
    route(
        "/v3/cluster/member/add",
        "/etcdserverpb.Cluster/MemberAdd",
        "MemberAddRequest",
        "MemberAddResponse",
        Unary,
    ),
    route(
        "/v3/cluster/member/remove",
        "/etcdserverpb.Cluster/MemberRemove",
        "MemberRemoveRequest",
        "MemberRemoveResponse",
        Unary,
    ),
    route(
        "/v3/cluster/member/update",
        "/etcdserverpb.Cluster/MemberUpdate",
        "MemberUpdateRequest",
        "MemberUpdateResponse",
        Unary,
    ),
    route(
        "/v3/cluster/member/list",
        "/etcdserverpb.Cluster/MemberList",
        "MemberListRequest",
        "MemberListResponse",
        Unary,
    ),
    route(
        "/v3/cluster/member/promote",
        "/etcdserverpb.Cluster/MemberPromote",
        "MemberPromoteRequest",
        "MemberPromoteResponse",
        Unary,
    ),
    route(
        "/v3/maintenance/alarm",
        "/etcdserverpb.Maintenance/Alarm",
        "AlarmRequest",
        "AlarmResponse",
        Unary,
    ),
    route(
        "/v3/maintenance/status",
        "/etcdserverpb.Maintenance/Status",
        "StatusRequest",
        "StatusResponse",
        Unary,
    ),
    route(
        "/v3/maintenance/defragment",
        "/etcdserverpb.Maintenance/Defragment",
        "DefragmentRequest",
        "DefragmentResponse",
        Unary,
    ),
    route(
        "/v3/maintenance/hash",
        "/etcdserverpb.Maintenance/Hash",
        "HashRequest",
        "HashResponse",
        Unary,
    ),
    route(
        "/v3/maintenance/hashkv",
        "/etcdserverpb.Maintenance/HashKV",
        "HashKVRequest",
        "HashKVResponse",
        Unary,
    ),
    route(
        "/v3/maintenance/snapshot",
        "/etcdserverpb.Maintenance/Snapshot",
        "SnapshotRequest",
        "SnapshotResponse",
        ServerStream,
    ),
    route(
        "/v3/maintenance/transfer-leadership",
        "/etcdserverpb.Maintenance/MoveLeader",
        "MoveLeaderRequest",
        "MoveLeaderResponse",
        Unary,
    ),
    route(
        "/v3/maintenance/downgrade",
        "/etcdserverpb.Maintenance/Downgrade",
        "DowngradeRequest",
        "DowngradeResponse",
        Unary,
    ),
    route(
        "/v3/auth/enable",
        "/etcdserverpb.Auth/AuthEnable",
        "AuthEnableRequest",
        "AuthEnableResponse",
        Unary,
    ),
    route(
        "/v3/auth/disable",
        "/etcdserverpb.Auth/AuthDisable",
        "AuthDisableRequest",
        "AuthDisableResponse",
        Unary,
    ),
    route(
        "/v3/auth/status",
        "/etcdserverpb.Auth/AuthStatus",
        "AuthStatusRequest",
        "AuthStatusResponse",
        Unary,
    ),
    route(
        "/v3/auth/authenticate",
        "/etcdserverpb.Auth/Authenticate",
        "AuthenticateRequest",
        "AuthenticateResponse",
        Unary,
    ),
    route(
        "/v3/auth/user/add",
        "/etcdserverpb.Auth/UserAdd",
        "AuthUserAddRequest",
        "AuthUserAddResponse",
        Unary,
    ),
    route(
        "/v3/auth/user/get",
        "/etcdserverpb.Auth/UserGet",
        "AuthUserGetRequest",
        "AuthUserGetResponse",
        Unary,
    ),
    route(
        "/v3/auth/user/list",
        "/etcdserverpb.Auth/UserList",
        "AuthUserListRequest",
        "AuthUserListResponse",
        Unary,
    ),
    route(
        "/v3/auth/user/delete",
        "/etcdserverpb.Auth/UserDelete",
        "AuthUserDeleteRequest",
        "AuthUserDeleteResponse",
        Unary,
    ),
    route(
        "/v3/auth/user/changepw",
        "/etcdserverpb.Auth/UserChangePassword",
        "AuthUserChangePasswordRequest",
        "AuthUserChangePasswordResponse",
        Unary,
    ),
    route(
        "/v3/auth/user/grant",
        "/etcdserverpb.Auth/UserGrantRole",
        "AuthUserGrantRoleRequest",
        "AuthUserGrantRoleResponse",
        Unary,
    ),
    route(
        "/v3/auth/user/revoke",
        "/etcdserverpb.Auth/UserRevokeRole",
        "AuthUserRevokeRoleRequest",
        "AuthUserRevokeRoleResponse",
        Unary,
    ),
    route(
        "/v3/auth/role/add",
        "/etcdserverpb.Auth/RoleAdd",
        "AuthRoleAddRequest",
        "AuthRoleAddResponse",
        Unary,
    ),
    route(
        "/v3/auth/role/get",
        "/etcdserverpb.Auth/RoleGet",
        "AuthRoleGetRequest",
        "AuthRoleGetResponse",
        Unary,
    ),
    route(
        "/v3/auth/role/list",
        "/etcdserverpb.Auth/RoleList",
        "AuthRoleListRequest",
        "AuthRoleListResponse",
        Unary,
    ),
    route(
        "/v3/auth/role/delete",
        "/etcdserverpb.Auth/RoleDelete",
        "AuthRoleDeleteRequest",
        "AuthRoleDeleteResponse",
        Unary,
    ),
    route(
        "/v3/auth/role/grant",
        "/etcdserverpb.Auth/RoleGrantPermission",
        "AuthRoleGrantPermissionRequest",
        "AuthRoleGrantPermissionResponse",
        Unary,
    ),
    route(
        "/v3/auth/role/revoke",
        "/etcdserverpb.Auth/RoleRevokePermission",
        "AuthRoleRevokePermissionRequest",
        "AuthRoleRevokePermissionResponse",
        Unary,
    ),
];

fn descriptor(name: &str) -> MessageDescriptor {
    json::descriptor(&format!("etcdserverpb.{name}"))
}

/// Puts the gateway in front of the client port's gRPC services.
#[derive(Clone)]
pub struct GatewayLayer(Arc<Settings>);

struct Settings {
    emulated_version: String,
    /// gRPC's receive limit; a JSON body may be a third larger (base64).
    max_recv_bytes: usize,
}

impl GatewayLayer {
    pub fn new(emulated_version: String, max_recv_bytes: usize) -> Self {
        GatewayLayer(Arc::new(Settings {
            emulated_version,
            max_recv_bytes,
        }))
    }
}

impl<S> tower::Layer<S> for GatewayLayer {
    type Service = Gateway<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Gateway {
            inner,
            settings: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Gateway<S> {
    inner: S,
    settings: Arc<Settings>,
}

type Answer<E> = Pin<Box<dyn std::future::Future<Output = Result<http::Response<Body>, E>> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Gateway<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Answer<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // etcd's rule: gRPC is HTTP/2 with a gRPC content type; everything else is the gateway
        // (curl over TLS speaks HTTP/2 too).
        let grpc = request.version() >= Version::HTTP_2
            && request
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            return Box::pin(self.inner.call(request));
        }
        // The service made ready goes with the request; a clone stays for the next one.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let settings = self.settings.clone();
        Box::pin(serve(ready, settings, request))
    }
}

async fn serve<S>(
    mut inner: S,
    settings: Arc<Settings>,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, S::Error>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
{
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    if method == Method::OPTIONS {
        // etcd answers CORS preflights on every path.
        return Ok(respond(StatusCode::OK, None, Bytes::new()));
    }
    match path.as_str() {
        "/health" | "/version" if method != Method::GET => {
            let mut r = respond(
                StatusCode::METHOD_NOT_ALLOWED,
                Some(TEXT),
                Bytes::from_static(b"Method Not Allowed\n"),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            r.headers_mut().insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
            return Ok(r);
        }
        "/version" => {
            let v = &settings.emulated_version;
            let cluster = v.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
            let (v, cluster) = (
                serde_json::Value::from(v.as_str()),
                serde_json::Value::from(format!("{cluster}.0")),
            );
            let body = format!(r#"{{"etcdserver":{v},"etcdcluster":{cluster}}}"#);
            return Ok(respond(StatusCode::OK, Some(JSON), body.into()));
        }
        "/health" => return health(inner, request).await,
        _ => {}
    }
    let Some(route) = ROUTES.iter().find(|r| r.path == path) else {
        if path.starts_with("/v3/") {
            return Ok(error(&Status::not_found("Not Found")));
        }
        let mut r = respond(
            StatusCode::NOT_FOUND,
            Some(TEXT),
            Bytes::from_static(b"404 page not found\n"),
        );
        r.headers_mut().insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        return Ok(r);
    };
    if method != Method::POST {
        return Ok(error(&Status::unimplemented("Method Not Allowed")));
    }
    let (parts, body) = request.into_parts();
    let budget = parts
        .extensions
        .get::<ClientConnInfo>()
        .map(|c| c.budget.clone());
    let (json, charges) = match read_body(
        body,
        &parts.headers,
        settings.max_recv_bytes,
        budget.as_ref(),
    )
    .await
    {
        Ok(b) => b,
        Err(status) => return Ok(error(&status)),
    };
    let request_desc = descriptor(route.request);
    let messages = if route.kind == Bidi {
        json::requests(&request_desc, &json)
    } else {
        json::request(&request_desc, &json).map(|m| vec![m])
    };
    let messages = match messages {
        Ok(m) => m,
        Err(e) => return Ok(error(&Status::invalid_argument(e))),
    };
    drop((json, charges));
    let wants_evidence = parts
        .headers
        .get(ANSWER_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"evidence"));
    let endpoint = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let request_bytes = messages.first().cloned().unwrap_or_default();
    let (cancel, cancelled) = oneshot::channel();
    let grpc_body = RequestBody {
        frames: messages.into_iter().map(|m| frame(&m)).collect(),
        // As through etcd's gateway: a watch stays open once its requests are read (etcd's
        // watch server ignores the end of the client's side); keepalives end with their answers.
        open: route.method == "/etcdserverpb.Watch/Watch",
        cancelled,
    };
    let answer = inner
        .call(grpc_request(route.method, parts, Body::new(grpc_body)))
        .await?;
    let (answer_parts, answer_body) = answer.into_parts();
    if let Some(status) =
        Status::from_header_map(&answer_parts.headers).filter(|s| s.code() != Code::Ok)
    {
        return Ok(error(&status));
    }
    let response_desc = descriptor(route.response);
    if route.kind != Unary {
        let stream = AnswerStream {
            inner: answer_body,
            desc: response_desc,
            buf: BytesMut::new(),
            done: false,
            _cancel: cancel,
        };
        let mut r = respond(StatusCode::OK, Some(JSON), Bytes::new());
        *r.body_mut() = Body::new(stream);
        r.headers_mut().insert(
            "grpc-metadata-content-type",
            HeaderValue::from_static("application/grpc"),
        );
        return Ok(r);
    }
    let (message, trailers) = match collect(answer_body).await {
        Ok(c) => c,
        Err(status) => return Ok(error(&status)),
    };
    drop(cancel);
    if let Some(status) = Status::from_header_map(&trailers).filter(|s| s.code() != Code::Ok) {
        return Ok(error(&status));
    }
    let body = match json::answer(&response_desc, &message, true) {
        Ok(b) => b,
        Err(e) => {
            return Ok(error(&Status::internal(format!(
                "bftcd: cannot write the answer as JSON: {e}"
            ))))
        }
    };
    // The JSON answer is held until hyper takes it: charged as the gRPC answer was.
    let charge = budget.map(|b| b.charge(body.len(), false));
    let mut r = respond(StatusCode::OK, Some(JSON), Bytes::new());
    *r.body_mut() = Body::new(Once(Some(Bytes::from(body)), charge));
    r.headers_mut().insert(
        "grpc-metadata-content-type",
        HeaderValue::from_static("application/grpc"),
    );
    if let Some(sig) = trailers.get(crate::front::answers::TRAILER) {
        r.headers_mut().insert(ANSWER_HEADER, sig.clone());
        if wants_evidence {
            if let Some(v) = evidence(sig, endpoint, request_bytes, message) {
                r.headers_mut().insert(EVIDENCE_HEADER, v);
            }
        }
    }
    Ok(r)
}

/// The signed answer as `bftcd-verify response` reads it.
fn evidence(
    sig: &HeaderValue,
    endpoint: String,
    request: Vec<u8>,
    response: Bytes,
) -> Option<HeaderValue> {
    use base64::engine::{
        general_purpose, DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig,
    };
    // gRPC's binary metadata is base64 with or without padding.
    const METADATA: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let sig = METADATA.decode(sig.as_bytes()).ok()?;
    let signature = AnswerSignature::decode(&sig[..]).ok()?;
    let record = AnswerRecord {
        endpoint,
        request,
        response: response.to_vec(),
        signature: Some(signature),
    };
    let evidence = AnswerEvidence {
        answers: vec![record],
        ..Default::default()
    };
    HeaderValue::from_str(&general_purpose::STANDARD.encode(evidence.encode_to_vec())).ok()
}

/// etcd's `/health`: a linearizable one-key read through the front, as any client's (etcd 3.5
/// reads with a quorum too); its permission errors still mean the cluster answers.
async fn health<S>(
    mut inner: S,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, S::Error>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
{
    let (parts, _) = request.into_parts();
    let probe = bftcd_proto::etcdserverpb::RangeRequest {
        key: b"health".to_vec(),
        limit: 1,
        keys_only: true,
        ..Default::default()
    };
    let (_cancel, cancelled) = oneshot::channel();
    let body = RequestBody {
        frames: VecDeque::from([frame(&probe.encode_to_vec())]),
        open: false,
        cancelled,
    };
    let answer = inner
        .call(grpc_request(
            "/etcdserverpb.KV/Range",
            parts,
            Body::new(body),
        ))
        .await?;
    let (answer_parts, answer_body) = answer.into_parts();
    let status = match Status::from_header_map(&answer_parts.headers) {
        Some(s) => s,
        None => match collect(answer_body).await {
            Ok((_, trailers)) => {
                Status::from_header_map(&trailers).unwrap_or_else(|| Status::unknown("no status"))
            }
            Err(s) => s,
        },
    };
    let healthy = match status.code() {
        Code::Ok | Code::PermissionDenied | Code::Unauthenticated => true,
        Code::InvalidArgument => {
            status.message().contains("user name") || status.message().contains("permission denied")
        }
        _ => false,
    };
    let (code, body) = if healthy {
        (StatusCode::OK, r#"{"health":"true","reason":""}"#)
    } else {
        tracing::debug!(%status, "the client port's /health read failed");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"health":"false","reason":"RANGE ERROR"}"#,
        )
    };
    Ok(respond(
        code,
        Some(TEXT),
        Bytes::from_static(body.as_bytes()),
    ))
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// A response with etcd's CORS headers (it sends them on every answer of its client URL).
fn respond(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: Bytes,
) -> http::Response<Body> {
    let mut r = http::Response::new(Body::new(Once(Some(body), None)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    if let Some(t) = content_type {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(t));
    }
    r
}

/// grpc-gateway's HTTP status for a gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        // grpc-gateway v2's "client closed request".
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::REQUEST_TIMEOUT),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error as etcd's gateway writes it: `{"code":3, "message":"etcdserver: ..."}`.
fn error(status: &Status) -> http::Response<Body> {
    let message = serde_json::Value::from(status.message()).to_string();
    let body = format!(
        r#"{{"code":{}, "message":{message}}}"#,
        status.code() as i32
    );
    let mut r = respond(http_status(status.code()), Some(JSON), body.into());
    if status.code() == Code::Unauthenticated {
        if let Ok(v) = HeaderValue::from_str(status.message()) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    r
}

/// A stream's error, as grpc-gateway writes it into an answer already under way.
fn stream_error(status: &Status) -> Bytes {
    // grpc-gateway v2's (etcd 3.5's): the status as google.rpc.Status, empty details left out.
    let message = serde_json::Value::from(status.message());
    let code = status.code() as i32;
    Bytes::from(format!(r#"{{"error":{{"code":{code},"message":{message}}}}}"#) + "\n")
}

/// The gRPC request a JSON request stands for, on the same connection (its extensions: the
/// client's budget and certificate).
fn grpc_request(
    method: &'static str,
    parts: http::request::Parts,
    body: Body,
) -> http::Request<Body> {
    let mut r = http::Request::new(body);
    *r.method_mut() = Method::POST;
    *r.uri_mut() = http::Uri::from_static(method);
    *r.version_mut() = Version::HTTP_2;
    *r.extensions_mut() = parts.extensions;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    // etcd's gateway hands the Authorization header to the server as the auth token.
    if let Some(token) = parts.headers.get(header::AUTHORIZATION) {
        h.insert("token", token.clone());
    }
    r
}

fn frame(message: &[u8]) -> Bytes {
    let mut f = BytesMut::with_capacity(5 + message.len());
    f.extend_from_slice(&[0]);
    f.extend_from_slice(&(message.len() as u32).to_be_bytes());
    f.extend_from_slice(message);
    f.freeze()
}

/// The largest JSON body taken: gRPC's limit in base64 plus room for the rest of the JSON.
fn max_body(max_recv_bytes: usize) -> usize {
    max_recv_bytes / 3 * 4 + (64 << 10)
}

/// A request's body, bounded in size (a larger one is refused as gRPC refuses a message over
/// its limit, before it is read) and in time.
/// What arrives is charged to the client's buffer (`--client-max-buffered-bytes`), as a gRPC
/// request is while it arrives: over it, etcd's `too many requests`.
async fn read_body(
    mut body: Body,
    headers: &HeaderMap,
    max_recv_bytes: usize,
    budget: Option<&Arc<ClientBudget>>,
) -> Result<(Bytes, Vec<Charge>), Status> {
    let max = max_body(max_recv_bytes);
    let too_large = |n: usize| {
        Status::resource_exhausted(format!(
            "grpc: received message larger than max ({n} vs. {max_recv_bytes})"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|&n| n > max) {
        return Err(too_large(n));
    }
    let mut charges = Vec::new();
    let mut charge = |n: usize| -> Result<(), Status> {
        if let Some(b) = budget {
            charges.push(
                b.try_charge(n, true)
                    .ok_or_else(|| b.refused("buffered_requests"))?,
            );
        }
        Ok(())
    };
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame.map_err(|e| {
                Status::invalid_argument(format!("bftcd: reading the request body: {e}"))
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > max {
                    return Err(too_large(buf.len() + data.len()));
                }
                charge(data.len())?;
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    };
    let body = tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err(Status::invalid_argument(
                "bftcd: the request body did not arrive in 30 s",
            ))
        })?;
    Ok((body, charges))
}

/// A unary gRPC answer: its one message and its trailers.
async fn collect(mut body: Body) -> Result<(Bytes, HeaderMap), Status> {
    let mut buf = BytesMut::new();
    let mut trailers = HeaderMap::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| Status::from_error(e.into()))?;
        match frame.into_data() {
            Ok(d) => buf.extend_from_slice(&d),
            Err(f) => {
                if let Ok(t) = f.into_trailers() {
                    trailers.extend(t);
                }
            }
        }
    }
    let message = match next_message(&mut buf) {
        Some(m) => m,
        None if Status::from_header_map(&trailers).is_some_and(|s| s.code() != Code::Ok) => {
            Bytes::new()
        }
        None => return Err(Status::internal("bftcd: the answer had no message")),
    };
    Ok((message, trailers))
}

/// The next whole gRPC message in `buf` (uncompressed: the front never compresses).
fn next_message(buf: &mut BytesMut) -> Option<Bytes> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    buf.advance(5);
    Some(buf.split_to(len).freeze())
}

/// One body, once; charged to its client until hyper has taken it.
struct Once(Option<Bytes>, Option<Charge>);

impl HttpBody for Once {
    type Data = Bytes;
    type Error = Status;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let data = self.0.take().filter(|b| !b.is_empty());
        self.1 = None;
        Poll::Ready(data.map(|b| Ok(Frame::data(b))))
    }
    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|b| b.is_empty())
    }
    // Known length: hyper sends Content-Length, as etcd's gateway does, not chunks.
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// The gRPC request's body: its messages, then (a bidirectional stream) open until the HTTP
/// answer is dropped, when it fails as a reset HTTP/2 stream would, so that the service's
/// reader ends too.
struct RequestBody {
    frames: VecDeque<Bytes>,
    open: bool,
    cancelled: oneshot::Receiver<()>,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = Status;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(f) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(f))));
        }
        if !self.open {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.cancelled).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                self.open = false;
                Poll::Ready(Some(Err(Status::cancelled(
                    "client closed the HTTP connection",
                ))))
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && !self.open
    }
}

use std::future::Future;

/// A streaming answer as etcd's gateway writes it: one `{"result":{...}}` line per message.
struct AnswerStream {
    inner: Body,
    desc: MessageDescriptor,
    buf: BytesMut,
    done: bool,
    /// Dropped with the answer: ends the request side (see [`RequestBody`]).
    _cancel: oneshot::Sender<()>,
}

impl HttpBody for AnswerStream {
    type Data = Bytes;
    type Error = Status;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(m) = next_message(&mut self.buf) {
                let line = match json::answer(&self.desc, &m, false) {
                    Ok(j) => {
                        let mut line = Vec::with_capacity(j.len() + 12);
                        line.extend_from_slice(br#"{"result":"#);
                        line.extend_from_slice(&j);
                        line.extend_from_slice(b"}\n");
                        Bytes::from(line)
                    }
                    Err(e) => {
                        self.done = true;
                        stream_error(&Status::internal(format!(
                            "bftcd: cannot write the answer as JSON: {e}"
                        )))
                    }
                };
                return Poll::Ready(Some(Ok(Frame::data(line))));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.done = true,
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Ok(Frame::data(stream_error(&Status::from_error(
                        e.into(),
                    ))))));
                }
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => self.buf.extend_from_slice(&d),
                    Err(f) => {
                        self.done = true;
                        let status = f
                            .into_trailers()
                            .ok()
                            .and_then(|t| Status::from_header_map(&t));
                        if let Some(s) = status.filter(|s| s.code() != Code::Ok) {
                            return Poll::Ready(Some(Ok(Frame::data(stream_error(&s)))));
                        }
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_names_messages_that_exist() {
        for r in ROUTES {
            descriptor(r.request);
            descriptor(r.response);
        }
    }

    #[test]
    fn errors_are_etcds() {
        let r = error(&Status::invalid_argument("etcdserver: key is not provided"));
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = error(&Status::unauthenticated("etcdserver: invalid auth token"));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "etcdserver: invalid auth token"
        );
        assert_eq!(
            http_status(Code::ResourceExhausted),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
        let line = stream_error(&Status::unavailable(r#"bftcd: "closed""#));
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"error\":{\"code\":14,\"message\":\"bftcd: \\\"closed\\\"\"}}\n"
        );
    }

    #[test]
    fn messages_are_cut_from_frames() {
        let mut buf = BytesMut::from(&frame(b"abc")[..]);
        buf.extend_from_slice(&frame(b"")[..3]);
        assert_eq!(next_message(&mut buf).as_deref(), Some(&b"abc"[..]));
        assert_eq!(next_message(&mut buf), None, "a partial frame waits");
    }
}
