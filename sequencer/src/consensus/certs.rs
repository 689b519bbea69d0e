//! What validators sign, and how certificates are checked.
//!
//! Every signed message starts with a domain tag and the chain id, then the epoch, so a signature
//! made for one purpose, chain or validator set is worthless for any other.

use std::collections::BTreeMap;

use bftcd_proto::bftcd::{Operation, QuorumCert, TimeoutCert, TimeoutVote};
use bftcd_proto::Message;

/// The signing capability of one validator and the public keys of all of them. Production uses
/// BLS12-381 for votes and Ed25519 for operations; the simulator a cheap keyed hash.
pub trait Crypto: Send + Sync + 'static {
    /// Signs as this validator (votes and timeouts).
    fn sign(&self, msg: &[u8]) -> Vec<u8>;
    fn verify(&self, signer: usize, msg: &[u8], sig: &[u8]) -> bool;
    /// Length of every signature [`Crypto::sign`] makes: anything else from a peer is dropped
    /// before it is stored or checked.
    fn signature_len(&self) -> usize {
        crate::crypto::SIGNATURE_BYTES
    }
    /// Aggregates signatures over one message (for a QC).
    fn aggregate(&self, sigs: &[&[u8]]) -> Option<Vec<u8>>;
    fn verify_aggregate(&self, signers: &[usize], msg: &[u8], agg: &[u8]) -> bool;
    /// The aggregate of `sigs` (one per signer, in order) if it verifies: a QC's signature.
    fn aggregate_verified(&self, signers: &[usize], msg: &[u8], sigs: &[&[u8]]) -> Option<Vec<u8>> {
        self.aggregate(sigs).filter(|agg| self.verify_aggregate(signers, msg, agg))
    }
    /// Signs a client operation as the submitting bank.
    fn sign_operation(&self, msg: &[u8]) -> Vec<u8>;
    fn verify_operation(&self, bank: usize, msg: &[u8], sig: &[u8]) -> bool;
    /// Whether every one of `bank`'s signatures verifies. Must agree with checking each with
    /// [`Crypto::verify_operation`]: an auditor checks them one by one.
    fn verify_operations(&self, bank: usize, signed: &[(Vec<u8>, &[u8])]) -> bool {
        signed.iter().all(|(msg, sig)| self.verify_operation(bank, msg, sig))
    }
}

/// One set of keys shared by the consensus core and the stages beside it ([`crate::stages`]).
impl<T: Crypto> Crypto for std::sync::Arc<T> {
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        (**self).sign(msg)
    }
    fn verify(&self, signer: usize, msg: &[u8], sig: &[u8]) -> bool {
        (**self).verify(signer, msg, sig)
    }
    fn signature_len(&self) -> usize {
        (**self).signature_len()
    }
    fn aggregate(&self, sigs: &[&[u8]]) -> Option<Vec<u8>> {
        (**self).aggregate(sigs)
    }
    fn verify_aggregate(&self, signers: &[usize], msg: &[u8], agg: &[u8]) -> bool {
        (**self).verify_aggregate(signers, msg, agg)
    }
    fn aggregate_verified(&self, signers: &[usize], msg: &[u8], sigs: &[&[u8]]) -> Option<Vec<u8>> {
        (**self).aggregate_verified(signers, msg, sigs)
    }
    fn sign_operation(&self, msg: &[u8]) -> Vec<u8> {
        (**self).sign_operation(msg)
    }
    fn verify_operation(&self, bank: usize, msg: &[u8], sig: &[u8]) -> bool {
        (**self).verify_operation(bank, msg, sig)
    }
    fn verify_operations(&self, bank: usize, signed: &[(Vec<u8>, &[u8])]) -> bool {
        (**self).verify_operations(bank, signed)
    }
}

/// What a chain's validators agree on before any signature is checked.
#[derive(Debug, Clone)]
pub struct Domain {
    pub chain_id: String,
    pub epoch: u64,
    pub n: usize,
}

impl Domain {
    /// f for n = 3f+1 (rounded down for other n).
    pub fn f(&self) -> usize {
        (self.n - 1) / 3
    }

    /// Votes that make a certificate: n - f (2f+1 when n = 3f+1).
    pub fn quorum(&self) -> usize {
        self.n - self.f()
    }

    fn prefix(&self, tag: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(tag);
        out.extend_from_slice(self.chain_id.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out
    }

    pub fn vote_bytes(&self, view: u64, block_hash: &[u8], justify_view: u64) -> Vec<u8> {
        let mut out = self.prefix(b"bftcd.vote.v1\0");
        out.extend_from_slice(&view.to_be_bytes());
        out.extend_from_slice(block_hash);
        out.extend_from_slice(&justify_view.to_be_bytes());
        out
    }

    /// What a leader signs for its proposal (Ed25519, operation key): two of these for one view
    /// are evidence ([`crate::evidence`]).
    pub fn proposal_bytes(&self, view: u64, block_hash: &[u8]) -> Vec<u8> {
        let mut out = self.prefix(b"bftcd.proposal.v1\0");
        out.extend_from_slice(&view.to_be_bytes());
        out.extend_from_slice(block_hash);
        out
    }

    pub fn timeout_bytes(&self, view: u64, high_qc_view: u64) -> Vec<u8> {
        let mut out = self.prefix(b"bftcd.timeout.v1\0");
        out.extend_from_slice(&view.to_be_bytes());
        out.extend_from_slice(&high_qc_view.to_be_bytes());
        out
    }

    /// An operation's leaf in its batch's Merkle tree: the operation without its signature and
    /// its place in the batch.
    pub fn operation_leaf(&self, op: &Operation) -> crate::merkle::Hash {
        let mut bare = op.clone();
        bare.bank_signature.clear();
        bare.batch_path.clear();
        bare.batch_index = 0;
        bare.batch_size = 0;
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.prefix(b"bftcd.operation.v2\0"));
        h.update(bare.encode_to_vec());
        h.finalize().into()
    }

    /// What a bank signs for a batch of operations: the root of their tree and their number.
    pub fn batch_bytes(&self, root: &crate::merkle::Hash, size: u32) -> Vec<u8> {
        let mut out = self.prefix(b"bftcd.operation-batch.v1\0");
        out.extend_from_slice(&u64::from(size).to_be_bytes());
        out.extend_from_slice(root);
        out
    }

    /// The bytes the named bank signed for `op`: its batch's root and size, recomputed from the
    /// operation and its path. Empty when the path is malformed (no signature verifies then).
    pub fn operation_bytes(&self, op: &Operation) -> Vec<u8> {
        let path: Option<Vec<crate::merkle::Hash>> = op.batch_path.iter().map(|h| h.as_slice().try_into().ok()).collect();
        let root = path.and_then(|p| {
            crate::merkle::root_from_path(&self.operation_leaf(op), op.batch_index as usize, op.batch_size as usize, &p)
        });
        root.map(|r| self.batch_bytes(&r, op.batch_size)).unwrap_or_default()
    }

    /// Signs `ops` as one batch with `sign` (the bank's Ed25519 key): one signature, and each
    /// operation's place and path in the batch's tree.
    pub fn sign_batch(&self, ops: &mut [Operation], sign: impl FnOnce(&[u8]) -> Vec<u8>) {
        if ops.is_empty() {
            return;
        }
        let leaves: Vec<crate::merkle::Hash> = ops.iter().map(|op| self.operation_leaf(op)).collect();
        let (root, paths) = crate::merkle::tree(&leaves);
        let signature = sign(&self.batch_bytes(&root, ops.len() as u32));
        for (i, (op, path)) in ops.iter_mut().zip(paths).enumerate() {
            op.bank_signature = signature.clone();
            op.batch_index = i as u32;
            op.batch_size = leaves.len() as u32;
            op.batch_path = path.iter().map(|h| h.to_vec()).collect();
        }
    }

    /// The QC that certifies the genesis (view 0): unsigned by definition.
    pub fn genesis_qc(&self, genesis_hash: &[u8]) -> QuorumCert {
        QuorumCert {
            epoch: self.epoch,
            view: 0,
            block_hash: genesis_hash.to_vec(),
            justify_view: 0,
            signers: Vec::new(),
            aggregate_signature: Vec::new(),
        }
    }

    /// Signer indexes from a bitmap: exactly (n+7)/8 bytes, no bit beyond n.
    pub fn signers(&self, bitmap: &[u8]) -> Option<Vec<usize>> {
        if bitmap.len() != self.n.div_ceil(8) {
            return None;
        }
        let mut out = Vec::new();
        for i in 0..bitmap.len() * 8 {
            if bitmap[i / 8] & (1 << (i % 8)) != 0 {
                if i >= self.n {
                    return None;
                }
                out.push(i);
            }
        }
        Some(out)
    }

    pub fn bitmap(&self, signers: impl IntoIterator<Item = usize>) -> Vec<u8> {
        let mut bm = vec![0u8; self.n.div_ceil(8)];
        for i in signers {
            bm[i / 8] |= 1 << (i % 8);
        }
        bm
    }

    /// A QC is valid when it is the genesis QC, or a quorum of distinct validators of this epoch
    /// signed its (view, block hash, justify view).
    pub fn verify_qc(&self, qc: &QuorumCert, genesis_hash: &[u8], crypto: &dyn Crypto) -> bool {
        if qc.epoch != self.epoch || qc.block_hash.len() != 32 {
            return false;
        }
        if qc.view == 0 {
            return qc.block_hash == genesis_hash && qc.signers.is_empty() && qc.aggregate_signature.is_empty();
        }
        if qc.justify_view >= qc.view {
            return false;
        }
        let Some(signers) = self.signers(&qc.signers) else { return false };
        signers.len() >= self.quorum()
            && crypto.verify_aggregate(&signers, &self.vote_bytes(qc.view, &qc.block_hash, qc.justify_view), &qc.aggregate_signature)
    }

    /// A TC is valid when a quorum of distinct validators signed a timeout for its view, and its
    /// QC is valid and the highest any of them reported.
    pub fn verify_tc(&self, tc: &TimeoutCert, genesis_hash: &[u8], crypto: &dyn Crypto) -> bool {
        if tc.epoch != self.epoch || tc.view == 0 {
            return false;
        }
        let Some(high_qc) = &tc.high_qc else { return false };
        let mut seen = BTreeMap::new();
        for v in &tc.votes {
            let s = v.signer as usize;
            if s >= self.n || seen.insert(s, v.high_qc_view).is_some() || v.high_qc_view >= tc.view {
                return false;
            }
        }
        if seen.len() < self.quorum() {
            return false;
        }
        let highest = seen.values().copied().max().unwrap_or(0);
        if high_qc.view != highest || !self.verify_qc(high_qc, genesis_hash, crypto) {
            return false;
        }
        tc.votes.iter().all(|v| {
            crypto.verify(v.signer as usize, &self.timeout_bytes(tc.view, v.high_qc_view), &v.signature)
        })
    }

    /// Builds a TC from collected timeout votes (each already verified) and the highest QC.
    pub fn make_tc(&self, view: u64, votes: Vec<TimeoutVote>, high_qc: QuorumCert) -> TimeoutCert {
        TimeoutCert { epoch: self.epoch, view, votes, high_qc: Some(high_qc) }
    }
}

/// The simulator's and unit tests' crypto: keyed SHA-256. Not secure against anyone who knows
/// the keys (everyone in the simulation), but deterministic, fast, and it fails exactly where a
/// real scheme fails on wrong signers, messages or quorums.
pub mod sim {
    use super::Crypto;
    use sha2::{Digest, Sha256};

    #[derive(Clone)]
    pub struct SimCrypto {
        pub me: usize,
        pub n: usize,
    }

    fn tag(signer: usize, msg: &[u8]) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update((signer as u64).to_be_bytes());
        h.update(msg);
        h.finalize()[..16].to_vec()
    }

    impl Crypto for SimCrypto {
        fn sign(&self, msg: &[u8]) -> Vec<u8> {
            tag(self.me, msg)
        }
        fn verify(&self, signer: usize, msg: &[u8], sig: &[u8]) -> bool {
            signer < self.n && tag(signer, msg) == sig
        }
        fn signature_len(&self) -> usize {
            16
        }
        fn aggregate(&self, sigs: &[&[u8]]) -> Option<Vec<u8>> {
            if sigs.is_empty() {
                return None;
            }
            let mut acc = vec![0u8; 16];
            for s in sigs {
                if s.len() != 16 {
                    return None;
                }
                for (a, b) in acc.iter_mut().zip(s.iter()) {
                    *a ^= b;
                }
            }
            Some(acc)
        }
        fn verify_aggregate(&self, signers: &[usize], msg: &[u8], agg: &[u8]) -> bool {
            let sigs: Vec<Vec<u8>> = signers.iter().map(|&s| tag(s, msg)).collect();
            let refs: Vec<&[u8]> = sigs.iter().map(|s| s.as_slice()).collect();
            self.aggregate(&refs).as_deref() == Some(agg)
        }
        fn sign_operation(&self, msg: &[u8]) -> Vec<u8> {
            tag(self.me + 1_000_000, msg)
        }
        fn verify_operation(&self, bank: usize, msg: &[u8], sig: &[u8]) -> bool {
            bank < self.n && tag(bank + 1_000_000, msg) == sig
        }
    }

    /// [`SimCrypto`] with a key per validator (`keys[v]`, `v` itself for the first keys): a
    /// validator whose key was replaced signs with the new one, and its old signatures no
    /// longer verify. Operation keys stay the banks' own.
    #[derive(Clone)]
    pub struct KeyedSimCrypto {
        pub me: usize,
        pub keys: Vec<usize>,
    }

    impl Crypto for KeyedSimCrypto {
        fn sign(&self, msg: &[u8]) -> Vec<u8> {
            tag(self.keys[self.me], msg)
        }
        fn verify(&self, signer: usize, msg: &[u8], sig: &[u8]) -> bool {
            self.keys.get(signer).is_some_and(|&k| tag(k, msg) == sig)
        }
        fn signature_len(&self) -> usize {
            16
        }
        fn aggregate(&self, sigs: &[&[u8]]) -> Option<Vec<u8>> {
            SimCrypto { me: self.me, n: self.keys.len() }.aggregate(sigs)
        }
        fn verify_aggregate(&self, signers: &[usize], msg: &[u8], agg: &[u8]) -> bool {
            let Some(sigs) = signers.iter().map(|&s| self.keys.get(s).map(|&k| tag(k, msg))).collect::<Option<Vec<_>>>() else {
                return false;
            };
            let refs: Vec<&[u8]> = sigs.iter().map(|s| s.as_slice()).collect();
            self.aggregate(&refs).as_deref() == Some(agg)
        }
        fn sign_operation(&self, msg: &[u8]) -> Vec<u8> {
            tag(self.me + 1_000_000, msg)
        }
        fn verify_operation(&self, bank: usize, msg: &[u8], sig: &[u8]) -> bool {
            bank < self.keys.len() && tag(bank + 1_000_000, msg) == sig
        }
    }
}
