//! Request validation before ordering. The rules live in `bftcd_sequencer::validity`, shared
//! with every bank's consensus core (which refuses a peer's operation that breaks them); here
//! they only turn into etcd's own error codes and texts for the client.

use bftcd_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};
use bftcd_sequencer::validity::{self, Invalid};
use tonic::Status;

use crate::errors;

pub use validity::txn_writes;

/// The etcd error a client gets for an operation the validator refuses.
pub fn status(e: Invalid) -> Status {
    match e {
        Invalid::EmptyKey => errors::empty_key(),
        Invalid::KeyNotFound | Invalid::NoRequest => errors::key_not_found(),
        Invalid::ValueProvided => errors::value_provided(),
        Invalid::LeaseProvided => errors::lease_provided(),
        Invalid::TooManyOps => errors::too_many_ops(),
        Invalid::DuplicateKey => errors::duplicate_key(),
        Invalid::TooLarge => errors::request_too_large(),
        Invalid::LeaseTtlTooLarge => errors::lease_ttl_too_large(),
        Invalid::ReservedKey => errors::reserved_key(),
        Invalid::PlaintextPassword => Status::internal("bftcd: a password reached ordering unhashed"),
        // No etcd equivalent: a certificate CN or user name longer than the ledger holds.
        Invalid::ClientIdentity => {
            Status::invalid_argument(format!("bftcd: client name above {} bytes", validity::MAX_CLIENT_NAME_BYTES))
        }
    }
}

pub fn check_range(r: &RangeRequest) -> Result<(), Status> {
    validity::check_range(r).map_err(status)
}

pub fn check_put(r: &PutRequest) -> Result<(), Status> {
    validity::check_put(r).map_err(status)
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), Status> {
    validity::check_delete(r).map_err(status)
}

pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), Status> {
    validity::check_txn(r, max_txn_ops).map_err(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftcd_proto::etcdserverpb::{request_op::Request, RequestOp};

    fn put(k: &str) -> RequestOp {
        RequestOp { request: Some(Request::RequestPut(PutRequest { key: k.into(), ..Default::default() })) }
    }
    fn msg(r: Result<(), Status>) -> String {
        r.err().map(|s| s.message().to_string()).unwrap_or_default()
    }

    #[test]
    fn refusals_carry_etcds_texts() {
        let t = |success| TxnRequest { compare: vec![], success, failure: vec![] };
        assert_eq!(msg(check_txn(&t(vec![put("a"), put("a")]), 128)), "etcdserver: duplicate key given in txn request");
        let many = t((0..129).map(|i| put(&format!("k{i}"))).collect());
        assert_eq!(msg(check_txn(&many, 128)), "etcdserver: too many operations in txn request");
        assert_eq!(msg(check_txn(&t(vec![RequestOp { request: None }]), 128)), "etcdserver: key not found");
        assert_eq!(msg(check_txn(&t(vec![put("")]), 128)), "etcdserver: key is not provided");
        assert_eq!(status(Invalid::TooLarge).message(), "etcdserver: request is too large");
        assert_eq!(status(Invalid::TooLarge).code(), tonic::Code::InvalidArgument);
        assert!(msg(check_put(&PutRequest { key: crate::reserved::APPLIED_KEY.to_vec(), ..Default::default() }))
            .starts_with("bftcd: keys under the reserved prefix"));
    }

    #[test]
    fn lease_ttl_limit_matches_the_apply_engine() {
        assert_eq!(validity::MAX_LEASE_TTL, crate::apply::leases::MAX_TTL);
    }
}
