//! Where the binaries under test come from.
//!
//! Stock etcd tools follow the project's convention (design.md §8): `BFTCD_ETCD_BIN`, then the
//! project's `tools/bin/` filled by `scripts/setup.sh`, then `PATH`. `etcdctl` and `etcdutl` are
//! looked up next to the `BFTCD_ETCD_BIN` binary first.
//!
//! The sidecar binary `bftcd` comes from `BFTCD_BIN`, else from the cargo target directory the test
//! executable itself was built into, else from `<workspace>/target/{debug,release}/`.

use std::env;
use std::path::{Path, PathBuf};

/// Environment variable naming the stock `etcd` binary to use.
pub const ETCD_BIN_ENV: &str = "BFTCD_ETCD_BIN";
/// Environment variable naming the `bftcd` sidecar binary to use.
pub const BFTCD_BIN_ENV: &str = "BFTCD_BIN";

/// The workspace root (the directory holding the workspace `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("tests/ has a parent directory");
    root.canonicalize().unwrap_or_else(|_| root.to_path_buf())
}

/// The project-local folder `scripts/setup.sh` installs stock etcd into.
pub fn tools_bin_dir() -> PathBuf {
    workspace_root().join("tools").join("bin")
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(p) {
        Ok(m) => m.is_file() && m.permissions().mode() & 0o111 != 0,
        Err(_) => false,
    }
}

fn search_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable_file(p))
}

/// Finds one of the stock etcd tools (`etcd`, `etcdctl`, `etcdutl`) or explains how to get it.
pub fn try_stock_tool(name: &str) -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    if let Some(etcd) = env::var_os(ETCD_BIN_ENV).filter(|v| !v.is_empty()) {
        let etcd = PathBuf::from(etcd);
        let candidate = if name == "etcd" {
            etcd.clone()
        } else {
            etcd.parent()
                .map(|d| d.join(name))
                .unwrap_or_else(|| PathBuf::from(name))
        };
        if is_executable_file(&candidate) {
            return Ok(candidate);
        }
        tried.push(format!(
            "{} (from {ETCD_BIN_ENV}={})",
            candidate.display(),
            etcd.display()
        ));
    }
    let local = tools_bin_dir().join(name);
    if is_executable_file(&local) {
        return Ok(local);
    }
    tried.push(local.display().to_string());
    if let Some(p) = search_path(name) {
        return Ok(p);
    }
    tried.push("$PATH".to_string());
    Err(format!(
        "stock `{name}` not found (tried {}). Run scripts/setup.sh to install etcd 3.5.16 into \
         tools/bin/, or set {ETCD_BIN_ENV} to an etcd binary (etcdctl/etcdutl are looked up next to it).",
        tried.join(", ")
    ))
}

fn stock_tool(name: &str) -> PathBuf {
    try_stock_tool(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Path of the stock `etcd` server binary. Panics with setup instructions when it is missing.
pub fn etcd_bin() -> PathBuf {
    stock_tool("etcd")
}

/// Path of the stock `etcdctl` binary. Panics with setup instructions when it is missing.
pub fn etcdctl_bin() -> PathBuf {
    stock_tool("etcdctl")
}

/// Path of the stock `etcdutl` binary. Panics with setup instructions when it is missing.
pub fn etcdutl_bin() -> PathBuf {
    stock_tool("etcdutl")
}

/// Finds the `bftcd` sidecar binary, or explains how to build it.
pub fn try_bftcd_bin() -> Result<PathBuf, String> {
    if let Some(p) = env::var_os(BFTCD_BIN_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if is_executable_file(&p) {
            return Ok(p);
        }
        return Err(format!(
            "{BFTCD_BIN_ENV}={} is not an executable file",
            p.display()
        ));
    }
    let mut tried = Vec::new();
    // Test executables live in target/<profile>/deps/, examples in target/<profile>/examples/:
    // the sidecar built by the same `cargo build` sits in target/<profile>/.
    if let Ok(exe) = env::current_exe() {
        for dir in exe.ancestors().skip(1).take(3) {
            let candidate = dir.join("bftcd");
            if is_executable_file(&candidate) {
                return Ok(candidate);
            }
            tried.push(candidate.display().to_string());
        }
    }
    let mut targets: Vec<PathBuf> = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    targets.push(workspace_root().join("target"));
    for target in targets {
        for profile in ["debug", "release"] {
            let candidate = target.join(profile).join("bftcd");
            if tried.contains(&candidate.display().to_string()) {
                continue;
            }
            if is_executable_file(&candidate) {
                return Ok(candidate);
            }
            tried.push(candidate.display().to_string());
        }
    }
    Err(format!(
        "the `bftcd` sidecar binary was not found (tried {}). Build it first with \
         `cargo build --workspace --bins` (add --release for release tests), or set {BFTCD_BIN_ENV}.",
        tried.join(", ")
    ))
}

/// Path of the `bftcd` sidecar binary. Panics telling to run `cargo build --workspace --bins`.
pub fn bftcd_bin() -> PathBuf {
    try_bftcd_bin().unwrap_or_else(|e| panic!("{e}"))
}

/// Finds the Byzantine test build of `bftcd` (cargo feature `byzantine`, never shipped):
/// `BFTCD_BYZANTINE_BIN`, else `target/byzantine/<profile>/bftcd`; or explains how to build it.
pub fn try_byzantine_bin(profile: &str) -> Result<PathBuf, String> {
    if let Some(p) = env::var_os("BFTCD_BYZANTINE_BIN").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if is_executable_file(&p) {
            return Ok(p);
        }
        return Err(format!("BFTCD_BYZANTINE_BIN={} is not an executable file", p.display()));
    }
    let p = workspace_root().join("target/byzantine").join(profile).join("bftcd");
    if is_executable_file(&p) {
        return Ok(p);
    }
    let release = if profile == "release" { "--release " } else { "" };
    Err(format!(
        "the Byzantine test build {} is missing: build it with \
         `cargo build {release}-p bftcd-proxy --features byzantine --target-dir target/byzantine`, \
         or set BFTCD_BYZANTINE_BIN",
        p.display()
    ))
}

/// Runs the `bftcd` command line; returns (success, stdout, stderr).
pub fn run_bftcd(args: &[String]) -> (bool, String, String) {
    let bin = bftcd_bin();
    let out = std::process::Command::new(&bin).args(args).output().unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs the `bftcd` command line, which must succeed; returns its stdout.
pub fn bftcd_ok(args: &[String]) -> String {
    let (success, stdout, stderr) = run_bftcd(args);
    assert!(success, "bftcd {}: {stderr}", args.join(" "));
    stdout
}

/// Command-line arguments from string literals.
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}
