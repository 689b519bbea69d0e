//! A chain of n banks on loopback: per bank a stock etcd and a sidecar, with keys, a genesis and
//! every bank's signature over it made by the real `bftcd keygen`, `bftcd genesis` and `bftcd
//! genesis sign` commands (the genesis ceremony).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::dir::TestDir;
use crate::etcd::EtcdProcess;
use crate::etcdctl::Etcdctl;
use crate::ports;
use crate::sidecar::{Sidecar, BANK_ETCD_ARGS};
use crate::tls::ClientCerts;

pub struct Bank {
    pub name: String,
    pub etcd: EtcdProcess,
    pub sidecar: Sidecar,
    /// The port its sidecar accepts other banks' peer connections on (127.0.0.1).
    pub peer_port: u16,
    /// `IP:PORT` of the sidecar's metrics listener, when it was started with one.
    pub metrics: Option<String>,
}

pub struct Chain {
    pub banks: Vec<Bank>,
    pub genesis: PathBuf,
    /// With client TLS: the CA and certificates every bank's client port uses
    /// (`admin`, `bank<i>` clients; `bank<i>` servers).
    pub client_certs: Option<ClientCerts>,
}

/// One bank run by another binary (the Byzantine test build) with extra arguments.
pub struct Deviant {
    pub bank: usize,
    pub bin: PathBuf,
    pub args: Vec<String>,
}

/// Milliseconds since the Unix epoch: the genesis time of a test chain.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn bftcd(args: &[String]) {
    crate::bins::bftcd_ok(args);
}

impl Chain {
    pub fn start(dir: &TestDir, n: usize) -> Chain {
        Self::start_with(dir, n, None)
    }

    pub fn start_with(dir: &TestDir, n: usize, deviant: Option<Deviant>) -> Chain {
        Self::start_prefixed(dir, n, deviant.into_iter().collect(), "", false, &[])
    }

    /// A chain whose genesis is made with extra `bftcd genesis` arguments (e.g. `--key-owner`).
    pub fn start_with_genesis(dir: &TestDir, n: usize, deviants: Vec<Deviant>, genesis_args: &[&str]) -> Chain {
        Self::start_prefixed(dir, n, deviants, "", false, genesis_args)
    }

    /// Every bank serves its clients over TLS with client certificate auth; certificates from
    /// `bftcd client-certs` in `<dir>/clients` (see [`Chain::client_certs`]).
    pub fn start_client_tls(dir: &TestDir, n: usize) -> Chain {
        let banks: Vec<String> = (1..=n).map(|i| format!("bank{i}")).collect();
        let names: Vec<&str> = banks.iter().map(|s| s.as_str()).collect();
        let clients: Vec<&str> = std::iter::once("admin").chain(names.iter().copied()).collect();
        let certs = ClientCerts::make(&dir.join("clients"), &clients, &names);
        Self::start_inner(dir, n, Vec::new(), "", false, Some(certs), &[], BANK_ETCD_ARGS)
    }

    /// A chain whose etcds run with these arguments instead of [`BANK_ETCD_ARGS`] (e.g. a short
    /// progress notify interval).
    pub fn start_with_etcd_args(dir: &TestDir, n: usize, etcd_args: &[&str]) -> Chain {
        Self::start_inner(dir, n, Vec::new(), "", false, None, &[], etcd_args)
    }

    /// Several banks run by other binaries (at most one [`Deviant`] per bank), e.g. every bank
    /// in a cgroup of its own so that any of them can be cut off later.
    pub fn start_with_all(dir: &TestDir, n: usize, deviants: Vec<Deviant>) -> Chain {
        Self::start_prefixed(dir, n, deviants, "", false, &[])
    }

    /// A chain whose files and process names start with `prefix`, so that several chains can
    /// share one directory (the benchmark runs four and seven banks side by side). With
    /// `account_cpu`, every sidecar serves metrics and accounts its CPU by component.
    pub fn start_named(dir: &TestDir, n: usize, prefix: &str, account_cpu: bool) -> Chain {
        Self::start_prefixed(dir, n, Vec::new(), prefix, account_cpu, &[])
    }

    /// [`Chain::start_named`] with one bank run by another binary (the benchmark's fault
    /// targets: a Byzantine build, or bftcd inside a cgroup of its own so it can be cut off).
    pub fn start_named_with(dir: &TestDir, n: usize, prefix: &str, account_cpu: bool, deviant: Option<Deviant>) -> Chain {
        Self::start_prefixed(dir, n, deviant.into_iter().collect(), prefix, account_cpu, &[])
    }

    fn start_prefixed(dir: &TestDir, n: usize, deviants: Vec<Deviant>, prefix: &str, account_cpu: bool, genesis_args: &[&str]) -> Chain {
        Self::start_inner(dir, n, deviants, prefix, account_cpu, None, genesis_args, BANK_ETCD_ARGS)
    }

    #[allow(clippy::too_many_arguments)] // private; each public constructor fixes most of them
    fn start_inner(
        dir: &TestDir,
        n: usize,
        deviants: Vec<Deviant>,
        prefix: &str,
        account_cpu: bool,
        client_certs: Option<ClientCerts>,
        genesis_args: &[&str],
        etcd_args: &[&str],
    ) -> Chain {
        let client_ports: Vec<u16> = (0..n).map(|_| ports::free_port()).collect();
        let peer_ports: Vec<u16> = (0..n).map(|_| ports::free_port()).collect();
        let mut descriptors = Vec::new();
        for i in 0..n {
            let keys = dir.join(format!("{prefix}keys/bank{}", i + 1));
            bftcd(&[
                "keygen".into(),
                format!("--name={prefix}bank{}", i + 1),
                format!("--dir={}", keys.display()),
                format!("--peer-address=127.0.0.1:{}", peer_ports[i]),
                format!("--client-address=127.0.0.1:{}", client_ports[i]),
            ]);
            descriptors.push(keys.join("validator.pb").display().to_string());
        }
        let genesis = dir.join(format!("{prefix}genesis.pb"));
        let mut args = vec![
            "genesis".into(),
            "--chain-id=test-chain".into(),
            format!("--genesis-time={}", now_ms()),
            format!("--out={}", genesis.display()),
        ];
        args.extend(genesis_args.iter().map(|a| a.to_string()));
        args.extend(descriptors);
        bftcd(&args);
        // Every bank signs; `serve` finds the signatures next to the genesis (<genesis>.sigs/).
        let sigs = genesis.with_extension("sigs");
        std::fs::create_dir_all(&sigs).unwrap();
        for i in 0..n {
            bftcd(&[
                "genesis".into(),
                "sign".into(),
                format!("--genesis={}", genesis.display()),
                format!(
                    "--keys={}",
                    dir.join(format!("{prefix}keys/bank{}", i + 1)).display()
                ),
                format!(
                    "--out={}",
                    sigs.join(format!("bank{}.sig", i + 1)).display()
                ),
            ]);
        }
        let mut banks = Vec::new();
        for i in 0..n {
            let name = format!("{prefix}bank{}", i + 1);
            let etcd = EtcdProcess::start_with_args(dir, &format!("{name}-etcd"), etcd_args);
            let mut extra = vec![
                format!("--genesis={}", genesis.display()),
                format!("--keys={}", dir.join(format!("{prefix}keys/bank{}", i + 1)).display()),
                format!("--listen-peer=127.0.0.1:{}", peer_ports[i]),
                "--write-timeout=20s".to_string(),
            ];
            if let Some(certs) = &client_certs {
                extra.extend(certs.serve_args(&format!("bank{}", i + 1)));
            }
            let metrics = account_cpu.then(|| format!("127.0.0.1:{}", ports::free_port()));
            if let Some(m) = &metrics {
                extra.push(format!("--listen-metrics-urls=http://{m}"));
                extra.push("--account-cpu".to_string());
            }
            let mut bin = None;
            if let Some(d) = deviants.iter().find(|d| d.bank == i) {
                bin = Some(d.bin.clone());
                extra.extend(d.args.iter().cloned());
            }
            let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
            let sidecar = Sidecar::try_start_spec(dir, &name, &etcd.endpoint(), Some(client_ports[i]), bin, &extra)
                .unwrap_or_else(|e| panic!("{e}"));
            banks.push(Bank { name, etcd, sidecar, peer_port: peer_ports[i], metrics });
        }
        Chain { banks, genesis, client_certs }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.banks.iter().map(|b| b.sidecar.endpoint()).collect()
    }

    /// etcdctl at one bank; with client TLS, over TLS with the `admin` certificate.
    pub fn etcdctl(&self, bank: usize) -> Etcdctl {
        match &self.client_certs {
            Some(certs) => certs.etcdctl(&self.banks[bank].sidecar.endpoint(), Some("admin")),
            None => Etcdctl::new(self.banks[bank].sidecar.endpoint()),
        }
    }

    /// Waits until every listed bank's etcd is at the same revision (read directly from each
    /// bank's etcd, serializable) and returns it.
    pub fn wait_converged(&self, banks: &[usize], timeout: Duration) -> i64 {
        let deadline = Instant::now() + timeout;
        loop {
            let revs: Vec<i64> = banks.iter().map(|&b| revision_of(&self.banks[b].etcd.endpoint())).collect();
            if revs.iter().all(|r| *r == revs[0] && *r > 0) {
                return revs[0];
            }
            assert!(Instant::now() < deadline, "banks {banks:?} did not converge: revisions {revs:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The current revision of an etcd, read directly.
pub fn revision_of(endpoint: &str) -> i64 {
    let out = Etcdctl::new(endpoint).run(&["get", "nothing-here", "-w", "json", "--consistency=s"]);
    if !out.success() {
        return -1;
    }
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap_or_default();
    v["header"]["revision"].as_i64().unwrap_or(-1)
}
