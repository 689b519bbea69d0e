//! Child processes that never outlive the test.
//!
//! - Every child is spawned from one long-lived helper thread with `PR_SET_PDEATHSIG=SIGKILL`,
//!   so the kernel kills it when the test process dies, even on SIGKILL or a nextest timeout
//!   (the signal follows the *thread* that spawned the child, hence the dedicated thread).
//! - Owners kill (SIGKILL) and reap their children in `Drop`, so a panicking test cleans up.
//! - Short commands run with a hard timeout; background commands collect their output while
//!   running and are killed when stopped or dropped.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("bftcd-tests-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` so that it dies with the test process (see the module docs).
pub fn spawn(mut cmd: Command) -> std::io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?
}

/// Sends SIGKILL to `child` and reaps it. Idempotent.
pub fn kill_and_wait(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `signal` to a running child (no-op if it already exited).
pub fn signal(child: &mut Child, signal: libc::c_int) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
    }
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The rendered command line (for messages).
    pub command: String,
    /// Exit status; `None` when the command was killed by the harness (timeout or stop).
    pub status: Option<ExitStatus>,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
    /// True when the harness killed it because it ran past its timeout.
    pub timed_out: bool,
}

impl CmdOutput {
    /// Exit code, or -(signal) when killed by a signal, or -1000 when unknown.
    pub fn code(&self) -> i32 {
        match self.status {
            Some(st) => st.code().unwrap_or_else(|| -st.signal().unwrap_or(1000)),
            None => -1000,
        }
    }

    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.map(|s| s.success()).unwrap_or(false)
    }

    /// Panics (showing everything) unless the command failed with `error` on stderr (an etcd
    /// error text such as `etcdserver: permission denied`).
    pub fn expect_error(&self, error: &str) {
        if self.success() || !self.stderr.contains(error) {
            panic!("expected a failure with {error:?}: {self}");
        }
    }

    /// Panics (showing everything) unless the command succeeded; returns stdout.
    pub fn expect_success(&self) -> &str {
        if !self.success() {
            panic!("command failed: {self}");
        }
        &self.stdout
    }

    /// Panics unless the command failed; returns stderr.
    pub fn expect_failure(&self) -> &str {
        if self.success() {
            panic!("command unexpectedly succeeded: {self}");
        }
        &self.stderr
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` -> {}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            match self.status {
                Some(st) => format!("{st}"),
                None => "killed by the harness".to_string(),
            },
            if self.timed_out { " (TIMED OUT)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
}

/// Renders a command for messages, quoting arguments that need it.
pub fn render_command(program: &str, args: &[String]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        if a.is_empty()
            || a.chars()
                .any(|c| c.is_whitespace() || "\"'\\$`*?;&|<>(){}".contains(c))
        {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        } else {
            s.push_str(a);
        }
    }
    s
}

fn collector<R: Read + Send + 'static>(
    mut r: R,
    buf: Arc<Mutex<Vec<u8>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]),
            }
        }
    })
}

/// A command running in the background whose output is captured while it runs.
/// Dropping it kills the process.
pub struct Background {
    command: String,
    child: Option<Child>,
    stdin: Option<std::process::ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<thread::JoinHandle<()>>,
    started: Instant,
    max_lifetime: Duration,
}

impl Background {
    /// Starts `cmd` with stdin closed (or fed `stdin` and then closed) and stdout/stderr captured.
    /// `max_lifetime` bounds every wait on it.
    pub fn start(
        cmd: Command,
        command: String,
        stdin: Option<Vec<u8>>,
        max_lifetime: Duration,
    ) -> Background {
        Self::start_inner(cmd, command, stdin, false, max_lifetime)
    }

    /// Starts `cmd` with its stdin kept open for [`Background::send`] (e.g. `etcdctl watch -i`).
    pub fn start_interactive(cmd: Command, command: String, max_lifetime: Duration) -> Background {
        Self::start_inner(cmd, command, None, true, max_lifetime)
    }

    fn start_inner(
        mut cmd: Command,
        command: String,
        stdin: Option<Vec<u8>>,
        keep_stdin: bool,
        max_lifetime: Duration,
    ) -> Background {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() || keep_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = spawn(cmd).unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
        let kept_stdin = if keep_stdin { child.stdin.take() } else { None };
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            thread::spawn(move || {
                let _ = pipe.write_all(&input);
                // dropping `pipe` closes stdin
            });
        }
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collector(child.stdout.take().expect("stdout pipe"), stdout.clone()),
            collector(child.stderr.take().expect("stderr pipe"), stderr.clone()),
        ];
        Background {
            command,
            child: Some(child),
            stdin: kept_stdin,
            stdout,
            stderr,
            readers,
            started: Instant::now(),
            max_lifetime,
        }
    }

    /// Writes `text` to the stdin of a command started with [`Background::start_interactive`].
    pub fn send(&mut self, text: &str) {
        let pipe = self
            .stdin
            .as_mut()
            .expect("send() needs a command started with start_interactive");
        pipe.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write to `{}`: {e}", self.command));
        let _ = pipe.flush();
    }

    /// Closes stdin (an interactive command then sees end of input).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Standard output captured so far.
    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Standard error captured so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits until `pred(stdout so far)` holds, the process exits, or `timeout` passes
    /// (bounded by the lifetime given at start). Returns whether `pred` held.
    pub fn wait_for_stdout(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout.min(self.remaining_lifetime());
        loop {
            if pred(&self.stdout_so_far()) {
                return true;
            }
            if !self.is_running() {
                // Give the readers a moment to drain the pipes.
                thread::sleep(Duration::from_millis(50));
                return pred(&self.stdout_so_far());
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn remaining_lifetime(&self) -> Duration {
        self.max_lifetime.saturating_sub(self.started.elapsed())
    }

    fn finish(&mut self, status: Option<ExitStatus>, timed_out: bool) -> CmdOutput {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        CmdOutput {
            command: self.command.clone(),
            status,
            stdout: self.stdout_so_far(),
            stderr: self.stderr_so_far(),
            timed_out,
        }
    }

    /// Kills the process (SIGKILL) and returns everything it printed. `status` is `None` unless
    /// it had already exited by itself.
    pub fn stop(mut self) -> CmdOutput {
        let mut status = None;
        if let Some(mut child) = self.child.take() {
            status = child.try_wait().ok().flatten();
            kill_and_wait(&mut child);
        }
        // Only now: closing stdin first could make an interactive command exit by itself.
        self.stdin.take();
        self.finish(status, false)
    }

    /// Waits for the process to exit by itself, up to `timeout` (bounded by its lifetime); on
    /// timeout it is killed and `timed_out` is set.
    pub fn wait(mut self, timeout: Duration) -> CmdOutput {
        self.stdin.take();
        let timeout = timeout.min(self.remaining_lifetime());
        let mut child = self.child.take().expect("child present");
        match wait_timeout(&mut child, timeout) {
            Some(st) => self.finish(Some(st), false),
            None => {
                kill_and_wait(&mut child);
                self.finish(None, true)
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child);
        }
        self.stdin.take();
    }
}

/// Runs `cmd` to completion with a hard timeout; stdin is fed `stdin` (or closed).
/// On timeout the command is killed and the result has `timed_out` set.
pub fn run_with_timeout(
    cmd: Command,
    command: String,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> CmdOutput {
    Background::start(cmd, command, stdin, timeout).wait(timeout)
}

/// Resident memory of process `pid` in MiB (0 once it is gone), from /proc.
pub fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    kib / 1024
}
