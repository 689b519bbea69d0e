//! A Range through a bank is the bank's own etcd's answer: the same bytes for every key-value,
//! `count` and `more`, under a header that names the bank (its cluster and member ids, the
//! revision of its etcd). Both answers are taken as raw protobuf bytes, so the comparison is
//! byte for byte, not merely equal after decoding.

use bftcd_proto::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    range_request::{SortOrder, SortTarget},
    LeaseGrantRequest, MemberListRequest, PutRequest, RangeRequest, RangeResponse, ResponseHeader,
};
use bftcd_tests::sidecar::BANK_ETCD_ARGS;
use bftcd_tests::{EtcdProcess, Sidecar, TestDir};
use bytes::{Buf, Bytes};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Status;

/// A Range client that returns the response message's bytes as they came off the wire.
struct RawRange;

struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawRange {
    type Encode = RangeRequest;
    type Decode = Bytes;
    type Encoder = tonic_prost::ProstEncoder<RangeRequest>;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> Self::Encoder {
        Default::default()
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(format!("http://{endpoint}")).unwrap().connect().await.unwrap()
}

async fn raw_range(ch: &Channel, r: RangeRequest) -> Bytes {
    let mut grpc = tonic::client::Grpc::new(ch.clone()).max_decoding_message_size(64 << 20);
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/etcdserverpb.KV/Range");
    grpc.unary(tonic::Request::new(r), path, RawRange).await.unwrap().into_inner()
}

/// The header (which both etcd and the sidecar write first) and the bytes after it.
fn split_header(body: &Bytes) -> (ResponseHeader, Bytes) {
    assert_eq!(body.first(), Some(&0x0a), "the header is not the first field: {body:?}");
    let len = body[1] as usize;
    assert!(len < 0x80, "a header is never 128 bytes long");
    (ResponseHeader::decode(&body[2..2 + len]).unwrap(), body.slice(2 + len..))
}

fn put(key: &str, value: &str, lease: i64) -> PutRequest {
    PutRequest { key: key.into(), value: value.into(), lease, ..Default::default() }
}

fn prefix(p: &str) -> RangeRequest {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    RangeRequest { key: p.into(), range_end: end, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_etcds_bytes_under_the_banks_header() {
    let dir = TestDir::new("reads");
    let etcd = EtcdProcess::start_with_args(&dir, "bank1-etcd", BANK_ETCD_ARGS);
    let bank = Sidecar::start(&dir, "bank1", &etcd.endpoint());
    let (via_bank, direct) = (channel(&bank.endpoint()).await, channel(&etcd.endpoint()).await);
    let mut kv = KvClient::new(via_bank.clone());

    // Some history: updates (versions), a delete, a lease, an empty value, binary bytes.
    let lease = LeaseClient::new(via_bank.clone()).lease_grant(LeaseGrantRequest { ttl: 3600, id: 0 }).await.unwrap().into_inner().id;
    for (k, v) in [("r/a", "1"), ("r/b", "2"), ("r/c", "3"), ("r/a", "11"), ("r/d", ""), ("r/e", "5"), ("r/x", "gone")] {
        kv.put(put(k, v, 0)).await.unwrap();
    }
    kv.put(put("r/f", "leased", lease)).await.unwrap();
    kv.put(PutRequest { key: b"r/\xff\x00".to_vec(), value: vec![0, 159, 146, 150], ..Default::default() }).await.unwrap();
    kv.delete_range(bftcd_proto::etcdserverpb::DeleteRangeRequest { key: "r/x".into(), ..Default::default() }).await.unwrap();
    kv.put(put("r/b", "22", 0)).await.unwrap();
    let now = RangeResponse::decode(raw_range(&direct, RangeRequest { key: "r/a".into(), ..Default::default() }).await).unwrap();
    let rev = now.header.unwrap().revision;

    // Who the bank says it is.
    let members = ClusterClient::new(via_bank.clone()).member_list(MemberListRequest { linearizable: false }).await.unwrap().into_inner();
    let ids = members.header.unwrap();
    assert_eq!(members.members.iter().find(|m| m.name == "bank1").map(|m| m.id), Some(ids.member_id));

    let all = prefix("r/");
    let cases: Vec<(&str, RangeRequest)> = vec![
        ("point", RangeRequest { key: "r/a".into(), ..Default::default() }),
        ("missing key", RangeRequest { key: "r/zz".into(), ..Default::default() }),
        ("prefix", all.clone()),
        ("limit (more)", RangeRequest { limit: 2, ..all.clone() }),
        ("limit = count (no more)", RangeRequest { limit: 7, ..all.clone() }),
        ("limit over count", RangeRequest { limit: 100, ..all.clone() }),
        ("keys only", RangeRequest { keys_only: true, ..all.clone() }),
        ("keys only, limit", RangeRequest { keys_only: true, limit: 3, ..all.clone() }),
        ("count only", RangeRequest { count_only: true, ..all.clone() }),
        ("count only, limit", RangeRequest { count_only: true, limit: 1, ..all.clone() }),
        ("to infinity", RangeRequest { key: "r/".into(), range_end: b"\0".to_vec(), ..Default::default() }),
        ("sorted by mod, descending", RangeRequest { sort_order: SortOrder::Descend as i32, sort_target: SortTarget::Mod as i32, ..all.clone() }),
        ("past revision", RangeRequest { revision: rev - 4, ..all.clone() }),
        ("mod revision filter", RangeRequest { min_mod_revision: rev - 3, ..all.clone() }),
        ("empty result with count only", RangeRequest { count_only: true, ..prefix("q/") }),
    ];
    for (name, req) in cases {
        let from_etcd = raw_range(&direct, RangeRequest { serializable: true, ..req.clone() }).await;
        let (etcd_header, etcd_rest) = split_header(&from_etcd);
        for serializable in [false, true] {
            let from_bank = raw_range(&via_bank, RangeRequest { serializable, ..req.clone() }).await;
            let (header, rest) = split_header(&from_bank);
            assert_eq!(header.revision, etcd_header.revision, "{name}: revision");
            assert_eq!(header.revision, rev, "{name}: revision");
            assert_eq!((header.cluster_id, header.member_id, header.raft_term), (ids.cluster_id, ids.member_id, ids.raft_term), "{name}: ids");
            assert_ne!((header.cluster_id, header.member_id), (etcd_header.cluster_id, etcd_header.member_id), "{name}: etcd's own ids leaked");
            assert_eq!(rest, etcd_rest, "{name} (serializable={serializable}): the body differs from etcd's");
        }
    }

    // What the cases above returned, decoded once to be sure the comparison saw something.
    let body = |r: RangeRequest| {
        let ch = via_bank.clone();
        async move { RangeResponse::decode(raw_range(&ch, r).await).unwrap() }
    };
    let page = body(RangeRequest { limit: 2, ..all.clone() }).await;
    assert_eq!((page.kvs.len(), page.more, page.count), (2, true, 7));
    let exact = body(RangeRequest { limit: 7, ..all.clone() }).await;
    assert_eq!((exact.kvs.len(), exact.more, exact.count), (7, false, 7));
    let keys = body(RangeRequest { keys_only: true, ..all.clone() }).await;
    assert!(keys.kvs.iter().all(|k| k.value.is_empty() && !k.key.is_empty()));
    let counted = body(RangeRequest { count_only: true, ..all.clone() }).await;
    assert_eq!((counted.kvs.len(), counted.count), (0, 7));
    let leased = body(RangeRequest { key: "r/f".into(), ..Default::default() }).await;
    assert_eq!(leased.kvs[0].lease, lease);

    // A range that includes the reserved keys still hides them, under the same header.
    let hidden = RangeRequest { key: b"\0".to_vec(), range_end: b"\0".to_vec(), ..Default::default() };
    let everything = RangeResponse::decode(raw_range(&direct, hidden.clone()).await).unwrap();
    let reserved = everything.kvs.iter().filter(|k| k.key.starts_with(b"\x00bftcd/")).count() as i64;
    assert!(reserved > 0, "the local etcd has no reserved key");
    let visible = body(hidden.clone()).await;
    assert_eq!(visible.header, Some(ResponseHeader { revision: rev, ..ids }));
    let mut want = everything.kvs.clone();
    want.retain(|k| !k.key.starts_with(b"\x00bftcd/"));
    assert_eq!((visible.kvs, visible.count), (want, everything.count - reserved));
    let counted = body(RangeRequest { count_only: true, ..hidden }).await;
    assert_eq!(counted.count, everything.count - reserved);
    let probe = body(RangeRequest { key: b"\x00bftcd/applied".to_vec(), ..Default::default() }).await;
    assert_eq!(probe, RangeResponse { header: Some(ResponseHeader { revision: rev, ..ids }), ..Default::default() });
}
