//! Work that runs beside the consensus task, so that the task itself only decides.
//!
//! The consensus task is a serial chain: every microsecond it spends on one message delays every
//! message behind it. Two stages take the work that does not need its state:
//!
//! - [`check_incoming`] decodes peer messages and checks the Ed25519 signatures of the operations
//!   they carry (forwarded batches and proposed blocks) in one batch across messages and banks,
//!   leaving the results in [`ChainCrypto`]'s cache. When the core then checks the same
//!   signatures, it finds them there. Order is kept: messages reach the core as they arrived.
//! - [`sign_submissions`] stamps and signs this bank's client writes (one signature per batch) and
//!   hands the signed batch to the core.
//!
//! Both are charged to [`crate::cpu::Component::Consensus`] (their signing and checking to
//! `Crypto`). Each stage is one task on the runtime's worker threads, so on a machine with spare cores they
//! run in parallel with the consensus task and with each other.

use std::sync::Arc;

use bftcd_proto::bftcd::peer_message::Kind;
use bftcd_proto::bftcd::{Operation, PeerMessage};
use bftcd_proto::Message;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::consensus::mempool::op_id;
use crate::consensus::{Crypto, Domain};
use crate::keys::ChainCrypto;
use crate::{Position, SequencerError};

/// Bound on any message from a peer, before it is even decoded.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Most messages decoded and checked together.
const CHECK_BATCH: usize = 256;

/// A peer message as the consensus task receives it.
// Nearly every value is a Message; boxing it would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum Checked {
    Message { from: usize, msg: PeerMessage },
    /// Too large or not a `PeerMessage`: counted and logged, never seen by the core.
    Refused { from: usize },
}

/// Decodes peer messages and pre-checks the operation signatures they carry; see the module
/// documentation. Ends when either channel closes.
pub async fn check_incoming(
    mut raw: mpsc::Receiver<(u32, Bytes)>,
    crypto: Arc<ChainCrypto>,
    domain: Domain,
    out: mpsc::Sender<Checked>,
) {
    let mut batch = Vec::with_capacity(CHECK_BATCH);
    loop {
        if raw.recv_many(&mut batch, CHECK_BATCH).await == 0 {
            return;
        }
        let decoded: Vec<Checked> = batch.drain(..).map(|(from, bytes)| decode(from as usize, bytes)).collect();
        let signed = operation_signatures(&decoded, &domain);
        if !signed.is_empty() {
            crypto.precheck_operations(&signed);
        }
        for checked in decoded {
            if out.send(checked).await.is_err() {
                return;
            }
        }
    }
}

fn decode(from: usize, bytes: Bytes) -> Checked {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Checked::Refused { from };
    }
    match PeerMessage::decode(bytes) {
        Ok(msg) => Checked::Message { from, msg },
        Err(e) => {
            tracing::warn!(peer = from, error = %e, "consensus: undecodable message dropped");
            Checked::Refused { from }
        }
    }
}

/// Each distinct (bank, signed bytes, signature) among the operations of forwarded batches and
/// proposed blocks. Operations that name no valid bank are left to the core to refuse.
fn operation_signatures(messages: &[Checked], domain: &Domain) -> Vec<(usize, Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(usize, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for m in messages {
        let Checked::Message { msg, .. } = m else { continue };
        let ops: &[Operation] = match &msg.kind {
            Some(Kind::Submit(s)) => &s.operations,
            Some(Kind::Proposal(p)) => p.block.as_ref().map_or(&[], |b| &b.operations),
            _ => continue,
        };
        for op in ops {
            let Some(bank) = op_id(op).map(|id| id.0 as usize).filter(|b| *b < domain.n) else { continue };
            // Operations of one batch share their signature: recompute the root only once.
            if !seen.insert((bank, op.bank_signature.as_slice())) {
                continue;
            }
            let bytes = domain.operation_bytes(op);
            if !bytes.is_empty() {
                out.push((bank, bytes, op.bank_signature.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A client write on its way to ordering, and where its outcome goes.
pub type Submission = (Operation, oneshot::Sender<Result<Position, SequencerError>>);

/// Most operations signed as one batch.
const SIGN_BATCH: usize = 4096;

/// Stamps this bank's writes with its clock and signs them, everything waiting at once as one
/// batch (one Ed25519 signature over a Merkle root), then hands them to the consensus task.
pub async fn sign_submissions(
    mut submissions: mpsc::Receiver<Submission>,
    crypto: Arc<ChainCrypto>,
    domain: Domain,
    out: mpsc::Sender<Vec<Submission>>,
) {
    let mut batch = Vec::with_capacity(64);
    loop {
        if submissions.recv_many(&mut batch, SIGN_BATCH).await == 0 {
            return;
        }
        let (mut ops, replies): (Vec<Operation>, Vec<_>) = batch.drain(..).unzip();
        let now = crate::hotstuff::now_ms();
        for op in &mut ops {
            op.submitted_ms = now;
        }
        domain.sign_batch(&mut ops, |bytes| crypto.sign_operation(bytes));
        if out.send(ops.into_iter().zip(replies).collect()).await.is_err() {
            return;
        }
    }
}
