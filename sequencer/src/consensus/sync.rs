//! The committed part of a sync answer, shared by the consensus core (a peer near the tip: it
//! adds the blocks not yet committed) and the sync server beside it ([`crate::stages::serve_sync`],
//! a peer far behind: the answer comes from the ledger without holding up the core).

use bftcd_proto::bftcd::CommittedBlock;
use bftcd_proto::Message;

/// Committed blocks `from..=to` read with `read`, at most `max_blocks` of them and, past the
/// first commit proof, at most `max_bytes`; cut back to end on a block carrying its commit proof
/// (an answer without one proves nothing). Also returns its size in bytes.
pub fn committed_answer(
    from: u64,
    to: u64,
    max_blocks: usize,
    max_bytes: usize,
    mut read: impl FnMut(u64) -> Option<CommittedBlock>,
) -> (Vec<CommittedBlock>, usize) {
    let mut committed: Vec<CommittedBlock> = Vec::new();
    let mut bytes = 0;
    let end = to.min(from.saturating_add(max_blocks as u64).saturating_sub(1));
    for h in from..=end {
        let Some(cb) = read(h) else { break };
        let size = cb.encoded_len();
        let proven = committed.iter().any(|c| c.commit_qc.is_some());
        if proven && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        committed.push(cb);
    }
    while committed.last().is_some_and(|cb| cb.commit_qc.is_none()) {
        bytes -= committed.pop().map_or(0, |cb| cb.encoded_len());
    }
    (committed, bytes)
}
