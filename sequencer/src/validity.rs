//! Which operations may be ordered: one set of rules, a pure function of the operation and the
//! genesis, run by the submitting bank's etcd front (a refused client gets etcd's own error) and
//! by every bank's consensus core before an operation enters its mempool or is accepted in a
//! proposed block (a peer's invalid operation is dropped and logged). Checking only at the
//! submitting bank would let one Byzantine bank (or one honest bank configured above the chain's
//! limits) order what the others' etcds refuse, or an operation no block can hold.
//!
//! The request rules are etcd 3.5's (api/v3rpc/key.go, rpctypes); the limits come from the
//! genesis, so every bank checks against the same numbers.

use std::collections::HashSet;

use bftcd_proto::bftcd::{auth_change::Change, operation::Request as Op, ClientIdentity, Genesis, Operation};
use bftcd_proto::etcdserverpb::{request_op::Request, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use bftcd_proto::Message;

use crate::reserved;

/// etcd's default `--max-request-bytes` (1.5 MiB); a genesis without the field means this.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
pub const DEFAULT_MAX_BLOCK_BYTES: usize = 8 << 20;
pub const DEFAULT_MAX_BLOCK_OPERATIONS: usize = 4096;
/// What an operation adds to its request: id, time, signature and the path in its signed batch
/// (at most 32 hashes of 32 bytes). Bounds the whole operation, so a peer cannot pad it.
pub const OPERATION_OVERHEAD: usize = 4096;
/// A block must fit one peer frame (16 MiB) with its certificates and framing.
pub const MAX_BLOCK_BYTES_LIMIT: usize = 15 << 20;
/// etcd's largest lease TTL in seconds (lease.MaxLeaseTTL).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// The longest client name (certificate CN or etcd user) an operation may carry; X.509 allows a
/// CN of 64 characters, and [`OPERATION_OVERHEAD`] must hold two of these beside the rest.
pub const MAX_CLIENT_NAME_BYTES: usize = 256;

/// The chain-wide limits, from the genesis (absent fields: etcd's and this version's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest client request (its encoded size), as etcd's `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// Most operations in one Txn level, as etcd's `--max-txn-ops`.
    pub max_txn_ops: usize,
    pub max_block_bytes: usize,
    pub max_block_operations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            max_block_bytes: DEFAULT_MAX_BLOCK_BYTES,
            max_block_operations: DEFAULT_MAX_BLOCK_OPERATIONS,
        }
    }
}

fn or_default(v: u64, default: usize) -> usize {
    if v == 0 {
        default
    } else {
        usize::try_from(v).unwrap_or(usize::MAX)
    }
}

impl Limits {
    pub fn of(g: &Genesis) -> Limits {
        Limits {
            max_request_bytes: or_default(g.max_request_bytes, DEFAULT_MAX_REQUEST_BYTES),
            max_txn_ops: or_default(g.max_txn_ops as u64, DEFAULT_MAX_TXN_OPS),
            max_block_bytes: or_default(g.max_block_bytes, DEFAULT_MAX_BLOCK_BYTES),
            max_block_operations: or_default(g.max_block_operations as u64, DEFAULT_MAX_BLOCK_OPERATIONS),
        }
    }

    /// Writes the limits into a genesis explicitly (every field set, so readers need no defaults).
    pub fn write_to(&self, g: &mut Genesis) {
        g.max_request_bytes = self.max_request_bytes as u64;
        g.max_txn_ops = self.max_txn_ops as u32;
        g.max_block_bytes = self.max_block_bytes as u64;
        g.max_block_operations = self.max_block_operations as u32;
    }

    /// Largest operation, signature and batch path included: one always fits an empty block.
    pub fn max_operation_bytes(&self) -> usize {
        self.max_request_bytes + OPERATION_OVERHEAD
    }

    /// Are the limits consistent? Above all: the largest valid request must fit a block, or a
    /// valid operation could never be ordered.
    pub fn check(&self) -> Result<(), String> {
        if self.max_txn_ops == 0 || self.max_txn_ops > u32::MAX as usize || self.max_block_operations == 0 {
            return Err("max_txn_ops and max_block_operations must be at least 1".into());
        }
        if self.max_block_operations > u32::MAX as usize {
            return Err("max_block_operations is too large".into());
        }
        if self.max_block_bytes > MAX_BLOCK_BYTES_LIMIT {
            return Err(format!("max_block_bytes {} is above {} (a block must fit one peer frame)", self.max_block_bytes, MAX_BLOCK_BYTES_LIMIT));
        }
        if self.max_operation_bytes() > self.max_block_bytes {
            return Err(format!(
                "max_request_bytes {} does not fit a block: max_block_bytes must be at least {} more ({})",
                self.max_request_bytes,
                OPERATION_OVERHEAD,
                self.max_request_bytes + OPERATION_OVERHEAD
            ));
        }
        Ok(())
    }
}

/// Why an operation is refused. The front turns each into etcd's error (bftcd-proxy `errors`);
/// the core logs [`Invalid::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    EmptyKey,
    /// A RequestOp without a request (etcd's `key not found`).
    KeyNotFound,
    ValueProvided,
    LeaseProvided,
    TooManyOps,
    DuplicateKey,
    TooLarge,
    LeaseTtlTooLarge,
    /// Writes or compares keys under the reserved prefix.
    ReservedKey,
    /// An operation without a request (never sent by an honest bank).
    NoRequest,
    /// A client name above [`MAX_CLIENT_NAME_BYTES`], or a client on a request of the bank's own
    /// (lease expiry, governance).
    ClientIdentity,
    /// An auth change with a password in the clear (never sent by an honest bank).
    PlaintextPassword,
}

impl Invalid {
    pub fn reason(self) -> &'static str {
        match self {
            Invalid::EmptyKey => "operation with an empty key",
            Invalid::KeyNotFound => "operation with an empty request op",
            Invalid::ValueProvided => "operation with ignore_value and a value",
            Invalid::LeaseProvided => "operation with ignore_lease and a lease",
            Invalid::TooManyOps => "operation with too many txn ops",
            Invalid::DuplicateKey => "operation with a duplicate key in a txn",
            Invalid::TooLarge => "operation above the chain's size limit",
            Invalid::LeaseTtlTooLarge => "operation with a lease TTL above etcd's",
            Invalid::ReservedKey => "operation touching the reserved prefix",
            Invalid::NoRequest => "operation without a request",
            Invalid::ClientIdentity => "operation with a malformed client identity",
            Invalid::PlaintextPassword => "operation with a password in the clear",
        }
    }
}

/// Everything about an operation's content (not its id, time or signature: the core checks
/// those). Deterministic: the operation and the limits decide.
pub fn check_operation(op: &Operation, limits: &Limits) -> Result<(), Invalid> {
    let Some(request) = &op.request else { return Err(Invalid::NoRequest) };
    check_request(request, limits)?;
    if let Some(c) = &op.client {
        check_client(c)?;
        if matches!(request, Op::LeaseExpire(_) | Op::Governance(_)) {
            return Err(Invalid::ClientIdentity);
        }
    }
    if op.encoded_len() > limits.max_operation_bytes() {
        return Err(Invalid::TooLarge);
    }
    Ok(())
}

/// A client identity a bank may put on an operation.
pub fn check_client(c: &ClientIdentity) -> Result<(), Invalid> {
    if c.certificate_cn.len() > MAX_CLIENT_NAME_BYTES || c.user.len() > MAX_CLIENT_NAME_BYTES {
        return Err(Invalid::ClientIdentity);
    }
    Ok(())
}

pub fn request_len(request: &Op) -> usize {
    match request {
        Op::Put(r) => r.encoded_len(),
        Op::DeleteRange(r) => r.encoded_len(),
        Op::Txn(r) => r.encoded_len(),
        Op::Compact(r) => r.encoded_len(),
        Op::LeaseGrant(r) => r.encoded_len(),
        Op::LeaseRevoke(r) => r.encoded_len(),
        Op::LeaseKeepAlive(r) => r.encoded_len(),
        Op::LeaseExpire(r) => r.encoded_len(),
        Op::Governance(r) => r.encoded_len(),
        Op::Auth(r) => r.encoded_len(),
    }
}

/// A client's write as the front hands it to ordering.
pub fn check_request(request: &Op, limits: &Limits) -> Result<(), Invalid> {
    if request_len(request) > limits.max_request_bytes {
        return Err(Invalid::TooLarge);
    }
    match request {
        Op::Put(r) => check_put(r),
        Op::DeleteRange(r) => check_delete(r),
        Op::Txn(r) => check_txn(r, limits.max_txn_ops),
        Op::LeaseGrant(r) if r.ttl > MAX_LEASE_TTL => Err(Invalid::LeaseTtlTooLarge),
        // Passwords are hashed by the bank that receives them; one in the clear must never reach
        // a block (or the ledger).
        Op::Auth(a) => match &a.change {
            Some(Change::UserAdd(u)) if !u.password.is_empty() => Err(Invalid::PlaintextPassword),
            Some(Change::UserChangePassword(u)) if !u.password.is_empty() => Err(Invalid::PlaintextPassword),
            _ => Ok(()),
        },
        // Compaction and lease calls fail, if at all, identically on every bank at apply.
        _ => Ok(()),
    }
}

pub fn check_range(r: &RangeRequest) -> Result<(), Invalid> {
    if r.key.is_empty() {
        return Err(Invalid::EmptyKey);
    }
    // etcd 3.5 accepts unknown sort enums (an unknown order means no sorting), so do we.
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<(), Invalid> {
    if r.key.is_empty() {
        return Err(Invalid::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Invalid::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Invalid::LeaseProvided);
    }
    if reserved::is_reserved(&r.key) {
        return Err(Invalid::ReservedKey);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), Invalid> {
    if r.key.is_empty() {
        return Err(Invalid::EmptyKey);
    }
    // A delete that only names reserved keys is a write to them; one that merely spans the
    // prefix (`del --prefix ""`) is split around it.
    if reserved::overlaps(&r.key, &r.range_end) && reserved::split(&r.key, &r.range_end).is_empty() {
        return Err(Invalid::ReservedKey);
    }
    Ok(())
}

pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), Invalid> {
    check_txn_ops(r, max_txn_ops as i64)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_ops: i64) -> Result<(), Invalid> {
    let widest = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if widest > max_ops {
        return Err(Invalid::TooManyOps);
    }
    for c in &r.compare {
        if c.key.is_empty() {
            return Err(Invalid::EmptyKey);
        }
        if reserved::overlaps(&c.key, &c.range_end) {
            return Err(Invalid::ReservedKey);
        }
    }
    // etcd charges nested Txns against what the enclosing level left over.
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, max_ops - widest)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: i64) -> Result<(), Invalid> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(r)) => check_put(r),
        Some(Request::RequestDeleteRange(r)) => check_delete(r),
        Some(Request::RequestTxn(r)) => check_txn_ops(r, max_ops),
        None => Err(Invalid::KeyNotFound),
    }
}

/// Keys deleted by a set of operations: a point or a `[start, end)` interval. An end of "\0" is
/// taken literally here, as etcd's own duplicate check does.
#[derive(Default)]
struct Deletes(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl Deletes {
    fn contains(&self, key: &[u8]) -> bool {
        self.0.iter().any(|(start, end)| match end {
            None => start.as_slice() == key,
            Some(end) => start.as_slice() <= key && key < end.as_slice(),
        })
    }
}

/// etcd's duplicate-key rule: within one branch, a key may be put once and not also deleted;
/// a nested Txn's then and else branches are exclusive, so they may put the same key.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Deletes), Invalid> {
    let mut deletes = Deletes::default();
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            let end = (!d.range_end.is_empty()).then(|| d.range_end.clone());
            deletes.0.push((d.key.clone(), end));
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else { continue };
        let (puts_then, deletes_then) = check_intervals(&t.success)?;
        let (puts_else, deletes_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deletes.contains(k) {
                return Err(Invalid::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deletes.contains(k) {
                return Err(Invalid::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        deletes.0.extend(deletes_then.0);
        deletes.0.extend(deletes_else.0);
    }
    for op in ops {
        if let Some(Request::RequestPut(p)) = &op.request {
            if puts.contains(&p.key) || deletes.contains(&p.key) {
                return Err(Invalid::DuplicateKey);
            }
            puts.insert(p.key.clone());
        }
    }
    Ok((puts, deletes))
}

/// Does the Txn write anything (in any branch, at any depth)? Read-only Txns skip ordering.
pub fn txn_writes(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => true,
        Some(Request::RequestTxn(t)) => txn_writes(t),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftcd_proto::bftcd::OperationId;
    use bftcd_proto::etcdserverpb::{Compare, LeaseGrantRequest};

    fn put(k: &str) -> RequestOp {
        RequestOp { request: Some(Request::RequestPut(PutRequest { key: k.into(), ..Default::default() })) }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest { compare: vec![], success, failure }
    }
    fn nested(t: TxnRequest) -> RequestOp {
        RequestOp { request: Some(Request::RequestTxn(t)) }
    }
    fn op(request: Op) -> Operation {
        Operation {
            id: Some(OperationId { bank: 1, nonce: 7 }),
            request: Some(request),
            submitted_ms: 1,
            bank_signature: vec![9; 64],
            ..Default::default()
        }
    }

    #[test]
    fn duplicate_keys_follow_etcd() {
        let dup = Err(Invalid::DuplicateKey);
        assert_eq!(check_txn(&txn(vec![put("a"), put("a")], vec![]), 128), dup);
        assert_eq!(check_txn(&txn(vec![put("b"), del("a", "c")], vec![]), 128), dup);
        assert_eq!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128), Ok(()));
        // then/else of one nested txn are exclusive ...
        let t = txn(vec![nested(txn(vec![put("a")], vec![put("a")]))], vec![]);
        assert_eq!(check_txn(&t, 128), Ok(()));
        // ... but a nested put may not repeat an outer one.
        let t = txn(vec![put("a"), nested(txn(vec![put("a")], vec![]))], vec![]);
        assert_eq!(check_txn(&t, 128), dup);
    }

    #[test]
    fn txn_limits_and_empty_ops() {
        let many = txn((0..129).map(|i| put(&format!("k{i}"))).collect(), vec![]);
        assert_eq!(check_txn(&many, 128), Err(Invalid::TooManyOps));
        assert_eq!(check_txn(&many, 129), Ok(()));
        // A nested Txn is charged against what its level left over, as etcd does.
        let inner = txn((0..10).map(|i| put(&format!("n{i}"))).collect(), vec![]);
        let outer = txn(vec![nested(inner.clone()), put("x")], vec![]);
        assert_eq!(check_txn(&outer, 12), Ok(()));
        assert_eq!(check_txn(&outer, 11), Err(Invalid::TooManyOps));
        let empty = txn(vec![RequestOp { request: None }], vec![]);
        assert_eq!(check_txn(&empty, 128), Err(Invalid::KeyNotFound));
        assert_eq!(check_txn(&txn(vec![put("")], vec![]), 128), Err(Invalid::EmptyKey));
    }

    #[test]
    fn reserved_keys_are_not_writable() {
        let p = PutRequest { key: reserved::APPLIED_KEY.to_vec(), ..Default::default() };
        assert_eq!(check_put(&p), Err(Invalid::ReservedKey));
        let d = DeleteRangeRequest { key: b"\x00".to_vec(), range_end: b"\x00".to_vec(), ..Default::default() };
        assert_eq!(check_delete(&d), Ok(()));
        let d = DeleteRangeRequest { key: b"\x00bftcd/a".to_vec(), range_end: b"\x00bftcd/z".to_vec(), ..Default::default() };
        assert_eq!(check_delete(&d), Err(Invalid::ReservedKey));
        let c = Compare { key: reserved::APPLIED_KEY.to_vec(), ..Default::default() };
        let t = TxnRequest { compare: vec![c], success: vec![put("a")], failure: vec![] };
        assert_eq!(check_txn(&t, 128), Err(Invalid::ReservedKey));
        assert!(txn_writes(&txn(vec![], vec![nested(txn(vec![del("a", "")], vec![]))])));
        assert!(!txn_writes(&txn(vec![], vec![])));
    }

    #[test]
    fn operations_are_checked_against_the_chain_limits() {
        let limits = Limits { max_request_bytes: 1000, ..Limits::default() };
        let small = Op::Put(PutRequest { key: b"k".to_vec(), value: vec![0; 900], ..Default::default() });
        assert_eq!(check_operation(&op(small), &limits), Ok(()));
        let big = Op::Put(PutRequest { key: b"k".to_vec(), value: vec![0; 1000], ..Default::default() });
        assert_eq!(check_operation(&op(big), &limits), Err(Invalid::TooLarge));
        // Padding outside the request (a made-up batch path) is bounded too.
        let mut padded = op(Op::Put(PutRequest { key: b"k".to_vec(), ..Default::default() }));
        padded.batch_path = vec![vec![0; 32]; 200];
        assert_eq!(check_operation(&padded, &limits), Err(Invalid::TooLarge));
        let none = Operation { request: None, ..op(Op::Compact(Default::default())) };
        assert_eq!(check_operation(&none, &limits), Err(Invalid::NoRequest));
        let grant = Op::LeaseGrant(LeaseGrantRequest { ttl: MAX_LEASE_TTL + 1, id: 0 });
        assert_eq!(check_operation(&op(grant), &limits), Err(Invalid::LeaseTtlTooLarge));
        let wide = Op::Txn(txn((0..129).map(|i| put(&format!("k{i}"))).collect(), vec![]));
        assert_eq!(check_operation(&op(wide), &Limits::default()), Err(Invalid::TooManyOps));
        let reserved = Op::Put(PutRequest { key: reserved::APPLIED_KEY.to_vec(), ..Default::default() });
        assert_eq!(check_operation(&op(reserved), &limits), Err(Invalid::ReservedKey));
    }

    #[test]
    fn client_identities_are_bounded_and_only_on_client_requests() {
        let limits = Limits::default();
        let named = |cn: usize, user: usize, request| Operation {
            client: Some(ClientIdentity { certificate_cn: "c".repeat(cn), user: "u".repeat(user) }),
            ..op(request)
        };
        let put = || Op::Put(PutRequest { key: b"k".to_vec(), ..Default::default() });
        assert_eq!(check_operation(&named(64, MAX_CLIENT_NAME_BYTES, put()), &limits), Ok(()));
        assert_eq!(check_operation(&named(MAX_CLIENT_NAME_BYTES + 1, 0, put()), &limits), Err(Invalid::ClientIdentity));
        assert_eq!(check_operation(&named(0, MAX_CLIENT_NAME_BYTES + 1, put()), &limits), Err(Invalid::ClientIdentity));
        let expire = Op::LeaseExpire(bftcd_proto::bftcd::LeaseExpire { id: 7 });
        assert_eq!(check_operation(&op(expire.clone()), &limits), Ok(()));
        assert_eq!(check_operation(&named(1, 0, expire), &limits), Err(Invalid::ClientIdentity), "a bank's own request has no client");
        // The largest request with the longest names still fits the room an operation has.
        let big = Op::Put(PutRequest { key: b"k".to_vec(), value: vec![0; limits.max_request_bytes - 16], ..Default::default() });
        let mut full = named(MAX_CLIENT_NAME_BYTES, MAX_CLIENT_NAME_BYTES, big);
        full.bank_signature = vec![0; 64];
        full.batch_path = vec![vec![0; 32]; 24];
        full.id = Some(bftcd_proto::bftcd::OperationId { bank: u32::MAX, nonce: u64::MAX });
        full.submitted_ms = u64::MAX;
        assert_eq!(check_operation(&full, &limits), Ok(()));
    }

    #[test]
    fn limits_come_from_the_genesis_with_defaults() {
        assert_eq!(Limits::of(&Genesis::default()), Limits::default());
        let mut g = Genesis::default();
        let l = Limits { max_request_bytes: 10, max_txn_ops: 3, max_block_bytes: 5000, max_block_operations: 2 };
        l.write_to(&mut g);
        assert_eq!(Limits::of(&g), l);
        assert!(Limits::default().check().is_ok());
        // The largest request must fit a block.
        let too_big = Limits { max_request_bytes: 8 << 20, ..Limits::default() };
        assert!(too_big.check().unwrap_err().contains("does not fit a block"));
        assert!(Limits { max_block_bytes: 32 << 20, ..Limits::default() }.check().is_err());
        assert!(Limits { max_txn_ops: 0, ..Limits::default() }.check().is_err());
    }
}
