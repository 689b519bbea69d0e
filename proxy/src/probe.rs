//! Proves at start that this bank's etcd accepts what the chain's limits let through.
//!
//! Every bank checks operations against the genesis limits, but etcd has no call that reveals
//! its own `--max-request-bytes` and `--max-txn-ops`. A bank whose etcd is stricter than the
//! chain would refuse at apply what the others apply and stop (fail closed). So before joining,
//! the sidecar sends its etcd the largest wrapped write and the widest wrapped Txn the chain
//! allows, both against a reserved key and built so that nothing is written: the write's
//! compare can never hold and its else branch is empty (it still goes through etcd's raft path,
//! where the size limit is checked); the wide Txn only reads.

use std::time::Duration;

use bftcd_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use bftcd_proto::Message;
use bftcd_sequencer::validity::Limits;
use tonic::Code;

use crate::etcd::LocalEtcd;
use crate::reserved::PREFIX;

/// Room the apply engine's wrapping (the applied-position Put, a delete's check Txn) needs on
/// top of a client's largest request: etcd must allow this much more (docs/operations.md says
/// 64 KiB; the probe leaves 1 KiB of that for etcd's own request header).
pub const WRAP_BYTES: usize = 63 * 1024;
/// Operations the apply engine adds to a client Txn's widest level (a check Txn and the
/// applied-position Put).
pub const WRAP_OPS: usize = 2;

/// What this bank's etcd must accept: (request bytes, operations in one Txn level).
pub fn required(limits: &Limits, apply_batch_max: u32) -> (usize, usize) {
    let ops = (limits.max_txn_ops + WRAP_OPS).max(apply_batch_max as usize + 1);
    (limits.max_request_bytes + WRAP_BYTES, ops)
}

fn probe_key(i: usize) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(format!("limits-probe/{i}").as_bytes());
    k
}

/// A write of exactly `bytes` encoded bytes that can never take effect.
pub fn size_probe(bytes: usize) -> TxnRequest {
    let never = Compare {
        result: CompareResult::Less as i32,
        target: CompareTarget::Version as i32,
        key: probe_key(0),
        range_end: vec![],
        target_union: Some(TargetUnion::Version(0)),
    };
    let mut t = TxnRequest {
        compare: vec![never],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest { key: probe_key(0), value: vec![], ..Default::default() })),
        }],
        failure: vec![],
    };
    // Pad the value until the whole request has the wanted size (the length prefixes grow
    // with it, so settle in a few rounds).
    for _ in 0..8 {
        let len = t.encoded_len();
        if len == bytes {
            break;
        }
        if let Some(Request::RequestPut(p)) = t.success[0].request.as_mut() {
            let want = (p.value.len() + bytes).saturating_sub(len);
            p.value.resize(want, b'x');
        }
    }
    t
}

/// A read-only Txn with `ops` reads of reserved keys in one level.
pub fn width_probe(ops: usize) -> TxnRequest {
    let success = (0..ops)
        .map(|i| RequestOp { request: Some(Request::RequestRange(RangeRequest { key: probe_key(i), ..Default::default() })) })
        .collect();
    TxnRequest { compare: vec![], success, failure: vec![] }
}

/// Waits for the etcd to answer and checks it takes both probes; Err says what to change.
pub async fn check(etcd: &LocalEtcd, limits: &Limits, apply_batch_max: u32) -> anyhow::Result<()> {
    let (bytes, ops) = required(limits, apply_batch_max);
    let probes = [
        (size_probe(bytes), format!("a {bytes}-byte write (the chain's max_request_bytes {} plus the sidecar's bookkeeping); start it with --max-request-bytes={} or more", limits.max_request_bytes, limits.max_request_bytes + 64 * 1024)),
        (width_probe(ops), format!("a Txn of {ops} operations (the chain's max_txn_ops {} plus the sidecar's bookkeeping, or its apply batch); start it with --max-txn-ops={ops} or more", limits.max_txn_ops)),
    ];
    for (txn, what) in probes {
        let mut waited = 0u32;
        loop {
            match etcd.kv().txn(txn.clone()).await {
                Ok(_) => break,
                Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown) => {
                    // Not up yet: the sidecar needs it anyway before it can serve.
                    if waited.is_multiple_of(10) {
                        tracing::info!(etcd = %etcd.endpoint, error = %s.message(), "waiting for the local etcd to check its limits");
                    }
                    waited += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                // etcd's own refusals (`request is too large`, `too many operations in txn
                // request`), or gRPC's receive limit (max-request-bytes + 512 KiB) far below;
                // not NOSPACE, which is ResourceExhausted too but an alarm.
                Err(s) if s.code() == Code::InvalidArgument || (s.code() == Code::ResourceExhausted && s.message().contains("larger than max")) => {
                    anyhow::bail!(
                        "the local etcd at {} refuses {what} ({}): every bank's etcd must accept what the chain's genesis allows",
                        etcd.endpoint,
                        s.message()
                    );
                }
                Err(s) => {
                    // An alarm or auth in the local etcd: the apply engine reports and waits
                    // for those; the limits cannot be proven now.
                    tracing::warn!(etcd = %etcd.endpoint, error = %s.message(), "could not check the local etcd's limits");
                    break;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_have_the_wanted_shape() {
        for bytes in [200, 1000, 16383, 16384, 16385, 1 << 20, (1536 << 10) + WRAP_BYTES] {
            assert_eq!(size_probe(bytes).encoded_len(), bytes);
        }
        assert_eq!(width_probe(130).success.len(), 130);
        assert!(!crate::validate::txn_writes(&width_probe(3)));
        assert_eq!(required(&Limits::default(), 100), ((1536 << 10) + WRAP_BYTES, 130));
        assert_eq!(required(&Limits { max_txn_ops: 16, ..Limits::default() }, 100).1, 101);
    }
}
