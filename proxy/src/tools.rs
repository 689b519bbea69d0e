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

/// A one-member stock etcd on loopback, for this binary's own use: each dev-cluster bank's,
/// and the scratch etcds of `bftcd replay` and of reading a snapshot.
pub struct OneEtcd<'a> {
    pub bin: &'a Path,
    pub name: &'a str,
    pub data_dir: &'a Path,
    pub client: &'a str,
    pub peer: &'a str,
    /// Its stdout and stderr; named in the error when it does not come up.
    pub log: &'a Path,
    /// Further flags (limits, `--unsafe-no-fsync`, ...).
    pub extra: Vec<String>,
}

impl OneEtcd<'_> {
    /// Starts it and waits until it answers; a process that does not is killed.
    pub async fn start(&self) -> anyhow::Result<tokio::process::Child> {
        let log = std::fs::File::create(self.log)?;
        let (name, client, peer) = (self.name, self.client, self.peer);
        let mut child = tokio::process::Command::new(self.bin)
            .arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={name}={peer}"))
            .args(&self.extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", self.bin.display()))?;
        if let Err(e) = wait_serving(client, &mut child, self.log).await {
            let _ = child.kill().await;
            return Err(e);
        }
        Ok(child)
    }
}

/// Waits up to 30 s for the etcd at `endpoint` to answer a status call.
async fn wait_serving(endpoint: &str, child: &mut tokio::process::Child, log: &Path) -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    let etcd = crate::etcd::LocalEtcd::connect_lazy(endpoint)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if etcd.maintenance().status(bftcd_proto::etcdserverpb::StatusRequest {}).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("etcd exited ({status}) before serving; see {}", log.display());
        }
        anyhow::ensure!(Instant::now() < deadline, "etcd at {endpoint} did not serve within 30 s; see {}", log.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback port free right now (another process may still take it before it is bound).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
