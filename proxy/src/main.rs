//! `bftcd`: the BFTcd sidecar and its operator commands.

mod admin;
mod apply;
mod chain;
mod clientcerts;
mod codec;
mod config;
mod corrupt;
mod devcluster;
mod errors;
mod etcd;
mod expiry;
mod front;
mod govern;
mod health;
mod identity;
mod logging;
mod metrics;
mod migrate;
mod probe;
mod reheader;
mod replay;
mod reserved;
mod rewrite;
mod serve;
mod tools;
mod validate;
mod writes;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bftcd", version, about = "Byzantine-fault-tolerant sidecar for stock etcd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// YAML file of flag values, keys the long flag names (`data-dir: /var/lib/bftcd`); the
    /// command line and BFTCD_* variables override it (docs/operations.md, "Configuration").
    #[arg(long, global = true, value_name = "FILE")]
    config_file: Option<PathBuf>,
    #[command(flatten)]
    log: logging::LogArgs,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the etcd v3 API for one bank, in front of that bank's stock etcd.
    Serve(serve::ServeArgs),
    /// Start a local cluster on loopback: N stock etcds and N sidecars, until SIGINT/SIGTERM.
    DevCluster(devcluster::DevClusterArgs),
    /// Create one bank's keys: BLS (votes), Ed25519 (operations), a self-signed TLS certificate.
    Keygen(chain::KeygenArgs),
    /// Build a chain's genesis from the banks' validator descriptors (checks every key), or
    /// show, sign or seal one (the genesis ceremony).
    Genesis(chain::GenesisCmd),
    /// Make a development CA and certificates for the client port's TLS (client certificates
    /// with CN = name, server certificates for 127.0.0.1 and localhost).
    ClientCerts(clientcerts::ClientCertsArgs),
    /// Show the chain's rules (key owners) and approve changes for this bank, through its
    /// running sidecar; a change takes effect once every bank approves it.
    Govern(govern::GovernArgs),
    /// Apply a ledger to an empty stock etcd (a scratch one by default) with the apply engine,
    /// printing the state digest after every block with operations as JSON lines (what
    /// `bftcd-verify replay` compares with the certified digests).
    Replay(replay::ReplayArgs),
    /// Prepare one bank's etcd data directory from the etcd snapshot a genesis starts from
    /// (`etcdutl snapshot restore`, after checking the file against the genesis).
    Restore(migrate::RestoreArgs),
}

fn main() -> std::process::ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let json = logging::json_requested(&argv);
    let parsed = match config::parse_from::<Cli>(argv) {
        Ok(p) => p,
        Err(config::ParseError::Clap(e)) => e.exit(),
        Err(config::ParseError::Config(message)) => {
            if json {
                logging::init(&logging::LogArgs { log_level: None, log_format: logging::LogFormat::Json }, "info");
            }
            logging::fatal(&message);
            return std::process::ExitCode::from(2);
        }
    };
    let cli = parsed.value;
    // A replay's stderr is its progress: the apply engine's start-up notes would drown it.
    let default_log = if matches!(cli.command, Command::Replay(_)) {
        "warn,bftcd::replay=info,bftcd_sequencer::ledger=info"
    } else {
        "info"
    };
    logging::init(&cli.log, default_log);
    if let Some(file) = &parsed.config_file {
        tracing::info!(file = %file.display(), "config file read");
    }
    for note in &parsed.notes {
        tracing::info!("{note}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::DevCluster(args) => devcluster::run(args).await,
            Command::Keygen(args) => chain::keygen(args),
            Command::Genesis(args) => chain::genesis(args).await,
            Command::ClientCerts(args) => clientcerts::run(args),
            Command::Govern(args) => govern::run(args).await,
            Command::Replay(args) => replay::run(args).await,
            Command::Restore(args) => migrate::restore(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            logging::fatal(&format!("{e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}
