//! `bftcd`: the BFTcd sidecar and its operator commands.

mod admin;
mod apply;
mod chain;
mod clientcerts;
mod codec;
mod corrupt;
mod devcluster;
mod errors;
mod etcd;
mod expiry;
mod front;
mod govern;
mod health;
mod identity;
mod metrics;
mod probe;
mod reheader;
mod replay;
mod reserved;
mod rewrite;
mod serve;
mod tools;
mod validate;
mod writes;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bftcd", version, about = "Byzantine-fault-tolerant sidecar for stock etcd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the etcd v3 API for one bank, in front of that bank's stock etcd.
    Serve(serve::ServeArgs),
    /// Start a local cluster on loopback: N stock etcds and N sidecars, until SIGINT/SIGTERM.
    DevCluster(devcluster::DevClusterArgs),
    /// Create one bank's keys: BLS (votes), Ed25519 (operations), TLS certificate from a CA.
    Keygen(chain::KeygenArgs),
    /// Build a chain's genesis from the banks' validator descriptors (checks every key).
    Genesis(chain::GenesisArgs),
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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A replay's stderr is its progress: the apply engine's start-up notes would drown it.
    let default_log = if matches!(cli.command, Command::Replay(_)) { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BFTCD_LOG").unwrap_or_else(|_| default_log.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::DevCluster(args) => devcluster::run(args).await,
            Command::Keygen(args) => chain::keygen(args),
            Command::Genesis(args) => chain::genesis(args),
            Command::ClientCerts(args) => clientcerts::run(args),
            Command::Govern(args) => govern::run(args).await,
            Command::Replay(args) => replay::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bftcd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
