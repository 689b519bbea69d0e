//! A `bftcd serve` sidecar in front of a stock etcd.
//!
//! Started as
//! `bftcd serve --name <name> --data-dir <dir>/<name> --listen-client 127.0.0.1:<port>
//!  --etcd-endpoint http://<etcd> [extra args]`; it prints exactly one line `READY <host:port>` on
//! stdout once it serves. Its stdout is copied to `<dir>/<name>.stdout.log`, its stderr (the logs)
//! goes to `<dir>/<name>.stderr.log`.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::bins;
use crate::dir::{log_of_last_run, log_tail, TestDir, START_MARKER};
use crate::ports;
use crate::process;

/// Flags for a bank's stock etcd behind a sidecar: the sidecar adds its bookkeeping to client
/// writes and packs several of them into one Txn, so the bank's etcd must accept more than
/// etcd's defaults (the same values `bftcd dev-cluster` uses). The sidecar itself enforces
/// etcd's default limits towards clients.
pub const BANK_ETCD_ARGS: &[&str] = &["--max-request-bytes=10485760", "--max-txn-ops=10240"];

/// How long a sidecar may take to print `READY`.
pub const SIDECAR_START_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 4;

/// A running `bftcd serve`. Dropping it kills it (SIGKILL) and reaps it.
pub struct Sidecar {
    name: String,
    data_dir: PathBuf,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
    listen_port: u16,
    etcd_url: String,
    extra_args: Vec<String>,
    endpoint: String,
    /// The READY line named an https:// endpoint.
    https: bool,
    child: Option<Child>,
    stdout_copier: Option<thread::JoinHandle<()>>,
    /// Another bftcd binary (e.g. the Byzantine test build) instead of the normal one.
    bin: Option<PathBuf>,
    /// Environment variables added to the sidecar's.
    env: Vec<(String, String)>,
    /// Started with `extra_args` alone (no --name, --data-dir, ... of the harness's).
    configured: bool,
}

/// Parses a `READY <endpoint>` line into `host:port` (a URL scheme is stripped; with several
/// comma-separated endpoints the first is returned).
pub fn parse_ready_line(line: &str) -> Option<String> {
    let rest = line.trim_end().strip_prefix("READY ")?.trim();
    let first = rest.split(',').next()?.trim();
    let first = first
        .strip_prefix("http://")
        .or_else(|| first.strip_prefix("https://"))
        .unwrap_or(first)
        .trim_end_matches('/');
    if first.is_empty() {
        None
    } else {
        Some(first.to_string())
    }
}

/// `127.0.0.1:2379` -> `http://127.0.0.1:2379`; URLs are kept as they are.
pub fn as_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

fn addr_in_use(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("address already in use") || t.contains("addrinuse") || t.contains("address in use")
}

impl Sidecar {
    /// Starts a sidecar named `name` in front of the etcd at `etcd_endpoint` (`host:port` or URL).
    /// Panics (with the log tail) when it does not print `READY` within 30 s.
    pub fn start(dir: &TestDir, name: &str, etcd_endpoint: &str) -> Sidecar {
        Self::start_with_args(dir, name, etcd_endpoint, &[])
    }

    /// Like [`Sidecar::start`] with extra command-line arguments appended.
    pub fn start_with_args(
        dir: &TestDir,
        name: &str,
        etcd_endpoint: &str,
        extra_args: &[&str],
    ) -> Sidecar {
        Self::try_start_with_args(dir, name, etcd_endpoint, extra_args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Fallible form of [`Sidecar::start_with_args`].
    pub fn try_start_with_args(
        dir: &TestDir,
        name: &str,
        etcd_endpoint: &str,
        extra_args: &[&str],
    ) -> Result<Sidecar, String> {
        Self::try_start_spec(dir, name, etcd_endpoint, None, None, extra_args)
    }

    /// Starts a sidecar on a given client port (one a genesis already names) and/or with
    /// another bftcd binary.
    pub fn try_start_spec(
        dir: &TestDir,
        name: &str,
        etcd_endpoint: &str,
        listen_port: Option<u16>,
        bin: Option<PathBuf>,
        extra_args: &[&str],
    ) -> Result<Sidecar, String> {
        if bin.is_none() {
            bins::try_bftcd_bin()?;
        }
        let mut last_err = String::new();
        for _attempt in 0..START_ATTEMPTS {
            let mut sc = Sidecar {
                bin: bin.clone(),
                name: name.to_string(),
                data_dir: dir.join(name),
                stdout_log: dir.join(format!("{name}.stdout.log")),
                stderr_log: dir.join(format!("{name}.stderr.log")),
                listen_port: listen_port.unwrap_or_else(ports::free_port),
                etcd_url: as_url(etcd_endpoint),
                extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
                endpoint: String::new(),
                https: false,
                child: None,
                stdout_copier: None,
                env: Vec::new(),
                configured: false,
            };
            match sc.spawn_and_wait(SIDECAR_START_TIMEOUT) {
                Ok(()) => return Ok(sc),
                Err(e) => {
                    sc.kill();
                    if addr_in_use(&log_of_last_run(&sc.stderr_log)) {
                        last_err = e;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(format!(
            "sidecar {name}: gave up after {START_ATTEMPTS} attempts (port in use): {last_err}"
        ))
    }

    /// Starts `bftcd <args>` with `env` added to its environment and none of the harness's usual
    /// flags: the variables, or a config file `args` name, configure it, including its client
    /// port `listen_port` and its data directory, which must be `<dir>/<name>`
    /// ([`Sidecar::data_dir`]). One attempt (the port is in its configuration).
    pub fn try_start_configured(
        dir: &TestDir,
        name: &str,
        listen_port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Sidecar, String> {
        bins::try_bftcd_bin()?;
        let mut sc = Sidecar {
            bin: None,
            name: name.to_string(),
            data_dir: dir.join(name),
            stdout_log: dir.join(format!("{name}.stdout.log")),
            stderr_log: dir.join(format!("{name}.stderr.log")),
            listen_port,
            etcd_url: String::new(),
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            endpoint: String::new(),
            https: false,
            child: None,
            stdout_copier: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            configured: true,
        };
        match sc.spawn_and_wait(SIDECAR_START_TIMEOUT) {
            Ok(()) => Ok(sc),
            Err(e) => {
                sc.kill();
                Err(e)
            }
        }
    }

    fn args(&self) -> Vec<String> {
        if self.configured {
            return self.extra_args.clone();
        }
        let mut args = vec![
            "serve".to_string(),
            "--name".to_string(),
            self.name.clone(),
            "--data-dir".to_string(),
            self.data_dir.display().to_string(),
            "--listen-client".to_string(),
            format!("127.0.0.1:{}", self.listen_port),
            "--etcd-endpoint".to_string(),
            self.etcd_url.clone(),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }

    fn spawn_and_wait(&mut self, timeout: Duration) -> Result<(), String> {
        let bin = match &self.bin {
            Some(b) => b.clone(),
            None => bins::try_bftcd_bin()?,
        };
        let args = self.args();
        let mut rendered = process::render_command(&bin.display().to_string(), &args);
        for (k, v) in self.env.iter().rev() {
            rendered = format!("{k}={v} {rendered}");
        }
        let mut err_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .map_err(|e| format!("open {}: {e}", self.stderr_log.display()))?;
        let _ = writeln!(err_log, "{START_MARKER} {rendered}");
        let mut out_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stdout_log)
            .map_err(|e| format!("open {}: {e}", self.stdout_log.display()))?;
        let _ = writeln!(out_log, "{START_MARKER} {rendered}");

        let mut cmd = Command::new(&bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err_log));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // A sidecar reads BFTCD_<FLAG> variables: only the test's own, never whatever the
        // test runner's environment holds (BFTCD_LOG, the tracing filter, stays).
        for (k, _) in std::env::vars_os() {
            if k.to_str()
                .is_some_and(|k| k.starts_with("BFTCD_") && k != "BFTCD_LOG")
            {
                cmd.env_remove(&k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child =
            process::spawn(cmd).map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().expect("stdout pipe");
        self.child = Some(child);

        // Copy stdout into its log; report the first READY line.
        let (tx, rx) = mpsc::channel::<(String, bool)>();
        self.stdout_copier = Some(thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let mut sent = false;
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = out_log.write_all(line.as_bytes());
                        let _ = out_log.flush();
                        if !sent {
                            if let Some(ep) = parse_ready_line(&line) {
                                let _ = tx.send((ep, line.starts_with("READY https://")));
                                sent = true;
                            }
                        }
                    }
                }
            }
        }));

        let deadline = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok((ep, https)) => {
                    self.endpoint = ep;
                    self.https = https;
                    return Ok(());
                }
                Err(mpsc::RecvTimeoutError::Timeout)
                | Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                // Late READY line still in the pipe?
                if let Ok((ep, _)) = rx.recv_timeout(Duration::from_millis(200)) {
                    self.endpoint = ep;
                    return Err(format!(
                        "sidecar {} printed READY {} but then exited ({status}); stderr {}:\n{}",
                        self.name,
                        self.endpoint,
                        self.stderr_log.display(),
                        log_tail(&self.stderr_log, 40)
                    ));
                }
                return Err(format!(
                    "sidecar {} exited before READY ({status}): `{rendered}`\nstderr {}:\n{}\nstdout {}:\n{}",
                    self.name,
                    self.stderr_log.display(),
                    log_tail(&self.stderr_log, 40),
                    self.stdout_log.display(),
                    log_tail(&self.stdout_log, 10)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "sidecar {} did not print READY within {timeout:?}: `{rendered}`\nstderr {}:\n{}\nstdout {}:\n{}",
                    self.name,
                    self.stderr_log.display(),
                    log_tail(&self.stderr_log, 40),
                    self.stdout_log.display(),
                    log_tail(&self.stdout_log, 10)
                ));
            }
        }
    }

    /// The name passed with `--name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client endpoint announced by the `READY` line (`host:port`).
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// `http://` (or `https://` when it serves TLS) + [`Sidecar::endpoint`].
    pub fn client_url(&self) -> String {
        if self.https {
            format!("https://{}", self.endpoint)
        } else {
            as_url(&self.endpoint)
        }
    }

    /// True when it serves its clients over TLS.
    pub fn https(&self) -> bool {
        self.https
    }

    /// The port passed with `--listen-client`.
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// The etcd URL passed with `--etcd-endpoint`.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// `<dir>/<name>`, passed with `--data-dir`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where stdout is copied.
    pub fn stdout_log(&self) -> &Path {
        &self.stdout_log
    }

    /// Where stderr (the sidecar's logs) goes.
    pub fn stderr_log(&self) -> &Path {
        &self.stderr_log
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
        if let Some(t) = self.stdout_copier.take() {
            let _ = t.join();
        }
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            process::signal(&mut c, libc::SIGTERM);
            if process::wait_timeout(&mut c, Duration::from_secs(10)).is_none() {
                process::kill_and_wait(&mut c);
            }
        }
        if let Some(t) = self.stdout_copier.take() {
            let _ = t.join();
        }
    }

    /// Kills the sidecar if it runs and starts it again with the same arguments and port;
    /// waits for `READY`. Panics with the log tail on failure.
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("{e}");
        }
    }

    /// Fallible form of [`Sidecar::restart`]. Retries for a few seconds if the old socket is
    /// still reported in use.
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        let mut last = String::new();
        for _ in 0..5 {
            match self.spawn_and_wait(SIDECAR_START_TIMEOUT) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.kill();
                    if !addr_in_use(&log_of_last_run(&self.stderr_log)) {
                        return Err(e);
                    }
                    last = e;
                    thread::sleep(Duration::from_millis(500));
                }
            }
        }
        Err(last)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
        ports::release_port(self.listen_port);
    }
}
