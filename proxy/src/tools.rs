//! Finding stock etcd binaries, in the order every BFTcd tool uses: an explicit flag, the
//! `BFTCD_ETCD_BIN` environment variable, the project's `tools/bin` (filled by
//! `scripts/setup.sh`), then `PATH`. etcdctl and etcdutl are looked up beside etcd.

use std::path::{Path, PathBuf};

fn project_tools() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    // target/<profile>/bftcd -> <project>/tools/bin
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(4) {
            dirs.push(up.join("tools/bin"));
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd.join("tools/bin"));
    }
    dirs
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()))
}

/// Locates `name` (etcd, etcdctl, etcdutl).
pub fn find(name: &str, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        let p = if p.is_dir() { p.join(name) } else if name == "etcd" { p.to_path_buf() } else { p.with_file_name(name) };
        anyhow::ensure!(p.is_file(), "{} not found (from --etcd-bin)", p.display());
        return Ok(p);
    }
    if let Some(env) = std::env::var_os("BFTCD_ETCD_BIN") {
        let etcd = PathBuf::from(env);
        let p = if name == "etcd" { etcd } else { etcd.with_file_name(name) };
        anyhow::ensure!(p.is_file(), "{} not found (from BFTCD_ETCD_BIN)", p.display());
        return Ok(p);
    }
    if let Some(p) = project_tools().into_iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        return Ok(p);
    }
    on_path(name).ok_or_else(|| {
        anyhow::anyhow!("{name} not found: run scripts/setup.sh, pass --etcd-bin, set BFTCD_ETCD_BIN, or put it on PATH")
    })
}
