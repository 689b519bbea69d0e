//! The metrics listener (`--listen-metrics-urls`, as etcd's flag): Prometheus text on `/metrics`,
//! and etcd 3.5's health endpoints `/health`, `/livez` and `/readyz` ([`crate::health`]).
//!
//! Values are recorded with the `metrics` crate and rendered by its Prometheus recorder; the
//! listener itself is a few lines of HTTP/1.1 so that several URLs can be served. Every
//! histogram gets buckets, so it renders as a Prometheus histogram (`_bucket`, `_sum`,
//! `_count`), as etcd's do, not as a summary.

use std::net::SocketAddr;
use std::time::Duration;

use bftcd_sequencer::cpu;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Parses etcd's comma-separated URL list (`http://127.0.0.1:2381,http://10.0.0.1:2381`).
pub fn parse_urls(urls: &str) -> anyhow::Result<Vec<SocketAddr>> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            let rest = u.strip_prefix("http://").ok_or_else(|| {
                anyhow::anyhow!("--listen-metrics-urls {u:?}: only http:// URLs are supported (https is not yet)")
            })?;
            rest.trim_end_matches('/')
                .parse()
                .map_err(|e| anyhow::anyhow!("--listen-metrics-urls {u:?}: expected http://IP:PORT ({e})"))
        })
        .collect()
}

/// Installs the recorder, binds every address, and serves until the process exits. With
/// `account_cpu`, also exports `bftcd_cpu_nanoseconds_total{component}` (see [`cpu`]).
pub async fn start(addrs: &[SocketAddr], account_cpu: bool) -> anyhow::Result<Vec<SocketAddr>> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in histogram_buckets() {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_string()), &buckets)?;
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
    describe();
    metrics::describe_gauge!("bftcd_client_connections", "client connections being served");
    metrics::describe_counter!(
        "bftcd_client_connections_refused_total",
        "client connections closed on accept, over --max-client-connections or its per-IP cap"
    );
    metrics::describe_counter!(
        "bftcd_client_requests_refused_total",
        "client calls answered with etcd's `too many requests` (or closed, for watch_events), by the limit they hit"
    );
    if account_cpu {
        metrics::describe_counter!(
            "bftcd_cpu_nanoseconds_total",
            metrics::Unit::Nanoseconds,
            "CPU time (user and system) of this sidecar by component; what no component claims is not listed"
        );
        let counters = cpu::Component::ALL.map(|c| metrics::counter!("bftcd_cpu_nanoseconds_total", "component" => c.name()));
        cpu::enable_with_sink(move |c, ns| counters[c as usize].increment(ns));
    }
    let mut bound = Vec::new();
    for addr in addrs {
        let listener =
            TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))?;
        bound.push(listener.local_addr()?);
        tokio::spawn(serve(listener, handle.clone()));
    }
    // The recorder keeps histograms in buckets that need a periodic upkeep.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(bound)
}

/// `count` buckets from `start`, each twice the one before (Prometheus' exponential buckets).
fn exponential(start: f64, count: i32) -> Vec<f64> {
    (0..count).map(|i| start * 2f64.powi(i)).collect()
}

/// Every histogram this sidecar records, with etcd's buckets where etcd has the metric.
fn histogram_buckets() -> [(&'static str, Vec<f64>); 4] {
    [
        // etcd: 1 ms to 8 s.
        ("etcd_disk_wal_fsync_duration_seconds", exponential(0.001, 14)),
        // etcd: 0.1 ms to 3.3 s.
        ("etcd_network_peer_round_trip_time_seconds", exponential(0.0001, 16)),
        ("bftcd_qc_latency_seconds", exponential(0.001, 16)),
        ("bftcd_read_index_duration_seconds", exponential(0.0005, 16)),
    ]
}

/// Help texts (what docs/operations.md, "Metrics and health", lists).
fn describe() {
    use metrics::{describe_counter as counter, describe_gauge as gauge, describe_histogram as histogram};
    gauge!("etcd_server_has_leader", "1 when this bank's ordering makes progress: a quorum of banks connected and views not timing out without certificates");
    gauge!("etcd_server_is_leader", "1 when this bank leads the current view (HotStuff-2 rotates leaders)");
    counter!("etcd_server_proposals_committed_total", "blocks committed (the ledger's committed height)");
    counter!("etcd_server_proposals_applied_total", "blocks applied to the local etcd (the applied height)");
    histogram!("etcd_disk_wal_fsync_duration_seconds", metrics::Unit::Seconds, "consensus log writes, each one write and one fdatasync");
    histogram!("etcd_network_peer_round_trip_time_seconds", metrics::Unit::Seconds, "read-index request to reply, per peer (label To)");
    counter!("grpc_server_started_total", "client RPCs started");
    counter!("grpc_server_handled_total", "client RPCs completed, by gRPC status code");
    gauge!("bftcd_view", "current consensus view");
    gauge!("bftcd_leader", "index (genesis order) of the current view's leader");
    gauge!("bftcd_certified_height", "height of the block the highest known QC certifies");
    gauge!("bftcd_committed_height", "committed height of the ledger");
    gauge!("bftcd_applied_height", "height applied to the local etcd");
    histogram!("bftcd_qc_latency_seconds", metrics::Unit::Seconds, "from entering a view to learning the QC of its block");
    counter!("bftcd_views_timed_out_total", "views this bank gave up on");
    counter!("bftcd_leader_changes_total", "view changes whose leader differs from the previous view's");
    gauge!("bftcd_mempool_operations", "operations waiting in the mempool");
    gauge!("bftcd_mempool_bytes", "bytes of the operations waiting in the mempool");
    counter!("bftcd_forwarded_batches_total", "batches of this bank's operations sent to the other banks");
    counter!("bftcd_peer_messages_refused_total", "peer messages dropped, by reason");
    counter!("bftcd_peer_connections_refused_total", "inbound peer connections refused");
    counter!("bftcd_peer_genesis_mismatches_total", "peer connections closed because the peer's hello named another genesis");
    gauge!("bftcd_peer_connected", "1 while a connection to or from the peer is up");
    histogram!("bftcd_read_index_duration_seconds", metrics::Unit::Seconds, "linearizable reads: getting a read index agreed with a quorum");
    counter!("bftcd_evidence_total", "equivocations this bank learned of since start");
    counter!("bftcd_digest_checks_total", "state digests certified by the banks (passed) and found to differ from this bank's (failed)");
    gauge!("bftcd_ready", "1 when /readyz answers ok");
}

async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let handle = handle.clone();
                tokio::spawn(async move {
                    // A scraper that stalls is dropped; nothing else waits on it.
                    let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &handle)).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One request, one answer, then close: scrapers open a connection per scrape anyway.
async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let target = String::from_utf8_lossy(target);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let a = if path == "/metrics" {
        match method {
            b"GET" => Answer { status: "200 OK", content_type: "text/plain; version=0.0.4; charset=utf-8", extra: "", body: handle.render() },
            _ => not_allowed(),
        }
    } else {
        health_answer(method == b"GET", path, query, &crate::health::current())
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\n{}Content-Length: {}\r\nConnection: close\r\n\r\n",
        a.status,
        a.content_type,
        a.extra,
        a.body.len()
    );
    let body = a.body;
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

struct Answer {
    status: &'static str,
    content_type: &'static str,
    /// Further header lines, each ending in CRLF.
    extra: &'static str,
    body: String,
}

const TEXT: &str = "text/plain; charset=utf-8";
const NOSNIFF: &str = "X-Content-Type-Options: nosniff\r\n";

fn not_allowed() -> Answer {
    Answer { status: "405 Method Not Allowed", content_type: TEXT, extra: "Allow: GET\r\nX-Content-Type-Options: nosniff\r\n", body: "Method Not Allowed\n".into() }
}

fn not_found() -> Answer {
    Answer { status: "404 Not Found", content_type: TEXT, extra: NOSNIFF, body: "404 page not found\n".into() }
}

/// The health endpoints as etcd 3.5 answers them: `/health` in JSON; `/livez` and `/readyz` in
/// text (`ok`; with `?verbose`, a `[+]check ok` line per check first; on failure 503 and every
/// check's line, failed ones as `[-]check failed: reason`), `?exclude=check` leaving one out, and
/// `/readyz/<check>` for one check.
fn health_answer(get: bool, path: &str, query: &str, health: &crate::health::Health) -> Answer {
    let params: Vec<(&str, &str)> = query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))).collect();
    if path == "/health" {
        if !get {
            return not_allowed();
        }
        let failed = health.ready.iter().find_map(|c| c.error.as_ref().map(|e| format!("{}: {e}", c.name)));
        let ok = failed.is_none();
        let body = serde_json::json!({ "health": ok.to_string(), "reason": failed.unwrap_or_default() }).to_string();
        return Answer { status: if ok { "200 OK" } else { "503 Service Unavailable" }, content_type: TEXT, extra: "", body };
    }
    let (root, one) = match path.trim_start_matches('/').split_once('/') {
        Some((root, check)) => (root, Some(check)),
        None => (path.trim_start_matches('/'), None),
    };
    let checks = match root {
        "livez" => &health.live,
        "readyz" => &health.ready,
        _ => return not_found(),
    };
    let selected: Vec<_> = match one {
        Some(name) => match checks.iter().find(|c| c.name == name) {
            Some(c) => vec![c],
            None => return not_found(),
        },
        None => checks.iter().filter(|c| !params.iter().any(|(k, v)| *k == "exclude" && *v == c.name)).collect(),
    };
    if !get {
        return not_allowed();
    }
    let mut lines = String::new();
    for c in &selected {
        match &c.error {
            None => lines.push_str(&format!("[+]{} ok\n", c.name)),
            Some(e) => lines.push_str(&format!("[-]{} failed: {e}\n", c.name)),
        }
    }
    if selected.iter().any(|c| c.error.is_some()) {
        lines.push('\n');
        return Answer { status: "503 Service Unavailable", content_type: TEXT, extra: NOSNIFF, body: lines };
    }
    let verbose = params.iter().any(|(k, _)| *k == "verbose");
    let body = if verbose { lines + "ok\n" } else { "ok\n".to_string() };
    Answer { status: "200 OK", content_type: TEXT, extra: NOSNIFF, body }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Check, Health};

    fn health(failing: Option<&'static str>) -> Health {
        let check = |name| Check { name, error: (failing == Some(name)).then(|| "it broke".to_string()) };
        Health { ready: vec![check("data_corruption"), check("linearizable_read")], live: vec![check("serializable_read")] }
    }

    #[test]
    fn health_endpoints_answer_as_etcd() {
        let ok = health(None);
        let a = health_answer(true, "/readyz", "", &ok);
        assert_eq!((a.status, a.body.as_str()), ("200 OK", "ok\n"));
        let a = health_answer(true, "/readyz", "verbose", &ok);
        assert_eq!(a.body, "[+]data_corruption ok\n[+]linearizable_read ok\nok\n");
        let a = health_answer(true, "/livez", "verbose", &ok);
        assert_eq!(a.body, "[+]serializable_read ok\nok\n");
        let a = health_answer(true, "/health", "", &ok);
        assert_eq!((a.status, a.body.as_str()), ("200 OK", r#"{"health":"true","reason":""}"#));

        let bad = health(Some("linearizable_read"));
        let a = health_answer(true, "/readyz", "", &bad);
        assert_eq!(a.status, "503 Service Unavailable");
        assert_eq!(a.body, "[+]data_corruption ok\n[-]linearizable_read failed: it broke\n\n");
        let a = health_answer(true, "/readyz", "exclude=linearizable_read&verbose", &bad);
        assert_eq!((a.status, a.body.as_str()), ("200 OK", "[+]data_corruption ok\nok\n"));
        let a = health_answer(true, "/readyz/data_corruption", "", &bad);
        assert_eq!(a.status, "200 OK");
        let a = health_answer(true, "/readyz/linearizable_read", "", &bad);
        assert_eq!(a.status, "503 Service Unavailable");
        assert_eq!(health_answer(true, "/livez", "", &bad).status, "200 OK");
        let a = health_answer(true, "/health", "", &bad);
        assert_eq!(a.status, "503 Service Unavailable");
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["health"], "false");
        assert_eq!(v["reason"], "linearizable_read: it broke");

        assert_eq!(health_answer(true, "/readyz/nope", "", &ok).status, "404 Not Found");
        assert_eq!(health_answer(true, "/nope", "", &ok).status, "404 Not Found");
        assert_eq!(health_answer(false, "/readyz", "", &ok).status, "405 Method Not Allowed");
    }

    #[test]
    fn every_histogram_has_buckets() {
        for (name, buckets) in histogram_buckets() {
            assert!(buckets.windows(2).all(|w| w[0] < w[1]) && !buckets.is_empty(), "{name}");
        }
    }

    #[test]
    fn urls_as_etcd_writes_them() {
        assert_eq!(
            parse_urls("http://127.0.0.1:2381, http://[::1]:9000/").unwrap(),
            vec!["127.0.0.1:2381".parse().unwrap(), "[::1]:9000".parse().unwrap()]
        );
        assert!(parse_urls("https://127.0.0.1:2381").unwrap_err().to_string().contains("only http://"));
        assert!(parse_urls("http://localhost").is_err());
    }
}
