//! Signed answers (docs/auditing.md, "Signed answers"): every unary KV and Lease answer carries
//! its bank's signature in a gRPC trailer that stock clients ignore; `bftcd-verify get` reads
//! a key at every bank and names a bank whose signed answer contradicts the others.

use std::path::Path;
use std::process::Output;

use bftcd_proto::bftcd::{AnswerEvidence, AnswerRecord, AnswerSignature, Genesis};
use bftcd_proto::etcdserverpb::kv_client::KvClient;
use bftcd_proto::etcdserverpb::PutRequest;
use bftcd_proto::Message;
use bftcd_sequencer::keys::ChainCrypto;
use bftcd_tests::{Chain, Deviant, TestDir};

fn verify_cli(args: &[String]) -> Output {
    std::process::Command::new(bftcd_tests::bftcd_bin().with_file_name("bftcd-verify")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", o.status.code(), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn get_args(chain: &Chain, key: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["get".to_string(), key.to_string(), format!("--endpoints={}", chain.endpoints().join(",")), format!("--genesis={}", chain.genesis.display())];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn every_bank_signs_its_answers_and_get_shows_who_vouches() {
    let dir = TestDir::new("answers-honest");
    let chain = Chain::start(&dir, 4);
    chain.etcdctl(0).run(&["put", "answers/k", "v1"]).expect_success();
    chain.etcdctl(1).run(&["put", "answers/l", "v2"]).expect_success();
    // Stock etcdctl reads as before with the trailer present.
    assert_eq!(chain.etcdctl(2).get_value("answers/k").as_deref(), Some("v1"));

    let out = verify_cli(&get_args(&chain, "answers/k", &[]));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("answers/k=v1 vouched for by bank1, bank2, bank3, bank4"), "{}", text(&out));

    let out = verify_cli(&get_args(&chain, "answers/", &["--prefix", "--json"]));
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["answers"][0]["banks"].as_array().unwrap().len(), 4, "{v}");
    assert_eq!(v["answers"][0]["kvs"].as_array().unwrap().len(), 2, "{v}");

    // A write's answer is signed too: check one as a client library would see it.
    let g = Genesis::decode(std::fs::read(&chain.genesis).unwrap().as_slice()).unwrap();
    let crypto = ChainCrypto::verifier(&g).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut kv = KvClient::connect(format!("http://{}", chain.endpoints()[3])).await.unwrap();
        let request = PutRequest { key: b"answers/m".to_vec(), value: b"v3".to_vec(), ..Default::default() };
        let answer = kv.put(request.clone()).await.unwrap();
        let trailer = answer.metadata().get_bin("bftcd-answer-bin").expect("a signature trailer").to_bytes().unwrap();
        let record = AnswerRecord {
            endpoint: String::new(),
            request: request.encode_to_vec(),
            response: answer.get_ref().encode_to_vec(),
            signature: Some(AnswerSignature::decode(trailer.as_ref()).unwrap()),
        };
        let st = bftcd_sequencer::answer::verify(&crypto, &g.chain_id, g.epoch, "/etcdserverpb.KV/Put", &record).unwrap();
        assert_eq!(st.bank, 3);
        assert_eq!(st.revision, answer.get_ref().header.as_ref().unwrap().revision);
        // The same signature does not hold for another answer.
        let mut other = record.clone();
        other.response = bftcd_proto::etcdserverpb::PutResponse::default().encode_to_vec();
        assert!(bftcd_sequencer::answer::verify(&crypto, &g.chain_id, g.epoch, "/etcdserverpb.KV/Put", &other).is_err());
    });
}

#[test]
fn a_bank_forging_reads_is_named_and_its_signed_lie_proves_it_offline() {
    let dir = TestDir::new("answers-forged");
    let bin = bftcd_tests::bins::try_byzantine_bin("debug").unwrap_or_else(|e| panic!("{e}"));
    let chain = Chain::start_with(&dir, 4, Some(Deviant { bank: 1, bin, args: vec!["--byzantine=forged-reads".into()] }));
    chain.etcdctl(0).run(&["put", "answers/k", "v1"]).expect_success();
    let evidence = dir.join("evidence.pb");
    let out = verify_cli(&get_args(&chain, "answers/k", &[&format!("--evidence={}", evidence.display())]));
    eprintln!("bftcd-verify get with a forging bank:\n{}", text(&out));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bank2 answered otherwise"), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("CONTRADICTED by bank2"), "{}", text(&out));

    // Anyone with the genesis checks the evidence offline.
    let genesis = format!("--genesis={}", chain.genesis.display());
    let check = verify_cli(&["response".into(), evidence.display().to_string(), genesis.clone()]);
    eprintln!("bftcd-verify response on the evidence:\n{}", text(&check));
    assert!(check.status.success(), "{}", text(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains("PROVEN: bank2"), "{}", text(&check));

    // Evidence altered to blame an honest bank does not verify.
    let mut file = AnswerEvidence::decode(std::fs::read(&evidence).unwrap().as_slice()).unwrap();
    let honest = file.answers.iter_mut().find(|a| a.signature.as_ref().unwrap().statement.as_ref().unwrap().bank == 0).unwrap();
    let mut r = bftcd_proto::etcdserverpb::RangeResponse::decode(honest.response.as_slice()).unwrap();
    r.kvs[0].value = b"something else".to_vec();
    honest.response = r.encode_to_vec();
    let forged = dir.join("forged.pb");
    std::fs::write(&forged, file.encode_to_vec()).unwrap();
    let refused = verify_cli(&["response".into(), forged.display().to_string(), genesis]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("another response"), "{}", text(&refused));
    assert!(Path::new(&evidence).exists());
}
