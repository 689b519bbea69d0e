//! The genesis ceremony without a trusted party, with the real commands: four banks make their
//! own keys in their own directories, exchange descriptors, each builds the genesis itself and
//! gets the same bytes, each signs, and the chain starts only on a genesis every bank signed.
//! A bank with another genesis can neither start on it alone nor talk to the others.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bftcd_tests::bins::{bftcd_ok as ok, run_bftcd as bftcd, strings};
use bftcd_tests::sidecar::BANK_ETCD_ARGS;
use bftcd_tests::{bftcd_bin, free_port, EtcdProcess, Etcdctl, Sidecar, TestDir};

const GENESIS_TIME: &str = "2026-12-01T00:00:00Z";

/// `bftcd genesis` at one bank, from the descriptors in its own directory.
fn build(bank: &Path, out: &Path, extra: &[&str]) {
    let mut args = strings(&[
        "genesis",
        "--chain-id=ceremony",
        &format!("--genesis-time={GENESIS_TIME}"),
    ]);
    args.push(format!("--out={}", out.display()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend((1..=4).map(|j| {
        bank.join(format!("descriptors/bank{j}.pb"))
            .display()
            .to_string()
    }));
    ok(&args);
}

fn sign(genesis: &Path, keys: &Path, out: &Path) {
    ok(&strings(&[
        "genesis",
        "sign",
        &format!("--genesis={}", genesis.display()),
        &format!("--keys={}", keys.display()),
        &format!("--out={}", out.display()),
    ]));
}

/// The hash `bftcd genesis show --json` prints.
fn shown_hash(genesis: &Path) -> String {
    let out = ok(&strings(&[
        "genesis",
        "show",
        "--json",
        &genesis.display().to_string(),
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["genesis_hash"].as_str().unwrap().to_string()
}

/// The body of one plain HTTP/1.1 GET.
fn http_get_body(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

fn serve_args(bank: &Path, genesis: &Path) -> Vec<String> {
    vec![
        format!("--genesis={}", genesis.display()),
        format!("--keys={}", bank.join("keys").display()),
        "--write-timeout=20s".to_string(),
    ]
}

fn start(
    dir: &TestDir,
    name: &str,
    etcd: &EtcdProcess,
    client_port: u16,
    args: &[String],
) -> Result<Sidecar, String> {
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    Sidecar::try_start_spec(dir, name, &etcd.endpoint(), Some(client_port), None, &args)
}

fn wait_for_log(path: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never logged {needle:?}; log ends:\n{}",
            path.display(),
            bftcd_tests::log_tail(path, 20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn four_banks_agree_on_a_genesis_without_a_trusted_party() {
    let dir = TestDir::new("ceremony");
    let client_ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let peer_ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    // Each bank's own directory: its keys, the descriptors it received, its genesis.
    let banks: Vec<PathBuf> = (1..=4)
        .map(|i| dir.join(format!("ceremony/bank{i}")))
        .collect();

    // 1. Keys, each bank alone; no CA anywhere.
    for (i, bank) in banks.iter().enumerate() {
        let out = ok(&strings(&[
            "keygen",
            &format!("--name=bank{}", i + 1),
            &format!("--dir={}", bank.join("keys").display()),
            &format!("--peer-address=127.0.0.1:{}", peer_ports[i]),
            &format!("--client-address=127.0.0.1:{}", client_ports[i]),
        ]));
        assert!(out.contains("TLS certificate"), "{out}");
        assert!(!bank.join("keys/ca.crt").exists());
    }
    let (refused, _, stderr) = bftcd(&strings(&[
        "keygen",
        "--name=late",
        &format!("--dir={}", dir.join("late").display()),
        &format!("--ca-dir={}", dir.join("ca").display()),
        "--peer-address=127.0.0.1:1",
        "--client-address=127.0.0.1:2",
    ]));
    assert!(
        !refused && stderr.contains("no shared CA any more"),
        "{stderr}"
    );

    // 2. Descriptors exchanged (copied), 3. each bank builds the genesis itself.
    for bank in &banks {
        std::fs::create_dir_all(bank.join("descriptors")).unwrap();
        for (j, from) in banks.iter().enumerate() {
            std::fs::copy(
                from.join("keys/validator.pb"),
                bank.join(format!("descriptors/bank{}.pb", j + 1)),
            )
            .unwrap();
        }
        build(bank, &bank.join("genesis.pb"), &[]);
    }
    let bytes: Vec<Vec<u8>> = banks
        .iter()
        .map(|b| std::fs::read(b.join("genesis.pb")).unwrap())
        .collect();
    assert!(
        bytes.iter().all(|b| *b == bytes[0]),
        "the banks built different genesis files"
    );
    let hashes: Vec<String> = banks
        .iter()
        .map(|b| shown_hash(&b.join("genesis.pb")))
        .collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]));
    let hash = hashes[0].clone();
    assert_eq!(hash.len(), 64);
    // The same hash the auditor's tool (and every ledger) uses.
    let verified = Command::new(bftcd_bin().with_file_name("bftcd-verify"))
        .args([
            "--json",
            "genesis",
            &banks[0].join("genesis.pb").display().to_string(),
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(v["genesis_hash"].as_str(), Some(hash.as_str()));
    // The genesis time is an input, not the clock: a later build is byte-identical.
    build(&banks[0], &dir.join("again.pb"), &[]);
    assert_eq!(std::fs::read(dir.join("again.pb")).unwrap(), bytes[0]);

    // 4. Each bank signs its own genesis; the signature files are exchanged, but bank 4's has
    // not reached bank 1 yet.
    for (i, bank) in banks.iter().enumerate() {
        sign(
            &bank.join("genesis.pb"),
            &bank.join("keys"),
            &bank.join(format!("bank{}.sig", i + 1)),
        );
    }
    for bank in &banks {
        std::fs::create_dir_all(bank.join("genesis.sigs")).unwrap();
        for (j, from) in banks.iter().enumerate() {
            let name = format!("bank{}.sig", j + 1);
            if !(bank == &banks[0] && j == 3) {
                std::fs::copy(from.join(&name), bank.join("genesis.sigs").join(&name)).unwrap();
            }
        }
    }
    let etcds: Vec<EtcdProcess> = (1..=4)
        .map(|i| EtcdProcess::start_with_args(&dir, &format!("bank{i}-etcd"), BANK_ETCD_ARGS))
        .collect();
    let err = start(
        &dir,
        "bank1",
        &etcds[0],
        client_ports[0],
        &serve_args(&banks[0], &banks[0].join("genesis.pb")),
    )
    .err()
    .expect("bank1 started without bank4's signature");
    let log = bftcd_tests::log_tail(&dir.join("bank1.stderr.log"), 5);
    assert!(
        log.contains(&format!("no signature of bank bank4 over genesis {hash}")),
        "{err}\n{log}"
    );
    std::fs::copy(
        banks[3].join("bank4.sig"),
        banks[0].join("genesis.sigs/bank4.sig"),
    )
    .unwrap();
    // An auditor checks the same signatures offline.
    let audit = |sigs: &Path| {
        Command::new(bftcd_bin().with_file_name("bftcd-verify"))
            .args([
                "genesis",
                &banks[0].join("genesis.pb").display().to_string(),
                &format!("--signatures={}", sigs.display()),
            ])
            .output()
            .unwrap()
    };
    let audited = audit(&banks[0].join("genesis.sigs"));
    assert!(
        audited.status.success(),
        "{}",
        String::from_utf8_lossy(&audited.stderr)
    );
    assert!(String::from_utf8_lossy(&audited.stdout)
        .contains("every bank's signature over this genesis verified"));
    let three = dir.join("three.sigs");
    std::fs::create_dir_all(&three).unwrap();
    for j in 1..=3 {
        std::fs::copy(
            banks[0].join(format!("genesis.sigs/bank{j}.sig")),
            three.join(format!("bank{j}.sig")),
        )
        .unwrap();
    }
    let audited = audit(&three);
    assert!(!audited.status.success());
    assert!(
        String::from_utf8_lossy(&audited.stderr).contains("no signature of bank bank4"),
        "{}",
        String::from_utf8_lossy(&audited.stderr)
    );

    // 5. Bank 4 changes the genesis on its own (a smaller limit) and signs that: it holds no
    // one else's signature over it, so it cannot start on it.
    let changed = banks[3].join("changed.pb");
    build(&banks[3], &changed, &["--max-txn-ops=64"]);
    let changed_hash = shown_hash(&changed);
    assert_ne!(changed_hash, hash);
    let changed_sigs = banks[3].join("changed.sigs");
    std::fs::create_dir_all(&changed_sigs).unwrap();
    sign(
        &changed,
        &banks[3].join("keys"),
        &changed_sigs.join("bank4.sig"),
    );
    for j in 1..=3 {
        std::fs::copy(
            banks[3].join(format!("genesis.sigs/bank{j}.sig")),
            changed_sigs.join(format!("bank{j}.sig")),
        )
        .unwrap();
    }
    let (sealed, _, stderr) = bftcd(&strings(&[
        "genesis",
        "seal",
        &format!("--genesis={}", changed.display()),
        &format!("--out={}", dir.join("changed-sealed.sigs").display()),
        &changed_sigs.display().to_string(),
    ]));
    assert!(
        !sealed && stderr.contains("no signature of bank bank1, bank2, bank3"),
        "{stderr}"
    );
    let err = start(
        &dir,
        "bank4",
        &etcds[3],
        client_ports[3],
        &serve_args(&banks[3], &changed),
    )
    .err()
    .expect("bank4 started on a genesis only it signed");
    let log = bftcd_tests::log_tail(&dir.join("bank4.stderr.log"), 5);
    assert!(
        log.contains("no signature of bank bank1, bank2, bank3"),
        "{err}\n{log}"
    );
    // `seal` of the real signatures makes one file any bank can serve with.
    let sealed_out = ok(&strings(&[
        "genesis",
        "seal",
        &format!("--genesis={}", banks[3].join("genesis.pb").display()),
        &format!("--out={}", banks[3].join("sealed.sigs").display()),
        &banks[3].join("genesis.sigs").display().to_string(),
    ]));
    assert!(
        sealed_out.contains(&format!("all 4 banks signed genesis {hash}")),
        "{sealed_out}"
    );

    // 6. Banks 1 to 3 start on the signed genesis (a quorum of four).
    let mut sidecars = Vec::new();
    let metrics1 = format!("127.0.0.1:{}", free_port());
    for i in 0..3 {
        let name = format!("bank{}", i + 1);
        let mut args = serve_args(&banks[i], &banks[i].join("genesis.pb"));
        if i == 0 {
            args.push(format!("--listen-metrics-urls=http://{metrics1}"));
        }
        let sc = start(&dir, &name, &etcds[i], client_ports[i], &args)
        .unwrap_or_else(|e| panic!("{e}"));
        sidecars.push(sc);
    }

    // 7. Were bank 4 started on another genesis every bank signed (say an earlier draft with
    // another chain id), the others refuse its connections, and it theirs.
    let odd_dir = TestDir::new("ceremony-odd");
    let draft = banks[3].join("draft.pb");
    let mut args = strings(&[
        "genesis",
        "--chain-id=ceremony-draft",
        &format!("--genesis-time={GENESIS_TIME}"),
        &format!("--out={}", draft.display()),
    ]);
    args.extend((1..=4).map(|j| {
        banks[3]
            .join(format!("descriptors/bank{j}.pb"))
            .display()
            .to_string()
    }));
    ok(&args);
    let draft_hash = shown_hash(&draft);
    std::fs::create_dir_all(banks[3].join("draft.sigs")).unwrap();
    for (j, bank) in banks.iter().enumerate() {
        sign(
            &draft,
            &bank.join("keys"),
            &banks[3].join(format!("draft.sigs/bank{}.sig", j + 1)),
        );
    }
    let odd_etcd = EtcdProcess::start_with_args(&odd_dir, "bank4-etcd", BANK_ETCD_ARGS);
    let mut odd = start(
        &odd_dir,
        "bank4",
        &odd_etcd,
        client_ports[3],
        &serve_args(&banks[3], &draft),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_log(
        &dir.join("bank1.stderr.log"),
        &format!("peer bank4 has genesis {draft_hash}, this bank has {hash}: refusing"),
    );
    wait_for_log(
        &odd_dir.join("bank4.stderr.log"),
        &format!("peer bank1 has genesis {hash}, this bank has {draft_hash}: refusing"),
    );
    assert!(odd.is_running(), "a genesis mismatch must not crash a bank");
    // Bank 1's operator sees it in the metrics too (sampled every second).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = http_get_body(&metrics1, "/metrics");
        let n = body
            .lines()
            .find_map(|l| l.strip_prefix("bftcd_peer_genesis_mismatches_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if n >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no genesis mismatch counted by bank 1:\n{body}");
        std::thread::sleep(Duration::from_millis(300));
    }
    odd.stop();
    drop(odd);
    assert!(sidecars.iter_mut().all(|s| s.is_running()));

    // 8. Bank 4 on the real genesis (its signatures in one sealed file) joins; a write at bank 1
    // is read at bank 3 and at bank 4.
    let mut args = serve_args(&banks[3], &banks[3].join("genesis.pb"));
    args.push(format!(
        "--genesis-signatures={}",
        banks[3].join("sealed.sigs").display()
    ));
    sidecars.push(
        start(&dir, "bank4", &etcds[3], client_ports[3], &args).unwrap_or_else(|e| panic!("{e}")),
    );
    let ctl = |i: usize| Etcdctl::new(sidecars[i].endpoint());
    ctl(0).run(&["put", "ceremony", "done"]).expect_success();
    let got = ctl(2).run(&["get", "ceremony", "--print-value-only"]);
    assert_eq!(got.expect_success().trim(), "done");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = ctl(3).run(&["get", "ceremony", "--print-value-only"]);
        if got.success() && got.stdout.trim() == "done" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bank4 never read the write: {} {}",
            got.stdout,
            got.stderr
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
