//! TLS on the client port, configured with etcd's own flags (`--cert-file`, `--key-file`,
//! `--trusted-ca-file`, `--client-cert-auth`) and with etcd 3.5's rules: a trusted CA alone
//! already requires client certificates signed by it, and only "h2" is offered by ALPN.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bftcd_sequencer::net::pki::{certs_from_pem, common_name, private_key_from_pem};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete its handshake before its connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client port's TLS settings (`bftcd serve` flags).
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
}

/// The client port's TLS acceptor.
#[derive(Clone)]
pub struct ClientTls {
    acceptor: TlsAcceptor,
    /// Whether clients present a verified certificate (whose CN is then their identity).
    verifies_clients: bool,
}

fn read(what: &str, path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{what} {}: {e}", path.display()))
}

impl ClientTls {
    /// Loads the certificate, key and trusted CA. `None` when no TLS flag is given.
    pub fn load(files: &TlsFiles) -> anyhow::Result<Option<ClientTls>> {
        let (cert_file, key_file) = match (&files.cert_file, &files.key_file) {
            (Some(c), Some(k)) => (c, k),
            (None, None) => {
                anyhow::ensure!(
                    files.trusted_ca_file.is_none() && !files.client_cert_auth,
                    "--trusted-ca-file and --client-cert-auth need TLS on the client port: give --cert-file and --key-file"
                );
                return Ok(None);
            }
            _ => anyhow::bail!("--cert-file and --key-file go together: give both for TLS on the client port, or neither"),
        };
        // Unlike etcd (which would fall back to the system's CAs), a CA must be named: the
        // system's CAs would admit anyone with a public certificate.
        anyhow::ensure!(
            !files.client_cert_auth || files.trusted_ca_file.is_some(),
            "--client-cert-auth needs --trusted-ca-file (the CA that signs client certificates)"
        );
        let chain = certs_from_pem(&read("--cert-file", cert_file)?).map_err(|e| anyhow::anyhow!("--cert-file {}: {e}", cert_file.display()))?;
        // The error never carries key material (see private_key_from_pem).
        let key = private_key_from_pem(&read("--key-file", key_file)?).map_err(|e| anyhow::anyhow!("--key-file {}: {e}", key_file.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("TLS versions: {e}"))?;
        let builder = match &files.trusted_ca_file {
            // As etcd: a trusted CA file alone already requires and verifies client certificates.
            Some(ca_file) => {
                let mut roots = RootCertStore::empty();
                for cert in certs_from_pem(&read("--trusted-ca-file", ca_file)?).map_err(|e| anyhow::anyhow!("--trusted-ca-file {}: {e}", ca_file.display()))? {
                    roots.add(cert).map_err(|e| anyhow::anyhow!("--trusted-ca-file {}: {e}", ca_file.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| anyhow::anyhow!("--trusted-ca-file {}: {e}", ca_file.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| anyhow::anyhow!("--cert-file {} and --key-file {}: {e}", cert_file.display(), key_file.display()))?;
        // gRPC is HTTP/2; grpc-go clients (etcdctl, kube-apiserver) refuse a server without it.
        // HTTP/1.1 is etcd's JSON gateway (front/gateway), as etcd offers both.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(ClientTls { acceptor: TlsAcceptor::from(Arc::new(config)), verifies_clients: files.trusted_ca_file.is_some() }))
    }

    /// The handshake, bounded by [`HANDSHAKE_TIMEOUT`]: the stream and, when client
    /// certificates are verified, the client's common name.
    pub async fn handshake(&self, stream: TcpStream) -> Result<(TlsStream<TcpStream>, Option<String>), String> {
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
        };
        let cn = if self.verifies_clients {
            tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|leaf| common_name(leaf))
        } else {
            None
        };
        Ok((tls, cn))
    }
}
