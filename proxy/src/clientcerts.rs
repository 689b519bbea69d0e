//! `bftcd client-certs`: a development CA for the banks' client ports and the certificates it
//! signs: client certificates (CN = the client's name, its identity under
//! `--client-cert-auth`) and server certificates valid for 127.0.0.1 and localhost. For local
//! clusters and tests (`bftcd dev-cluster --client-tls`); production banks bring their own CA.

use std::io::Write;
use std::path::{Path, PathBuf};

use bftcd_sequencer::net::DevCa;

#[derive(clap::Args, Debug)]
pub struct ClientCertsArgs {
    /// Directory for `ca.pem`, `ca-key.pem` and the certificates (created; files already
    /// there are kept, so later runs add to the same CA).
    #[arg(long)]
    pub dir: PathBuf,
    /// Makes NAME.pem and NAME-key.pem, a client certificate with CN NAME (repeatable).
    #[arg(long = "client")]
    pub clients: Vec<String>,
    /// Makes NAME-server.pem and NAME-server-key.pem, a server certificate for 127.0.0.1 and
    /// localhost (repeatable).
    #[arg(long = "server")]
    pub servers: Vec<String>,
}

pub fn run(args: ClientCertsArgs) -> anyhow::Result<()> {
    make(&args.dir, &args.clients, &args.servers)?;
    println!("client certificates in {} (CA: {})", args.dir.display(), args.dir.join("ca.pem").display());
    Ok(())
}

/// Writes a private key readable by its owner only.
fn write_secret(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    Ok(())
}

/// The CA in `dir` (`ca.pem`, `ca-key.pem`), made on first use.
fn ca(dir: &Path) -> anyhow::Result<DevCa> {
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if cert.exists() {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()));
        return DevCa::from_pem(&read(&cert)?, &read(&key)?).map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()));
    }
    let ca = DevCa::generate("bftcd client CA");
    write_secret(&key, ca.key_pem())?;
    std::fs::write(&cert, &ca.cert_pem).map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    Ok(ca)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty() && !name.starts_with('.') && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
        "certificate name {name:?}: use letters, digits, '.', '_' and '-'"
    );
    Ok(())
}

/// Client certificates `NAME.pem`/`NAME-key.pem` (CN NAME) for `clients` and server
/// certificates `NAME-server.pem`/`NAME-server-key.pem` for `servers`, all signed by the CA in
/// `dir`; existing files are kept.
pub fn make(dir: &Path, clients: &[String], servers: &[String]) -> anyhow::Result<()> {
    for name in clients.iter().chain(servers) {
        check_name(name)?;
    }
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let ca = ca(dir)?;
    // DevCa's leaves name their CN in a DNS SAN too and are valid for 127.0.0.1 and localhost,
    // for server and client authentication alike.
    for name in clients.iter().cloned().chain(servers.iter().map(|n| format!("{n}-server"))) {
        let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
        if cert.exists() && key.exists() {
            continue;
        }
        let issued = ca.try_issue(&name)?;
        let _ = std::fs::remove_file(&key);
        write_secret(&key, &issued.key_pem)?;
        std::fs::write(&cert, &issued.cert_pem).map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    }
    Ok(())
}
