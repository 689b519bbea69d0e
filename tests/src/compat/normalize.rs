//! The normaliser: what may legitimately differ between the outputs of two etcd servers
//! (cluster/member ids, raft term/index, lease ids, endpoints, timing, map-ordered listings) is
//! replaced by placeholders; everything else, revisions included, is kept and compared.

use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

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
        self.leases
            .iter()
            .position(|l| *l == id)
            .map(|i| format!("<lease#{}>", i + 1))
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

fn attached_keys_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r"attached keys\(\[([^\]]*)\]\)")
}

fn remaining_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r"TTL\((-?\d+)s\), remaining\((-?\d+)s\)")
}

fn replace_endpoint(text: &str, endpoint: &str) -> String {
    if endpoint.is_empty() {
        return text.to_string();
    }
    // Only whole endpoints: 127.0.0.1:2379 must not match inside 127.0.0.1:23790. A side
    // known by its URL (client TLS) prints it with or without the scheme.
    let pat = match endpoint.split_once("://") {
        Some((_, bare)) => format!(r"(?:https?://)?{}\b", regex::escape(bare)),
        None => format!(r"{}\b", regex::escape(endpoint)),
    };
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
            if let (Some(granted), Some(ttl)) = (
                map.get("granted-ttl").and_then(|g| g.as_i64()),
                map.get("ttl").and_then(|t| t.as_i64()),
            ) {
                if granted > 0 && ttl <= granted && ttl >= granted - REMAINING_TTL_SLACK {
                    map.insert("ttl".to_string(), Value::String("<ttl>".to_string()));
                }
            }
            // etcd lists a lease's keys in map order (random): compare them as a set.
            if map.contains_key("granted-ttl") {
                if let Some(Value::Array(keys)) = map.get_mut("keys") {
                    keys.sort_by_key(|k| k.to_string());
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
    // etcd lists a lease's keys in map order (random): compare them as a set.
    s = attached_keys_re()
        .replace_all(&s, |c: &regex::Captures| {
            let mut keys: Vec<&str> = c[1].split(' ').collect();
            keys.sort_unstable();
            format!("attached keys([{}])", keys.join(" "))
        })
        .into_owned();
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
                x.map(|s| format!("{s:?}"))
                    .unwrap_or_else(|| "<no line>".into()),
                y.map(|s| format!("{s:?}"))
                    .unwrap_or_else(|| "<no line>".into())
            );
        }
    }
    "no line differs".to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> SideContext {
        SideContext {
            endpoint: "127.0.0.1:2379".into(),
            leases: vec![0x694d8b5d7ba5a40b_i64],
        }
    }

    #[test]
    fn removes_ids_from_json_headers() {
        let a = r#"{"header":{"cluster_id":1,"member_id":2,"revision":3,"raft_term":4},"count":1}"#;
        let b = r#"{"header":{"cluster_id":9,"member_id":8,"revision":3,"raft_term":7},"count":1}"#;
        let c = SideContext::default();
        assert_eq!(normalize_output(a, &c), normalize_output(b, &c));
        let d = r#"{"header":{"cluster_id":9,"member_id":8,"revision":4,"raft_term":7},"count":1}"#;
        assert_ne!(
            normalize_output(a, &c),
            normalize_output(d, &c),
            "revisions must still be compared"
        );
    }

    #[test]
    fn replaces_lease_ids_and_timing() {
        let c = ctx();
        assert_eq!(
            normalize_output(
                "lease 694d8b5d7ba5a40b granted with TTL(60s), remaining(57s), attached keys([a])",
                &c
            ),
            "lease <lease#1> granted with TTL(60s), remaining(<ttl>), attached keys([a])"
        );
        // implausible remaining TTL is left alone
        assert!(normalize_output(
            "lease 694d8b5d7ba5a40b granted with TTL(60s), remaining(61s)",
            &c
        )
        .contains("61s"));
        let j = format!(
            r#"{{"id":{},"ttl":58,"granted-ttl":60,"keys":null}}"#,
            0x694d8b5d7ba5a40b_i64
        );
        assert_eq!(
            normalize_output(&j, &c),
            r#"{"granted-ttl":60,"id":"<lease#1>","keys":null,"ttl":"<ttl>"}"#
        );
        assert_eq!(
            normalize_output(
                "127.0.0.1:2379 is healthy: successfully committed proposal: took = 1.9ms",
                &c
            ),
            "<endpoint> is healthy: successfully committed proposal: took = <took>"
        );
        assert_eq!(normalize_output("127.0.0.1:23790", &c), "127.0.0.1:23790");
        assert_eq!(
            normalize_output("lease 694d8b5d7ba5a40b granted with TTL(60s), remaining(60s), attached keys([b a])", &c),
            "lease <lease#1> granted with TTL(60s), remaining(<ttl>), attached keys([a b])"
        );
        assert_eq!(
            normalize_output("\"ClusterID\" : 123\n\"Revision\" : 5", &c),
            "\"ClusterID\" : <id>\n\"Revision\" : 5"
        );
    }

    #[test]
    fn normalises_client_log_lines() {
        let a = r#"{"level":"warn","ts":"2026-11-21T11:22:40.234348Z","logger":"etcd-client","caller":"v3/retry_interceptor.go:63","msg":"retrying of unary invoker failed","target":"etcd-endpoints://0xc0003ae1e0/127.0.0.1:22379","attempt":0,"error":"rpc error: code = InvalidArgument desc = etcdserver: key is not provided"}
Error: etcdserver: key is not provided
"#;
        let b = a
            .replace(
                "0xc0003ae1e0/127.0.0.1:22379",
                "0xc000111111/127.0.0.1:5555",
            )
            .replace("40.234348Z", "41.0Z");
        let c = SideContext::default();
        assert_eq!(normalize_output(a, &c), normalize_output(&b, &c));
        let d = b.replace("InvalidArgument", "Unknown");
        assert_ne!(normalize_output(a, &c), normalize_output(&d, &c));
    }

    #[test]
    fn splits_progress_notifications() {
        let (ev, revs) =
            split_progress_notify("PUT\nk\nv\nprogress notify: 7\nprogress notify: 7\n");
        assert_eq!(ev, "PUT\nk\nv\n");
        assert_eq!(revs, vec![7, 7]);
    }

    #[test]
    fn parses_lease_grants() {
        assert_eq!(
            parse_lease_grant("lease 694d8b5d7ba5a40b granted with TTL(60s)\n"),
            Some(0x694d8b5d7ba5a40b)
        );
        assert_eq!(
            parse_lease_grant(r#"{"cluster_id":1,"ID":7587,"TTL":50,"Error":""}"#),
            Some(7587)
        );
    }
}
