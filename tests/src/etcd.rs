//! Stock etcd processes on loopback: a single member ([`EtcdProcess`]) or a Raft cluster
//! ([`EtcdCluster`]). Data directories and logs live in the test's [`TestDir`].

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bins;
use crate::dir::{log_of_last_run, log_tail, TestDir, START_MARKER};
use crate::ports;
use crate::process;

/// How long a starting etcd may take to answer `/health`.
pub const ETCD_START_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 4;

/// One stock etcd member. Dropping it kills it (SIGKILL) and reaps it.
pub struct EtcdProcess {
    name: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    cluster_token: String,
    extra_args: Vec<String>,
    child: Option<Child>,
}

fn addr_in_use(log: &Path) -> bool {
    log_of_last_run(log)
        .to_ascii_lowercase()
        .contains("address already in use")
}

impl EtcdProcess {
    /// Starts a single-member etcd named `name`; data in `<dir>/<name>.etcd`, log in
    /// `<dir>/<name>.etcd.log`. Panics (with the log tail) if it does not become healthy.
    pub fn start(dir: &TestDir, name: &str) -> EtcdProcess {
        Self::start_with_args(dir, name, &[])
    }

    /// Like [`EtcdProcess::start`] with extra etcd flags (e.g. `--max-txn-ops=1024`,
    /// `--experimental-watch-progress-notify-interval=1s`).
    pub fn start_with_args(dir: &TestDir, name: &str, extra_args: &[&str]) -> EtcdProcess {
        Self::try_start_with_args(dir, name, extra_args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Fallible form of [`EtcdProcess::start_with_args`].
    pub fn try_start_with_args(
        dir: &TestDir,
        name: &str,
        extra_args: &[&str],
    ) -> Result<EtcdProcess, String> {
        let extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let mut last_err = String::new();
        for _attempt in 0..START_ATTEMPTS {
            let client_port = ports::free_port();
            let peer_port = ports::free_port();
            let initial_cluster = format!("{name}=http://127.0.0.1:{peer_port}");
            let mut member = EtcdProcess::configure(
                dir,
                name,
                client_port,
                peer_port,
                initial_cluster,
                extra.clone(),
            );
            let _ = fs::remove_dir_all(&member.data_dir);
            member.spawn_child()?;
            match member.wait_ready(ETCD_START_TIMEOUT) {
                Ok(()) => return Ok(member),
                Err(e) => {
                    member.kill();
                    if addr_in_use(&member.log_path) {
                        last_err = e;
                        continue; // fresh ports
                    }
                    return Err(e);
                }
            }
        }
        Err(format!(
            "etcd {name}: gave up after {START_ATTEMPTS} attempts (ports in use): {last_err}"
        ))
    }

    fn configure(
        dir: &TestDir,
        name: &str,
        client_port: u16,
        peer_port: u16,
        initial_cluster: String,
        extra_args: Vec<String>,
    ) -> EtcdProcess {
        EtcdProcess {
            name: name.to_string(),
            data_dir: dir.join(format!("{name}.etcd")),
            log_path: dir.join(format!("{name}.etcd.log")),
            client_port,
            peer_port,
            initial_cluster,
            cluster_token: cluster_token(dir, name),
            extra_args,
            child: None,
        }
    }

    fn args(&self) -> Vec<String> {
        let client = self.client_url();
        let peer = self.peer_url();
        let mut args = vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={}", self.initial_cluster),
            "--initial-cluster-state=new".to_string(),
            format!("--initial-cluster-token={}", self.cluster_token),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }

    fn spawn_child(&mut self) -> Result<(), String> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("open {}: {e}", self.log_path.display()))?;
        let args = self.args();
        let bin = bins::etcd_bin();
        let _ = writeln!(
            log,
            "{START_MARKER} {}",
            process::render_command(&bin.display().to_string(), &args)
        );
        let err_log = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log));
        // etcd reads every flag from ETCD_* variables too: keep the caller's environment out.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(&k);
            }
        }
        let child =
            process::spawn(cmd).map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `/health` on the client port reports healthy, the process dies, or `timeout`.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "etcd {} exited during startup ({status}); log {}:\n{}",
                        self.name,
                        self.log_path.display(),
                        log_tail(&self.log_path, 40)
                    ));
                }
            }
            if http_health(self.client_port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd {} not healthy on {} after {:?}; log {}:\n{}",
                    self.name,
                    self.endpoint(),
                    timeout,
                    self.log_path.display(),
                    log_tail(&self.log_path, 40)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The member name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Client endpoint as `127.0.0.1:port` (what etcdctl's `--endpoints` takes).
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Client URL `http://127.0.0.1:port`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Peer URL `http://127.0.0.1:port`.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// Peer port.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The log file (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// kill -9 and reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            process::kill_and_wait(&mut c);
        }
    }

    /// SIGTERM, wait up to 10 s for a clean exit, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            process::signal(&mut c, libc::SIGTERM);
            if process::wait_timeout(&mut c, Duration::from_secs(10)).is_none() {
                process::kill_and_wait(&mut c);
            }
        }
    }

    /// Kills the process if it runs, then starts it again with the same data dir, ports and
    /// flags, and waits until it is healthy. Panics with the log tail on failure.
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("{e}");
        }
    }

    /// Fallible form of [`EtcdProcess::restart`].
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn_child()?;
        self.wait_ready(ETCD_START_TIMEOUT)
    }

    /// Stops the member, replaces its data directory with `etcdutl snapshot restore` of
    /// `snapshot` (same member name, peer URL, cluster and token, as an operator restoring a
    /// single-member etcd does), and starts it again. Panics with etcdutl's output on failure.
    pub fn restore_snapshot(&mut self, snapshot: &Path) {
        self.stop();
        let _ = fs::remove_dir_all(&self.data_dir);
        let (data_dir, peer) = (self.data_dir.display().to_string(), self.peer_url());
        let out = crate::etcdctl::Etcdutl::new().run(&[
            "snapshot",
            "restore",
            &snapshot.display().to_string(),
            "--data-dir",
            &data_dir,
            "--name",
            &self.name,
            "--initial-cluster",
            &self.initial_cluster,
            "--initial-cluster-token",
            &self.cluster_token,
            "--initial-advertise-peer-urls",
            &peer,
        ]);
        out.expect_success();
        self.restart();
    }

    /// Starts a member whose process was killed, without waiting for health (a cluster member
    /// alone cannot become healthy). Use [`EtcdProcess::wait_healthy`] afterwards.
    pub fn restart_no_wait(&mut self) {
        self.kill();
        self.spawn_child().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until the member answers `/health` (panics with the log tail after `timeout`).
    pub fn wait_healthy(&mut self, timeout: Duration) {
        self.wait_ready(timeout).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
        ports::release_port(self.client_port);
        ports::release_port(self.peer_port);
    }
}

/// A token unique to this test directory and cluster keeps members of different tests from
/// ever joining each other.
fn cluster_token(dir: &TestDir, cluster: &str) -> String {
    format!(
        "bftcd-test-{}-{}",
        dir.path()
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        cluster
    )
}

/// True when etcd's `/health` on 127.0.0.1:`port` answers `"health":"true"`.
pub fn http_health(port: u16) -> bool {
    http_get(port, "/health", Duration::from_secs(2))
        .map(|body| body.contains("\"health\":\"true\""))
        .unwrap_or(false)
}

/// A minimal HTTP/1.1 GET on loopback; returns the whole response (headers and body).
pub fn http_get(port: u16, path: &str, timeout: Duration) -> std::io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A stock etcd Raft cluster on loopback. Dropping it kills every member.
pub struct EtcdCluster {
    members: Vec<EtcdProcess>,
}

impl EtcdCluster {
    /// Starts `n` members named `etcd-1` .. `etcd-n` and waits until every one is healthy.
    pub fn start(dir: &TestDir, n: usize) -> EtcdCluster {
        Self::start_named(dir, "etcd", n, &[])
    }

    /// Starts `n` members named `<prefix>-1` .. `<prefix>-n` with extra flags for every member.
    pub fn start_named(dir: &TestDir, prefix: &str, n: usize, extra_args: &[&str]) -> EtcdCluster {
        assert!(n >= 1, "a cluster needs at least one member");
        let extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let mut last_err = String::new();
        for _attempt in 0..START_ATTEMPTS {
            let names: Vec<String> = (1..=n).map(|i| format!("{prefix}-{i}")).collect();
            let ports: Vec<(u16, u16)> = (0..n)
                .map(|_| (ports::free_port(), ports::free_port()))
                .collect();
            let initial_cluster = names
                .iter()
                .zip(&ports)
                .map(|(name, (_, peer))| format!("{name}=http://127.0.0.1:{peer}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut members: Vec<EtcdProcess> = names
                .iter()
                .zip(&ports)
                .map(|(name, (client, peer))| {
                    let mut m = EtcdProcess::configure(
                        dir,
                        name,
                        *client,
                        *peer,
                        initial_cluster.clone(),
                        extra.clone(),
                    );
                    m.cluster_token = cluster_token(dir, prefix);
                    m
                })
                .collect();
            let mut failure = None;
            for m in members.iter_mut() {
                let _ = fs::remove_dir_all(&m.data_dir);
                if let Err(e) = m.spawn_child() {
                    failure = Some(e);
                    break;
                }
            }
            if failure.is_none() {
                let deadline = Instant::now() + ETCD_START_TIMEOUT;
                for m in members.iter_mut() {
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(100));
                    if let Err(e) = m.wait_ready(left) {
                        failure = Some(e);
                        break;
                    }
                }
            }
            match failure {
                None => return EtcdCluster { members },
                Some(e) => {
                    let in_use = members.iter().any(|m| addr_in_use(&m.log_path));
                    for m in members.iter_mut() {
                        m.kill();
                    }
                    if in_use {
                        last_err = e;
                        continue;
                    }
                    panic!("etcd cluster did not start: {e}");
                }
            }
        }
        panic!("etcd cluster: gave up after {START_ATTEMPTS} attempts (ports in use): {last_err}");
    }

    /// Client endpoints (`127.0.0.1:port`) of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint()).collect()
    }

    /// Client endpoints joined with commas (etcdctl's `--endpoints` form).
    pub fn endpoints_csv(&self) -> String {
        self.endpoints().join(",")
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Never true: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Member `i` (0-based).
    pub fn member(&self, i: usize) -> &EtcdProcess {
        &self.members[i]
    }

    /// Member `i` (0-based), mutable (kill / restart).
    pub fn member_mut(&mut self, i: usize) -> &mut EtcdProcess {
        &mut self.members[i]
    }

    /// All members.
    pub fn members(&self) -> &[EtcdProcess] {
        &self.members
    }
}
