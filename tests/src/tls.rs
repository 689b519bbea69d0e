//! Client TLS in tests: a CA and certificates made by the real `bftcd client-certs` (what
//! `bftcd dev-cluster --client-tls` uses), the `bftcd serve` flags that serve with them, and
//! etcdctl pointed at a TLS bank.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::etcdctl::Etcdctl;

/// A directory of `bftcd client-certs` output: `ca.pem`, `NAME.pem`/`NAME-key.pem` client
/// certificates (CN NAME) and `NAME-server.pem`/`NAME-server-key.pem` server certificates.
#[derive(Clone, Debug)]
pub struct ClientCerts {
    pub dir: PathBuf,
}

impl ClientCerts {
    /// Runs `bftcd client-certs --dir DIR --client C... --server S...` (existing files are kept).
    pub fn make(dir: &Path, clients: &[&str], servers: &[&str]) -> ClientCerts {
        let bin = crate::bins::bftcd_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg("client-certs").arg("--dir").arg(dir);
        for c in clients {
            cmd.arg(format!("--client={c}"));
        }
        for s in servers {
            cmd.arg(format!("--server={s}"));
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(out.status.success(), "bftcd client-certs: {}", String::from_utf8_lossy(&out.stderr));
        ClientCerts { dir: dir.to_path_buf() }
    }

    /// The CA certificate (it signs clients and servers alike).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-key.pem"))
    }

    /// `bftcd serve` flags: TLS with `server`'s certificate, client certificate auth by the CA.
    pub fn serve_args(&self, server: &str) -> Vec<String> {
        vec![
            format!("--cert-file={}", self.cert(&format!("{server}-server")).display()),
            format!("--key-file={}", self.key(&format!("{server}-server")).display()),
            format!("--trusted-ca-file={}", self.ca().display()),
            "--client-cert-auth".to_string(),
        ]
    }

    /// etcdctl at `endpoints` (`host:port`, comma-separated) over TLS, trusting the CA, with
    /// `client`'s certificate (or none).
    pub fn etcdctl(&self, endpoints: &str, client: Option<&str>) -> Etcdctl {
        let mut ctl = Etcdctl::new(https(endpoints)).with_global_arg(format!("--cacert={}", self.ca().display()));
        if let Some(c) = client {
            ctl = ctl
                .with_global_arg(format!("--cert={}", self.cert(c).display()))
                .with_global_arg(format!("--key={}", self.key(c).display()));
        }
        ctl
    }
}

/// `a:1,b:2` -> `https://a:1,https://b:2` (URLs are kept).
pub fn https(endpoints: &str) -> String {
    endpoints
        .split(',')
        .map(|e| if e.contains("://") { e.to_string() } else { format!("https://{e}") })
        .collect::<Vec<_>>()
        .join(",")
}
