//! `bftcd keygen` and `bftcd genesis`: the keys of one bank and the chain's genesis, built,
//! shown, signed and sealed by every bank itself (the genesis ceremony: no trusted party).

use std::path::{Path, PathBuf};

use bftcd_proto::bftcd::{Genesis, GenesisSignatures, KeyOwner, Validator};
use bftcd_proto::Message;
use bftcd_sequencer::ownership::Owners;
use bftcd_sequencer::validity::{self, Limits};
use bftcd_sequencer::{ceremony, genesis_hash, keys};
use sha2::Digest;

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// The bank's name (its validator name in the genesis).
    #[arg(long)]
    pub name: String,
    /// Directory for the bank's keys (created; existing keys are never overwritten).
    #[arg(long)]
    pub dir: PathBuf,
    /// Gone: there is no shared CA any more (kept only to explain that).
    #[arg(long, hide = true)]
    pub ca_dir: Option<PathBuf>,
    /// host:port other banks reach this bank's sidecar on.
    #[arg(long)]
    pub peer_address: String,
    /// host:port of this bank's etcd v3 API (shown by MemberList).
    #[arg(long)]
    pub client_address: String,
}

/// `bftcd genesis`: build (the default, or `genesis build`), show, sign, seal.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct GenesisCmd {
    #[command(subcommand)]
    pub command: Option<GenesisSub>,
    #[command(flatten)]
    pub build: Option<GenesisArgs>,
}

#[derive(clap::Subcommand, Debug)]
pub enum GenesisSub {
    /// Build the genesis from the banks' descriptors (the same as `bftcd genesis` with these
    /// arguments). Deterministic: the same inputs give the same bytes on every machine.
    Build(GenesisArgs),
    /// Print a genesis and its hash (the hash the ledgers, the peers and the signatures use).
    Show(ShowArgs),
    /// Sign a genesis with this bank's operation key (one signature file to give the others).
    Sign(SignArgs),
    /// Merge the banks' signature files into one, checking that every bank signed.
    Seal(SealArgs),
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// The genesis file.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// The genesis this bank built itself (never sign one you were only given).
    #[arg(long)]
    pub genesis: PathBuf,
    /// This bank's key directory (`bftcd keygen`).
    #[arg(long)]
    pub keys: PathBuf,
    /// Output: a signatures file (protobuf bftcd.v1.GenesisSignatures) with this bank's
    /// signature, to give to every other bank.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct SealArgs {
    #[arg(long)]
    pub genesis: PathBuf,
    /// Output: one signatures file holding every bank's signature (what `bftcd serve
    /// --genesis-signatures` reads; by default `serve` looks next to the genesis).
    #[arg(long)]
    pub out: PathBuf,
    /// The banks' signature files (`bftcd genesis sign`), or directories of them.
    #[arg(required = true)]
    pub signatures: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct GenesisArgs {
    /// The chain's id, agreed by the banks (it enters every signed message).
    #[arg(long)]
    pub chain_id: String,
    /// Output file (protobuf bftcd.v1.Genesis).
    #[arg(long)]
    pub out: PathBuf,
    /// The chain's start time, agreed by the banks beforehand (every bank must pass the same
    /// value to get the same genesis): RFC 3339 like 2026-12-01T00:00:00Z, or Unix
    /// milliseconds. Blocks are timed after it, so pick a moment before the chain starts.
    #[arg(long, value_parser = parse_genesis_time)]
    pub genesis_time: u64,
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
    /// Start the chain from this etcd snapshot (`etcdctl snapshot save` of the cluster being
    /// migrated): the genesis records its revision, leases, SHA-256 and state digest, and every
    /// bank restores it into its etcd (`bftcd restore`; docs/migration.md).
    #[arg(long, value_name = "FILE")]
    pub initial_snapshot: Option<PathBuf>,
    /// Stock etcd binary that reads the snapshot; etcdutl is looked up beside it (default:
    /// $BFTCD_ETCD_BIN, tools/bin, PATH).
    #[arg(long, value_name = "PATH")]
    pub etcd_bin: Option<PathBuf>,
    /// The banks' validator.pb files, in validator order (every bank must list them in the
    /// same order).
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
    if a.ca_dir.is_some() {
        anyhow::bail!(
            "--ca-dir: no shared CA any more; each bank's keygen makes a self-signed TLS certificate that the \
             genesis pins (docs/operations.md, \"Genesis ceremony\"): leave --ca-dir out"
        );
    }
    let v = keys::generate(&a.dir, &a.name, &a.peer_address, &a.client_address)?;
    println!(
        "{}: keys in {}, descriptor {} (TLS certificate {})",
        v.name,
        a.dir.display(),
        a.dir.join("validator.pb").display(),
        cert_fingerprint(&v.tls_certificate)
    );
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

/// A genesis from its inputs alone (no clock, no randomness), so every bank builds the same.
pub fn make_genesis(
    chain_id: &str,
    validators: Vec<Validator>,
    genesis_time_ms: u64,
    apply_mode: crate::serve::ApplyMode,
    limits: Limits,
) -> anyhow::Result<Genesis> {
    let mut genesis = Genesis {
        chain_id: chain_id.to_string(),
        epoch: 1,
        validators,
        initial_state_digest: Vec::new(),
        genesis_time_ms,
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

pub async fn genesis(cmd: GenesisCmd) -> anyhow::Result<()> {
    match (cmd.command, cmd.build) {
        (Some(GenesisSub::Build(a)), _) | (None, Some(a)) => build(a).await,
        (Some(GenesisSub::Show(a)), _) => show(a),
        (Some(GenesisSub::Sign(a)), _) => sign(a),
        (Some(GenesisSub::Seal(a)), _) => seal(a),
        (None, None) => {
            anyhow::bail!("bftcd genesis: give the build arguments or a subcommand (see --help)")
        }
    }
}

async fn build(a: GenesisArgs) -> anyhow::Result<()> {
    let validators = a
        .validators
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            Validator::decode(bytes.as_slice()).map_err(|e| anyhow::anyhow!("{}: not a validator descriptor: {e}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut owners = key_owners(&a.key_owners, &validators)?;
    // Prefixes never overlap, so sorted they are canonical: the flags' order does not matter.
    owners.sort_by(|x, y| x.prefix.cmp(&y.prefix));
    let limits = limits(a.max_request_bytes, a.max_txn_ops, a.max_block_bytes)?;
    let mut g = make_genesis(
        &a.chain_id,
        validators,
        a.genesis_time,
        a.apply_mode,
        limits,
    )?;
    g.key_owners = owners;
    Owners::of(&g).map_err(|e| anyhow::anyhow!("--key-owner: {e}"))?;
    let imported = match &a.initial_snapshot {
        Some(file) => {
            let snap = crate::migrate::read_snapshot(file, a.etcd_bin.as_deref()).await?;
            crate::migrate::write_into(&mut g, &snap)?;
            Some(snap)
        }
        None => None,
    };
    if a.genesis_time > crate::front::now_ms() + 60_000 {
        tracing::warn!(genesis_time = %format_time_ms(a.genesis_time), "the genesis time is in the future: no block is accepted before it");
    }
    std::fs::write(&a.out, g.encode_to_vec())?;
    let f = (g.validators.len() - 1) / 3;
    println!(
        "genesis {} for chain {:?}: {} banks, tolerates f = {f} Byzantine; hash {}",
        a.out.display(),
        g.chain_id,
        g.validators.len(),
        hex::encode(genesis_hash(&g))
    );
    if let Some(s) = imported {
        println!(
            "initial state from {}: revision {}, {} keys, {} leases ({} keys attached), state digest {}",
            a.initial_snapshot.as_deref().unwrap_or(Path::new("")).display(),
            s.revision,
            s.key_count,
            s.leases.len(),
            s.attached,
            hex::encode(&g.initial_state_digest)
        );
    }
    Ok(())
}

pub fn read_genesis(path: &Path) -> anyhow::Result<Genesis> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Genesis::decode(bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("{}: not a genesis file: {e}", path.display()))
}

/// SHA-256 of a DER certificate, hex: what operators compare out of band.
fn cert_fingerprint(der: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(der))
}

/// The genesis as `genesis show` prints it.
pub fn genesis_json(g: &Genesis) -> serde_json::Value {
    use serde_json::json;
    let n = g.validators.len();
    let name = |i: u32| {
        g.validators
            .get(i as usize)
            .map(|v| v.name.clone())
            .unwrap_or_else(|| format!("#{}", i + 1))
    };
    let validators: Vec<_> = g
        .validators
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({
                "index": i,
                "name": v.name,
                "peer_address": v.peer_address,
                "client_address": v.client_address,
                "tls_certificate_sha256": (!v.tls_certificate.is_empty()).then(|| cert_fingerprint(&v.tls_certificate)),
                "operation_key": hex::encode(&v.operation_key),
                "bls_public_key": hex::encode(&v.bls_public_key),
            })
        })
        .collect();
    let l = Limits::of(g);
    json!({
        "genesis_hash": hex::encode(genesis_hash(g)),
        "chain_id": g.chain_id,
        "epoch": g.epoch,
        "genesis_time": format_time_ms(g.genesis_time_ms),
        "genesis_time_ms": g.genesis_time_ms,
        "n": n,
        "f": n.saturating_sub(1) / 3,
        "validators": validators,
        "limits": {
            "max_request_bytes": l.max_request_bytes,
            "max_txn_ops": l.max_txn_ops,
            "max_block_bytes": l.max_block_bytes,
            "max_block_operations": l.max_block_operations,
        },
        "key_owners": g.key_owners.iter().map(|o| json!({"prefix": String::from_utf8_lossy(&o.prefix), "bank": name(o.bank)})).collect::<Vec<_>>(),
        "apply_mode": if g.apply_batch_max == 0 { "exact".to_string() } else { format!("batched ({})", g.apply_batch_max) },
        "apply_batch_max": g.apply_batch_max,
        "initial_state": crate::migrate::is_imported(g).then(|| json!({
            "revision": g.initial_revision,
            "state_digest": hex::encode(&g.initial_state_digest),
            "snapshot_sha256": hex::encode(&g.initial_snapshot_sha256),
            "leases": g.initial_leases.iter().map(|l| json!({"id": format!("{:016x}", l.id), "ttl": l.ttl})).collect::<Vec<_>>(),
        })),
    })
}

fn show(a: ShowArgs) -> anyhow::Result<()> {
    let g = read_genesis(&a.file)?;
    let j = genesis_json(&g);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!("genesis      {}", a.file.display());
    println!(
        "hash         {}",
        j["genesis_hash"].as_str().unwrap_or_default()
    );
    println!("chain id     {}", g.chain_id);
    println!("epoch        {}", g.epoch);
    println!(
        "time         {} ({} ms)",
        format_time_ms(g.genesis_time_ms),
        g.genesis_time_ms
    );
    println!(
        "apply mode   {}",
        j["apply_mode"].as_str().unwrap_or_default()
    );
    let l = &j["limits"];
    println!(
        "limits       max-request-bytes {} max-txn-ops {} max-block-bytes {} max-block-operations {}",
        l["max_request_bytes"], l["max_txn_ops"], l["max_block_bytes"], l["max_block_operations"]
    );
    println!("validators   n = {}, f = {}", j["n"], j["f"]);
    for v in g.validators.iter() {
        println!(
            "  {}  peer {}  client {}",
            v.name, v.peer_address, v.client_address
        );
        if !v.tls_certificate.is_empty() {
            println!(
                "      tls certificate sha256 {}",
                cert_fingerprint(&v.tls_certificate)
            );
            println!("      operation key {}", hex::encode(&v.operation_key));
        }
    }
    for o in j["key_owners"].as_array().into_iter().flatten() {
        println!(
            "key owner    {} = {}",
            o["prefix"].as_str().unwrap_or_default(),
            o["bank"].as_str().unwrap_or_default()
        );
    }
    if crate::migrate::is_imported(&g) {
        println!(
            "initial      etcd snapshot sha256 {}, revision {}, {} leases, state digest {}",
            hex::encode(&g.initial_snapshot_sha256),
            g.initial_revision,
            g.initial_leases.len(),
            hex::encode(&g.initial_state_digest)
        );
    }
    if let Err(e) = crate::migrate::check_genesis(&g) {
        println!("INVALID      {e}");
        anyhow::bail!("{}: {e}", a.file.display());
    }
    if let Err(e) = keys::check_genesis(&g) {
        println!("INVALID      {e}");
        anyhow::bail!("{}: {e}", a.file.display());
    }
    Ok(())
}

fn sign(a: SignArgs) -> anyhow::Result<()> {
    let g = read_genesis(&a.genesis)?;
    keys::check_genesis(&g).map_err(|e| anyhow::anyhow!("{}: {e}", a.genesis.display()))?;
    let bank_keys = keys::BankKeys::load(&a.keys)?;
    let sigs =
        ceremony::sign(&bank_keys, &g).map_err(|e| anyhow::anyhow!("{}: {e}", a.keys.display()))?;
    std::fs::write(&a.out, sigs.encode_to_vec())
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.out.display()))?;
    let bank = &g.validators[sigs.signatures[0].bank as usize].name;
    println!(
        "{bank} signed genesis {} into {}",
        hex::encode(genesis_hash(&g)),
        a.out.display()
    );
    Ok(())
}

fn seal(a: SealArgs) -> anyhow::Result<()> {
    let g = read_genesis(&a.genesis)?;
    keys::check_genesis(&g).map_err(|e| anyhow::anyhow!("{}: {e}", a.genesis.display()))?;
    let sigs = collect_signatures(&g, &a.signatures)?;
    std::fs::write(&a.out, sigs.encode_to_vec())
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.out.display()))?;
    println!(
        "all {} banks signed genesis {}: {}",
        g.validators.len(),
        hex::encode(genesis_hash(&g)),
        a.out.display()
    );
    Ok(())
}

/// Reads signature files (or every file of the given directories), keeps those over `g`, and
/// checks that every bank signed it. The error names the missing or bad banks.
pub fn collect_signatures(g: &Genesis, paths: &[PathBuf]) -> anyhow::Result<GenesisSignatures> {
    let mut files = Vec::new();
    for p in paths {
        let list = bftcd_sequencer::ceremony::signature_files(p).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                "; every bank signs the genesis (bftcd genesis sign) and its signature file goes into \
                 this directory, or all of them into one file (bftcd genesis seal); or pass \
                 --genesis-signatures"
            } else {
                ""
            };
            anyhow::anyhow!("genesis signatures {}: {e}{hint}", p.display())
        })?;
        for f in list {
            let bytes = std::fs::read(&f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            let sigs = GenesisSignatures::decode(bytes.as_slice()).map_err(|e| {
                anyhow::anyhow!("{}: not a genesis signatures file: {e}", f.display())
            })?;
            files.push((f, sigs));
        }
    }
    let hash = genesis_hash(g);
    let mut over_other = Vec::new();
    let mut ours = Vec::new();
    for (f, sigs) in files {
        if sigs.genesis_hash == hash[..] {
            ours.push(sigs);
        } else {
            over_other.push(format!(
                "{} (genesis {})",
                f.display(),
                hex::encode(&sigs.genesis_hash)
            ));
        }
    }
    let (merged, _) = ceremony::merge(ours, &hash);
    ceremony::check(g, &merged).map_err(|e| {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        let mut msg = format!("genesis signatures {}: {e}", shown.join(", "));
        if !over_other.is_empty() {
            msg.push_str(&format!(
                "; signed another genesis: {}",
                over_other.join(", ")
            ));
        }
        anyhow::anyhow!(msg)
    })?;
    Ok(merged)
}

/// `--genesis-time`: Unix milliseconds, or RFC 3339 (`2026-12-01T00:00:00Z`, fractions of a
/// second and `+HH:MM` offsets allowed).
pub fn parse_genesis_time(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let ms = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u64>().map_err(|e| e.to_string())?
    } else {
        parse_rfc3339(s).ok_or_else(|| {
            format!("{s:?}: expected RFC 3339 (2026-12-01T00:00:00Z) or Unix milliseconds")
        })?
    };
    if ms == 0 {
        return Err("the genesis time must be after the Unix epoch".into());
    }
    Ok(ms)
}

fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    if d < 1 || civil_from_days(days) != (y, mo as u32, d as u32) {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds: the genesis holds no finer time.
        let text = &frac[..digits];
        ms = format!("{:0<3}", &text[..digits.min(3)]).parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ => {
            let o = rest.as_bytes();
            if o.len() != 6 || !matches!(o[0], b'+' | b'-') || o[3] != b':' {
                return None;
            }
            let (oh, om) = (
                rest[1..3].parse::<i64>().ok()?,
                rest[4..6].parse::<i64>().ok()?,
            );
            if oh > 23 || om > 59 {
                return None;
            }
            let sign = if o[0] == b'+' { 1 } else { -1 };
            sign * (oh * 3600 + om * 60)
        }
    };
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    u64::try_from(secs * 1000 + ms).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (March-based years, 400-year eras).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// RFC 3339 in UTC, with milliseconds only when there are any.
pub fn format_time_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    let frac = if ms.is_multiple_of(1000) {
        String::new()
    } else {
        format!(".{:03}", ms % 1000)
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_times() {
        assert_eq!(
            parse_genesis_time("2026-12-01T00:00:00Z"),
            Ok(1_796_083_200_000)
        );
        assert_eq!(parse_genesis_time("1796083200000"), Ok(1_796_083_200_000));
        assert_eq!(parse_genesis_time("1970-01-01T00:00:00.001Z"), Ok(1));
        assert_eq!(
            parse_genesis_time("2000-02-29T23:59:59.123+02:00"),
            Ok(951_861_599_123)
        );
        for bad in [
            "",
            "0",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-12-01T00:00:00",
            "2026-12-01",
            "yesterday",
            "2026-12-01T24:00:00Z",
        ] {
            assert!(parse_genesis_time(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(format_time_ms(1_796_083_200_000), "2026-12-01T00:00:00Z");
        assert_eq!(format_time_ms(951_861_599_123), "2000-02-29T21:59:59.123Z");
        for ms in [1u64, 86_399_999, 951_782_400_000, 4_102_444_800_000] {
            assert_eq!(parse_genesis_time(&format_time_ms(ms)), Ok(ms));
        }
    }
}
