//! `bftcd govern`: a bank's operator looks at the chain's rules and approves changes, through
//! the running sidecar's admin socket ([`crate::admin`]).

use std::path::PathBuf;

use bftcd_proto::bftcd::{admin_request::Request, AdminRequest, ChainChange, KeyOwner, KeyOwnersChange, RulesQuery, RulesState};

#[derive(clap::Args)]
pub struct GovernArgs {
    /// The bank's data directory (where its sidecar's admin.sock is).
    #[arg(long)]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: GovernCommand,
}

#[derive(clap::Subcommand)]
pub enum GovernCommand {
    /// Show the rules in effect and the approvals pending.
    Rules,
    /// Approve, for this bank, that the chain's key owners become exactly the given list. It
    /// takes effect once every bank has approved the same list for the same rules version.
    Approve {
        /// The rules version the change applies to (default: the one in effect now).
        #[arg(long)]
        rules_version: Option<u64>,
        /// PREFIX=BANK (a bank's name or 1-based position); repeat for each prefix.
        #[arg(long = "key-owner", value_name = "PREFIX=BANK")]
        key_owners: Vec<String>,
        /// Approve a list with no key owners at all (no --key-owner given).
        #[arg(long, conflicts_with = "key_owners")]
        no_key_owners: bool,
    },
}

fn show_owners(owners: &[KeyOwner], banks: &[String]) -> String {
    if owners.is_empty() {
        return "none".into();
    }
    let name = |i: u32| banks.get(i as usize).cloned().unwrap_or_else(|| format!("#{i}"));
    owners.iter().map(|o| format!("{}={}", String::from_utf8_lossy(&o.prefix), name(o.bank))).collect::<Vec<_>>().join(" ")
}

async fn rules(data_dir: &std::path::Path) -> anyhow::Result<RulesState> {
    let r = crate::admin::request(data_dir, &AdminRequest { request: Some(Request::Rules(RulesQuery {})) }).await?;
    r.rules.ok_or_else(|| anyhow::anyhow!("the bank sent no rules"))
}

pub async fn run(args: GovernArgs) -> anyhow::Result<()> {
    let state = rules(&args.data_dir).await?;
    match args.command {
        GovernCommand::Rules => {
            println!("rules version {}", state.rules_version);
            println!("key owners    {}", show_owners(&state.key_owners, &state.banks));
            for p in &state.pending {
                let bank = state.banks.get(p.bank as usize).cloned().unwrap_or_default();
                let owners = p.change.as_ref().and_then(|c| c.key_owners.as_ref()).map(|k| k.owners.clone()).unwrap_or_default();
                println!("pending       {bank} approves key owners {}", show_owners(&owners, &state.banks));
            }
        }
        GovernCommand::Approve { rules_version, key_owners, no_key_owners } => {
            anyhow::ensure!(!key_owners.is_empty() || no_key_owners, "give the new list with --key-owner PREFIX=BANK, or --no-key-owners");
            let validators: Vec<bftcd_proto::bftcd::Validator> =
                state.banks.iter().map(|n| bftcd_proto::bftcd::Validator { name: n.clone(), ..Default::default() }).collect();
            let owners = crate::chain::key_owners(&key_owners, &validators)?;
            let change = ChainChange {
                rules_version: rules_version.unwrap_or(state.rules_version),
                key_owners: Some(KeyOwnersChange { owners: owners.clone() }),
            };
            let r = crate::admin::request(&args.data_dir, &AdminRequest { request: Some(Request::Approve(change)) }).await?;
            let r = r.approve.ok_or_else(|| anyhow::anyhow!("the bank sent no result"))?;
            let list = show_owners(&owners, &state.banks);
            if r.stale {
                anyhow::bail!("committed, but it counts for nothing: rules version {} is in effect now", r.rules_version);
            } else if r.enacted {
                println!("approved by every bank: key owners {list} are in effect (rules version {})", r.rules_version);
            } else {
                println!("approved: {} of {} banks approve key owners {list} for rules version {}", r.approvals, r.needed, r.rules_version);
            }
        }
    }
    Ok(())
}
