//! The consensus log: what a validator must remember across a crash before its next message
//! leaves, in one append-only, preallocated file (`consensus.log`), written with one
//! `fdatasync` per consensus step for everything that step produced.
//!
//! * the blocks it votes for (`Output::PersistBlock`): a certified block survives crashes on at
//!   least f+1 honest validators;
//! * its safety state (`Output::Persist`): it never votes twice in a view nor reports a lower lock;
//! * the highest TC it holds (`Output::PersistTc`): after a restart it can still show the others
//!   why it is in its view (a bank whose timeout went into that TC may be gone for good).
//!
//! Format: the magic `BFTCDCL1`, then records of `length: u32 LE, CRC-32C of the payload: u32 LE,
//! payload`, the payload's first byte telling what it is: 1, a protobuf `Block`; 2, a safety state
//! (last voted view, locked view: u64 LE each); 3, a protobuf `TimeoutCert`. The file is kept zero-filled ahead of the last
//! record, so an append overwrites data blocks the file already has and its `fdatasync` has no
//! file size to journal; a zero length ends the log. A torn last record (crash during a write)
//! also ends it: nothing that write covered ever left.
//!
//! Opening reads the log, keeps the last safety state and the blocks above the committed height,
//! and rewrites the file with just those (also whenever it grows past 64 MiB), so a torn tail or
//! stale bytes never sit behind a record. A data directory from before this log (`safety` and
//! `blocks.log`) is migrated on first open.

use std::borrow::Borrow;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bftcd_proto::bftcd::{Block, TimeoutCert};
use bftcd_proto::Message;

use crate::consensus::safety::SafetyFile;
use crate::consensus::SafetyState;

const MAGIC: &[u8; 8] = b"BFTCDCL1";
const TAG_BLOCK: u8 = 1;
const TAG_SAFETY: u8 = 2;
const TAG_TC: u8 = 3;
/// Zeros written ahead of the last record at a time.
const PREALLOCATE: u64 = 4 << 20;
/// Past this, the next append first rewrites the log without committed blocks.
const COMPACT_AT: u64 = 64 << 20;
/// A record larger than this is damage, not data.
const MAX_RECORD: usize = 256 << 20;

/// The pre-log block store's magic (`blocks.log`), read once to migrate.
const LEGACY_BLOCKS_MAGIC: &[u8; 8] = b"BFTCDBS1";

pub struct ConsensusLog {
    path: PathBuf,
    file: File,
    /// Where the next record goes.
    end: u64,
    /// The file's length: zeros from `end` to here.
    allocated: u64,
    safety: SafetyState,
    tc: Option<TimeoutCert>,
}

/// What a validator remembered: its safety state, the blocks above the committed height, and
/// the highest TC.
pub struct Recovered {
    pub safety: SafetyState,
    pub blocks: Vec<Block>,
    pub high_tc: Option<TimeoutCert>,
}

fn frame(tag: u8, body: &[u8], out: &mut Vec<u8>) {
    let len = body.len() + 1;
    let mut crc = crc32c::crc32c(&[tag]);
    crc = crc32c::crc32c_append(crc, body);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(tag);
    out.extend_from_slice(body);
}

fn safety_body(s: &SafetyState) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&s.last_voted_view.to_le_bytes());
    b[8..].copy_from_slice(&s.locked_view.to_le_bytes());
    b
}

/// Reads records from `bytes` (after the magic) until the end of the log: the safety state
/// last written, every block, and the TC last written.
fn read_records(bytes: &[u8]) -> (Option<SafetyState>, Vec<Block>, Option<TimeoutCert>) {
    let mut safety = None;
    let mut blocks = Vec::new();
    let mut tc = None;
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        if len == 0 || len > MAX_RECORD {
            break;
        }
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else { break };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        match (payload[0], &payload[1..]) {
            (TAG_BLOCK, body) => match Block::decode(body) {
                Ok(b) => blocks.push(b),
                Err(_) => break,
            },
            (TAG_TC, body) => match TimeoutCert::decode(body) {
                Ok(t) => tc = Some(t),
                Err(_) => break,
            },
            (TAG_SAFETY, body) if body.len() == 16 => {
                safety = Some(SafetyState {
                    last_voted_view: u64::from_le_bytes(body[..8].try_into().unwrap()),
                    locked_view: u64::from_le_bytes(body[8..].try_into().unwrap()),
                })
            }
            _ => break,
        }
        at += 8 + len;
    }
    (safety, blocks, tc)
}

/// Blocks of the pre-log block store, up to its first damaged record.
fn read_legacy_blocks(path: &Path) -> std::io::Result<Vec<Block>> {
    let all = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut blocks = Vec::new();
    if all.len() < 8 || &all[..8] != LEGACY_BLOCKS_MAGIC {
        return Ok(blocks);
    }
    let mut at = 8;
    while at + 8 <= all.len() {
        let len = u32::from_le_bytes(all[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(all[at + 4..at + 8].try_into().unwrap());
        let Some(payload) = all.get(at + 8..at + 8 + len) else { break };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        match Block::decode(payload) {
            Ok(b) => blocks.push(b),
            Err(_) => break,
        }
        at += 8 + len;
    }
    Ok(blocks)
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

impl ConsensusLog {
    /// Opens (or creates) `dir/consensus.log`, returning what it remembers above
    /// `committed_height`. A damaged record ends the log: it was the last write, torn by a
    /// crash, and nothing it covered left this validator.
    pub fn open(dir: &Path, committed_height: u64) -> std::io::Result<(ConsensusLog, Recovered)> {
        let path = dir.join("consensus.log");
        let legacy_safety = dir.join("safety");
        let legacy_blocks = dir.join("blocks.log");
        let (safety, mut blocks, high_tc) = match std::fs::read(&path) {
            Ok(bytes) => {
                if bytes.len() < 8 || &bytes[..8] != MAGIC {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} is not a consensus log", path.display()),
                    ));
                }
                let (safety, blocks, tc) = read_records(&bytes[8..]);
                (safety.unwrap_or_default(), blocks, tc)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // First start with this format: take over the files it replaces.
                (SafetyFile::new(&legacy_safety).load()?, read_legacy_blocks(&legacy_blocks)?, None)
            }
            Err(e) => return Err(e),
        };
        blocks.retain(|b| b.height > committed_height);
        let log = Self::rewrite(&path, safety, high_tc.clone(), &blocks)?;
        for old in [legacy_safety, legacy_blocks] {
            match std::fs::remove_file(&old) {
                Ok(()) => sync_dir(&old)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok((log, Recovered { safety, blocks, high_tc }))
    }

    /// Writes a fresh log holding `safety`, `tc` and `blocks`, zero-filled ahead, and puts it in
    /// place atomically.
    fn rewrite(path: &Path, safety: SafetyState, tc: Option<TimeoutCert>, blocks: &[Block]) -> std::io::Result<ConsensusLog> {
        let mut bytes = MAGIC.to_vec();
        frame(TAG_SAFETY, &safety_body(&safety), &mut bytes);
        if let Some(t) = &tc {
            frame(TAG_TC, &t.encode_to_vec(), &mut bytes);
        }
        for b in blocks {
            frame(TAG_BLOCK, &b.encode_to_vec(), &mut bytes);
        }
        let end = bytes.len() as u64;
        let allocated = end + PREALLOCATE;
        bytes.resize(allocated as usize, 0);
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path)?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(ConsensusLog { path: path.to_path_buf(), file, end, allocated, safety, tc })
    }

    /// Durably records what one consensus step produced: the blocks it is about to vote for, its
    /// new safety state and highest TC, in one write and one `fdatasync`. Blocking.
    pub fn append<B: Borrow<Block>>(
        &mut self,
        blocks: &[B],
        safety: Option<SafetyState>,
        tc: Option<&TimeoutCert>,
        committed_height: u64,
    ) -> std::io::Result<()> {
        if let Some(s) = safety {
            self.safety = s;
        }
        if let Some(t) = tc {
            self.tc = Some(t.clone());
        }
        if self.end > COMPACT_AT {
            // Keep what is still uncommitted: the blocks in the file and the new ones.
            let bytes = std::fs::read(&self.path)?;
            let (_, mut kept, _) = read_records(bytes.get(8..).unwrap_or_default());
            kept.extend(blocks.iter().map(|b| b.borrow().clone()));
            kept.retain(|b| b.height > committed_height);
            *self = Self::rewrite(&self.path, self.safety, self.tc.clone(), &kept)?;
            return Ok(());
        }
        let mut bytes = Vec::new();
        for b in blocks {
            frame(TAG_BLOCK, &b.borrow().encode_to_vec(), &mut bytes);
        }
        if let Some(s) = safety {
            frame(TAG_SAFETY, &safety_body(&s), &mut bytes);
        }
        if let Some(t) = tc {
            frame(TAG_TC, &t.encode_to_vec(), &mut bytes);
        }
        if bytes.is_empty() {
            return Ok(());
        }
        // Keep at least a record header's worth of zeros after the last record: the end marker.
        let needed = self.end + bytes.len() as u64 + 8;
        if needed > self.allocated {
            let grown = needed + PREALLOCATE;
            let zeros = vec![0u8; (grown - self.allocated) as usize];
            self.file.write_all_at(&zeros, self.allocated)?;
            self.allocated = grown;
        }
        self.file.write_all_at(&bytes, self.end)?;
        self.file.sync_data()?;
        self.end += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(h: u64) -> Block {
        Block { height: h, view: h, ..Default::default() }
    }

    fn state(v: u64, l: u64) -> SafetyState {
        SafetyState { last_voted_view: v, locked_view: l }
    }

    fn heights(r: &Recovered) -> Vec<u64> {
        r.blocks.iter().map(|b| b.height).collect()
    }

    #[test]
    fn blocks_and_safety_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, r) = ConsensusLog::open(dir.path(), 0).unwrap();
        assert_eq!(r.safety, SafetyState::default());
        assert!(r.blocks.is_empty());
        for h in 1..=5 {
            log.append(&[block(h)], Some(state(h, h - 1)), None, 0).unwrap();
        }
        let tc = |view| TimeoutCert { view, ..Default::default() };
        log.append::<Block>(&[], Some(state(7, 4)), Some(&tc(5)), 0).unwrap();
        log.append::<Block>(&[], None, Some(&tc(6)), 0).unwrap();
        drop(log);
        let (_, r) = ConsensusLog::open(dir.path(), 3).unwrap();
        assert_eq!(r.safety, state(7, 4));
        assert_eq!(heights(&r), vec![4, 5], "committed blocks are dropped");
        assert_eq!(r.high_tc, Some(tc(6)));
        // The reopen rewrote the log: the same again.
        let (_, r) = ConsensusLog::open(dir.path(), 3).unwrap();
        assert_eq!((r.safety, heights(&r), r.high_tc), (state(7, 4), vec![4, 5], Some(tc(6))));
    }

    #[test]
    fn a_torn_last_write_is_not_remembered_and_earlier_ones_are() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = ConsensusLog::open(dir.path(), 0).unwrap();
        log.append(&[block(1)], Some(state(1, 0)), None, 0).unwrap();
        let before = log.end;
        log.append(&[block(2)], Some(state(2, 1)), None, 0).unwrap();
        let after = log.end;
        drop(log);
        // Tear the second write inside its first record (the block): keep some of its bytes,
        // zero the rest.
        let path = dir.path().join("consensus.log");
        let intact = std::fs::read(&path).unwrap();
        let mut bytes = intact.clone();
        let cut = before as usize + 12;
        bytes[cut..after as usize].iter_mut().for_each(|b| *b = 0);
        bytes[cut - 1] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (_, r) = ConsensusLog::open(dir.path(), 0).unwrap();
        assert_eq!((r.safety, heights(&r)), (state(1, 0), vec![1]));
        // Torn inside its last record (the safety state): the block may stay, the state not.
        let mut bytes = intact;
        bytes[after as usize - 3] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (_, r) = ConsensusLog::open(dir.path(), 0).unwrap();
        assert_eq!((r.safety, heights(&r)), (state(1, 0), vec![1, 2]));
    }

    #[test]
    fn the_file_is_preallocated_and_grows_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = ConsensusLog::open(dir.path(), 0).unwrap();
        let len = || std::fs::metadata(dir.path().join("consensus.log")).unwrap().len();
        let first = len();
        assert!(first >= PREALLOCATE);
        log.append(&[block(1)], Some(state(1, 0)), None, 0).unwrap();
        assert_eq!(len(), first, "an append inside the preallocated zeros keeps the size");
        let big = Block { height: 2, operations_digest: vec![7; PREALLOCATE as usize], ..Default::default() };
        log.append(&[big], None, None, 0).unwrap();
        assert!(len() > first);
        drop(log);
        let (_, r) = ConsensusLog::open(dir.path(), 0).unwrap();
        assert_eq!(heights(&r), vec![1, 2]);
    }

    #[test]
    fn compaction_keeps_the_uncommitted_blocks_and_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = ConsensusLog::open(dir.path(), 0).unwrap();
        let big = |h| Block { height: h, operations_digest: vec![1; 8 << 20], ..Default::default() };
        for h in 1..=9 {
            log.append(&[big(h)], Some(state(h, h - 1)), None, h.saturating_sub(2)).unwrap();
        }
        assert!(log.end < COMPACT_AT, "the log was compacted");
        drop(log);
        let (_, r) = ConsensusLog::open(dir.path(), 7).unwrap();
        assert_eq!((r.safety, heights(&r)), (state(9, 8), vec![8, 9]));
    }

    #[test]
    fn a_data_directory_of_the_previous_format_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        SafetyFile::new(&dir.path().join("safety")).store(&state(9, 8)).unwrap();
        let mut legacy = LEGACY_BLOCKS_MAGIC.to_vec();
        for h in [3, 4] {
            let payload = block(h).encode_to_vec();
            legacy.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            legacy.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
            legacy.extend_from_slice(&payload);
        }
        std::fs::write(dir.path().join("blocks.log"), legacy).unwrap();
        let (_, r) = ConsensusLog::open(dir.path(), 3).unwrap();
        assert_eq!((r.safety, heights(&r)), (state(9, 8), vec![4]));
        assert!(!dir.path().join("safety").exists() && !dir.path().join("blocks.log").exists());
        let (_, r) = ConsensusLog::open(dir.path(), 3).unwrap();
        assert_eq!((r.safety, heights(&r)), (state(9, 8), vec![4]));
    }

    #[test]
    fn a_file_that_is_not_a_consensus_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("consensus.log"), b"something else").unwrap();
        assert!(ConsensusLog::open(dir.path(), 0).is_err());
    }
}
