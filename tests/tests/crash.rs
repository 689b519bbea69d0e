//! kill -9 of the sidecar, and separately of its etcd, while a writer runs. Afterwards every
//! acknowledged write is present exactly once, every committed operation in the ledger was
//! applied exactly once, and the bookkeeping points at the ledger's last operation.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bftcd_proto::bftcd::operation::Request as Op;
use bftcd_proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use bftcd_sequencer::{LedgerFile, Position};
use bftcd_tests::{bftcd_bin, EtcdProcess, Sidecar, TestDir};
use tonic::transport::Channel;

const ETCD_ARGS: &[&str] = bftcd_tests::sidecar::BANK_ETCD_ARGS;

fn client(endpoint: &str) -> KvClient<Channel> {
    let ch = Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    KvClient::new(ch)
}

/// Writes w/<n> for n = first, first + step, ... (each key once) until `stop`; returns the
/// acknowledged numbers and how many writes failed.
async fn writer(endpoint: String, stop: Arc<Mutex<bool>>, first: u64, step: u64) -> (BTreeSet<u64>, u64) {
    let mut kv = client(&endpoint);
    let mut acked = BTreeSet::new();
    let mut failed = 0;
    let mut n = first;
    while !*stop.lock().unwrap() {
        let req = PutRequest { key: format!("w/{n:07}").into(), value: n.to_string().into(), ..Default::default() };
        match kv.put(req).await {
            Ok(_) => {
                acked.insert(n);
            }
            Err(_) => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        n += step;
    }
    (acked, failed)
}

enum Victim {
    Sidecar,
    Etcd,
}

async fn crash_during_writes(victim: Victim, name: &str, apply_mode: &str) {
    let dir = TestDir::new(name);
    let mut etcd = EtcdProcess::start_with_args(&dir, "bank1-etcd", ETCD_ARGS);
    let mode = format!("--apply-mode={apply_mode}");
    let mut bank = Sidecar::start_with_args(&dir, "bank1", &etcd.endpoint(), &[&mode]);
    let stop = Arc::new(Mutex::new(false));
    const WRITERS: u64 = 4;
    let tasks: Vec<_> = (0..WRITERS).map(|w| tokio::spawn(writer(bank.endpoint(), stop.clone(), w, WRITERS))).collect();

    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(700 + 300 * round)).await;
        match victim {
            Victim::Sidecar => {
                bank.kill();
                tokio::time::sleep(Duration::from_millis(200)).await;
                bank = tokio::task::spawn_blocking(move || {
                    bank.restart();
                    bank
                })
                .await
                .unwrap();
            }
            Victim::Etcd => {
                etcd.kill();
                tokio::time::sleep(Duration::from_millis(500)).await;
                etcd = tokio::task::spawn_blocking(move || {
                    etcd.restart();
                    etcd
                })
                .await
                .unwrap();
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    *stop.lock().unwrap() = true;
    let mut acked = BTreeSet::new();
    let mut failed = 0;
    for t in tasks {
        let (a, f) = t.await.unwrap();
        acked.extend(a);
        failed += f;
    }
    assert!(acked.len() > 50, "the writer made too little progress to test anything: {} acked", acked.len());
    eprintln!("{name}: {} writes acknowledged, {failed} failed during the crashes", acked.len());

    // Let the sidecar finish applying what was committed but not yet applied.
    let ledger_path = bank.data_dir().join("ledger.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut raw = client(&etcd.endpoint());
    let (ledger_keys, last_op) = loop {
        let mut keys = BTreeSet::new();
        let mut last = None;
        let file = LedgerFile::scan(&ledger_path, |_, cb| {
            let b = cb.block.as_ref().unwrap();
            for (i, op) in b.operations.iter().enumerate() {
                if let Some(Op::Put(p)) = &op.request {
                    assert!(keys.insert(p.key.clone()), "the same write appears twice in the ledger");
                }
                last = Some(Position { height: b.height, index: i as u32 });
            }
            Ok(())
        })
        .expect("ledger verifies");
        assert!(!file.blocks.is_empty());
        let applied = raw
            .range(RangeRequest { key: b"\x00bftcd/applied".to_vec(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let at = applied.kvs.first().and_then(|kv| Position::from_bytes(&kv.value));
        if at == last || Instant::now() > deadline {
            assert_eq!(at, last, "the bookkeeping must point at the ledger's last operation");
            break (keys, last.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Through the sidecar: every acknowledged write, each applied once (version 1).
    let mut kv = client(&bank.endpoint());
    let all = kv
        .range(RangeRequest { key: b"w/".to_vec(), range_end: b"w0".to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let present: BTreeSet<u64> =
        all.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key[2..]).parse().unwrap()).collect();
    let missing: Vec<_> = acked.difference(&present).collect();
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    for kv in &all.kvs {
        assert_eq!(kv.version, 1, "{} applied more than once", String::from_utf8_lossy(&kv.key));
        assert_eq!(kv.create_revision, kv.mod_revision);
    }
    // Every committed write, and nothing else, reached etcd; one revision per write.
    let in_etcd: BTreeSet<Vec<u8>> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(in_etcd, ledger_keys, "etcd holds exactly the ledger's writes");
    let revision = all.header.unwrap().revision;
    if apply_mode == "exact" {
        assert_eq!(revision, 1 + ledger_keys.len() as i64, "exact mode: one revision per write");
    } else {
        // Batched writes share revisions; never more than one per write.
        assert!(revision <= 1 + ledger_keys.len() as i64);
        eprintln!("{name}: {} writes in {} revisions", ledger_keys.len(), revision - 1);
    }
    eprintln!("{name}: {} committed writes applied exactly once, last at {last_op}", ledger_keys.len());

    // The auditor's tool agrees.
    let out = std::process::Command::new(bftcd_bin().with_file_name("bftcd-verify"))
        .args(["ledger", ledger_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "bftcd-verify: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_sidecar_during_writes_loses_and_repeats_nothing() {
    crash_during_writes(Victim::Sidecar, "crash-sidecar", "batched").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_etcd_during_writes_loses_and_repeats_nothing() {
    crash_during_writes(Victim::Etcd, "crash-etcd", "exact").await;
}
