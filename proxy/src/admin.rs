//! The bank's local administration socket, `<data-dir>/admin.sock`.
//!
//! Approving a change of the chain's rules speaks for the whole bank, so it is not offered on
//! the client port (which any client, and with client TLS any certificate of the bank's CA,
//! reaches): only a process that can open this socket, created readable and writable by the
//! sidecar's own user alone, can. Each request and answer is a 4-byte big-endian length and a
//! protobuf message ([`AdminRequest`], [`AdminResponse`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bftcd_proto::bftcd::{
    admin_request::Request, operation::Request as Op, AdminRequest, AdminResponse, ApproveResult, ChainChange, PendingApproval,
    RulesState,
};
use bftcd_proto::Message;
use bftcd_sequencer::governance::{Approval, ChainRules};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::apply::OpResponse;
use crate::front::Front;

/// Requests are small (a change of the rules); anything larger is not one.
const MAX_FRAME: usize = 1 << 20;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// Listens on the socket until the process ends.
pub fn serve(data_dir: &Path, front: Arc<Front>) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    // A socket left by an earlier run of this bank (the data directory is ours alone).
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, front.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn read_frame(stream: &mut UnixStream) -> std::io::Result<Option<Vec<u8>>> {
    let len = match stream.read_u32().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a {len}-byte frame")));
    }
    let mut buf = vec![0; len];
    stream.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

async fn write_frame(stream: &mut UnixStream, msg: &impl Message) -> std::io::Result<()> {
    let bytes = msg.encode_to_vec();
    stream.write_u32(bytes.len() as u32).await?;
    stream.write_all(&bytes).await?;
    stream.flush().await
}

async fn connection(mut stream: UnixStream, front: Arc<Front>) {
    loop {
        let answer = match read_frame(&mut stream).await {
            Ok(None) => return,
            Ok(Some(bytes)) => match AdminRequest::decode(bytes.as_slice()) {
                Ok(r) => answer(&front, r).await,
                Err(e) => AdminResponse { error: format!("not an admin request: {e}"), ..Default::default() },
            },
            Err(e) => {
                tracing::debug!(error = %e, "admin socket: connection dropped");
                return;
            }
        };
        if write_frame(&mut stream, &answer).await.is_err() {
            return;
        }
    }
}

fn error(e: impl std::fmt::Display) -> AdminResponse {
    AdminResponse { error: e.to_string(), ..Default::default() }
}

async fn answer(front: &Arc<Front>, request: AdminRequest) -> AdminResponse {
    match request.request {
        Some(Request::Rules(_)) => AdminResponse { rules: Some(rules_state(front)), ..Default::default() },
        Some(Request::Approve(change)) => match approve(front, change).await {
            Ok(r) => AdminResponse { approve: Some(r), ..Default::default() },
            Err(e) => error(e),
        },
        None => error("an empty request"),
    }
}

fn rules_state(front: &Front) -> RulesState {
    let rules = front.applier.rules();
    RulesState {
        rules_version: rules.version(),
        key_owners: rules.key_owners().to_vec(),
        pending: rules.pending().map(|(bank, c)| PendingApproval { bank, change: Some(c.clone()) }).collect(),
        banks: front.ledger.genesis().validators.iter().map(|v| v.name.clone()).collect(),
    }
}

async fn approve(front: &Arc<Front>, change: ChainChange) -> anyhow::Result<ApproveResult> {
    ChainRules::check_change(front.ledger.genesis(), &change).map_err(|e| anyhow::anyhow!("not a valid change: {e}"))?;
    let current = front.applier.rules().version();
    anyhow::ensure!(
        change.rules_version == current,
        "the change is for rules version {}, but version {current} is in effect",
        change.rules_version
    );
    let outcome = front.writes.submit(Op::Governance(change), None).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let OpResponse::Governance(approval) = outcome else { anyhow::bail!("the apply engine answered with something else") };
    tracing::info!(?approval, "governance: this bank's approval is committed");
    Ok(match approval {
        Approval::Stale { rules_version } => ApproveResult { stale: true, rules_version, ..Default::default() },
        Approval::Pending { rules_version, approvals, needed } => ApproveResult { rules_version, approvals, needed, ..Default::default() },
        Approval::Enacted { rules_version } => {
            let n = front.ledger.genesis().validators.len() as u32;
            ApproveResult { rules_version, approvals: n, needed: n, enacted: true, stale: false }
        }
    })
}

/// Sends one request to a running bank's socket (the `bftcd govern` command).
pub async fn request(data_dir: &Path, request: &AdminRequest) -> anyhow::Result<AdminResponse> {
    let path = socket_path(data_dir);
    let mut stream = UnixStream::connect(&path)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the bank at {} (is `bftcd serve` running with this --data-dir?): {e}", path.display()))?;
    write_frame(&mut stream, request).await?;
    let bytes = read_frame(&mut stream).await?.ok_or_else(|| anyhow::anyhow!("the bank closed the connection"))?;
    let response = AdminResponse::decode(bytes.as_slice())?;
    anyhow::ensure!(response.error.is_empty(), "{}", response.error);
    Ok(response)
}
