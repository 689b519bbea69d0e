//! Blocks a validator voted for but that are not committed yet, kept on disk so that a
//! certified block survives crashes (see `Output::PersistBlock`). Same framing as the ledger
//! (length, CRC-32C, protobuf `Block`) under its own magic; rewritten without committed blocks
//! at start and whenever it grows large.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bftcd_proto::bftcd::Block;
use bftcd_proto::Message;

const MAGIC: &[u8; 8] = b"BFTCDBS1";
const COMPACT_AT: u64 = 64 << 20;

pub struct BlockStore {
    path: PathBuf,
    file: File,
    len: u64,
}

fn frame(b: &Block) -> Vec<u8> {
    let payload = b.encode_to_vec();
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

impl BlockStore {
    /// Opens the store, returning the blocks above `committed_height`. A damaged tail (crash
    /// during an append) ends the read; those blocks were never voted for.
    pub fn open(path: &Path, committed_height: u64) -> std::io::Result<(BlockStore, Vec<Block>)> {
        let mut blocks = Vec::new();
        if let Ok(mut f) = File::open(path) {
            let mut all = Vec::new();
            f.read_to_end(&mut all)?;
            if all.len() >= 8 && &all[..8] == MAGIC {
                let mut at = 8;
                while at + 8 <= all.len() {
                    let len = u32::from_le_bytes(all[at..at + 4].try_into().unwrap()) as usize;
                    let crc = u32::from_le_bytes(all[at + 4..at + 8].try_into().unwrap());
                    let Some(payload) = all.get(at + 8..at + 8 + len) else { break };
                    if crc32c::crc32c(payload) != crc {
                        break;
                    }
                    match Block::decode(payload) {
                        Ok(b) if b.height > committed_height => blocks.push(b),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                    at += 8 + len;
                }
            }
        }
        let store = Self::rewrite(path, &blocks)?;
        Ok((store, blocks))
    }

    fn rewrite(path: &Path, blocks: &[Block]) -> std::io::Result<BlockStore> {
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        let mut len = MAGIC.len() as u64;
        f.write_all(MAGIC)?;
        for b in blocks {
            let bytes = frame(b);
            len += bytes.len() as u64;
            f.write_all(&bytes)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(BlockStore { path: path.to_path_buf(), file, len })
    }

    /// Durably adds blocks (one fsync for all); compacts when the file has grown large.
    pub fn append(&mut self, blocks: &[Block], committed_height: u64) -> std::io::Result<()> {
        if self.len > COMPACT_AT {
            let (store, _) = Self::open(&self.path, committed_height)?;
            *self = store;
        }
        let bytes: Vec<u8> = blocks.iter().flat_map(frame).collect();
        self.file.write_all(&bytes)?;
        self.file.sync_data()?;
        self.len += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_uncommitted_blocks_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blocks");
        let (mut s, none) = BlockStore::open(&p, 0).unwrap();
        assert!(none.is_empty());
        for h in 1..=5 {
            s.append(&[Block { height: h, ..Default::default() }], 0).unwrap();
        }
        drop(s);
        let (_, blocks) = BlockStore::open(&p, 3).unwrap();
        assert_eq!(blocks.iter().map(|b| b.height).collect::<Vec<_>>(), vec![4, 5]);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 2);
        std::fs::write(&p, bytes).unwrap();
        let (_, blocks) = BlockStore::open(&p, 0).unwrap();
        assert_eq!(blocks.len(), 1, "torn last record dropped");
    }
}
