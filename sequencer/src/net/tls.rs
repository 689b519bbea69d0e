//! rustls configuration for the peer transport: mutual TLS 1.3, one explicit ring provider, no
//! session resumption (every connection re-authenticates with a full handshake).
//!
//! Identity is the exact certificate DER pinned for a validator in the genesis: each bank makes
//! its own self-signed certificate (`bftcd keygen`) and no CA is trusted. The server accepts a
//! client exactly when it presents one of the pinned certificates (and proves its key in the
//! handshake); the client accepts a server exactly when it presents the certificate pinned for
//! the validator it dialed. Host names, issuers and validity dates play no part: the genesis,
//! which every bank signed, is the only authority.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::pki::{certs_from_pem, fingerprint, private_key_from_pem};
use super::NetError;

/// The one crypto provider used by the transport.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether `der` is a certificate the handshake can use (parses, with a public key the provider
/// knows): checked for every genesis certificate, so a bad one fails at start, not at connect.
pub fn check_certificate(der: &[u8]) -> Result<(), String> {
    let cert = CertificateDer::from(der);
    ParsedCertificate::try_from(&cert)
        .map(|_| ())
        .map_err(|e| format!("certificate {} unusable: {e}", fingerprint(der)))
}

/// The certificate is not the one pinned for the expected validator.
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

fn tls12(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls12_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

fn tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// Server side: the client's certificate must be one pinned in the genesis. Which validator it
/// is, and that it is not this bank's own, the accept loop decides from the same map.
#[derive(Debug)]
pub(crate) struct PinnedClientVerifier {
    known: Arc<HashMap<Vec<u8>, u32>>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !self.known.contains_key(end_entity.as_ref()) {
            return Err(not_a_validator(end_entity));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client side: the server must present exactly the certificate pinned for the dialed peer.
#[derive(Debug)]
pub(crate) struct PinnedServerVerifier {
    expected: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
        tls12(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(&self.provider, message, cert, dss)
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

/// The acceptor's configuration: requires a client certificate pinned in `known`.
pub(crate) fn server_config(
    provider: &Arc<CryptoProvider>,
    known: Arc<HashMap<Vec<u8>, u32>>,
    me: &Identity,
) -> Result<Arc<ServerConfig>, NetError> {
    let verifier = Arc::new(PinnedClientVerifier {
        known,
        provider: provider.clone(),
    });
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

/// The dialer's configuration for a peer whose certificate must equal `expected`.
pub(crate) fn client_config(
    provider: &Arc<CryptoProvider>,
    expected: Vec<u8>,
    me: &Identity,
) -> Result<Arc<ClientConfig>, NetError> {
    let verifier = Arc::new(PinnedServerVerifier {
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

#[cfg(test)]
mod tests {
    use super::super::pki::{self_signed, DevCa};
    use super::*;

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn only_pinned_certificates_pass() {
        let banks: Vec<_> = (0..3)
            .map(|i| self_signed(&format!("bank{i}")).unwrap())
            .collect();
        let known: Arc<HashMap<Vec<u8>, u32>> = Arc::new(
            banks
                .iter()
                .enumerate()
                .map(|(i, b)| (b.cert_der.clone(), i as u32))
                .collect(),
        );
        let server = PinnedClientVerifier {
            known,
            provider: provider(),
        };
        let der = |b: &super::super::pki::Issued| CertificateDer::from(b.cert_der.clone());
        for b in &banks {
            assert!(server.verify_client_cert(&der(b), &[], now()).is_ok());
        }
        // Not pinned: a fresh self-signed one with a bank's very name, or one from a CA.
        let impostor = self_signed("bank1").unwrap();
        assert!(server
            .verify_client_cert(&der(&impostor), &[], now())
            .is_err());
        let ca = DevCa::generate("a CA");
        let issued = ca.issue("bank1");
        assert!(
            server
                .verify_client_cert(&der(&issued), &[der(&banks[0])], now())
                .is_err(),
            "a chain proves nothing"
        );
        // The dialer wants exactly the dialed bank's: another bank's pinned certificate fails.
        let client = PinnedServerVerifier {
            expected: banks[1].cert_der.clone(),
            provider: provider(),
        };
        let name = server_name_for("127.0.0.1:1");
        assert!(client
            .verify_server_cert(&der(&banks[1]), &[], &name, &[], now())
            .is_ok());
        let err = client
            .verify_server_cert(&der(&banks[2]), &[], &name, &[], now())
            .unwrap_err();
        assert!(format!("{err:?}").contains("NotAValidator"), "{err}");
        assert!(client
            .verify_server_cert(&der(&impostor), &[], &name, &[], now())
            .is_err());
        // Certificates in a genesis must parse.
        assert!(check_certificate(&banks[0].cert_der).is_ok());
        assert!(check_certificate(&[0x30, 0x01, 0x00]).is_err());
    }
}
