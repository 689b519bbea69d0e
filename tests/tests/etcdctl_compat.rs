//! Acceptance: stock etcdctl 3.5 against a bftcd sidecar prints what it prints against stock
//! etcd, except member ids and timing.
//!
//! Every test starts (a) a stock etcd used directly (the *reference*) and (b) a stock etcd with
//! a `bftcd serve` sidecar in front (the *subject*), runs the same etcdctl commands against both,
//! and compares exit codes, stdout and stderr after normalising only cluster/member ids, raft
//! term/index, lease ids, endpoints and timing (see `bftcd_tests::compat`). All differences of a
//! test are collected and reported together; `compat-transcript.log` in the kept test directory
//! has every command with both raw outputs.
//!
//! `BFTCD_COMPAT_BOTH_STOCK=1` replaces the sidecar by a second plain stock etcd: every test must
//! then pass, which shows that the normaliser hides only what legitimately differs.

use std::time::Duration;

use bftcd_tests::Etcdctl;
use bftcd_tests::compat::{split_progress_notify, Compare, CompatPair};
use bftcd_tests::{Etcdutl, TestDir};
use serde_json::Value;

const WATCH_WAIT: Duration = Duration::from_secs(15);
const WATCH_LIFETIME: Duration = Duration::from_secs(60);
/// Time given to a background `etcdctl watch` without `--rev` to establish its watch.
const WATCH_SETTLE: Duration = Duration::from_millis(1500);

fn start(name: &str) -> (TestDir, CompatPair) {
    let dir = TestDir::new(name);
    let pair = CompatPair::start(&dir, &[], &[]);
    (dir, pair)
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not json ({e}): {text}"))
}

#[test]
fn put_and_get() {
    let (_dir, p) = start("compat-kv");
    check_put_and_get(p);
}

/// The same through a sidecar that serves client TLS with client certificate auth (the whole
/// suite runs so with `BFTCD_COMPAT_CLIENT_TLS=1`).
#[test]
fn put_and_get_over_client_tls() {
    let dir = TestDir::new("compat-kv-tls");
    let p = CompatPair::start_tls(&dir, &[], &[], true);
    check_put_and_get(p);
}

fn check_put_and_get(mut p: CompatPair) {
    p.check(&["put", "foo", "bar"]);
    p.check(&["put", "foo2", "baz", "-w", "json"]);
    p.check(&["put", "fop", "x"]);
    for i in 1..=5 {
        // values in the opposite order of keys, so that sorting by value differs from by key
        p.check(&["put", &format!("a/{i}"), &format!("value-{}", 6 - i)]);
    }
    p.check(&["put", "a/3", "value-3b"]);
    p.check(&["put", "foo", "bar2", "--prev-kv"]);
    p.check(&["put", "foo", "bar3", "--prev-kv", "-w", "json"]);
    p.check(&["put", "foo", "--ignore-value", "--prev-kv"]);
    p.check(&["put", "spaced key", "a value with spaces"]);
    p.check(&["put", "unicode/ключ", "значение ✓"]);
    p.check_stdin(&["put", "from-stdin"], "value read from stdin");
    p.check(&["put", "empty-value", ""]);
    p.check(&["put", "foo2", "baz2", "-w", "fields"]);

    p.check(&["get", "foo"]);
    p.check(&["get", "foo", "-w", "json"]);
    p.check(&["get", "foo", "-w", "fields"]);
    p.check(&["get", "foo", "-w", "table"]);
    p.check(&["get", "foo", "--hex"]);
    p.check(&["get", "empty-value", "-w", "json"]);
    p.check(&["get", "nonexistent"]);
    p.check(&["get", "nonexistent", "-w", "json"]);
    p.check(&["get", "foo", "--print-value-only"]);
    p.check(&["get", "foo", "--consistency=s"]);
    p.check(&["get", "foo", "--rev", "2"]);
    p.check(&["get", "foo", "--rev", "2", "-w", "json"]);
    p.check(&["get", "foo", "--rev", "0"]);

    p.check(&["get", "a/", "--prefix"]);
    p.check(&["get", "a/", "--prefix", "-w", "json"]);
    p.check(&["get", "a/", "--prefix", "--limit", "2"]);
    p.check(&["get", "a/", "--prefix", "--limit", "2", "-w", "json"]);
    p.check(&["get", "a/", "--prefix", "--limit", "2", "-w", "fields"]);
    p.check(&["get", "a/", "--prefix", "--count-only", "-w", "fields"]);
    p.check(&["get", "a/", "--prefix", "--count-only", "-w", "json"]);
    p.check(&["get", "a/", "--prefix", "--keys-only"]);
    p.check(&["get", "a/", "--prefix", "--keys-only", "-w", "json"]);
    p.check(&["get", "a/", "--prefix", "--print-value-only"]);
    p.check(&["get", "a/", "--prefix", "--rev", "6", "-w", "json"]);
    p.check(&[
        "get", "a/", "--prefix", "--rev", "6", "--limit", "1", "-w", "json",
    ]);
    for (sort, order) in [
        ("KEY", "DESCEND"),
        ("KEY", "ASCEND"),
        ("VALUE", "ASCEND"),
        ("VALUE", "DESCEND"),
        ("MODIFY", "DESCEND"),
        ("CREATE", "DESCEND"),
        ("VERSION", "DESCEND"),
    ] {
        p.check(&[
            "get",
            "a/",
            "--prefix",
            &format!("--sort-by={sort}"),
            &format!("--order={order}"),
        ]);
    }
    p.check(&[
        "get",
        "a/",
        "--prefix",
        "--sort-by=VALUE",
        "--limit",
        "2",
        "-w",
        "json",
    ]);
    p.check(&["get", "a/", "--prefix", "--order=DESCEND", "--limit", "3"]);
    p.check(&[
        "get",
        "a/",
        "--prefix",
        "--min-mod-revision=5",
        "--max-mod-revision=8",
    ]);
    p.check(&["get", "a/", "--prefix", "--min-create-revision=6"]);
    p.check(&["get", "a/2", "a/4"]);
    p.check(&["get", "a/2", "a/4", "-w", "json"]);
    p.check(&["get", "a/3", "--from-key"]);
    p.check(&["get", "a/3", "--from-key", "--limit", "3", "--keys-only"]);
    // The whole keyspace: whatever the sidecar keeps for itself must not show.
    p.check(&["get", "", "--from-key", "--keys-only"]);
    p.check(&["get", "", "--prefix", "-w", "json"]);
    p.check(&["get", "", "--prefix", "--count-only", "-w", "fields"]);

    p.check(&["del", "nonexistent"]);
    p.check(&["del", "foo", "--prev-kv"]);
    p.check(&["del", "a/1"]);
    p.check(&["del", "a/", "--prefix", "--prev-kv"]);
    p.check(&["del", "fo", "--prefix", "-w", "json"]);
    p.check(&["del", "fo", "--prefix"]);
    p.check(&["del", "t", "--from-key", "--prev-kv", "-w", "json"]);
    p.check(&["get", "", "--from-key"]);
    p.check(&["get", "foo", "--rev", "3", "-w", "json"]);
    p.revision();
    p.finish();
}

#[test]
fn delete_everything() {
    let (_dir, mut p) = start("compat-del-all");
    for k in ["a", "b/c", "z", "\u{7f}"] {
        p.check(&["put", k, "v"]);
    }
    p.check(&["get", "", "--prefix", "--count-only", "-w", "fields"]);
    // An operator wiping the keyspace: the sidecar must delete exactly the client's keys.
    p.check(&["del", "", "--prefix"]);
    p.check(&["get", "", "--prefix"]);
    p.check(&["put", "after", "wipe"]);
    p.check(&["get", "", "--from-key", "-w", "json"]);
    p.check(&["del", "", "--from-key", "--prev-kv"]);
    p.check(&["get", "", "--from-key", "-w", "json"]);
    p.finish();
}

#[test]
fn txn_interactive() {
    let (_dir, mut p) = start("compat-txn");
    p.check(&["put", "t1", "v1"]);
    p.check(&["put", "t2", "v2"]);

    // success branch: value and version compares
    p.check_stdin(
        &["txn", "-i"],
        "value(\"t1\") = \"v1\"\nversion(\"t1\") = \"1\"\n\nput t1 v1b\nget t2\n\nput t1 never\n\n",
    );
    // failure branch: mod revision does not match
    p.check_stdin(
        &["txn", "-i"],
        "mod(\"t1\") = \"1\"\n\nput t1 never\n\nget t1\nput t3 from-failure\n\n",
    );
    p.check(&["get", "t", "--prefix", "-w", "json"]);

    // create revision compare with the real create revision of t2
    let create_rev = {
        let both = p.both(&["get", "t2", "-w", "json"]);
        json(&both.reference.stdout)["kvs"][0]["create_revision"]
            .as_i64()
            .expect("create_revision")
    };
    let mod_rev = {
        let both = p.both(&["get", "t1", "-w", "json"]);
        json(&both.reference.stdout)["kvs"][0]["mod_revision"]
            .as_i64()
            .expect("mod_revision")
    };
    p.check_stdin(
        &["txn", "--interactive"],
        &format!("create(\"t2\") = \"{create_rev}\"\nmod(\"t1\") = \"{mod_rev}\"\n\ndel t1 --prev-kv\nput t4 x\n\nput t4 y\n\n"),
    );
    // != and <, > on missing keys (version 0, create 0)
    p.check_stdin(
        &["txn", "-i"],
        "version(\"missing\") = \"0\"\nvalue(\"t2\") != \"v2\"\n\nput never x\n\nget t --prefix\nget missing\n\n",
    );
    p.check_stdin(
        &["txn", "-i", "-w", "json"],
        "mod(\"t2\") < \"1000\"\ncreate(\"t4\") > \"0\"\n\nput t5 json\nget t5\n\nput never x\n\n",
    );
    p.check_stdin(
        &["txn", "-i", "-w", "json"],
        "value(\"t5\") > \"zzz\"\n\nput never x\n\nget t --prefix --limit 2\ndel t4 --prev-kv\n\n",
    );
    // non-interactive form, same grammar without prompts
    p.check_stdin(
        &["txn"],
        "value(\"t2\") = \"v2\"\n\nput t6 plain\nget t6\n\nput never x\n\n",
    );
    p.check_stdin(
        &["txn", "-w", "json"],
        "value(\"t2\") = \"nope\"\n\nput never x\n\nget t --prefix --keys-only\n\n",
    );
    // no compares: the success branch always runs
    p.check_stdin(&["txn", "-i"], "\nput t7 always\ndel t6\n\nput never x\n\n");
    // range delete in a txn
    p.check_stdin(
        &["txn", "-i"],
        "value(\"t7\") = \"always\"\n\ndel t --prefix --prev-kv\n\n\n",
    );
    // exactly 128 operations is still allowed
    let ops: String = (0..128).map(|i| format!("put many/{i:03} v\n")).collect();
    p.check_stdin(&["txn", "-i"], &format!("\n{ops}\n\n"));
    p.check(&["get", "", "--prefix", "--count-only", "-w", "fields"]);
    p.check(&["get", "many/127", "-w", "json"]);
    p.revision();
    p.finish();
}

#[test]
fn watch_events() {
    let (_dir, mut p) = start("compat-watch");
    p.check(&["put", "w/a", "0"]);
    p.check(&["put", "other", "0"]);

    let end_b64 = b64(b"w/zz-end");
    let again_b64 = b64(b"again-a");
    type Done = Box<dyn Fn(&str) -> bool>;
    let watches: Vec<(Vec<&str>, Done)> = vec![
        (
            vec!["watch", "w/", "--prefix"],
            Box::new(|s: &str| s.contains("w/zz-end")),
        ),
        (
            vec!["watch", "w/", "--prefix", "--prev-kv"],
            Box::new(|s: &str| s.contains("w/zz-end")),
        ),
        (
            vec!["watch", "w/a"],
            Box::new(|s: &str| s.contains("again-a")),
        ),
        (
            vec!["watch", "w/a", "w/c"],
            Box::new(|s: &str| s.contains("again-a")),
        ),
        (vec!["watch", "w/", "--prefix", "-w", "json"], {
            let m = end_b64.clone();
            Box::new(move |s: &str| s.contains(&m))
        }),
        (
            vec!["watch", "w/", "--prefix", "--rev", "1"],
            Box::new(|s: &str| s.contains("w/zz-end")),
        ),
        (
            vec![
                "watch",
                "w/",
                "--prefix",
                "--rev",
                "2",
                "--prev-kv",
                "-w",
                "json",
            ],
            {
                let m = end_b64.clone();
                Box::new(move |s: &str| s.contains(&m))
            },
        ),
        (
            vec!["watch", "w/a", "--rev", "1", "--prev-kv", "-w", "json"],
            {
                let m = again_b64.clone();
                Box::new(move |s: &str| s.contains(&m))
            },
        ),
    ];
    let mut running = Vec::new();
    for (args, done) in watches {
        let bg = p.spawn_both(&args, WATCH_LIFETIME);
        running.push((bg, done));
    }
    std::thread::sleep(WATCH_SETTLE);

    p.check(&["put", "w/a", "1"]);
    p.check(&["put", "w/b", "2"]);
    p.check(&["put", "x", "3"]);
    p.check(&["put", "w/b", "2b", "--prev-kv"]);
    // several events in one revision
    p.check_stdin(&["txn", "-i"], "\nput w/c 3\nput w/d 4\ndel w/a\n\n\n");
    p.check(&["del", "w/", "--prefix"]);
    p.check(&["put", "w/a", "again-a"]);
    p.check(&["put", "w/zz-end", "done"]);

    for (bg, done) in running {
        let both = p.stop_both(bg, WATCH_WAIT, done);
        p.compare(
            &format!("{} (watch output)", both.reference.command),
            &both,
            Compare::All,
        );
    }
    p.revision();
    p.finish();
}

#[test]
fn watch_progress_notify() {
    let dir = TestDir::new("compat-watch-progress");
    let mut p = CompatPair::start(
        &dir,
        &["--experimental-watch-progress-notify-interval=1s"],
        &[],
    );
    p.check(&["put", "p/0", "x"]);
    let simple = p.spawn_both(
        &["watch", "p/", "--prefix", "--progress-notify"],
        WATCH_LIFETIME,
    );
    let json_watch = p.spawn_both(
        &["watch", "p/", "--prefix", "--progress-notify", "-w", "json"],
        WATCH_LIFETIME,
    );
    std::thread::sleep(WATCH_SETTLE);
    p.check(&["put", "p/1", "one"]);
    p.check(&["put", "p/2", "two"]);
    let rev = p.revision();
    // After the writes stop, the periodic notification reports the current revision.
    let marker = format!("progress notify: {rev}\n");
    for bg in [simple, json_watch] {
        let m = marker.clone();
        let both = p.stop_both(bg, WATCH_WAIT, move |s| s.contains(&m));
        let (ev_a, revs_a) = split_progress_notify(&both.reference.stdout);
        let (ev_b, revs_b) = split_progress_notify(&both.subject.stdout);
        // The number of periodic notifications is timing; the events and what a notification
        // promises are not.
        let events_only = |o: &bftcd_tests::CmdOutput, ev: String| bftcd_tests::CmdOutput {
            stdout: ev,
            ..o.clone()
        };
        let stripped = bftcd_tests::compat::Both {
            reference: events_only(&both.reference, ev_a),
            subject: events_only(&both.subject, ev_b),
        };
        p.compare(
            &format!("{} (events without progress lines)", both.reference.command),
            &stripped,
            Compare::All,
        );
        for (label, revs) in [("reference", &revs_a), ("subject", &revs_b)] {
            p.expect(
                revs.last() == Some(&rev),
                format!("{label}: last progress notification should report revision {rev}, got {revs:?}"),
            );
            p.expect(
                revs.windows(2).all(|w| w[0] <= w[1]) && revs.iter().all(|r| *r <= rev),
                format!(
                    "{label}: progress revisions must be non-decreasing and <= {rev}: {revs:?}"
                ),
            );
        }
    }

    // RequestProgress on an interactive watch stream: answered with the current revision once
    // the watcher is synced.
    let mut interactive = p.spawn_both_interactive(&["watch", "-i"], WATCH_LIFETIME);
    interactive.send("watch p/ --prefix\n");
    std::thread::sleep(WATCH_SETTLE);
    p.check(&["put", "p/3", "three"]);
    let (ra, sa) = interactive.wait_for_stdout(WATCH_WAIT, |s| s.contains("three"));
    assert!(ra, "reference interactive watch did not see the event");
    p.expect(sa, "subject interactive watch did not see the put of p/3");
    let rev = p.revision();
    interactive.send("progress\n");
    let marker = format!("progress notify: {rev}\n");
    let both = p.stop_both(interactive, WATCH_WAIT, move |s| s.contains(&marker));
    p.compare(
        "watch -i + progress (RequestProgress)",
        &both,
        Compare::Stdout,
    );
    p.finish();
}

#[test]
fn leases() {
    let (_dir, mut p) = start("compat-lease");
    p.grant_lease("L1", &["lease", "grant", "300"]);
    p.grant_lease("L2", &["lease", "grant", "600", "-w", "json"]);
    p.grant_lease("L3", &["lease", "grant", "900"]);
    p.check(&["put", "lk1", "v1", "--lease={L1}"]);
    p.check(&["put", "lk2", "v2", "--lease={L1}"]);
    p.check(&["put", "lk3", "v3", "--lease={L2}"]);
    p.check(&["put", "lk4", "v4", "--lease={L3}", "-w", "json"]);
    p.check(&["get", "lk", "--prefix", "-w", "json"]);
    p.check(&["get", "lk1", "-w", "fields"]);
    p.check(&["lease", "keep-alive", "--once", "{L1}"]);
    p.check(&["lease", "keep-alive", "--once", "{L1}", "-w", "json"]);
    p.check(&["lease", "timetolive", "{L1}"]);
    p.check(&["lease", "timetolive", "--keys", "{L1}"]);
    p.check(&["lease", "timetolive", "--keys", "{L1}", "-w", "json"]);
    p.check(&["lease", "timetolive", "{L2}", "-w", "json"]);
    p.check_with(&["lease", "list"], None, Compare::SortedLines);
    p.check_with(&["lease", "list", "-w", "json"], None, Compare::Stdout);
    // moving a key to another lease
    p.check(&["put", "lk2", "v2b", "--lease={L2}"]);
    p.check(&["lease", "timetolive", "--keys", "{L2}"]);
    p.check(&["put", "lk4", "no-lease-now"]);
    p.check(&["lease", "timetolive", "--keys", "{L3}"]);

    p.check(&["lease", "revoke", "{L2}"]);
    p.check(&["get", "lk", "--prefix"]);
    p.check(&["lease", "timetolive", "{L2}"]);
    p.check(&["lease", "timetolive", "{L2}", "-w", "json"]);
    p.check(&["lease", "revoke", "{L2}"]);
    p.check(&["lease", "keep-alive", "--once", "{L2}"]);
    p.check(&["put", "lk5", "v", "--lease={L2}"]);
    p.check(&["lease", "revoke", "{L3}", "-w", "json"]);
    p.check_with(&["lease", "list"], None, Compare::SortedLines);

    // Deletions by revoke, as a watcher from the start of history sees them.
    let bg = p.spawn_both(
        &["watch", "lk", "--prefix", "--prev-kv", "--rev", "1"],
        WATCH_LIFETIME,
    );
    p.check(&["put", "lk-end", "end"]);
    let both = p.stop_both(bg, WATCH_WAIT, |s| s.contains("lk-end"));
    p.compare(
        "watch lk --prefix --prev-kv --rev 1 (lease revocations)",
        &both,
        Compare::All,
    );
    p.revision();
    p.finish();
}

#[test]
fn lease_expiry() {
    let (_dir, mut p) = start("compat-lease-expiry");
    // Below etcd's minimum TTL: etcd raises it (the granted TTL is printed).
    p.grant_lease("S", &["lease", "grant", "1"]);
    p.grant_lease("E", &["lease", "grant", "3"]);
    p.check(&["put", "exp/1", "a", "--lease={E}"]);
    p.check(&["put", "exp/2", "b", "--lease={E}"]);
    p.check(&["put", "exp/keep", "c"]);
    let bg = p.spawn_both(
        &["watch", "exp/", "--prefix", "--prev-kv", "--rev", "1"],
        WATCH_LIFETIME,
    );
    // Expiry deletes both keys (one revision) and the watcher sees DELETE events with prev_kv.
    let both = p.stop_both(bg, Duration::from_secs(30), |s| {
        s.matches("DELETE").count() >= 2
    });
    p.compare(
        "watch exp/ --prefix --prev-kv --rev 1 (lease expiry)",
        &both,
        Compare::All,
    );
    p.check(&["get", "exp/", "--prefix"]);
    p.check(&["lease", "timetolive", "{E}"]);
    p.check(&["lease", "timetolive", "{S}"]);
    p.check(&["lease", "keep-alive", "--once", "{E}"]);
    p.check(&["lease", "list"]);
    p.revision();
    p.finish();
}

#[test]
fn compaction() {
    let (_dir, mut p) = start("compat-compaction");
    for i in 1..=6 {
        p.check(&["put", "c", &format!("v{i}")]);
    }
    p.check(&["put", "d", "x"]);
    p.check(&["compaction", "3"]);
    p.check(&["compaction", "2"]);
    p.check(&["compaction", "3"]);
    p.check(&["compaction", "100"]);
    p.check(&["get", "c", "--rev", "2"]);
    p.check(&["get", "c", "--rev", "2", "-w", "json"]);
    p.check(&["get", "c", "--rev", "3"]);
    p.check(&["get", "c", "--rev", "4", "-w", "json"]);
    p.check(&["compaction", "5", "--physical"]);
    p.check(&["get", "c", "--rev", "4"]);
    p.check(&["get", "c", "--rev", "5", "-w", "json"]);
    p.check(&["get", "", "--prefix", "-w", "json"]);
    // the stock compaction etcd's kube-apiserver does: Txn on compact_rev_key, then Compact
    p.check_stdin(
        &["txn", "-i"],
        "version(\"compact_rev_key\") = \"0\"\n\nput compact_rev_key 7\n\nget compact_rev_key\n\n",
    );
    p.check(&["compaction", "7"]);

    // A watch from a compacted revision is cancelled with the compact revision.
    for args in [
        vec!["watch", "c", "--rev", "1"],
        vec!["watch", "c", "--rev", "2", "-w", "json"],
        vec!["watch", "c", "--prefix", "--rev", "6", "--prev-kv"],
    ] {
        let bg = p.spawn_both(&args, WATCH_LIFETIME);
        let both = p.wait_both(bg, Duration::from_secs(20));
        p.compare(
            &format!("{} (compacted watch)", args.join(" ")),
            &both,
            Compare::All,
        );
    }
    // Watching exactly from the compacted revision still works.
    let bg = p.spawn_both(&["watch", "c", "--rev", "7"], WATCH_LIFETIME);
    p.check(&["put", "c", "after-compaction"]);
    let both = p.stop_both(bg, WATCH_WAIT, |s| s.contains("after-compaction"));
    p.compare("watch c --rev 7", &both, Compare::All);
    p.revision();
    p.finish();
}

#[test]
fn errors() {
    let (_dir, mut p) = start("compat-errors");
    p.check(&["put", "k", "v"]);
    // empty key
    p.check(&["put", "", "v"]);
    p.check(&["get", ""]);
    p.check(&["del", ""]);
    // too many operations (default --max-txn-ops 128)
    let ops: String = (0..129).map(|i| format!("put many/{i:03} v\n")).collect();
    p.check_stdin(&["txn", "-i"], &format!("\n{ops}\n\n"));
    let ops: String = (0..129).map(|i| format!("get many/{i:03}\n")).collect();
    p.check_stdin(&["txn", "-i"], &format!("\nput x y\n\n{ops}\n"));
    // duplicate key
    p.check_stdin(&["txn", "-i"], "\nput dup a\nput dup b\n\n\n");
    p.check_stdin(&["txn", "-i"], "\nput dup a\ndel dup\n\n\n");
    p.check_stdin(&["txn", "-i"], "\nput dup/1 a\ndel dup/ --prefix\n\n\n");
    // future revision
    p.check(&["get", "k", "--rev", "1000"]);
    p.check(&["get", "k", "--rev", "1000", "-w", "json"]);
    p.check(&["compaction", "1000"]);
    // compacted revision
    p.check(&["put", "k", "v2"]);
    p.check(&["put", "k", "v3"]);
    p.check(&["compaction", "3"]);
    p.check(&["get", "k", "--rev", "1"]);
    p.check(&["get", "k", "--rev", "2"]);
    p.check(&["compaction", "2"]);
    // unknown lease
    p.check(&["put", "k", "v", "--lease=1234abcd"]);
    p.check(&["lease", "revoke", "1234abcd"]);
    p.check(&["lease", "keep-alive", "--once", "1234abcd"]);
    p.check(&["lease", "timetolive", "1234abcd"]);
    p.check(&["lease", "timetolive", "1234abcd", "-w", "json"]);
    p.check_stdin(&["txn", "-i"], "\nput lk v --lease=1234abcd\n\n\n");
    // request too large (> 1.5 MiB, below the client's own 2 MiB limit)
    let big = "x".repeat(1_600_000);
    p.check_stdin(&["put", "big"], &big);
    // client-side argument errors come from etcdctl itself and must not differ either
    p.check(&["get", "a/", "--prefix", "--count-only", "-w", "json"]);
    // nothing above changed anything
    p.check(&["get", "", "--prefix", "-w", "json"]);
    p.revision();
    p.finish();
}

fn endpoint_json(out: &str) -> Value {
    let v = json(out);
    v.as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_else(|| panic!("expected a one-element array: {out}"))
}

#[test]
fn endpoint_status_and_health() {
    let (_dir, mut p) = start("compat-endpoint");
    for i in 0..5 {
        p.check(&["put", &format!("m/{i}"), &format!("value {i}")]);
    }

    // status: only what must match
    let both = p.both(&["endpoint", "status", "-w", "json"]);
    p.expect_same(
        "endpoint status exit code",
        both.reference.code(),
        both.subject.code(),
    );
    if both.reference.success() && both.subject.success() {
        let a = endpoint_json(&both.reference.stdout);
        let b = endpoint_json(&both.subject.stdout);
        p.expect_same(
            "status.version",
            &a["Status"]["version"],
            &b["Status"]["version"],
        );
        p.expect_same(
            "status.header.revision",
            &a["Status"]["header"]["revision"],
            &b["Status"]["header"]["revision"],
        );
        p.expect_same(
            "status.isLearner",
            a["Status"].get("isLearner"),
            b["Status"].get("isLearner"),
        );
        p.expect_same(
            "status.errors",
            a["Status"].get("errors"),
            b["Status"].get("errors"),
        );
        p.expect(
            b["Status"]["dbSize"].as_i64().unwrap_or(0) > 0,
            format!("subject status.dbSize must be > 0: {b}"),
        );
        p.expect(
            b["Status"]["leader"].as_u64().unwrap_or(0) != 0,
            format!("subject status.leader must be set: {b}"),
        );
        p.expect(
            b["Status"]["raftIndex"].is_u64(),
            format!("subject status.raftIndex must be a number: {b}"),
        );
        let subject_endpoint = p.subject.ctx.endpoint.clone();
        p.expect_same(
            "status.Endpoint",
            subject_endpoint.as_str(),
            b["Endpoint"].as_str().unwrap_or(""),
        );
    }
    let both = p.both(&["endpoint", "status"]);
    p.expect_same(
        "endpoint status (simple) exit code",
        both.reference.code(),
        both.subject.code(),
    );
    let fields = |s: &str| {
        s.trim()
            .split(", ")
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
    };
    let (fa, fb) = (fields(&both.reference.stdout), fields(&both.subject.stdout));
    p.expect_same("endpoint status (simple) field count", fa.len(), fb.len());
    // endpoint, ID, version, db size, is leader, is learner, raft term, raft index, applied, errors
    for (i, name) in [
        (2, "version"),
        (4, "is leader"),
        (5, "is learner"),
        (9, "errors"),
    ] {
        p.expect_same(
            &format!("endpoint status (simple) {name}"),
            fa.get(i),
            fb.get(i),
        );
    }
    let both = p.both(&["endpoint", "status", "-w", "table"]);
    // column names (widths depend on the id's length)
    let header = |s: &str| {
        s.lines()
            .nth(1)
            .unwrap_or("")
            .split('|')
            .map(|c| c.trim().to_string())
            .collect::<Vec<_>>()
    };
    p.expect_same(
        "endpoint status table columns",
        header(&both.reference.stdout),
        header(&both.subject.stdout),
    );

    p.check(&["endpoint", "health"]);
    p.check(&["endpoint", "health", "-w", "json"]);
    p.finish();
}

/// HashKV through the sidecar equals stock etcd's after identical writes (no leases: lease ids
/// legitimately differ and are part of the hashed values), also at a past revision and after a
/// compaction.
/// `endpoint hashkv` hashes the whole etcd, including the sidecar's reserved bookkeeping key
/// (docs/operations.md), so it cannot equal the hash of an etcd that never had a sidecar. What an
/// operator relies on: the command works in every output format, at a revision and after a
/// compaction, and the sidecar reports exactly its own etcd's hash (which is what banks compare
/// with each other).
#[test]
fn hashkv_is_the_banks_own_etcd_hash() {
    let (_dir, mut p) = start("compat-hashkv");
    if !p.has_sidecar() {
        return;
    }
    for i in 0..10 {
        p.check(&["put", &format!("m/{i}"), &format!("value {i}")]);
    }
    p.check(&["del", "m/3"]);
    p.check_stdin(&["txn", "-i"], "\nput m/a 1\nput m/b 2\ndel m/5\n\n\n");
    let mid = p.revision();
    p.check(&["put", "m/10", "last"]);
    let direct = Etcdctl::new(p.bank_etcd.endpoint());
    let hash_of = |out: &str| -> (i64, i64) {
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("hashkv json");
        let first = &v[0]["HashKV"];
        (first["hash"].as_i64().unwrap_or(-1), first["compact_revision"].as_i64().unwrap_or(-1))
    };
    for rev in [None, Some(mid)] {
        let mut args = vec!["endpoint".to_string(), "hashkv".into(), "-w".into(), "json".into()];
        if let Some(r) = rev {
            args.push("--rev".into());
            args.push(r.to_string());
        }
        let through = p.subject.ctl.run(&args);
        let own = direct.run(&args);
        let (a, b) = (hash_of(through.expect_success()), hash_of(own.expect_success()));
        p.expect_same(&format!("hashkv {rev:?} through the sidecar vs its own etcd"), b, a);
        p.expect(a.0 > 0, format!("hashkv {rev:?} returned no hash"));
    }
    p.check(&["compaction", &mid.to_string()]);
    let through = p.subject.ctl.run(&["endpoint", "hashkv", "-w", "json"]);
    let own = direct.run(&["endpoint", "hashkv", "-w", "json"]);
    let (a, b) = (hash_of(through.expect_success()), hash_of(own.expect_success()));
    p.expect_same("hashkv after compaction", b, a);
    p.expect_same("compact revision reported", mid, a.1);
    let table = p.subject.ctl.run(&["endpoint", "hashkv", "-w", "table"]);
    p.expect(table.expect_success().contains("HASH"), "hashkv table has a HASH column");
    p.finish();
}

#[test]
fn member_list_and_snapshot() {
    let (dir, mut p) = start("compat-maintenance");
    p.check(&["put", "s/1", "one"]);
    p.check(&["put", "s/2", "two"]);

    let both = p.both(&["member", "list", "-w", "json"]);
    for (label, out, endpoint) in [
        (
            "reference",
            &both.reference,
            p.reference.ctx.endpoint.clone(),
        ),
        ("subject", &both.subject, p.subject.ctx.endpoint.clone()),
    ] {
        if !out.success() {
            p.mismatch(format!("{label}: member list failed: {out}"));
            continue;
        }
        let v = json(&out.stdout);
        let members = v["members"].as_array().cloned().unwrap_or_default();
        p.expect(
            members.len() == 1,
            format!("{label}: member list should list one member: {v}"),
        );
        let url = bftcd_tests::sidecar::as_url(&endpoint);
        let has_url = members
            .first()
            .map(|m| {
                m["clientURLs"]
                    .as_array()
                    .map(|a| a.iter().any(|u| u == &Value::String(url.clone())))
                    .unwrap_or(false)
            })
            .unwrap_or(false);
        p.expect(
            has_url,
            format!("{label}: member list should show client URL {url}: {v}"),
        );
        p.expect(
            members
                .first()
                .map(|m| m["name"].is_string())
                .unwrap_or(false),
            format!("{label}: member without a name: {v}"),
        );
    }
    let both = p.both(&["member", "list"]);
    for (label, out, endpoint) in [
        (
            "reference",
            &both.reference,
            p.reference.ctx.endpoint.clone(),
        ),
        ("subject", &both.subject, p.subject.ctx.endpoint.clone()),
    ] {
        let lines: Vec<&str> = out.stdout.lines().collect();
        p.expect(
            out.success()
                && lines.len() == 1
                && lines[0].contains(&bftcd_tests::sidecar::as_url(&endpoint))
                && lines[0].contains(", started, "),
            format!(
                "{label}: `member list` should print one started member with its client URL: {out}"
            ),
        );
    }

    // snapshot save through each side, then the offline tools read it
    let ref_file = dir.join("reference-snapshot.db");
    let sub_file = dir.join("subject-snapshot.db");
    p.reference
        .vars
        .insert("SNAP".into(), ref_file.display().to_string());
    p.subject
        .vars
        .insert("SNAP".into(), sub_file.display().to_string());
    let both = p.both(&["snapshot", "save", "{SNAP}"]);
    let mut revisions = Vec::new();
    for (label, out, file) in [
        ("reference", &both.reference, &ref_file),
        ("subject", &both.subject, &sub_file),
    ] {
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        p.expect(
            out.success() && out.stdout.trim() == format!("Snapshot saved at {}", file.display()) && size > 0,
            format!("{label}: snapshot save should succeed and write a non-empty file (size {size}): {out}"),
        );
        if size == 0 {
            continue;
        }
        let status =
            Etcdutl::new().run(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
        if !status.success() {
            p.mismatch(format!(
                "{label}: etcdutl snapshot status cannot read the snapshot: {status}"
            ));
            continue;
        }
        let v = json(&status.stdout);
        revisions.push(v["revision"].as_i64());
        let restore_dir = dir.join(format!("{label}-restored"));
        let restored = Etcdutl::new().run(&[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            restore_dir.to_str().unwrap(),
        ]);
        p.expect(
            restored.success(),
            format!("{label}: etcdutl snapshot restore (checks the hash) failed: {restored}"),
        );
    }
    if revisions.len() == 2 {
        p.expect_same("snapshot revision", revisions[0], revisions[1]);
    }
    p.finish();
}
