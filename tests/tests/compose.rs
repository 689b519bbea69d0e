//! The compose stack (docker-compose.yml, scripts/compose.sh): images built from the debug
//! binaries the suite already has, four banks up under a project name of its own on free host
//! ports, a write at bank 1 read back at bank 2, a metric, and nothing left behind afterwards.
//! Skipped (the test passes, saying so) where Docker is not available.

use std::process::Command;
use std::time::{Duration, Instant};

use bftcd_tests::process::run_with_timeout;
use bftcd_tests::{bftcd_bin, free_port, workspace_root, CmdOutput, Etcdctl};

/// What the test polls until every bank is ready: a quorum of banks connected and its etcd
/// answering (the compose healthcheck in docker-compose.yml names the same path).
const READINESS_PATH: &str = "/readyz";

/// Project names of this test start with this, followed by the test process's pid.
const PROJECT_PREFIX: &str = "bftcdtest";

fn run(program: &str, args: &[&str], envs: &[(String, String)], timeout: Duration) -> CmdOutput {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(workspace_root());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let rendered = format!("{program} {}", args.join(" "));
    run_with_timeout(cmd, rendered, None, timeout)
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// Why Docker cannot be used here, if it cannot.
fn docker_missing() -> Option<String> {
    if !on_path("docker") {
        return Some("no `docker` binary".into());
    }
    let info = run("docker", &["info", "--format", "{{.ServerVersion}}"], &[], Duration::from_secs(20));
    if !info.success() {
        return Some(format!("the Docker daemon does not answer: {}", info.stderr.trim()));
    }
    if !on_path("docker-compose") && !run("docker", &["compose", "version"], &[], Duration::from_secs(20)).success() {
        return Some("neither docker-compose nor the docker compose plugin".into());
    }
    None
}

/// A short tag naming this checkout (its path).
fn checkout_tag() -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    workspace_root().hash(&mut h);
    format!("{:08x}", h.finish() as u32)
}

/// One stack under its own project name; taken down with its volumes when dropped, also when
/// the test fails.
struct Stack {
    project: String,
    env: Vec<(String, String)>,
    client_ports: Vec<u16>,
    metrics_ports: Vec<u16>,
    down: bool,
}

impl Stack {
    fn new() -> Stack {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let project = format!("{PROJECT_PREFIX}{}x{nanos}", std::process::id());
        let client_ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
        let metrics_ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
        let mut env = vec![
            ("COMPOSE_PROJECT_NAME".to_string(), project.clone()),
            ("BFTCD_COMPOSE_BIN".to_string(), bftcd_bin().display().to_string()),
            // Test images of their own, one pair per checkout: a developer's release images
            // stay as they are, and suites of two worktrees never run each other's binary.
            ("BFTCD_IMAGE".to_string(), format!("bftcd:test-{}", checkout_tag())),
            ("BFTCD_ETCD_IMAGE".to_string(), format!("bftcd-etcd:test-{}", checkout_tag())),
        ];
        for i in 0..4 {
            env.push((format!("BFTCD_PORT_BANK{}", i + 1), client_ports[i].to_string()));
            env.push((format!("BFTCD_METRICS_PORT_BANK{}", i + 1), metrics_ports[i].to_string()));
        }
        Stack { project, env, client_ports, metrics_ports, down: false }
    }

    fn script(&self, args: &[&str], timeout: Duration) -> CmdOutput {
        run("./scripts/compose.sh", args, &self.env, timeout)
    }

    fn tear_down(&mut self) -> CmdOutput {
        self.down = true;
        self.script(&["down", "-v", "--remove-orphans", "--timeout", "10"], Duration::from_secs(120))
    }

    /// Containers, networks and volumes still labelled with this project.
    fn leftovers(&self) -> String {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut found = String::new();
        for what in [&["ps", "-aq"][..], &["network", "ls", "-q"][..], &["volume", "ls", "-q"][..]] {
            let mut args = what.to_vec();
            args.extend(["--filter", &label]);
            let out = run("docker", &args, &[], Duration::from_secs(30));
            found.push_str(out.expect_success());
        }
        found
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.down {
            let out = self.tear_down();
            if !out.success() {
                eprintln!("compose down failed: {out}");
            }
        }
    }
}

/// Stacks of earlier runs of this test whose process is gone (killed before its Drop ran).
fn remove_stale_stacks() {
    let out = run("docker", &["ps", "-a", "--format", "{{.Label \"com.docker.compose.project\"}}"], &[], Duration::from_secs(30));
    let vols = run("docker", &["volume", "ls", "--format", "{{.Label \"com.docker.compose.project\"}}"], &[], Duration::from_secs(30));
    let mut projects: Vec<String> = out
        .stdout
        .lines()
        .chain(vols.stdout.lines())
        .filter_map(|p| {
            let pid: u32 = p.strip_prefix(PROJECT_PREFIX)?.split('x').next()?.parse().ok()?;
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then(|| p.to_string())
        })
        .collect();
    projects.sort();
    projects.dedup();
    for p in projects {
        eprintln!("removing the stale compose stack {p}");
        let env = vec![("COMPOSE_PROJECT_NAME".to_string(), p)];
        run("./scripts/compose.sh", &["down", "-v", "--remove-orphans", "--timeout", "5"], &env, Duration::from_secs(120));
    }
}

/// HTTP GET on 127.0.0.1: the status line and the body.
fn http_get(port: u16, path: &str) -> std::io::Result<(String, String)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((head.lines().next().unwrap_or("").to_string(), body.to_string()))
}

#[test]
fn four_banks_in_compose() {
    if let Some(why) = docker_missing() {
        println!("SKIPPED: compose test needs Docker ({why})");
        return;
    }
    remove_stale_stacks();
    let mut stack = Stack::new();

    let started = Instant::now();
    let up = stack.script(&["up"], Duration::from_secs(300));
    assert!(up.success(), "compose up failed: {up}");
    eprintln!("images built and stack started in {:?}", started.elapsed());

    // Every bank's etcd is on a network of its own, internal, shared with its sidecar only,
    // and publishes no port. (Containers are found by their compose labels: docker-compose 1.x
    // and the compose plugin name them differently.)
    let project_label = format!("label=com.docker.compose.project={}", stack.project);
    for i in 1..=4 {
        let net = format!("{}_bank{i}", stack.project);
        let internal = run("docker", &["network", "inspect", &net, "--format", "{{.Internal}}"], &[], Duration::from_secs(30));
        assert_eq!(internal.expect_success().trim(), "true", "network {net} is not internal");
        let on_net = run(
            "docker",
            &["ps", "--filter", &project_label, "--filter", &format!("network={net}"), "--format", "{{.Label \"com.docker.compose.service\"}}"],
            &[],
            Duration::from_secs(30),
        );
        let mut services: Vec<&str> = on_net.expect_success().lines().collect();
        services.sort();
        assert_eq!(services, vec![format!("bank{i}"), format!("bank{i}-etcd")], "containers on {net}");
        let etcd = run(
            "docker",
            &["ps", "-q", "--filter", &project_label, "--filter", &format!("label=com.docker.compose.service=bank{i}-etcd")],
            &[],
            Duration::from_secs(30),
        );
        let id = etcd.expect_success().trim().to_string();
        assert!(!id.is_empty(), "no container for bank{i}-etcd");
        let ports = run("docker", &["port", &id], &[], Duration::from_secs(30));
        assert_eq!(ports.expect_success().trim(), "", "bank{i}'s etcd publishes ports");
    }

    // Readiness, polled on every bank's published metrics port.
    let deadline = Instant::now() + Duration::from_secs(120);
    for &port in &stack.metrics_ports {
        loop {
            match http_get(port, READINESS_PATH) {
                Ok((status, _)) if status.contains(" 200 ") => break,
                other => assert!(Instant::now() < deadline, "{READINESS_PATH} on 127.0.0.1:{port}: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    // A write at bank 1, ordered by the four sidecars, read (linearizably) at bank 2.
    let bank1 = Etcdctl::new(format!("127.0.0.1:{}", stack.client_ports[0])).with_timeout(Duration::from_secs(40));
    let value = format!("from-bank1-{}", stack.project);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = bank1.run(&["put", "compose-key", &value]);
        if out.success() {
            break;
        }
        assert!(Instant::now() < deadline, "put at bank 1 kept failing: {out}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let bank2 = Etcdctl::new(format!("127.0.0.1:{}", stack.client_ports[1])).with_timeout(Duration::from_secs(40));
    assert_eq!(bank2.get_value("compose-key").as_deref(), Some(value.as_str()));

    // Bank 2's metrics (sampled every second): its ordering has a leader and it applied the
    // write's block.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(stack.metrics_ports[1], "/metrics").expect("bank 2 metrics");
        assert!(status.contains(" 200 "), "{status}");
        let applied = body
            .lines()
            .find_map(|l| l.strip_prefix("etcd_server_proposals_applied_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if applied >= 1.0 && body.lines().any(|l| l == "etcd_server_has_leader 1") {
            break;
        }
        assert!(Instant::now() < deadline, "bank 2 shows no leader or no applied block:\n{body}");
        std::thread::sleep(Duration::from_millis(500));
    }

    let down = stack.tear_down();
    assert!(down.success(), "compose down failed: {down}");
    let left = stack.leftovers();
    assert_eq!(left.trim(), "", "left behind by {}", stack.project);
}
