//! Certificates: each validator's self-signed peer certificate (pinned in the genesis, so no CA
//! is involved between banks), a development CA for the client port's TLS (`bftcd
//! client-certs`), and PEM helpers that turn PEM text into rustls types.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Validity of CA and leaf certificates issued here.
const VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Backdating of `not_before`, to tolerate small clock skew between banks.
const BACKDATE: Duration = Duration::from_secs(24 * 3600);

/// Why PEM or certificate material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("PEM: {0}")]
    Pem(String),
    #[error("certificate: {0}")]
    Cert(String),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A development certificate authority.
pub struct DevCa {
    /// The CA certificate (PEM): the trust anchor to hand to every validator.
    pub cert_pem: String,
    key_pem: String,
    /// The CA's subject name, needed to write the issuer field of leaves.
    subject: DistinguishedName,
}

/// A leaf certificate and its private key, issued by a [`DevCa`].
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams) {
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + VALIDITY).into();
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    // Positive and minimally encoded: the first byte lies in 0x40..=0x7f.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl DevCa {
    /// Generates a fresh self-signed CA with the given common name.
    pub fn generate(common_name: &str) -> DevCa {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key generation");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn.clone();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params);
        let cert = params
            .self_signed(&key)
            .expect("self-signing the CA certificate");
        DevCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            subject: dn,
        }
    }

    /// Loads a CA from its certificate and PKCS#8 private key (both PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<DevCa, PkiError> {
        let der = first_cert_der(cert_pem)?;
        let subject = subject_of(&der)?;
        // Validate the key now so that `issue` cannot fail on it later.
        KeyPair::from_pem(key_pem)?;
        Ok(DevCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            subject,
        })
    }

    /// The CA's private key (PEM). Keep it secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a leaf for validator `name`: CN = `name`, SANs DNS `name` (when it is a valid DNS
    /// name), DNS `localhost` and IP 127.0.0.1; server and client auth; ECDSA P-256; 10 years.
    pub fn issue(&self, name: &str) -> Issued {
        self.try_issue(name).expect("issuing a leaf certificate")
    }

    /// Like [`DevCa::issue`], reporting failure instead of panicking.
    pub fn try_issue(&self, name: &str) -> Result<Issued, PkiError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = self.subject.clone();
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = Issuer::new(ca_params, ca_key);

        let (key, mut params) = leaf(name)?;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        })
    }
}

/// A fresh P-256 key and the parameters of a leaf for validator `name`: CN = `name`, SANs DNS
/// `name` (when it is a valid DNS name), DNS `localhost` and IP 127.0.0.1; server and client
/// auth; 10 years.
fn leaf(name: &str) -> Result<(KeyPair, CertificateParams), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let mut sans = Vec::new();
    if is_dns_name(name) && name != "localhost" {
        sans.push(SanType::DnsName(name.try_into()?));
    }
    sans.push(SanType::DnsName("localhost".try_into()?));
    sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.serial_number = Some(random_serial());
    validity(&mut params);
    Ok((key, params))
}

/// A self-signed certificate for validator `name` (the same fields as [`DevCa::issue`]'s
/// leaves). Peers trust it because the genesis pins it, not because anyone signed it, so no
/// bank needs anyone else's key to make its own.
pub fn self_signed(name: &str) -> Result<Issued, PkiError> {
    let (key, params) = leaf(name)?;
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
    })
}

/// All certificates in a PEM text, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::Pem("no CERTIFICATE section".into()));
    }
    Ok(certs)
}

/// The DER of the first certificate in a PEM text.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    Ok(certs_from_pem(pem)?.swap_remove(0).to_vec())
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in a PEM text. The error never echoes key bytes.
pub fn private_key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| PkiError::Pem("no usable private key section".into()))
}

/// A short hex fingerprint (SHA-256, first 8 bytes) of a DER certificate, for logs.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(der)[..8])
}

/// The subject common name of a DER certificate (the client identity of etcd's client
/// certificate auth); `None` without one or when it is not text.
pub fn common_name(der: &[u8]) -> Option<String> {
    match subject_of(der).ok()?.get(&DnType::CommonName)? {
        DnValue::Utf8String(s) => Some(s.clone()),
        DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        DnValue::Ia5String(s) => Some(s.as_str().to_string()),
        DnValue::TeletexString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

// ---- minimal DER reading: just enough to recover a certificate's subject name ----

/// Splits one DER TLV off `input`: (tag, contents, rest). Only single-byte tags.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn oid_arcs(bytes: &[u8]) -> Option<Vec<u64>> {
    let mut arcs = Vec::new();
    let mut acc: u64 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if acc > (u64::MAX >> 7) {
            return None;
        }
        acc = (acc << 7) | (b & 0x7f) as u64;
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        } else if i + 1 == bytes.len() {
            return None;
        }
    }
    (!arcs.is_empty()).then_some(arcs)
}

fn dn_value(tag: u8, content: &[u8]) -> Result<DnValue, PkiError> {
    let text =
        || std::str::from_utf8(content).map_err(|_| PkiError::Cert("non-UTF-8 name value".into()));
    Ok(match tag {
        0x0c => DnValue::Utf8String(text()?.to_string()),
        0x13 => DnValue::PrintableString(text()?.try_into()?),
        0x16 => DnValue::Ia5String(text()?.try_into()?),
        0x14 => DnValue::TeletexString(text()?.try_into()?),
        0x1e => DnValue::BmpString(rcgen::string::BmpString::from_utf16be(content.to_vec())?),
        0x1c => DnValue::UniversalString(rcgen::string::UniversalString::from_utf32be(
            content.to_vec(),
        )?),
        other => {
            return Err(PkiError::Cert(format!(
                "unsupported name value tag {other:#x}"
            )))
        }
    })
}

/// The subject distinguished name of a DER certificate.
fn subject_of(der: &[u8]) -> Result<DistinguishedName, PkiError> {
    let bad = || PkiError::Cert("malformed certificate".into());
    let (_, cert, _) = tlv(der).filter(|t| t.0 == 0x30).ok_or_else(bad)?;
    let (_, mut tbs, _) = tlv(cert).filter(|t| t.0 == 0x30).ok_or_else(bad)?;
    // version [0] (optional), serial, signature algorithm, issuer, validity, subject, ...
    let mut fields = Vec::new();
    while fields.len() < 7 {
        let Some((tag, content, rest)) = tlv(tbs) else {
            break;
        };
        fields.push((tag, content));
        tbs = rest;
    }
    let skip = usize::from(fields.first().is_some_and(|f| f.0 == 0xa0));
    let &(tag, mut name) = fields.get(skip + 4).ok_or_else(bad)?;
    if tag != 0x30 {
        return Err(bad());
    }
    let mut dn = DistinguishedName::new();
    while !name.is_empty() {
        let (tag, set, rest) = tlv(name).ok_or_else(bad)?;
        if tag != 0x31 {
            return Err(bad());
        }
        let (_, atv, _) = tlv(set).filter(|t| t.0 == 0x30).ok_or_else(bad)?;
        let (_, oid, value) = tlv(atv).filter(|t| t.0 == 0x06).ok_or_else(bad)?;
        let (vtag, vcontent, _) = tlv(value).ok_or_else(bad)?;
        let arcs = oid_arcs(oid).ok_or_else(bad)?;
        dn.push(DnType::from_oid(&arcs), dn_value(vtag, vcontent)?);
        name = rest;
    }
    Ok(dn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_and_reload() {
        let ca = DevCa::generate("bftcd test CA");
        let leaf = ca.issue("bank-0");
        assert_eq!(first_cert_der(&leaf.cert_pem).unwrap(), leaf.cert_der);
        private_key_from_pem(&leaf.key_pem).unwrap();
        let again = DevCa::from_pem(&ca.cert_pem, ca.key_pem()).unwrap();
        assert_eq!(again.subject, ca.subject);
        let leaf2 = again.issue("bank_1 (weird name)");
        assert_eq!(common_name(&leaf2.cert_der).as_deref(), Some("bank_1 (weird name)"));
        assert_eq!(common_name(&leaf.cert_der).as_deref(), Some("bank-0"));
        assert!(!leaf2.cert_der.is_empty());
        assert!(DevCa::from_pem("garbage", ca.key_pem()).is_err());
        assert!(DevCa::from_pem(&ca.cert_pem, "garbage").is_err());
    }

    #[test]
    fn der_reader_survives_garbage() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let ca = DevCa::generate("ca");
        let der = first_cert_der(&ca.cert_pem).unwrap();
        for _ in 0..2000 {
            let mut bytes = der.clone();
            let flips = rng.gen_range(1..8);
            for _ in 0..flips {
                let i = rng.gen_range(0..bytes.len());
                bytes[i] = rng.gen();
            }
            bytes.truncate(rng.gen_range(0..=bytes.len()));
            let _ = subject_of(&bytes);
        }
    }
}
