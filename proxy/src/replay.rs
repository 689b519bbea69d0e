//! `bftcd replay`: a ledger applied to an empty stock etcd by the sidecar's own apply engine,
//! with the state digest after every block with operations, and no network or consensus.
//!
//! An auditor's `bftcd-verify replay` runs it to recompute the digests the banks certified:
//! the same engine a restarting bank uses to rebuild its etcd from its ledger, so a replay
//! cannot agree with the banks by applying differently from them. By default it starts a
//! scratch etcd of its own (a temporary directory, loopback, free ports, no fsync, the chain's
//! limits) and removes it afterwards. A chain made from an etcd snapshot starts from that
//! snapshot instead (`--initial-snapshot`), restored into the scratch etcd and checked against
//! the genesis's digest.
//!
//! Output on stdout, one JSON object a line: `{"event":"start",...}`, then
//! `{"event":"digest","height":H,"revision":R,"state_digest":HEX}` for every block with
//! operations (`state_digest` null when etcd had compacted past the block's revision), then
//! `{"event":"end",...}` with etcd's final revision and HashKV; or `{"event":"error",...}`.
//! Progress goes to stderr. Keys and values are never printed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bftcd_proto::bftcd::Genesis;
use bftcd_proto::etcdserverpb::{HashKvRequest, RangeRequest};
use bftcd_sequencer::governance::ChainRules;
use bftcd_sequencer::validity::Limits;
use bftcd_sequencer::{genesis_hash, Ledger, LedgerFile};
use serde_json::json;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};

use crate::apply::digest::{BlockEnd, Tracker};
use crate::apply::{Applier, BatchLimits};
use crate::etcd::LocalEtcd;
use crate::identity::Identity;

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// The ledger to replay (a bank's <data-dir>/ledger.log). Only read: a copy is replayed.
    #[arg(long, value_name = "FILE")]
    pub ledger: PathBuf,
    /// The chain's genesis (`bftcd genesis` output); the ledger must start from exactly it.
    #[arg(long, value_name = "FILE")]
    pub genesis: PathBuf,
    /// Replay into this etcd (host:port or URL) instead of a scratch one; it must be empty and
    /// accept the chain's limits.
    #[arg(long, value_name = "URL")]
    pub etcd_endpoint: Option<String>,
    /// Stock etcd binary for the scratch etcd (default: $BFTCD_ETCD_BIN, tools/bin, PATH).
    #[arg(long, value_name = "PATH")]
    pub etcd_bin: Option<PathBuf>,
    /// The etcd snapshot the chain starts from, for a genesis made with `bftcd genesis
    /// --initial-snapshot`: the scratch etcd is restored from it (docs/migration.md).
    #[arg(long, value_name = "FILE")]
    pub initial_snapshot: Option<PathBuf>,
    /// Stop after this block (default: the ledger's last).
    #[arg(long, value_name = "H")]
    pub to_height: Option<u64>,
    /// Log progress on stderr every this many blocks (and at least every 2 s).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub progress_every: u64,
    /// Give up when no block is applied for this long (an etcd that refuses what the chain
    /// applies makes the apply engine wait for an operator).
    #[arg(long, default_value = "120s", value_parser = humantime_secs)]
    pub stall_timeout: Duration,
}

const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let n = s.strip_suffix('s').unwrap_or(s);
    n.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("{s:?}: expected seconds, such as 120s"))
}

fn emit(v: serde_json::Value) {
    println!("{v}");
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let result = replay(args).await;
    if let Err(e) = &result {
        emit(json!({"event": "error", "error": format!("{e:#}")}));
    }
    result
}

/// The scratch etcd: its process and directory go away with it.
struct Scratch {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Scratch {
    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

/// Starts a single-member etcd on loopback that accepts what the chain allows (as every bank's
/// must), without fsync: nothing in it needs to survive the replay.
/// With `snapshot`, its data directory is restored from it first.
async fn start_etcd(genesis: &Genesis, bin: Option<&Path>, dir: &Path, snapshot: Option<&Path>) -> anyhow::Result<(Child, String)> {
    let etcd_bin = crate::tools::find("etcd", bin)?;
    let (bytes, ops) = crate::probe::required(&Limits::of(genesis), genesis.apply_batch_max);
    let log_path = dir.join("etcd.log");
    let mut last_error = None;
    // A port found free may be taken before etcd binds it: try a few.
    for _ in 0..3 {
        let client = format!("http://127.0.0.1:{}", crate::tools::free_port()?);
        let peer = format!("http://127.0.0.1:{}", crate::tools::free_port()?);
        if let Some(file) = snapshot {
            let etcdutl = crate::tools::find("etcdutl", Some(&etcd_bin))?;
            crate::migrate::etcdutl_restore(&etcdutl, file, &dir.join("etcd"), "replay", &peer).await?;
        }
        let etcd = crate::tools::OneEtcd {
            bin: &etcd_bin,
            name: "replay",
            data_dir: &dir.join("etcd"),
            client: &client,
            peer: &peer,
            log: &log_path,
            extra: vec![format!("--max-request-bytes={}", bytes + 1024), format!("--max-txn-ops={ops}"), "--unsafe-no-fsync".into()],
        };
        match etcd.start().await {
            Ok(child) => return Ok((child, client)),
            Err(e) => {
                let _ = std::fs::remove_dir_all(dir.join("etcd"));
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
}

/// Copies the ledger up to block `to` (whole records only) into the scratch directory: the
/// live ledger cuts a torn tail on open, and the auditor's file must stay as it is.
fn copy_ledger(scan: &LedgerFile, to: u64, into: &Path) -> anyhow::Result<()> {
    use std::io::Read;
    let end = match to {
        0 => scan.blocks.first().map_or(scan.valid_len, |&(offset, _)| offset),
        h => scan.blocks.get(h as usize - 1).map(|&(offset, len)| offset + 8 + len as u64).unwrap_or(scan.valid_len),
    };
    let mut from = std::fs::File::open(&scan.path)?.take(end);
    let mut out = std::fs::File::create(into)?;
    let copied = std::io::copy(&mut from, &mut out)?;
    anyhow::ensure!(copied == end, "{} changed while it was copied", scan.path.display());
    Ok(())
}

/// etcd must hold nothing: the replay rebuilds the state from the genesis on.
async fn ensure_empty(etcd: &LocalEtcd) -> anyhow::Result<()> {
    let all = RangeRequest { key: vec![0], range_end: vec![0], count_only: true, serializable: true, ..Default::default() };
    let r = etcd.kv().range(all).await.context("reading the etcd")?.into_inner();
    let revision = r.header.map(|h| h.revision).unwrap_or_default();
    anyhow::ensure!(
        r.count == 0 && revision <= 1,
        "the etcd at {} is not empty (revision {revision}, {} keys): a replay starts from an empty etcd",
        etcd.endpoint,
        r.count
    );
    Ok(())
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let genesis_bytes = std::fs::read(&args.genesis).with_context(|| format!("{}", args.genesis.display()))?;
    let genesis = <Genesis as prost::Message>::decode(genesis_bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("{}: not a genesis file: {e}", args.genesis.display()))?;
    anyhow::ensure!(!genesis.validators.is_empty(), "{}: the genesis lists no banks", args.genesis.display());
    crate::migrate::check_genesis(&genesis).map_err(|e| anyhow::anyhow!("{}: {e}", args.genesis.display()))?;
    match (&args.initial_snapshot, crate::migrate::is_imported(&genesis)) {
        (None, true) => anyhow::bail!(
            "{}: this chain starts from an etcd snapshot (revision {}): pass it with --initial-snapshot FILE (the file whose \
             SHA-256 is {})",
            args.genesis.display(),
            genesis.initial_revision,
            hex::encode(&genesis.initial_snapshot_sha256)
        ),
        (Some(file), _) => {
            crate::migrate::check_file(&genesis, file).map_err(|e| anyhow::anyhow!("{}: {e}", args.genesis.display()))?;
            anyhow::ensure!(args.etcd_endpoint.is_none(), "--initial-snapshot restores a scratch etcd: leave --etcd-endpoint out");
        }
        (None, false) => {}
    }
    let ledger_path = args.ledger.clone();
    let scan = tokio::task::spawn_blocking(move || LedgerFile::scan(&ledger_path, |_, _| Ok(()))).await??;
    anyhow::ensure!(
        scan.genesis == genesis,
        "{} starts from genesis {}, not {} ({}): it belongs to another chain",
        args.ledger.display(),
        hex::encode(genesis_hash(&scan.genesis)),
        hex::encode(genesis_hash(&genesis)),
        args.genesis.display()
    );
    let tip = scan.blocks.len() as u64;
    let to = args.to_height.unwrap_or(tip);
    anyhow::ensure!(to <= tip, "--to-height {to}: the ledger ends at block {tip}");

    let dir = tempfile::Builder::new().prefix("bftcd-replay-").tempdir()?;
    let copy = dir.path().join("ledger.log");
    copy_ledger(&scan, to, &copy)?;
    let ledger = {
        let g = genesis.clone();
        Arc::new(tokio::task::spawn_blocking(move || Ledger::open(&copy, &g)).await??)
    };
    // A multi-bank ledger ends at its last proven block (a later one was never committed).
    let to = to.min(ledger.height());
    let mut scratch = Scratch { child: None, dir };
    let span = (tip, to);
    let result = match &args.etcd_endpoint {
        Some(endpoint) => apply_all(&args, &genesis, ledger, endpoint, scratch.dir.path(), span).await,
        None => match start_etcd(&genesis, args.etcd_bin.as_deref(), scratch.dir.path(), args.initial_snapshot.as_deref()).await {
            Ok((child, endpoint)) => {
                scratch.child = Some(child);
                apply_all(&args, &genesis, ledger, &endpoint, scratch.dir.path(), span).await
            }
            Err(e) => Err(e),
        },
    };
    // An etcd was started (its log exists), even if it never served.
    let started = scratch.dir.path().join("etcd.log").exists();
    scratch.stop().await;
    match result {
        // What went wrong may be in the scratch etcd's log: kept for the operator.
        Err(e) if started => {
            let kept = scratch.dir.keep();
            Err(anyhow::anyhow!("{e:#} (the scratch etcd's data and log are kept in {})", kept.display()))
        }
        r => r,
    }
}

/// `(tip, to)`: the ledger file's last block, and the last to replay.
async fn apply_all(args: &ReplayArgs, genesis: &Genesis, ledger: Arc<Ledger>, endpoint: &str, dir: &Path, (tip, to): (u64, u64)) -> anyhow::Result<()> {
    let etcd = LocalEtcd::connect_lazy(endpoint)?;
    // The limits check waits for an etcd that does not answer; a replay gives up instead.
    let ready = async {
        crate::probe::check(&etcd, &Limits::of(genesis), genesis.apply_batch_max).await?;
        if crate::migrate::is_imported(genesis) {
            crate::migrate::check_state(&etcd, genesis).await.map(|_| ())
        } else {
            ensure_empty(&etcd).await
        }
    };
    tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .map_err(|_| anyhow::anyhow!("the etcd at {endpoint} did not answer within 30 s"))??;
    emit(json!({
        "event": "start",
        "genesis_hash": hex::encode(genesis_hash(genesis)),
        "chain_id": genesis.chain_id,
        "ledger_height": tip,
        "to_height": to,
    }));

    // The restored etcd counts the snapshot's leases down by its own clock, as a bank's does.
    let _keeper = AbortOnDrop(tokio::spawn(crate::migrate::keep_imported_leases(etcd.clone(), genesis.clone())));
    // Who the answers say they come from does not matter here: nobody reads them.
    let identity = Arc::new(Identity::new(genesis, &genesis.validators[0].name)?);
    let rules = ChainRules::of(genesis).map_err(|e| anyhow::anyhow!("the genesis's key owners: {e}"))?;
    let batching = (genesis.apply_batch_max > 0).then(|| BatchLimits { max_operations: genesis.apply_batch_max as usize, ..Default::default() });
    let mut applier = Applier::new(etcd.clone(), ledger, identity, dir, batching, rules);
    let (ends_tx, ends) = mpsc::channel::<BlockEnd>(1);
    let (done_tx, done) = watch::channel(0u64);
    let (digests_tx, mut digests) = mpsc::unbounded_channel();
    applier.digests = Some(ends_tx);
    applier.digested = Some(done);
    let tracker = Tracker::new(&etcd)?;
    tokio::spawn(tracker.run(ends, move |end: &BlockEnd, digest: Option<[u8; 32]>| {
        let _ = digests_tx.send((end.height, end.revision, digest));
        done_tx.send_replace(end.height);
    }));
    let applier = Arc::new(applier);
    let mut applied = applier.applied_height();
    let mut apply_task = tokio::spawn(applier.clone().run());

    let started = Instant::now();
    let (mut digested, mut skipped) = (0u64, 0u64);
    let mut print = |(height, revision, digest): (u64, i64, Option<[u8; 32]>)| {
        if digest.is_some() {
            digested += 1;
        } else {
            skipped += 1;
        }
        emit(json!({"event": "digest", "height": height, "revision": revision, "state_digest": digest.map(hex::encode)}));
    };
    let mut shown = 0u64;
    let mut last_move = Instant::now();
    let mut last_report = Instant::now();
    while *applied.borrow() < to {
        tokio::select! {
            Some(d) = digests.recv() => print(d),
            r = applied.changed() => {
                anyhow::ensure!(r.is_ok(), "the apply engine stopped");
                last_move = Instant::now();
                let h = *applied.borrow();
                // Every --progress-every blocks, and at least every 2 s: a slow etcd still shows life.
                let crossed = args.progress_every > 0 && h / args.progress_every > shown / args.progress_every;
                if crossed || last_report.elapsed() >= PROGRESS_INTERVAL {
                    let percent = h.saturating_mul(100).checked_div(to).unwrap_or(100);
                    tracing::info!(height = h, to, percent, "replay: block {h} of {to} applied, {percent} % ({:.0} s)", started.elapsed().as_secs_f64());
                    last_report = Instant::now();
                }
                shown = h;
            }
            r = &mut apply_task => {
                let e = match r {
                    Ok(Ok(())) => anyhow::anyhow!("the apply engine stopped"),
                    Ok(Err(e)) => e,
                    Err(e) => anyhow::anyhow!("the apply engine failed: {e}"),
                };
                return Err(e.context("replaying"));
            }
            _ = tokio::time::sleep_until((last_move + args.stall_timeout).into()) => {
                anyhow::bail!(
                    "no block applied for {} s after block {} (does the etcd at {endpoint} refuse what the chain applies? see its log)",
                    args.stall_timeout.as_secs(), *applied.borrow()
                );
            }
        }
    }
    // Every block's digest was handed over before its height counted as applied.
    while let Ok(d) = digests.try_recv() {
        print(d);
    }
    apply_task.abort();
    let hash = etcd.maintenance().hash_kv(HashKvRequest { revision: 0 }).await.context("HashKV")?.into_inner();
    let revision = hash.header.map(|h| h.revision).unwrap_or_default();
    emit(json!({
        "event": "end",
        "height": to,
        "revision": revision,
        "hash_kv": hash.hash,
        "compact_revision": hash.compact_revision,
        "digested": digested,
        "skipped": skipped,
    }));
    tracing::info!(blocks = to, digested, revision, "replay: {to} blocks applied in {:.1} s, {digested} digests, etcd at revision {revision}", started.elapsed().as_secs_f64());
    Ok(())
}

/// Aborts a task when dropped (the replay's lease keeper ends with the replay).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
