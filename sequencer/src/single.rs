//! The single-replica sequencer: n = 1, f = 0. One bank orders its own writes into blocks and
//! makes each block durable in the ledger before any operation in it counts as committed.
//!
//! Blocks form by group commit: while one block is being fsynced, new operations queue up and
//! become the next block, so a busy bank pays one fsync per block, not per operation.

use crate::cpu::{self, AccountedExt, Component};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bftcd_proto::bftcd::{Block, CommittedBlock, Operation};
use bftcd_proto::Message;
use tokio::sync::{mpsc, oneshot};

use crate::{Ledger, Position, Sequencer, SequencerError};

/// How large one block may grow.
#[derive(Debug, Clone, Copy)]
pub struct BlockLimits {
    pub max_operations: usize,
    pub max_bytes: usize,
}

impl Default for BlockLimits {
    fn default() -> Self {
        BlockLimits { max_operations: 1024, max_bytes: 8 << 20 }
    }
}

type Reply = oneshot::Sender<Result<Position, SequencerError>>;

pub struct SingleReplica {
    ledger: Arc<Ledger>,
    queue: mpsc::Sender<(Operation, Reply)>,
}

impl SingleReplica {
    /// Starts the block-forming task on the current tokio runtime.
    pub fn start(ledger: Arc<Ledger>, limits: BlockLimits) -> Self {
        let (queue, rx) = mpsc::channel(65_536);
        tokio::spawn(form_blocks(ledger.clone(), rx, limits).accounted(Component::Consensus));
        SingleReplica { ledger, queue }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

async fn form_blocks(
    ledger: Arc<Ledger>,
    mut rx: mpsc::Receiver<(Operation, Reply)>,
    limits: BlockLimits,
) {
    let epoch = ledger.genesis().epoch;
    while let Some(first) = rx.recv().await {
        let mut bytes = first.0.encoded_len();
        let mut batch = vec![first];
        while batch.len() < limits.max_operations && bytes < limits.max_bytes {
            match rx.try_recv() {
                Ok(item) => {
                    bytes += item.0.encoded_len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        let (parent_hash, parent_ms) = ledger.tip();
        let height = ledger.height() + 1;
        let (operations, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let block = Block {
            height,
            epoch,
            view: height,
            parent_hash: parent_hash.to_vec(),
            // Block time must move forward even if the local clock steps back.
            timestamp_ms: now_ms().max(parent_ms + 1),
            proposer: 0,
            operations,
            ..Default::default()
        };
        let cb = CommittedBlock { block: Some(block), commit_qc: None, commit_child: None };
        let l = ledger.clone();
        let result = tokio::task::spawn_blocking(move || cpu::run(Component::Persistence, || l.append(&cb))).await;
        match result {
            Ok(Ok(())) => {
                for (index, reply) in replies.into_iter().enumerate() {
                    let _ = reply.send(Ok(Position { height, index: index as u32 }));
                }
            }
            Ok(Err(e)) => {
                // The ledger's state is unknown after a failed fsync: stop ordering rather than
                // risk acknowledging something that is not durable.
                tracing::error!(error = %e, "sequencer: ledger append failed; ordering stops");
                for reply in replies {
                    let _ = reply.send(Err(SequencerError::Ledger(e.to_string())));
                }
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "sequencer: ledger task failed; ordering stops");
                return;
            }
        }
    }
}

impl Sequencer for SingleReplica {
    fn submit(
        &self,
        op: Operation,
    ) -> Pin<Box<dyn Future<Output = Result<Position, SequencerError>> + Send + '_>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.queue.send((op, tx)).await.map_err(|_| SequencerError::Stopped)?;
            rx.await.map_err(|_| SequencerError::Stopped)?
        })
    }

    fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Alone, this bank's ledger is the whole committed chain.
    fn read_index(&self) -> Pin<Box<dyn Future<Output = Result<u64, SequencerError>> + Send + '_>> {
        Box::pin(std::future::ready(Ok(self.ledger.height())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftcd_proto::bftcd::{Genesis, OperationId};

    #[tokio::test]
    async fn concurrent_submits_commit_in_one_order() {
        let dir = tempfile::tempdir().unwrap();
        let genesis = Genesis { chain_id: "t".into(), epoch: 1, ..Default::default() };
        let ledger = Arc::new(Ledger::open(&dir.path().join("l"), &genesis).unwrap());
        let seq = Arc::new(SingleReplica::start(ledger.clone(), BlockLimits::default()));
        let mut tasks = Vec::new();
        for nonce in 0..200u64 {
            let seq = seq.clone();
            tasks.push(tokio::spawn(async move {
                let op = Operation { id: Some(OperationId { bank: 0, nonce }), ..Default::default() };
                (nonce, seq.submit(op).await.unwrap())
            }));
        }
        let mut seen = std::collections::HashSet::new();
        for t in tasks {
            let (nonce, pos) = t.await.unwrap();
            let block = ledger.read(pos.height).unwrap().block.unwrap();
            let op = &block.operations[pos.index as usize];
            assert_eq!(op.id.as_ref().unwrap().nonce, nonce);
            assert!(seen.insert(pos));
        }
        let total: usize =
            (1..=ledger.height()).map(|h| ledger.read(h).unwrap().block.unwrap().operations.len()).sum();
        assert_eq!(total, 200);
    }
}
