//! etcd's client-visible errors, code and text byte for byte as etcd 3.5 sends them
//! (api/v3rpc/rpctypes): clients such as kube-apiserver and the etcd client libraries match on
//! the text, so these strings must never be reworded.

use tonic::{Code, Status};

macro_rules! etcd_errors {
    ($($name:ident => $code:ident, $text:literal;)*) => {
        $(pub fn $name() -> Status { Status::new(Code::$code, $text) })*
    };
}

etcd_errors! {
    empty_key => InvalidArgument, "etcdserver: key is not provided";
    key_not_found => InvalidArgument, "etcdserver: key not found";
    value_provided => InvalidArgument, "etcdserver: value is provided";
    lease_provided => InvalidArgument, "etcdserver: lease is provided";
    too_many_ops => InvalidArgument, "etcdserver: too many operations in txn request";
    duplicate_key => InvalidArgument, "etcdserver: duplicate key given in txn request";
    compacted => OutOfRange, "etcdserver: mvcc: required revision has been compacted";
    request_too_large => InvalidArgument, "etcdserver: request is too large";
    too_many_requests => ResourceExhausted, "etcdserver: too many requests";
    lease_not_found => NotFound, "etcdserver: requested lease not found";
    lease_exists => FailedPrecondition, "etcdserver: lease already exists";
    lease_ttl_too_large => OutOfRange, "etcdserver: too large lease TTL";
    no_leader => Unavailable, "etcdserver: no leader";
    timeout => Unavailable, "etcdserver: request timed out";
    auth_not_enabled => FailedPrecondition, "etcdserver: authentication is not enabled";
    permission_denied => PermissionDenied, "etcdserver: permission denied";
    corrupt => DataLoss, "etcdserver: corrupt cluster";
}

/// A write that touches BFTcd's reserved key prefix (where each bank keeps its apply position).
pub fn reserved_key() -> Status {
    Status::invalid_argument(
        "bftcd: keys under the reserved prefix \"\\x00bftcd/\" are managed by bftcd and cannot be written or compared",
    )
}

/// Something etcd supports that BFTcd deliberately does not (yet); the text says why.
pub fn unsupported(what: &str) -> Status {
    Status::failed_precondition(format!("bftcd: {what}"))
}

/// Strips an upstream status down to what a client of etcd would see: code and message.
pub fn from_etcd(s: Status) -> Status {
    Status::new(s.code(), s.message().to_string())
}

/// etcd's error for an auth refusal (the texts live with the auth store).
pub fn auth(e: bftcd_sequencer::auth::AuthError) -> Status {
    use bftcd_sequencer::auth::ErrorCode;
    let code = match e.code() {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::Unauthenticated => Code::Unauthenticated,
    };
    Status::new(code, e.text())
}

/// Why every bank refused an ordered operation, as etcd's error.
pub fn refusal(r: bftcd_sequencer::governance::Refusal) -> Status {
    match r {
        bftcd_sequencer::governance::Refusal::KeyOwner(_) => permission_denied(),
        bftcd_sequencer::governance::Refusal::Auth(e) => auth(e),
    }
}
