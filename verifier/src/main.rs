//! `bftcd-verify`: audits BFTcd ledgers offline, from genesis, without trusting the banks that
//! produced them.
//!
//! Checked for every ledger: record framing and CRCs, the genesis record (every BLS key with its
//! proof of possession), consecutive heights, the parent hash chain, strictly increasing block
//! times, and that every operation names a bank of the validator set and appears once. For a
//! multi-bank chain also: every block's justify QC is a valid BLS quorum certificate for its
//! parent; every commit proof (the QC of a direct child in the next view, with that child's
//! header) verifies; every block is covered by a proof at or after it; every operation carries
//! a valid Ed25519 signature (ZIP 215 rules, as the banks check) of the bank that submitted it:
//! the bank's signature over the Merkle root of the batch it forwarded the operation in, which
//! the operation's path leads to.
//! A single-bank chain (n = 1) has no certificates.
//!
//! Each command is one function taking an [`Out`]: text lines as it goes, and the same facts as
//! fields of the one JSON object `--json` prints.

mod answers;
mod checkpoints;
mod evidence;
mod genesis;
mod ledger;
mod ledgers;
mod replay;

use std::fmt::Display;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};

use ledger::Trusted;

#[derive(Parser)]
#[command(name = "bftcd-verify", version, about = "Audit BFTcd ledgers offline")]
struct Cli {
    /// Print one JSON object on stdout with the same facts as the text output; failures too, as
    /// {"ok": false, "error": "..."}, with the same exit code.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// The genesis to trust, obtained apart from the ledgers (from the consortium, not from a bank).
/// Without either, each ledger's own genesis is trusted.
#[derive(clap::Args)]
struct TrustArgs {
    /// A `bftcd genesis` file: the ledgers must start from exactly this one.
    #[arg(long, value_name = "FILE", conflicts_with = "genesis_hash")]
    genesis: Option<PathBuf>,
    /// The genesis hash (64 hex digits, as `bftcd-verify genesis` prints it): the ledgers must
    /// start from the genesis with this hash.
    #[arg(long, value_name = "HEX")]
    genesis_hash: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a ledger file from genesis and print a summary.
    Ledger {
        /// Path to the ledger (a bank's <data-dir>/ledger.log).
        path: PathBuf,
        /// Also list every operation: position, submitting bank, the client the bank vouched for
        /// (`cn=`, `user=`, or `-`), kind and key.
        #[arg(long)]
        ops: bool,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Verify several banks' ledgers, then compare them: each one's tip, the common prefix, which
    /// are shorter (a bank may lag: not an error), and the first height where two hold different
    /// blocks (exit 1).
    #[command(visible_alias = "compare")]
    Ledgers {
        /// The ledgers (each bank's <data-dir>/ledger.log), two or more.
        #[arg(required = true, num_args = 2..)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Check banks' state digest certificates (each a <data-dir>/checkpoints file) against the
    /// genesis keys, and that no two certify different states for one block.
    Checkpoints {
        /// One or more checkpoints files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The `bftcd genesis` file whose banks' keys sign the certificates.
        #[arg(long, value_name = "FILE")]
        genesis: PathBuf,
    },
    /// Replay a ledger into a scratch stock etcd with the banks' apply engine (`bftcd replay`),
    /// recompute the state digests and compare them with the certified ones (exit 1 at the
    /// first difference). The ledger and every certificate are verified against the genesis
    /// first.
    Replay {
        /// The ledger (a bank's <data-dir>/ledger.log).
        path: PathBuf,
        /// The `bftcd genesis` file: the ledger must start from it, and its banks' keys sign the
        /// certificates.
        #[arg(long, value_name = "FILE")]
        genesis: PathBuf,
        /// The state digest certificates to compare with (default: the `checkpoints` file beside
        /// the ledger, as in a bank's data directory).
        #[arg(long, value_name = "FILE")]
        checkpoints: Option<PathBuf>,
        /// Replay only blocks 1..=H.
        #[arg(long, value_name = "H")]
        to_height: Option<u64>,
        /// Stock etcd binary for the scratch etcd (default: $BFTCD_ETCD_BIN, the project's
        /// tools/bin, PATH).
        #[arg(long, value_name = "PATH")]
        etcd_bin: Option<PathBuf>,
        /// The `bftcd` binary that replays (default: beside bftcd-verify, then PATH).
        #[arg(long, value_name = "PATH")]
        bftcd_bin: Option<PathBuf>,
        /// The etcd snapshot the chain starts from, for a genesis made from one
        /// (docs/migration.md).
        #[arg(long, value_name = "FILE")]
        initial_snapshot: Option<PathBuf>,
    },
    /// Read a key (or a prefix) at every bank at one revision, check every bank's signature on
    /// its answer against the genesis keys, and compare: prints the value and which banks vouch
    /// for it; exits 1 and writes an evidence file when a bank contradicts the f + 1 that agree.
    Get {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Every bank's client endpoint (host:port or http://host:port), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        /// The `bftcd genesis` file whose banks' keys sign the answers.
        #[arg(long, value_name = "FILE")]
        genesis: PathBuf,
        /// Where to write the evidence when a bank contradicts the others (default:
        /// bftcd-evidence-<ms>.pb in the current directory).
        #[arg(long, value_name = "FILE")]
        evidence: Option<PathBuf>,
    },
    /// Check saved signed answers (an evidence file of `get`, or kept Watch and LeaseKeepAlive
    /// streams) against the genesis keys, and say which bank they prove contradicted the
    /// others; a kept stream's messages must chain in order.
    Response {
        path: PathBuf,
        #[arg(long, value_name = "FILE")]
        genesis: PathBuf,
    },
    /// Check evidence files (from a bank's <data-dir>/evidence/) against the genesis keys: each
    /// valid one proves that the bank it names signed two conflicting messages for one view.
    /// Exits 1 if any is not valid.
    Evidence {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The `bftcd genesis` file whose banks' keys made the signatures.
        #[arg(long, value_name = "FILE")]
        genesis: PathBuf,
    },
    /// Watch a key (or a prefix) at one bank, check every message's signature and chaining as it
    /// arrives, print the events, and keep the stream in a file `response` checks offline.
    Watch {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Watch from this revision (default: from now).
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// The bank's client endpoint (host:port or http://host:port).
        #[arg(long)]
        endpoint: String,
        /// The `bftcd genesis` file whose banks' keys sign the messages.
        #[arg(long, value_name = "FILE")]
        genesis: PathBuf,
        /// Where to keep the stream (an `AnswerEvidence` with one stream).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Stop after this many messages (the watch's creation counts as one).
        #[arg(long, default_value_t = 10)]
        messages: usize,
        /// Stop after this many seconds in any case.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Check a genesis file's keys and print its hash, chain id, epoch and validators.
    Genesis {
        /// A `bftcd genesis` file.
        path: PathBuf,
        /// Also check that every bank signed this genesis: a `bftcd genesis seal` file, or a
        /// directory of the banks' `bftcd genesis sign` files.
        #[arg(long)]
        signatures: Option<PathBuf>,
    },
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Ledger { .. } => "ledger",
            Command::Ledgers { .. } => "ledgers",
            Command::Genesis { .. } => "genesis",
            Command::Checkpoints { .. } => "checkpoints",
            Command::Replay { .. } => "replay",
            Command::Get { .. } => "get",
            Command::Response { .. } => "response",
            Command::Evidence { .. } => "evidence",
            Command::Watch { .. } => "watch",
        }
    }
}

/// Where a command's findings go: text lines as they come (unless `--json`), and fields of the
/// JSON object, which is printed at the end, on failure too (with what was found until then).
pub struct Out {
    json: bool,
    fields: Map<String, Value>,
}

impl Out {
    pub fn line(&self, text: impl Display) {
        if !self.json {
            println!("{text}");
        }
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.to_string(), value.into());
    }
}

impl TrustArgs {
    fn resolve(&self) -> Result<Option<Trusted>, String> {
        if let Some(p) = &self.genesis {
            let g = genesis::read(p)?;
            return Ok(Some(Trusted { hash: bftcd_sequencer::genesis_hash(&g), from: format!("--genesis {}", p.display()) }));
        }
        let Some(text) = &self.genesis_hash else { return Ok(None) };
        let hash = parse_hash(text)?;
        Ok(Some(Trusted { hash, from: "--genesis-hash".into() }))
    }
}

fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    let bad = || format!("--genesis-hash {text:?}: expected 64 hex digits (the hash `bftcd-verify genesis FILE` prints)");
    let bytes = hex::decode(text.trim()).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

/// Prints a usage error as JSON when `--json` was asked for (clap's own output otherwise).
fn parse_args() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) => {
            use clap::error::ErrorKind;
            let wants_json = std::env::args().skip(1).any(|a| a == "--json");
            if !wants_json || matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            let msg = e.render().to_string();
            let first = msg.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
            println!("{}", serde_json::json!({"ok": false, "error": first}));
            Err(ExitCode::from(e.exit_code() as u8))
        }
    }
}

fn main() -> ExitCode {
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let mut out = Out { json: cli.json, fields: Map::new() };
    let command = cli.command.name();
    let result = match cli.command {
        Command::Ledger { path, ops, trust } => ledger::command(&mut out, path, ops, trust),
        Command::Ledgers { paths, trust } => ledgers::command(&mut out, paths, trust),
        Command::Genesis { path, signatures } => genesis::command(&mut out, path, signatures),
        Command::Checkpoints { paths, genesis } => checkpoints::command(&mut out, paths, genesis),
        Command::Replay { path, genesis, checkpoints, to_height, etcd_bin, bftcd_bin, initial_snapshot } => {
            replay::command(&mut out, replay::Args { path, genesis, checkpoints, to_height, etcd_bin, bftcd_bin, initial_snapshot })
        }
        Command::Get { key, prefix, endpoints, genesis, evidence } => answers::get(&mut out, key, prefix, endpoints, genesis, evidence),
        Command::Response { path, genesis } => answers::response(&mut out, path, genesis),
        Command::Evidence { paths, genesis } => evidence::command(&mut out, paths, genesis),
        Command::Watch { key, prefix, rev, endpoint, genesis, out: file, messages, seconds } => {
            answers::watch(&mut out, answers::WatchArgs { key, prefix, rev, endpoint, genesis, file, messages, seconds })
        }
    };
    if cli.json {
        let mut object = Map::new();
        object.insert("ok".into(), result.is_ok().into());
        object.insert("command".into(), command.into());
        if let Err(e) = &result {
            object.insert("error".into(), e.clone().into());
        }
        object.extend(out.fields);
        println!("{}", Value::Object(object));
    } else {
        match &result {
            Ok(()) => println!("OK"),
            Err(e) => eprintln!("bftcd-verify: INVALID: {e}"),
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_hash;

    #[test]
    fn a_genesis_hash_is_64_hex_digits() {
        let h = "ab".repeat(32);
        assert_eq!(parse_hash(&h), Ok([0xab; 32]));
        assert_eq!(parse_hash(&h.to_uppercase()), Ok([0xab; 32]));
        assert!(parse_hash(&h[2..]).is_err(), "31 bytes");
        assert!(parse_hash(&format!("{h}00")).is_err(), "33 bytes");
        assert!(parse_hash(&"zz".repeat(32)).is_err());
    }
}
