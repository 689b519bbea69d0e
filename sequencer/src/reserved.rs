//! The reserved key prefix and the range arithmetic that keeps it invisible.
//!
//! Each bank keeps its apply position in its own etcd, inside the same Txn as the operations it
//! covers, under `\x00bftcd/`. Clients never see these keys: a client range that overlaps the
//! prefix is split into the parts before and after it, and the parts' results are merged.

/// Every reserved key starts with this.
pub const PREFIX: &[u8] = b"\x00bftcd/";
/// First key after the prefix ('/' + 1 = '0').
pub const PREFIX_END: &[u8] = b"\x00bftcd0";
/// Last applied position (`Position::to_bytes`).
pub const APPLIED_KEY: &[u8] = b"\x00bftcd/applied";

/// etcd's range_end meaning "every key from `key` on".
const TO_INFINITY: &[u8] = b"\x00";

pub fn is_reserved(key: &[u8]) -> bool {
    key.starts_with(PREFIX)
}

/// Does the client range `[key, range_end)` (etcd encoding) include any reserved key?
pub fn overlaps(key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        return is_reserved(key);
    }
    let to_infinity = range_end == TO_INFINITY;
    key < PREFIX_END && (to_infinity || range_end > PREFIX)
}

/// The client range as at most two etcd ranges that exclude the reserved prefix, in key order.
/// Empty when the range lies wholly inside the prefix.
pub fn split(key: &[u8], range_end: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    if !overlaps(key, range_end) {
        return vec![(key.to_vec(), range_end.to_vec())];
    }
    if range_end.is_empty() {
        return Vec::new();
    }
    let mut parts = Vec::with_capacity(2);
    if key < PREFIX {
        parts.push((key.to_vec(), PREFIX.to_vec()));
    }
    if range_end == TO_INFINITY || range_end > PREFIX_END {
        let start = if key > PREFIX_END { key } else { PREFIX_END };
        parts.push((start.to_vec(), range_end.to_vec()));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_keys() {
        assert!(overlaps(APPLIED_KEY, b""));
        assert!(!overlaps(b"\x00bftcd", b""));
        assert!(!overlaps(b"/registry/pods", b""));
        assert_eq!(split(APPLIED_KEY, b""), Vec::<(Vec<u8>, Vec<u8>)>::new());
    }

    #[test]
    fn whole_keyspace_is_split_around_the_prefix() {
        // `etcdctl get "" --prefix` sends key "\0", range_end "\0".
        assert_eq!(
            split(b"\x00", b"\x00"),
            vec![(b"\x00".to_vec(), PREFIX.to_vec()), (PREFIX_END.to_vec(), b"\x00".to_vec())]
        );
        assert_eq!(split(b"a", b"\x00"), vec![(b"a".to_vec(), b"\x00".to_vec())]);
    }

    #[test]
    fn ranges_touching_the_prefix_edges() {
        assert!(!overlaps(b"\x00", PREFIX)); // ends exactly where the prefix begins
        assert!(!overlaps(PREFIX_END, b"z")); // starts exactly where it ends
        assert_eq!(split(b"\x00bftcd/a", b"\x00bftcd/z"), Vec::<(Vec<u8>, Vec<u8>)>::new());
        assert_eq!(split(b"\x00bftcd/a", b"b"), vec![(PREFIX_END.to_vec(), b"b".to_vec())]);
        assert_eq!(split(b"\x00", b"\x00bftcd/x"), vec![(b"\x00".to_vec(), PREFIX.to_vec())]);
    }
}
