//! The voting rule, alone with the state it needs, so it can be read and tested in one place.
//!
//! A validator votes for a block of view v extending a QC of view q when
//!   v > last voted view, and either q = v - 1 (the happy path) or the block carries a timeout
//!   certificate for view v - 1 and q is at least the highest QC that certificate reports.
//! It times out in view v only with a high QC at least as high as its lock, the highest QC it
//! ever voted on top of, so a timeout certificate always reports any QC a commit may rest on.
//! The state is persisted (in the [`crate::consensus_log`], fdatasync'd) before the vote or
//! timeout leaves: a restarted validator never votes twice in a view nor reports a lower lock.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SafetyState {
    /// Highest view this validator voted or timed out in.
    pub last_voted_view: u64,
    /// Highest QC view this validator voted on top of.
    pub locked_view: u64,
}

#[derive(Debug)]
pub struct SafetyRules {
    state: SafetyState,
    /// Test-only: votes for anything (twice in a view, on any QC). The simulator must catch it.
    broken: bool,
}

impl SafetyRules {
    pub fn new(state: SafetyState) -> Self {
        SafetyRules { state, broken: false }
    }

    /// The deliberately broken rule for the simulator's self-test. Never set in production.
    pub fn broken_for_tests(state: SafetyState) -> Self {
        SafetyRules { state, broken: true }
    }

    pub fn state(&self) -> SafetyState {
        self.state
    }

    /// May this validator vote for a block of `view` whose justify QC has `qc_view`, given the
    /// timeout certificate `(tc_view, tc_high_qc_view)` it carries? On yes, returns the state to
    /// persist before the vote is sent.
    pub fn vote(&mut self, view: u64, qc_view: u64, tc: Option<(u64, u64)>) -> Option<SafetyState> {
        let fresh = view > self.state.last_voted_view;
        let extends = view == qc_view + 1
            || tc.is_some_and(|(tc_view, tc_high)| view == tc_view + 1 && qc_view >= tc_high && view > qc_view);
        let allowed = (fresh && extends) || self.broken;
        if !allowed {
            return None;
        }
        self.state.last_voted_view = self.state.last_voted_view.max(view);
        self.state.locked_view = self.state.locked_view.max(qc_view);
        Some(self.state)
    }

    /// May this validator time out in `view` reporting a high QC of `high_qc_view`?
    ///
    /// Also in a view below its last voted view: a timeout only feeds a TC, a TC for view w only
    /// lets a leader propose in w + 1, where this validator no longer votes, and what the proof
    /// needs of every timeout, a reported QC at least the lock, still holds (and the lock is
    /// then below w). A validator that lost, in a restart, the certificate that moved it past
    /// w can so still help the others form one when a bank is down for good.
    pub fn timeout(&mut self, view: u64, high_qc_view: u64) -> Option<SafetyState> {
        if high_qc_view < self.state.locked_view || high_qc_view >= view {
            return None;
        }
        self.state.last_voted_view = self.state.last_voted_view.max(view);
        Some(self.state)
    }
}

/// Where a validator kept its safety state before the consensus log (the file `safety`): read
/// once, to take an old data directory over.
pub struct SafetyFile {
    path: PathBuf,
}

/// The first format: one record, replaced atomically (still read; the next store converts it).
const MAGIC_V1: &[u8; 8] = b"BFTCDSR1";
/// Two slots of one record each, written alternately in place: a store costs one write and
/// one fdatasync instead of a new file, a rename and two fsyncs, and a write torn by a crash
/// leaves the other slot intact (that store never completed, so its vote never left).
const MAGIC: &[u8; 8] = b"BFTCDSR2";
/// magic, last voted view, locked view, CRC32C of the rest.
const RECORD: usize = 28;

fn encode(magic: &[u8; 8], s: &SafetyState) -> [u8; RECORD] {
    let mut b = [0u8; RECORD];
    b[..8].copy_from_slice(magic);
    b[8..16].copy_from_slice(&s.last_voted_view.to_le_bytes());
    b[16..24].copy_from_slice(&s.locked_view.to_le_bytes());
    let crc = crc32c::crc32c(&b[..24]);
    b[24..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(magic: &[u8; 8], b: &[u8]) -> Option<SafetyState> {
    (b.len() == RECORD && &b[..8] == magic && crc32c::crc32c(&b[..24]).to_le_bytes() == b[24..28]).then(|| SafetyState {
        last_voted_view: u64::from_le_bytes(b[8..16].try_into().unwrap()),
        locked_view: u64::from_le_bytes(b[16..24].try_into().unwrap()),
    })
}

/// Both fields only grow, so the later of two stored states is the larger pair.
fn key(s: &SafetyState) -> (u64, u64) {
    (s.last_voted_view, s.locked_view)
}

impl SafetyFile {
    pub fn new(path: &Path) -> Self {
        SafetyFile { path: path.to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored state, or the initial one when the file does not exist. A damaged file is an
    /// error: guessing could mean voting twice.
    pub fn load(&self) -> std::io::Result<SafetyState> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SafetyState::default()),
            Err(e) => return Err(e),
        };
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} is damaged", self.path.display()));
        match bytes.len() {
            RECORD => decode(MAGIC_V1, &bytes).ok_or_else(bad),
            n if n == 2 * RECORD => {
                let slots = [decode(MAGIC, &bytes[..RECORD]), decode(MAGIC, &bytes[RECORD..])];
                slots.into_iter().flatten().max_by_key(key).ok_or_else(bad)
            }
            _ => Err(bad()),
        }
    }

    pub fn store(&self, s: &SafetyState) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let record = encode(MAGIC, s);
        match std::fs::read(&self.path) {
            Ok(bytes) if bytes.len() == 2 * RECORD => {
                // Overwrite the older (or unreadable) slot; the newer one stays as it is.
                let first = decode(MAGIC, &bytes[..RECORD]);
                let second = decode(MAGIC, &bytes[RECORD..]);
                let slot = match (first, second) {
                    (None, _) => 0,
                    (_, None) => 1,
                    (Some(a), Some(b)) => usize::from(key(&b) < key(&a)),
                };
                let f = std::fs::OpenOptions::new().write(true).open(&self.path)?;
                f.write_all_at(&record, (slot * RECORD) as u64)?;
                f.sync_data()
            }
            // First store, or the first format: lay out both slots once, atomically.
            _ => {
                let mut bytes = record.to_vec();
                bytes.resize(2 * RECORD, 0);
                let tmp = self.path.with_extension("tmp");
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &self.path)?;
                if let Some(dir) = self.path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_vote_per_view_and_only_on_a_justified_parent() {
        let mut s = SafetyRules::new(SafetyState::default());
        assert!(s.vote(1, 0, None).is_some());
        assert!(s.vote(1, 0, None).is_none(), "second vote in view 1");
        assert!(s.vote(3, 1, None).is_none(), "gap without a TC");
        assert!(s.vote(3, 1, Some((2, 1))).is_some());
        assert!(s.vote(5, 2, Some((4, 3))).is_none(), "below the TC's highest QC");
        assert_eq!(s.state(), SafetyState { last_voted_view: 3, locked_view: 1 });
    }

    #[test]
    fn timeouts_never_report_below_the_lock_and_block_votes_in_that_view() {
        let mut s = SafetyRules::new(SafetyState { last_voted_view: 4, locked_view: 3 });
        assert!(s.timeout(5, 2).is_none());
        assert!(s.timeout(5, 3).is_some());
        assert!(s.vote(5, 4, None).is_none(), "voted (timed out) in view 5 already");
        // A lower view: allowed above the lock, and the last voted view stays.
        assert_eq!(s.timeout(4, 3), Some(SafetyState { last_voted_view: 5, locked_view: 3 }));
        assert!(s.timeout(3, 3).is_none() && s.timeout(4, 2).is_none());
    }

    #[test]
    fn broken_rule_votes_for_anything() {
        let mut s = SafetyRules::broken_for_tests(SafetyState::default());
        assert!(s.vote(1, 0, None).is_some());
        assert!(s.vote(1, 0, None).is_some());
        assert!(s.vote(5, 1, None).is_some());
    }

    #[test]
    fn file_round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let f = SafetyFile::new(&dir.path().join("safety"));
        assert_eq!(f.load().unwrap(), SafetyState::default());
        let s = SafetyState { last_voted_view: 9, locked_view: 7 };
        f.store(&s).unwrap();
        assert_eq!(f.load().unwrap(), s);
        let mut b = std::fs::read(dir.path().join("safety")).unwrap();
        b[10] ^= 1;
        std::fs::write(dir.path().join("safety"), b).unwrap();
        assert!(f.load().is_err());
    }

    #[test]
    fn a_torn_slot_leaves_the_other_and_the_first_format_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("safety");
        let f = SafetyFile::new(&path);
        let (s1, s2, s3) = (
            SafetyState { last_voted_view: 3, locked_view: 1 },
            SafetyState { last_voted_view: 4, locked_view: 3 },
            SafetyState { last_voted_view: 6, locked_view: 3 },
        );
        f.store(&s1).unwrap();
        f.store(&s2).unwrap();
        f.store(&s3).unwrap();
        assert_eq!(f.load().unwrap(), s3);
        // s3 overwrote s1's slot (0); tear it: the load falls back to s2, never to garbage.
        let mut b = std::fs::read(&path).unwrap();
        assert_eq!(b.len(), 2 * RECORD);
        b[20] ^= 0xff;
        std::fs::write(&path, &b).unwrap();
        assert_eq!(f.load().unwrap(), s2);
        // The next store replaces the torn slot and keeps s2.
        f.store(&SafetyState { last_voted_view: 7, locked_view: 6 }).unwrap();
        assert_eq!(f.load().unwrap(), SafetyState { last_voted_view: 7, locked_view: 6 });
        let b = std::fs::read(&path).unwrap();
        assert_eq!(decode(MAGIC, &b[RECORD..]), Some(s2));
        // A file in the first format loads, and the next store converts it.
        std::fs::write(&path, encode(MAGIC_V1, &s1)).unwrap();
        assert_eq!(f.load().unwrap(), s1);
        f.store(&s2).unwrap();
        assert_eq!(f.load().unwrap(), s2);
        assert_eq!(std::fs::read(&path).unwrap().len(), 2 * RECORD);
    }
}
