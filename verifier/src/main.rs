//! `bftcd-verify`: audits a BFTcd ledger offline, from genesis, without trusting the bank that
//! produced it.
//!
//! Checked today: record framing and CRCs, the genesis record, consecutive heights, the parent
//! hash chain, strictly increasing block times, and that every operation names a bank of the
//! validator set and appears once. A single-bank chain (n = 1) has no quorum certificates; a
//! multi-bank ledger without them is rejected.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;

use bftcd_proto::bftcd::operation::Request;
use bftcd_sequencer::LedgerFile;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bftcd-verify", version, about = "Audit a BFTcd ledger offline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a ledger file from genesis and print a summary.
    Ledger {
        /// Path to the ledger (a bank's <data-dir>/ledger.log).
        path: PathBuf,
        /// Also list every operation: position, submitting bank, kind and key.
        #[arg(long)]
        ops: bool,
    },
}

fn kind_and_key(r: &Option<Request>) -> (&'static str, String) {
    let show = |k: &[u8]| String::from_utf8_lossy(k).escape_debug().to_string();
    match r {
        Some(Request::Put(p)) => ("put", show(&p.key)),
        Some(Request::DeleteRange(d)) => ("delete", show(&d.key)),
        Some(Request::Txn(_)) => ("txn", String::new()),
        Some(Request::Compact(c)) => ("compact", c.revision.to_string()),
        Some(Request::LeaseGrant(g)) => ("lease-grant", format!("{:x}", g.id)),
        Some(Request::LeaseRevoke(l)) => ("lease-revoke", format!("{:x}", l.id)),
        Some(Request::LeaseKeepAlive(k)) => ("lease-keepalive", format!("{:x}", k.id)),
        None => ("empty", String::new()),
    }
}

fn verify(path: PathBuf, list_ops: bool) -> Result<(), String> {
    let mut operations = 0u64;
    let mut seen = HashSet::new();
    let mut last_time = None::<u64>;
    let file = LedgerFile::scan(&path, |genesis, cb| {
        let block = cb.block.as_ref().ok_or("block record without a block")?;
        let n = genesis.validators.len();
        if n > 1 && cb.commit_qc.is_none() {
            return Err(format!("block {} has no commit certificate", block.height));
        }
        let parent_time = last_time.unwrap_or(genesis.genesis_time_ms);
        if block.timestamp_ms <= parent_time {
            return Err(format!(
                "block {} time {} is not after its parent's {parent_time}",
                block.height, block.timestamp_ms
            ));
        }
        last_time = Some(block.timestamp_ms);
        if block.proposer as usize >= n {
            return Err(format!("block {} proposer {} is not a validator", block.height, block.proposer));
        }
        for (i, op) in block.operations.iter().enumerate() {
            let id = op.id.as_ref().ok_or_else(|| format!("operation {}.{i} has no id", block.height))?;
            if id.bank as usize >= n {
                return Err(format!("operation {}.{i} names bank {} outside the validator set", block.height, id.bank));
            }
            if !seen.insert((id.bank, id.nonce)) {
                return Err(format!("operation {}.{i} repeats an earlier operation id", block.height));
            }
            if list_ops {
                let (kind, key) = kind_and_key(&op.request);
                let bank = &genesis.validators[id.bank as usize].name;
                println!("{}.{i}\t{bank}\t{kind}\t{key}", block.height);
            }
            operations += 1;
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    let g = &file.genesis;
    println!("ledger      {}", path.display());
    println!("chain id    {}", g.chain_id);
    println!("epoch       {}", g.epoch);
    let names: Vec<&str> = g.validators.iter().map(|v| v.name.as_str()).collect();
    println!("validators  {} ({})", g.validators.len(), names.join(", "));
    println!("blocks      {}", file.blocks.len());
    println!("operations  {operations}");
    println!("tip hash    {}", hex::encode(file.tip_hash));
    if file.valid_len < file.file_len {
        println!("torn tail   {} bytes after the last whole record (a crash during an append; never committed)", file.file_len - file.valid_len);
    }
    if g.validators.len() == 1 {
        println!("certificates none (single-bank chain: n = 1, f = 0)");
    }
    println!("OK");
    Ok(())
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Ledger { path, ops } => match verify(path, ops) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bftcd-verify: INVALID: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
