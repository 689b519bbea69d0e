//! The metrics listener: `--listen-metrics-urls` serves Prometheus text, and `--account-cpu`
//! splits the sidecar's CPU by component (the benchmark's per-component table reads it).

use std::io::{Read, Write};

use bftcd_tests::{free_port, EtcdProcess, Etcdctl, Sidecar, TestDir};

/// One HTTP GET; returns the status line and the body.
fn get(addr: &str, path: &str) -> (String, String) {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

fn component(body: &str, name: &str) -> u64 {
    let prefix = format!("bftcd_cpu_nanoseconds_total{{component=\"{name}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in:\n{body}"))
        .parse::<f64>()
        .unwrap() as u64
}

#[test]
fn metrics_listener_exports_cpu_by_component() {
    let dir = TestDir::new("metrics");
    let etcd = EtcdProcess::start_with_args(&dir, "etcd", bftcd_tests::sidecar::BANK_ETCD_ARGS);
    let addr = format!("127.0.0.1:{}", free_port());
    let url = format!("--listen-metrics-urls=http://{addr}");
    let sidecar = Sidecar::start_with_args(&dir, "bank", &etcd.endpoint(), &[&url, "--account-cpu"]);
    let ctl = Etcdctl::new(sidecar.endpoint());
    for i in 0..50 {
        ctl.put(&format!("k{i}"), "v");
    }
    let (status, body) = get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    // Writes were validated (front), ordered and written to the ledger (consensus,
    // persistence) and applied to etcd (apply): each charged some CPU.
    for name in ["front", "consensus", "persistence", "apply"] {
        assert!(component(&body, name) > 0, "{name} charged nothing:\n{body}");
    }
    let (status, _) = get(&addr, "/nope");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn account_cpu_needs_a_metrics_listener() {
    let dir = TestDir::new("metrics-flag");
    let etcd = EtcdProcess::start_with_args(&dir, "etcd", bftcd_tests::sidecar::BANK_ETCD_ARGS);
    let err = Sidecar::try_start_with_args(&dir, "bank", &etcd.endpoint(), &["--account-cpu"]).err().expect("started");
    assert!(err.contains("--listen-metrics-urls"), "{err}");
}
