//! Small etcd v3 calls the fault tests share: a client per call with its own deadline (a cut-off
//! bank must not hold a test up), a Put, a linearizable Get and a bank's HashKV.

use std::time::Duration;

use bftcd_proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use tonic::transport::Channel;

use crate::etcdctl::Etcdctl;

/// A KV client whose every call gives up after `timeout`; connecting lazily, so a bank that is
/// down shows up as a failed call, not a failed test setup.
pub fn client(endpoint: &str, timeout: Duration) -> KvClient<Channel> {
    let ch = Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    KvClient::new(ch)
}

/// A Put of `key`, waiting at most 25 s (longer than the chain's write timeout in tests).
pub async fn put(endpoint: &str, key: &str, value: &str) -> Result<(), tonic::Status> {
    let req = PutRequest { key: key.into(), value: value.into(), ..Default::default() };
    client(endpoint, Duration::from_secs(25)).put(req).await.map(|_| ())
}

/// A linearizable read (etcd's default) of `key`.
pub async fn get(endpoint: &str, key: &str, timeout: Duration) -> Result<Option<Vec<u8>>, tonic::Status> {
    let req = RangeRequest { key: key.into(), ..Default::default() };
    let resp = client(endpoint, timeout).range(req).await?.into_inner();
    Ok(resp.kvs.into_iter().next().map(|kv| kv.value))
}

/// A bank's HashKV and the revision it was computed at.
pub fn hashkv(ctl: &Etcdctl) -> (i64, i64) {
    let out = ctl.run(&["endpoint", "hashkv", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(out.expect_success().trim()).unwrap();
    (v[0]["HashKV"]["hash"].as_i64().unwrap(), v[0]["HashKV"]["header"]["revision"].as_i64().unwrap())
}

/// The chain's write timeout in the test harness (`--write-timeout=20s`).
pub const HARNESS_WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// Sequential Puts of `<prefix>/<n>` through `endpoint`, on a connection of their own, until
/// `stop`; every one must succeed within the harness's write timeout. Returns the writes made
/// and the slowest. The attack tests measure an honest client's rate with it.
pub async fn honest_writer(
    endpoint: String,
    prefix: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, Duration) {
    let mut kv = client(&endpoint, HARNESS_WRITE_TIMEOUT + Duration::from_secs(5));
    let (mut n, mut slowest) = (0, Duration::ZERO);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let key = format!("{prefix}/{n:06}");
        let started = std::time::Instant::now();
        let req = PutRequest { key: key.clone().into(), value: b"v".to_vec(), ..Default::default() };
        if let Err(e) = kv.put(req).await {
            panic!("honest write {key} through {endpoint} failed after {:?}: {e}", started.elapsed());
        }
        let took = started.elapsed();
        assert!(took <= HARNESS_WRITE_TIMEOUT, "honest write {key} took {took:?}");
        slowest = slowest.max(took);
        n += 1;
    }
    (n, slowest)
}
