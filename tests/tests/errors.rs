//! Invalid requests get etcd's exact gRPC code and message. Each request goes to a stock etcd
//! and to a bftcd bank in the same test; both answers must equal the expected text.

use bftcd_proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, request_op::Request as Req, CompactionRequest,
    DeleteRangeRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use bftcd_tests::{EtcdProcess, Sidecar, TestDir};
use tonic::transport::Channel;
use tonic::Code;

async fn clients(endpoint: &str) -> (KvClient<Channel>, LeaseClient<Channel>) {
    let ch = Channel::from_shared(format!("http://{endpoint}")).unwrap().connect().await.unwrap();
    (KvClient::new(ch.clone()).max_encoding_message_size(64 << 20), LeaseClient::new(ch))
}

fn put(key: &str) -> RequestOp {
    RequestOp { request: Some(Req::RequestPut(PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() })) }
}

/// Every case: a name, the expected code and message, and the call.
async fn run_cases(endpoint: &str) -> Vec<(String, Code, String)> {
    let (mut kv, mut lease) = clients(endpoint).await;
    let mut out = Vec::new();
    macro_rules! case {
        ($name:expr, $call:expr) => {{
            match $call.await {
                Ok(_) => out.push(($name.to_string(), Code::Ok, String::new())),
                Err(s) => out.push(($name.to_string(), s.code(), s.message().to_string())),
            }
        }};
    }
    // Some history, then a compaction, so revision errors have something to refer to.
    for i in 0..5 {
        kv.put(PutRequest { key: format!("k{i}").into(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    }
    kv.compact(CompactionRequest { revision: 4, physical: true }).await.unwrap();

    case!("range: empty key", kv.range(RangeRequest::default()));
    case!("put: empty key", kv.put(PutRequest::default()));
    case!("delete: empty key", kv.delete_range(DeleteRangeRequest::default()));
    case!("put: ignore_value with a value", kv.put(PutRequest { key: b"a".to_vec(), value: b"x".to_vec(), ignore_value: true, ..Default::default() }));
    case!("put: ignore_lease with a lease", kv.put(PutRequest { key: b"a".to_vec(), lease: 5, ignore_lease: true, ..Default::default() }));
    case!("put: ignore_value on a missing key", kv.put(PutRequest { key: b"missing".to_vec(), ignore_value: true, ..Default::default() }));
    case!("range: bad sort order", kv.range(RangeRequest { key: b"a".to_vec(), sort_order: 9, ..Default::default() }));
    case!("txn: duplicate key", kv.txn(TxnRequest { compare: vec![], success: vec![put("d"), put("d")], failure: vec![] }));
    case!(
        "txn: too many ops",
        kv.txn(TxnRequest { compare: vec![], success: (0..129).map(|i| put(&format!("t{i}"))).collect(), failure: vec![] })
    );
    case!("txn: empty op", kv.txn(TxnRequest { compare: vec![], success: vec![RequestOp { request: None }], failure: vec![] }));
    case!("put: request too large", kv.put(PutRequest { key: b"big".to_vec(), value: vec![b'x'; 1_600_000], ..Default::default() }));
    case!("range: future revision", kv.range(RangeRequest { key: b"k0".to_vec(), revision: 1000, ..Default::default() }));
    case!("range: compacted revision", kv.range(RangeRequest { key: b"k0".to_vec(), revision: 2, ..Default::default() }));
    case!("compact: already compacted", kv.compact(CompactionRequest { revision: 3, physical: false }));
    case!("compact: future revision", kv.compact(CompactionRequest { revision: 1000, physical: false }));
    case!("put: unknown lease", kv.put(PutRequest { key: b"l".to_vec(), value: b"v".to_vec(), lease: 12345, ..Default::default() }));
    case!("lease revoke: unknown lease", lease.lease_revoke(LeaseRevokeRequest { id: 12345 }));
    // After all those refusals the store still works and nothing was written by them.
    let after = kv.range(RangeRequest { key: b"\0".to_vec(), range_end: b"\0".to_vec(), count_only: true, ..Default::default() }).await.unwrap().into_inner();
    out.push(("count after refusals".into(), Code::Ok, format!("count={} revision={}", after.count, after.header.unwrap().revision)));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_etcds_code_and_message() {
    let dir = TestDir::new("errors");
    let stock = EtcdProcess::start(&dir, "stock");
    let etcd = EtcdProcess::start_with_args(&dir, "bank1-etcd", bftcd_tests::sidecar::BANK_ETCD_ARGS);
    let bank = Sidecar::start(&dir, "bank1", &etcd.endpoint());

    let expected: &[(&str, Code, &str)] = &[
        ("range: empty key", Code::InvalidArgument, "etcdserver: key is not provided"),
        ("put: empty key", Code::InvalidArgument, "etcdserver: key is not provided"),
        ("delete: empty key", Code::InvalidArgument, "etcdserver: key is not provided"),
        ("put: ignore_value with a value", Code::InvalidArgument, "etcdserver: value is provided"),
        ("put: ignore_lease with a lease", Code::InvalidArgument, "etcdserver: lease is provided"),
        ("put: ignore_value on a missing key", Code::InvalidArgument, "etcdserver: key not found"),
        ("range: bad sort order", Code::Ok, ""), // etcd 3.5 does not check it
        ("txn: duplicate key", Code::InvalidArgument, "etcdserver: duplicate key given in txn request"),
        ("txn: too many ops", Code::InvalidArgument, "etcdserver: too many operations in txn request"),
        ("txn: empty op", Code::InvalidArgument, "etcdserver: key not found"),
        ("put: request too large", Code::InvalidArgument, "etcdserver: request is too large"),
        ("range: future revision", Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision"),
        ("range: compacted revision", Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted"),
        ("compact: already compacted", Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted"),
        ("compact: future revision", Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision"),
        ("put: unknown lease", Code::NotFound, "etcdserver: requested lease not found"),
        ("lease revoke: unknown lease", Code::NotFound, "etcdserver: requested lease not found"),
        ("count after refusals", Code::Ok, "count=5 revision=6"),
    ];
    let reference = run_cases(&stock.endpoint()).await;
    let subject = run_cases(&bank.endpoint()).await;
    for (i, (name, code, msg)) in expected.iter().enumerate() {
        let want = (name.to_string(), *code, msg.to_string());
        assert_eq!(reference[i], want, "stock etcd does not answer as expected");
        assert_eq!(subject[i], want, "bftcd differs from stock etcd");
    }
    assert_eq!(subject.len(), expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_keys_are_invisible_and_unwritable() {
    let dir = TestDir::new("reserved");
    let etcd = EtcdProcess::start_with_args(&dir, "bank1-etcd", bftcd_tests::sidecar::BANK_ETCD_ARGS);
    let bank = Sidecar::start(&dir, "bank1", &etcd.endpoint());
    let (mut kv, _) = clients(&bank.endpoint()).await;
    let (mut raw, _) = clients(&etcd.endpoint()).await;
    for k in ["\x00", "a", "b", "\x00zz"] {
        kv.put(PutRequest { key: k.into(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    }
    // The bookkeeping key exists in the local etcd ...
    let hidden = raw.range(RangeRequest { key: b"\x00bftcd/applied".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(hidden.count, 1);
    // ... but no client range shows it, counts it or lets `more` betray it.
    let all = kv.range(RangeRequest { key: b"\0".to_vec(), range_end: b"\0".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(all.count, 4);
    assert_eq!(all.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(), vec![b"\x00".to_vec(), b"\x00zz".to_vec(), b"a".to_vec(), b"b".to_vec()]);
    let page = kv.range(RangeRequest { key: b"\0".to_vec(), range_end: b"\0".to_vec(), limit: 2, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!((page.kvs.len(), page.more, page.count), (2, true, 4));
    let exact = kv.range(RangeRequest { key: b"\0".to_vec(), range_end: b"\0".to_vec(), limit: 4, ..Default::default() }).await.unwrap().into_inner();
    assert!(!exact.more);
    let direct = kv.range(RangeRequest { key: b"\x00bftcd/applied".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(direct.count, 0);
    // Writes and compares naming it are refused; deleting everything leaves it in place.
    let err = kv.put(PutRequest { key: b"\x00bftcd/applied".to_vec(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let del = kv.delete_range(DeleteRangeRequest { key: b"\0".to_vec(), range_end: b"\0".to_vec(), prev_kv: true }).await.unwrap().into_inner();
    assert_eq!(del.deleted, 4);
    assert_eq!(del.prev_kvs.len(), 4);
    let hidden = raw.range(RangeRequest { key: b"\x00bftcd/applied".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(hidden.count, 1);
    // One revision per write, as on stock etcd: 4 puts and 1 delete after revision 1.
    assert_eq!(hidden.header.unwrap().revision, 6);
}
