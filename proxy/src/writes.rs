//! The narrow path every client write takes: `submit(op) -> committed result`.
//!
//! The op gets an id unique across banks and restarts, is handed to the sequencer, and its
//! result comes back from the apply engine once the local etcd has applied it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bftcd_proto::bftcd::{operation::Request as Op, ClientIdentity, Operation, OperationId};
use bftcd_sequencer::validity::{self, Limits};
use bftcd_sequencer::{Sequencer, SequencerError};
use tonic::Status;

use crate::apply::{Applier, OpResponse};
use crate::errors;

pub struct Writes {
    sequencer: Arc<dyn Sequencer>,
    applier: Arc<Applier>,
    bank: u32,
    incarnation: u64,
    counter: AtomicU64,
    limits: Limits,
    timeout: std::time::Duration,
    /// Refuse writes to other banks' keys before ordering them (off only in the Byzantine test
    /// build); every bank refuses them at apply anyway.
    pub check_owners: bool,
}

/// Forgets the waiter if the op never reached the sequencer (client gone, sequencer stopped).
struct Pending<'a> {
    applier: &'a Applier,
    id: OperationId,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.applier.forget(&self.id);
        }
    }
}

impl Writes {
    pub fn new(
        sequencer: Arc<dyn Sequencer>,
        applier: Arc<Applier>,
        bank: u32,
        data_dir: &Path,
        limits: Limits,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Self> {
        Ok(Writes {
            sequencer,
            applier,
            bank,
            incarnation: next_incarnation(data_dir)?,
            counter: AtomicU64::new(0),
            limits,
            timeout,
            check_owners: true,
        })
    }

    /// Orders `request` on behalf of `client` (as the front authenticated it; None for a client
    /// it did not, and for the bank's own requests).
    pub async fn submit(&self, request: Op, client: Option<ClientIdentity>) -> Result<OpResponse, Status> {
        // The chain's rules, exactly as every bank's consensus core checks them: what passes
        // here is never refused by another bank, and what no block could hold never queues.
        validity::check_request(&request, &self.limits).map_err(crate::validate::status)?;
        if let Some(c) = &client {
            validity::check_client(c).map_err(crate::validate::status)?;
        }
        // The incarnation in the high bits keeps ids unique across restarts of this bank.
        let nonce = (self.incarnation << 40) | self.counter.fetch_add(1, Ordering::Relaxed);
        let id = OperationId { bank: self.bank, nonce };
        let outcome = self.applier.register(&id);
        let mut pending = Pending { applier: &self.applier, id, armed: true };
        // The sequencer stamps and signs it as the submitting bank.
        let op = Operation { id: Some(id), request: Some(request), client, ..Default::default() };
        // Every bank refuses it at apply; refusing it here spares ordering it.
        let rules = self.applier.rules();
        if let Some(why) = rules.refuses(&op) {
            if self.check_owners || !matches!(why, bftcd_sequencer::governance::Refusal::KeyOwner(_)) {
                return Err(errors::refusal(why));
            }
        }
        if self.check_owners && rules.owners().foreign_lease(&op, |id| self.applier.lease(id).map(|l| l.grantor)).is_some() {
            return Err(errors::permission_denied());
        }
        let ordered = async {
            match self.sequencer.submit(op).await {
                Ok(_) => pending.armed = false,
                Err(SequencerError::Stopped) => return Err(errors::no_leader()),
                Err(SequencerError::Busy) => return Err(errors::too_many_requests()),
                Err(SequencerError::Invalid(e)) => return Err(crate::validate::status(e)),
                Err(e) => return Err(Status::unavailable(format!("bftcd: {e}"))),
            }
            outcome.await.map_err(|_| errors::timeout())?
        };
        // Past the deadline the outcome is unknown (it may still commit), exactly as with etcd.
        let started = bftcd_sequencer::now_us();
        let result = tokio::time::timeout(self.timeout, ordered).await.map_err(|_| errors::timeout())?;
        let t_us = bftcd_sequencer::now_us();
        tracing::debug!(target: bftcd_sequencer::TRACE, t_us, step = "client-write", nonce = id.nonce,
            total_us = t_us.saturating_sub(started));
        result
    }
}

/// Reads, increments and durably stores this bank's restart counter.
fn next_incarnation(data_dir: &Path) -> anyhow::Result<u64> {
    let path = data_dir.join("incarnation");
    let last = match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u64>().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e.into()),
    };
    let next = last + 1;
    anyhow::ensure!(next < (1 << 23), "{}: restart counter exhausted", path.display());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{next}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(next)
}
