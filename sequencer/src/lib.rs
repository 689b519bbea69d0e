//! Orders BFTcd's writes.
//!
//! The proxy hands every validated client write to a [`Sequencer`] and applies what comes out of
//! the [`Ledger`] in height order. Today the sequencer is [`SingleReplica`] (one bank, n = 1,
//! f = 0: ordered and ledgered writes, no peers); HotStuff-2 among n = 3f+1 banks replaces it
//! behind the same interface.

mod backlog;
pub mod answer;
pub mod auth;
pub mod block;
#[cfg(feature = "byzantine")]
pub mod byzantine;
pub mod consensus;
pub mod consensus_log;
pub mod cpu;
pub mod fuzzing;
pub mod governance;
pub mod hotstuff;
pub mod crypto;
pub mod evidence;
pub mod keys;
pub mod ledger;
pub mod merkle;
pub mod reserved;
pub mod net;
pub mod ownership;
pub mod sim;
pub mod single;
pub mod stages;
pub mod state_digest;
pub mod checkpoint;
pub mod ceremony;
pub mod validity;

/// Tracing target of the per-step timing events (`BFTCD_LOG=info,bftcd::trace=debug`): one
/// event per consensus step, ledger write, applied block and client write, each with its wall
/// clock time in microseconds (`t_us`). The benchmark's `--trace-writes` mode reads them to show
/// where one write's time goes, hop by hop.
pub const TRACE: &str = "bftcd::trace";

/// Wall clock in microseconds since the Unix epoch, for [`TRACE`] events.
pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

use std::future::Future;
use std::pin::Pin;

use bftcd_proto::bftcd::Operation;


pub use block::{block_hash, genesis_hash, header, operations_digest, Position};
pub use ledger::{Ledger, LedgerError, LedgerFile};
pub use single::SingleReplica;

/// Why a submitted operation did not commit.
#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    /// The sequencer stopped (shutdown, or a fatal ledger error was logged).
    #[error("sequencer stopped")]
    Stopped,
    /// The operation could not be made durable.
    #[error("ledger write failed: {0}")]
    Ledger(String),
    /// The operation breaks the chain's rules (the front should have refused it already).
    #[error("invalid operation: {}", .0.reason())]
    Invalid(validity::Invalid),
    /// This bank's share of the mempool is full: etcd's "too many requests".
    #[error("too many operations waiting to be ordered")]
    Busy,
}

/// The one interface between the etcd front and ordering.
pub trait Sequencer: Send + Sync + 'static {
    /// Hands `op` to ordering; resolves once it sits in a committed, durable block.
    fn submit(
        &self,
        op: Operation,
    ) -> Pin<Box<dyn Future<Output = Result<Position, SequencerError>> + Send + '_>>;

    /// The ledger committed blocks are appended to, in height order.
    fn ledger(&self) -> &std::sync::Arc<Ledger>;

    /// A read index: a height such that every write acknowledged anywhere before this call is
    /// in a block at or below it (see [`consensus::read_index`]). A linearizable read waits
    /// until its bank has applied every block up to it. Resolves only once a quorum answered.
    fn read_index(&self) -> Pin<Box<dyn Future<Output = Result<u64, SequencerError>> + Send + '_>>;
}
