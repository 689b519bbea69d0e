//! Migration from a Raft etcd cluster (docs/migration.md, "From a snapshot"), with the commands
//! an operator types: a stock three-member cluster holding 10,000 keys (rewritten, deleted) and
//! live leases; `etcdctl snapshot save`; `bftcd keygen`, `bftcd genesis --initial-snapshot`,
//! `genesis sign`, `bftcd restore` for each bank, stock etcds and sidecars. Every key (value,
//! version, create and mod revision, lease) and every lease (ID, TTL, keys) is the Raft
//! cluster's; writes then work and every bank's HashKV agrees; a lease from the snapshot lives
//! on by a client's keepalive while another ends by the chain's expiry; a bank restored from
//! another snapshot refuses to start, saying why.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bftcd_proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, request_op, DeleteRangeRequest, LeaseGrantRequest, LeaseLeasesRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use bftcd_proto::mvccpb::KeyValue;
use bftcd_tests::kv::hashkv;
use bftcd_tests::bins::{bftcd_ok as ok, run_bftcd as bftcd, strings};
use bftcd_tests::sidecar::BANK_ETCD_ARGS;
use bftcd_tests::{bftcd_bin, free_port, EtcdCluster, EtcdProcess, Etcdctl, Etcdutl, Sidecar, TestDir};
use tonic::transport::Channel;

const KEYS: usize = 10_000;
/// Both imported leases' TTL: one is kept alive by a client, the other ends by the chain.
const LEASE_TTL: i64 = 30;

fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(format!("http://{endpoint}")).unwrap().timeout(Duration::from_secs(30)).connect_lazy()
}

fn kv(endpoint: &str) -> KvClient<Channel> {
    KvClient::new(channel(endpoint)).max_decoding_message_size(64 << 20)
}

fn leases(endpoint: &str) -> LeaseClient<Channel> {
    LeaseClient::new(channel(endpoint))
}

fn put(key: String, value: String, lease: i64) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestPut(PutRequest { key: key.into(), value: value.into(), lease, ..Default::default() })) }
}

fn delete(key: String) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest { key: key.into(), ..Default::default() })) }
}

async fn txn(endpoint: &str, ops: Vec<RequestOp>) {
    for chunk in ops.chunks(100) {
        kv(endpoint).txn(TxnRequest { success: chunk.to_vec(), ..Default::default() }).await.unwrap();
    }
}

/// Every key at `revision` (0: the current one), in key order.
async fn all_keys(endpoint: &str, revision: i64) -> Vec<KeyValue> {
    let r = RangeRequest { key: vec![0], range_end: vec![0], revision, ..Default::default() };
    kv(endpoint).range(r).await.unwrap().into_inner().kvs
}

async fn count(endpoint: &str, prefix: &str, serializable: bool) -> i64 {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let r = RangeRequest { key: prefix.into(), range_end: end, count_only: true, serializable, ..Default::default() };
    kv(endpoint).range(r).await.unwrap().into_inner().count
}

/// Every lease: ID -> (granted TTL, attached keys).
async fn lease_table(endpoint: &str) -> BTreeMap<i64, (i64, Vec<Vec<u8>>)> {
    let ids = leases(endpoint).lease_leases(LeaseLeasesRequest {}).await.unwrap().into_inner().leases;
    let mut out = BTreeMap::new();
    for l in ids {
        let t = leases(endpoint).lease_time_to_live(LeaseTimeToLiveRequest { id: l.id, keys: true }).await.unwrap().into_inner();
        let mut keys = t.keys;
        keys.sort();
        out.insert(l.id, (t.granted_ttl, keys));
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `bftcd restore` of `snapshot` into a (stopped) bank etcd's data directory.
fn restore(genesis: &Path, snapshot: &Path, etcd: &EtcdProcess) -> (bool, String, String) {
    bftcd(&[
        "restore".into(),
        format!("--genesis={}", genesis.display()),
        format!("--snapshot={}", snapshot.display()),
        format!("--data-dir={}", etcd.data_dir().display()),
        format!("--name={}", etcd.name()),
        format!("--peer-url={}", etcd.peer_url()),
    ])
}

#[test]
fn a_raft_cluster_moves_into_a_four_bank_chain_from_its_snapshot() {
    let dir = TestDir::new("migration");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // 1. The Raft cluster being migrated: 10,000 keys, some rewritten, some deleted; two leases
    // with keys attached.
    let raft = EtcdCluster::start(&dir, 3);
    let source = raft.member(0).endpoint();
    let key = |i: usize| format!("/app/{i:05}");
    let (lease_a, lease_b) = rt.block_on(async {
        txn(&source, (0..KEYS).map(|i| put(key(i), format!("v{i}-0"), 0)).collect()).await;
        for round in 1..=2 {
            txn(&source, (0..KEYS).filter(|i| i % 7 == 0 || (round == 1 && i % 5 == 0)).map(|i| put(key(i), format!("v{i}-{round}"), 0)).collect()).await;
        }
        txn(&source, (0..KEYS).filter(|i| i % 11 == 0).map(|i| delete(key(i))).collect()).await;
        let mut ids = Vec::new();
        for _ in 0..2 {
            ids.push(leases(&source).lease_grant(LeaseGrantRequest { ttl: LEASE_TTL, id: 0 }).await.unwrap().into_inner().id);
        }
        let (a, b) = (ids[0], ids[1]);
        txn(&source, (0..5).flat_map(|i| [put(format!("/leased/a/{i}"), "a".into(), a), put(format!("/leased/b/{i}"), "b".into(), b)]).collect()).await;
        (a, b)
    });
    let snapshot = dir.join("raft.db");
    Etcdctl::new(&source).run(&["snapshot", "save", &snapshot.display().to_string()]).expect_success();
    let (raft_keys, raft_leases) = rt.block_on(async { (all_keys(&source, 0).await, lease_table(&source).await) });
    let status = Etcdutl::new().run(&["snapshot", "status", &snapshot.display().to_string(), "-w", "json"]);
    let revision = serde_json::from_str::<serde_json::Value>(status.expect_success().trim()).unwrap()["revision"].as_i64().unwrap();
    // One more write, and a second snapshot: not the one the chain starts from.
    Etcdctl::new(&source).run(&["put", "/app/late", "x"]).expect_success();
    let other_snapshot = dir.join("other.db");
    Etcdctl::new(&source).run(&["snapshot", "save", &other_snapshot.display().to_string()]).expect_success();
    assert!(rt.block_on(all_keys(&source, revision)) == raft_keys, "the snapshot's revision is the one read");
    assert_eq!(raft_keys.len(), KEYS - KEYS.div_ceil(11) + 10);
    assert!(raft_keys.iter().any(|k| k.version == 3) && raft_keys.iter().any(|k| k.version == 2));
    assert_eq!(raft_leases.len(), 2);
    drop(raft);

    // 2. The banks' keys, and the genesis from the snapshot, built twice (as two banks would).
    let client_ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let peer_ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let keys = |i: usize| dir.join(format!("keys/bank{}", i + 1));
    for i in 0..4 {
        ok(&strings(&[
            "keygen",
            &format!("--name=bank{}", i + 1),
            &format!("--dir={}", keys(i).display()),
            &format!("--peer-address=127.0.0.1:{}", peer_ports[i]),
            &format!("--client-address=127.0.0.1:{}", client_ports[i]),
        ]));
    }
    let genesis_time = now_ms();
    let build = |out: &Path| {
        let mut args = strings(&["genesis", "--chain-id=migrated", &format!("--genesis-time={genesis_time}")]);
        args.push(format!("--initial-snapshot={}", snapshot.display()));
        args.push(format!("--out={}", out.display()));
        args.extend((0..4).map(|i| keys(i).join("validator.pb").display().to_string()));
        ok(&args)
    };
    let genesis = dir.join("genesis.pb");
    let said = build(&genesis);
    assert!(said.contains(&format!("revision {revision}, {} keys, 2 leases (10 keys attached)", raft_keys.len())), "{said}");
    build(&dir.join("again.pb"));
    assert_eq!(std::fs::read(&genesis).unwrap(), std::fs::read(dir.join("again.pb")).unwrap(), "the genesis is a function of its inputs");
    let shown: serde_json::Value = serde_json::from_str(&ok(&strings(&["genesis", "show", "--json", &genesis.display().to_string()]))).unwrap();
    let digest = shown["initial_state"]["state_digest"].as_str().unwrap().to_string();
    assert_eq!(shown["initial_state"]["revision"].as_i64(), Some(revision));
    let verified = Command::new(bftcd_bin().with_file_name("bftcd-verify")).args(["--json", "genesis", &genesis.display().to_string()]).output().unwrap();
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
    let sigs = dir.join("genesis.sigs");
    std::fs::create_dir_all(&sigs).unwrap();
    for i in 0..4 {
        ok(&strings(&[
            "genesis",
            "sign",
            &format!("--genesis={}", genesis.display()),
            &format!("--keys={}", keys(i).display()),
            &format!("--out={}", sigs.join(format!("bank{}.sig", i + 1)).display()),
        ]));
    }

    // 3. Each bank's etcd from the snapshot, then its sidecar.
    let serve_args = |i: usize| vec![format!("--genesis={}", genesis.display()), format!("--keys={}", keys(i).display()), "--write-timeout=20s".to_string()];
    let start_sidecar = |i: usize, etcd: &EtcdProcess| {
        let args = serve_args(i);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        Sidecar::try_start_spec(&dir, &format!("bank{}", i + 1), &etcd.endpoint(), Some(client_ports[i]), None, &args)
    };
    let mut etcds = Vec::new();
    let mut sidecars = Vec::new();
    for i in 0..3 {
        let mut etcd = EtcdProcess::start_with_args(&dir, &format!("bank{}-etcd", i + 1), BANK_ETCD_ARGS);
        etcd.stop();
        std::fs::remove_dir_all(etcd.data_dir()).unwrap();
        let (restored, out, err) = restore(&genesis, &snapshot, &etcd);
        assert!(restored, "{err}");
        assert!(out.contains("matches the genesis"), "{out}");
        etcd.restart();
        sidecars.push(start_sidecar(i, &etcd).unwrap_or_else(|e| panic!("{e}")));
        etcds.push(etcd);
    }
    let etcds_started = Instant::now();

    // Bank 4 first gets the other snapshot: `bftcd restore` refuses it; restored behind its
    // back, the sidecar refuses to start, naming both digests.
    let mut etcd4 = EtcdProcess::start_with_args(&dir, "bank4-etcd", BANK_ETCD_ARGS);
    etcd4.stop();
    std::fs::remove_dir_all(etcd4.data_dir()).unwrap();
    let (restored, _, err) = restore(&genesis, &other_snapshot, &etcd4);
    assert!(!restored && err.contains("is not the snapshot this genesis starts from"), "{err}");
    let (data_dir, peer) = (etcd4.data_dir().display().to_string(), etcd4.peer_url());
    Etcdutl::new()
        .run(&["snapshot", "restore", &other_snapshot.display().to_string(), "--data-dir", &data_dir, "--name", etcd4.name(), "--initial-cluster", &format!("{}={peer}", etcd4.name()), "--initial-advertise-peer-urls", &peer])
        .expect_success();
    etcd4.restart();
    let refused = match start_sidecar(3, &etcd4) {
        Ok(_) => panic!("bank 4 started on an etcd restored from another snapshot"),
        Err(e) => e,
    };
    assert!(refused.contains("the local etcd does not hold the state this chain starts from"), "{refused}");
    assert!(refused.contains(&format!("the genesis's is {digest} (revision {revision})")), "{refused}");
    assert!(refused.contains(&format!("revision {}", revision + 1)) && refused.contains("bftcd restore --genesis"), "{refused}");
    etcd4.stop();
    std::fs::remove_dir_all(etcd4.data_dir()).unwrap();
    assert!(restore(&genesis, &snapshot, &etcd4).0);
    etcd4.restart();
    sidecars.push(start_sidecar(3, &etcd4).unwrap_or_else(|e| panic!("{e}")));
    etcds.push(etcd4);
    let endpoints: Vec<String> = sidecars.iter().map(|s| s.endpoint()).collect();

    // 4. Every bank holds exactly the Raft cluster's keys and leases at the snapshot.
    rt.block_on(async {
        for (i, ep) in endpoints.iter().enumerate() {
            let kvs = all_keys(ep, revision).await;
            assert_eq!(kvs.len(), raft_keys.len(), "bank {}", i + 1);
            assert!(kvs == raft_keys, "bank {}: keys differ from the Raft cluster's", i + 1);
            assert_eq!(lease_table(ep).await, raft_leases, "bank {}", i + 1);
        }
    });

    // 5. A client keeps lease B alive through bank 2; lease A is left to the chain.
    let keepalive = Etcdctl::new(&endpoints[1]).spawn_for(&["lease", "keep-alive", &format!("{lease_b:x}")], Duration::from_secs(150));

    // 6. Writes through every sidecar; every bank ends with the same HashKV.
    rt.block_on(async {
        for (i, ep) in endpoints.iter().enumerate() {
            txn(ep, vec![put(format!("/after/{i}"), "w".into(), 0), put(key(1), "rewritten".into(), 0)]).await;
        }
    });
    let mut hashes = Vec::new();
    wait_until("every bank's HashKV to agree", Duration::from_secs(30), || {
        hashes = endpoints.iter().map(|ep| hashkv(&Etcdctl::new(ep))).collect::<Vec<_>>();
        hashes.iter().all(|h| *h == hashes[0])
    });
    assert!(hashes[0].1 > revision, "applying continues from the snapshot's revision");
    let written = rt.block_on(all_keys(&endpoints[3], 0));
    let find = |kvs: &[KeyValue]| kvs.iter().find(|kv| kv.key == key(1).as_bytes()).unwrap().clone();
    let (k1, was) = (find(&written), find(&raft_keys));
    assert_eq!((k1.version, k1.create_revision), (was.version + 4, was.create_revision), "a key from the snapshot written four times");

    // 7. Lease A ends by the chain (its keys vanish on every bank, in the sidecars and in the
    // etcds); lease B, kept alive, outlives it and the etcds' own TTL.
    wait_until("lease A to expire on every bank", Duration::from_secs(90), || {
        rt.block_on(async {
            let mut gone = true;
            for (ep, etcd) in endpoints.iter().zip(&etcds) {
                gone &= count(ep, "/leased/a/", false).await == 0 && count(&etcd.endpoint(), "/leased/a/", true).await == 0;
            }
            gone
        })
    });
    assert!(now_ms() >= genesis_time + LEASE_TTL as u64 * 1000, "expired before the agreed deadline");
    let local_ttl_over = etcds_started + Duration::from_secs(LEASE_TTL as u64 + 5);
    if let Some(rest) = local_ttl_over.checked_duration_since(Instant::now()) {
        std::thread::sleep(rest);
    }
    rt.block_on(async {
        for (ep, etcd) in endpoints.iter().zip(&etcds) {
            assert_eq!(count(ep, "/leased/b/", false).await, 5, "{ep}: lease B's keys");
            assert_eq!(count(&etcd.endpoint(), "/leased/b/", true).await, 5, "{}: lease B's keys in the etcd", etcd.endpoint());
            let a = leases(ep).lease_time_to_live(LeaseTimeToLiveRequest { id: lease_a, keys: false }).await.unwrap().into_inner();
            assert_eq!(a.ttl, -1, "{ep}: lease A");
            let b = leases(ep).lease_time_to_live(LeaseTimeToLiveRequest { id: lease_b, keys: false }).await.unwrap().into_inner();
            assert!(b.ttl > 0 && b.granted_ttl == LEASE_TTL, "{ep}: lease B {b:?}");
        }
    });
    drop(keepalive);
    let mut hashes = Vec::new();
    wait_until("every bank's HashKV to agree after the expiry", Duration::from_secs(30), || {
        hashes = endpoints.iter().map(|ep| hashkv(&Etcdctl::new(ep))).collect::<Vec<_>>();
        hashes.iter().all(|h| *h == hashes[0])
    });

    // 8. An auditor replays bank 1's ledger from the snapshot: every certified digest, the first
    // one included, is what the snapshot and the ledger give.
    for s in &mut sidecars {
        s.stop();
    }
    let bank_hash = hashkv(&Etcdctl::new(etcds[0].endpoint()));
    let ledger = dir.join("bank1/ledger.log");
    let verify = |extra: &[&str]| {
        let mut cmd = Command::new(bftcd_bin().with_file_name("bftcd-verify"));
        cmd.args(["--json", "replay", &ledger.display().to_string(), "--genesis", &genesis.display().to_string()]).args(extra);
        let out = cmd.output().unwrap();
        (out.status.success(), serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default())
    };
    let (replayed, j) = verify(&["--initial-snapshot", &snapshot.display().to_string()]);
    assert!(replayed, "{j}");
    assert!(j["compared"].as_u64().unwrap() >= 1 && j["matched"] == j["compared"] && j["mismatch"].is_null(), "{j}");
    assert_eq!((j["hash_kv"].as_i64(), j["final_revision"].as_i64()), (Some(bank_hash.0), Some(bank_hash.1)), "{j}");
    let (replayed, j) = verify(&[]);
    assert!(!replayed && j.to_string().contains("pass it with --initial-snapshot FILE"), "{j}");
}

/// `bftcd genesis --initial-snapshot` refuses what a chain cannot represent, saying what to do:
/// a store with auth enabled, one holding users, and a BFTcd bank's own etcd.
#[test]
fn snapshots_a_chain_cannot_take_over_are_refused() {
    let dir = TestDir::new("migration-refused");
    let keys = dir.join("keys");
    ok(&strings(&["keygen", "--name=bank1", &format!("--dir={}", keys.display()), "--peer-address=127.0.0.1:1", "--client-address=127.0.0.1:2"]));
    let genesis = |snapshot: &Path| {
        bftcd(&[
            "genesis".into(),
            "--chain-id=refused".into(),
            "--genesis-time=2026-12-01T00:00:00Z".into(),
            format!("--initial-snapshot={}", snapshot.display()),
            format!("--out={}", dir.join("genesis.pb").display()),
            keys.join("validator.pb").display().to_string(),
        ])
    };
    let save = |etcdctl: &Etcdctl, name: &str| {
        let path = dir.join(name);
        etcdctl.run(&["snapshot", "save", &path.display().to_string()]).expect_success();
        path
    };

    let garbage = dir.join("garbage.db");
    std::fs::write(&garbage, b"not a snapshot").unwrap();
    let (made, _, err) = genesis(&garbage);
    assert!(!made && err.contains("is not an etcd snapshot"), "{err}");
    let (made, _, err) = genesis(&dir.join("missing.db"));
    assert!(!made && err.contains("missing.db"), "{err}");

    let etcd = EtcdProcess::start(&dir, "plain");
    let ctl = Etcdctl::new(etcd.endpoint());
    ctl.put("/k", "v");
    ctl.run(&["user", "add", "alice:secret"]).expect_success();
    let (made, _, err) = genesis(&save(&ctl, "users.db"));
    assert!(!made && err.contains("the snapshot holds etcd users (alice)"), "{err}");
    ctl.run(&["user", "add", "root:secret"]).expect_success();
    ctl.run(&["user", "grant-role", "root", "root"]).expect_success();
    ctl.run(&["auth", "enable"]).expect_success();
    let (made, _, err) = genesis(&save(&ctl.clone().with_global_arg("--user=root:secret"), "auth.db"));
    assert!(!made && err.contains("the snapshot's etcd has auth enabled") && err.contains("etcdctl auth disable"), "{err}");
    drop(etcd);

    // A bank's etcd holds the sidecar's bookkeeping under the reserved prefix.
    let bank = EtcdProcess::start_with_args(&dir, "bank-etcd", BANK_ETCD_ARGS);
    let sidecar = Sidecar::start(&dir, "bank", &bank.endpoint());
    Etcdctl::new(sidecar.endpoint()).put("/k", "v");
    let (made, _, err) = genesis(&save(&Etcdctl::new(bank.endpoint()), "bank.db"));
    assert!(!made && err.contains("keys under the sidecar's reserved prefix") && err.contains("not a Raft"), "{err}");
    assert!(!dir.join("genesis.pb").exists(), "no genesis is written for a refused snapshot");
}
