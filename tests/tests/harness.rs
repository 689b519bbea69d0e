//! Self-tests of the harness against stock etcd alone (no sidecar needed).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bftcd_tests::{
    bins, etcdctl_bin, etcdutl_bin, free_port, free_ports, EtcdCluster, EtcdProcess, Etcdctl,
    Etcdutl, TestDir,
};

fn pid_exists(pid: u32) -> bool {
    // SAFETY: existence check only.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn stock_binaries_are_found_and_are_3_5() {
    let etcd = bins::etcd_bin();
    let out = std::process::Command::new(&etcd)
        .arg("--version")
        .output()
        .expect("run etcd --version");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("etcd Version: 3.5."),
        "unexpected etcd version output: {text}"
    );
    assert!(etcdctl_bin().exists());
    assert!(etcdutl_bin().exists());
    assert!(bins::workspace_root().join("Cargo.toml").exists());
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports = free_ports(50);
    let set: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(set.len(), ports.len(), "duplicate ports: {ports:?}");
    for p in ports {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok(),
            "port {p} not bindable"
        );
    }
    // Never handed out twice in one process.
    let more = free_ports(50);
    assert!(more.iter().all(|p| !set.contains(p)));
    assert_ne!(free_port(), 0);
}

#[test]
fn test_dir_is_removed_on_success() {
    let path: PathBuf;
    {
        let dir = TestDir::new("removed");
        path = dir.path().to_path_buf();
        std::fs::write(dir.join("some.log"), "x").unwrap();
        assert!(path.exists());
    }
    assert!(
        !path.exists(),
        "test dir should be removed after a passing test"
    );
}

#[test]
fn test_dir_is_kept_when_the_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::spawn(move || {
        let dir = TestDir::new("kept");
        std::fs::write(dir.join("evidence.log"), "keep me").unwrap();
        tx.send(dir.path().to_path_buf()).unwrap();
        panic!("deliberate panic to check that the test dir is kept");
    })
    .join();
    assert!(joined.is_err());
    let path = rx.recv().unwrap();
    assert!(
        path.join("evidence.log").exists(),
        "test dir should be kept after a panic"
    );
    std::fs::remove_dir_all(&path).unwrap();
}

#[test]
fn etcd_starts_and_serves_put_get() {
    let dir = TestDir::new("etcd-put-get");
    let etcd = EtcdProcess::start(&dir, "e1");
    assert!(etcd.pid().is_some());
    assert!(etcd.endpoint().starts_with("127.0.0.1:"));
    assert!(etcd.data_dir().starts_with(dir.path()));
    let ctl = Etcdctl::new(etcd.endpoint());
    ctl.put("greeting", "hello world");
    assert_eq!(ctl.get_value("greeting").as_deref(), Some("hello world"));
    assert_eq!(ctl.get_value("missing"), None);

    let out = ctl.run(&["put", "", "v"]);
    assert!(!out.success());
    assert!(
        out.stderr
            .contains("Error: etcdserver: key is not provided"),
        "{out}"
    );

    // stdin is fed to etcdctl
    let out = ctl.run_with_stdin(&["put", "from-stdin"], "value-from-stdin");
    out.expect_success();
    assert_eq!(
        ctl.get_value("from-stdin").as_deref(),
        Some("value-from-stdin")
    );

    let health = ctl.run(&["endpoint", "health"]);
    assert!(health.stdout.contains("is healthy"), "{health}");
    assert!(
        std::fs::metadata(etcd.log_path()).unwrap().len() > 0,
        "etcd log must be written"
    );
}

#[test]
fn etcd_kill_and_restart_keeps_data() {
    let dir = TestDir::new("etcd-restart");
    let mut etcd = EtcdProcess::start(&dir, "e1");
    let endpoint = etcd.endpoint();
    let ctl = Etcdctl::new(endpoint.clone());
    for i in 0..10 {
        ctl.put(&format!("k{i}"), &format!("v{i}"));
    }
    let old_pid = etcd.pid().unwrap();
    etcd.kill();
    assert!(etcd.pid().is_none());
    assert!(!pid_exists(old_pid), "killed etcd must be reaped");
    let out = Etcdctl::new(endpoint.clone())
        .with_global_arg("--dial-timeout=300ms")
        .with_global_arg("--command-timeout=1s")
        .run(&["get", "k1"]);
    assert!(!out.success(), "etcd is down, get must fail: {out}");

    etcd.restart();
    assert_eq!(etcd.endpoint(), endpoint, "restart keeps the ports");
    assert_ne!(etcd.pid().unwrap(), old_pid);
    for i in 0..10 {
        assert_eq!(ctl.get_value(&format!("k{i}")), Some(format!("v{i}")));
    }
    // Revision history survives too.
    let out = ctl.run(&["get", "k0", "--rev", "2", "--print-value-only"]);
    assert_eq!(out.expect_success(), "v0\n");
}

#[test]
fn processes_die_when_the_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let dir = TestDir::new("panic-cleanup");
        let etcd = EtcdProcess::start(&dir, "doomed");
        tx.send((etcd.pid().unwrap(), dir.path().to_path_buf()))
            .unwrap();
        panic!("deliberate panic: etcd must be killed by Drop");
    });
    assert!(handle.join().is_err());
    let (pid, path) = rx.recv().unwrap();
    assert!(
        !pid_exists(pid),
        "etcd {pid} still runs after the owning test panicked"
    );
    assert!(
        path.join("doomed.etcd.log").exists(),
        "log kept after the panic"
    );
    std::fs::remove_dir_all(path).unwrap();
}

#[test]
fn etcdctl_background_watch_and_timeout() {
    let dir = TestDir::new("watch-bg");
    let etcd = EtcdProcess::start(&dir, "e1");
    let ctl = Etcdctl::new(etcd.endpoint());
    ctl.put("w/0", "before");
    // --rev replays history, so there is no race with watch establishment.
    let mut watch = ctl.spawn(&["watch", "w/", "--prefix", "--rev", "1"]);
    ctl.put("w/1", "after");
    assert!(watch.wait_for_stdout(Duration::from_secs(10), |s| s.contains("after")));
    let out = watch.stop();
    assert_eq!(out.stdout, "PUT\nw/0\nbefore\nPUT\nw/1\nafter\n");

    // A command that hangs is killed at the timeout instead of hanging the test.
    let slow = Etcdctl::new(etcd.endpoint()).with_timeout(Duration::from_millis(700));
    let started = Instant::now();
    let out = slow.run_allow_timeout(&["watch", "never"], None);
    assert!(out.timed_out, "{out}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let hung = std::panic::catch_unwind(|| slow.run(&["watch", "never"]));
    assert!(hung.is_err(), "run() must panic on timeout");
}

#[test]
fn etcdutl_reads_a_snapshot() {
    let dir = TestDir::new("snapshot");
    let etcd = EtcdProcess::start(&dir, "e1");
    let ctl = Etcdctl::new(etcd.endpoint());
    ctl.put("a", "1");
    let file = dir.join("snap.db");
    let out = ctl.run(&["snapshot", "save", file.to_str().unwrap()]);
    assert!(out.stdout.contains("Snapshot saved at"), "{out}");
    let status = Etcdutl::new().run(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(status.expect_success().trim()).unwrap();
    assert!(v["revision"].as_i64().unwrap() >= 2, "{v}");
}

#[test]
fn three_member_cluster() {
    let dir = TestDir::new("cluster");
    let mut cluster = EtcdCluster::start(&dir, 3);
    let eps = cluster.endpoints();
    assert_eq!(eps.len(), 3);
    assert_eq!(eps.iter().collect::<HashSet<_>>().len(), 3);
    Etcdctl::new(eps[0].clone()).put("shared", "value");
    // A linearizable read through another member sees the write.
    assert_eq!(
        Etcdctl::new(eps[2].clone()).get_value("shared").as_deref(),
        Some("value")
    );
    let members = Etcdctl::new(cluster.endpoints_csv()).run(&["member", "list", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(members.expect_success().trim()).unwrap();
    assert_eq!(v["members"].as_array().unwrap().len(), 3, "{v}");

    // One member down: the other two still serve writes; it catches up after restart.
    // (If it was the leader, writes fail until a new leader is elected: retry.)
    cluster.member_mut(1).kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Etcdctl::new(eps[0].clone()).run(&["put", "while-down", "yes"]);
        if out.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two of three members did not accept a write: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.member_mut(1).restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ctl1 = Etcdctl::new(eps[1].clone());
    loop {
        let v = ctl1.run(&["get", "while-down", "--print-value-only", "--consistency=s"]);
        if v.stdout == "yes\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted member did not catch up: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sidecar_ready_line_parsing() {
    use bftcd_tests::sidecar::parse_ready_line;
    assert_eq!(
        parse_ready_line("READY 127.0.0.1:1234\n").as_deref(),
        Some("127.0.0.1:1234")
    );
    assert_eq!(
        parse_ready_line("READY http://127.0.0.1:1234").as_deref(),
        Some("127.0.0.1:1234")
    );
    assert_eq!(
        parse_ready_line("READY 127.0.0.1:1,127.0.0.1:2").as_deref(),
        Some("127.0.0.1:1")
    );
    assert_eq!(parse_ready_line("listening on 127.0.0.1:1234"), None);
    assert_eq!(parse_ready_line("READY "), None);
}
