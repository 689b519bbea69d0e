//! Kubernetes' storage patterns (k8s.io/apiserver storage/etcd3, see etcd-compat.md), run
//! step by step against a stock etcd and against a bftcd bank in the same test. Every response is
//! compared after clearing only what legitimately differs (cluster/member ids, raft term, lease
//! ids), and the steps also assert the values Kubernetes relies on, so two equally wrong answers
//! still fail.

use std::time::Duration;

use bftcd_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    lease_client::LeaseClient,
    request_op::Request as Req,
    response_op::Response as Resp,
    watch_client::WatchClient,
    watch_request::RequestUnion,
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseTimeToLiveRequest, PutRequest,
    RangeRequest, RequestOp, ResponseHeader, TxnRequest, TxnResponse, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, WatchResponse,
};
use bftcd_proto::mvccpb::event::EventType;
use bftcd_tests::{ClientCerts, EtcdProcess, Sidecar, TestDir};
use tokio::sync::mpsc;
use tokio_stream_shim::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

mod tokio_stream_shim {
    //! A minimal mpsc-backed request stream, so the test needs no extra crate.
    use futures::Stream;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);
    impl<T> Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

const ETCD_ARGS: &[&str] = &["--max-request-bytes=10485760", "--experimental-watch-progress-notify-interval=1s"];
/// The bank's etcd also needs room for the sidecar's bookkeeping in the widest Txn.
const BANK_ETCD_ARGS: &[&str] = &["--max-request-bytes=10485760", "--max-txn-ops=10240", "--experimental-watch-progress-notify-interval=1s"];

struct Target {
    kv: KvClient<Channel>,
    watch: WatchClient<Channel>,
    lease: LeaseClient<Channel>,
    /// Transcript of normalised responses.
    log: Vec<String>,
}

fn clear_header(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

fn normalise_txn(mut t: TxnResponse) -> TxnResponse {
    clear_header(&mut t.header);
    for r in &mut t.responses {
        if let Some(Resp::ResponseRange(rr)) = &mut r.response {
            for kv in &mut rr.kvs {
                kv.lease = (kv.lease != 0) as i64;
            }
        }
    }
    t
}

fn cmp_mod(key: &str, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.into(),
        target_union: Some(TargetUnion::ModRevision(rev)),
        range_end: vec![],
    }
}

fn op_put(key: &str, value: &str, lease: i64) -> RequestOp {
    RequestOp { request: Some(Req::RequestPut(PutRequest { key: key.into(), value: value.into(), lease, ..Default::default() })) }
}

fn op_get(key: &str) -> RequestOp {
    RequestOp { request: Some(Req::RequestRange(RangeRequest { key: key.into(), ..Default::default() })) }
}

fn op_del(key: &str) -> RequestOp {
    RequestOp { request: Some(Req::RequestDeleteRange(DeleteRangeRequest { key: key.into(), ..Default::default() })) }
}

/// The conditional write kube-apiserver uses for create (rev 0), update and delete.
fn guarded(key: &str, rev: i64, then: RequestOp) -> TxnRequest {
    TxnRequest { compare: vec![cmp_mod(key, rev)], success: vec![then], failure: vec![op_get(key)] }
}

fn prefix_end(p: &str) -> Vec<u8> {
    let mut e = p.as_bytes().to_vec();
    *e.last_mut().unwrap() += 1;
    e
}

impl Target {
    async fn connect(ch: Channel) -> Target {
        Target { kv: KvClient::new(ch.clone()), watch: WatchClient::new(ch.clone()), lease: LeaseClient::new(ch), log: vec![] }
    }

    async fn txn(&mut self, t: TxnRequest) -> TxnResponse {
        let r = normalise_txn(self.kv.txn(t).await.expect("txn").into_inner());
        self.log.push(format!("{r:?}"));
        r
    }

    async fn range(&mut self, r: RangeRequest) -> bftcd_proto::etcdserverpb::RangeResponse {
        let resp = self.kv.range(r).await.expect("range").into_inner();
        let mut shown = resp.clone();
        clear_header(&mut shown.header);
        for kv in &mut shown.kvs {
            kv.lease = (kv.lease != 0) as i64;
        }
        self.log.push(format!("{shown:?}"));
        resp
    }

    fn note(&mut self, s: String) {
        self.log.push(s);
    }
}

async fn next_watch(rx: &mut tonic::Streaming<WatchResponse>) -> WatchResponse {
    let mut r = tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .expect("watch response within 10 s")
        .expect("watch stream")
        .expect("watch stream open");
    clear_header(&mut r.header);
    r
}

async fn plaintext(endpoint: &str) -> Channel {
    Channel::from_shared(format!("http://{endpoint}")).unwrap().connect().await.unwrap()
}

/// What kube-apiserver's --etcd-servers=https://..., --etcd-cafile, --etcd-certfile and
/// --etcd-keyfile make: TLS with a client certificate.
async fn client_tls(endpoint: &str, certs: &ClientCerts, client: &str) -> Channel {
    let read = |p: std::path::PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(certs.ca())))
        .identity(Identity::from_pem(read(certs.cert(client)), read(certs.key(client))));
    Channel::from_shared(format!("https://{endpoint}")).unwrap().tls_config(tls).unwrap().connect().await.unwrap()
}

/// The whole Kubernetes script over one channel; returns its transcript.
async fn script(ch: Channel) -> Vec<String> {
    let mut t = Target::connect(ch).await;

    // Create (ModRevision == 0), then a second create of the same key fails and returns it.
    let created = t.txn(guarded("/registry/pods/default/a", 0, op_put("/registry/pods/default/a", "v1", 0))).await;
    assert!(created.succeeded);
    let rev_a = created.header.as_ref().unwrap().revision;
    let again = t.txn(guarded("/registry/pods/default/a", 0, op_put("/registry/pods/default/a", "v1", 0))).await;
    assert!(!again.succeeded);
    let Some(Resp::ResponseRange(current)) = &again.responses[0].response else { panic!("no range in else branch") };
    assert_eq!(current.kvs[0].mod_revision, rev_a);

    // Update with the right and with a stale resource version.
    let updated = t.txn(guarded("/registry/pods/default/a", rev_a, op_put("/registry/pods/default/a", "v2", 0))).await;
    assert!(updated.succeeded);
    let stale = t.txn(guarded("/registry/pods/default/a", rev_a, op_put("/registry/pods/default/a", "v3", 0))).await;
    assert!(!stale.succeeded);

    // Watch the prefix from the current revision + 1 with prev_kv and progress notify.
    let (wtx, wrx) = mpsc::channel(8);
    let start = updated.header.as_ref().unwrap().revision + 1;
    wtx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"/registry/pods/".to_vec(),
            range_end: prefix_end("/registry/pods/"),
            start_revision: start,
            progress_notify: true,
            prev_kv: true,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(ReceiverStream(wrx));
    req.metadata_mut().insert("hasleader", "true".parse().unwrap());
    let mut events = t.watch.watch(req).await.expect("watch").into_inner();
    let created_resp = next_watch(&mut events).await;
    assert!(created_resp.created);
    t.note(format!("watch created: {created_resp:?}"));

    // Paged list of 25 objects, 10 per page, at one revision, with count and more.
    for i in 0..25 {
        let key = format!("/registry/pods/ns/p{i:02}");
        let r = t.txn(guarded(&key, 0, op_put(&key, &format!("pod {i}"), 0))).await;
        assert!(r.succeeded);
    }
    let mut page_key = b"/registry/pods/ns/".to_vec();
    let end = prefix_end("/registry/pods/ns/");
    let mut list_rev = 0;
    let mut seen = 0;
    loop {
        let page = t
            .range(RangeRequest { key: page_key.clone(), range_end: end.clone(), limit: 10, revision: list_rev, ..Default::default() })
            .await;
        if list_rev == 0 {
            list_rev = page.header.as_ref().unwrap().revision;
            assert_eq!(page.count, 25);
        }
        seen += page.kvs.len();
        if !page.more {
            break;
        }
        page_key = page.kvs.last().unwrap().key.clone();
        page_key.push(0);
    }
    assert_eq!(seen, 25);
    let count = t.range(RangeRequest { key: b"/registry/pods/".to_vec(), range_end: prefix_end("/registry/pods/"), count_only: true, ..Default::default() }).await;
    assert_eq!(count.count, 26);
    assert!(count.kvs.is_empty());
    let keys = t.range(RangeRequest { key: b"/registry/pods/".to_vec(), range_end: prefix_end("/registry/pods/"), keys_only: true, limit: 3, ..Default::default() }).await;
    assert!(keys.kvs.iter().all(|kv| kv.value.is_empty()));
    assert!(keys.more);

    // Delete with the current resource version; the watch sees DELETE with prev_kv.
    let rev_now = t.range(RangeRequest { key: b"/registry/pods/default/a".to_vec(), ..Default::default() }).await.kvs[0].mod_revision;
    let deleted = t.txn(guarded("/registry/pods/default/a", rev_now, op_del("/registry/pods/default/a"))).await;
    assert!(deleted.succeeded);

    let mut got = Vec::new();
    while got.len() < 26 {
        let r = next_watch(&mut events).await;
        if r.events.is_empty() {
            continue; // a progress notification
        }
        got.extend(r.events);
    }
    for e in &got[..25] {
        let kv = e.kv.as_ref().unwrap();
        assert_eq!(e.r#type, EventType::Put as i32);
        assert_eq!(kv.create_revision, kv.mod_revision, "a create is a PUT with create == mod revision");
    }
    let del = &got[25];
    assert_eq!(del.r#type, EventType::Delete as i32);
    assert_eq!(del.prev_kv.as_ref().expect("DELETE carries prev_kv").value, b"v2");
    t.note(format!("watch events: {got:?}"));

    // RequestProgress on the same stream: watch id -1 at the current revision.
    wtx.send(WatchRequest { request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})) }).await.unwrap();
    let progress = loop {
        let r = next_watch(&mut events).await;
        if r.watch_id == -1 {
            break r;
        }
    };
    assert!(progress.events.is_empty());
    let head = t.range(RangeRequest { key: b"/registry/health".to_vec(), serializable: false, ..Default::default() }).await;
    assert_eq!(progress.header.as_ref().unwrap().revision, head.header.as_ref().unwrap().revision);
    t.note(format!("progress: {progress:?}"));

    // Periodic progress notify arrives by itself (etcd flag: 1 s here).
    let periodic = next_watch(&mut events).await;
    assert!(periodic.events.is_empty() && periodic.watch_id != -1, "expected a periodic progress notification, got {periodic:?}");

    // Lease grant + attach (Events, endpoint leases).
    let lease = t.lease.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await.expect("grant").into_inner();
    assert!(lease.id > 0);
    assert_eq!(lease.ttl, 60);
    let ev = t.txn(guarded("/registry/events/e1", 0, op_put("/registry/events/e1", "event", lease.id))).await;
    assert!(ev.succeeded);
    let ttl = t.lease.lease_time_to_live(LeaseTimeToLiveRequest { id: lease.id, keys: true }).await.expect("ttl").into_inner();
    assert_eq!(ttl.keys, vec![b"/registry/events/e1".to_vec()]);
    let attached = t.range(RangeRequest { key: b"/registry/events/e1".to_vec(), ..Default::default() }).await;
    assert_ne!(attached.kvs[0].lease, 0);

    // Compaction via compact_rev_key: guarded on its version, then Compact.
    let compact_to = head.header.as_ref().unwrap().revision;
    let version_cmp = Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Version as i32,
        key: b"compact_rev_key".to_vec(),
        target_union: Some(TargetUnion::Version(0)),
        range_end: vec![],
    };
    let c = t
        .txn(TxnRequest { compare: vec![version_cmp], success: vec![op_put("compact_rev_key", &compact_to.to_string(), 0)], failure: vec![op_get("compact_rev_key")] })
        .await;
    assert!(c.succeeded);
    t.kv.compact(CompactionRequest { revision: compact_to, physical: false }).await.expect("compact");
    let v = t.range(RangeRequest { key: b"compact_rev_key".to_vec(), ..Default::default() }).await;
    assert_eq!(String::from_utf8_lossy(&v.kvs[0].value).parse::<i64>().unwrap(), compact_to);

    // A historical read below the compaction fails; a watch from there is cancelled with
    // compact_revision set.
    let old = t.kv.range(RangeRequest { key: b"/registry/pods/".to_vec(), range_end: prefix_end("/registry/pods/"), revision: rev_a, ..Default::default() }).await;
    let err = old.expect_err("read below the compacted revision");
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert_eq!(err.message(), "etcdserver: mvcc: required revision has been compacted");
    let (wtx2, wrx2) = mpsc::channel(2);
    wtx2.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest { key: b"/registry/pods/".to_vec(), start_revision: rev_a, ..Default::default() })),
    })
    .await
    .unwrap();
    let mut old_watch = t.watch.watch(ReceiverStream(wrx2)).await.expect("watch").into_inner();
    let mut cancelled = None;
    for _ in 0..3 {
        let r = next_watch(&mut old_watch).await;
        if r.canceled {
            cancelled = Some(r);
            break;
        }
    }
    let cancelled = cancelled.expect("watch from a compacted revision is cancelled");
    assert_eq!(cancelled.compact_revision, compact_to);
    t.note(format!("cancelled: {cancelled:?}"));
    drop(wtx);
    drop(wtx2);
    t.log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_storage_patterns_match_stock_etcd() {
    let dir = TestDir::new("kubernetes");
    let stock = EtcdProcess::start_with_args(&dir, "stock", ETCD_ARGS);
    let etcd = EtcdProcess::start_with_args(&dir, "bank1-etcd", BANK_ETCD_ARGS);
    let bank = Sidecar::start(&dir, "bank1", &etcd.endpoint());

    let reference = script(plaintext(&stock.endpoint()).await).await;
    let subject = script(plaintext(&bank.endpoint()).await).await;
    assert_eq!(reference.len(), subject.len());
    for (i, (a, b)) in reference.iter().zip(&subject).enumerate() {
        assert_eq!(a, b, "step {i} differs between stock etcd (left) and bftcd (right)");
    }
}

/// The same script through a bank that serves TLS with client certificate auth, as a
/// kube-apiserver with its etcd client certificate uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_storage_patterns_over_client_tls() {
    let dir = TestDir::new("kubernetes-tls");
    let certs = ClientCerts::make(&dir.join("clients"), &["kube-apiserver"], &["bank1"]);
    let stock = EtcdProcess::start_with_args(&dir, "stock", ETCD_ARGS);
    let etcd = EtcdProcess::start_with_args(&dir, "bank1-etcd", BANK_ETCD_ARGS);
    let args = certs.serve_args("bank1");
    let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
    let bank = Sidecar::start_with_args(&dir, "bank1", &etcd.endpoint(), &args);
    assert!(bank.https());

    let reference = script(plaintext(&stock.endpoint()).await).await;
    let subject = script(client_tls(&bank.endpoint(), &certs, "kube-apiserver").await).await;
    assert_eq!(reference.len(), subject.len());
    for (i, (a, b)) in reference.iter().zip(&subject).enumerate() {
        assert_eq!(a, b, "step {i} differs between stock etcd (left) and bftcd over TLS (right)");
    }
}

/// The same script through one bank of four, which signs its answers and every Watch and
/// LeaseKeepAlive message (field 1000): what kube-apiserver's client decodes is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_storage_patterns_through_a_signing_bank() {
    let dir = TestDir::new("kubernetes-signed");
    let stock = EtcdProcess::start_with_args(&dir, "stock", ETCD_ARGS);
    let chain = bftcd_tests::Chain::start_with_etcd_args(&dir, 4, BANK_ETCD_ARGS);
    let reference = script(plaintext(&stock.endpoint()).await).await;
    let subject = script(plaintext(&chain.endpoints()[1]).await).await;
    assert_eq!(reference.len(), subject.len());
    for (i, (a, b)) in reference.iter().zip(&subject).enumerate() {
        assert_eq!(a, b, "step {i} differs between stock etcd (left) and a signing bank of four (right)");
    }
}
