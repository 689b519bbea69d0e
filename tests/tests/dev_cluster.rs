//! `bftcd dev-cluster`, as a user runs it: four banks on loopback, one READY line, writes through
//! one bank readable at another, and SIGTERM stops every child and exits 0.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bftcd_tests::{bftcd_bin, Etcdctl, TestDir};

/// A base port whose whole dev-cluster range (P+1.., P+101.., P+201.., P+301..) is free now.
fn free_base(banks: u16) -> u16 {
    for attempt in 0..200u16 {
        let base = 20_000 + (std::process::id() as u16 % 97) * 100 + attempt * 397 % 20_000;
        let all_free = (1..=banks)
            .flat_map(|i| [base + i, base + 100 + i, base + 200 + i, base + 300 + i])
            .all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free port range for dev-cluster");
}

#[test]
fn dev_cluster_serves_and_stops_cleanly() {
    let dir = TestDir::new("dev-cluster");
    let base = free_base(4);
    let mut child = Command::new(bftcd_bin())
        .args(["dev-cluster", "--banks", "4", "--base-port", &base.to_string(), "--dir"])
        .arg(dir.join("cluster"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("dev-cluster.log")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().expect("a READY line").unwrap();
    let endpoints: Vec<String> = ready.strip_prefix("READY ").expect("READY <endpoints>").split(',').map(String::from).collect();
    assert_eq!(endpoints.len(), 4);
    assert_eq!(endpoints[0], format!("127.0.0.1:{}", base + 1));

    Etcdctl::new(&endpoints[0]).run(&["put", "hello", "world"]).expect_success();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Etcdctl::new(&endpoints[2]).get_value("hello").as_deref() != Some("world") {
        assert!(Instant::now() < deadline, "bank 3 never served bank 1's write");
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM: every bank stops, the command exits 0, nothing keeps listening.
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
    for i in 1..=4u16 {
        for p in [base + i, base + 100 + i, base + 300 + i] {
            assert!(TcpListener::bind(("127.0.0.1", p)).is_ok(), "port {p} still in use after shutdown");
        }
    }
}
