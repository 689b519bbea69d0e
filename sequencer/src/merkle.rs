//! The Merkle tree over a forwarded batch of operations, so that one signature per batch covers
//! every operation in it and each can still be checked alone (in a block, by an auditor).
//!
//! The tree's shape is that of RFC 6962 (Certificate Transparency): for n > 1 leaves, the left
//! subtree holds the largest power of two below n. An inner node is SHA-256(0x01 ‖ left ‖ right);
//! leaves are hashed by the caller under their own domain tag, which never starts with 0x01, so
//! a leaf can never pass for an inner node. A path lists the sibling hashes from the leaf up.
//! The root does not bind the number of leaves (a leaf's path can have the same shape in trees
//! of two sizes), so whoever signs a root signs the size with it.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two below `n` (n > 1).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The root of the tree over `leaves` (at least one) and every leaf's path, in leaf order.
pub fn tree(leaves: &[Hash]) -> (Hash, Vec<Vec<Hash>>) {
    match leaves.len() {
        0 => ([0; 32], Vec::new()),
        1 => (leaves[0], vec![Vec::new()]),
        n => {
            let k = split(n);
            let (left, mut paths) = tree(&leaves[..k]);
            let (right, right_paths) = tree(&leaves[k..]);
            for p in paths.iter_mut() {
                p.push(right);
            }
            for mut p in right_paths {
                p.push(left);
                paths.push(p);
            }
            (node(&left, &right), paths)
        }
    }
}

/// The root a leaf at `index` of a tree of `size` leaves leads to along `path`; None when the
/// path does not have the shape such a tree gives that leaf.
pub fn root_from_path(leaf: &Hash, index: usize, size: usize, path: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    if size == 1 {
        return path.is_empty().then_some(*leaf);
    }
    let (sibling, below) = path.split_last()?;
    let k = split(size);
    if index < k {
        Some(node(&root_from_path(leaf, index, k, below)?, sibling))
    } else {
        Some(node(sibling, &root_from_path(leaf, index - k, size - k, below)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| Sha256::digest((i as u64).to_le_bytes()).into()).collect()
    }

    #[test]
    fn every_path_leads_to_the_root_and_nothing_else_does() {
        for n in 1..=33 {
            let l = leaves(n);
            let (root, paths) = tree(&l);
            assert_eq!(paths.len(), n);
            for (i, p) in paths.iter().enumerate() {
                assert_eq!(root_from_path(&l[i], i, n, p), Some(root), "n = {n}, leaf {i}");
                // Another leaf, another place, another size, a changed or shortened path.
                assert_ne!(root_from_path(&l[(i + 1) % n], i, n, p), if n > 1 { Some(root) } else { None });
                if n > 1 {
                    assert_ne!(root_from_path(&l[i], (i + 1) % n, n, p), Some(root));
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert_ne!(root_from_path(&l[i], i, n, &bad), Some(root));
                    assert_eq!(root_from_path(&l[i], i, n, &p[1..]), None);
                }
                assert_eq!(root_from_path(&l[i], n, n, p), None);
            }
        }
    }

    #[test]
    fn the_shape_is_rfc_6962s() {
        // Five leaves: ((a b) (c d)) e.
        let l = leaves(5);
        let ab = node(&l[0], &l[1]);
        let cd = node(&l[2], &l[3]);
        assert_eq!(tree(&l).0, node(&node(&ab, &cd), &l[4]));
        assert_eq!(tree(&l).1[4], vec![node(&ab, &cd)]);
        assert_eq!(tree(&l).1[2], vec![l[3], ab, l[4]]);
    }
}
