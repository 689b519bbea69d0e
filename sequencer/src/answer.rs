//! Signed answers: what a bank vouches for when it answers a client, and how anyone holding the
//! genesis checks it (docs/auditing.md, "Signed answers").
//!
//! A bank signs batches of answers: one Ed25519 signature over the Merkle root of the statements
//! of every answer ready at once, each answer carrying its path ([`crate::merkle`]), so that the
//! cost stays one signature per batch under load and an answer still checks alone.

use bftcd_proto::bftcd::{AnswerRecord, AnswerSignature, AnswerStatement};
use bftcd_proto::Message;
use sha2::{Digest, Sha256};

use crate::consensus::Crypto;
use crate::merkle::{self, Hash};

pub fn leaf(statement: &AnswerStatement) -> Hash {
    let mut h = Sha256::new();
    h.update(b"bftcd/answer/v1\0");
    h.update(statement.encode_to_vec());
    h.finalize().into()
}

/// The bytes a bank signs for a batch.
pub fn batch_bytes(chain_id: &str, epoch: u64, bank: u32, size: u32, root: &Hash) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"bftcd/answer-batch/v1\0");
    out.extend_from_slice(chain_id.as_bytes());
    out.push(0);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&bank.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(root);
    out
}

/// Signs statements as one batch; returns each one's signature record, in order.
pub fn sign_batch(crypto: &dyn Crypto, statements: Vec<AnswerStatement>) -> Vec<AnswerSignature> {
    let Some(first) = statements.first() else { return vec![] };
    let (chain_id, epoch, bank) = (first.chain_id.clone(), first.epoch, first.bank);
    let leaves: Vec<Hash> = statements.iter().map(leaf).collect();
    let (root, paths) = merkle::tree(&leaves);
    let size = statements.len() as u32;
    let signature = crypto.sign_operation(&batch_bytes(&chain_id, epoch, bank, size, &root));
    statements
        .into_iter()
        .zip(paths)
        .enumerate()
        .map(|(i, (statement, path))| AnswerSignature {
            statement: Some(statement),
            batch_size: size,
            batch_index: i as u32,
            batch_path: path.into_iter().map(|h| h.to_vec()).collect(),
            signature: signature.clone(),
        })
        .collect()
}

/// The revision in an etcd response's header (field 1, `ResponseHeader`, whose field 3 is the
/// revision), read without decoding the rest of the message.
pub fn header_revision(response: &[u8]) -> Option<i64> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct HeaderOnly {
        #[prost(message, optional, tag = "1")]
        header: Option<bftcd_proto::etcdserverpb::ResponseHeader>,
    }
    HeaderOnly::decode(response).ok()?.header.map(|h| h.revision)
}

/// Checks a signed answer against the genesis's keys and against the request and response it
/// came with. Returns the statement.
pub fn verify(crypto: &dyn Crypto, chain_id: &str, epoch: u64, method: &str, record: &AnswerRecord) -> Result<AnswerStatement, String> {
    let sig = record.signature.as_ref().ok_or("no signature")?;
    let st = sig.statement.clone().ok_or("no statement in the signature")?;
    if st.chain_id != chain_id || st.epoch != epoch {
        return Err(format!("signed for chain {:?} epoch {}, not {chain_id:?} epoch {epoch}", st.chain_id, st.epoch));
    }
    if !method.is_empty() && st.method != method {
        return Err(format!("signed for {}, not {method}", st.method));
    }
    let digest = |b: &[u8]| -> Vec<u8> { Sha256::digest(b).to_vec() };
    if st.request_digest != digest(&record.request) {
        return Err("the signature is for another request".into());
    }
    if st.response_digest != digest(&record.response) {
        return Err("the signature is for another response".into());
    }
    if header_revision(&record.response) != Some(st.revision) {
        return Err(format!("the signed revision {} is not the response's", st.revision));
    }
    let path: Vec<Hash> = sig.batch_path.iter().map(|p| p.as_slice().try_into().map_err(|_| "a path hash is not 32 bytes")).collect::<Result<_, _>>()?;
    let root = merkle::root_from_path(&leaf(&st), sig.batch_index as usize, sig.batch_size as usize, &path).ok_or("the batch path does not fit the batch")?;
    let bytes = batch_bytes(chain_id, epoch, st.bank, sig.batch_size, &root);
    if !crypto.verify_operation(st.bank as usize, &bytes, &sig.signature) {
        return Err(format!("bank {}'s signature does not verify", st.bank));
    }
    Ok(st)
}
