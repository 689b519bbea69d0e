//! Acceptance: etcd's Auth API (users, roles, permissions, `auth enable/disable`, per-request
//! credentials and permission checks) through a bftcd sidecar behaves as stock etcd 3.5 does.
//!
//! `auth_flow_matches_stock_etcd` runs one auth flow with stock etcdctl against a stock etcd
//! (reference) and a stock etcd behind a sidecar (subject) through the `CompatPair` harness and
//! compares exit codes, stdout and stderr after its usual normalisation (ids, raft term/index,
//! lease ids, endpoints, timing, the client's log timestamps). Revisions are compared too: in
//! stock etcd, user/role/permission changes and `auth enable/disable` do not change the KV
//! revision. `BFTCD_COMPAT_BOTH_STOCK=1` runs it against two stock etcds, which must pass.
//!
//! `auth_state_is_replicated_across_banks` enables auth at one bank of a four-bank chain and
//! checks that every bank enforces it, also after a sidecar restart, and that the banks' etcds
//! still hash alike.
//!
//! The expected texts and exit codes were measured against stock etcd 3.5.16
//! (`/work/shared-auth-truth.md` when this was written).

use std::time::{Duration, Instant};

use bftcd_tests::chain::Chain;
use bftcd_tests::compat::{Compare, CompatPair};
use bftcd_tests::{Etcdctl, TestDir};

const ROOT: &str = "--user=root:pw";
const ALICE: &str = "--user=alice:apw";
/// How long a denied `etcdctl watch` may take to be cancelled (stock etcd: immediately).
const WATCH_EXIT: Duration = Duration::from_secs(15);

/// `args` followed by one `--user=...` flag.
fn as_user<'a>(user: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.push(user);
    v
}

#[test]
fn auth_flow_matches_stock_etcd() {
    let dir = TestDir::new("compat-auth");
    let mut p = CompatPair::start(&dir, &[], &[]);
    let root = |args: &[&'static str]| as_user(ROOT, args);
    let alice = |args: &[&'static str]| as_user(ALICE, args);

    // ---- before auth is enabled
    p.check(&["put", "k", "v"]);
    p.check(&["auth", "status"]);
    // no root user: `etcdserver: root user does not exist`
    p.check(&["auth", "enable"]);
    p.check(&["user", "add", "root", "--new-user-password=pw", "--interactive=false"]);
    // duplicate: `etcdserver: user name already exists`
    p.check(&["user", "add", "root:pw", "--interactive=false"]);
    // `etcdserver: user name is empty`, `etcdserver: role name is empty`
    p.check(&["user", "add", "", "--new-user-password=x", "--interactive=false"]);
    p.check(&["role", "add", ""]);
    p.check(&["role", "add", "root"]);
    p.check(&["role", "add", "root"]);
    // root lacks role root: the server says `root user does not have root role`, etcdctl then
    // tries RoleAdd("root") itself, which fails with `role name already exists`
    p.check(&["auth", "enable"]);
    p.check(&["user", "get", "root"]);
    p.check(&["user", "grant-role", "root", "root"]);
    p.check(&["user", "get", "root"]);
    // credentials while auth is disabled: works, with `authentication is not enabled` logged
    p.check(&root(&["get", "k"]));
    p.check(&["auth", "enable"]);
    // enabling changes no revision
    p.check(&root(&["get", "k", "-w", "json"]));

    // ---- enabled: credentials
    p.check(&["auth", "status"]);
    p.check(&root(&["auth", "status"]));
    p.check(&["put", "k", "v2"]);
    p.check(&["get", "k"]);
    p.check(&["put", "k", "v2", "--user=root:wrongpw"]);
    p.check(&["get", "k", "--user=root:wrongpw"]);
    p.check(&["get", "k", "--user=nosuch:pw"]);
    p.check(&root(&["put", "k", "v3", "-w", "json"]));
    p.check(&root(&["get", "k", "-w", "json"]));
    // enabled again while enabled: fine
    p.check(&root(&["auth", "enable"]));

    // ---- user and role management as root
    p.check(&root(&["user", "add", "alice:apw", "--interactive=false"]));
    p.check(&root(&["role", "add", "r1"]));
    p.check(&root(&["role", "grant-permission", "r1", "readwrite", "/a/", "--prefix"]));
    p.check(&root(&["role", "grant-permission", "r1", "read", "/ro/", "--prefix"]));
    p.check(&root(&["user", "grant-role", "alice", "r1"]));
    p.check(&root(&["role", "get", "r1"]));
    p.check(&root(&["user", "get", "alice", "--detail"]));
    p.check(&root(&["user", "list"]));
    p.check(&root(&["role", "list"]));
    p.check(&root(&["auth", "status"]));
    // none of that changed the revision
    p.check(&root(&["get", "nothing", "-w", "json"]));

    // ---- as alice (readwrite /a/, read /ro/)
    p.check(&alice(&["put", "/a/x", "1"]));
    p.check(&alice(&["put", "/a/j", "1", "-w", "json"]));
    p.check(&alice(&["put", "/b/x", "1"]));
    p.check(&alice(&["get", "/b/x"]));
    p.check(&alice(&["get", "/ro/x"]));
    p.check(&alice(&["put", "/ro/x", "1"]));
    p.check(&alice(&["get", "/a/x"]));
    p.check(&alice(&["get", "/a/", "--prefix", "-w", "json"]));
    p.check(&alice(&["del", "/a/j"]));
    p.check(&alice(&["del", "/a/", "--prefix"]));
    p.check(&alice(&["put", "/a/x", "1"]));
    p.check(&alice(&["del", "", "--prefix"]));
    p.check(&alice(&["get", "", "--prefix"]));
    p.check(&alice(&["get", "", "--from-key"]));
    // txn: both branches and the compares are checked; a denied txn applies nothing
    p.check_stdin(&alice(&["txn"]), "\nput /a/t 1\n\nput /b/t 1\n\n");
    p.check_stdin(&alice(&["txn"]), "\nput /a/t 1\n\nput /a/u 1\n\n");
    p.check_stdin(&alice(&["txn"]), "\nget /a/t\n\nget /b/t\n\n");
    p.check_stdin(&alice(&["txn"]), "value(\"/a/x\") = \"1\"\n\nput /a/t 2\n\nput /a/u 2\n\n");
    p.check_stdin(&alice(&["txn"]), "value(\"/b/x\") = \"1\"\n\nput /a/t 2\n\nput /a/u 2\n\n");
    p.check_stdin(&alice(&["txn"]), "\ndel /a/t\n\n\n");
    p.check(&root(&["get", "", "--prefix", "-w", "json"]));

    // watch: a denied watch is cancelled by the server (exit 5)
    let bg = p.spawn_both(&alice(&["watch", "/b/x"]), WATCH_EXIT * 2);
    let both = p.wait_both(bg, WATCH_EXIT);
    p.compare("watch /b/x (alice)", &both, Compare::All);
    let bg = p.spawn_both(&["watch", "/a/x"], WATCH_EXIT * 2);
    let both = p.wait_both(bg, WATCH_EXIT);
    p.compare("watch /a/x (no credentials)", &both, Compare::All);

    // leases: granting is open to any user; revoking needs write permission on every attached key
    p.grant_lease("LA", &alice(&["lease", "grant", "60"]));
    p.check(&alice(&["put", "/a/l", "1", "--lease={LA}"]));
    p.check(&alice(&["lease", "timetolive", "{LA}", "--keys"]));
    p.check(&alice(&["lease", "keep-alive", "--once", "{LA}"]));
    p.check(&alice(&["lease", "revoke", "{LA}"]));
    p.check(&alice(&["get", "/a/l"]));
    p.grant_lease("LB", &alice(&["lease", "grant", "60"]));
    p.check(&root(&["put", "/b/l", "1", "--lease={LB}"]));
    p.check(&alice(&["put", "/b/l", "1", "--lease={LB}"]));
    p.check(&alice(&["lease", "revoke", "{LB}"]));
    p.check(&alice(&["lease", "timetolive", "{LB}", "--keys"]));
    p.check(&root(&["lease", "revoke", "{LB}"]));
    p.grant_lease("LC", &root(&["lease", "grant", "60"]));
    p.check(&alice(&["put", "/a/l3", "1", "--lease={LC}"]));
    p.check(&alice(&["lease", "revoke", "{LC}"]));
    p.check(&root(&["lease", "list"]));

    // maintenance and cluster calls as alice
    p.check(&alice(&["compaction", "3"]));
    p.check(&root(&["compaction", "3"]));
    let both = p.both(&alice(&["endpoint", "status", "-w", "json"]));
    p.compare("endpoint status -w json (alice)", &both, Compare::ExitCode);
    p.check(&alice(&["endpoint", "hashkv"]));
    p.check(&["endpoint", "hashkv"]);
    // the hash itself includes the sidecar's bookkeeping key: only the exit code compares
    let both = p.both(&root(&["endpoint", "hashkv", "-w", "json"]));
    p.compare("endpoint hashkv (root)", &both, Compare::ExitCode);
    p.check(&alice(&["endpoint", "health"]));
    p.check(&["endpoint", "health"]);
    p.check(&alice(&["defrag"]));
    p.check(&root(&["defrag"]));
    p.check(&alice(&["alarm", "list"]));
    p.check(&["alarm", "list"]);
    for (var, user) in [("SNAP_ALICE", Some(ALICE)), ("SNAP_NONE", None)] {
        for (side, label) in [(&mut p.reference, "reference"), (&mut p.subject, "subject")] {
            let file = dir.join(format!("{label}-{var}.db"));
            side.vars.insert(var.to_string(), file.display().to_string());
        }
        let path = format!("{{{var}}}");
        let mut args = vec!["snapshot", "save", path.as_str()];
        args.extend(user);
        let both = p.both(&args);
        // stderr has snapshot progress logs (paths, sizes, timing): compare the exit code and
        // the final error line
        p.compare(&args.join(" "), &both, Compare::ExitCode);
        let last = |s: &str| s.trim_end().lines().last().unwrap_or("").to_string();
        p.expect_same(
            &format!("last stderr line of `etcdctl {}`", args.join(" ")),
            last(&both.reference.stderr),
            last(&both.subject.stderr),
        );
    }
    let both = p.both(&alice(&["member", "list"]));
    p.compare("member list (alice)", &both, Compare::ExitCode);
    let both = p.both(&["member", "list"]);
    p.compare("member list (no credentials)", &both, Compare::ExitCode);

    // auth management as alice: only her own user and roles are readable
    p.check(&alice(&["user", "list"]));
    p.check(&alice(&["role", "list"]));
    p.check(&alice(&["user", "get", "alice"]));
    p.check(&alice(&["user", "get", "root"]));
    p.check(&alice(&["role", "get", "r1"]));
    p.check(&alice(&["role", "get", "root"]));
    p.check(&alice(&["user", "add", "bob:b", "--interactive=false"]));
    p.check(&alice(&["role", "add", "r9"]));
    p.check(&alice(&["role", "grant-permission", "r1", "readwrite", "/b/", "--prefix"]));
    p.check(&alice(&["user", "grant-role", "alice", "root"]));
    p.check(&alice(&["auth", "disable"]));
    p.check(&alice(&["auth", "status"]));

    // ---- management errors as root
    p.check(&root(&["user", "delete", "nosuch"]));
    p.check(&root(&["role", "delete", "nosuch"]));
    p.check(&root(&["user", "get", "nosuch"]));
    p.check(&root(&["role", "get", "nosuch"]));
    p.check(&root(&["user", "grant-role", "alice", "nosuch"]));
    p.check(&root(&["user", "grant-role", "nosuch", "r1"]));
    p.check(&root(&["user", "grant-role", "alice", "r1"]));
    p.check(&root(&["user", "revoke-role", "alice", "r2"]));
    p.check(&root(&["role", "add", "r2"]));
    p.check(&root(&["user", "revoke-role", "alice", "r2"]));
    p.check(&root(&["user", "revoke-role", "nosuch", "r1"]));
    p.check(&root(&["role", "add", "r1"]));
    p.check(&root(&["role", "revoke-permission", "r1", "/zzz"]));
    p.check(&root(&["role", "revoke-permission", "nosuch", "/zzz"]));
    p.check(&root(&["role", "revoke-permission", "r1", "/a/"]));
    p.check(&root(&["role", "revoke-permission", "r1", "/a/", "--prefix"]));
    p.check(&alice(&["put", "/a/x", "2"]));
    p.check(&root(&["role", "grant-permission", "r1", "readwrite", "/a/", "--prefix"]));
    p.check(&root(&["role", "grant-permission", "r1", "readwrite", "/a/", "--prefix"]));
    p.check(&root(&["role", "grant-permission", "r1", "write", "/w"]));
    p.check(&root(&["role", "grant-permission", "r1", "read", "/r1", "/r9"]));
    p.check(&root(&["role", "grant-permission", "nosuch", "read", "/q"]));
    p.check(&root(&["role", "get", "r1"]));
    p.check(&alice(&["put", "/w", "1"]));
    p.check(&alice(&["get", "/w"]));
    p.check(&alice(&["get", "/r1", "/r9"]));
    p.check(&alice(&["get", "/r1", "/r99"]));
    // password change (non-interactive: the new password on stdin)
    p.check_stdin(&root(&["user", "passwd", "alice", "--interactive=false"]), "newpw\n");
    p.check(&alice(&["get", "/a/x"]));
    p.check(&["get", "/a/x", "--user=alice:newpw"]);
    p.check_stdin(&root(&["user", "passwd", "alice", "--interactive=false"]), "apw\n");
    p.check_stdin(&root(&["user", "passwd", "nosuch", "--interactive=false"]), "x\n");
    p.check(&alice(&["get", "/a/x"]));
    // revoking alice's role takes effect at once
    p.check(&root(&["user", "revoke-role", "alice", "r1"]));
    p.check(&alice(&["get", "/a/x"]));
    p.check(&root(&["user", "grant-role", "alice", "r1"]));
    p.check(&alice(&["get", "/a/x"]));
    // a user without password cannot authenticate with one
    p.check(&root(&["user", "add", "carol", "--no-password"]));
    p.check(&root(&["user", "get", "carol"]));
    p.check(&["get", "/a/x", "--user=carol:"]);
    // deleting a user/role
    p.check(&root(&["user", "add", "dave:d", "--interactive=false"]));
    p.check(&root(&["user", "grant-role", "dave", "r2"]));
    p.check(&root(&["role", "delete", "r2"]));
    p.check(&root(&["user", "get", "dave"]));
    p.check(&root(&["user", "delete", "dave"]));
    p.check(&["get", "/a/x", "--user=dave:d"]);
    // root cannot be taken apart while auth is on: `etcdserver: invalid auth management`
    p.check(&root(&["user", "revoke-role", "root", "root"]));
    p.check(&root(&["user", "delete", "root"]));
    p.check(&root(&["role", "delete", "root"]));
    p.check(&root(&["user", "get", "root"]));
    p.check(&root(&["user", "list"]));
    p.check(&root(&["role", "list"]));
    p.check(&root(&["auth", "status"]));
    p.check(&root(&["get", "", "--prefix", "-w", "json"]));

    // ---- disable
    p.check(&root(&["auth", "disable"]));
    p.check(&["auth", "status"]);
    p.check(&["get", "k"]);
    p.check(&["put", "/b/x", "1"]);
    p.check(&["user", "list"]);
    p.check(&["get", "k", "--user=root:wrongpw"]);
    p.check(&alice(&["get", "k"]));
    p.check(&["auth", "disable"]);
    // while disabled, role root may be deleted; `auth enable` then has etcdctl create and grant
    // it again after the server's `root user does not have root role`
    p.check(&["role", "delete", "root"]);
    p.check(&["user", "get", "root"]);
    p.check(&["auth", "enable"]);
    p.check(&root(&["user", "get", "root"]));
    p.check(&root(&["role", "get", "root"]));
    p.check(&root(&["auth", "status"]));
    p.check(&root(&["auth", "disable"]));
    p.check(&["get", "", "--prefix", "-w", "json"]);
    p.revision();
    p.finish();
}

/// Retries `f` until it returns `Ok`, for up to `timeout`; panics with the last error.
fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("{what}: not true after {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// `etcdctl <args>` must fail with `needle` on stderr.
fn expect_error(ctl: &Etcdctl, args: &[&str], needle: &str) -> Result<(), String> {
    let out = ctl.run(args);
    if !out.success() && out.stderr.contains(needle) {
        Ok(())
    } else {
        Err(format!("expected a failure with {needle:?}: {out}"))
    }
}

fn expect_ok(ctl: &Etcdctl, args: &[&str]) -> Result<String, String> {
    let out = ctl.run(args);
    if out.success() {
        Ok(out.stdout.clone())
    } else {
        Err(format!("expected success: {out}"))
    }
}

#[test]
fn auth_state_is_replicated_across_banks() {
    let dir = TestDir::new("auth-banks");
    let mut chain = Chain::start(&dir, 4);
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    let quick = Duration::from_secs(30);

    // At bank 1: root with role root, role r1 = readwrite on prefix /a/, alice with r1; enable.
    let b1 = chain.etcdctl(0);
    for args in [
        &["put", "before-auth", "1"][..],
        &["user", "add", "root:pw", "--interactive=false"],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "r1"],
        &["role", "grant-permission", "r1", "readwrite", "/a/", "--prefix"],
        &["user", "add", "alice:apw", "--interactive=false"],
        &["user", "grant-role", "alice", "r1"],
        &["auth", "enable"],
    ] {
        b1.run(args).expect_success();
    }

    // Banks 2 and 3 enforce it.
    for b in [1, 2] {
        let ctl = chain.etcdctl(b);
        let alice = ctl.clone().with_global_arg(ALICE);
        eventually(&format!("bank {}: no credentials refused", b + 1), quick, || {
            expect_error(&ctl, &["put", "/a/x", "0"], "etcdserver: user name is empty")
        });
        expect_error(&ctl, &["get", "before-auth"], "etcdserver: user name is empty").unwrap();
        eventually(&format!("bank {}: alice may write /a/x", b + 1), quick, || {
            expect_ok(&alice, &["put", "/a/x", &format!("from-bank{}", b + 1)])
        });
        expect_error(&alice, &["put", "/b/x", "1"], "etcdserver: permission denied").unwrap();
        expect_error(&alice, &["get", "/b/x"], "etcdserver: permission denied").unwrap();
        expect_error(&alice, &["get", "before-auth"], "etcdserver: permission denied").unwrap();
        expect_error(&alice, &["user", "list"], "etcdserver: permission denied").unwrap();
        expect_error(&alice, &["auth", "disable"], "etcdserver: permission denied").unwrap();
        expect_error(
            &ctl,
            &["get", "/a/x", "--user=alice:wrong"],
            "etcdserver: authentication failed, invalid user ID or password",
        )
        .unwrap();
        let value = expect_ok(&alice, &["get", "/a/x", "--print-value-only"]).unwrap();
        assert_eq!(value.trim(), format!("from-bank{}", b + 1), "bank {}", b + 1);
        let root = ctl.clone().with_global_arg(ROOT);
        assert_eq!(expect_ok(&root, &["get", "before-auth", "--print-value-only"]).unwrap().trim(), "1");
    }

    // Bank 4 after its sidecar restarts.
    chain.banks[3].sidecar.restart();
    let b4 = chain.etcdctl(3);
    let alice4 = b4.clone().with_global_arg(ALICE);
    eventually("bank 4 after restart: alice may write /a/y", quick, || {
        expect_ok(&alice4, &["put", "/a/y", "from-bank4"])
    });
    assert_eq!(expect_ok(&alice4, &["get", "/a/x", "--print-value-only"]).unwrap().trim(), "from-bank3");
    expect_error(&alice4, &["put", "/b/y", "1"], "etcdserver: permission denied").unwrap();
    expect_error(&b4, &["get", "/a/x"], "etcdserver: user name is empty").unwrap();

    // Everyone agrees on the users (after bank 4 caught up with alice's last write).
    let expected_users = "alice\nroot\n";
    for b in 0..4 {
        let root = chain.etcdctl(b).with_global_arg(ROOT);
        eventually(&format!("bank {}: root's user list", b + 1), quick, || {
            let users = expect_ok(&root, &["user", "list"])?;
            let y = expect_ok(&root, &["get", "/a/y", "--print-value-only"])?;
            if users == expected_users && y.trim() == "from-bank4" {
                Ok(())
            } else {
                Err(format!("user list {users:?}, /a/y {y:?}"))
            }
        });
        let status = expect_ok(&root, &["auth", "status"]).unwrap();
        assert!(status.starts_with("Authentication Status: true\n"), "bank {}: {status}", b + 1);
    }

    // The banks' etcds hold the same data (hashkv needs root once auth is on).
    let rev = chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(60));
    let hashes: Vec<(i64, i64)> = (0..4)
        .map(|b| bftcd_tests::kv::hashkv(&chain.etcdctl(b).with_global_arg(ROOT)))
        .collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "endpoint hashkv differs between banks: {hashes:?}");
    assert!(hashes[0].1 >= rev, "hashkv revision {} below the converged revision {rev}", hashes[0].1);
}
