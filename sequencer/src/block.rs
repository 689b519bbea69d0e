//! Hashes and positions. Every hash binds a domain tag so a block hash can never be confused with
//! the hash of another kind of message.

use bftcd_proto::bftcd::{Block, Genesis, Operation};
use bftcd_proto::Message;
use sha2::{Digest, Sha256};

const BLOCK_DOMAIN: &[u8] = b"bftcd.block.v2\0";
const GENESIS_DOMAIN: &[u8] = b"bftcd.genesis.v1\0";
const OPERATIONS_DOMAIN: &[u8] = b"bftcd.operations.v1\0";

/// SHA-256 over a block's operations, each length-prefixed.
pub fn operations_digest(ops: &[Operation]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(OPERATIONS_DOMAIN);
    for op in ops {
        let bytes = op.encode_to_vec();
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    h.finalize().into()
}

/// The block without its operations, their digest in their place: what a commit proof carries
/// for the certified child, and what the block hash covers.
pub fn header(block: &Block) -> Block {
    let digest = if block.operations_digest.is_empty() {
        operations_digest(&block.operations).to_vec()
    } else {
        block.operations_digest.clone()
    };
    Block {
        height: block.height,
        epoch: block.epoch,
        view: block.view,
        parent_hash: block.parent_hash.clone(),
        timestamp_ms: block.timestamp_ms,
        proposer: block.proposer,
        operations: Vec::new(),
        justify: block.justify.clone(),
        state_digest: block.state_digest.clone(),
        state_digest_height: block.state_digest_height,
        operations_digest: digest,
        failed_leaders: block.failed_leaders.clone(),
        evidence: block.evidence.clone(),
    }
}

/// SHA-256 over the domain tag and the canonical encoding of the block's header, so a full block
/// and its header hash the same.
///
/// The justify QC counts by what it certifies (epoch, view, block hash, justify view), not by who
/// signed it: any quorum's certificate for the parent is as good as any other, so each bank may
/// keep the certificate it verified or formed itself (votes go to every bank) instead of
/// verifying the leader's copy again. Each bank's ledger still holds only QCs that verify.
pub fn block_hash(block: &Block) -> [u8; 32] {
    let mut head = header(block);
    if let Some(j) = head.justify.as_mut() {
        j.signers.clear();
        j.aggregate_signature.clear();
    }
    let mut h = Sha256::new();
    h.update(BLOCK_DOMAIN);
    h.update(head.encode_to_vec());
    h.finalize().into()
}

/// The parent hash of the block at height 1.
pub fn genesis_hash(genesis: &Genesis) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(GENESIS_DOMAIN);
    h.update(genesis.encode_to_vec());
    h.finalize().into()
}

/// Where an operation sits in the committed order: block height and index within the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub height: u64,
    pub index: u32,
}

impl Position {
    /// Fixed 12-byte big-endian encoding (sorts like the position itself).
    pub fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.height.to_be_bytes());
        out[8..].copy_from_slice(&self.index.to_be_bytes());
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 12 {
            return None;
        }
        Some(Position {
            height: u64::from_be_bytes(b[..8].try_into().ok()?),
            index: u32::from_be_bytes(b[8..].try_into().ok()?),
        })
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.height, self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_bytes_round_trip_and_order() {
        let a = Position { height: 7, index: 3 };
        let b = Position { height: 8, index: 0 };
        assert_eq!(Position::from_bytes(&a.to_bytes()), Some(a));
        assert!(a.to_bytes() < b.to_bytes());
        assert_eq!(Position::from_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn block_hash_depends_on_every_field_and_matches_the_header() {
        let b = Block { height: 1, operations: vec![Operation::default()], ..Default::default() };
        let mut c = b.clone();
        c.timestamp_ms = 1;
        assert_ne!(block_hash(&b), block_hash(&c));
        let mut d = b.clone();
        d.operations.push(Operation { submitted_ms: 1, ..Default::default() });
        assert_ne!(block_hash(&b), block_hash(&d));
        assert_eq!(block_hash(&b), block_hash(&header(&b)));
        assert!(header(&b).operations.is_empty());
    }
}
