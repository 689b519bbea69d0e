//! `get` and `response`: signed answers (docs/auditing.md, "Signed answers").
//!
//! `get` asks every bank for the same key at the same revision, checks every signature against
//! the genesis keys, and compares: f + 1 banks that agree include an honest one, so a bank that
//! answers otherwise at that revision contradicts the chain's state, and its signed answer, kept
//! with f + 1 others in an evidence file, proves it to anyone (`response`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bftcd_proto::bftcd::{AnswerEvidence, AnswerRecord, AnswerSignature, AnswerStatement, AnswerStream, Genesis};
use bftcd_proto::etcdserverpb::watch_request::RequestUnion;
use bftcd_proto::etcdserverpb::{RangeRequest, RangeResponse, WatchCreateRequest, WatchRequest, WatchResponse};
use bftcd_proto::Message;
use bftcd_sequencer::keys::ChainCrypto;
use bytes::{Buf, BufMut, Bytes};
use serde_json::json;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::Out;

const RANGE: &str = "/etcdserverpb.KV/Range";

/// Sends and receives message bytes as they are: the digests are over exactly these.
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

async fn channel(endpoint: &str) -> Result<tonic::client::Grpc<tonic::transport::Channel>, Status> {
    let url = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
    let channel = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("cannot connect: {e}")))?;
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(512 << 20);
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(grpc)
}

pub struct WatchArgs {
    pub key: String,
    pub prefix: bool,
    pub rev: i64,
    pub endpoint: String,
    pub genesis: PathBuf,
    pub file: PathBuf,
    pub messages: usize,
    pub seconds: u64,
}

/// Keeps a watch stream as it arrives, checking it message by message; the stream is written
/// whatever happens, so that what was received stays as evidence.
pub fn watch(out: &mut Out, a: WatchArgs) -> Result<(), String> {
    const WATCH: &str = "/etcdserverpb.Watch/Watch";
    let g = crate::genesis::read(&a.genesis)?;
    let crypto = ChainCrypto::verifier(&g).map_err(|e| format!("{}: {e}", a.genesis.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let create = WatchCreateRequest {
        key: a.key.clone().into_bytes(),
        range_end: if a.prefix { prefix_end(a.key.as_bytes()) } else { vec![] },
        start_revision: a.rev,
        prev_kv: true,
        ..Default::default()
    };
    let request = WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }.encode_to_vec();
    let mut kept = AnswerStream { endpoint: a.endpoint.clone(), method: WATCH.into(), requests: vec![request.clone()], responses: vec![] };
    let received = runtime.block_on(async {
        let mut grpc = channel(&a.endpoint).await?;
        // The request stream stays open (a closed one may end the watch) until we stop reading.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        tx.send(Bytes::from(request)).await.map_err(|_| Status::internal("request not sent"))?;
        let outbound = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let path = http::uri::PathAndQuery::from_static(WATCH);
        let mut inbound = grpc.streaming(tonic::Request::new(outbound), path, Raw).await?.into_inner();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(a.seconds);
        while kept.responses.len() < a.messages {
            match tokio::time::timeout_at(deadline, inbound.message()).await {
                Err(_) | Ok(Ok(None)) => break,
                Ok(Ok(Some(m))) => kept.responses.push(m.to_vec()),
                Ok(Err(s)) => return Err(s),
            }
        }
        drop(tx);
        Ok(())
    });
    std::fs::write(&a.file, AnswerEvidence { answers: vec![], streams: vec![kept.clone()] }.encode_to_vec()).map_err(|e| format!("{}: {e}", a.file.display()))?;
    out.set("out", a.file.display().to_string());
    out.set("messages", kept.responses.len());
    if let Err(s) = received {
        return Err(format!("{}: {} (the {} message(s) received are kept in {})", a.endpoint, s.message(), kept.responses.len(), a.file.display()));
    }
    let checked = bftcd_sequencer::answer::verify_stream(&crypto, &g.chain_id, g.epoch, &kept).map_err(|why| format!("{}: {why} (kept in {})", a.endpoint, a.file.display()))?;
    let mut events = Vec::new();
    for m in &checked {
        let r = WatchResponse::decode(m.response.as_slice()).map_err(|e| format!("not a watch response: {e}"))?;
        let signed = match &m.statement {
            Some(st) => format!("{} signed message {}", bank_name(&g, st.bank), st.stream_sequence),
            None => "UNSIGNED".to_string(),
        };
        let revision = r.header.as_ref().map(|h| h.revision).unwrap_or_default();
        if r.events.is_empty() {
            out.line(format!("{signed}: revision {revision}, no events{}", if r.created { " (created)" } else { "" }));
        }
        for e in &r.events {
            let kind = if e.r#type == 1 { "DELETE" } else { "PUT" };
            let (key, value, mod_rev) = e.kv.as_ref().map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), String::from_utf8_lossy(&kv.value).into_owned(), kv.mod_revision)).unwrap_or_default();
            out.line(format!("{signed}: {kind} {key}={value} at revision {mod_rev}"));
            events.push(json!({"type": kind, "key": key, "value": value, "mod_revision": mod_rev, "signed": m.statement.is_some()}));
        }
    }
    out.set("events", events);
    let unsigned = checked.iter().filter(|m| m.statement.is_none()).count();
    out.line(format!("{} message(s) kept in {}, {} unsigned; every signature verifies and the messages chain", checked.len(), a.file.display(), unsigned));
    out.set("unsigned", unsigned);
    Ok(())
}

/// One Range at one bank: the response bytes and the signature from its trailer.
async fn range(endpoint: &str, request: &[u8]) -> Result<(Bytes, Option<AnswerSignature>), Status> {
    let url = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
    let channel = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("cannot connect: {e}")))?;
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(512 << 20);
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(RANGE);
    let response = grpc.unary(tonic::Request::new(Bytes::copy_from_slice(request)), path, Raw).await?;
    let signature = response
        .metadata()
        .get_bin("bftcd-answer-bin")
        .and_then(|v| v.to_bytes().ok())
        .and_then(|b| AnswerSignature::decode(b.as_ref()).ok());
    Ok((response.into_inner(), signature))
}

fn bank_name(g: &Genesis, bank: u32) -> String {
    g.validators.get(bank as usize).map(|v| v.name.clone()).unwrap_or_else(|| format!("#{bank}"))
}

/// What a Range answer says, without the header (which names the bank that gave it).
fn content(response: &[u8]) -> Result<Vec<u8>, String> {
    let mut r = RangeResponse::decode(response).map_err(|e| format!("not a Range answer: {e}"))?;
    r.header = None;
    Ok(r.encode_to_vec())
}

fn show_kvs(response: &[u8]) -> Vec<(String, String)> {
    RangeResponse::decode(response)
        .map(|r| r.kvs.iter().map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), String::from_utf8_lossy(&kv.value).into_owned())).collect())
        .unwrap_or_default()
}

/// Groups verified answers by what they say; the group of at least f + 1 is the chain's.
fn judge(g: &Genesis, answers: &[(AnswerRecord, AnswerStatement)]) -> (Option<Vec<u8>>, Vec<u32>, BTreeMap<Vec<u8>, Vec<u32>>) {
    let f = (g.validators.len() - 1) / 3;
    let mut groups: BTreeMap<Vec<u8>, Vec<u32>> = BTreeMap::new();
    for (r, st) in answers {
        if let Ok(c) = content(&r.response) {
            groups.entry(c).or_default().push(st.bank);
        }
    }
    let truth = groups.iter().find(|(_, banks)| banks.len() > f).map(|(c, _)| c.clone());
    let liars = match &truth {
        Some(t) => groups.iter().filter(|(c, _)| *c != t).flat_map(|(_, b)| b.clone()).collect(),
        None => vec![],
    };
    (truth, liars, groups)
}

pub fn get(out: &mut Out, key: String, prefix: bool, endpoints: Vec<String>, genesis: PathBuf, evidence: Option<PathBuf>) -> Result<(), String> {
    let g = crate::genesis::read(&genesis)?;
    let crypto = ChainCrypto::verifier(&g).map_err(|e| format!("{}: {e}", genesis.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let range_end = if prefix { prefix_end(key.as_bytes()) } else { vec![] };
    // First a linearizable read at each bank, for the newest revision any of them has; then the
    // same read at that one revision everywhere, so the answers must be equal.
    let latest = RangeRequest { key: key.clone().into_bytes(), range_end: range_end.clone(), ..Default::default() }.encode_to_vec();
    let mut revision = 0;
    let mut refused = Vec::new();
    for e in &endpoints {
        match runtime.block_on(range(e, &latest)) {
            Ok((resp, _)) => revision = revision.max(bftcd_sequencer::answer::header_revision(&resp).unwrap_or_default()),
            Err(s) => refused.push((e.clone(), s.message().to_string())),
        }
    }
    let request = RangeRequest { key: key.clone().into_bytes(), range_end, revision, serializable: true, ..Default::default() }.encode_to_vec();
    let mut answers = Vec::new();
    let reachable: Vec<String> = endpoints.iter().filter(|e| !refused.iter().any(|(r, _)| r == *e)).cloned().collect();
    for e in &reachable {
        let deadline = Instant::now() + Duration::from_secs(10);
        let got = loop {
            match runtime.block_on(range(e, &request)) {
                Err(s) if s.message().contains("future revision") && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                other => break other,
            }
        };
        match got {
            Err(s) => refused.push((e.clone(), s.message().to_string())),
            Ok((_, None)) => refused.push((e.clone(), "answered unsigned".into())),
            Ok((resp, Some(sig))) => {
                let record = AnswerRecord { endpoint: e.clone(), request: request.clone(), response: resp.to_vec(), signature: Some(sig) };
                let st = bftcd_sequencer::answer::verify(&crypto, &g.chain_id, g.epoch, RANGE, &record)
                    .map_err(|why| format!("{e}: the answer's signature does not hold: {why}"))?;
                answers.push((record, st));
            }
        }
    }
    let (truth, liars, groups) = judge(&g, &answers);
    out.line(format!("{} at revision {revision}", if prefix { format!("prefix {key:?}") } else { format!("key {key:?}") }));
    let mut said = Vec::new();
    for (c, banks) in &groups {
        let names: Vec<String> = banks.iter().map(|b| bank_name(&g, *b)).collect();
        let sample = answers.iter().find(|(r, _)| content(&r.response).ok().as_ref() == Some(c)).map(|(r, _)| show_kvs(&r.response)).unwrap_or_default();
        let shown: Vec<String> = sample.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let verdict = if Some(c) == truth.as_ref() { "vouched for by" } else { "CONTRADICTED by" };
        out.line(format!("  {} {verdict} {}", if shown.is_empty() { "(no keys)".to_string() } else { shown.join(" ") }, names.join(", ")));
        said.push(json!({"kvs": sample.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(), "banks": names, "agreed": Some(c) == truth.as_ref()}));
    }
    for (e, why) in &refused {
        out.line(format!("  {e}: no signed answer: {why}"));
    }
    out.set("revision", revision);
    out.set("answers", said);
    out.set("refused", refused.iter().map(|(e, w)| json!({"endpoint": e, "error": w})).collect::<Vec<_>>());
    if !liars.is_empty() {
        let path = evidence.unwrap_or_else(|| PathBuf::from(format!("bftcd-evidence-{}.pb", bftcd_now_ms())));
        let file = AnswerEvidence { answers: answers.iter().map(|(r, _)| r.clone()).collect(), streams: vec![] };
        std::fs::write(&path, file.encode_to_vec()).map_err(|e| format!("{}: {e}", path.display()))?;
        let names: Vec<String> = liars.iter().map(|b| bank_name(&g, *b)).collect();
        out.set("contradicted_by", names.clone());
        out.set("evidence", path.display().to_string());
        return Err(format!(
            "{} answered otherwise than the {} banks that agree at revision {revision}; signed evidence in {} (check it with `bftcd-verify response {} --genesis ...`)",
            names.join(", "),
            groups.values().map(|b| b.len()).max().unwrap_or_default(),
            path.display(),
            path.display()
        ));
    }
    if truth.is_none() {
        return Err(format!("no {} banks gave the same signed answer", (g.validators.len() - 1) / 3 + 1));
    }
    if let Some((e, why)) = refused.first() {
        return Err(format!("{e} gave no signed answer: {why}"));
    }
    Ok(())
}

fn bftcd_now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Checks kept streams (`AnswerEvidence.streams`): every signed message, and that they chain.
fn streams(out: &Out, crypto: &ChainCrypto, g: &Genesis, file: &AnswerEvidence, path: &std::path::Path) -> Result<Vec<serde_json::Value>, String> {
    let mut checked = Vec::new();
    for (i, s) in file.streams.iter().enumerate() {
        let messages = bftcd_sequencer::answer::verify_stream(crypto, &g.chain_id, g.epoch, s).map_err(|why| format!("{}: stream {i}: {why}", path.display()))?;
        let signed: Vec<&AnswerStatement> = messages.iter().filter_map(|m| m.statement.as_ref()).collect();
        let (Some(first), Some(last)) = (signed.first(), signed.last()) else {
            out.line(format!("stream {i}: {} ({} messages): none signed, nothing proven", s.method, messages.len()));
            checked.push(json!({"method": s.method, "messages": messages.len(), "signed": 0}));
            continue;
        };
        let unsigned = messages.len() - signed.len();
        out.line(format!(
            "stream {i}: {} signed {} messages {}..{} of its stream, chained in order ({} request(s) kept{})",
            bank_name(g, first.bank),
            s.method,
            first.stream_sequence,
            last.stream_sequence,
            s.requests.len(),
            if unsigned > 0 { format!(", {unsigned} message(s) unsigned") } else { String::new() }
        ));
        for (j, st) in messages.iter().enumerate().filter_map(|(j, m)| Some((j, m.statement.as_ref()?))) {
            out.line(format!(
                "  message {j}: sequence {} at revision {} (applied block {}, certified block {})",
                st.stream_sequence, st.revision, st.applied_height, st.certified_height
            ));
        }
        checked.push(json!({"method": s.method, "bank": bank_name(g, first.bank), "messages": messages.len(), "signed": signed.len(),
            "first_sequence": first.stream_sequence, "last_sequence": last.stream_sequence,
            "revisions": signed.iter().map(|st| st.revision).collect::<Vec<_>>()}));
    }
    Ok(checked)
}

/// Checks saved signed answers (an evidence file from `get`); when answers to the same request
/// differ, says which bank contradicts the f + 1 that agree.
pub fn response(out: &mut Out, path: PathBuf, genesis: PathBuf) -> Result<(), String> {
    let g = crate::genesis::read(&genesis)?;
    let crypto = ChainCrypto::verifier(&g).map_err(|e| format!("{}: {e}", genesis.display()))?;
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = AnswerEvidence::decode(bytes.as_slice()).map_err(|e| format!("{}: not a file of signed answers: {e}", path.display()))?;
    if file.answers.is_empty() && file.streams.is_empty() {
        return Err(format!("{}: no answers in it", path.display()));
    }
    let mut checked = Vec::new();
    let mut by_request: BTreeMap<(Vec<u8>, i64), Vec<(AnswerRecord, AnswerStatement)>> = BTreeMap::new();
    for (i, r) in file.answers.iter().enumerate() {
        let st = bftcd_sequencer::answer::verify(&crypto, &g.chain_id, g.epoch, "", r).map_err(|why| format!("{}: answer {i}: {why}", path.display()))?;
        out.line(format!(
            "answer {i}: {} signed {} at revision {} (applied block {}, certified block {})",
            bank_name(&g, st.bank),
            st.method,
            st.revision,
            st.applied_height,
            st.certified_height
        ));
        checked.push(json!({"bank": bank_name(&g, st.bank), "method": st.method, "revision": st.revision,
            "applied_height": st.applied_height, "certified_height": st.certified_height,
            "certified_digest": hex::encode(&st.certified_digest)}));
        by_request.entry((st.request_digest.clone(), st.revision)).or_default().push((r.clone(), st));
    }
    out.set("answers", checked);
    let kept = streams(out, &crypto, &g, &file, &path)?;
    out.set("streams", kept);
    let mut contradicted = Vec::new();
    for answers in by_request.values().filter(|a| a.len() > 1 && a[0].1.method == RANGE) {
        let (truth, liars, _) = judge(&g, answers);
        if truth.is_some() {
            contradicted.extend(liars.iter().map(|b| bank_name(&g, *b)));
        }
    }
    out.line(format!("every signature verifies against {}", genesis.display()));
    if !contradicted.is_empty() {
        out.line(format!(
            "PROVEN: {} signed an answer that contradicts what at least f + 1 banks signed for the same request at the same revision",
            contradicted.join(", ")
        ));
    }
    out.set("contradicted_by", contradicted);
    Ok(())
}
