//! Integration-test harness for BFTcd: real stock etcd processes and real `bftcd` sidecars on
//! loopback (design.md §7, §8).
//!
//! - [`bins`]: where `etcd`, `etcdctl`, `etcdutl` and `bftcd` come from.
//! - [`ports`]: free loopback ports, unique within and (as far as possible) across processes.
//! - [`TestDir`]: a temp dir per test, kept with every log when the test panics.
//! - [`EtcdProcess`], [`EtcdCluster`]: stock etcd, one member or a Raft cluster.
//! - [`Sidecar`]: `bftcd serve` in front of a stock etcd.
//! - [`Etcdctl`], [`Etcdutl`]: the stock command-line tools with hard timeouts.
//! - [`netcut`]: cutting a bank off its peers with iptables (partition tests).
//! - [`tls`]: client certificates (`bftcd client-certs`) and etcdctl over TLS.
//! - [`kv`]: the Put, Get and HashKV the fault tests share.
//! - [`compat`]: running the same etcdctl commands against stock etcd and a sidecar and
//!   comparing the outputs modulo ids and timing.
//!
//! Every child process is killed when its owner is dropped (also while a test panics) and, via
//! `PR_SET_PDEATHSIG`, when the test process dies. Every wait has a hard timeout. Errors are
//! reported by panicking with the relevant log tail, so tests should not return `Result` (a
//! returned `Err` does not unwind and the test directory with the logs would be deleted).

pub mod bins;
pub mod chain;
pub mod compat;
pub mod dir;
pub mod etcd;
pub mod etcdctl;
pub mod kv;
pub mod ledger;
pub mod linearizability;
pub mod netcut;
pub mod ports;
pub mod process;
pub mod sidecar;
pub mod tls;

pub use chain::{Bank, Chain, Deviant};
pub use bins::{bftcd_bin, etcd_bin, etcdctl_bin, etcdutl_bin, workspace_root};
pub use dir::{log_tail, TestDir};
pub use etcd::{EtcdCluster, EtcdProcess};
pub use etcdctl::{Etcdctl, Etcdutl};
pub use ledger::forge_ledger;
pub use ports::{free_port, free_ports};
pub use process::{rss_mib, Background, CmdOutput};
pub use sidecar::Sidecar;
pub use tls::ClientCerts;
