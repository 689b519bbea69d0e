//! `bftcd dev-cluster`, as a user runs it: four banks on loopback, one READY line, writes through
//! one bank readable at another, and SIGTERM stops every child and exits 0.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bftcd_tests::{bftcd_bin, Etcdctl, TestDir};

/// A base port whose whole dev-cluster range (P+1.., P+101.., P+201.., P+301.., P+401..) is
/// free now.
fn free_base(banks: u16) -> u16 {
    for attempt in 0..200u16 {
        // 500 apart per process: a whole range spans P+1..P+404, so neighbours must not overlap.
        // Below the kernel's ephemeral ports (32768 on), which running processes' outgoing
        // connections take at any moment.
        let base = (10_000 + (std::process::id() % 79 * 500 + attempt as u32 * 497) % 22_000) as u16;
        let range: Vec<u16> = (1..=banks).flat_map(|i| [base + i, base + 100 + i, base + 200 + i, base + 300 + i, base + 400 + i]).collect();
        // Reserved as the harness reserves its ports, so that no other test (nor another
        // dev-cluster test) is handed one of them meanwhile.
        let reserved: Vec<u16> = range.iter().copied().take_while(|&p| bftcd_tests::ports::reserve_port(p)).collect();
        if reserved.len() == range.len() {
            return base;
        }
        for p in reserved {
            bftcd_tests::ports::release_port(p);
        }
    }
    panic!("no free port range for dev-cluster");
}

#[test]
fn dev_cluster_serves_and_stops_cleanly() {
    let dir = TestDir::new("dev-cluster");
    let base = free_base(4);
    let (mut child, _lines, endpoints, metrics) = start(&dir, base, &dir.join("cluster"), &[]);
    assert_eq!(endpoints[0], format!("127.0.0.1:{}", base + 1));
    // Every bank's metrics listener, at the documented ports, says ready and serves metrics.
    for (i, url) in metrics.iter().enumerate() {
        assert_eq!(*url, format!("http://127.0.0.1:{}", base + 401 + i as u16));
        let addr = url.strip_prefix("http://").unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(addr, "/readyz") != (200, "ok\n".to_string()) {
            assert!(Instant::now() < deadline, "bank {} not ready: {:?}", i + 1, http_get(addr, "/readyz?verbose"));
            std::thread::sleep(Duration::from_millis(200));
        }
        let (code, body) = http_get(addr, "/metrics");
        assert_eq!(code, 200);
        assert!(body.contains("etcd_server_has_leader 1"), "bank {}: {body}", i + 1);
    }

    Etcdctl::new(&endpoints[0]).run(&["put", "hello", "world"]).expect_success();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Etcdctl::new(&endpoints[2]).get_value("hello").as_deref() != Some("world") {
        assert!(Instant::now() < deadline, "bank 3 never served bank 1's write");
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM: every bank stops, the command exits 0, nothing keeps listening.
    stop(&mut child);
    for i in 1..=4u16 {
        for p in [base + i, base + 100 + i, base + 300 + i, base + 400 + i] {
            assert!(TcpListener::bind(("127.0.0.1", p)).is_ok(), "port {p} still in use after shutdown");
        }
    }
}

/// `--client-tls`: certificates in DIR/clients, every bank on https with client certificate
/// auth, and the printed etcdctl line works as printed.
#[test]
fn dev_cluster_client_tls_prints_a_working_etcdctl_line() {
    let dir = TestDir::new("dev-cluster-tls");
    let base = free_base(4);
    let cluster = dir.join("cluster");
    let (mut child, mut lines, endpoints, _) = start(&dir, base, &cluster, &["--client-tls"]);
    assert_eq!(endpoints[0], format!("https://127.0.0.1:{}", base + 1));
    let line = lines.next().expect("an etcdctl line").unwrap();

    let clients = cluster.join("clients");
    let mut files = vec!["ca.pem".to_string(), "admin.pem".into(), "admin-key.pem".into()];
    for i in 1..=4 {
        files.extend([format!("bank{i}.pem"), format!("bank{i}-key.pem"), format!("bank{i}-server.pem"), format!("bank{i}-server-key.pem")]);
    }
    for f in &files {
        let meta = std::fs::metadata(clients.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        if f.ends_with("-key.pem") {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(meta.permissions().mode() & 0o077, 0, "{f} must be private");
        }
    }

    // The line as printed: ETCDCTL_API=3 etcdctl <flags>.
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&words[..2], ["ETCDCTL_API=3", "etcdctl"], "{line}");
    assert!(line.contains(&format!("--endpoints={}", endpoints.join(","))), "{line}");
    let etcdctl = |args: &[&str]| {
        let out = Command::new(bftcd_tests::etcdctl_bin()).env("ETCDCTL_API", "3").args(&words[2..]).args(args).output().unwrap();
        assert!(out.status.success(), "{line} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    etcdctl(&["put", "hello", "tls"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let bank3: Vec<&str> = words[2..].iter().map(|w| if w.starts_with("--endpoints=") { "" } else { *w }).collect();
    loop {
        let out = Command::new(bftcd_tests::etcdctl_bin())
            .env("ETCDCTL_API", "3")
            .args(bank3.iter().filter(|w| !w.is_empty()))
            .arg(format!("--endpoints={}", endpoints[2]))
            .args(["get", "hello", "--print-value-only"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == "tls" {
            break;
        }
        assert!(Instant::now() < deadline, "bank 3 never served bank 1's write");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Without a certificate a bank refuses the client.
    let out = Command::new(bftcd_tests::etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints[0]))
        .arg(format!("--cacert={}", clients.join("ca.pem").display()))
        .args(["--dial-timeout=3s", "--command-timeout=5s", "get", "hello"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a client without a certificate must be refused");

    stop(&mut child);
}

/// `--initial-snapshot`: four banks start from an etcd snapshot, with its keys, revisions and
/// leases; writes go on from its revision; a second run in the same directory reuses it all.
#[test]
fn dev_cluster_starts_from_an_etcd_snapshot() {
    let dir = TestDir::new("dev-cluster-snapshot");
    let etcd = bftcd_tests::EtcdProcess::start(&dir, "source");
    let source = Etcdctl::new(etcd.endpoint());
    for i in 0..20 {
        source.put(&format!("/s/{i:02}"), "v1");
    }
    source.put("/s/00", "v2");
    let lease = source.run(&["lease", "grant", "600"]).expect_success().split_whitespace().nth(1).unwrap().to_string();
    source.run(&["put", "/s/leased", "x", "--lease", &lease]).expect_success();
    let snapshot = dir.join("source.db");
    source.run(&["snapshot", "save", &snapshot.display().to_string()]).expect_success();
    let at_snapshot = source.run(&["get", "/s/", "--prefix", "-w", "json"]).expect_success().to_string();
    drop(etcd);

    let base = free_base(4);
    let cluster = dir.join("cluster");
    let file = format!("--initial-snapshot={}", snapshot.display());
    let (mut child, _lines, endpoints, _) = start(&dir, base, &cluster, &[&file]);
    let kvs = |text: &str| serde_json::from_str::<serde_json::Value>(text.trim()).unwrap()["kvs"].clone();
    for ep in &endpoints {
        let got = Etcdctl::new(ep).run(&["get", "/s/", "--prefix", "-w", "json"]).expect_success().to_string();
        assert_eq!(kvs(&got), kvs(&at_snapshot), "bank {ep}");
        let ttl = Etcdctl::new(ep).run(&["lease", "timetolive", &lease, "--keys"]).expect_success().to_string();
        assert!(ttl.contains("granted with TTL(600s)") && ttl.contains("/s/leased"), "{ttl}");
    }
    let revision = |text: &str| serde_json::from_str::<serde_json::Value>(text.trim()).unwrap()["header"]["revision"].as_i64().unwrap();
    let put = Etcdctl::new(&endpoints[1]).run(&["put", "/s/new", "1", "-w", "json"]).expect_success().to_string();
    assert_eq!(revision(&put), revision(&at_snapshot) + 1, "writes go on from the snapshot's revision");
    stop(&mut child);

    let (mut child, _lines, endpoints, _) = start(&dir, base, &cluster, &[&file]);
    assert_eq!(Etcdctl::new(&endpoints[3]).get_value("/s/new").as_deref(), Some("1"));
    stop(&mut child);
}

/// SIGTERM: every bank stops and the command exits 0 within 60 s.
fn stop(child: &mut std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "dev-cluster did not stop within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "dev-cluster exited with {status}");
}

type Lines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// One HTTP GET; the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_string())
}

/// `bftcd dev-cluster` with four banks at `base` in `cluster` (plus `extra` flags), once it
/// printed READY and METRICS: the process, the rest of its output, the four endpoints and the
/// four metrics URLs.
fn start(dir: &TestDir, base: u16, cluster: &std::path::Path, extra: &[&str]) -> (std::process::Child, Lines, Vec<String>, Vec<String>) {
    let mut child = Command::new(bftcd_bin())
        .arg("dev-cluster")
        .args(extra)
        .args(["--banks", "4", "--base-port", &base.to_string(), "--dir"])
        .arg(cluster)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("dev-cluster.log")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().expect("a READY line").unwrap();
    let endpoints: Vec<String> = ready.strip_prefix("READY ").expect("READY <endpoints>").split(',').map(String::from).collect();
    assert_eq!(endpoints.len(), 4);
    let line = lines.next().expect("a METRICS line").unwrap();
    let metrics: Vec<String> = line.strip_prefix("METRICS ").expect("METRICS <urls>").split(',').map(String::from).collect();
    assert_eq!(metrics.len(), 4);
    (child, lines, endpoints, metrics)
}
