//! Signed streams (docs/auditing.md, "Signed streams"): every Watch and LeaseKeepAlive message a
//! bank sends carries its signature appended as protobuf field 1000, chained to the message
//! before; stock clients (etcdctl, the etcd-client crate) skip the field.

use std::process::Output;
use std::time::{Duration, Instant};

use bftcd_proto::bftcd::{AnswerEvidence, AnswerStream, Genesis};
use bftcd_proto::etcdserverpb::lease_client::LeaseClient;
use bftcd_proto::etcdserverpb::watch_request::RequestUnion;
use bftcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, WatchCreateRequest, WatchProgressRequest, WatchRequest,
    WatchResponse,
};
use bftcd_proto::Message;
use bftcd_sequencer::answer::{split_stream_message, verify_stream, StreamMessage};
use bftcd_sequencer::keys::ChainCrypto;
use bftcd_tests::{Chain, Deviant, TestDir};
use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::transport::Channel;
use tonic::Status;

const WATCH: &str = "/etcdserverpb.Watch/Watch";
const KEEPALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";

/// Sends and receives message bytes as they are: the signatures are over exactly these.
#[derive(Default, Clone)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A bidirectional stream of raw messages: what is sent goes through `tx`.
async fn open(endpoint: &str, method: &'static str) -> (tokio::sync::mpsc::Sender<Bytes>, Streaming<Bytes>) {
    let channel = Channel::from_shared(format!("http://{endpoint}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let outbound = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    let inbound = grpc.streaming(tonic::Request::new(outbound), path, Raw).await.unwrap().into_inner();
    (tx, inbound)
}

async fn next(inbound: &mut Streaming<Bytes>) -> Bytes {
    tokio::time::timeout(Duration::from_secs(20), inbound.message()).await.expect("a stream message in time").unwrap().expect("the stream goes on")
}

fn crypto_of(chain: &Chain) -> (Genesis, ChainCrypto) {
    let g = Genesis::decode(std::fs::read(&chain.genesis).unwrap().as_slice()).unwrap();
    let crypto = ChainCrypto::verifier(&g).unwrap();
    (g, crypto)
}

fn verify(chain: &Chain, stream: &AnswerStream) -> Result<Vec<StreamMessage>, String> {
    let (g, crypto) = crypto_of(chain);
    verify_stream(&crypto, &g.chain_id, g.epoch, stream)
}

fn verify_cli(args: &[String]) -> Output {
    std::process::Command::new(bftcd_tests::bftcd_bin().with_file_name("bftcd-verify")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", o.status.code(), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn create(key: &[u8], range_end: &[u8], start_revision: i64) -> Bytes {
    let c = WatchCreateRequest { key: key.to_vec(), range_end: range_end.to_vec(), start_revision, prev_kv: true, ..Default::default() };
    WatchRequest { request_union: Some(RequestUnion::CreateRequest(c)) }.encode_to_vec().into()
}

/// Bank 4 runs with `--sign-answers=false`.
fn chain_with_bank4_unsigned(dir: &TestDir) -> Chain {
    let off = Deviant { bank: 3, bin: bftcd_tests::bftcd_bin(), args: vec!["--sign-answers=false".into()] };
    Chain::start_with(dir, 4, Some(off))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_watch_message_is_signed_chained_and_proves_its_events_offline() {
    let dir = TestDir::new("streams-watch");
    let chain = chain_with_bank4_unsigned(&dir);
    let endpoints = chain.endpoints();
    let (tx, mut inbound) = open(&endpoints[0], WATCH).await;
    let mut kept = AnswerStream { endpoint: endpoints[0].clone(), method: WATCH.into(), ..Default::default() };
    let request = create(b"s/", b"s0", 0);
    kept.requests.push(request.to_vec());
    tx.send(request).await.unwrap();
    let created = next(&mut inbound).await;
    assert!(WatchResponse::decode(created.as_ref()).unwrap().created);
    kept.responses.push(created.to_vec());

    // Writes through another bank; the watch at bank 1 sees them.
    for i in 0..5 {
        chain.etcdctl(1).run(&["put", &format!("s/k{i}"), &format!("value-{i}")]).expect_success();
    }
    chain.etcdctl(2).run(&["del", "s/k0"]).expect_success();
    let mut events = 0;
    while events < 6 {
        let m = next(&mut inbound).await;
        // A decoder that does not know field 1000 reads etcd's message as it is.
        let r = WatchResponse::decode(m.as_ref()).unwrap();
        events += r.events.len();
        kept.responses.push(m.to_vec());
    }
    assert_eq!(events, 6);
    // A second request on the stream: the answer is signed after both.
    let progress = WatchRequest { request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})) }.encode_to_vec();
    kept.requests.push(progress.clone());
    tx.send(progress.into()).await.unwrap();
    loop {
        let m = next(&mut inbound).await;
        let r = WatchResponse::decode(m.as_ref()).unwrap();
        kept.responses.push(m.to_vec());
        if r.watch_id == -1 && r.events.is_empty() {
            break;
        }
    }

    let checked = verify(&chain, &kept).unwrap_or_else(|e| panic!("{e}"));
    let statements: Vec<_> = checked.iter().map(|m| m.statement.clone().expect("every message signed")).collect();
    let sequences: Vec<u64> = statements.iter().map(|s| s.stream_sequence).collect();
    assert_eq!(sequences, (1..=kept.responses.len() as u64).collect::<Vec<_>>());
    assert!(statements.iter().all(|s| s.bank == 0 && s.method == WATCH));
    assert!(statements.last().unwrap().applied_height > 0);
    assert_eq!(statements[0].stream_requests, 1);
    assert_eq!(statements.last().unwrap().stream_requests, 2);
    for (m, st) in checked.iter().zip(&statements) {
        assert_eq!(WatchResponse::decode(m.response.as_slice()).unwrap().header.unwrap().revision, st.revision);
    }

    // One byte of an event's value changed, a message dropped, two swapped: none verifies.
    let (at, pos) = kept.responses.iter().enumerate().find_map(|(i, m)| m.windows(7).position(|w| w == b"value-2").map(|p| (i, p))).unwrap();
    let mut tampered = kept.clone();
    tampered.responses[at][pos + 6] = b'9';
    assert!(verify(&chain, &tampered).unwrap_err().contains("another response"));
    let mut dropped = kept.clone();
    dropped.responses.remove(2);
    assert!(verify(&chain, &dropped).is_err());
    let mut swapped = kept.clone();
    swapped.responses.swap(1, 2);
    assert!(verify(&chain, &swapped).is_err());

    // Offline, with the genesis: `bftcd-verify response` on a kept stream.
    let evidence = dir.join("watch.pb");
    std::fs::write(&evidence, AnswerEvidence { answers: vec![], streams: vec![kept.clone()] }.encode_to_vec()).unwrap();
    let genesis = format!("--genesis={}", chain.genesis.display());
    let out = verify_cli(&["response".into(), evidence.display().to_string(), genesis.clone()]);
    eprintln!("bftcd-verify response on a kept watch:\n{}", text(&out));
    assert!(out.status.success(), "{}", text(&out));
    let n = kept.responses.len();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("bank1 signed {WATCH} messages 1..{n} of its stream, chained in order")), "{}", text(&out));
    let forged = dir.join("forged.pb");
    std::fs::write(&forged, AnswerEvidence { answers: vec![], streams: vec![tampered] }.encode_to_vec()).unwrap();
    let refused = verify_cli(&["response".into(), forged.display().to_string(), genesis]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("another response"), "{}", text(&refused));

    // `bftcd-verify watch` keeps a stream itself: from revision 1, the creation and the events,
    // for 5 s.
    let file = dir.join("kept.pb");
    let out = verify_cli(&[
        "watch".into(),
        "s/".into(),
        "--prefix".into(),
        "--rev=1".into(),
        format!("--endpoint={}", endpoints[2]),
        format!("--genesis={}", chain.genesis.display()),
        format!("--out={}", file.display()),
        "--messages=10".into(),
        "--seconds=5".into(),
    ]);
    eprintln!("bftcd-verify watch:\n{}", text(&out));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("bank3 signed message 1: revision") && stdout.contains(": PUT s/k2=value-2 at revision"), "{}", text(&out));
    assert!(stdout.contains("DELETE s/k0="), "{}", text(&out));
    let check = verify_cli(&["response".into(), file.display().to_string(), format!("--genesis={}", chain.genesis.display())]);
    assert!(check.status.success(), "{}", text(&check));

    // A bank run with --sign-answers=false sends etcd's messages as they are.
    let (tx, mut inbound) = open(&endpoints[3], WATCH).await;
    tx.send(create(b"s/", b"s0", 1)).await.unwrap();
    let mut seen = 0;
    while seen < 6 {
        let m = next(&mut inbound).await;
        let (_, sig) = split_stream_message(&m).unwrap();
        assert!(sig.is_none(), "bank 4 signs with --sign-answers=false");
        seen += WatchResponse::decode(m.as_ref()).unwrap().events.len();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_keepalive_answer_is_signed_and_stock_clients_skip_the_signature() {
    let dir = TestDir::new("streams-keepalive");
    let chain = Chain::start(&dir, 4);
    let endpoints = chain.endpoints();
    let channel = Channel::from_shared(format!("http://{}", endpoints[2])).unwrap().connect().await.unwrap();
    let lease = LeaseClient::new(channel).lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await.unwrap().into_inner().id;

    let (tx, mut inbound) = open(&endpoints[2], KEEPALIVE).await;
    let mut kept = AnswerStream { endpoint: endpoints[2].clone(), method: KEEPALIVE.into(), ..Default::default() };
    for _ in 0..3 {
        let request = LeaseKeepAliveRequest { id: lease }.encode_to_vec();
        kept.requests.push(request.clone());
        tx.send(request.into()).await.unwrap();
        let m = next(&mut inbound).await;
        let r = LeaseKeepAliveResponse::decode(m.as_ref()).unwrap();
        assert_eq!((r.id, r.ttl), (lease, 60));
        kept.responses.push(m.to_vec());
    }
    let checked = verify(&chain, &kept).unwrap_or_else(|e| panic!("{e}"));
    for (i, m) in checked.iter().enumerate() {
        let st = m.statement.as_ref().expect("signed");
        assert_eq!((st.bank, st.stream_sequence), (2, i as u64 + 1));
        // Each answer is signed after the keepalive it answers.
        assert!(st.stream_requests > i as u64, "{st:?}");
    }
    let mut tampered = kept.clone();
    let mut r = LeaseKeepAliveResponse::decode(split_stream_message(&tampered.responses[1]).unwrap().0).unwrap();
    r.ttl = 3600;
    let (_, sig) = split_stream_message(&kept.responses[1]).unwrap();
    let mut forged = r.encode_to_vec();
    forged.extend_from_slice(&bftcd_sequencer::answer::signature_field(&sig.unwrap()));
    tampered.responses[1] = forged;
    assert!(verify(&chain, &tampered).unwrap_err().contains("another response"));

    // Stock etcdctl: a watch sees the events, a keepalive renews.
    let mut watch = chain.etcdctl(0).spawn_for(&["watch", "stock/", "--prefix"], Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(1500));
    chain.etcdctl(1).run(&["put", "stock/a", "seen-by-etcdctl"]).expect_success();
    assert!(watch.wait_for_stdout(Duration::from_secs(20), |s| s.contains("stock/a\nseen-by-etcdctl")), "etcdctl watch: {}", watch.stdout_so_far());
    let out = watch.stop();
    assert!(!out.stderr.contains("rror"), "{out}");
    let once = chain.etcdctl(3).run(&["lease", "keep-alive", "--once", &format!("{lease:x}")]);
    assert!(once.expect_success().contains("keepalived with TTL(60)"), "{once}");

    // The etcd-client crate: Watch and LeaseKeepAlive through a signing bank.
    let mut c = etcd_client::Client::connect([endpoints[1].as_str()], None).await.unwrap();
    let mut events = c.watch("crate/", Some(etcd_client::WatchOptions::new().with_prefix())).await.unwrap();
    c.put("crate/x", "1", None).await.unwrap();
    let got = loop {
        let r = tokio::time::timeout(Duration::from_secs(20), events.message()).await.unwrap().unwrap().unwrap();
        if let Some(e) = r.events().first() {
            break e.kv().unwrap().value().to_vec();
        }
    };
    assert_eq!(got, b"1");
    let (mut keeper, mut answers) = c.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let a = tokio::time::timeout(Duration::from_secs(20), answers.message()).await.unwrap().unwrap().unwrap();
    assert_eq!((a.id(), a.ttl()), (lease, 60));
}

/// Rough cost of signing a watch (not a pass/fail test): the same history replayed from bank 1
/// (signing) and bank 4 (`--sign-answers=false`). `cargo test --test signed_streams -- --ignored
/// --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn cost_of_signing_a_watch() {
    let dir = TestDir::new("streams-cost");
    let chain = chain_with_bank4_unsigned(&dir);
    let endpoints = chain.endpoints();
    let channel = Channel::from_shared(format!("http://{}", endpoints[1])).unwrap().connect().await.unwrap();
    let n = 2000;
    let start = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..50 {
        let mut kv = bftcd_proto::etcdserverpb::kv_client::KvClient::new(channel.clone());
        writers.spawn(async move {
            for i in (w..n).step_by(50) {
                let put = bftcd_proto::etcdserverpb::PutRequest { key: format!("cost/{i:05}").into(), value: vec![b'v'; 100], ..Default::default() };
                kv.put(put).await.unwrap();
            }
        });
    }
    while writers.join_next().await.is_some() {}
    eprintln!("{n} puts in {:?}", start.elapsed());
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(60));
    for round in 0..2 {
        for (bank, label) in [(0, "signing"), (3, "not signing")] {
            let (tx, mut inbound) = open(&endpoints[bank], WATCH).await;
            let began = Instant::now();
            tx.send(create(b"cost/", b"cost0", 1)).await.unwrap();
            let (mut events, mut messages, mut bytes) = (0, 0, 0);
            while events < n {
                let m = next(&mut inbound).await;
                messages += 1;
                bytes += m.len();
                events += WatchResponse::decode(m.as_ref()).unwrap().events.len();
            }
            eprintln!("round {round}, bank {} ({label}): {events} events in {messages} messages, {bytes} bytes, {:?}", bank + 1, began.elapsed());
        }
    }
    // Many small messages: 2,000 watches created on one stream, one answer each.
    for round in 0..2 {
        for (bank, label) in [(0, "signing"), (3, "not signing")] {
            let (tx, mut inbound) = open(&endpoints[bank], WATCH).await;
            let began = Instant::now();
            let sender = tokio::spawn(async move {
                for i in 0..2000 {
                    tx.send(create(format!("many/{i}").as_bytes(), b"", 0)).await.unwrap();
                }
                tx
            });
            let mut bytes = 0;
            for _ in 0..2000 {
                bytes += next(&mut inbound).await.len();
            }
            let _tx = sender.await.unwrap();
            eprintln!("round {round}, bank {} ({label}): 2000 created answers, {bytes} bytes, {:?}", bank + 1, began.elapsed());
        }
    }
    // Live: one watch per bank while writes arrive one at a time.
    let (tx0, mut in0) = open(&endpoints[0], WATCH).await;
    let (tx3, mut in3) = open(&endpoints[3], WATCH).await;
    tx0.send(create(b"live/", b"live0", 0)).await.unwrap();
    tx3.send(create(b"live/", b"live0", 0)).await.unwrap();
    next(&mut in0).await;
    next(&mut in3).await;
    let mut kv = bftcd_proto::etcdserverpb::kv_client::KvClient::new(channel);
    let (mut signed, mut unsigned) = (Duration::ZERO, Duration::ZERO);
    let live = 100;
    for i in 0..live {
        let t = Instant::now();
        let put = bftcd_proto::etcdserverpb::PutRequest { key: format!("live/{i}").into(), value: b"v".to_vec(), ..Default::default() };
        let (done, a, b) = tokio::join!(kv.put(put), async { next(&mut in0).await; t.elapsed() }, async { next(&mut in3).await; t.elapsed() });
        done.unwrap();
        signed += a;
        unsigned += b;
    }
    eprintln!("live: from put to event, mean over {live} writes: signing bank {:?}, not signing bank {:?}", signed / live, unsigned / live);
}
