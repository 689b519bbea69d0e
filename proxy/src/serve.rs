//! `bftcd serve`: one bank's sidecar.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bftcd_proto::bftcd::{Genesis, Validator};
use bftcd_proto::Message;
use bftcd_sequencer::cpu::{AccountedExt, Component};
use bftcd_sequencer::hotstuff::{HotStuff, HotStuffOptions};
use bftcd_sequencer::keys::BankKeys;
use bftcd_sequencer::validity::Limits;
use bftcd_sequencer::{single::BlockLimits, Ledger, Sequencer, SingleReplica};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::apply::Applier;
use crate::etcd::LocalEtcd;
use crate::front::Front;
use crate::identity::Identity;
use crate::writes::Writes;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// This bank's name; must be a validator in the genesis.
    #[arg(long)]
    pub name: String,
    /// Where the ledger and this bank's small state files live.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address clients (kube-apiserver, etcdctl) connect to: `IP:PORT`, `http://IP:PORT` or
    /// `https://IP:PORT` (https needs --cert-file and --key-file).
    #[arg(long, default_value = "127.0.0.1:2379", value_parser = parse_listen_client)]
    pub listen_client: ListenClient,
    /// TLS certificate (PEM, with its chain) served on the client port, as etcd's flag.
    /// With --key-file, clients must speak TLS.
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// CA (PEM) that signs client certificates. As with etcd, giving it requires every client
    /// to present a certificate signed by it.
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate signed by --trusted-ca-file (at the handshake); a
    /// client is then known by its certificate's common name.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    pub client_cert_auth: bool,
    /// This bank's own stock etcd; only the sidecar should be able to reach it.
    #[arg(long, default_value = "http://127.0.0.1:12379")]
    pub etcd_endpoint: String,
    /// Genesis file (protobuf `bftcd.v1.Genesis`). Default: <data-dir>/genesis.pb, created for a
    /// single-bank chain on first start.
    #[arg(long)]
    pub genesis: Option<PathBuf>,
    /// Every bank's signature over the genesis (a multi-bank chain starts only with all of
    /// them): a file from `bftcd genesis seal`, or a directory of the banks' `bftcd genesis
    /// sign` files. Default: the genesis's path with the extension `.sigs` (genesis.sigs).
    #[arg(long)]
    pub genesis_signatures: Option<PathBuf>,
    /// Chain id used when a single-bank genesis is created.
    #[arg(long, default_value = "bftcd-local")]
    pub chain_id: String,
    /// etcd version reported by Status (Kubernetes enables features from it).
    #[arg(long, default_value = "3.5.16")]
    pub emulated_etcd_version: String,
    /// Largest write request accepted, as etcd's --max-request-bytes (default 1.5 MiB). A
    /// chain-wide limit: written into a single-bank genesis this sidecar creates; with an
    /// existing genesis it must match the genesis's value (or be left out).
    #[arg(long)]
    pub max_request_bytes: Option<usize>,
    /// Most operations in one Txn level, as etcd's --max-txn-ops (default 128). Chain-wide,
    /// as --max-request-bytes.
    #[arg(long)]
    pub max_txn_ops: Option<usize>,
    /// This bank's key directory (`bftcd keygen`); needed when the genesis has several banks.
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// Address the peer (sidecar-to-sidecar, mutual TLS) listener binds; default: the genesis
    /// peer address of this bank.
    #[arg(long)]
    pub listen_peer: Option<SocketAddr>,
    /// How long a write waits to be ordered and applied before the client gets etcd's
    /// "request timed out" (its outcome is then unknown, as with etcd).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// How long a linearizable read waits for its read index and the local apply before the
    /// client gets etcd's "request timed out": what etcd's own request timeout is with its
    /// default election timeout (5 s + 2 x 1 s), so a bank cut off from a quorum fails reads
    /// as a partitioned etcd member does, instead of holding them.
    #[arg(long, default_value = "7s", value_parser = parse_duration)]
    pub read_timeout: Duration,
    /// How long a view may make no progress before validators give up on its leader (doubles
    /// after repeated failures). Every bank should use the same value.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub view_timeout: Duration,
    /// Apply mode written into a single-bank genesis this sidecar creates (a multi-bank chain
    /// fixes it in `bftcd genesis`): `batched` or `exact`. See docs/operations.md.
    #[arg(long, value_enum, default_value = "batched")]
    pub apply_mode: ApplyMode,
    /// Sign every unary KV and Lease answer (gRPC trailer `bftcd-answer-bin`) and every Watch
    /// and LeaseKeepAlive message (protobuf field 1000); stock clients ignore both:
    /// `--sign-answers=false` turns it off. Needs a multi-bank chain (the bank's
    /// operation key signs). See docs/auditing.md, "Signed answers".
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub sign_answers: bool,
    /// Blocks between full checks of the local etcd against the state digest (every key read
    /// at the block's revision, and the leases against the replicated table), in addition to
    /// following every change (docs/consensus.md, "State digest").
    #[arg(long, default_value_t = crate::apply::digest::FULL_CHECK_EVERY)]
    pub digest_full_check_every: u64,
    /// Serve Prometheus metrics on these URLs (comma-separated `http://IP:PORT`, as etcd's
    /// flag), at `/metrics`.
    #[arg(long)]
    pub listen_metrics_urls: Option<String>,
    /// Account this sidecar's CPU time by component (consensus, crypto, network, persistence,
    /// apply, front) and export it as `bftcd_cpu_nanoseconds_total`; costs about 2 % of the
    /// sidecar's CPU. Needs --listen-metrics-urls.
    #[arg(long, requires = "listen_metrics_urls")]
    pub account_cpu: bool,
    /// Client connections served at once; more are closed as soon as they are accepted.
    #[arg(long, default_value_t = 1024)]
    pub max_client_connections: usize,
    /// Client connections served at once from one source IPv4 address or IPv6 /64.
    #[arg(long, default_value_t = 256)]
    pub max_client_connections_per_ip: usize,
    /// HTTP/2 streams one client connection may have open (as etcd's flag; etcd's default is
    /// unlimited). Clients queue calls beyond it: kube-apiserver sends all its calls over one
    /// connection per etcd endpoint.
    #[arg(long, default_value_t = 1024)]
    pub max_concurrent_streams: u32,
    /// Calls one client connection may have in progress (streams count until they end); more
    /// get etcd's `too many requests`. At least --max-concurrent-streams by default, so that a
    /// client that keeps to HTTP/2's limit queues instead of being refused.
    #[arg(long, default_value_t = 1024)]
    pub client_max_in_flight: usize,
    /// Requests, and messages on streams, one client connection may send per second (bursts of
    /// one second's worth); more get etcd's `too many requests`.
    #[arg(long, default_value_t = 10_000)]
    pub client_requests_per_second: u32,
    /// Bytes the bank holds for one client connection on each side: requests still arriving,
    /// and answers and watch events not yet taken by the client.
    #[arg(long, default_value_t = 8 << 20)]
    pub client_max_buffered_bytes: usize,
    /// Bytes the bank holds for all clients together (requests, answers, watch events); beyond
    /// it a client gets only an equal share of it, so everything held stays within twice this.
    #[arg(long, default_value_t = 256 << 20)]
    pub client_max_buffered_bytes_total: usize,
    /// Watches one client connection may hold open.
    #[arg(long, default_value_t = 10_000)]
    pub client_max_watches: usize,
    /// Test builds only: misbehave (equivocate, bad-signatures, censor=<index>,
    /// panic-after=<steps>, withhold, no-votes, stale-reads, foreign-writes, forged-reads, wrong-digest; comma-separated).
    #[cfg(feature = "byzantine")]
    #[arg(long, default_value = "")]
    pub byzantine: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyMode {
    Batched,
    Exact,
}

impl ApplyMode {
    /// The genesis's `apply_batch_max`: 100 keeps a batch inside a stock etcd's default
    /// `--max-txn-ops` (128) with room for the bookkeeping Put.
    pub fn batch_max(self) -> u32 {
        match self {
            ApplyMode::Batched => 100,
            ApplyMode::Exact => 0,
        }
    }
}

/// `--listen-client`: a socket address, bare or as an etcd-style URL.
#[derive(Clone, Copy, Debug)]
pub struct ListenClient {
    pub addr: SocketAddr,
    /// `Some(true)` for `https://`, `Some(false)` for `http://`, `None` for a bare address.
    pub https: Option<bool>,
}

fn parse_listen_client(s: &str) -> Result<ListenClient, String> {
    let (https, rest) = match s.split_once("://") {
        None => (None, s),
        Some(("https", rest)) => (Some(true), rest),
        Some(("http", rest)) => (Some(false), rest),
        Some((scheme, _)) => return Err(format!("unsupported scheme {scheme:?} in {s:?} (http or https)")),
    };
    let addr = rest.strip_suffix('/').unwrap_or(rest).parse().map_err(|e| format!("{s:?}: {e} (IP:PORT, http://IP:PORT or https://IP:PORT)"))?;
    Ok(ListenClient { addr, https })
}

/// The client port's TLS from the flags, with the URL's scheme checked against them.
fn client_tls(args: &ServeArgs) -> anyhow::Result<Option<crate::front::tls::ClientTls>> {
    let files = crate::front::tls::TlsFiles {
        cert_file: args.cert_file.clone(),
        key_file: args.key_file.clone(),
        trusted_ca_file: args.trusted_ca_file.clone(),
        client_cert_auth: args.client_cert_auth,
    };
    let tls = crate::front::tls::ClientTls::load(&files)?;
    match (args.listen_client.https, tls.is_some()) {
        (Some(true), false) => anyhow::bail!(
            "--listen-client https://{} needs --cert-file and --key-file",
            args.listen_client.addr
        ),
        (Some(false), true) => anyhow::bail!(
            "--cert-file and --key-file turn TLS on, but --listen-client is http://{}; use https://{}",
            args.listen_client.addr,
            args.listen_client.addr
        ),
        _ => Ok(tls),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(s.trim().len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(60 * n)),
        _ => Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    }
}

/// The front's own misbehaviours (test builds only); the rest are the consensus core's.
#[cfg(feature = "byzantine")]
const FRONT_MISBEHAVIOURS: &[&str] = &["stale-reads", "foreign-writes", "forged-reads"];

/// Test builds only: `--byzantine stale-reads`, `foreign-writes` or `forged-reads`.
fn front_misbehaves(_args: &ServeArgs, _mode: &str) -> bool {
    #[cfg(feature = "byzantine")]
    return _args.byzantine.split(',').any(|m| m.trim() == _mode);
    #[cfg(not(feature = "byzantine"))]
    false
}

fn stale_reads_requested(args: &ServeArgs) -> bool {
    front_misbehaves(args, "stale-reads")
}

/// Reads the genesis, or creates a single-bank one when this bank starts for the first time.
fn load_genesis(args: &ServeArgs) -> anyhow::Result<Genesis> {
    let path = args.genesis.clone().unwrap_or_else(|| args.data_dir.join("genesis.pb"));
    match std::fs::read(&path) {
        Ok(bytes) => Genesis::decode(bytes.as_slice()).map_err(|e| anyhow::anyhow!("{}: not a genesis file: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.genesis.is_none() => {
            let mut genesis = Genesis {
                chain_id: args.chain_id.clone(),
                epoch: 1,
                validators: vec![Validator {
                    name: args.name.clone(),
                    client_address: args.listen_client.addr.to_string(),
                    ..Default::default()
                }],
                initial_state_digest: vec![],
                genesis_time_ms: crate::front::now_ms(),
                apply_batch_max: args.apply_mode.batch_max(),
                ..Default::default()
            };
            crate::chain::limits(args.max_request_bytes, args.max_txn_ops, None)?.write_to(&mut genesis);
            write_atomically(&path, &genesis.encode_to_vec())?;
            tracing::info!(path = %path.display(), chain_id = %genesis.chain_id, "created a single-bank genesis");
            Ok(genesis)
        }
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Before anything else: a bank must not come up in plaintext when TLS was meant.
    let tls = client_tls(&args)?;
    std::fs::create_dir_all(&args.data_dir)?;
    if let Some(urls) = &args.listen_metrics_urls {
        for addr in crate::metrics::start(&crate::metrics::parse_urls(urls)?, args.account_cpu).await? {
            tracing::info!(%addr, "serving metrics at /metrics");
        }
    }
    let genesis = load_genesis(&args)?;
    if genesis.validators.len() > 1 {
        // Before anything else reads the genesis: only one every bank signed is this chain's.
        let genesis_path = args
            .genesis
            .clone()
            .unwrap_or_else(|| args.data_dir.join("genesis.pb"));
        let sigs = args
            .genesis_signatures
            .clone()
            .unwrap_or_else(|| genesis_path.with_extension("sigs"));
        crate::chain::collect_signatures(&genesis, &[sigs])?;
        tracing::info!(genesis_hash = %hex::encode(bftcd_sequencer::genesis_hash(&genesis)), "every bank signed the genesis");
    }
    let limits = Limits::of(&genesis);
    limits.check().map_err(|e| anyhow::anyhow!("the genesis's limits: {e}"))?;
    let rules = bftcd_sequencer::governance::ChainRules::of(&genesis).map_err(|e| anyhow::anyhow!("the genesis's key owners: {e}"))?;
    for (flag, given, chain) in [
        ("--max-request-bytes", args.max_request_bytes, limits.max_request_bytes),
        ("--max-txn-ops", args.max_txn_ops, limits.max_txn_ops),
    ] {
        // Every bank checks every operation against the genesis; a bank with its own value
        // would accept what the others drop, or refuse what they order.
        anyhow::ensure!(
            given.is_none_or(|g| g == chain),
            "{flag}={} differs from the chain's genesis ({chain}); leave it out (the genesis decides it for every bank)",
            given.unwrap_or_default()
        );
    }
    let mut identity = Identity::new(&genesis, &args.name)?;
    if tls.is_some() {
        identity.serve_https();
    }
    let identity = Arc::new(identity);
    let ledger_path = args.data_dir.join("ledger.log");
    let ledger = {
        let (p, g) = (ledger_path.clone(), genesis.clone());
        Arc::new(tokio::task::spawn_blocking(move || Ledger::open(&p, &g)).await??)
    };
    tracing::info!(
        bank = %args.name, chain_id = %genesis.chain_id, ledger = %ledger_path.display(),
        height = ledger.height(), etcd = %args.etcd_endpoint, "starting"
    );
    let etcd = LocalEtcd::connect_lazy(&args.etcd_endpoint)?;
    // Before joining: a bank whose etcd refuses what the chain allows would stop applying.
    crate::probe::check(&etcd, &limits, genesis.apply_batch_max).await?;
    crate::corrupt::check_at_start(&etcd).await?;
    crate::migrate::check_genesis(&genesis)?;
    if crate::migrate::is_imported(&genesis) {
        // First: the restored etcd runs the snapshot's leases on its own clock meanwhile.
        tokio::spawn(crate::migrate::keep_imported_leases(etcd.clone(), genesis.clone()));
        crate::migrate::check_at_start(&etcd, &genesis, &args.data_dir).await?;
    }
    let mut consensus_status = None;
    let mut network = None;
    let checkpoints;
    // Ends the process when ordering dies: a bank that cannot order must not look healthy.
    let mut ordering_stopped: std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>> =
        Box::pin(std::future::pending());
    let sequencer: Arc<dyn Sequencer> = if genesis.validators.len() == 1 {
        let (_, no_peers) = tokio::sync::mpsc::channel(1);
        let domain = bftcd_sequencer::consensus::Domain { chain_id: genesis.chain_id.clone(), epoch: genesis.epoch, n: 1 };
        let committed = ledger.clone();
        checkpoints = bftcd_sequencer::checkpoint::start(
            bftcd_sequencer::checkpoint::Setup {
                domain,
                me: 0,
                crypto: None,
                network: None,
                data_dir: args.data_dir.clone(),
                committed: Arc::new(move || committed.committed_height()),
                wrong_digest: false,
            },
            no_peers,
        )?;
        Arc::new(SingleReplica::start(ledger.clone(), BlockLimits { max_bytes: limits.max_block_bytes, ..BlockLimits::default() }))
    } else {
        let keys_dir = args.keys.clone().ok_or_else(|| anyhow::anyhow!("--keys is required: the genesis lists {} banks", genesis.validators.len()))?;
        let keys = BankKeys::load(&keys_dir)?;
        let me = identity.bank as usize;
        let listen_peer = match args.listen_peer {
            Some(a) => a,
            None => genesis.validators[me]
                .peer_address
                .parse()
                .map_err(|e| anyhow::anyhow!("genesis peer address {:?}: {e}; pass --listen-peer", genesis.validators[me].peer_address))?,
        };
        let opts = HotStuffOptions {
            me,
            data_dir: args.data_dir.clone(),
            listen_peer,
            view_timeout: args.view_timeout,
            #[cfg(feature = "byzantine")]
            misbehaviour: bftcd_sequencer::byzantine::parse(
                &args.byzantine.split(',').filter(|m| !FRONT_MISBEHAVIOURS.contains(&m.trim())).collect::<Vec<_>>().join(","),
            )
            .map_err(|e| anyhow::anyhow!(e))?,
        };
        #[cfg(feature = "byzantine")]
        if !opts.misbehaviour.is_empty() {
            tracing::warn!(misbehaviour = ?opts.misbehaviour, "THIS BANK IS BYZANTINE (test build)");
        }
        if args.sign_answers {
            let crypto = bftcd_sequencer::keys::ChainCrypto::new(&keys, &genesis)?;
            crate::front::answers::start(Arc::new(crypto), genesis.chain_id.clone(), genesis.epoch, me as u32);
        }
        #[cfg(feature = "byzantine")]
        if front_misbehaves(&args, "forged-reads") {
            tracing::warn!("THIS BANK FORGES THE VALUES IN ITS RANGE ANSWERS, AND SIGNS THEM (test build)");
            crate::front::answers::FORGE_READS.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let hs = HotStuff::start(&genesis, &keys, ledger.clone(), opts).await?;
        tracing::info!(banks = genesis.validators.len(), peer = %listen_peer, "ordering with HotStuff-2");
        consensus_status = Some(hs.status());
        network = Some(hs.network().clone());
        checkpoints = hs.checkpoints().clone();
        ordering_stopped = Box::pin(hs.stopped());
        Arc::new(hs)
    };
    // From the genesis: every bank must batch identically, or revisions would differ.
    let batching = (genesis.apply_batch_max > 0)
        .then(|| crate::apply::BatchLimits { max_operations: genesis.apply_batch_max as usize, ..Default::default() });
    let mut applier = Applier::new(etcd.clone(), ledger.clone(), identity.clone(), &args.data_dir, batching, rules);
    let (digests, block_ends) = tokio::sync::mpsc::channel(4096);
    applier.digests = Some(digests);
    applier.full_check_every = args.digest_full_check_every.max(1);
    let tracker = crate::apply::digest::Tracker::new(&etcd)?;
    if let Some(events) = checkpoints.events() {
        tokio::spawn(crate::apply::digest::on_checkpoint_events(events, tracker.changes(), etcd.clone()).accounted(Component::Apply));
    }
    tokio::spawn(tracker.run(block_ends, crate::apply::digest::to_checkpoints(checkpoints.clone())).accounted(Component::Apply));
    let stale_reads = stale_reads_requested(&args);
    if stale_reads {
        tracing::warn!("THIS BANK SERVES STALE READS (test build): no read index, apply 300 ms late");
        applier.lag = Duration::from_millis(300);
    }
    let applier = Arc::new(applier);
    let mut apply_task = tokio::spawn(applier.clone().run().accounted(Component::Apply));

    // Serve only once the local etcd reflects every committed block, so the first read after a
    // restart is not older than writes acknowledged before it.
    let last_op = last_operation(&ledger);
    let mut applied = applier.applied();
    // Progress every 2 s whether or not blocks are being applied (a timer restarted by every
    // applied block would only speak when the replay stalls).
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(2), Duration::from_secs(2));
    while !last_op.is_none_or(|last| applied.borrow().is_some_and(|a| a >= last)) {
        tokio::select! {
            r = applied.changed() => { if r.is_err() { break; } }
            r = &mut apply_task => { return Err(r?.err().unwrap_or_else(|| anyhow::anyhow!("apply engine stopped"))); }
            why = &mut ordering_stopped => return Err(ordering_died(why)),
            _ = progress.tick() => {
                let at = applied.borrow().map(|p| p.height).unwrap_or(0);
                let to = last_op.map(|p| p.height).unwrap_or(0);
                let percent = at.saturating_mul(100).checked_div(to).unwrap_or(100);
                tracing::info!(applied = ?applied.borrow().map(|p| p.to_string()), target = ?last_op.map(|p| p.to_string()),
                    "replaying the ledger into the local etcd: block {at} of {to}, {percent} %");
            }
        }
    }

    tokio::spawn(
        crate::health::run(crate::health::Sources {
            consensus: consensus_status.clone().zip(network),
            banks: genesis.validators.len(),
            names: genesis.validators.iter().map(|v| v.name.clone()).collect(),
            ledger: ledger.clone(),
            applied: applier.applied_height(),
            etcd: etcd.clone(),
        })
        .accounted(Component::Front),
    );
    let mut writes = Writes::new(sequencer.clone(), applier.clone(), identity.bank, &args.data_dir, limits, args.write_timeout)?;
    // Test builds only: order writes under other banks' prefixes, as a Byzantine bank would.
    if front_misbehaves(&args, "foreign-writes") {
        writes.check_owners = false;
        tracing::warn!("THIS BANK SUBMITS WRITES TO OTHER BANKS' KEYS (test build)");
    }
    let front = Arc::new(Front {
        etcd,
        writes,
        identity,
        ledger,
        applier,
        sequencer,
        read_timeout: args.read_timeout,
        stale_reads,
        keep_alives: Default::default(),
        max_txn_ops: limits.max_txn_ops,
        emulated_version: args.emulated_etcd_version.clone(),
        max_recv_bytes: limits.max_request_bytes + 512 * 1024,
        consensus: consensus_status,
        defrag: Default::default(),
        snapshots: Arc::new(tokio::sync::Semaphore::new(crate::front::MAX_SNAPSHOTS)),
        tokens: Default::default(),
    });
    tokio::spawn(crate::expiry::run(front.clone()).accounted(Component::Front));
    crate::admin::serve(&args.data_dir, front.clone())?;
    let listener = TcpListener::bind(args.listen_client.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen_client.addr))?;
    let local = listener.local_addr()?;
    let client_limits = client_limits(&args, front.max_recv_bytes)?;
    let https = tls.is_some();
    let incoming = crate::front::conns::incoming(listener, client_limits, tls);
    let server = tonic::transport::Server::builder()
        // etcd's JSON gateway: HTTP/1.1 (and non-gRPC HTTP/2) on the same port, turned into
        // gRPC requests that go through every layer below (docs/compatibility.md).
        .accept_http1(true)
        .layer(crate::front::gateway::GatewayLayer::new(front.emulated_version.clone(), front.max_recv_bytes))
        // Counts every gRPC call (the gateway's included), those the limits refuse too.
        .layer(crate::front::grpc_metrics::GrpcMetricsLayer)
        // An answer is signed once the client limits have let it through (what they refuse is
        // an error, never signed), so no answer waits for the signer uncharged.
        .layer(crate::front::answers::AnswerSigningLayer)
        .layer(crate::front::limits::ClientLimitLayer)
        .layer(crate::front::FrontCpu)
        // etcd's server keepalive: ping idle clients every 2 h, tolerate client pings (5 s and up).
        .http2_keepalive_interval(Some(Duration::from_secs(7200)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(client_limits.max_concurrent_streams)
        // What a client may make the bank hold of a request not yet read: 1 MiB per stream and
        // per connection (hyper's defaults, fixed here so that the bound is ours).
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(1 << 20)
        // Metadata is small (a method, a deadline, etcd's hasleader, a token); 64 KiB is ample.
        .http2_max_header_list_size(64 << 10)
        .add_routes(front.routes())
        .serve_with_incoming_shutdown(incoming, shutdown_signal());
    if https {
        println!("READY https://{local}");
        std::io::stdout().flush()?;
        tracing::info!(client = %local, client_cert_auth = args.trusted_ca_file.is_some(), "serving the etcd v3 API over TLS");
    } else {
        println!("READY {local}");
        std::io::stdout().flush()?;
        tracing::info!(client = %local, "serving the etcd v3 API");
    }
    tokio::select! {
        r = server => r?,
        r = apply_task => return Err(r?.err().unwrap_or_else(|| anyhow::anyhow!("apply engine stopped"))),
        why = ordering_stopped => return Err(ordering_died(why)),
    }
    tracing::info!("stopped");
    Ok(())
}

fn client_limits(args: &ServeArgs, max_recv_bytes: usize) -> anyhow::Result<crate::front::limits::ClientLimits> {
    for (flag, value) in [
        ("--max-client-connections", args.max_client_connections),
        ("--max-client-connections-per-ip", args.max_client_connections_per_ip),
        ("--max-concurrent-streams", args.max_concurrent_streams as usize),
        ("--client-max-in-flight", args.client_max_in_flight),
        ("--client-requests-per-second", args.client_requests_per_second as usize),
        ("--client-max-buffered-bytes", args.client_max_buffered_bytes),
        ("--client-max-buffered-bytes-total", args.client_max_buffered_bytes_total),
    ] {
        anyhow::ensure!(value > 0, "{flag} must be at least 1");
    }
    Ok(crate::front::limits::ClientLimits {
        max_connections: args.max_client_connections,
        max_connections_per_ip: args.max_client_connections_per_ip,
        max_concurrent_streams: args.max_concurrent_streams,
        max_in_flight: args.client_max_in_flight,
        requests_per_second: args.client_requests_per_second,
        max_buffered_bytes: args.client_max_buffered_bytes,
        max_watches: args.client_max_watches,
        max_buffered_bytes_total: args.client_max_buffered_bytes_total,
        max_recv_bytes,
    })
}

fn ordering_died(why: String) -> anyhow::Error {
    tracing::error!(reason = %why, "ordering stopped: this bank can no longer order writes; exiting so that it can be restarted");
    anyhow::anyhow!("ordering stopped ({why}); restart this bank: it catches up from the others")
}

/// Position of the last operation in the ledger (blocks may be empty).
fn last_operation(ledger: &Ledger) -> Option<bftcd_sequencer::Position> {
    (1..=ledger.height()).rev().find_map(|h| {
        let n = ledger.read(h).ok()?.block?.operations.len();
        (n > 0).then(|| bftcd_sequencer::Position { height: h, index: n as u32 - 1 })
    })
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::parse_listen_client;

    #[test]
    fn listen_client_takes_an_address_or_an_etcd_style_url() {
        let bare = parse_listen_client("127.0.0.1:2379").unwrap();
        assert_eq!((bare.addr.to_string().as_str(), bare.https), ("127.0.0.1:2379", None));
        let https = parse_listen_client("https://0.0.0.0:2379/").unwrap();
        assert_eq!((https.addr.to_string().as_str(), https.https), ("0.0.0.0:2379", Some(true)));
        let http = parse_listen_client("http://[::1]:2379").unwrap();
        assert_eq!((http.addr.to_string().as_str(), http.https), ("[::1]:2379", Some(false)));
        assert!(parse_listen_client("unix://socket").unwrap_err().contains("unsupported scheme"));
        assert!(parse_listen_client("https://localhost:2379").is_err());
    }
}
