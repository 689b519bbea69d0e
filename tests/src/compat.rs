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
//! - `BFTCD_COMPAT_BANK_ETCD_ARGS="--max-txn-ops=4096 ..."`: extra flags for the etcd behind the
//!   sidecar only (the reference etcd keeps stock defaults).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use regex::Regex;
use serde_json::Value;

use crate::dir::TestDir;
use crate::etcd::EtcdProcess;
use crate::etcdctl::Etcdctl;
use crate::process::{Background, CmdOutput};
use crate::sidecar::Sidecar;

/// Env switch: compare two stock etcds (no sidecar).
pub const BOTH_STOCK_ENV: &str = "BFTCD_COMPAT_BOTH_STOCK";
/// Env: extra `bftcd serve` arguments (whitespace separated).
pub const SIDECAR_ARGS_ENV: &str = "BFTCD_COMPAT_SIDECAR_ARGS";
/// Env: extra flags for the etcd behind the sidecar (whitespace separated).
pub const BANK_ETCD_ARGS_ENV: &str = "BFTCD_COMPAT_BANK_ETCD_ARGS";

/// JSON object keys that differ between any two servers and are removed before comparing.
pub const VOLATILE_JSON_KEYS: &[&str] = &[
    "cluster_id",
    "member_id",
    "raft_term",
    "raft_index",
    "raftTerm",
    "raftIndex",
    "raftAppliedIndex",
    // etcd-client log lines on stderr: timestamp and the client's object address + endpoint
    "ts",
    "target",
    // timing
    "took",
];

/// How far below the granted TTL a reported remaining TTL may be and still count as "timing".
pub const REMAINING_TTL_SLACK: i64 = 30;

/// True when `BFTCD_COMPAT_BOTH_STOCK` asks for two stock etcds.
pub fn both_stock() -> bool {
    std::env::var(BOTH_STOCK_ENV).map(|v| !v.is_empty() && v != "0").unwrap_or(false)
}

fn env_args(var: &str) -> Vec<String> {
    std::env::var(var)
        .map(|s| s.split_whitespace().map(|a| a.to_string()).collect())
        .unwrap_or_default()
}

/// What is known about one server while normalising its output.
#[derive(Clone, Debug, Default)]
pub struct SideContext {
    /// The client endpoint etcdctl talked to (`127.0.0.1:port`), replaced by `<endpoint>`.
    pub endpoint: String,
    /// Lease ids granted so far on this server, in grant order; lease `i` becomes `<lease#i+1>`.
    pub leases: Vec<i64>,
}

impl SideContext {
    fn lease_placeholder(&self, id: i64) -> Option<String> {
        self.leases.iter().position(|l| *l == id).map(|i| format!("<lease#{}>", i + 1))
    }
}

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("valid regex"))
}

fn fields_id_line() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r#"^"(ClusterID|MemberID|RaftTerm)" : \d+$"#)
}

fn took_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r"took = [0-9][0-9A-Za-zµ.]*")
}

fn remaining_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r"TTL\((-?\d+)s\), remaining\((-?\d+)s\)")
}

fn replace_endpoint(text: &str, endpoint: &str) -> String {
    if endpoint.is_empty() {
        return text.to_string();
    }
    // Only whole endpoints: 127.0.0.1:2379 must not match inside 127.0.0.1:23790.
    let pat = format!(r"{}\b", regex::escape(endpoint));
    match Regex::new(&pat) {
        Ok(r) => r.replace_all(text, "<endpoint>").into_owned(),
        Err(_) => text.replace(endpoint, "<endpoint>"),
    }
}

fn replace_leases_in_text(text: &str, ctx: &SideContext) -> String {
    let mut out = text.to_string();
    for (i, id) in ctx.leases.iter().enumerate() {
        let ph = format!("<lease#{}>", i + 1);
        // etcdctl prints lease ids as %016x in simple output and as decimal in `-w fields`.
        for form in [format!("{:016x}", id), format!("{:x}", id), id.to_string()] {
            if let Ok(r) = Regex::new(&format!(r"\b{}\b", regex::escape(&form))) {
                out = r.replace_all(&out, ph.as_str()).into_owned();
            }
        }
    }
    out
}

fn normalize_remaining(text: &str) -> String {
    remaining_re()
        .replace_all(text, |c: &regex::Captures| {
            let granted: i64 = c[1].parse().unwrap_or(0);
            let remaining: i64 = c[2].parse().unwrap_or(i64::MIN);
            if remaining <= granted && remaining >= granted - REMAINING_TTL_SLACK {
                format!("TTL({granted}s), remaining(<ttl>)")
            } else {
                c[0].to_string() // implausible: leave it so the difference shows
            }
        })
        .into_owned()
}

/// Normalises one JSON value in place (see the module docs).
pub fn normalize_json(v: &mut Value, ctx: &SideContext) {
    match v {
        Value::Object(map) => {
            for k in VOLATILE_JSON_KEYS {
                map.remove(*k);
            }
            // lease timetolive: "ttl" is the remaining time, "granted-ttl" the granted one.
            if let (Some(granted), Some(ttl)) =
                (map.get("granted-ttl").and_then(|g| g.as_i64()), map.get("ttl").and_then(|t| t.as_i64()))
            {
                if granted > 0 && ttl <= granted && ttl >= granted - REMAINING_TTL_SLACK {
                    map.insert("ttl".to_string(), Value::String("<ttl>".to_string()));
                }
            }
            for (_, child) in map.iter_mut() {
                normalize_json(child, ctx);
            }
        }
        Value::Array(items) => {
            for item in items {
                normalize_json(item, ctx);
            }
        }
        Value::Number(n) => {
            if let Some(id) = n.as_i64() {
                if let Some(ph) = ctx.lease_placeholder(id) {
                    *v = Value::String(ph);
                }
            }
        }
        Value::String(s) => {
            let replaced = replace_endpoint(s, &ctx.endpoint);
            if replaced != *s {
                *s = replaced;
            }
        }
        _ => {}
    }
}

/// Normalises one line of text output.
fn normalize_text_line(line: &str, ctx: &SideContext) -> String {
    if let Some(c) = fields_id_line().captures(line) {
        return format!("\"{}\" : <id>", &c[1]);
    }
    let mut s = replace_endpoint(line, &ctx.endpoint);
    s = replace_leases_in_text(&s, ctx);
    s = took_re().replace_all(&s, "took = <took>").into_owned();
    normalize_remaining(&s)
}

/// Normalises a whole stdout or stderr text: every line that is a JSON document is parsed,
/// normalised and re-serialised (with sorted keys); other lines get the text rules.
pub fn normalize_output(text: &str, ctx: &SideContext) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let t = line.trim();
        let parsed = if t.starts_with('{') || t.starts_with('[') {
            serde_json::from_str::<Value>(t).ok()
        } else {
            None
        };
        match parsed {
            Some(mut v) => {
                normalize_json(&mut v, ctx);
                out.push_str(&serde_json::to_string(&v).expect("serialise json"));
            }
            None => out.push_str(&normalize_text_line(line, ctx)),
        }
    }
    out
}

/// Splits watch output into the event part and the revisions of `progress notify: N` lines.
pub fn split_progress_notify(stdout: &str) -> (String, Vec<i64>) {
    let mut events = String::new();
    let mut revs = Vec::new();
    for line in stdout.split_inclusive('\n') {
        if let Some(rest) = line.trim_end().strip_prefix("progress notify: ") {
            revs.push(rest.trim().parse().unwrap_or(-1));
            continue;
        }
        // -w json prints the progress response itself as an event-less document.
        if line.contains("\"Events\":[]") && line.contains("\"Canceled\":false") {
            continue;
        }
        events.push_str(line);
    }
    (events, revs)
}

/// A line-oriented description of the first difference between two texts.
pub fn describe_difference(a: &str, b: &str) -> String {
    let al: Vec<&str> = a.split('\n').collect();
    let bl: Vec<&str> = b.split('\n').collect();
    for i in 0..al.len().max(bl.len()) {
        let x = al.get(i).copied();
        let y = bl.get(i).copied();
        if x != y {
            return format!(
                "first difference at line {}:\n  reference: {}\n  subject:   {}",
                i + 1,
                x.map(|s| format!("{s:?}")).unwrap_or_else(|| "<no line>".into()),
                y.map(|s| format!("{s:?}")).unwrap_or_else(|| "<no line>".into())
            );
        }
    }
    "no line differs".to_string()
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
            ctx: SideContext { endpoint, leases: Vec::new() },
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

    /// The store revision seen by a serializable-free (linearizable) read.
    pub fn revision(&self) -> i64 {
        let out = self.ctl.run(&["get", "bftcd-tests/revision-probe", "-w", "json"]);
        let v: Value = serde_json::from_str(out.expect_success().trim())
            .unwrap_or_else(|e| panic!("cannot parse {out}: {e}"));
        v["header"]["revision"].as_i64().unwrap_or_else(|| panic!("no header.revision in {out}"))
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

/// Parses the lease id out of `etcdctl lease grant` output (simple or json).
pub fn parse_lease_grant(stdout: &str) -> Option<i64> {
    static SIMPLE: OnceLock<Regex> = OnceLock::new();
    let simple = re(&SIMPLE, r"lease ([0-9a-f]+) granted with TTL");
    if let Some(c) = simple.captures(stdout) {
        return i64::from_str_radix(&c[1], 16).ok();
    }
    let v: Value = serde_json::from_str(stdout.trim()).ok()?;
    v.get("ID").and_then(|id| id.as_i64())
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
        let stock = both_stock();
        let bank_extra = env_args(BANK_ETCD_ARGS_ENV);
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
            let side = Side::new("subject", "second stock etcd (BFTCD_COMPAT_BOTH_STOCK=1)", bank_etcd.endpoint());
            (None, side)
        } else {
            let mut args: Vec<String> = sidecar_args.iter().map(|s| s.to_string()).collect();
            args.extend(env_args(SIDECAR_ARGS_ENV));
            let arg_refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            let sc = Sidecar::start_with_args(dir, "sidecar", &bank_etcd.endpoint(), &arg_refs);
            let side = Side::new("subject", "bftcd sidecar", sc.endpoint());
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
    pub fn expect_same<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, reference: T, subject: T) {
        if reference != subject {
            self.mismatch(format!("{what}: reference {reference:?}, subject {subject:?}"));
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
        let both = Both { reference: self.reference.run(args, stdin), subject: self.subject.run(args, stdin) };
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
        let streams: &[(&str, fn(&CmdOutput) -> &str)] = match how {
            Compare::All | Compare::SortedLines => &[("stdout", |o| &o.stdout), ("stderr", |o| &o.stderr)],
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
        for (side, out) in [(&mut self.reference, &both.reference), (&mut self.subject, &both.subject)] {
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

    /// Waits (up to `timeout`) until `done` holds for each side's stdout, then kills both and
    /// returns what they printed. A side that never satisfies `done` is recorded as a mismatch.
    pub fn stop_both(&mut self, mut bg: BothBackground, timeout: Duration, done: impl Fn(&str) -> bool) -> Both {
        let ok_a = bg.reference.wait_for_stdout(timeout, &done);
        let ok_b = bg.subject.wait_for_stdout(timeout, &done);
        // A little grace for trailing output that must not be there (or must be equal).
        std::thread::sleep(Duration::from_millis(200));
        let both = Both { reference: bg.reference.stop(), subject: bg.subject.stop() };
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
        let both = Both { reference: bg.reference.wait(timeout), subject: bg.subject.wait(timeout) };
        self.log_both(&format!("(background, waited) {}", bg.args.join(" ")), &both);
        if both.reference.timed_out {
            panic!("reference did not exit within {timeout:?} (test bug): {}", both.reference);
        }
        if both.subject.timed_out {
            self.mismatch(format!("`etcdctl {}`: the subject did not exit within {timeout:?}", bg.args.join(" ")));
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
    s.split('\n').map(|l| format!("    |{l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> SideContext {
        SideContext { endpoint: "127.0.0.1:2379".into(), leases: vec![0x694d8b5d7ba5a40b_i64] }
    }

    #[test]
    fn removes_ids_from_json_headers() {
        let a = r#"{"header":{"cluster_id":1,"member_id":2,"revision":3,"raft_term":4},"count":1}"#;
        let b = r#"{"header":{"cluster_id":9,"member_id":8,"revision":3,"raft_term":7},"count":1}"#;
        let c = SideContext::default();
        assert_eq!(normalize_output(a, &c), normalize_output(b, &c));
        let d = r#"{"header":{"cluster_id":9,"member_id":8,"revision":4,"raft_term":7},"count":1}"#;
        assert_ne!(normalize_output(a, &c), normalize_output(d, &c), "revisions must still be compared");
    }

    #[test]
    fn replaces_lease_ids_and_timing() {
        let c = ctx();
        assert_eq!(
            normalize_output("lease 694d8b5d7ba5a40b granted with TTL(60s), remaining(57s), attached keys([a])", &c),
            "lease <lease#1> granted with TTL(60s), remaining(<ttl>), attached keys([a])"
        );
        // implausible remaining TTL is left alone
        assert!(normalize_output("lease 694d8b5d7ba5a40b granted with TTL(60s), remaining(61s)", &c).contains("61s"));
        let j = format!(r#"{{"id":{},"ttl":58,"granted-ttl":60,"keys":null}}"#, 0x694d8b5d7ba5a40b_i64);
        assert_eq!(normalize_output(&j, &c), r#"{"granted-ttl":60,"id":"<lease#1>","keys":null,"ttl":"<ttl>"}"#);
        assert_eq!(
            normalize_output("127.0.0.1:2379 is healthy: successfully committed proposal: took = 1.9ms", &c),
            "<endpoint> is healthy: successfully committed proposal: took = <took>"
        );
        assert_eq!(normalize_output("127.0.0.1:23790", &c), "127.0.0.1:23790");
        assert_eq!(normalize_output("\"ClusterID\" : 123\n\"Revision\" : 5", &c), "\"ClusterID\" : <id>\n\"Revision\" : 5");
    }

    #[test]
    fn normalises_client_log_lines() {
        let a = r#"{"level":"warn","ts":"2026-11-21T11:22:40.234348Z","logger":"etcd-client","caller":"v3/retry_interceptor.go:63","msg":"retrying of unary invoker failed","target":"etcd-endpoints://0xc0003ae1e0/127.0.0.1:22379","attempt":0,"error":"rpc error: code = InvalidArgument desc = etcdserver: key is not provided"}
Error: etcdserver: key is not provided
"#;
        let b = a.replace("0xc0003ae1e0/127.0.0.1:22379", "0xc000111111/127.0.0.1:5555").replace("40.234348Z", "41.0Z");
        let c = SideContext::default();
        assert_eq!(normalize_output(a, &c), normalize_output(&b, &c));
        let d = b.replace("InvalidArgument", "Unknown");
        assert_ne!(normalize_output(a, &c), normalize_output(&d, &c));
    }

    #[test]
    fn splits_progress_notifications() {
        let (ev, revs) = split_progress_notify("PUT\nk\nv\nprogress notify: 7\nprogress notify: 7\n");
        assert_eq!(ev, "PUT\nk\nv\n");
        assert_eq!(revs, vec![7, 7]);
    }

    #[test]
    fn parses_lease_grants() {
        assert_eq!(parse_lease_grant("lease 694d8b5d7ba5a40b granted with TTL(60s)\n"), Some(0x694d8b5d7ba5a40b));
        assert_eq!(parse_lease_grant(r#"{"cluster_id":1,"ID":7587,"TTL":50,"Error":""}"#), Some(7587));
    }
}
