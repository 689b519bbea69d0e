//! Running the stock `etcdctl` (API v3) and `etcdutl` with hard timeouts.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::bins;
use crate::process::{self, Background, CmdOutput};

/// Default hard timeout of one etcdctl/etcdutl invocation.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

fn clean_env(cmd: &mut Command) {
    // The caller's ETCDCTL_* variables (endpoints, certificates, ...) must not leak in.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("ETCDCTL_API", "3");
}

/// The stock `etcdctl` pointed at one or more endpoints.
#[derive(Clone, Debug)]
pub struct Etcdctl {
    bin: PathBuf,
    endpoints: String,
    timeout: Duration,
    global_args: Vec<String>,
}

impl Etcdctl {
    /// etcdctl with `--endpoints=<endpoints>` (`host:port`, or several joined by commas).
    pub fn new(endpoints: impl Into<String>) -> Etcdctl {
        Etcdctl {
            bin: bins::etcdctl_bin(),
            endpoints: endpoints.into(),
            timeout: DEFAULT_COMMAND_TIMEOUT,
            global_args: Vec::new(),
        }
    }

    /// Changes the hard timeout after which a command is killed and the test fails.
    pub fn with_timeout(mut self, timeout: Duration) -> Etcdctl {
        self.timeout = timeout;
        self
    }

    /// Adds a global flag passed before every command (e.g. `--command-timeout=10s`).
    pub fn with_global_arg(mut self, arg: impl Into<String>) -> Etcdctl {
        self.global_args.push(arg.into());
        self
    }

    /// The endpoints this etcdctl talks to.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// The hard timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> (Command, String) {
        let mut all: Vec<String> = vec![format!("--endpoints={}", self.endpoints)];
        all.extend(self.global_args.iter().cloned());
        all.extend(
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned()),
        );
        let mut cmd = Command::new(&self.bin);
        cmd.args(&all);
        clean_env(&mut cmd);
        let rendered = process::render_command("etcdctl", &all);
        (cmd, rendered)
    }

    /// Runs `etcdctl <args>` to completion. Panics if it runs past the timeout.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> CmdOutput {
        self.run_inner(args, None)
    }

    /// Runs `etcdctl <args>` with `stdin` fed to it (e.g. `txn -i`, `put key` reading the value).
    pub fn run_with_stdin<S: AsRef<OsStr>>(
        &self,
        args: &[S],
        stdin: impl AsRef<[u8]>,
    ) -> CmdOutput {
        self.run_inner(args, Some(stdin.as_ref().to_vec()))
    }

    /// Runs `etcdctl <args>`, returning the output even when it timed out (then `timed_out` is set
    /// and `status` is `None`).
    pub fn run_allow_timeout<S: AsRef<OsStr>>(
        &self,
        args: &[S],
        stdin: Option<&[u8]>,
    ) -> CmdOutput {
        let (cmd, rendered) = self.command(args);
        process::run_with_timeout(cmd, rendered, stdin.map(|s| s.to_vec()), self.timeout)
    }

    fn run_inner<S: AsRef<OsStr>>(&self, args: &[S], stdin: Option<Vec<u8>>) -> CmdOutput {
        let (cmd, rendered) = self.command(args);
        let out = process::run_with_timeout(cmd, rendered, stdin, self.timeout);
        if out.timed_out {
            panic!("etcdctl timed out after {:?}: {out}", self.timeout);
        }
        out
    }

    /// `etcdctl put key value`, panicking unless it succeeds.
    pub fn put(&self, key: &str, value: &str) {
        self.run(&["put", key, value]).expect_success();
    }

    /// `etcdctl get key --print-value-only`; `None` when the key does not exist.
    pub fn get_value(&self, key: &str) -> Option<String> {
        let out = self.run(&["get", key, "--print-value-only"]);
        let stdout = out.expect_success();
        if stdout.is_empty() {
            None
        } else {
            Some(stdout.strip_suffix('\n').unwrap_or(stdout).to_string())
        }
    }

    /// Starts `etcdctl <args>` in the background (e.g. `watch`); its output is captured while it
    /// runs. It is killed when stopped, dropped, or after the timeout.
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Background {
        let (cmd, rendered) = self.command(args);
        Background::start(cmd, rendered, None, self.timeout)
    }

    /// Starts `etcdctl <args>` in the background with stdin kept open (e.g. `watch -i`); write to
    /// it with [`Background::send`].
    pub fn spawn_interactive<S: AsRef<OsStr>>(&self, args: &[S], lifetime: Duration) -> Background {
        let (cmd, rendered) = self.command(args);
        Background::start_interactive(cmd, rendered, lifetime)
    }

    /// Like [`Etcdctl::spawn`] with a specific maximum lifetime.
    pub fn spawn_for<S: AsRef<OsStr>>(&self, args: &[S], lifetime: Duration) -> Background {
        let (cmd, rendered) = self.command(args);
        Background::start(cmd, rendered, None, lifetime)
    }
}

/// The stock `etcdutl` (offline snapshot and data-dir tool).
#[derive(Clone, Debug)]
pub struct Etcdutl {
    bin: PathBuf,
    timeout: Duration,
}

impl Default for Etcdutl {
    fn default() -> Self {
        Etcdutl::new()
    }
}

impl Etcdutl {
    /// etcdutl found by the project's convention.
    pub fn new() -> Etcdutl {
        Etcdutl {
            bin: bins::etcdutl_bin(),
            timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// Runs `etcdutl <args>` to completion. Panics if it runs past the timeout.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> CmdOutput {
        let all: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let mut cmd = Command::new(&self.bin);
        cmd.args(&all);
        clean_env(&mut cmd);
        let out = process::run_with_timeout(
            cmd,
            process::render_command("etcdutl", &all),
            None,
            self.timeout,
        );
        if out.timed_out {
            panic!("etcdutl timed out after {:?}: {out}", self.timeout);
        }
        out
    }
}
