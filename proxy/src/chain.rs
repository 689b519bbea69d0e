//! `bftcd keygen` and `bftcd genesis`: the keys of one bank and the chain's genesis.

use std::path::PathBuf;

use bftcd_proto::bftcd::{Genesis, KeyOwner, Validator};
use bftcd_proto::Message;
use bftcd_sequencer::keys;
use bftcd_sequencer::ownership::Owners;
use bftcd_sequencer::validity::{self, Limits};

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// The bank's name (its validator name in the genesis).
    #[arg(long)]
    pub name: String,
    /// Directory for the bank's keys (created; existing keys are never overwritten).
    #[arg(long)]
    pub dir: PathBuf,
    /// Directory of the development CA (ca.crt, ca.key), created on first use. Production
    /// deployments issue TLS certificates from their own CA instead.
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// host:port other banks reach this bank's sidecar on.
    #[arg(long)]
    pub peer_address: String,
    /// host:port of this bank's etcd v3 API (shown by MemberList).
    #[arg(long)]
    pub client_address: String,
}

#[derive(clap::Args, Debug)]
pub struct GenesisArgs {
    #[arg(long)]
    pub chain_id: String,
    /// Output file (protobuf bftcd.v1.Genesis).
    #[arg(long)]
    pub out: PathBuf,
    /// How every bank applies committed writes: `batched` or `exact` (see docs/operations.md).
    #[arg(long, value_enum, default_value = "batched")]
    pub apply_mode: crate::serve::ApplyMode,
    /// Largest client write any bank accepts, as etcd's --max-request-bytes (default 1.5 MiB).
    /// Every bank's etcd must accept 64 KiB more (checked at start).
    #[arg(long)]
    pub max_request_bytes: Option<usize>,
    /// Most operations in one Txn level, as etcd's --max-txn-ops (default 128). Every bank's
    /// etcd must accept 2 more (checked at start).
    #[arg(long)]
    pub max_txn_ops: Option<usize>,
    /// Largest block (default 8 MiB, at most 15 MiB); at least max-request-bytes + 4 KiB.
    #[arg(long)]
    pub max_block_bytes: Option<usize>,
    /// Gives a key prefix to a bank: only writes that bank submits may create, modify or
    /// delete keys under it (docs/operations.md, "Key ownership"). PREFIX=BANK, BANK a validator
    /// name or its 1-based position; repeat for more prefixes.
    #[arg(long = "key-owner", value_name = "PREFIX=BANK")]
    pub key_owners: Vec<String>,
    /// The banks' validator.pb files, in validator order.
    #[arg(required = true)]
    pub validators: Vec<PathBuf>,
}

/// `PREFIX=BANK` rules as the genesis holds them.
pub fn key_owners(rules: &[String], validators: &[Validator]) -> anyhow::Result<Vec<KeyOwner>> {
    rules
        .iter()
        .map(|rule| {
            let (prefix, bank) = rule.rsplit_once('=').ok_or_else(|| anyhow::anyhow!("--key-owner {rule:?}: expected PREFIX=BANK"))?;
            let index = match validators.iter().position(|v| v.name == bank) {
                Some(i) => i,
                None => match bank.parse::<usize>() {
                    Ok(i) if (1..=validators.len()).contains(&i) => i - 1,
                    _ => anyhow::bail!("--key-owner {rule:?}: {bank:?} is neither a bank's name nor a number from 1 to {}", validators.len()),
                },
            };
            Ok(KeyOwner { prefix: prefix.as_bytes().to_vec(), bank: index as u32 })
        })
        .collect()
}

pub fn keygen(a: KeygenArgs) -> anyhow::Result<()> {
    let ca = keys::dev_ca(&a.ca_dir)?;
    let v = keys::generate(&a.dir, &a.name, &ca, &a.peer_address, &a.client_address)?;
    println!("{}: keys in {}, descriptor {}", v.name, a.dir.display(), a.dir.join("validator.pb").display());
    Ok(())
}

/// The chain's limits from the command line (absent: etcd's defaults and 8 MiB blocks, or
/// blocks just large enough for the largest request).
pub fn limits(max_request_bytes: Option<usize>, max_txn_ops: Option<usize>, max_block_bytes: Option<usize>) -> anyhow::Result<Limits> {
    let mut l = Limits::default();
    if let Some(b) = max_request_bytes {
        l.max_request_bytes = b;
        l.max_block_bytes = l.max_block_bytes.max(b + validity::OPERATION_OVERHEAD);
    }
    if let Some(n) = max_txn_ops {
        l.max_txn_ops = n;
    }
    if let Some(b) = max_block_bytes {
        l.max_block_bytes = b;
    }
    l.check().map_err(|e| anyhow::anyhow!(e))?;
    Ok(l)
}

pub fn make_genesis(chain_id: &str, validators: Vec<Validator>, apply_mode: crate::serve::ApplyMode, limits: Limits) -> anyhow::Result<Genesis> {
    let mut genesis = Genesis {
        chain_id: chain_id.to_string(),
        epoch: 1,
        validators,
        initial_state_digest: Vec::new(),
        genesis_time_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64,
        apply_batch_max: apply_mode.batch_max(),
        ..Default::default()
    };
    limits.write_to(&mut genesis);
    keys::check_genesis(&genesis)?;
    let n = genesis.validators.len();
    if n > 1 && n < 4 {
        tracing::warn!(n, "fewer than 4 banks tolerate no Byzantine bank (n = 3f+1)");
    }
    Ok(genesis)
}

pub fn genesis(a: GenesisArgs) -> anyhow::Result<()> {
    let validators = a
        .validators
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            Validator::decode(bytes.as_slice()).map_err(|e| anyhow::anyhow!("{}: not a validator descriptor: {e}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let owners = key_owners(&a.key_owners, &validators)?;
    let mut g = make_genesis(&a.chain_id, validators, a.apply_mode, limits(a.max_request_bytes, a.max_txn_ops, a.max_block_bytes)?)?;
    g.key_owners = owners;
    Owners::of(&g).map_err(|e| anyhow::anyhow!("--key-owner: {e}"))?;
    std::fs::write(&a.out, g.encode_to_vec())?;
    let f = (g.validators.len() - 1) / 3;
    println!("genesis {} for chain {:?}: {} banks, tolerates f = {f} Byzantine", a.out.display(), g.chain_id, g.validators.len());
    Ok(())
}
