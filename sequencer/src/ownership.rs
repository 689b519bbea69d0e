//! Key ownership: chain rules that give a key prefix to one bank. Only operations its bank
//! submitted may create, modify or delete keys under a prefix; everyone may read them.
//!
//! Whether an operation is refused is a pure function of the rules and the operation (and, for a
//! lease revocation, of which bank granted the lease), so every bank refuses
//! the same operations at apply and an auditor can tell from the ledger which were refused and
//! which bank signed them. A bank checks its own clients' writes before ordering as well, but the
//! apply-time check is what a Byzantine bank cannot skip.

use bftcd_proto::bftcd::{operation::Request as Op, Genesis, Operation};
use bftcd_proto::etcdserverpb::{request_op::Request, RequestOp, TxnRequest};

use crate::reserved;

/// The chain's key owners, sorted by prefix; no prefix overlaps another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners(Vec<Owned>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Owned {
    prefix: Vec<u8>,
    /// The first key after the prefix; None when the prefix is all 0xff (to the end).
    end: Option<Vec<u8>>,
    bank: u32,
}

/// The first key after every key that starts with `prefix` (etcd's prefix range end).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// `[key, range_end)` in etcd's encoding as a start and an exclusive end (None: to the end).
pub(crate) fn interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    match range_end {
        b"" => {
            let mut next = key.to_vec();
            next.push(0);
            (key.to_vec(), Some(next))
        }
        b"\0" => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

fn overlap(a: &(Vec<u8>, Option<Vec<u8>>), start: &[u8], end: &Option<Vec<u8>>) -> bool {
    let below = |s: &[u8], e: &Option<Vec<u8>>| e.as_ref().is_some_and(|e| e.as_slice() <= s);
    // Empty intervals ([k, k) or an end before the start) hold no key.
    let empty = a.1.as_ref().is_some_and(|e| e.as_slice() <= a.0.as_slice());
    !empty && !below(start, &a.1) && !below(&a.0, end)
}

impl Owners {
    /// The genesis's rules, checked: every prefix non-empty, outside the reserved prefix, owned
    /// by a validator, and overlapping no other.
    pub fn of(g: &Genesis) -> Result<Owners, String> {
        let mut owned: Vec<Owned> = Vec::with_capacity(g.key_owners.len());
        for o in &g.key_owners {
            if o.prefix.is_empty() {
                return Err("a key owner's prefix is empty".into());
            }
            if o.bank as usize >= g.validators.len() {
                return Err(format!("key prefix {:?} is given to bank {}, which is not a validator", show(&o.prefix), o.bank));
            }
            let end = prefix_end(&o.prefix);
            if reserved::overlaps(&o.prefix, end.as_deref().unwrap_or(b"\0")) {
                return Err(format!("key prefix {:?} overlaps bftcd's reserved prefix", show(&o.prefix)));
            }
            owned.push(Owned { prefix: o.prefix.clone(), end, bank: o.bank });
        }
        owned.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        for pair in owned.windows(2) {
            if pair[1].prefix.starts_with(&pair[0].prefix) {
                return Err(format!("key prefixes {:?} and {:?} overlap", show(&pair[0].prefix), show(&pair[1].prefix)));
            }
        }
        Ok(Owners(owned))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Another bank's prefix that `[key, range_end)` reaches into, written by `bank`.
    pub fn foreign(&self, bank: u32, key: &[u8], range_end: &[u8]) -> Option<u32> {
        let iv = interval(key, range_end);
        self.0.iter().find(|o| o.bank != bank && overlap(&iv, &o.prefix, &o.end)).map(|o| o.bank)
    }

    /// The bank whose keys `op` would write although another bank submitted it (None: allowed).
    /// A Txn counts with every write in both branches, nested ones included, as etcd's
    /// permission check does. Lease revocations are judged by the lease's grantor, see
    /// [`Self::owns_any`].
    pub fn refuses(&self, op: &Operation) -> Option<u32> {
        if self.0.is_empty() {
            return None;
        }
        let bank = op.id.as_ref()?.bank;
        match op.request.as_ref()? {
            Op::Put(p) => self.foreign(bank, &p.key, b""),
            Op::DeleteRange(d) => self.foreign(bank, &d.key, &d.range_end),
            Op::Txn(t) => self.txn(bank, t),
            _ => None,
        }
    }

    fn txn(&self, bank: u32, t: &TxnRequest) -> Option<u32> {
        t.success.iter().chain(&t.failure).find_map(|op: &RequestOp| match &op.request {
            Some(Request::RequestPut(p)) => self.foreign(bank, &p.key, b""),
            Some(Request::RequestDeleteRange(d)) => self.foreign(bank, &d.key, &d.range_end),
            Some(Request::RequestTxn(nested)) => self.txn(bank, nested),
            _ => None,
        })
    }

    /// Does `bank` own any prefix? Its leases may then carry its keys, and only it may revoke
    /// them.
    pub fn owns_any(&self, bank: u32) -> bool {
        self.0.iter().any(|o| o.bank == bank)
    }

    /// The bank that owns `key`, if any.
    pub fn owner_of(&self, key: &[u8]) -> Option<u32> {
        self.0.iter().find(|o| key.starts_with(&o.prefix)).map(|o| o.bank)
    }

    /// The owner of a key `op` attaches to a lease that another bank granted (`grantor` of a
    /// lease id; None for a lease that does not exist, which etcd refuses anyway). An owner's
    /// keys live only on its own leases, so that no other bank can delete them by revoking one.
    pub fn foreign_lease(&self, op: &Operation, grantor: impl Fn(i64) -> Option<u32>) -> Option<u32> {
        if self.0.is_empty() {
            return None;
        }
        let check = |key: &[u8], lease: i64| {
            let owner = self.owner_of(key)?;
            (lease != 0 && grantor(lease).is_some_and(|g| g != owner)).then_some(owner)
        };
        fn puts<'a>(ops: &'a [RequestOp], out: &mut Vec<(&'a [u8], i64)>) {
            for op in ops {
                match &op.request {
                    Some(Request::RequestPut(p)) => out.push((&p.key, p.lease)),
                    Some(Request::RequestTxn(t)) => {
                        puts(&t.success, out);
                        puts(&t.failure, out);
                    }
                    _ => {}
                }
            }
        }
        let mut attached = Vec::new();
        match op.request.as_ref()? {
            Op::Put(p) => attached.push((p.key.as_slice(), p.lease)),
            Op::Txn(t) => {
                puts(&t.success, &mut attached);
                puts(&t.failure, &mut attached);
            }
            _ => {}
        }
        attached.into_iter().find_map(|(k, l)| check(k, l))
    }
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftcd_proto::bftcd::{KeyOwner, OperationId, Validator};
    use bftcd_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};

    fn genesis(owners: &[(&[u8], u32)]) -> Genesis {
        Genesis {
            validators: vec![Validator::default(); 4],
            key_owners: owners.iter().map(|(p, b)| KeyOwner { prefix: p.to_vec(), bank: *b }).collect(),
            ..Default::default()
        }
    }

    fn owners() -> Owners {
        Owners::of(&genesis(&[(b"/bank1/", 0), (b"/bank2/", 1), (b"\xff\xff", 2)])).unwrap()
    }

    fn op(bank: u32, request: Op) -> Operation {
        Operation { id: Some(OperationId { bank, nonce: 1 }), request: Some(request), ..Default::default() }
    }
    fn put(k: &[u8]) -> Request {
        Request::RequestPut(PutRequest { key: k.to_vec(), ..Default::default() })
    }
    fn del(k: &[u8], end: &[u8]) -> Request {
        Request::RequestDeleteRange(DeleteRangeRequest { key: k.to_vec(), range_end: end.to_vec(), ..Default::default() })
    }
    fn txn(success: Vec<Request>, failure: Vec<Request>) -> TxnRequest {
        let ops = |v: Vec<Request>| v.into_iter().map(|r| RequestOp { request: Some(r) }).collect();
        TxnRequest { compare: vec![], success: ops(success), failure: ops(failure) }
    }

    #[test]
    fn rules_are_checked() {
        assert!(Owners::of(&genesis(&[(b"/a/", 0), (b"/a/b/", 1)])).unwrap_err().contains("overlap"));
        assert!(Owners::of(&genesis(&[(b"", 0)])).unwrap_err().contains("empty"));
        assert!(Owners::of(&genesis(&[(b"/a/", 4)])).unwrap_err().contains("not a validator"));
        assert!(Owners::of(&genesis(&[(b"\x00bftcd/x", 1)])).unwrap_err().contains("reserved"));
        assert!(Owners::of(&genesis(&[(b"\x00", 1)])).unwrap_err().contains("reserved"));
        assert!(Owners::of(&genesis(&[(b"/a/", 0), (b"/a0", 0), (b"/b/", 1)])).is_ok());
    }

    #[test]
    fn only_the_owner_writes_under_its_prefix() {
        let o = owners();
        let p = |bank, k: &[u8]| o.refuses(&op(bank, Op::Put(PutRequest { key: k.to_vec(), ..Default::default() })));
        assert_eq!(p(1, b"/bank1/x"), Some(0));
        assert_eq!(p(0, b"/bank1/x"), None);
        assert_eq!(p(1, b"/bank1"), None, "the prefix is /bank1/, not /bank1");
        assert_eq!(p(1, b"/other"), None, "unowned keys are anyone's");
        assert_eq!(p(0, b"\xff\xff\xff"), Some(2), "a prefix of 0xff bytes runs to the end");
        let d = |bank, k: &[u8], end: &[u8]| {
            o.refuses(&op(bank, Op::DeleteRange(DeleteRangeRequest { key: k.to_vec(), range_end: end.to_vec(), ..Default::default() })))
        };
        assert_eq!(d(3, b"\0", b"\0"), Some(0), "deleting everything reaches every prefix");
        assert_eq!(d(0, b"/bank1/", b"/bank10"), None);
        assert_eq!(d(0, b"/bank1/", b"/bank2/"), None, "the end is exclusive");
        assert_eq!(d(0, b"/bank1/", b"/bank2/\0"), Some(1));
        assert_eq!(d(0, b"/z", b"/a"), None, "an empty range deletes nothing");
        assert_eq!(d(1, b"/bank1/", b""), Some(0), "a single key equal to the prefix");
    }

    #[test]
    fn every_write_of_a_txn_counts_nested_and_in_either_branch() {
        let o = owners();
        let t = |bank, t: TxnRequest| o.refuses(&op(bank, Op::Txn(t)));
        let read = Request::RequestRange(RangeRequest { key: b"/bank1/x".to_vec(), ..Default::default() });
        assert_eq!(t(1, txn(vec![read], vec![])), None, "reads are open to everyone");
        assert_eq!(t(1, txn(vec![put(b"/mine")], vec![put(b"/bank1/x")])), Some(0), "the branch not taken counts too");
        let nested = Request::RequestTxn(txn(vec![], vec![Request::RequestTxn(txn(vec![del(b"/bank1/", b"/bank10")], vec![]))]));
        assert_eq!(t(1, txn(vec![nested.clone()], vec![])), Some(0));
        assert_eq!(t(0, txn(vec![nested], vec![])), None);
    }

    #[test]
    fn an_owners_keys_go_only_on_its_own_leases() {
        let o = owners();
        let grantor = |id: i64| match id {
            10 => Some(0),
            11 => Some(1),
            _ => None,
        };
        let with_lease = |bank, key: &[u8], lease| op(bank, Op::Put(PutRequest { key: key.to_vec(), lease, ..Default::default() }));
        assert_eq!(o.foreign_lease(&with_lease(0, b"/bank1/k", 10), grantor), None);
        assert_eq!(o.foreign_lease(&with_lease(0, b"/bank1/k", 11), grantor), Some(0), "bank 2's lease");
        assert_eq!(o.foreign_lease(&with_lease(0, b"/bank1/k", 0), grantor), None, "no lease");
        assert_eq!(o.foreign_lease(&with_lease(0, b"/bank1/k", 99), grantor), None, "etcd refuses an unknown lease");
        assert_eq!(o.foreign_lease(&with_lease(1, b"/shared", 10), grantor), None, "unowned keys go on any lease");
        let nested = TxnRequest { compare: vec![], success: vec![], failure: vec![RequestOp {
            request: Some(Request::RequestTxn(TxnRequest { compare: vec![], success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest { key: b"/bank2/x".to_vec(), lease: 10, ..Default::default() })),
            }], failure: vec![] })),
        }] };
        assert_eq!(o.foreign_lease(&op(1, Op::Txn(nested)), grantor), Some(1));
        assert_eq!(o.owner_of(b"/bank2/x"), Some(1));
        assert_eq!(o.owner_of(b"/x"), None);
    }

    #[test]
    fn lease_revocations_are_judged_at_apply() {
        let o = owners();
        let revoke = op(1, Op::LeaseRevoke(Default::default()));
        assert_eq!(o.refuses(&revoke), None, "decided from the lease table");
        assert!(o.owns_any(0) && o.owns_any(2) && !o.owns_any(3));
        assert_eq!(Owners::default().refuses(&op(1, Op::Put(Default::default()))), None);
    }
}
