//! Ledger files as a bank covering its tracks would rewrite them.

use std::path::Path;

use bftcd_proto::bftcd::{ledger_record::Record, LedgerRecord, Operation};
use bftcd_proto::Message;

/// The ledger at `path` with the first operation that `rewrite` changes (it says so by
/// returning true) re-encoded, every record's length and CRC made valid again: only the
/// signatures and certificates can then tell.
pub fn forge_ledger(path: &Path, rewrite: impl Fn(&mut Operation) -> bool) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let (mut out, mut at, mut tampered) = (bytes[..8].to_vec(), 8, false);
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let mut payload = bytes[at + 8..at + 8 + len].to_vec();
        let mut rec = LedgerRecord::decode(payload.as_slice()).unwrap();
        if let (false, Some(Record::Block(cb))) = (tampered, rec.record.as_mut()) {
            if let Some(block) = cb.block.as_mut() {
                tampered = block.operations.iter_mut().any(&rewrite);
            }
            if tampered {
                payload = rec.encode_to_vec();
            }
        }
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        at += 8 + len;
    }
    assert!(tampered, "no operation in {} to rewrite", path.display());
    out
}

/// `bftcd-verify ledger PATH [--ops]`: whether the ledger verified, and what it printed
/// (stdout, stderr).
pub fn verify(path: &Path, ops: bool) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(crate::bftcd_bin().with_file_name("bftcd-verify"));
    cmd.arg("ledger").arg(path);
    if ops {
        cmd.arg("--ops");
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("bftcd-verify: {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}
