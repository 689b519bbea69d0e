//! The append-only ledger of committed blocks (format: `docs/ledger-format.md`).
//!
//! ```text
//! file   := magic record*
//! magic  := "BFTCDLG1"                      (8 bytes)
//! record := len:u32le crc:u32le payload     (crc32c of payload; payload = LedgerRecord)
//! ```
//! The first record is the genesis, then one `CommittedBlock` per height, 1, 2, 3 ... with each
//! block's `parent_hash` equal to the previous block's hash. Every append is fsynced before the
//! block counts as committed. A record cut short by a crash can only be the last one, was never
//! acknowledged, and is truncated on open; damage anywhere else refuses to open.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bftcd_proto::bftcd::{ledger_record, Block, CommittedBlock, Genesis, LedgerRecord};
use bftcd_proto::Message;
use tokio::sync::watch;

use crate::block::{block_hash, genesis_hash};

pub const MAGIC: &[u8; 8] = b"BFTCDLG1";
/// Upper bound for one record; anything larger is damage, not data.
pub const MAX_RECORD_BYTES: u32 = 256 << 20;
const RECORD_HEADER: u64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("ledger {path} at byte {offset}: {what}")]
    Corrupt { path: PathBuf, offset: u64, what: String },
    #[error("ledger {path} belongs to another chain: {what}")]
    WrongGenesis { path: PathBuf, what: String },
    #[error("block at height {got} does not extend the ledger tip {tip}: {what}")]
    NotNext { tip: u64, got: u64, what: String },
    #[error("no block at height {0}")]
    Missing(u64),
}

/// An offline view of a ledger file: what an auditor or a restarting bank reads.
pub struct LedgerFile {
    pub path: PathBuf,
    pub genesis: Genesis,
    /// (offset of record header, payload length) for heights 1..=blocks.len().
    pub blocks: Vec<(u64, u32)>,
    /// Hash of the last block (genesis hash when empty).
    pub tip_hash: [u8; 32],
    pub tip_timestamp_ms: u64,
    /// Bytes of valid records; anything after is a torn tail.
    pub valid_len: u64,
    pub file_len: u64,
}

/// Reading a long ledger at start takes a while: a line every 2 s says how far it got (nothing
/// for a ledger read within 2 s).
struct ScanProgress<'a> {
    path: &'a Path,
    file_len: u64,
    started: std::time::Instant,
    last: std::time::Instant,
    reported: bool,
    calls: u32,
}

impl<'a> ScanProgress<'a> {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(2);

    fn new(path: &'a Path, file_len: u64) -> Self {
        let now = std::time::Instant::now();
        ScanProgress { path, file_len, started: now, last: now, reported: false, calls: 0 }
    }

    fn at(&mut self, blocks: u64, offset: u64) {
        self.calls = self.calls.wrapping_add(1);
        // The clock is read once every 256 records.
        if self.calls & 255 != 0 || self.last.elapsed() < Self::EVERY {
            return;
        }
        self.last = std::time::Instant::now();
        self.reported = true;
        let percent = offset.saturating_mul(100).checked_div(self.file_len).unwrap_or(100);
        tracing::info!(
            path = %self.path.display(),
            blocks,
            bytes = offset,
            total_bytes = self.file_len,
            "ledger scan: {} blocks, {percent} % of {}",
            thousands(blocks),
            human_bytes(self.file_len)
        );
    }

    fn done(&self, blocks: u64) {
        if self.reported {
            let secs = self.started.elapsed().as_secs_f64();
            tracing::info!(path = %self.path.display(), blocks, "ledger scan: {} blocks read in {secs:.1} s", thousands(blocks));
        }
    }
}

/// 12345 -> "12,345".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let (first, rest) = digits.split_at((digits.len() - 1) % 3 + 1);
    let mut out = first.to_string();
    for group in rest.as_bytes().chunks(3) {
        out.push(',');
        out.extend(group.iter().map(|&b| b as char));
    }
    out
}

/// 1288490188 -> "1.2 GiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io { path: path.to_path_buf(), source }
}

impl LedgerFile {
    /// Reads and checks a whole ledger: CRCs, genesis first, consecutive heights, hash chain.
    /// `visit` sees every block in order (the verifier uses it; pass `|_| Ok(())` otherwise).
    pub fn scan(
        path: &Path,
        mut visit: impl FnMut(&Genesis, &CommittedBlock) -> Result<(), String>,
    ) -> Result<LedgerFile, LedgerError> {
        let corrupt = |offset: u64, what: String| LedgerError::Corrupt {
            path: path.to_path_buf(),
            offset,
            what,
        };
        let mut file = File::open(path).map_err(io_err(path))?;
        let file_len = file.metadata().map_err(io_err(path))?.len();
        let mut reader = std::io::BufReader::with_capacity(1 << 20, &mut file);
        let mut magic = [0u8; 8];
        reader.read_exact(&mut magic).map_err(|_| corrupt(0, "shorter than its magic".into()))?;
        if &magic != MAGIC {
            return Err(corrupt(0, "not a BFTcd ledger (bad magic)".into()));
        }
        let mut offset = MAGIC.len() as u64;
        let mut genesis: Option<Genesis> = None;
        let mut blocks = Vec::new();
        let mut tip_hash = [0u8; 32];
        let mut tip_timestamp_ms = 0;
        let mut payload = Vec::new();
        let mut progress = ScanProgress::new(path, file_len);
        loop {
            progress.at(blocks.len() as u64, offset);
            if offset == file_len {
                break;
            }
            if file_len - offset < RECORD_HEADER {
                break; // torn header
            }
            let mut header = [0u8; 8];
            reader.read_exact(&mut header).map_err(io_err(path))?;
            let len = u32::from_le_bytes(header[..4].try_into().unwrap());
            let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
            let end = offset + RECORD_HEADER + len as u64;
            if len > MAX_RECORD_BYTES {
                if end >= file_len {
                    break;
                }
                return Err(corrupt(offset, format!("record length {len} exceeds the limit")));
            }
            if end > file_len {
                break; // torn payload
            }
            payload.resize(len as usize, 0);
            reader.read_exact(&mut payload).map_err(io_err(path))?;
            if crc32c::crc32c(&payload) != crc {
                if end == file_len {
                    break; // the last record was cut short by a crash
                }
                return Err(corrupt(offset, "CRC mismatch".into()));
            }
            let record = LedgerRecord::decode(payload.as_slice())
                .map_err(|e| corrupt(offset, format!("undecodable record: {e}")))?;
            match (record.record, &genesis) {
                (Some(ledger_record::Record::Genesis(g)), None) => {
                    tip_hash = genesis_hash(&g);
                    tip_timestamp_ms = g.genesis_time_ms;
                    genesis = Some(g);
                }
                (Some(ledger_record::Record::Block(cb)), Some(g)) => {
                    let block = cb.block.as_ref().ok_or_else(|| corrupt(offset, "block record without a block".into()))?;
                    let want = blocks.len() as u64 + 1;
                    if block.height != want {
                        return Err(corrupt(offset, format!("height {} where {want} was expected", block.height)));
                    }
                    if block.parent_hash != tip_hash {
                        return Err(corrupt(offset, format!("block {want} does not chain to its parent")));
                    }
                    visit(g, &cb).map_err(|what| corrupt(offset, what))?;
                    tip_hash = block_hash(block);
                    tip_timestamp_ms = block.timestamp_ms;
                    blocks.push((offset, len));
                }
                (Some(ledger_record::Record::Genesis(_)), Some(_)) => {
                    return Err(corrupt(offset, "second genesis record".into()))
                }
                (_, None) => return Err(corrupt(offset, "first record is not the genesis".into())),
                (None, Some(_)) => return Err(corrupt(offset, "empty record".into())),
            }
            offset = end;
        }
        let genesis = genesis.ok_or_else(|| corrupt(offset, "no genesis record".into()))?;
        progress.done(blocks.len() as u64);
        Ok(LedgerFile {
            path: path.to_path_buf(),
            genesis,
            blocks,
            tip_hash,
            tip_timestamp_ms,
            valid_len: offset,
            file_len,
        })
    }
}

struct Tip {
    file: File,
    len: u64,
    blocks: Vec<(u64, u32)>,
    hash: [u8; 32],
    timestamp_ms: u64,
    /// The last blocks appended, newest last: the apply engine and peers catching up read
    /// these right after the append, so they come from memory, not from the file.
    recent: std::collections::VecDeque<Arc<CommittedBlock>>,
}

/// How many appended blocks the ledger keeps in memory.
const RECENT_BLOCKS: usize = 64;

/// The live ledger of one bank: appended to by the sequencer, read by the apply engine.
pub struct Ledger {
    path: PathBuf,
    genesis: Genesis,
    reader: File,
    tip: Mutex<Tip>,
    height: watch::Sender<u64>,
    /// Blocks known committed but not written yet, in height order: with several banks a commit
    /// is decided in memory, and the ledger's writer makes it durable a moment later. The apply
    /// engine may apply them meanwhile (a crash loses nothing: peers commit the same blocks
    /// again); a submitter is answered only once its block is written.
    staged: Mutex<std::collections::VecDeque<Arc<CommittedBlock>>>,
    /// The highest height staged or written.
    committed: watch::Sender<u64>,
}

fn encode_record(record: ledger_record::Record) -> Vec<u8> {
    let payload = LedgerRecord { record: Some(record) }.encode_to_vec();
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The record of one committed block, encoded from a reference (`LedgerRecord.block`, field 2,
/// written by hand so the block need not be copied into a `LedgerRecord` first).
fn encode_block_record(cb: &CommittedBlock) -> Vec<u8> {
    let len = cb.encoded_len();
    let mut payload = Vec::with_capacity(len + 16);
    prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut payload);
    prost::encoding::encode_varint(len as u64, &mut payload);
    cb.encode_raw(&mut payload);
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

impl Ledger {
    /// Opens the ledger at `path`, creating it with `genesis` when absent. An existing ledger
    /// must start with the same genesis. A torn last record is cut off (it was never committed).
    pub fn open(path: &Path, genesis: &Genesis) -> Result<Ledger, LedgerError> {
        if !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io_err(path))?;
            }
            let tmp = path.with_extension("creating");
            let mut f = File::create(&tmp).map_err(io_err(path))?;
            f.write_all(MAGIC).map_err(io_err(path))?;
            f.write_all(&encode_record(ledger_record::Record::Genesis(genesis.clone())))
                .map_err(io_err(path))?;
            f.sync_all().map_err(io_err(path))?;
            std::fs::rename(&tmp, path).map_err(io_err(path))?;
            sync_dir(path).map_err(io_err(path))?;
        }
        let scanned = LedgerFile::scan(path, |_, _| Ok(()))?;
        if scanned.genesis != *genesis {
            return Err(LedgerError::WrongGenesis {
                path: path.to_path_buf(),
                what: format!(
                    "ledger chain id {:?}, configured chain id {:?} (or a different validator set)",
                    scanned.genesis.chain_id, genesis.chain_id
                ),
            });
        }
        let mut scanned = scanned;
        if genesis.validators.len() > 1 {
            // A chain committed together is written together; if a crash left its last block
            // without the commit proof, that write never completed and nothing of it was applied.
            let reader = File::open(path).map_err(io_err(path))?;
            while let Some(&(offset, len)) = scanned.blocks.last() {
                let mut buf = vec![0u8; len as usize];
                reader.read_exact_at(&mut buf, offset + RECORD_HEADER).map_err(io_err(path))?;
                let proven = matches!(
                    LedgerRecord::decode(buf.as_slice()).ok().and_then(|r| r.record),
                    Some(ledger_record::Record::Block(cb)) if cb.commit_qc.is_some()
                );
                if proven {
                    break;
                }
                scanned.blocks.pop();
                scanned.valid_len = offset;
            }
            if let Some(&(offset, len)) = scanned.blocks.last() {
                let mut buf = vec![0u8; len as usize];
                reader.read_exact_at(&mut buf, offset + RECORD_HEADER).map_err(io_err(path))?;
                if let Ok(LedgerRecord { record: Some(ledger_record::Record::Block(cb)) }) = LedgerRecord::decode(buf.as_slice()) {
                    let b = cb.block.unwrap_or_default();
                    scanned.tip_hash = block_hash(&b);
                    scanned.tip_timestamp_ms = b.timestamp_ms;
                }
            } else {
                scanned.tip_hash = genesis_hash(&scanned.genesis);
                scanned.tip_timestamp_ms = scanned.genesis.genesis_time_ms;
            }
        }
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io_err(path))?;
        if scanned.valid_len < scanned.file_len {
            tracing::warn!(
                path = %path.display(),
                cut = scanned.file_len - scanned.valid_len,
                "ledger: removing a torn last record left by a crash"
            );
            file.set_len(scanned.valid_len).map_err(io_err(path))?;
            file.sync_all().map_err(io_err(path))?;
        }
        let reader = File::open(path).map_err(io_err(path))?;
        let (height, _) = watch::channel(scanned.blocks.len() as u64);
        let (committed, _) = watch::channel(scanned.blocks.len() as u64);
        Ok(Ledger {
            staged: Default::default(),
            committed,
            path: path.to_path_buf(),
            genesis: scanned.genesis,
            reader,
            tip: Mutex::new(Tip {
                file,
                len: scanned.valid_len,
                blocks: scanned.blocks,
                hash: scanned.tip_hash,
                timestamp_ms: scanned.tip_timestamp_ms,
                recent: Default::default(),
            }),
            height,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// Height of the last committed block (0: only the genesis).
    pub fn height(&self) -> u64 {
        *self.height.borrow()
    }

    /// Wakes whenever the committed height grows.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.height.subscribe()
    }

    /// Hash and timestamp of the last block (the genesis's when empty): what the next block extends.
    pub fn tip(&self) -> ([u8; 32], u64) {
        let t = self.tip.lock().unwrap();
        (t.hash, t.timestamp_ms)
    }

    /// Appends a block and fsyncs it. Blocking: call from a blocking context.
    pub fn append(&self, cb: &CommittedBlock) -> Result<(), LedgerError> {
        self.append_all(&[Arc::new(cb.clone())])
    }

    /// Appends consecutive blocks with one write and one fsync. A crash in the middle leaves a
    /// torn tail that `open` removes, so a chain committed together lands together. The blocks
    /// are shared with the memory copies [`Ledger::recent`] serves, not copied.
    pub fn append_all(&self, cbs: &[Arc<CommittedBlock>]) -> Result<(), LedgerError> {
        let mut t = self.tip.lock().unwrap();
        let tip = t.blocks.len() as u64;
        let mut hash = t.hash;
        let mut bytes = Vec::new();
        let mut entries = Vec::with_capacity(cbs.len());
        let mut last = (tip, t.timestamp_ms);
        for cb in cbs {
            let block: &Block = cb.block.as_ref().ok_or(LedgerError::NotNext { tip, got: 0, what: "no block".into() })?;
            if block.height != last.0 + 1 {
                return Err(LedgerError::NotNext { tip, got: block.height, what: "wrong height".into() });
            }
            if block.parent_hash != hash {
                return Err(LedgerError::NotNext { tip, got: block.height, what: "wrong parent hash".into() });
            }
            let record = encode_block_record(cb);
            entries.push((t.len + bytes.len() as u64, (record.len() - 8) as u32));
            bytes.extend_from_slice(&record);
            hash = block_hash(block);
            last = (block.height, block.timestamp_ms);
        }
        if cbs.is_empty() {
            return Ok(());
        }
        let path = &self.path;
        let offset = t.len;
        t.file.write_all_at(&bytes, offset).map_err(io_err(path))?;
        t.file.sync_data().map_err(io_err(path))?;
        t.len += bytes.len() as u64;
        t.blocks.extend(entries);
        t.hash = hash;
        t.timestamp_ms = last.1;
        for cb in cbs.iter().skip(cbs.len().saturating_sub(RECENT_BLOCKS)) {
            if t.recent.len() == RECENT_BLOCKS {
                t.recent.pop_front();
            }
            t.recent.push_back(cb.clone());
        }
        drop(t);
        self.staged.lock().unwrap().retain(|cb| cb.block.as_ref().is_some_and(|b| b.height > last.0));
        self.height.send_replace(last.0);
        self.committed.send_if_modified(|c| {
            let grew = *c < last.0;
            *c = (*c).max(last.0);
            grew
        });
        Ok(())
    }

    /// Makes a committed block readable (by [`Ledger::recent`] and [`Ledger::read`]) before it is
    /// written; [`Ledger::subscribe_committed`] wakes. Blocks are staged in height order, each
    /// then appended.
    pub fn stage(&self, cb: Arc<CommittedBlock>) {
        let Some(height) = cb.block.as_ref().map(|b| b.height) else { return };
        if height <= self.committed_height() {
            return;
        }
        self.staged.lock().unwrap().push_back(cb);
        self.committed.send_replace(height);
    }

    /// The highest committed height: written, or staged to be.
    pub fn committed_height(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Wakes whenever the committed height grows (before the blocks are written).
    pub fn subscribe_committed(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// The committed block at `height` if it is among the last appended or staged (kept in
    /// memory): no disk read, so callable from async code.
    pub fn recent(&self, height: u64) -> Option<CommittedBlock> {
        self.recent_shared(height).map(|cb| (*cb).clone())
    }

    /// [`Ledger::recent`] without a copy: the apply engine reads the block the consensus
    /// task committed, as it is.
    pub fn recent_shared(&self, height: u64) -> Option<Arc<CommittedBlock>> {
        let find = |blocks: &std::collections::VecDeque<Arc<CommittedBlock>>| {
            let first = blocks.front()?.block.as_ref()?.height;
            blocks.get(height.checked_sub(first)? as usize).cloned()
        };
        if let Some(cb) = find(&self.tip.lock().unwrap().recent) {
            return Some(cb);
        }
        find(&self.staged.lock().unwrap())
    }

    /// Reads the committed block at `height` (1-based).
    pub fn read(&self, height: u64) -> Result<CommittedBlock, LedgerError> {
        if let Some(cb) = self.recent(height) {
            return Ok(cb);
        }
        let (offset, len) = {
            let t = self.tip.lock().unwrap();
            if height == 0 || height > t.blocks.len() as u64 {
                return Err(LedgerError::Missing(height));
            }
            t.blocks[(height - 1) as usize]
        };
        let mut buf = vec![0u8; len as usize];
        self.reader.read_exact_at(&mut buf, offset + RECORD_HEADER).map_err(io_err(&self.path))?;
        let corrupt = |what: String| LedgerError::Corrupt { path: self.path.clone(), offset, what };
        match LedgerRecord::decode(buf.as_slice()).map_err(|e| corrupt(e.to_string()))?.record {
            Some(ledger_record::Record::Block(cb)) => Ok(cb),
            _ => Err(corrupt("not a block record".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftcd_proto::bftcd::{Operation, OperationId};

    #[test]
    fn progress_numbers_read_as_people_write_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(12345), "12,345");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1288490188), "1.2 GiB");
    }

    fn genesis() -> Genesis {
        Genesis { chain_id: "test".into(), epoch: 1, genesis_time_ms: 5, ..Default::default() }
    }

    fn next(ledger: &Ledger, ops: usize) -> CommittedBlock {
        let (hash, ts) = ledger.tip();
        let operations = (0..ops)
            .map(|i| Operation {
                id: Some(OperationId { bank: 0, nonce: i as u64 }),
                ..Default::default()
            })
            .collect();
        CommittedBlock {
            block: Some(Block {
                height: ledger.height() + 1,
                parent_hash: hash.to_vec(),
                timestamp_ms: ts + 1,
                operations,
                ..Default::default()
            }),
            commit_qc: None,
            commit_child: None,
        }
    }

    #[test]
    fn append_read_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.log");
        let l = Ledger::open(&path, &genesis()).unwrap();
        for i in 0..5 {
            l.append(&next(&l, i)).unwrap();
        }
        assert_eq!(l.height(), 5);
        assert_eq!(l.read(3).unwrap().block.unwrap().operations.len(), 2);
        assert!(matches!(l.read(6), Err(LedgerError::Missing(6))));
        drop(l);
        let l = Ledger::open(&path, &genesis()).unwrap();
        assert_eq!(l.height(), 5);
        l.append(&next(&l, 1)).unwrap();
        assert_eq!(l.read(6).unwrap().block.unwrap().height, 6);
    }

    #[test]
    fn recent_blocks_come_from_memory_and_agree_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.log");
        let l = Ledger::open(&path, &genesis()).unwrap();
        let n = RECENT_BLOCKS as u64 + 10;
        for i in 0..n {
            l.append(&next(&l, (i % 3) as usize)).unwrap();
        }
        assert!(l.recent(1).is_none(), "the oldest blocks left memory");
        assert!(l.recent(n).is_some() && l.recent(n + 1).is_none());
        let reopened = Ledger::open(&path, &genesis()).unwrap();
        for h in 1..=n {
            // The reopened ledger has nothing in memory: every read is from the file.
            assert_eq!(l.read(h).unwrap(), reopened.read(h).unwrap(), "height {h}");
        }
        // The hand-written record is byte for byte what prost writes for a LedgerRecord.
        let cb = l.read(n).unwrap();
        assert_eq!(encode_block_record(&cb), encode_record(ledger_record::Record::Block(cb.clone())));
    }

    #[test]
    fn a_staged_block_is_readable_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("l"), &genesis()).unwrap();
        l.append(&next(&l, 1)).unwrap();
        let staged = next(&l, 2);
        let mut committed = l.subscribe_committed();
        committed.mark_unchanged();
        l.stage(Arc::new(staged.clone()));
        assert!(committed.has_changed().unwrap());
        assert_eq!((l.height(), l.committed_height()), (1, 2));
        assert_eq!(l.read(2).unwrap(), staged, "readable from memory before the write");
        l.stage(Arc::new(staged.clone()));
        assert_eq!(l.staged.lock().unwrap().len(), 1, "staging twice keeps one copy");
        l.append(&staged).unwrap();
        assert_eq!((l.height(), l.committed_height()), (2, 2));
        assert!(l.staged.lock().unwrap().is_empty(), "written blocks leave the staging area");
        assert_eq!(l.read(2).unwrap(), staged);
    }

    #[test]
    fn refuses_a_block_that_does_not_extend_the_tip() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("l"), &genesis()).unwrap();
        let mut b = next(&l, 1);
        b.block.as_mut().unwrap().height = 2;
        assert!(matches!(l.append(&b), Err(LedgerError::NotNext { .. })));
        let mut b = next(&l, 1);
        b.block.as_mut().unwrap().parent_hash = vec![0; 32];
        assert!(matches!(l.append(&b), Err(LedgerError::NotNext { .. })));
    }

    #[test]
    fn torn_tail_is_cut_and_mid_file_damage_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.log");
        let l = Ledger::open(&path, &genesis()).unwrap();
        for i in 0..3 {
            l.append(&next(&l, i)).unwrap();
        }
        drop(l);
        let full = std::fs::read(&path).unwrap();
        // A crash in the middle of the last append.
        std::fs::write(&path, &full[..full.len() - 3]).unwrap();
        let l = Ledger::open(&path, &genesis()).unwrap();
        assert_eq!(l.height(), 2);
        l.append(&next(&l, 4)).unwrap();
        drop(l);
        // A flipped byte inside an earlier record is damage, not a torn tail.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(Ledger::open(&path, &genesis()), Err(LedgerError::Corrupt { .. })));
    }

    #[test]
    fn other_genesis_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.log");
        Ledger::open(&path, &genesis()).unwrap();
        let other = Genesis { chain_id: "other".into(), ..genesis() };
        assert!(matches!(Ledger::open(&path, &other), Err(LedgerError::WrongGenesis { .. })));
    }
}
