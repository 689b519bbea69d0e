//! Cutting a bank off its peers on loopback with iptables, for real-process partition tests.
//!
//! A bank's peer traffic is two kinds of TCP connections: the ones other banks dial to its peer
//! port, and the ones it dials to theirs (from an ephemeral port). The first kind is cut by
//! dropping every loopback packet to or from its peer port. The second kind cannot be told
//! apart from other banks' connections by address or port, so the bank runs in a cgroup (v2) of
//! its own ([`Cgroup`], via a wrapper script) and packets that *it* sends to another bank's peer
//! port are dropped with iptables' `cgroup` match. What the accepting banks send back on those
//! connections (keepalive pings, nothing else) still passes until they give up on the silence
//! and close, within their idle timeout. Without cgroup v2 (see [`Cgroup::create`]) only the
//! first kind is cut: the bank is then deaf but not mute.
//!
//! Rules go in the filter table's OUTPUT chain (on loopback every packet passes it), each tagged
//! with a comment unique to the cut (`bftcd-cut-<pid>-<n>`), and are removed by [`NetCut::heal`]
//! or when the [`NetCut`] is dropped, also while a test panics. Rules left by a test process
//! that died (`kill -9`) are swept by the next [`NetCut::new`]. `iptables -w` waits for the
//! xtables lock, so parallel tests do not collide.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bins::strings;

const TAG: &str = "bftcd-cut-";
const CG_TAG: &str = "bftcd-cg-";
const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

static NEXT: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn iptables(args: &[String]) -> Result<String, String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("iptables {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}


/// Whether this process can add and remove iptables rules (root, iptables installed, a kernel
/// with netfilter); the reason when not. Tests skip, with that reason, when it cannot.
pub fn usable() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    let probe = unique("bftcd-probe-");
    let rule = strings(&["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", "9", "-m", "comment", "--comment", &probe, "-j", "ACCEPT"]);
    let mut add = vec!["-A".to_string()];
    add.extend(rule.iter().cloned());
    iptables(&add)?;
    let mut del = vec!["-D".to_string()];
    del.extend(rule);
    iptables(&del).map(|_| ())
}

/// A cgroup v2 of its own for one process tree, removed on drop (after its processes ended).
pub struct Cgroup {
    dir: PathBuf,
    /// The path relative to the cgroup2 root, as iptables' `--path` wants it.
    rel: String,
}

impl Cgroup {
    /// A fresh cgroup under the cgroup2 hierarchy, when there is one and it is writable and
    /// iptables' `cgroup` match works; the reason otherwise.
    pub fn create() -> Result<Cgroup, String> {
        let root = [CGROUP2_ROOT, "/sys/fs/cgroup"]
            .iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
            .ok_or("no cgroup v2 hierarchy")?;
        sweep_stale_cgroups(root);
        let rel = unique(CG_TAG);
        let dir = root.join(&rel);
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = Cgroup { dir, rel };
        let probe = unique("bftcd-probe-");
        let rule = strings(&["OUTPUT", "-o", "lo", "-m", "cgroup", "--path", &cg.rel, "-m", "comment", "--comment", &probe, "-j", "ACCEPT"]);
        let mut add = vec!["-A".to_string()];
        add.extend(rule.iter().cloned());
        iptables(&add).map_err(|e| format!("iptables cgroup match: {e}"))?;
        let mut del = vec!["-D".to_string()];
        del.extend(rule);
        iptables(&del)?;
        Ok(cg)
    }

    /// Writes `<dir>/<name>`, an executable script that moves itself into this cgroup and then
    /// runs `bin` with its arguments (everything the process opens afterwards is tagged).
    pub fn wrapper(&self, dir: &Path, name: &str, bin: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        let script = format!(
            "#!/bin/sh\necho $$ > '{}/cgroup.procs' || exit 97\nexec '{}' \"$@\"\n",
            self.dir.display(),
            bin.display()
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("warning: could not remove cgroup {}", self.dir.display());
    }
}

/// A set of iptables DROP rules with one unique comment; removed on [`NetCut::heal`] and drop.
pub struct NetCut {
    comment: String,
    /// Rule specifications (without `-I`/`-D`) currently installed.
    rules: Vec<Vec<String>>,
}

impl NetCut {
    /// No rules yet. Sweeps rules left by dead test processes.
    pub fn new() -> NetCut {
        sweep_stale();
        NetCut { comment: unique(TAG), rules: Vec::new() }
    }

    /// The comment on every rule of this cut.
    pub fn comment(&self) -> &str {
        &self.comment
    }

    fn add(&mut self, spec: Vec<String>) {
        let mut spec = spec;
        spec.extend(strings(&["-m", "comment", "--comment", &self.comment, "-j", "DROP"]));
        let mut args = vec!["-I".to_string()];
        args.extend(spec.iter().cloned());
        iptables(&args).unwrap_or_else(|e| panic!("{e}"));
        self.rules.push(spec);
    }

    /// Cuts the bank whose peer port is `port` off every other bank (`others`: their peer
    /// ports): everything to or from `port`, and, with its `cgroup`, everything it sends to
    /// `others`.
    pub fn isolate(&mut self, port: u16, cgroup: Option<&Cgroup>, others: &[u16]) {
        let port = port.to_string();
        self.add(strings(&["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", &port]));
        self.add(strings(&["OUTPUT", "-o", "lo", "-p", "tcp", "--sport", &port]));
        if let Some(cg) = cgroup {
            let list = others.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
            self.add(strings(&["OUTPUT", "-o", "lo", "-p", "tcp", "-m", "cgroup", "--path", &cg.rel, "-m", "multiport", "--dports", &list]));
        }
    }

    /// Removes every rule of this cut. Idempotent.
    pub fn heal(&mut self) {
        for spec in self.rules.drain(..) {
            let mut args = vec!["-D".to_string()];
            args.extend(spec);
            if let Err(e) = iptables(&args) {
                eprintln!("warning: {e}");
            }
        }
    }
}

impl Default for NetCut {
    fn default() -> Self {
        NetCut::new()
    }
}

impl Drop for NetCut {
    fn drop(&mut self) {
        self.heal();
    }
}

/// Deletes OUTPUT rules tagged `bftcd-cut-<pid>-...` whose process no longer runs.
fn sweep_stale() {
    let Ok(listing) = iptables(&strings(&["-S", "OUTPUT"])) else {
        return;
    };
    for line in listing.lines() {
        let Some(at) = line.find(TAG) else { continue };
        let Some(pid) = pid_in(&line[at..], TAG) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let Some(spec) = line.strip_prefix("-A ") else { continue };
        let mut args = vec!["-D".to_string()];
        args.extend(spec.split_whitespace().map(|w| w.trim_matches('"').to_string()));
        let _ = iptables(&args);
    }
}

/// The pid in a name `<tag><pid>-<n>`, if it is one.
fn pid_in(name: &str, tag: &str) -> Option<String> {
    let rest = name.strip_prefix(tag)?;
    let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    (!pid.is_empty()).then_some(pid)
}

/// Removes empty cgroups `bftcd-cg-<pid>-...` whose test process no longer runs.
fn sweep_stale_cgroups(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = pid_in(&name, CG_TAG) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}
