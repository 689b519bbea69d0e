//! `bftcd dev-cluster`: a whole local deployment on loopback for trying BFTcd and for tests.
//!
//! Port layout for `--base-port P` and bank i (1-based):
//!   P+i      the bank's etcd v3 client endpoint (the sidecar)
//!   P+100+i  the bank's stock etcd, client URL (only the sidecar talks to it)
//!   P+200+i  the bank's stock etcd, peer URL (a single-member etcd; nothing connects)
//!   P+300+i  the bank's sidecar peer endpoint (HotStuff-2 over mutual TLS), when N > 1
//!   P+400+i  the bank's sidecar metrics listener (`/metrics`, `/health`, `/livez`, `/readyz`)
//! Once every bank serves it prints `READY <client endpoints>`, then `METRICS <metrics URLs>`.
//! Logs and data go to DIR/bank<i>/{etcd.log,bftcd.log,etcd/,sidecar/,keys/}; with several
//! banks the genesis is DIR/genesis.pb and every bank's signature over it DIR/genesis.sigs/
//! (the whole ceremony, made on the first run: each bank's keys are its own, no CA). With
//! --client-tls the client ports' CA and certificates are in DIR/clients.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};


#[derive(clap::Args, Debug)]
pub struct DevClusterArgs {
    /// Number of banks; 4 (n = 3f+1, f = 1) is the smallest that tolerates a Byzantine bank.
    #[arg(long, default_value_t = 4)]
    pub banks: u32,
    /// Directory for every bank's data and logs (created; reused across runs).
    #[arg(long)]
    pub dir: PathBuf,
    /// Bank i serves clients on 127.0.0.1:(base-port + i); the default puts bank 1 on etcd's
    /// usual 2379, so a plain `etcdctl` talks to it.
    #[arg(long, default_value_t = 2378)]
    pub base_port: u16,
    /// Stock etcd binary (default: $BFTCD_ETCD_BIN, tools/bin, PATH).
    #[arg(long)]
    pub etcd_bin: Option<PathBuf>,
    /// Interval of periodic watch progress notifications (the banks' etcds serve watches;
    /// Kubernetes clusters commonly use 5s, etcd's own default is 10m).
    #[arg(long, default_value = "5s")]
    pub watch_progress_notify_interval: String,
    /// The chain's largest client write (default 1.5 MiB, etcd's); every bank's etcd is
    /// started with 64 KiB more.
    #[arg(long)]
    pub max_request_bytes: Option<usize>,
    /// The chain's most operations per Txn level (default 128, etcd's); every bank's etcd is
    /// started with what the sidecar adds on top (probe::required).
    #[arg(long)]
    pub max_txn_ops: Option<usize>,
    /// Serve every bank's client port over TLS with client certificate auth: makes a CA and
    /// certificates in DIR/clients (ca.pem; admin.pem and bank<i>.pem client certificates with
    /// their -key.pem; bank<i>-server.pem for the banks) and prints the etcdctl line to use.
    #[arg(long)]
    pub client_tls: bool,
    /// Start the chain from this etcd snapshot (`etcdctl snapshot save`): the genesis is made
    /// from it and every bank's etcd is restored from it on the first run (docs/migration.md).
    #[arg(long, value_name = "FILE")]
    pub initial_snapshot: Option<PathBuf>,
    /// Extra arguments for every sidecar (repeatable), e.g. --serve-arg=--write-timeout=60s.
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
}

struct Proc {
    what: String,
    child: Child,
}

async fn stop_all(procs: &mut [Proc]) {
    // Sidecars first (they were started last), then their etcds.
    for p in procs.iter_mut().rev() {
        if let Some(pid) = p.child.id() {
            // SAFETY: plain kill(2) on a child we own.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await.is_err() {
            tracing::warn!("dev-cluster: {} did not stop in 10 s; killing it", p.what);
            let _ = p.child.kill().await;
        }
    }
}

/// The whole genesis ceremony for every bank, done once and reused by later runs: keys (each
/// bank's own, self-signed TLS certificate), the genesis (timed at the first run), and every
/// bank's signature over it in `genesis.sigs/`.
async fn prepare_chain(dir: &std::path::Path, args: &DevClusterArgs) -> anyhow::Result<()> {
    use bftcd_proto::Message;
    let genesis_path = dir.join("genesis.pb");
    let bank_keys = |i: u32| dir.join(format!("bank{i}")).join("keys");
    let genesis = if genesis_path.exists() {
        let g = bftcd_proto::bftcd::Genesis::decode(std::fs::read(&genesis_path)?.as_slice())?;
        anyhow::ensure!(
            g.validators.len() == args.banks as usize,
            "{} was made for {} banks, not {}; use another --dir",
            genesis_path.display(),
            g.validators.len(),
            args.banks
        );
        if let Err(e) = bftcd_sequencer::keys::check_genesis(&g) {
            anyhow::bail!(
                "{} was made by an older bftcd whose formats this one no longer reads ({e}); \
                 remove {} or use another --dir",
                genesis_path.display(),
                dir.display()
            );
        }
        g
    } else {
        let mut validators = Vec::new();
        for i in 1..=args.banks {
            let keys = bank_keys(i);
            let peer = format!("127.0.0.1:{}", args.base_port as u32 + 300 + i);
            let client = format!("127.0.0.1:{}", args.base_port as u32 + i);
            let v = if keys.join("validator.pb").exists() {
                bftcd_proto::bftcd::Validator::decode(
                    std::fs::read(keys.join("validator.pb"))?.as_slice(),
                )?
            } else {
                bftcd_sequencer::keys::generate(&keys, &format!("bank{i}"), &peer, &client)?
            };
            validators.push(v);
        }
        let limits = crate::chain::limits(args.max_request_bytes, args.max_txn_ops, None)?;
        let now = crate::front::now_ms();
        let mut g = crate::chain::make_genesis(
            "bftcd-dev",
            validators,
            now,
            crate::serve::ApplyMode::Batched,
            limits,
        )?;
        if let Some(file) = &args.initial_snapshot {
            let snap = crate::migrate::read_snapshot(file, args.etcd_bin.as_deref()).await?;
            crate::migrate::write_into(&mut g, &snap)?;
            tracing::info!(revision = snap.revision, keys = snap.key_count, leases = snap.leases.len(), "dev-cluster: the chain starts from {}", file.display());
        }
        std::fs::write(&genesis_path, g.encode_to_vec())?;
        tracing::info!("dev-cluster: made keys and a genesis for {} banks in {}", args.banks, dir.display());
        g
    };
    // Each bank signs (again, when an older run left no signatures: its keys are all here).
    let sigs_dir = genesis_path.with_extension("sigs");
    if crate::chain::collect_signatures(&genesis, std::slice::from_ref(&sigs_dir)).is_err() {
        std::fs::create_dir_all(&sigs_dir)?;
        for i in 1..=args.banks {
            let keys = bftcd_sequencer::keys::BankKeys::load(&bank_keys(i))?;
            let sig = bftcd_sequencer::ceremony::sign(&keys, &genesis)
                .map_err(|e| anyhow::anyhow!("bank{i}: {e}"))?;
            std::fs::write(sigs_dir.join(format!("bank{i}.sig")), sig.encode_to_vec())?;
        }
        crate::chain::collect_signatures(&genesis, std::slice::from_ref(&sigs_dir))?;
    }
    if let Some(file) = &args.initial_snapshot {
        crate::migrate::check_file(&genesis, file).map_err(|e| {
            anyhow::anyhow!("{} (made by an earlier run): {e}; use another --dir for another snapshot", genesis_path.display())
        })?;
    }
    Ok(())
}

pub async fn run(args: DevClusterArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.banks >= 1, "--banks must be at least 1");
    anyhow::ensure!(args.banks <= 99, "--banks must be at most 99");
    anyhow::ensure!((args.base_port as u32) + 400 + args.banks < 65536, "--base-port too high for {} banks", args.banks);
    let etcd_bin = crate::tools::find("etcd", args.etcd_bin.as_deref())?;
    let bftcd_bin = std::env::current_exe()?;
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;

    let genesis_path = dir.join("genesis.pb");
    // A chain from a snapshot has a genesis made here even for one bank (one bank's sidecar
    // otherwise makes its own, from an empty store).
    let made_here = args.banks > 1 || args.initial_snapshot.is_some();
    if made_here {
        prepare_chain(&dir, &args).await?;
    }
    // Each bank's etcd gets exactly the room the chain's limits need (the sidecar proves it
    // at start): from the genesis, or, for one bank, from the genesis its sidecar made.
    let genesis_file = if made_here { genesis_path.clone() } else { dir.join("bank1").join("sidecar").join("genesis.pb") };
    let (limits, batch_max) = match std::fs::read(&genesis_file) {
        Ok(bytes) => {
            let g = <bftcd_proto::bftcd::Genesis as bftcd_proto::Message>::decode(bytes.as_slice())?;
            (bftcd_sequencer::validity::Limits::of(&g), g.apply_batch_max)
        }
        Err(_) => (crate::chain::limits(args.max_request_bytes, args.max_txn_ops, None)?, crate::serve::ApplyMode::Batched.batch_max()),
    };
    let (etcd_bytes, etcd_ops) = crate::probe::required(&limits, batch_max);
    let etcd_bytes = etcd_bytes + 1024; // the probe's request plus etcd's own request header
    let mut single_bank_limits = Vec::new();
    if args.banks == 1 {
        single_bank_limits.extend(args.max_request_bytes.map(|b| format!("--max-request-bytes={b}")));
        single_bank_limits.extend(args.max_txn_ops.map(|n| format!("--max-txn-ops={n}")));
    }

    let clients_dir = dir.join("clients");
    if args.client_tls {
        let banks: Vec<String> = (1..=args.banks).map(|i| format!("bank{i}")).collect();
        let clients: Vec<String> = std::iter::once("admin".to_string()).chain(banks.iter().cloned()).collect();
        crate::clientcerts::make(&clients_dir, &clients, &banks)?;
    }
    // Each bank's client port: plaintext, or TLS that requires a certificate from the CA.
    let client_port_args = |name: &str, port: u32| -> Vec<String> {
        if !args.client_tls {
            return vec![format!("--listen-client=127.0.0.1:{port}")];
        }
        let file = |f: String| clients_dir.join(f).display().to_string();
        vec![
            format!("--listen-client=https://127.0.0.1:{port}"),
            format!("--cert-file={}", file(format!("{name}-server.pem"))),
            format!("--key-file={}", file(format!("{name}-server-key.pem"))),
            format!("--trusted-ca-file={}", file("ca.pem".into())),
            "--client-cert-auth".to_string(),
        ]
    };

    let mut sidecar_env = crate::config::env_names_of::<crate::Cli>("serve");
    sidecar_env.push(crate::config::env_name("config-file"));

    let mut procs: Vec<Proc> = Vec::new();
    let mut endpoints = Vec::new();
    let mut metrics_urls = Vec::new();
    let started = async {
        for i in 1..=args.banks {
            let name = format!("bank{i}");
            let bank_dir = dir.join(&name);
            std::fs::create_dir_all(&bank_dir)?;
            let client = args.base_port as u32 + i;
            let etcd_client = format!("http://127.0.0.1:{}", args.base_port as u32 + 100 + i);
            let etcd_peer = format!("http://127.0.0.1:{}", args.base_port as u32 + 200 + i);
            let metrics_url = format!("http://127.0.0.1:{}", args.base_port as u32 + 400 + i);

            if let (Some(file), false) = (&args.initial_snapshot, bank_dir.join("etcd").exists()) {
                let etcdutl = crate::tools::find("etcdutl", Some(&etcd_bin))?;
                crate::migrate::etcdutl_restore(&etcdutl, file, &bank_dir.join("etcd"), &name, &etcd_peer).await?;
                tracing::info!("dev-cluster: {name}'s etcd restored from {}", file.display());
            }
            let etcd_log_path = bank_dir.join("etcd.log");
            let etcd = crate::tools::OneEtcd {
                bin: &etcd_bin,
                name: &name,
                data_dir: &bank_dir.join("etcd"),
                client: &etcd_client,
                peer: &etcd_peer,
                log: &etcd_log_path,
                // The chain's limits plus room for the sidecar's bookkeeping.
                extra: vec![
                    format!("--max-request-bytes={etcd_bytes}"),
                    format!("--max-txn-ops={etcd_ops}"),
                    format!("--experimental-watch-progress-notify-interval={}", args.watch_progress_notify_interval),
                ],
            }
            .start()
            .await?;
            procs.push(Proc { what: format!("{name} etcd"), child: etcd });

            let log_path = bank_dir.join("bftcd.log");
            let log = std::fs::File::create(&log_path)?;
            let mut sidecar = Command::new(&bftcd_bin);
            // Each sidecar is configured by the flags below only: dev-cluster's own variables
            // and config file (BFTCD_DIR, BFTCD_CONFIG_FILE, ...) are not the sidecars'.
            for name in sidecar_env.iter() {
                sidecar.env_remove(name);
            }
            let mut sidecar = sidecar
                .arg("serve")
                .args(crate::logging::child_args())
                .arg(format!("--name={name}"))
                .arg(format!("--data-dir={}", bank_dir.join("sidecar").display()))
                .args(client_port_args(&name, client))
                .arg(format!("--etcd-endpoint={etcd_client}"))
                .arg(format!("--listen-metrics-urls={metrics_url}"))
                .args(if made_here {
                    vec![format!("--genesis={}", genesis_path.display()), format!("--keys={}", bank_dir.join("keys").display())]
                } else {
                    vec![]
                })
                .args(&single_bank_limits)
                .args(&args.serve_args)
                .stdout(Stdio::piped())
                .stderr(log)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .spawn()?;
            let stdout = sidecar.stdout.take().expect("piped stdout");
            let mut lines = BufReader::new(stdout).lines();
            let ready = tokio::time::timeout(Duration::from_secs(60), async {
                while let Some(line) = lines.next_line().await? {
                    if let Some(ep) = line.strip_prefix("READY ") {
                        return Ok::<_, anyhow::Error>(ep.to_string());
                    }
                }
                anyhow::bail!("{name} sidecar exited before serving; see {}", log_path.display())
            })
            .await
            .map_err(|_| anyhow::anyhow!("{name} sidecar did not serve within 60 s; see {}", log_path.display()))??;
            procs.push(Proc { what: format!("{name} sidecar"), child: sidecar });
            tracing::info!("dev-cluster: {name} serves on {ready} (etcd {etcd_client}, logs in {})", bank_dir.display());
            endpoints.push(ready);
            metrics_urls.push(metrics_url);
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = started {
        stop_all(&mut procs).await;
        return Err(e);
    }
    println!("READY {}", endpoints.join(","));
    println!("METRICS {}", metrics_urls.join(","));
    if args.client_tls {
        let file = |f: &str| clients_dir.join(f).display().to_string();
        println!(
            "ETCDCTL_API=3 etcdctl --endpoints={} --cacert {} --cert {} --key {}",
            endpoints.join(","),
            file("ca.pem"),
            file("admin.pem"),
            file("admin-key.pem")
        );
    }
    use std::io::Write;
    std::io::stdout().flush()?;

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let died = async {
        loop {
            for p in procs.iter_mut() {
                if let Ok(Some(status)) = p.child.try_wait() {
                    return format!("{} exited ({status})", p.what);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let outcome = tokio::select! {
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
        what = died => Err(anyhow::anyhow!("{what}; stopping the cluster (logs in {})", dir.display())),
    };
    tracing::info!("dev-cluster: stopping");
    stop_all(&mut procs).await;
    outcome
}
