//! Starting over a local etcd that is not where this sidecar left it: an etcd restored from an
//! older snapshot (docs/operations.md, "Restoring a bank's etcd"), or one that holds someone
//! else's data.
//!
//! The apply cursor file names the last traceless operation applied before a lease call or
//! compaction, and the applied-position key it was written over (its *base*). Normally etcd's
//! key is still at that base or has moved past the cursor. A key behind the base means the etcd
//! was rolled back: the cursor no longer describes it, and resuming after the cursor would skip
//! every write between the snapshot and the cursor. Applying then resumes from etcd's own
//! position, the ledger holding every block since.
//!
//! Why replaying from etcd's position is exact. The snapshot was taken at some moment after the
//! operation at that position and before the next one that moved the key, so everything the
//! snapshot holds beyond that position came from calls that move no key:
//! * traceless operations (refused writes, read-only Txns, failed compares, deletes of nothing)
//!   changed nothing; replaying them against the same state changes nothing again;
//! * lease grants and revokes did change etcd. Replaying a traceless operation after them could
//!   make it write (a Put naming a lease granted later, a compare on a key a revoke deleted
//!   later), so before replaying, etcd's leases are put back as they were right after that
//!   position: later grants are revoked (no key can be attached to them: attaching moves the key)
//!   and later revokes of leases without keys are granted again. A later revoke that deleted
//!   keys raised etcd's revision past the key's own; that cannot be undone, so the sidecar
//!   refuses to start;
//! * a compaction can only turn a read into a "compacted" refusal, never into a write, so the
//!   replay stays traceless where it was, and the replayed compaction finds its work done.
//!
//! Nothing acknowledged is lost (every acknowledged write is in the ledger and is replayed) and
//! nothing is applied twice (the key guards every Txn, and lease calls and compactions are
//! idempotent).

use std::collections::BTreeSet;

use bftcd_proto::bftcd::operation::Request as Op;
use bftcd_sequencer::governance::ChainRules;
use bftcd_sequencer::{Ledger, Position};

use super::leases::{self, LeaseTable};

/// What the apply cursor file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CursorFile {
    /// The last traceless operation applied before a lease call or compaction.
    pub last: Position,
    /// The applied-position key in etcd when it was written; None for a file written by an
    /// earlier version, which did not record it.
    pub base: Option<Option<Position>>,
}

const V2_LEN: usize = 12 + 1 + 12;

impl CursorFile {
    pub fn to_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(V2_LEN);
        out.extend_from_slice(&self.last.to_bytes());
        match self.base.flatten() {
            Some(b) => {
                out.push(1);
                out.extend_from_slice(&b.to_bytes());
            }
            None => {
                out.push(0);
                out.extend_from_slice(&[0; 12]);
            }
        }
        out
    }

    /// Both the 12-byte file of earlier versions and the current one; None if damaged.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        match b.len() {
            12 => Some(CursorFile { last: Position::from_bytes(b)?, base: None }),
            V2_LEN => {
                let last = Position::from_bytes(&b[..12])?;
                let base = match b[12] {
                    // The padding is zeros as written: anything else is damage.
                    0 if b[13..].iter().all(|&x| x == 0) => None,
                    1 => Some(Position::from_bytes(&b[13..])?),
                    _ => return None,
                };
                Some(CursorFile { last, base: Some(base) })
            }
            _ => None,
        }
    }
}

/// What the applied-position key and the cursor file together say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The usual case: resume after this position.
    Resume(Option<Position>),
    /// etcd is behind what this sidecar applied: resume from etcd's own position, after putting
    /// its leases back as they stood there.
    Behind { from: Option<Position>, cursor: Position, base: Option<Position> },
    Refuse(String),
}

/// `in_etcd`: the applied-position key; `revision`: etcd's current revision (used only when the
/// key is missing); `first`: the highest revision of an etcd that applied nothing (1, or any
/// for a chain started from a snapshot, whose etcd the sidecar checked against the genesis).
pub(super) fn judge(in_etcd: Option<Position>, revision: i64, cursor: Option<CursorFile>, first: i64) -> Verdict {
    let Some(c) = cursor else {
        if in_etcd.is_none() && revision > first {
            // Only a sidecar writes to its etcd, and its first write records the key.
            return Verdict::Refuse(format!(
                "the local etcd holds data (revision {revision}) but no applied-position key, and this sidecar has \
                 applied nothing: it is not this bank's etcd. Point --etcd-endpoint at this bank's own etcd, or give \
                 it an empty data directory to rebuild it from the ledger"
            ));
        }
        return Verdict::Resume(in_etcd);
    };
    match c.base {
        // Written by an earlier version: no base to compare with.
        None => Verdict::Resume(in_etcd.max(Some(c.last))),
        Some(base) if in_etcd >= base => Verdict::Resume(in_etcd.max(Some(c.last))),
        Some(None) => Verdict::Resume(in_etcd.max(Some(c.last))),
        Some(Some(base)) if in_etcd.is_none() => Verdict::Refuse(format!(
            "the local etcd holds no applied-position key, but this sidecar had applied up to block {} (apply cursor \
             {}): this etcd was restored from a snapshot taken before this bank's first write, or is not this bank's \
             etcd. Restore a snapshot of this bank's etcd that holds the key, or give it an empty data directory and \
             remove the apply-cursor file to rebuild it from the ledger",
            base.height, c.last
        )),
        Some(base) => Verdict::Behind { from: in_etcd, cursor: c.last, base },
    }
}

/// The lease table and the chain's rules right after `last` (empty for None; the genesis's); and
/// the lease IDs etcd may hold after a
/// crash there: the table's at `last` and after each lease call or compaction that follows it,
/// up to the next Put, DeleteRange or Txn (that one moves the key, or is traceless and the next
/// lease call writes a newer cursor).
pub(super) fn replay_leases(ledger: &Ledger, last: Option<Position>) -> anyhow::Result<(LeaseTable, Vec<BTreeSet<i64>>, ChainRules)> {
    let chain_id = &ledger.genesis().chain_id;
    let ids = |t: &LeaseTable| t.ids().into_iter().collect::<BTreeSet<i64>>();
    let mut table = LeaseTable::initial(ledger.genesis()).map_err(|e| anyhow::anyhow!("the genesis's leases: {e}"))?;
    // The chain's rules decide some lease calls (key ownership): they are replayed alongside.
    let mut rules = ChainRules::of(ledger.genesis()).map_err(|e| anyhow::anyhow!("the genesis's rules: {e}"))?;
    let mut at_last: Option<(LeaseTable, ChainRules)> = None;
    let mut sets = Vec::new();
    for height in 1..=ledger.height() {
        let block = ledger.read(height)?.block.unwrap_or_default();
        for (i, op) in block.operations.iter().enumerate() {
            let pos = Position { height, index: i as u32 };
            if Some(pos) > last {
                if at_last.is_none() {
                    at_last = Some((table.clone(), rules.clone()));
                    sets.push(ids(&table));
                }
                if matches!(op.request, Some(Op::Put(_) | Op::DeleteRange(_) | Op::Txn(_))) {
                    let (t, r) = at_last.expect("set above");
                    return Ok((t, sets, r));
                }
                leases::step(chain_id, &mut table, op, pos, block.timestamp_ms, rules.owners());
                rules.step(op);
                sets.push(ids(&table));
                continue;
            }
            leases::step(chain_id, &mut table, op, pos, block.timestamp_ms, rules.owners());
            rules.step(op);
        }
    }
    match at_last {
        Some((t, r)) => Ok((t, sets, r)),
        None => {
            sets.push(ids(&table));
            Ok((table, sets, rules))
        }
    }
}

/// Leases to revoke in etcd (granted after the resume position) and to grant again (revoked
/// after it), for etcd's leases to be the table's.
pub(super) fn lease_fix(table: &LeaseTable, in_etcd: &BTreeSet<i64>) -> (Vec<i64>, Vec<i64>) {
    let want: BTreeSet<i64> = table.ids().into_iter().collect();
    (in_etcd.difference(&want).copied().collect(), want.difference(in_etcd).copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(height: u64, index: u32) -> Position {
        Position { height, index }
    }

    #[test]
    fn cursor_file_round_trips_and_reads_the_old_format() {
        for c in [
            CursorFile { last: p(7, 3), base: Some(Some(p(6, 1))) },
            CursorFile { last: p(7, 3), base: Some(None) },
        ] {
            assert_eq!(CursorFile::from_bytes(&c.to_bytes()), Some(c));
        }
        assert_eq!(CursorFile::from_bytes(&p(9, 2).to_bytes()), Some(CursorFile { last: p(9, 2), base: None }));
        assert_eq!(CursorFile::from_bytes(&[1, 2, 3]), None);
        let mut bad = CursorFile { last: p(1, 0), base: Some(None) }.to_bytes();
        bad[12] = 7;
        assert_eq!(CursorFile::from_bytes(&bad), None);
    }

    #[test]
    fn usual_states_resume_after_the_later_position() {
        assert_eq!(judge(None, 1, None, 1), Verdict::Resume(None));
        assert_eq!(judge(Some(p(5, 0)), 9, None, 1), Verdict::Resume(Some(p(5, 0))));
        // Traceless operations then a lease call since the key last moved.
        let c = CursorFile { last: p(6, 2), base: Some(Some(p(5, 0))) };
        assert_eq!(judge(Some(p(5, 0)), 9, Some(c), 1), Verdict::Resume(Some(p(6, 2))));
        // The key moved on since.
        assert_eq!(judge(Some(p(8, 0)), 9, Some(c), 1), Verdict::Resume(Some(p(8, 0))));
        // Nothing recorded yet when the cursor was written.
        let c = CursorFile { last: p(1, 0), base: Some(None) };
        assert_eq!(judge(None, 1, Some(c), 1), Verdict::Resume(Some(p(1, 0))));
        // An old cursor file: trusted as before.
        let c = CursorFile { last: p(6, 2), base: None };
        assert_eq!(judge(Some(p(3, 0)), 9, Some(c), 1), Verdict::Resume(Some(p(6, 2))));
    }

    #[test]
    fn an_etcd_behind_the_cursor_base_resumes_from_its_own_position() {
        let c = CursorFile { last: p(9, 2), base: Some(Some(p(8, 0))) };
        assert_eq!(judge(Some(p(4, 1)), 9, Some(c), 1), Verdict::Behind { from: Some(p(4, 1)), cursor: p(9, 2), base: Some(p(8, 0)) });
    }

    #[test]
    fn foreign_or_emptied_etcds_are_refused() {
        assert!(matches!(judge(None, 12, None, 1), Verdict::Refuse(m) if m.contains("not this bank's etcd")));
        // A chain started from a snapshot: its etcd's revision is the snapshot's, or more after
        // lease calls that wrote no key (the sidecar checked that etcd against the genesis).
        assert_eq!(judge(None, 12, None, i64::MAX), Verdict::Resume(None));
        let c = CursorFile { last: p(9, 2), base: Some(Some(p(8, 0))) };
        assert!(matches!(judge(None, 1, Some(c), 1), Verdict::Refuse(m) if m.contains("no applied-position key")));
    }

    /// Seeded fuzzing of the cursor file (it is on disk, so anything may be in it) and of the
    /// verdict over any key, revision and cursor: no panic; a decoded file encodes back to the
    /// same bytes (the old 12-byte format aside); a resume never starts before etcd's own
    /// position, and a rollback always resumes from it.
    #[test]
    fn cursor_files_and_verdicts_survive_any_input() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x0c0f_fee5);
        let edge = [0u64, 1, 2, u32::MAX as u64, u64::MAX - 1, u64::MAX];
        let pos = |rng: &mut rand::rngs::StdRng| {
            let height = if rng.gen_bool(0.3) { edge[rng.gen_range(0..edge.len())] } else { rng.gen_range(0..50) };
            let index = if rng.gen_bool(0.1) { u32::MAX } else { rng.gen_range(0..4) };
            Position { height, index }
        };
        for _ in 0..20_000 {
            let mut bytes = match rng.gen_range(0..4) {
                0 => (0..rng.gen_range(0..40)).map(|_| rng.gen()).collect::<Vec<u8>>(),
                1 => pos(&mut rng).to_bytes().to_vec(),
                _ => {
                    let base = if rng.gen_bool(0.5) { Some(Some(pos(&mut rng))) } else { Some(None) };
                    CursorFile { last: pos(&mut rng), base }.to_bytes()
                }
            };
            for _ in 0..rng.gen_range(0..3) {
                if !bytes.is_empty() {
                    let i = rng.gen_range(0..bytes.len());
                    bytes[i] = rng.gen();
                }
            }
            let cursor = CursorFile::from_bytes(&bytes);
            if let Some(c) = cursor {
                if bytes.len() == V2_LEN {
                    assert_eq!(c.to_bytes(), bytes, "{c:?}");
                }
            }
            let in_etcd = rng.gen_bool(0.8).then(|| pos(&mut rng));
            let revision = if rng.gen_bool(0.1) { i64::MAX } else { rng.gen_range(-1..100) };
            match judge(in_etcd, revision, cursor, 1) {
                Verdict::Resume(p) => assert!(p >= in_etcd, "{p:?} < {in_etcd:?}"),
                Verdict::Behind { from, .. } => assert_eq!(from, in_etcd),
                Verdict::Refuse(why) => assert!(!why.is_empty()),
            }
        }
    }

    #[test]
    fn lease_fix_revokes_later_grants_and_regrants_later_revokes() {
        let mut t = LeaseTable::default();
        t.grant(1, 10, 0).unwrap();
        t.grant(2, 10, 0).unwrap();
        let etcd: BTreeSet<i64> = [2, 3].into_iter().collect();
        assert_eq!(lease_fix(&t, &etcd), (vec![3], vec![1]));
    }
}
