//! Migration from a stock etcd (docs/migration.md, "From a snapshot"): a genesis whose initial
//! state is an `etcdctl snapshot save` file, `bftcd restore` that prepares one bank's etcd from
//! that file, and the check a sidecar makes before it serves on such an etcd.
//!
//! The genesis records the snapshot's revision, its leases, the file's SHA-256 and the state
//! digest of what the file holds, computed by the functions the checkpoints use
//! ([`crate::apply::digest`]), so that every bank, every auditor and the first certified
//! checkpoint agree on it. The snapshot is read through a scratch stock etcd restored from it:
//! only etcd itself reads its own file format.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use bftcd_proto::bftcd::{Genesis, InitialLease};
use bftcd_proto::etcdserverpb::{
    AuthRoleListRequest, AuthStatusRequest, AuthUserListRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseTimeToLiveRequest,
    RangeRequest,
};
use bftcd_sequencer::governance::ChainRules;
use bftcd_sequencer::reserved;
use bftcd_sequencer::state_digest::{state_digest, StateParts};
use sha2::Digest;
use tokio::process::Command;

use crate::apply::digest::{keys_checksum, rules_digest};
use crate::apply::LeaseTable;
use crate::etcd::LocalEtcd;

/// What an etcd snapshot holds, as the genesis records it.
#[derive(Debug, Clone)]
pub struct SnapshotState {
    pub revision: i64,
    /// The keys part of the state digest.
    pub keys: [u8; 32],
    pub key_count: usize,
    pub leases: Vec<InitialLease>,
    /// Keys attached to a lease.
    pub attached: usize,
    pub sha256: [u8; 32],
}

/// A file left alone by the sidecar in its data directory once its etcd was found to hold the
/// genesis's state: lease calls applied before the first write may change that state (and the
/// revision) without leaving the applied-position key, so the check is made only once.
pub const VERIFIED_FILE: &str = "initial-state-verified";

pub fn is_imported(g: &Genesis) -> bool {
    !g.initial_state_digest.is_empty() || g.initial_revision != 0 || !g.initial_leases.is_empty() || !g.initial_snapshot_sha256.is_empty()
}

/// A genesis's initial state is whole and consistent (its leases in order, its digest sized).
pub fn check_genesis(g: &Genesis) -> anyhow::Result<()> {
    LeaseTable::initial(g).map_err(|e| anyhow::anyhow!("the genesis's leases: {e}"))?;
    if is_imported(g) {
        anyhow::ensure!(
            g.initial_state_digest.len() == 32 && g.initial_snapshot_sha256.len() == 32 && g.initial_revision >= 1,
            "the genesis's initial state is incomplete (it needs a 32-byte digest and snapshot SHA-256, and a revision)"
        );
    }
    Ok(())
}

/// The state digest of a chain's initial state: the snapshot's keys (`keys`, as
/// [`keys_checksum`] gives them) at the genesis's revision, its lease table and its rules.
pub fn initial_digest(g: &Genesis, keys: [u8; 32]) -> anyhow::Result<[u8; 32]> {
    let leases = LeaseTable::initial(g).map_err(|e| anyhow::anyhow!("the genesis's leases: {e}"))?;
    let rules = ChainRules::of(g).map_err(|e| anyhow::anyhow!("the genesis's key owners: {e}"))?;
    Ok(state_digest(&StateParts { revision: g.initial_revision, keys, leases: leases.digest(), rules: rules_digest(&rules) }))
}

/// Writes what the snapshot holds into a genesis, then its digest.
pub fn write_into(g: &mut Genesis, s: &SnapshotState) -> anyhow::Result<()> {
    g.initial_revision = s.revision;
    g.initial_leases = s.leases.clone();
    g.initial_snapshot_sha256 = s.sha256.to_vec();
    g.initial_state_digest = initial_digest(g, s.keys)?.to_vec();
    Ok(())
}

pub fn sha256_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    let mut f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

/// The genesis's snapshot is this file (its SHA-256), with an error that says what to do.
pub fn check_file(g: &Genesis, file: &Path) -> anyhow::Result<[u8; 32]> {
    anyhow::ensure!(
        is_imported(g),
        "the genesis starts from an empty store, not from a snapshot: a bank's etcd for it starts with an empty data directory"
    );
    let sha = sha256_file(file)?;
    anyhow::ensure!(
        sha[..] == g.initial_snapshot_sha256[..],
        "{} is not the snapshot this genesis starts from: its SHA-256 is {}, the genesis's snapshot's is {}. \
         Use the snapshot file the genesis was built from (bftcd genesis --initial-snapshot)",
        file.display(),
        hex::encode(sha),
        hex::encode(&g.initial_snapshot_sha256)
    );
    Ok(sha)
}

/// `etcdutl snapshot restore` of `file` into `data_dir` for an etcd member `name` with peer URL
/// `peer_url` (a single-member cluster).
pub async fn etcdutl_restore(etcdutl: &Path, file: &Path, data_dir: &Path, name: &str, peer_url: &str) -> anyhow::Result<()> {
    let out = Command::new(etcdutl)
        .arg("snapshot")
        .arg("restore")
        .arg(file)
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--name={name}"))
        .arg(format!("--initial-cluster={name}={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", etcdutl.display()))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        anyhow::bail!(
            "{} snapshot restore {} failed ({}): {}",
            etcdutl.display(),
            file.display(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(())
}

/// Reads an etcd snapshot file: restored into a scratch directory, served by a scratch stock
/// etcd on loopback, read whole at its revision, then stopped and removed.
pub async fn read_snapshot(file: &Path, etcd_bin: Option<&Path>) -> anyhow::Result<SnapshotState> {
    let sha256 = sha256_file(file)?;
    let etcd_bin = crate::tools::find("etcd", etcd_bin)?;
    let etcdutl = crate::tools::find("etcdutl", Some(&etcd_bin))?;
    let dir = tempfile::Builder::new().prefix("bftcd-snapshot-").tempdir()?;
    let data = dir.path().join("etcd");
    let (client, peer) = (format!("http://127.0.0.1:{}", crate::tools::free_port()?), format!("http://127.0.0.1:{}", crate::tools::free_port()?));
    tracing::info!(file = %file.display(), sha256 = %hex::encode(sha256), "reading the snapshot: restoring it into a scratch etcd");
    let revision = snapshot_revision(&etcdutl, file).await?;
    etcdutl_restore(&etcdutl, file, &data, "bftcd-import", &peer).await?;
    let log_path = dir.path().join("etcd.log");
    let etcd = crate::tools::OneEtcd {
        bin: &etcd_bin,
        name: "bftcd-import",
        data_dir: &data,
        client: &client,
        peer: &peer,
        log: &log_path,
        extra: vec!["--unsafe-no-fsync".into()],
    };
    let mut child = etcd.start().await?;
    let result = read_state(&LocalEtcd::connect_lazy(&client)?).await;
    let _ = child.kill().await;
    let _ = child.wait().await;
    let s = result.map_err(|e| e.context(format!("reading the snapshot {}", file.display())))?;
    // A lease that expired in the scratch etcd before it was read would have moved it.
    anyhow::ensure!(
        s.revision == revision,
        "the scratch etcd restored from {} was at revision {} instead of the snapshot's {revision} when it was read \
         (a lease shorter than a second expired in it?); try again",
        file.display(),
        s.revision
    );
    Ok(SnapshotState { sha256, ..s })
}

/// The revision `etcdutl snapshot status` reads from the file itself.
async fn snapshot_revision(etcdutl: &Path, file: &Path) -> anyhow::Result<i64> {
    let out = Command::new(etcdutl)
        .args(["snapshot", "status", "-w", "json"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", etcdutl.display()))?;
    let said = String::from_utf8_lossy(if out.status.success() { &out.stdout } else { &out.stderr }).trim().to_string();
    anyhow::ensure!(out.status.success(), "{} is not an etcd snapshot (etcdutl snapshot status: {said})", file.display());
    let v: serde_json::Value = serde_json::from_str(&said).map_err(|e| anyhow::anyhow!("etcdutl snapshot status printed {said:?}: {e}"))?;
    v["revision"].as_i64().filter(|r| *r >= 1).ok_or_else(|| anyhow::anyhow!("etcdutl snapshot status printed no revision: {said}"))
}

/// Everything an etcd holds that the chain's initial state covers, refusing what the chain
/// cannot represent.
async fn read_state(etcd: &LocalEtcd) -> anyhow::Result<SnapshotState> {
    let auth_refused = || {
        anyhow::anyhow!(
            "the snapshot's etcd has auth enabled: a chain keeps etcd's users, roles and permissions in its replicated \
             state and starts with none, so it cannot take them over. On the source cluster, run `etcdctl auth disable` \
             and delete every user and role, take the snapshot again, and create them again through the sidecars once \
             the chain runs (docs/migration.md)"
        )
    };
    match etcd.auth().auth_status(AuthStatusRequest {}).await {
        Ok(s) if s.get_ref().enabled => return Err(auth_refused()),
        Ok(_) => {}
        Err(e) if is_auth_error(&e) => return Err(auth_refused()),
        Err(e) => return Err(anyhow::anyhow!("etcd's auth status: {e}")),
    }
    let users = etcd.auth().user_list(AuthUserListRequest {}).await?.into_inner().users;
    let roles = etcd.auth().role_list(AuthRoleListRequest {}).await?.into_inner().roles;
    anyhow::ensure!(
        users.is_empty() && roles.is_empty(),
        "the snapshot holds etcd users ({}) or roles ({}), though auth is off: a chain starts with no users or roles \
         (its auth state is replicated, not etcd's). Delete them on the source cluster and take the snapshot again; \
         create them through the sidecars once the chain runs (docs/migration.md)",
        users.join(", "),
        roles.join(", ")
    );
    let all = RangeRequest { key: vec![0], range_end: vec![0], count_only: true, serializable: true, ..Default::default() };
    let r = etcd.kv().range(all.clone()).await.map_err(|e| map_auth(e, &auth_refused))?.into_inner();
    let revision = r.header.map(|h| h.revision).unwrap_or_default();
    let at = RangeRequest { revision, ..all };
    let reserved = RangeRequest { key: reserved::PREFIX.to_vec(), range_end: reserved::PREFIX_END.to_vec(), ..at.clone() };
    let held = etcd.kv().range(reserved).await?.into_inner().count;
    anyhow::ensure!(
        held == 0,
        "the snapshot holds {held} keys under the sidecar's reserved prefix {:?}: it is a BFTcd bank's etcd, not a Raft \
         etcd cluster's. A chain migrates from a stock etcd; a bank's etcd is restored with its own chain's ledger \
         (docs/operations.md, \"Restoring a bank's etcd\")",
        String::from_utf8_lossy(reserved::PREFIX)
    );
    let leases = read_leases(etcd).await?;
    let (keys, key_count) = keys_checksum(etcd, revision).await?;
    // A lease that expired in the scratch etcd while it was read would have moved the revision.
    let now = etcd.kv().range(at).await?.into_inner();
    anyhow::ensure!(
        now.header.map(|h| h.revision) == Some(revision) && read_leases(etcd).await?.0 == leases.0,
        "the scratch etcd's state changed while the snapshot was read (a lease shorter than the read expired in it); \
         try again, or keep the source cluster's leases longer"
    );
    tracing::info!(revision, keys = key_count, leases = leases.0.len(), "snapshot read");
    Ok(SnapshotState { revision, keys, key_count, leases: leases.0, attached: leases.1, sha256: [0; 32] })
}

async fn read_leases(etcd: &LocalEtcd) -> anyhow::Result<(Vec<InitialLease>, usize)> {
    let ids = etcd.lease().lease_leases(LeaseLeasesRequest {}).await?.into_inner().leases;
    let mut out = Vec::with_capacity(ids.len());
    let mut attached = 0;
    for l in ids {
        let t = etcd.lease().lease_time_to_live(LeaseTimeToLiveRequest { id: l.id, keys: true }).await?.into_inner();
        anyhow::ensure!(t.ttl > 0, "lease {:016x} expired in the scratch etcd while the snapshot was read; try again", l.id);
        attached += t.keys.len();
        out.push(InitialLease { id: l.id, ttl: t.granted_ttl });
    }
    out.sort_by_key(|l| l.id);
    Ok((out, attached))
}

fn is_auth_error(e: &tonic::Status) -> bool {
    let m = e.message();
    m.contains("user name is empty") || m.contains("permission denied") || m.contains("invalid auth token") || m.contains("authentication")
}

fn map_auth(e: tonic::Status, refused: &dyn Fn() -> anyhow::Error) -> anyhow::Error {
    if is_auth_error(&e) {
        refused()
    } else {
        e.into()
    }
}

/// At a sidecar's start on a genesis made from a snapshot, before it orders or serves anything:
/// an etcd that has applied nothing of the chain must hold exactly the genesis's state.
/// (Applied something: the applied-position key or the apply cursor exists.)
pub async fn check_at_start(etcd: &LocalEtcd, g: &Genesis, data_dir: &Path) -> anyhow::Result<()> {
    if !is_imported(g) || data_dir.join("apply-cursor").exists() {
        return Ok(());
    }
    let key = RangeRequest { key: crate::reserved::APPLIED_KEY.to_vec(), count_only: true, serializable: true, ..Default::default() };
    if etcd.kv().range(key).await?.into_inner().count > 0 {
        return Ok(());
    }
    let marker = data_dir.join(VERIFIED_FILE);
    let want = hex::encode(&g.initial_state_digest);
    if std::fs::read_to_string(&marker).is_ok_and(|s| s.trim() == want) {
        return Ok(());
    }
    tracing::info!(digest = %want, revision = g.initial_revision, "checking that the local etcd holds the state the chain starts from");
    let (revision, count) = check_state(etcd, g).await?;
    std::fs::write(&marker, format!("{want}\n"))?;
    tracing::info!(digest = %want, revision, keys = count, leases = g.initial_leases.len(), "the local etcd holds the chain's initial state");
    Ok(())
}

/// The etcd holds exactly the genesis's initial state (keys, revision and leases); its revision
/// and number of keys.
pub async fn check_state(etcd: &LocalEtcd, g: &Genesis) -> anyhow::Result<(i64, usize)> {
    let want = hex::encode(&g.initial_state_digest);
    let all = RangeRequest { key: vec![0], range_end: vec![0], count_only: true, serializable: true, ..Default::default() };
    let revision = etcd.kv().range(all).await?.into_inner().header.map(|h| h.revision).unwrap_or_default();
    let (keys, count) = keys_checksum(etcd, revision).await?;
    let mut mine = g.clone();
    mine.initial_revision = revision;
    let digest = initial_digest(&mine, keys)?;
    let what_to_do = format!(
        "Stop this bank's etcd, prepare its data directory from the chain's snapshot with `bftcd restore --genesis GENESIS \
         --snapshot FILE --data-dir DIR` (the file whose SHA-256 is {}; docs/migration.md), start the etcd, then this sidecar",
        hex::encode(&g.initial_snapshot_sha256)
    );
    anyhow::ensure!(
        digest[..] == g.initial_state_digest[..],
        "the local etcd does not hold the state this chain starts from: its state digest is {} (revision {revision}, {count} keys), \
         the genesis's is {want} (revision {}). {what_to_do}",
        hex::encode(digest),
        g.initial_revision
    );
    let theirs: std::collections::BTreeSet<i64> =
        etcd.lease().lease_leases(LeaseLeasesRequest {}).await?.into_inner().leases.into_iter().map(|l| l.id).collect();
    let ours: std::collections::BTreeSet<i64> = g.initial_leases.iter().map(|l| l.id).collect();
    anyhow::ensure!(
        theirs == ours,
        "the local etcd's keys are the chain's initial state, but its leases are not: it holds {} leases, the genesis {} \
         (an imported lease expired in this etcd before the sidecar started, or a lease was granted behind it). {what_to_do}",
        theirs.len(),
        ours.len()
    );
    Ok((revision, count))
}

/// Keeps the snapshot's leases alive in the local etcd until none of them is left there: the
/// restored etcd still holds them with their original TTLs, which its own clock would end. The
/// chain ends them (a committed revoke or expiry); a keepalive changes no key or revision, so
/// this is local bookkeeping, not state.
pub async fn keep_imported_leases(etcd: LocalEtcd, g: Genesis) {
    let mut ids: Vec<i64> = g.initial_leases.iter().map(|l| l.id).collect();
    let Some(shortest) = g.initial_leases.iter().map(|l| l.ttl).min() else { return };
    let every = std::time::Duration::from_millis((shortest.max(1) as u64 * 1000 / 4).clamp(500, 30_000));
    let mut tick = tokio::time::interval(every);
    while !ids.is_empty() {
        tick.tick().await;
        let requests: Vec<LeaseKeepAliveRequest> = ids.iter().map(|&id| LeaseKeepAliveRequest { id }).collect();
        let n = requests.len();
        let mut stream = match etcd.lease().lease_keep_alive(tokio_stream::iter(requests)).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep the snapshot's leases alive in the local etcd; retrying");
                continue;
            }
        };
        let mut gone = Vec::new();
        for _ in 0..n {
            match stream.message().await {
                // TTL 0: the chain ended it (revoked here): nothing to keep.
                Ok(Some(r)) if r.ttl <= 0 => gone.push(r.id),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "keeping the snapshot's leases alive in the local etcd; retrying");
                    break;
                }
            }
        }
        ids.retain(|id| !gone.contains(id));
    }
    tracing::info!("every lease of the initial snapshot has ended");
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The chain's genesis (made with `bftcd genesis --initial-snapshot`).
    #[arg(long)]
    pub genesis: PathBuf,
    /// The etcd snapshot file the genesis was made from (`etcdctl snapshot save`).
    #[arg(long)]
    pub snapshot: PathBuf,
    /// The bank's etcd data directory to create (must not exist or be empty).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The bank's etcd member name (its --name).
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The bank's etcd peer URL (its --initial-advertise-peer-urls).
    #[arg(long, default_value = "http://localhost:2380")]
    pub peer_url: String,
    /// Stock etcd binary; etcdutl is looked up beside it (default: $BFTCD_ETCD_BIN, tools/bin,
    /// PATH).
    #[arg(long)]
    pub etcd_bin: Option<PathBuf>,
}

/// `bftcd restore`: one bank's etcd data directory from the chain's snapshot.
pub async fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let g = crate::chain::read_genesis(&a.genesis)?;
    check_genesis(&g).map_err(|e| anyhow::anyhow!("{}: {e}", a.genesis.display()))?;
    println!("checking {} against genesis {} ...", a.snapshot.display(), hex::encode(bftcd_sequencer::genesis_hash(&g)));
    let sha = check_file(&g, &a.snapshot).map_err(|e| anyhow::anyhow!("{}: {e}", a.genesis.display()))?;
    println!("snapshot sha256 {} matches the genesis (revision {}, {} leases)", hex::encode(sha), g.initial_revision, g.initial_leases.len());
    if let Ok(mut entries) = std::fs::read_dir(&a.data_dir) {
        anyhow::ensure!(
            entries.next().is_none(),
            "{} is not empty: restore into a new or empty directory (move the old etcd data away first)",
            a.data_dir.display()
        );
        std::fs::remove_dir(&a.data_dir)?;
    }
    let etcdutl = crate::tools::find("etcdutl", a.etcd_bin.as_deref())?;
    println!("restoring into {} with {} (member {}, peer URL {}) ...", a.data_dir.display(), etcdutl.display(), a.name, a.peer_url);
    etcdutl_restore(&etcdutl, &a.snapshot, &a.data_dir, &a.name, &a.peer_url).await?;
    println!(
        "restored: start this bank's etcd with --data-dir={} --name={} --initial-advertise-peer-urls={}, then its sidecar \
         right away (it checks the etcd's state digest {} before serving, and keeps the snapshot's leases alive)",
        a.data_dir.display(),
        a.name,
        a.peer_url,
        hex::encode(&g.initial_state_digest)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn genesis() -> Genesis {
        Genesis {
            chain_id: "c".into(),
            genesis_time_ms: 1_000,
            initial_revision: 42,
            initial_leases: vec![InitialLease { id: 5, ttl: 30 }],
            initial_snapshot_sha256: vec![7; 32],
            ..Default::default()
        }
    }

    #[test]
    fn the_initial_digest_covers_revision_keys_leases_and_time() {
        let g = genesis();
        let d = initial_digest(&g, [1; 32]).unwrap();
        assert_eq!(d, initial_digest(&g.clone(), [1; 32]).unwrap(), "deterministic");
        assert_ne!(d, initial_digest(&g, [2; 32]).unwrap());
        assert_ne!(d, initial_digest(&Genesis { initial_revision: 43, ..g.clone() }, [1; 32]).unwrap());
        assert_ne!(d, initial_digest(&Genesis { initial_leases: vec![InitialLease { id: 5, ttl: 31 }], ..g.clone() }, [1; 32]).unwrap());
        assert_ne!(d, initial_digest(&Genesis { initial_leases: vec![], ..g.clone() }, [1; 32]).unwrap());
        assert_ne!(d, initial_digest(&Genesis { genesis_time_ms: 2_000, ..g.clone() }, [1; 32]).unwrap(), "deadlines count");
    }

    #[test]
    fn genesis_checks() {
        assert!(check_genesis(&Genesis::default()).is_ok());
        assert!(!is_imported(&Genesis::default()));
        let mut g = genesis();
        assert!(check_genesis(&g).is_err(), "no digest yet");
        let s = SnapshotState { revision: 42, keys: [1; 32], key_count: 1, leases: g.initial_leases.clone(), attached: 0, sha256: [7; 32] };
        write_into(&mut g, &s).unwrap();
        check_genesis(&g).unwrap();
        g.initial_leases.push(InitialLease { id: 1, ttl: 3 });
        assert!(check_genesis(&g).is_err(), "leases out of order");
    }

    #[test]
    fn a_file_is_checked_against_the_genesis() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("snap.db");
        std::fs::write(&f, b"etcd").unwrap();
        let mut g = genesis();
        assert!(check_file(&Genesis::default(), &f).unwrap_err().to_string().contains("empty store"));
        let e = check_file(&g, &f).unwrap_err().to_string();
        assert!(e.contains("is not the snapshot this genesis starts from"), "{e}");
        g.initial_snapshot_sha256 = sha256_file(&f).unwrap().to_vec();
        assert!(check_file(&g, &f).is_ok());
        assert!(check_file(&g, &dir.path().join("missing")).is_err());
    }
}
