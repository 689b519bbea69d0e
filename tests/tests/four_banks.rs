//! Four banks ordering with HotStuff-2 on loopback, each with its own stock etcd: every write
//! lands identically everywhere, and one bank's crash neither stops the others nor loses
//! anything acknowledged.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bftcd_proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use bftcd_tests::{Chain, Etcdctl, TestDir};
use tonic::transport::Channel;

fn hashkv(ctl: &Etcdctl) -> (i64, i64) {
    let out = ctl.run(&["endpoint", "hashkv", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(out.expect_success().trim()).unwrap();
    (v[0]["HashKV"]["hash"].as_i64().unwrap(), v[0]["HashKV"]["header"]["revision"].as_i64().unwrap())
}

/// The events a bank's watch printed: (type, key, value, mod revision) per event.
fn events(json_lines: &str) -> Vec<(String, String, String, i64)> {
    let mut out = Vec::new();
    for line in json_lines.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for e in v["Events"].as_array().cloned().unwrap_or_default() {
            let kv = &e["kv"];
            out.push((
                match &e["type"] {
                    serde_json::Value::String(t) => t.clone(),
                    serde_json::Value::Number(n) if n.as_i64() == Some(1) => "DELETE".to_string(),
                    _ => "PUT".to_string(),
                },
                kv["key"].as_str().unwrap_or_default().to_string(),
                kv["value"].as_str().unwrap_or_default().to_string(),
                kv["mod_revision"].as_i64().unwrap_or_default(),
            ));
        }
    }
    out
}

#[test]
fn four_banks_hold_identical_state() {
    let dir = TestDir::new("four-banks");
    let chain = Chain::start(&dir, 4);
    let start_rev = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    // A watch at every bank from the start, as kube-apiserver would.
    let watches: Vec<_> = (0..4)
        .map(|b| chain.etcdctl(b).spawn_for(&["watch", "app/", "--prefix", "--prev-kv", "-w", "json", &format!("--rev={}", start_rev + 1)], Duration::from_secs(120)))
        .collect();

    // Writes through every bank: puts, a conditional txn, a delete.
    for b in 0..4 {
        chain.etcdctl(b).run(&["put", &format!("app/k{b}"), &format!("from bank{}", b + 1)]).expect_success();
    }
    let txn = "value(\"app/k0\") = \"from bank1\"\n\nput app/txn yes\n\nput app/txn no\n\n";
    let out = chain.etcdctl(2).run_with_stdin(&["txn", "-i"], txn);
    assert!(out.expect_success().contains("SUCCESS"), "txn through bank 3: {}", out.stdout);
    chain.etcdctl(3).run(&["del", "app/k1"]).expect_success();

    // A write through bank 1 is readable at bank 3 once bank 3 applied it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while chain.etcdctl(2).get_value("app/k0").as_deref() != Some("from bank1") {
        assert!(Instant::now() < deadline, "bank 3 never saw bank 1's write");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Every bank's etcd reaches the same revision with the same content.
    let rev = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    assert_eq!(rev, start_rev + 6, "one revision per write");
    let hashes: Vec<(i64, i64)> = (0..4).map(|b| hashkv(&chain.etcdctl(b))).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "endpoint hashkv differs between banks: {hashes:?}");
    let listing = |b: usize| chain.etcdctl(b).run(&["get", "app/", "--prefix", "-w", "json"]).expect_success().to_string();
    let strip_ids = |s: String| {
        let mut v: serde_json::Value = serde_json::from_str(s.trim()).unwrap();
        v["header"]["member_id"] = serde_json::Value::Null;
        v
    };
    let first = strip_ids(listing(0));
    for b in 1..4 {
        assert_eq!(strip_ids(listing(b)), first, "bank {} lists different keys", b + 1);
    }
    // ... each under its own header: the chain's cluster id and the bank's own member id.
    let members: serde_json::Value =
        serde_json::from_str(chain.etcdctl(0).run(&["member", "list", "-w", "json"]).expect_success().trim()).unwrap();
    for b in 0..4 {
        let v: serde_json::Value = serde_json::from_str(listing(b).trim()).unwrap();
        let name = format!("bank{}", b + 1);
        let own = members["members"].as_array().unwrap().iter().find(|m| m["name"] == name.as_str()).unwrap();
        assert!(own["ID"].is_u64(), "member list: {members}");
        assert_eq!(v["header"]["member_id"], own["ID"], "{name} reads under another member id");
        assert_eq!(v["header"]["cluster_id"], members["header"]["cluster_id"], "{name} reads under another cluster id");
    }

    // Every bank's watch saw the same events at the same revisions.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen: Vec<Vec<_>> = Vec::new();
    for w in watches {
        while events(&w.stdout_so_far()).len() < 6 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        seen.push(events(&w.stop().stdout));
    }
    assert_eq!(seen[0].len(), 6, "bank 1's watch: {:?}", seen[0]);
    verify_ledgers(&chain, &dir);
    assert_eq!(seen[0].last().unwrap().0, "DELETE");
    for (b, s) in seen.iter().enumerate() {
        assert_eq!(s, &seen[0], "bank {}'s watch saw different events", b + 1);
    }
}

fn client(endpoint: &str) -> KvClient<Channel> {
    let ch = Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .timeout(Duration::from_secs(25))
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    KvClient::new(ch)
}

/// Writers spread over the given banks; returns acknowledged keys.
async fn write_until(endpoints: Vec<String>, stop: Arc<Mutex<bool>>, writer: u64, progress: Arc<Mutex<u64>>) -> BTreeSet<String> {
    let mut acked = BTreeSet::new();
    let mut n = 0u64;
    while !*stop.lock().unwrap() {
        let ep = &endpoints[(n as usize) % endpoints.len()];
        let key = format!("load/{writer}/{n:06}");
        let req = PutRequest { key: key.clone().into(), value: b"v".to_vec(), ..Default::default() };
        if client(ep).put(req).await.is_ok() {
            acked.insert(key);
            *progress.lock().unwrap() += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        n += 1;
    }
    acked
}

enum Victim {
    Sidecar,
    Etcd,
}

async fn one_bank_crashes_during_load(victim: Victim, name: &str) {
    let dir = TestDir::new(name);
    let mut chain = Chain::start(&dir, 4);
    let survivors: Vec<String> = chain.endpoints()[..3].to_vec();
    let stop = Arc::new(Mutex::new(false));
    let progress = Arc::new(Mutex::new(0u64));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(write_until(survivors.clone(), stop.clone(), w, progress.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Bank 4 goes down hard.
    let mut bank4 = chain.banks.pop().unwrap();
    match victim {
        Victim::Sidecar => bank4.sidecar.kill(),
        Victim::Etcd => bank4.etcd.kill(),
    }
    let before = *progress.lock().unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = *progress.lock().unwrap() - before;
    assert!(during > 10, "the other three banks stopped committing while bank 4 was down ({during} writes)");

    // Bank 4 comes back and catches up.
    bank4 = tokio::task::spawn_blocking(move || {
        match victim {
            Victim::Sidecar => bank4.sidecar.restart(),
            Victim::Etcd => bank4.etcd.restart(),
        }
        bank4
    })
    .await
    .unwrap();
    chain.banks.push(bank4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    *stop.lock().unwrap() = true;
    let mut acked = BTreeSet::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let chain = tokio::task::spawn_blocking(move || {
        chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(60));
        chain
    })
    .await
    .unwrap();
    eprintln!("{name}: {} writes acknowledged, {during} of them while bank 4 was down", acked.len());

    // Every bank's own etcd holds every acknowledged write exactly once.
    let mut hashes = Vec::new();
    for b in &chain.banks {
        let mut kv = client(&b.etcd.endpoint());
        let all = kv
            .range(RangeRequest { key: b"load/".to_vec(), range_end: b"load0".to_vec(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let keys: BTreeSet<String> = all.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).to_string()).collect();
        let missing: Vec<_> = acked.difference(&keys).take(5).collect();
        assert!(missing.is_empty(), "{}: acknowledged writes missing, e.g. {missing:?}", b.name);
        assert!(all.kvs.iter().all(|kv| kv.version == 1), "{}: a write applied twice", b.name);
        hashes.push(hashkv(&Etcdctl::new(b.sidecar.endpoint())));
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "banks differ after the crash: {hashes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sidecar_killed_during_load() {
    one_bank_crashes_during_load(Victim::Sidecar, "four-banks-kill-sidecar").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_etcd_killed_during_load() {
    one_bank_crashes_during_load(Victim::Etcd, "four-banks-kill-etcd").await;
}

/// Every bank's ledger passes `bftcd-verify`; a copy in which one committed write was rewritten
/// (with a valid CRC, as a bank covering its tracks would) does not, nor one in which a write
/// was credited to a client its bank never named.
fn verify_ledgers(chain: &Chain, dir: &TestDir) {
    use bftcd_proto::bftcd::{operation::Request, ClientIdentity};
    let verify = |path: &std::path::Path| {
        std::process::Command::new(bftcd_tests::bftcd_bin().with_file_name("bftcd-verify"))
            .args(["ledger", path.to_str().unwrap()])
            .output()
            .unwrap()
    };
    for b in &chain.banks {
        let out = verify(&b.sidecar.data_dir().join("ledger.log"));
        assert!(out.status.success(), "{}: {}", b.name, String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("commit proofs verified"));
    }
    // All four agree block for block, from the genesis every bank was given, not only the one
    // each ledger carries; a genesis of another chain is refused.
    let ledgers: Vec<String> = chain.banks.iter().map(|b| b.sidecar.data_dir().join("ledger.log").display().to_string()).collect();
    let verifier = bftcd_tests::bftcd_bin().with_file_name("bftcd-verify");
    let trusted = format!("--genesis={}", chain.genesis.display());
    let out = std::process::Command::new(&verifier).arg("compare").args(&ledgers).arg(&trusted).output().unwrap();
    assert!(out.status.success(), "compare: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 ledgers hold the same blocks"));
    let other = dir.join("other-genesis.pb");
    let validators: Vec<String> =
        (1..=4).map(|i| dir.join(format!("keys/bank{i}/validator.pb")).display().to_string()).collect();
    let made = std::process::Command::new(bftcd_tests::bftcd_bin())
        .args(["genesis", "--chain-id=another-chain", "--genesis-time=2026-12-01T00:00:00Z", &format!("--out={}", other.display())])
        .args(&validators)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let out = std::process::Command::new(&verifier)
        .args(["ledger", &ledgers[0], &format!("--genesis={}", other.display())])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a ledger verified against another chain's genesis");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the trusted"), "{}", String::from_utf8_lossy(&out.stderr));
    let ledger = chain.banks[0].sidecar.data_dir().join("ledger.log");
    type Rewrite = Box<dyn Fn(&mut bftcd_proto::bftcd::Operation) -> bool>;
    let rewrites: [(&str, Rewrite); 2] = [
        (
            "value",
            Box::new(|op| match op.request.as_mut() {
                Some(Request::Put(p)) => {
                    p.value = b"forged".to_vec();
                    true
                }
                _ => false,
            }),
        ),
        (
            "client",
            Box::new(|op| {
                let put = matches!(op.request, Some(Request::Put(_)));
                if put {
                    op.client = Some(ClientIdentity { certificate_cn: "admin".into(), user: String::new() });
                }
                put
            }),
        ),
    ];
    for (what, rewrite) in rewrites {
        let forged = dir.join(format!("forged-{what}-ledger.log"));
        std::fs::write(&forged, bftcd_tests::forge_ledger(&ledger, rewrite)).unwrap();
        let res = verify(&forged);
        assert!(!res.status.success(), "bftcd-verify accepted a ledger with a rewritten {what}");
        assert!(String::from_utf8_lossy(&res.stderr).contains("INVALID"));
        let res = std::process::Command::new(&verifier).arg("compare").arg(&ledgers[1]).arg(&forged).output().unwrap();
        assert!(!res.status.success(), "compare accepted a ledger with a rewritten {what}");
    }
}

/// A bank applies a committed block while its ledger writer is still writing it, so a crash can
/// leave its etcd ahead of its ledger. Restarted, it must take the missing blocks from the peers
/// and carry on, not refuse to start. The crash is made exact here: the bank is stopped and the
/// last record of its ledger torn, as a crash in the middle of that write would leave it.
#[test]
fn a_bank_whose_etcd_is_ahead_of_its_ledger_catches_up() {
    let dir = TestDir::new("etcd-ahead-of-ledger");
    let mut chain = Chain::start(&dir, 4);
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    for i in 0..3 {
        chain.etcdctl(i % 4).run(&["put", &format!("ahead/k{i}"), "v"]).expect_success();
    }
    let rev = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    let ledger = chain.banks[1].sidecar.data_dir().join("ledger.log");
    let before = bftcd_sequencer::LedgerFile::scan(&ledger, |_, _| Ok(())).unwrap().blocks.len();
    chain.banks[1].sidecar.kill();
    let len = std::fs::metadata(&ledger).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&ledger).unwrap().set_len(len - 5).unwrap();

    chain.banks[1].sidecar.restart();
    // Serving again, with the same state as everyone, and ordering new writes.
    chain.etcdctl(1).run(&["put", "ahead/after", "v"]).expect_success();
    let after = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    assert_eq!(after, rev + 1);
    let hashes: Vec<(i64, i64)> = (0..4).map(|b| hashkv(&chain.etcdctl(b))).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "endpoint hashkv differs between banks: {hashes:?}");
    let log = std::fs::read_to_string(chain.banks[1].sidecar.stderr_log()).unwrap();
    assert!(log.contains("the local etcd is ahead of the ledger"), "the crash left etcd ahead: {log}");
    let now = bftcd_sequencer::LedgerFile::scan(&ledger, |_, _| Ok(())).unwrap().blocks.len();
    assert!(now > before, "the ledger caught up: {before} blocks before, {now} now");
    verify_ledgers(&chain, &dir);
}
