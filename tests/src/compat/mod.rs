//! etcdctl compatibility checking: the same etcdctl commands run against a stock etcd used
//! directly (the *reference*) and against a bftcd sidecar in front of another stock etcd (the
//! *subject*), and their outputs compared after normalising only what legitimately differs
//! between two servers: cluster/member ids, raft term/index, lease ids, endpoints and timing.
//!
//! Environment switches:
//! - `BFTCD_COMPAT_BOTH_STOCK=1`: the subject is a second plain stock etcd instead of a sidecar.
//!   Used to prove the normaliser makes two stock etcds compare equal, so that any difference
//!   seen with the sidecar is a real sidecar bug.
//! - `BFTCD_COMPAT_SIDECAR_ARGS="--flag value ..."`: extra arguments for `bftcd serve`.
//! - `BFTCD_COMPAT_CLIENT_TLS=1`: the sidecar serves TLS with client certificate auth and
//!   the subject's etcdctl uses `https://`, the CA and a client certificate (from
//!   `bftcd client-certs` in `<dir>/clients`); the reference stays plaintext.
//! - `BFTCD_COMPAT_BANK_ETCD_ARGS="--max-txn-ops=4096 ..."`: flags for the etcd behind the
//!   sidecar only, replacing the default [`crate::sidecar::BANK_ETCD_ARGS`] (the reference etcd
//!   keeps stock defaults; the sidecar must enforce them towards clients itself).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::dir::TestDir;
use crate::etcd::EtcdProcess;
use crate::etcdctl::Etcdctl;
use crate::process::{Background, CmdOutput};
use crate::sidecar::Sidecar;
use crate::tls::ClientCerts;

mod normalize;
pub use normalize::{
    describe_difference, normalize_json, normalize_output, parse_lease_grant,
    split_progress_notify, SideContext, REMAINING_TTL_SLACK, VOLATILE_JSON_KEYS,
};

/// Env switch: compare two stock etcds (no sidecar).
pub const BOTH_STOCK_ENV: &str = "BFTCD_COMPAT_BOTH_STOCK";
/// Env: extra `bftcd serve` arguments (whitespace separated).
pub const SIDECAR_ARGS_ENV: &str = "BFTCD_COMPAT_SIDECAR_ARGS";
/// Env switch: the sidecar serves client TLS with client certificate auth.
pub const CLIENT_TLS_ENV: &str = "BFTCD_COMPAT_CLIENT_TLS";
/// Env: extra flags for the etcd behind the sidecar (whitespace separated).
pub const BANK_ETCD_ARGS_ENV: &str = "BFTCD_COMPAT_BANK_ETCD_ARGS";

fn env_flag(var: &str) -> bool {
    std::env::var(var)
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false)
}

/// True when `BFTCD_COMPAT_BOTH_STOCK` asks for two stock etcds.
pub fn both_stock() -> bool {
    env_flag(BOTH_STOCK_ENV)
}

/// True when `BFTCD_COMPAT_CLIENT_TLS` asks for a sidecar serving client TLS.
pub fn client_tls() -> bool {
    env_flag(CLIENT_TLS_ENV)
}

fn env_args(var: &str) -> Vec<String> {
    std::env::var(var)
        .map(|s| s.split_whitespace().map(|a| a.to_string()).collect())
        .unwrap_or_default()
}

/// How two outputs are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// Exit code, stdout and stderr, each normalised.
    All,
    /// Exit code and normalised stdout (stderr ignored).
    Stdout,
    /// Exit code, and stdout/stderr normalised with their lines sorted (order-free listings).
    SortedLines,
    /// Exit code only.
    ExitCode,
}

/// One server under comparison.
pub struct Side {
    /// `reference` or `subject`.
    pub label: String,
    /// What runs there (`stock etcd`, `bftcd sidecar`, ...).
    pub kind: String,
    /// etcdctl pointed at it.
    pub ctl: Etcdctl,
    /// Normalisation context.
    pub ctx: SideContext,
    /// Per-side values substituted for `{NAME}` in command arguments and stdin.
    pub vars: BTreeMap<String, String>,
}

impl Side {
    fn new(label: &str, kind: &str, endpoint: String) -> Side {
        Side {
            label: label.to_string(),
            kind: kind.to_string(),
            ctl: Etcdctl::new(endpoint.clone()),
            ctx: SideContext {
                endpoint,
                leases: Vec::new(),
            },
            vars: BTreeMap::new(),
        }
    }

    /// Replaces `{NAME}` by this side's value of variable NAME.
    pub fn substitute(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (k, v) in &self.vars {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> CmdOutput {
        let args: Vec<String> = args.iter().map(|a| self.substitute(a)).collect();
        match stdin {
            Some(input) => self.ctl.run_with_stdin(&args, self.substitute(input)),
            None => self.ctl.run(&args),
        }
    }

    /// The current store revision (header of a linearizable read).
    pub fn revision(&self) -> i64 {
        let out = self
            .ctl
            .run(&["get", "bftcd-tests/revision-probe", "-w", "json"]);
        let v: Value = serde_json::from_str(out.expect_success().trim())
            .unwrap_or_else(|e| panic!("cannot parse {out}: {e}"));
        v["header"]["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("no header.revision in {out}"))
    }
}

/// Outputs of one command on both sides.
#[derive(Debug, Clone)]
pub struct Both {
    /// The reference side's output.
    pub reference: CmdOutput,
    /// The subject side's output.
    pub subject: CmdOutput,
}

/// A background command (watch) on both sides.
pub struct BothBackground {
    args: Vec<String>,
    reference: Background,
    subject: Background,
}

impl BothBackground {
    /// Writes `text` to both commands' stdin (see [`CompatPair::spawn_both_interactive`]).
    pub fn send(&mut self, text: &str) {
        self.reference.send(text);
        self.subject.send(text);
    }

    /// Waits up to `timeout` until `pred` holds on the reference's stdout and then on the
    /// subject's; returns (reference ok, subject ok).
    pub fn wait_for_stdout(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> (bool, bool) {
        (
            self.reference.wait_for_stdout(timeout, &pred),
            self.subject.wait_for_stdout(timeout, &pred),
        )
    }
}

/// The reference etcd, the subject (sidecar + its etcd, or a second stock etcd) and the record
/// of every difference found. Dropping it with unreported differences panics; call
/// [`CompatPair::finish`] at the end of a test.
pub struct CompatPair {
    /// The stock etcd used directly.
    pub reference: Side,
    /// The sidecar (or second stock etcd).
    pub subject: Side,
    mismatches: Vec<String>,
    transcript: Option<File>,
    finished: bool,
    // Processes last, so the Sides' etcdctl handles are irrelevant to drop order.
    /// The etcd behind the sidecar (or the second stock etcd).
    pub bank_etcd: EtcdProcess,
    /// The sidecar, unless `BFTCD_COMPAT_BOTH_STOCK` is set.
    pub sidecar: Option<Sidecar>,
    /// The reference etcd.
    pub reference_etcd: EtcdProcess,
}

impl CompatPair {
    /// Starts etcd A (reference), etcd B and a sidecar in front of B (or B alone when
    /// `BFTCD_COMPAT_BOTH_STOCK=1`). `etcd_args` go to both etcds, `sidecar_args` to the sidecar
    /// (followed by `BFTCD_COMPAT_SIDECAR_ARGS`).
    pub fn start(dir: &TestDir, etcd_args: &[&str], sidecar_args: &[&str]) -> CompatPair {
        Self::start_tls(dir, etcd_args, sidecar_args, client_tls())
    }

    /// [`CompatPair::start`] with the sidecar serving client TLS or not, whatever
    /// `BFTCD_COMPAT_CLIENT_TLS` says.
    pub fn start_tls(dir: &TestDir, etcd_args: &[&str], sidecar_args: &[&str], tls: bool) -> CompatPair {
        let stock = both_stock();
        let bank_extra: Vec<String> = match std::env::var_os(BANK_ETCD_ARGS_ENV) {
            Some(_) => env_args(BANK_ETCD_ARGS_ENV),
            None => crate::sidecar::BANK_ETCD_ARGS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let (reference_etcd, bank_etcd) = std::thread::scope(|s| {
            let a = s.spawn(|| EtcdProcess::start_with_args(dir, "reference", etcd_args));
            let b = s.spawn(|| {
                let mut args: Vec<&str> = etcd_args.to_vec();
                if !stock {
                    args.extend(bank_extra.iter().map(|s| s.as_str()));
                }
                EtcdProcess::start_with_args(dir, "bank", &args)
            });
            let a = a.join();
            let b = b.join();
            match (a, b) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => std::panic::resume_unwind(e),
            }
        });
        let (sidecar, subject) = if stock {
            let side = Side::new(
                "subject",
                "second stock etcd (BFTCD_COMPAT_BOTH_STOCK=1)",
                bank_etcd.endpoint(),
            );
            (None, side)
        } else {
            let mut args: Vec<String> = sidecar_args.iter().map(|s| s.to_string()).collect();
            args.extend(env_args(SIDECAR_ARGS_ENV));
            let certs = tls.then(|| ClientCerts::make(&dir.join("clients"), &["admin"], &["sidecar"]));
            if let Some(c) = &certs {
                args.extend(c.serve_args("sidecar"));
            }
            let arg_refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            let sc = Sidecar::start_with_args(dir, "sidecar", &bank_etcd.endpoint(), &arg_refs);
            let side = match &certs {
                None => Side::new("subject", "bftcd sidecar", sc.endpoint()),
                Some(c) => {
                    let mut side = Side::new("subject", "bftcd sidecar over client TLS", sc.client_url());
                    side.ctl = c.etcdctl(&sc.endpoint(), Some("admin"));
                    side
                }
            };
            (Some(sc), side)
        };
        let reference = Side::new("reference", "stock etcd", reference_etcd.endpoint());
        let transcript = File::create(dir.join("compat-transcript.log")).ok();
        let mut pair = CompatPair {
            reference,
            subject,
            mismatches: Vec::new(),
            transcript,
            finished: false,
            bank_etcd,
            sidecar,
            reference_etcd,
        };
        let header = format!(
            "reference: stock etcd at {}\nsubject: {} at {}\n\n",
            pair.reference.ctx.endpoint, pair.subject.kind, pair.subject.ctx.endpoint
        );
        pair.log(&header);
        pair
    }

    /// True when the subject is a sidecar (not `BFTCD_COMPAT_BOTH_STOCK`).
    pub fn has_sidecar(&self) -> bool {
        self.sidecar.is_some()
    }

    fn log(&mut self, text: &str) {
        if let Some(f) = self.transcript.as_mut() {
            let _ = f.write_all(text.as_bytes());
        }
    }

    fn log_both(&mut self, what: &str, both: &Both) {
        let text = format!(
            "=== {what}\n--- reference: {}\n--- subject: {}\n\n",
            both.reference, both.subject
        );
        self.log(&text);
    }

    /// Records a difference (reported by [`CompatPair::finish`]).
    pub fn mismatch(&mut self, text: String) {
        self.log(&format!("!!! MISMATCH: {text}\n\n"));
        eprintln!("compat mismatch: {text}\n");
        self.mismatches.push(text);
    }

    /// Records a difference unless `reference == subject`.
    pub fn expect_same<T: PartialEq + std::fmt::Debug>(
        &mut self,
        what: &str,
        reference: T,
        subject: T,
    ) {
        if reference != subject {
            self.mismatch(format!(
                "{what}: reference {reference:?}, subject {subject:?}"
            ));
        }
    }

    /// Records a difference unless `cond` holds.
    pub fn expect(&mut self, cond: bool, what: impl Into<String>) {
        if !cond {
            self.mismatch(what.into());
        }
    }

    /// Runs `etcdctl <args>` on both sides (reference first) without comparing.
    pub fn both(&mut self, args: &[&str]) -> Both {
        self.both_stdin(args, None)
    }

    fn both_stdin(&mut self, args: &[&str], stdin: Option<&str>) -> Both {
        let both = Both {
            reference: self.reference.run(args, stdin),
            subject: self.subject.run(args, stdin),
        };
        self.log_both(&args.join(" "), &both);
        both
    }

    /// Runs `etcdctl <args>` on both sides and compares exit code, stdout and stderr.
    pub fn check(&mut self, args: &[&str]) -> Both {
        self.check_with(args, None, Compare::All)
    }

    /// Like [`CompatPair::check`] with `stdin` fed to both (may use `{VAR}`s).
    pub fn check_stdin(&mut self, args: &[&str], stdin: &str) -> Both {
        self.check_with(args, Some(stdin), Compare::All)
    }

    /// Runs on both sides and compares as `how` says.
    pub fn check_with(&mut self, args: &[&str], stdin: Option<&str>, how: Compare) -> Both {
        let both = self.both_stdin(args, stdin);
        self.compare(&args.join(" "), &both, how);
        both
    }

    /// Compares two outputs already obtained.
    pub fn compare(&mut self, what: &str, both: &Both, how: Compare) {
        let rc = (both.reference.code(), both.subject.code());
        let mut problems = Vec::new();
        if rc.0 != rc.1 {
            problems.push(format!("exit code: reference {}, subject {}", rc.0, rc.1));
        }
        type Stream = (&'static str, fn(&CmdOutput) -> &str);
        let streams: &[Stream] = match how {
            Compare::All | Compare::SortedLines => {
                &[("stdout", |o| &o.stdout), ("stderr", |o| &o.stderr)]
            }
            Compare::Stdout => &[("stdout", |o| &o.stdout)],
            Compare::ExitCode => &[],
        };
        for (name, get) in streams {
            let mut a = normalize_output(get(&both.reference), &self.reference.ctx);
            let mut b = normalize_output(get(&both.subject), &self.subject.ctx);
            if how == Compare::SortedLines {
                a = sorted_lines(&a);
                b = sorted_lines(&b);
            }
            if a != b {
                problems.push(format!(
                    "{name} differs; {}\n  normalised reference {name}:\n{}\n  normalised subject {name}:\n{}",
                    describe_difference(&a, &b),
                    indent(&a),
                    indent(&b)
                ));
            }
        }
        if !problems.is_empty() {
            self.mismatch(format!("`etcdctl {what}`\n{}", problems.join("\n")));
        }
    }

    /// `etcdctl <args>` (a `lease grant`) on both sides; the granted ids are stored as variable
    /// `var` (hex, as etcdctl takes them) and registered for normalisation, then the outputs
    /// are compared.
    pub fn grant_lease(&mut self, var: &str, args: &[&str]) -> Both {
        let both = self.both(args);
        for (side, out) in [
            (&mut self.reference, &both.reference),
            (&mut self.subject, &both.subject),
        ] {
            match parse_lease_grant(&out.stdout) {
                Some(id) => {
                    side.vars.insert(var.to_string(), format!("{id:x}"));
                    side.ctx.leases.push(id);
                }
                None => {
                    // Keep both sides' variables aligned so later commands still run.
                    side.vars.insert(var.to_string(), "0".to_string());
                }
            }
        }
        if parse_lease_grant(&both.reference.stdout).is_none() {
            panic!("reference etcd did not grant a lease: {}", both.reference);
        }
        self.compare(&args.join(" "), &both, Compare::All);
        both
    }

    /// Sets variable `var` to the same value on both sides.
    pub fn set_var(&mut self, var: &str, value: impl Into<String>) {
        let v = value.into();
        self.reference.vars.insert(var.to_string(), v.clone());
        self.subject.vars.insert(var.to_string(), v);
    }

    /// The reference's current revision, recording a difference if the subject's differs.
    pub fn revision(&mut self) -> i64 {
        let a = self.reference.revision();
        let b = self.subject.revision();
        self.expect_same("current revision", a, b);
        a
    }

    /// Starts `etcdctl <args>` (e.g. a watch) in the background on both sides.
    pub fn spawn_both(&mut self, args: &[&str], lifetime: Duration) -> BothBackground {
        let ra: Vec<String> = args.iter().map(|a| self.reference.substitute(a)).collect();
        let sa: Vec<String> = args.iter().map(|a| self.subject.substitute(a)).collect();
        BothBackground {
            args: args.iter().map(|s| s.to_string()).collect(),
            reference: self.reference.ctl.spawn_for(&ra, lifetime),
            subject: self.subject.ctl.spawn_for(&sa, lifetime),
        }
    }

    /// Starts `etcdctl <args>` (e.g. `watch -i`) on both sides with stdin kept open.
    pub fn spawn_both_interactive(&mut self, args: &[&str], lifetime: Duration) -> BothBackground {
        let ra: Vec<String> = args.iter().map(|a| self.reference.substitute(a)).collect();
        let sa: Vec<String> = args.iter().map(|a| self.subject.substitute(a)).collect();
        BothBackground {
            args: args.iter().map(|s| s.to_string()).collect(),
            reference: self.reference.ctl.spawn_interactive(&ra, lifetime),
            subject: self.subject.ctl.spawn_interactive(&sa, lifetime),
        }
    }

    /// Waits (up to `timeout`) until `done` holds for each side's stdout, then kills both and
    /// returns what they printed. A side that never satisfies `done` is recorded as a mismatch.
    pub fn stop_both(
        &mut self,
        mut bg: BothBackground,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Both {
        let ok_a = bg.reference.wait_for_stdout(timeout, &done);
        let ok_b = bg.subject.wait_for_stdout(timeout, &done);
        // A little grace for trailing output that must not be there (or must be equal).
        std::thread::sleep(Duration::from_millis(200));
        let both = Both {
            reference: bg.reference.stop(),
            subject: bg.subject.stop(),
        };
        let what = bg.args.join(" ");
        self.log_both(&format!("(background) {what}"), &both);
        if !ok_a {
            panic!(
                "reference never reached the expected output for `etcdctl {what}` within {timeout:?} \
                 (test bug, not a sidecar bug): {}",
                both.reference
            );
        }
        if !ok_b {
            self.mismatch(format!(
                "`etcdctl {what}`: the subject never printed the expected output within {timeout:?}\n{}",
                describe_difference(
                    &normalize_output(&both.reference.stdout, &self.reference.ctx),
                    &normalize_output(&both.subject.stdout, &self.subject.ctx)
                )
            ));
        }
        both
    }

    /// Waits for both background commands to exit by themselves (up to `timeout`).
    pub fn wait_both(&mut self, bg: BothBackground, timeout: Duration) -> Both {
        let both = Both {
            reference: bg.reference.wait(timeout),
            subject: bg.subject.wait(timeout),
        };
        self.log_both(
            &format!("(background, waited) {}", bg.args.join(" ")),
            &both,
        );
        if both.reference.timed_out {
            panic!(
                "reference did not exit within {timeout:?} (test bug): {}",
                both.reference
            );
        }
        if both.subject.timed_out {
            self.mismatch(format!(
                "`etcdctl {}`: the subject did not exit within {timeout:?}",
                bg.args.join(" ")
            ));
        }
        both
    }

    /// Differences found so far.
    pub fn mismatches(&self) -> &[String] {
        &self.mismatches
    }

    /// Panics listing every difference found, if any.
    pub fn finish(mut self) {
        self.finished = true;
        self.report();
    }

    fn report(&mut self) {
        if self.mismatches.is_empty() {
            return;
        }
        let all = std::mem::take(&mut self.mismatches);
        panic!(
            "{} etcdctl output difference(s) between stock etcd (reference) and {} (subject):\n\n{}",
            all.len(),
            self.subject.kind,
            all.iter().enumerate().map(|(i, m)| format!("#{}: {m}", i + 1)).collect::<Vec<_>>().join("\n\n")
        );
    }
}

impl Drop for CompatPair {
    fn drop(&mut self) {
        if !self.finished && !std::thread::panicking() {
            self.report();
        }
    }
}

fn sorted_lines(s: &str) -> String {
    let mut lines: Vec<&str> = s.split('\n').collect();
    lines.sort_unstable();
    lines.join("\n")
}

fn indent(s: &str) -> String {
    s.split('\n')
        .map(|l| format!("    |{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
