//! The state digest: what a bank's etcd holds after a block, as 32 bytes every honest bank
//! computes alike (docs/consensus.md, "State digest").
//!
//! Keys go into a lattice hash (LtHash, Bellare–Micciancio's additive multiset hash in the form
//! Facebook's LtHash16 uses: 1024 lanes of 16 bits, each record expanded to 2 KiB with a
//! BLAKE3 XOF, added lane-wise mod 2^16). Adding and removing a record are one lane-wise add or
//! subtract, so a digest follows the changes of a block at a cost that grows with the changes,
//! not the store, and a scan of the whole store gives the same value in any order.
//!
//! No per-key proofs: a Merkle tree over the key space would let a client check one key against
//! a certified root, but costs a path update (and its storage) per change; the signed answers
//! of a bank are what a client checks, and a disputed key is settled by reading it at several
//! banks (docs/auditing.md).

use sha2::{Digest, Sha256};

const LANES: usize = 1024;

/// One key as etcd holds it. The value enters as its hash, so that a digest over large values
/// costs one pass over them.
#[derive(Clone, Copy, Debug)]
pub struct KeyRecord<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl KeyRecord<'_> {
    /// 32 bytes that stand for the record in the lattice hash.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("bftcd 2026 state digest key record v1");
        h.update(&(self.key.len() as u64).to_be_bytes());
        h.update(self.key);
        h.update(blake3::hash(self.value).as_bytes());
        for n in [self.create_revision, self.mod_revision, self.version, self.lease] {
            h.update(&n.to_be_bytes());
        }
        *h.finalize().as_bytes()
    }
}

/// A multiset of key records, as an LtHash16.
#[derive(Clone, PartialEq, Eq)]
pub struct LtHash {
    lanes: Box<[u16; LANES]>,
}

impl Default for LtHash {
    fn default() -> Self {
        LtHash { lanes: Box::new([0; LANES]) }
    }
}

impl std::fmt::Debug for LtHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LtHash({})", hex::encode(&self.checksum()[..8]))
    }
}

fn expand(record: &[u8; 32]) -> [u16; LANES] {
    let mut bytes = [0u8; LANES * 2];
    blake3::Hasher::new_keyed(record).finalize_xof().fill(&mut bytes);
    let mut lanes = [0u16; LANES];
    for (l, b) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
        *l = u16::from_le_bytes([b[0], b[1]]);
    }
    lanes
}

impl LtHash {
    pub fn add(&mut self, record: &[u8; 32]) {
        for (a, b) in self.lanes.iter_mut().zip(expand(record)) {
            *a = a.wrapping_add(b);
        }
    }

    pub fn remove(&mut self, record: &[u8; 32]) {
        for (a, b) in self.lanes.iter_mut().zip(expand(record)) {
            *a = a.wrapping_sub(b);
        }
    }

    /// The lanes as bytes, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.lanes.iter().flat_map(|l| l.to_le_bytes()).collect()
    }

    /// A short form for logs and the digest.
    pub fn checksum(&self) -> [u8; 32] {
        *blake3::hash(&self.to_bytes()).as_bytes()
    }
}

/// The parts of a bank's state besides its keys, each already hashed by its owner (the lease
/// table, the chain's rules), and the etcd revision the keys were read at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateParts {
    pub revision: i64,
    pub keys: [u8; 32],
    pub leases: [u8; 32],
    pub rules: [u8; 32],
}

/// The state digest proper: SHA-256 over a tag and the parts.
pub fn state_digest(parts: &StateParts) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"bftcd state digest v1\0");
    h.update(parts.revision.to_be_bytes());
    h.update(parts.keys);
    h.update(parts.leases);
    h.update(parts.rules);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, value: &str, m: i64) -> [u8; 32] {
        KeyRecord { key: key.as_bytes(), value: value.as_bytes(), create_revision: 2, mod_revision: m, version: 1, lease: 0 }.hash()
    }

    #[test]
    fn order_does_not_matter_and_removal_undoes_an_add() {
        let (a, b, c) = (rec("a", "1", 2), rec("b", "2", 3), rec("c", "3", 4));
        let mut x = LtHash::default();
        x.add(&a);
        x.add(&b);
        x.add(&c);
        let mut y = LtHash::default();
        y.add(&c);
        y.add(&a);
        y.add(&b);
        assert_eq!(x, y);
        y.remove(&b);
        assert_ne!(x, y);
        let mut z = LtHash::default();
        z.add(&a);
        z.add(&c);
        assert_eq!(y, z);
        z.remove(&a);
        z.remove(&c);
        assert_eq!(z, LtHash::default());
    }

    #[test]
    fn every_field_of_a_record_counts() {
        let base = KeyRecord { key: b"k", value: b"v", create_revision: 2, mod_revision: 3, version: 1, lease: 0 };
        let variants = [
            KeyRecord { key: b"k2", ..base },
            KeyRecord { value: b"v2", ..base },
            KeyRecord { create_revision: 1, ..base },
            KeyRecord { mod_revision: 4, ..base },
            KeyRecord { version: 2, ..base },
            KeyRecord { lease: 7, ..base },
        ];
        for v in variants {
            assert_ne!(v.hash(), base.hash(), "{v:?}");
        }
        // The key's length is framed: ("ab", value) is not ("a", "b"-prefixed value).
        assert_ne!(KeyRecord { key: b"ab", value: b"", ..base }.hash(), KeyRecord { key: b"a", value: b"b", ..base }.hash());
    }

    #[test]
    fn the_digest_covers_every_part() {
        let p = StateParts { revision: 5, keys: [1; 32], leases: [2; 32], rules: [3; 32] };
        let d = state_digest(&p);
        assert_ne!(d, state_digest(&StateParts { revision: 6, ..p }));
        assert_ne!(d, state_digest(&StateParts { keys: [9; 32], ..p }));
        assert_ne!(d, state_digest(&StateParts { leases: [9; 32], ..p }));
        assert_ne!(d, state_digest(&StateParts { rules: [9; 32], ..p }));
    }
}
