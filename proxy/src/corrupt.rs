//! A bank whose etcd no longer holds the state the others certified (its etcd was written
//! behind the sidecar, or a bug) stops serving: it raises etcd's own CORRUPT alarm, so that
//! `etcdctl alarm list` at the bank shows it and it survives a restart, and its front refuses
//! KV, Watch and Lease calls with etcd's `etcdserver: corrupt cluster`, as a stock etcd member
//! with that alarm does. Recovery is an operator's job (docs/operations.md, "CORRUPT").

use std::sync::atomic::{AtomicBool, Ordering};

use bftcd_proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};

use crate::etcd::LocalEtcd;

/// Process-wide: one bank per process, and the front's layer has no other way to the apply side.
static CORRUPT: AtomicBool = AtomicBool::new(false);

pub fn is_corrupt() -> bool {
    CORRUPT.load(Ordering::Relaxed)
}

/// Whether a call to `path` is refused: what reads or changes the store. Maintenance (alarm
/// list, status) and Cluster calls still answer, so an operator can see what happened.
pub fn refuses(path: &str) -> bool {
    is_corrupt()
        && (path.starts_with("/etcdserverpb.KV/") || path.starts_with("/etcdserverpb.Watch/") || path.starts_with("/etcdserverpb.Lease/"))
}

/// Marks the bank corrupt and raises the alarm in its etcd (retrying until etcd takes it).
pub async fn raise(etcd: &LocalEtcd) {
    CORRUPT.store(true, Ordering::Relaxed);
    loop {
        let member = etcd.maintenance().status(bftcd_proto::etcdserverpb::StatusRequest {}).await.map(|r| r.into_inner().header.map(|h| h.member_id));
        let raised = match member {
            Ok(Some(member_id)) => {
                let req = AlarmRequest { action: AlarmAction::Activate as i32, member_id, alarm: AlarmType::Corrupt as i32 };
                etcd.maintenance().alarm(req).await.map(|_| ())
            }
            Ok(None) => Err(tonic::Status::unknown("no header in etcd's status")),
            Err(e) => Err(e),
        };
        match raised {
            Ok(()) => return tracing::error!("CORRUPT alarm raised in the local etcd; this bank refuses reads and writes until an operator recovers it (docs/operations.md, \"CORRUPT\")"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the CORRUPT alarm in the local etcd yet; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// At start: a CORRUPT alarm already in the local etcd keeps the bank refusing.
pub async fn check_at_start(etcd: &LocalEtcd) -> anyhow::Result<()> {
    let req = AlarmRequest { action: AlarmAction::Get as i32, member_id: 0, alarm: AlarmType::None as i32 };
    let alarms = etcd.maintenance().alarm(req).await?.into_inner().alarms;
    if alarms.iter().any(|a| a.alarm == AlarmType::Corrupt as i32) {
        CORRUPT.store(true, Ordering::Relaxed);
        tracing::error!("the local etcd carries a CORRUPT alarm: this bank refuses reads and writes until an operator recovers it (docs/operations.md, \"CORRUPT\")");
    }
    Ok(())
}
