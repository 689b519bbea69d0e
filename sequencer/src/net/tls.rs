//! rustls configuration for the peer transport: mutual TLS 1.3, one explicit ring provider, no
//! session resumption (every connection re-authenticates with a full handshake).
//!
//! Identity is the exact leaf certificate DER listed for a validator in genesis, on top of a chain
//! to the bank CA. The server refuses client certificates that are not listed; the client refuses
//! a server whose leaf is not the one expected for the validator it dialed. Host names play no
//! part in authentication.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, Resumption};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::pki::{certs_from_pem, fingerprint, private_key_from_pem};
use super::NetError;

/// The one crypto provider used by the transport.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trust anchors from a PEM text holding one or more CA certificates.
pub(crate) fn roots_from_pem(ca_pem: &str) -> Result<Arc<RootCertStore>, NetError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

/// The certificate is valid for the CA but is not any validator's.
#[derive(Debug)]
struct NotAValidator(String);

impl std::fmt::Display for NotAValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "certificate {} is not the expected validator's", self.0)
    }
}

impl std::error::Error for NotAValidator {}

fn not_a_validator(der: &[u8]) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        NotAValidator(fingerprint(der)),
    ))))
}

/// Server side: CA chain (client-auth usage) and membership of the leaf in the validator set.
#[derive(Debug)]
struct ValidatorClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    known: Arc<HashMap<Vec<u8>, u32>>,
}

impl ClientCertVerifier for ValidatorClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.known.contains_key(end_entity.as_ref()) {
            return Err(not_a_validator(end_entity));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client side: CA chain (server-auth usage) and the exact leaf expected for the dialed peer.
#[derive(Debug)]
struct ExpectedPeerVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ExpectedPeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if end_entity.as_ref() != self.expected.as_slice() {
            return Err(not_a_validator(end_entity));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// My certificate chain and key, parsed once.
pub(crate) struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    pub(crate) fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Identity, NetError> {
        Ok(Identity {
            chain: certs_from_pem(cert_pem)?,
            key: private_key_from_pem(key_pem)?,
        })
    }
}

/// The acceptor's configuration: requires a CA-chained client certificate listed in `known`.
pub(crate) fn server_config(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
    known: Arc<HashMap<Vec<u8>, u32>>,
    me: &Identity,
) -> Result<Arc<ServerConfig>, NetError> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| NetError::Config(format!("client verifier: {e}")))?;
    let verifier = Arc::new(ValidatorClientVerifier { inner, known });
    let mut cfg = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(me.chain.clone(), me.key.clone_key())?;
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    // A client offering other protocols only fails the handshake; one offering none is refused
    // after it (see `negotiated`).
    cfg.alpn_protocols = vec![super::PEER_PROTOCOL.to_vec()];
    Ok(Arc::new(cfg))
}

/// The dialer's configuration for a peer whose leaf must equal `expected`.
pub(crate) fn client_config(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
    expected: Vec<u8>,
    me: &Identity,
) -> Result<Arc<ClientConfig>, NetError> {
    let verifier = Arc::new(ExpectedPeerVerifier {
        roots: roots.clone(),
        expected,
        provider: provider.clone(),
    });
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(me.chain.clone(), me.key.clone_key())?;
    cfg.resumption = Resumption::disabled();
    cfg.alpn_protocols = vec![super::PEER_PROTOCOL.to_vec()];
    Ok(Arc::new(cfg))
}

/// A TLS server name for `host:port` (only used for SNI; authentication ignores names).
pub(crate) fn server_name_for(address: &str) -> ServerName<'static> {
    if let Ok(sa) = address.parse::<std::net::SocketAddr>() {
        return ServerName::IpAddress(sa.ip().into());
    }
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ServerName::IpAddress(ip.into());
    }
    ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("bftcd-peer").expect("valid DNS name"))
}

/// Checks that the handshake settled on [`super::PEER_PROTOCOL`]; the error names what the peer
/// spoke instead.
pub(crate) fn negotiated(alpn: Option<&[u8]>) -> Result<(), String> {
    match alpn {
        Some(p) if p == super::PEER_PROTOCOL => Ok(()),
        Some(p) => Err(format!(
            "peer speaks protocol {:?}, not {:?}",
            String::from_utf8_lossy(p),
            String::from_utf8_lossy(super::PEER_PROTOCOL)
        )),
        None => Err(format!(
            "peer negotiated no protocol (an older bftcd without keepalives?); this node speaks {:?}",
            String::from_utf8_lossy(super::PEER_PROTOCOL)
        )),
    }
}
