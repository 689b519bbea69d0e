//! A bank's keys on disk, its public validator descriptor, the genesis built from descriptors,
//! and the production [`Crypto`]: BLS12-381 for votes and certificates, Ed25519 for the client
//! operations a bank signs as their submitter.
//!
//! Layout of a key directory (`bftcd keygen`):
//!   bls.key        BLS secret key, hex (0600)
//!   operation.key  Ed25519 seed, hex (0600)
//!   tls.key        TLS private key, PEM (0600)
//!   tls.crt        the bank's self-signed peer TLS certificate, PEM (pinned in the genesis)
//!   validator.pb   the public descriptor (protobuf bftcd.v1.Validator) that goes into a genesis
//!
//! No bank needs anything from another to make its keys: there is no shared CA.

use std::path::{Path, PathBuf};

use bftcd_proto::bftcd::{Genesis, Validator};
use bftcd_proto::Message;
use ed25519_dalek::Signer;

use crate::consensus::Crypto;
use crate::cpu;
use crate::crypto::{self, PublicKey, SecretKey, Signature};
use crate::net::pki;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {what}")]
    File { path: PathBuf, what: String },
    #[error("genesis: {0}")]
    Genesis(String),
}

fn file_err(path: &Path, what: impl std::fmt::Display) -> KeyError {
    KeyError::File { path: path.to_path_buf(), what: what.to_string() }
}

fn write_secret(path: &Path, contents: &str) -> Result<(), KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    f.write_all(contents.as_bytes()).map_err(|e| file_err(path, e))
}

fn read_hex32(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    let bytes = hex::decode(text.trim()).map_err(|_| file_err(path, "not hex"))?;
    bytes.try_into().map_err(|_| file_err(path, "expected 32 bytes"))
}

/// The secret half of a bank.
pub struct BankKeys {
    pub bls: SecretKey,
    pub operation: ed25519_dalek::SigningKey,
    pub tls_cert_pem: String,
    pub tls_key_pem: String,
}

impl BankKeys {
    pub fn load(dir: &Path) -> Result<BankKeys, KeyError> {
        let bls_path = dir.join("bls.key");
        let bls = SecretKey::from_bytes(&read_hex32(&bls_path)?).map_err(|e| file_err(&bls_path, e))?;
        let operation = ed25519_dalek::SigningKey::from_bytes(&read_hex32(&dir.join("operation.key"))?);
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| file_err(&p, e))
        };
        Ok(BankKeys {
            bls,
            operation,
            tls_cert_pem: read("tls.crt")?,
            tls_key_pem: read("tls.key")?,
        })
    }
}

/// Creates a bank's keys in `dir` (which must not hold keys yet), with a self-signed TLS
/// certificate, and returns its public descriptor (also written to `validator.pb`).
pub fn generate(
    dir: &Path,
    name: &str,
    peer_address: &str,
    client_address: &str,
) -> Result<Validator, KeyError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let bls = SecretKey::generate();
    let operation = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    if dir.join("bls.key").exists() {
        return Err(file_err(dir, "already holds keys (never overwritten)"));
    }
    let tls = pki::self_signed(name).map_err(|e| file_err(dir, e))?;
    write_secret(&dir.join("bls.key"), &hex::encode(bls.to_bytes()))?;
    write_secret(&dir.join("operation.key"), &hex::encode(operation.to_bytes()))?;
    write_secret(&dir.join("tls.key"), &tls.key_pem)?;
    std::fs::write(dir.join("tls.crt"), &tls.cert_pem).map_err(|e| file_err(dir, e))?;
    let v = Validator {
        name: name.to_string(),
        bls_public_key: bls.public_key().to_bytes().to_vec(),
        proof_of_possession: bls.proof_of_possession().to_bytes().to_vec(),
        tls_certificate: tls.cert_der,
        peer_address: peer_address.to_string(),
        client_address: client_address.to_string(),
        operation_key: operation.verifying_key().to_bytes().to_vec(),
    };
    std::fs::write(dir.join("validator.pb"), v.encode_to_vec()).map_err(|e| file_err(dir, e))?;
    Ok(v)
}

/// Checks a genesis: unique names, every BLS key valid with its proof of possession, every
/// operation key valid. Run at every start, not only when the genesis is made.
pub fn check_genesis(g: &Genesis) -> Result<(), KeyError> {
    if g.validators.is_empty() {
        return Err(KeyError::Genesis("no validators".into()));
    }
    let mut names = std::collections::HashSet::new();
    let mut certs = std::collections::HashSet::new();
    for v in &g.validators {
        if !names.insert(&v.name) {
            return Err(KeyError::Genesis(format!("validator name {:?} appears twice", v.name)));
        }
        if g.validators.len() > 1 {
            let pk = PublicKey::from_bytes(&v.bls_public_key).map_err(|e| KeyError::Genesis(format!("{}: {e}", v.name)))?;
            let pop = Signature::from_bytes(&v.proof_of_possession).map_err(|e| KeyError::Genesis(format!("{}: {e}", v.name)))?;
            pk.check_proof_of_possession(&pop).map_err(|_| KeyError::Genesis(format!("{}: proof of possession does not verify", v.name)))?;
            let ok: Result<[u8; 32], _> = v.operation_key.clone().try_into();
            ok.ok()
                .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
                .ok_or_else(|| KeyError::Genesis(format!("{}: bad operation key", v.name)))?;
            if v.tls_certificate.is_empty() || v.peer_address.is_empty() {
                return Err(KeyError::Genesis(format!("{}: missing TLS certificate or peer address", v.name)));
            }
            crate::net::check_certificate(&v.tls_certificate)
                .map_err(|e| KeyError::Genesis(format!("{}: {e}", v.name)))?;
            // The certificate is the bank's identity on the wire: two banks cannot share one.
            if !certs.insert(&v.tls_certificate) {
                return Err(KeyError::Genesis(format!(
                    "{}: TLS certificate already listed for another bank",
                    v.name
                )));
            }
        }
    }
    Ok(())
}

/// Votes with BLS, operations with Ed25519, against the genesis's public keys. Built without a
/// bank's secret keys (`verifier`) it only verifies: what an auditor needs.
pub struct ChainCrypto {
    bls: Option<SecretKey>,
    operation: Option<ed25519_dalek::SigningKey>,
    bls_keys: Vec<PublicKey>,
    /// Checked under ZIP 215 rules, where one signature alone and a batch agree: replicas check
    /// a peer's forwarded operations as one batch, an auditor each alone.
    operation_keys: Vec<ed25519_zebra::VerificationKey>,
    /// Operation signatures already found valid (see [`ChainCrypto::precheck_operations`]).
    checked: std::sync::Mutex<Bounded<()>>,
    /// This bank's index in the genesis, when it signs.
    me: Option<usize>,
    bls_known: std::sync::Mutex<KnownBls>,
}

/// A bounded map, oldest entry forgotten first. Only results this bank computed itself enter
/// the caches built on it, so a peer cannot poison them; a forgotten entry is simply computed again.
struct Bounded<V> {
    map: std::collections::HashMap<[u8; 32], V>,
    order: std::collections::VecDeque<[u8; 32]>,
    capacity: usize,
}

impl<V> Bounded<V> {
    fn new(capacity: usize) -> Self {
        Bounded { map: Default::default(), order: Default::default(), capacity }
    }

    fn get(&self, key: &[u8; 32]) -> Option<&V> {
        self.map.get(key)
    }

    fn get_or_insert_with(&mut self, key: [u8; 32], value: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&key) {
            self.order.push_back(key);
            if self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
        self.map.entry(key).or_insert_with(value)
    }
}

impl Bounded<()> {
    fn insert(&mut self, key: [u8; 32]) {
        self.get_or_insert_with(key, || ());
    }

    fn contains(&self, key: &[u8; 32]) -> bool {
        self.map.contains_key(key)
    }
}

/// Enough for every operation batch of several seconds of full blocks.
const CHECKED_CAPACITY: usize = 16_384;
/// Vote and timeout messages, and certificates, of the last several hundred views; and every
/// certificate of a full sync answer (two per block at most, see `max_sync_blocks`), which the
/// core looks up only after the check stage has verified the whole answer.
const BLS_CAPACITY: usize = 4096;

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// Key of an operation signature that verified.
fn operation_key(bank: usize, msg: &[u8], sig: &[u8]) -> [u8; 32] {
    digest(&[&(bank as u64).to_le_bytes(), msg, sig])
}

/// Key of a BLS signature that verified as the aggregate of exactly `signers` over `msg`
/// (one signer: an ordinary signature).
fn bls_key(signers: &[usize], msg: &[u8], sig: &[u8]) -> [u8; 32] {
    let signers: Vec<u8> = signers.iter().flat_map(|s| (*s as u32).to_le_bytes()).collect();
    digest(&[b"bls", &signers, msg, sig])
}

/// Votes (signer, signature) over one message whose sum verified.
type VoteGroup = Vec<(usize, Vec<u8>)>;

/// BLS results the consensus task finds instead of computing: what the check stage verified
/// beside it ([`crate::stages`]) and what this bank signed itself. BLS signing is
/// deterministic, so an own signature looked up is the one that would be computed.
struct KnownBls {
    /// Signatures (plain or aggregate) that verified, by [`bls_key`].
    verified: Bounded<()>,
    /// By digest of a vote message: groups of votes whose sum verified together. A group
    /// vouches only for its sum (two colluding signers can offset each other's error), so a
    /// certificate may use one group whole, never part of one or two overlapping ones.
    groups: Bounded<Vec<VoteGroup>>,
    /// This bank's signatures, by digest of the message.
    own: Bounded<Vec<u8>>,
    /// Digests of vote messages some verified certificate (a quorum's aggregate) signs.
    certified: Bounded<()>,
}

impl Default for KnownBls {
    fn default() -> Self {
        KnownBls { verified: Bounded::new(BLS_CAPACITY), groups: Bounded::new(BLS_CAPACITY), own: Bounded::new(64), certified: Bounded::new(BLS_CAPACITY) }
    }
}

impl ChainCrypto {
    pub fn new(keys: &BankKeys, genesis: &Genesis) -> Result<Self, KeyError> {
        let mut c = Self::verifier(genesis)?;
        c.me = c.bls_keys.iter().position(|k| *k == keys.bls.public_key());
        c.bls = Some(keys.bls.clone());
        c.operation = Some(keys.operation.clone());
        Ok(c)
    }

    /// Verification only, from the genesis's public keys.
    pub fn verifier(genesis: &Genesis) -> Result<Self, KeyError> {
        check_genesis(genesis)?;
        let bls_keys = genesis
            .validators
            .iter()
            .map(|v| PublicKey::from_bytes(&v.bls_public_key).map_err(|e| KeyError::Genesis(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let operation_keys = genesis
            .validators
            .iter()
            .map(|v| {
                let b: [u8; 32] = v.operation_key.clone().try_into().map_err(|_| KeyError::Genesis("operation key".into()))?;
                ed25519_zebra::VerificationKey::try_from(b).map_err(|e| KeyError::Genesis(format!("operation key: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ChainCrypto {
            bls: None,
            operation: None,
            bls_keys,
            operation_keys,
            checked: std::sync::Mutex::new(Bounded::new(CHECKED_CAPACITY)),
            me: None,
            bls_known: Default::default(),
        })
    }
}

impl ChainCrypto {
    fn is_checked(&self, bank: usize, msg: &[u8], sig: &[u8]) -> bool {
        self.checked.lock().unwrap_or_else(|e| e.into_inner()).contains(&operation_key(bank, msg, sig))
    }

    fn mark_checked(&self, bank: usize, msg: &[u8], sig: &[u8]) {
        self.checked.lock().unwrap_or_else(|e| e.into_inner()).insert(operation_key(bank, msg, sig));
    }

    /// Checks operation signatures of any banks together (one Ed25519 batch; one by one only
    /// if the batch fails) and remembers the valid ones, so that the consensus core's own check
    /// of them is a lookup. Returns how many verified.
    pub fn precheck_operations(&self, signed: &[(usize, Vec<u8>, Vec<u8>)]) -> usize {
        let _cpu = cpu::section(cpu::Component::Crypto);
        let todo: Vec<&(usize, Vec<u8>, Vec<u8>)> =
            signed.iter().filter(|(bank, msg, sig)| !self.is_checked(*bank, msg, sig)).collect();
        let mut batch = ed25519_zebra::batch::Verifier::new();
        let mut queued = 0;
        for (bank, msg, sig) in &todo {
            let (Some(key), Ok(sig)) = (self.operation_keys.get(*bank), <[u8; 64]>::try_from(sig.as_slice())) else { continue };
            batch.queue((ed25519_zebra::VerificationKeyBytes::from(*key), ed25519_zebra::Signature::from(sig), msg));
            queued += 1;
        }
        let all_valid = queued == todo.len() && queued > 0 && batch.verify(rand::thread_rng()).is_ok();
        let mut valid = signed.len() - todo.len();
        for (bank, msg, sig) in todo {
            if all_valid || self.verify_one_operation(*bank, msg, sig) {
                self.mark_checked(*bank, msg, sig);
                valid += 1;
            }
        }
        valid
    }

    fn bls_known(&self) -> std::sync::MutexGuard<'_, KnownBls> {
        self.bls_known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks peers' votes for one message together (one pairing check of their sum) and, when
    /// they verify, remembers them as a group: the consensus core, adding its own vote, then forms
    /// the certificate without a pairing. Returns whether they verified.
    pub fn precheck_votes(&self, msg: &[u8], votes: &[(usize, &[u8])]) -> bool {
        let _cpu = cpu::section(cpu::Component::Crypto);
        let (signers, sigs): (Vec<usize>, Vec<&[u8]>) = votes.iter().copied().unzip();
        let Some(keys) = signers.iter().map(|&i| self.bls_keys.get(i)).collect::<Option<Vec<_>>>() else { return false };
        let Some(agg) = crypto::aggregate_and_verify(&keys, msg, &sigs) else { return false };
        let mut known = self.bls_known();
        known.verified.insert(bls_key(&signers, msg, &agg.to_bytes()));
        let group = votes.iter().map(|(s, sig)| (*s, sig.to_vec())).collect();
        known.groups.get_or_insert_with(digest(&[msg]), Vec::new).push(group);
        true
    }

    fn remember_aggregate(&self, key: [u8; 32], signers: &[usize], msg: &[u8]) {
        let n = self.bls_keys.len();
        let mut known = self.bls_known();
        known.verified.insert(key);
        if signers.len() >= n - (n - 1) / 3 {
            known.certified.insert(digest(&[msg]));
        }
    }

    /// Whether a verified certificate over `msg` is known: then the consensus core holds one
    /// and checks no other, so the check stage need not either.
    pub fn certified(&self, msg: &[u8]) -> bool {
        self.bls_known().certified.contains(&digest(&[msg]))
    }

    /// Checks certificates (signers, vote message, aggregate) not known yet in one batch (see
    /// [`crypto::verify_aggregates`]) and remembers them when all verify; when the batch fails
    /// nothing is remembered and the core checks each alone, refusing the bad one. Returns
    /// whether all verified.
    pub fn precheck_certificates(&self, certificates: &[(Vec<usize>, Vec<u8>, Vec<u8>)]) -> bool {
        let todo: Vec<&(Vec<usize>, Vec<u8>, Vec<u8>)> =
            certificates.iter().filter(|(signers, msg, agg)| !self.bls_known().verified.contains(&bls_key(signers, msg, agg))).collect();
        if todo.is_empty() {
            return true;
        }
        let _cpu = cpu::section(cpu::Component::Crypto);
        let mut parsed = Vec::with_capacity(todo.len());
        for (signers, _, agg) in &todo {
            let Some(keys) = signers.iter().map(|&i| self.bls_keys.get(i)).collect::<Option<Vec<_>>>() else { return false };
            let Ok(sig) = Signature::from_bytes(agg) else { return false };
            parsed.push((keys, sig));
        }
        let items: Vec<(Vec<&PublicKey>, &[u8], &Signature)> =
            parsed.iter().zip(&todo).map(|((keys, sig), (_, msg, _))| (keys.clone(), msg.as_slice(), sig)).collect();
        if !crypto::verify_aggregates(&items) {
            return false;
        }
        for (signers, msg, agg) in todo {
            self.remember_aggregate(bls_key(signers, msg, agg), signers, msg);
        }
        true
    }

    /// Whether `signers[i]` signed `msg` with `sigs[i]`, for every i, is already known: each is
    /// this bank's own signature, was verified alone, or belongs to the one verified group used.
    fn known_votes(&self, signers: &[usize], msg: &[u8], sigs: &[&[u8]]) -> bool {
        let known = self.bls_known();
        let own = known.own.get(&digest(&[msg]));
        let covered: Vec<bool> = signers
            .iter()
            .zip(sigs)
            .map(|(s, sig)| {
                (Some(*s) == self.me && own.is_some_and(|o| o[..] == sig[..])) || known.verified.contains(&bls_key(&[*s], msg, sig))
            })
            .collect();
        if covered.iter().all(|c| *c) {
            return true;
        }
        let Some(groups) = known.groups.get(&digest(&[msg])) else { return false };
        let position = |signer: usize, sig: &[u8]| signers.iter().zip(sigs).position(|(s, g)| *s == signer && g[..] == sig[..]);
        for group in groups {
            let places: Option<Vec<usize>> = group.iter().map(|(s, sig)| position(*s, sig)).collect();
            let Some(places) = places else { continue };
            let mut with = covered.clone();
            for p in places {
                with[p] = true;
            }
            if with.iter().all(|c| *c) {
                return true;
            }
        }
        false
    }

    fn verify_one_operation(&self, bank: usize, msg: &[u8], sig: &[u8]) -> bool {
        let Some(key) = self.operation_keys.get(bank) else { return false };
        let Ok(sig) = <[u8; 64]>::try_from(sig) else { return false };
        key.verify(&ed25519_zebra::Signature::from(sig), msg).is_ok()
    }
}

impl Crypto for ChainCrypto {
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        // A verifier never signs; an empty signature verifies nowhere.
        let Some(key) = self.bls.as_ref() else { return Vec::new() };
        let d = digest(&[msg]);
        if let Some(sig) = self.bls_known().own.get(&d) {
            return sig.clone();
        }
        let sig = {
            let _cpu = cpu::section(cpu::Component::Crypto);
            key.sign(msg).to_bytes().to_vec()
        };
        self.bls_known().own.get_or_insert_with(d, || sig.clone());
        sig
    }
    fn verify(&self, signer: usize, msg: &[u8], sig: &[u8]) -> bool {
        let key = bls_key(&[signer], msg, sig);
        if self.bls_known().verified.contains(&key) {
            return true;
        }
        let _cpu = cpu::section(cpu::Component::Crypto);
        let (Some(pk), Ok(parsed)) = (self.bls_keys.get(signer), Signature::from_bytes(sig)) else { return false };
        let valid = pk.verify(msg, &parsed);
        if valid {
            self.bls_known().verified.insert(key);
        }
        valid
    }
    fn aggregate(&self, sigs: &[&[u8]]) -> Option<Vec<u8>> {
        let _cpu = cpu::section(cpu::Component::Crypto);
        let parsed: Vec<Signature> = sigs.iter().map(|s| Signature::from_bytes(s)).collect::<Result<_, _>>().ok()?;
        let refs: Vec<&Signature> = parsed.iter().collect();
        Signature::aggregate(&refs).ok().map(|s| s.to_bytes().to_vec())
    }
    fn verify_aggregate(&self, signers: &[usize], msg: &[u8], agg: &[u8]) -> bool {
        let key = bls_key(signers, msg, agg);
        if self.bls_known().verified.contains(&key) {
            return true;
        }
        let _cpu = cpu::section(cpu::Component::Crypto);
        let Ok(parsed) = Signature::from_bytes(agg) else { return false };
        let keys: Option<Vec<&PublicKey>> = signers.iter().map(|&i| self.bls_keys.get(i)).collect();
        let valid = keys.is_some_and(|k| crypto::verify_aggregate(&k, msg, &parsed));
        if valid {
            self.remember_aggregate(key, signers, msg);
        }
        valid
    }
    fn aggregate_verified(&self, signers: &[usize], msg: &[u8], sigs: &[&[u8]]) -> Option<Vec<u8>> {
        let keys: Vec<&PublicKey> = signers.iter().map(|&i| self.bls_keys.get(i)).collect::<Option<_>>()?;
        if keys.is_empty() || keys.len() != sigs.len() {
            return None;
        }
        let known = self.known_votes(signers, msg, sigs);
        let _cpu = cpu::section(cpu::Component::Crypto);
        let agg = if known { crypto::sum_signatures(sigs, false) } else { crypto::aggregate_and_verify(&keys, msg, sigs) }?;
        let agg = agg.to_bytes().to_vec();
        self.remember_aggregate(bls_key(signers, msg, &agg), signers, msg);
        Some(agg)
    }
    fn sign_operation(&self, msg: &[u8]) -> Vec<u8> {
        let _cpu = cpu::section(cpu::Component::Crypto);
        self.operation.as_ref().map(|k| k.sign(msg).to_bytes().to_vec()).unwrap_or_default()
    }
    fn verify_operation(&self, bank: usize, msg: &[u8], sig: &[u8]) -> bool {
        let _cpu = cpu::section(cpu::Component::Crypto);
        self.is_checked(bank, msg, sig) || self.verify_one_operation(bank, msg, sig)
    }
    fn verify_operations(&self, bank: usize, signed: &[(Vec<u8>, &[u8])]) -> bool {
        let _cpu = cpu::section(cpu::Component::Crypto);
        let Some(key) = self.operation_keys.get(bank) else { return false };
        // Those the check stage already verified are lookups.
        let signed: Vec<&(Vec<u8>, &[u8])> = signed.iter().filter(|(msg, sig)| !self.is_checked(bank, msg, sig)).collect();
        if signed.len() < 2 {
            return signed.iter().all(|(msg, sig)| self.verify_operation(bank, msg, sig));
        }
        // One key signed them all, so the batch costs little more than one multiplication per
        // signature (about a third of checking each alone).
        let key_bytes = ed25519_zebra::VerificationKeyBytes::from(*key);
        let mut batch = ed25519_zebra::batch::Verifier::new();
        for (msg, sig) in signed {
            let Ok(sig) = <[u8; 64]>::try_from(*sig) else { return false };
            batch.queue((key_bytes, ed25519_zebra::Signature::from(sig), msg));
        }
        batch.verify(rand::thread_rng()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(signed: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Vec<u8>, &[u8])> {
        signed.iter().map(|(m, sig)| (m.clone(), sig.as_slice())).collect()
    }

    #[test]
    fn keygen_genesis_and_crypto_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let validators: Vec<Validator> = (0..4)
            .map(|i| {
                generate(
                    &dir.path().join(format!("b{i}")),
                    &format!("b{i}"),
                    "127.0.0.1:1",
                    "127.0.0.1:2",
                )
                .unwrap()
            })
            .collect();
        let genesis = Genesis { chain_id: "c".into(), epoch: 1, validators, ..Default::default() };
        check_genesis(&genesis).unwrap();
        let cryptos: Vec<ChainCrypto> = (0..4)
            .map(|i| ChainCrypto::new(&BankKeys::load(&dir.path().join(format!("b{i}"))).unwrap(), &genesis).unwrap())
            .collect();
        let msg = b"vote";
        let sigs: Vec<Vec<u8>> = cryptos[..3].iter().map(|c| c.sign(msg)).collect();
        let refs: Vec<&[u8]> = sigs.iter().map(|s| s.as_slice()).collect();
        let agg = cryptos[0].aggregate(&refs).unwrap();
        assert!(cryptos[3].verify_aggregate(&[0, 1, 2], msg, &agg));
        assert!(!cryptos[3].verify_aggregate(&[0, 1, 3], msg, &agg));
        let op_sig = cryptos[2].sign_operation(b"op");
        assert!(cryptos[0].verify_operation(2, b"op", &op_sig));
        assert!(!cryptos[0].verify_operation(1, b"op", &op_sig));
        // A batch of one bank's operations verifies exactly when each one does.
        let msgs: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 40 + i as usize]).collect();
        let mut signed: Vec<(Vec<u8>, Vec<u8>)> = msgs.iter().map(|m| (m.clone(), cryptos[2].sign_operation(m))).collect();
        assert!(cryptos[0].verify_operations(2, &batch(&signed)));
        assert!(!cryptos[0].verify_operations(1, &batch(&signed)), "checked against another bank's key");
        signed[7].1[3] ^= 1;
        assert!(!cryptos[0].verify_operations(2, &batch(&signed)));
        assert!(!cryptos[0].verify_operation(2, &signed[7].0, &signed[7].1));
        signed[7].1[3] ^= 1;
        signed[4].0.push(0);
        assert!(!cryptos[0].verify_operations(2, &batch(&signed)), "a changed message fails the batch");
        signed[4].1.truncate(63);
        assert!(!cryptos[0].verify_operations(2, &batch(&signed)), "a short signature fails the batch");
        // The check stage's batch across banks: valid signatures are remembered, a bad one is
        // neither remembered nor able to spoil the others.
        let fresh: Vec<(usize, Vec<u8>, Vec<u8>)> =
            (0..4).map(|b| (b, format!("root {b}").into_bytes(), cryptos[b].sign_operation(format!("root {b}").as_bytes()))).collect();
        let mut with_bad = fresh.clone();
        with_bad[2].2[5] ^= 1;
        assert_eq!(cryptos[0].precheck_operations(&with_bad), 3);
        assert!(cryptos[0].is_checked(1, &fresh[1].1, &fresh[1].2));
        assert!(!cryptos[0].is_checked(2, &with_bad[2].1, &with_bad[2].2));
        assert!(!cryptos[0].verify_operation(2, &with_bad[2].1, &with_bad[2].2));
        assert!(cryptos[0].verify_operation(3, &fresh[3].1, &fresh[3].2));
        assert_eq!(cryptos[0].precheck_operations(&fresh), 4);
        // A remembered signature counts only for the bank and bytes it was checked for.
        assert!(!cryptos[0].verify_operation(0, &fresh[1].1, &fresh[1].2));
        assert!(!cryptos[0].verify_operations(0, &[(fresh[1].1.clone(), fresh[1].2.as_slice())]));
        // Certificates: peers' votes checked as a group by the check stage, plus this bank's
        // own vote, make a QC any auditor accepts; a group never vouches for anyone outside it.
        let vote = b"vote for block";
        let votes: Vec<Vec<u8>> = cryptos.iter().map(|c| c.sign(vote)).collect();
        let v = |i: usize| votes[i].as_slice();
        let me = &cryptos[3];
        assert!(me.precheck_votes(vote, &[(0, v(0)), (1, v(1))]));
        assert!(!me.certified(vote));
        let qc = me.aggregate_verified(&[0, 1, 3], vote, &[v(0), v(1), v(3)]).unwrap();
        assert!(cryptos[2].verify_aggregate(&[0, 1, 3], vote, &qc), "an auditor accepts it");
        assert!(me.certified(vote));
        let mut bad = votes[2].clone();
        bad[7] ^= 1;
        assert!(me.aggregate_verified(&[0, 2, 3], vote, &[v(0), &bad, v(3)]).is_none(), "part of a group vouches for nobody else");
        assert!(me.aggregate_verified(&[0, 1, 2], vote, &[v(0), v(1), &bad]).is_none());
        assert!(!me.precheck_votes(b"other", &[(0, v(0)), (1, v(1))]), "votes for another message");
        assert!(!me.precheck_votes(vote, &[(0, v(0)), (2, &bad)]));
        // A catch-up's certificates, checked as one batch: all remembered, or none when one
        // is bad.
        let certificates: Vec<(Vec<usize>, Vec<u8>, Vec<u8>)> = (0..5u8)
            .map(|i| {
                let msg = vec![b'c', i];
                let sigs: Vec<Vec<u8>> = cryptos[..3].iter().map(|c| c.sign(&msg)).collect();
                let refs: Vec<&[u8]> = sigs.iter().map(|s| s.as_slice()).collect();
                (vec![0, 1, 2], msg, cryptos[0].aggregate(&refs).unwrap())
            })
            .collect();
        let mut spoiled = certificates.clone();
        spoiled[3].0 = vec![0, 1, 3];
        let auditor = ChainCrypto::verifier(&genesis).unwrap();
        assert!(!auditor.precheck_certificates(&spoiled));
        assert!(certificates.iter().all(|(_, msg, _)| !auditor.certified(msg)), "nothing remembered from a failed batch");
        assert!(auditor.precheck_certificates(&certificates));
        assert!(certificates.iter().all(|(_, msg, _)| auditor.certified(msg)));
        let mut swapped = certificates.clone();
        swapped[1].2 = certificates[2].2.clone();
        let fresh_auditor = ChainCrypto::verifier(&genesis).unwrap();
        assert!(!fresh_auditor.precheck_certificates(&swapped), "an aggregate over another message");
        // A timeout signature checked once is remembered, a bad one is not.
        assert!(me.verify(1, vote, v(1)));
        assert!(!me.verify(2, vote, &bad));
        assert!(!me.verify(2, vote, v(1)), "remembered for its signer only");
        // A forged proof of possession is refused.
        let mut bad = genesis.clone();
        bad.validators[1].proof_of_possession = bad.validators[2].proof_of_possession.clone();
        assert!(check_genesis(&bad).is_err());
        // Keys are not overwritten.
        assert!(generate(&dir.path().join("b0"), "b0", "a", "b").is_err());
        // Two banks cannot pin one certificate.
        let mut shared = genesis.clone();
        shared.validators[1].tls_certificate = shared.validators[2].tls_certificate.clone();
        assert!(check_genesis(&shared).is_err());
        let mut garbage = genesis.clone();
        garbage.validators[3].tls_certificate = vec![0x30, 0x03, 1, 2, 3];
        assert!(check_genesis(&garbage).is_err());
    }
}
