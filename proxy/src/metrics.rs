//! The metrics listener (`--listen-metrics-urls`, as etcd's flag): Prometheus text on `/metrics`.
//!
//! Values are recorded with the `metrics` crate and rendered by its Prometheus recorder; the
//! listener itself is a few lines of HTTP/1.1 so that several URLs can be served and the health
//! endpoints have a place to go.

use std::net::SocketAddr;
use std::time::Duration;

use bftcd_sequencer::cpu;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
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
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, body) = match (method, path) {
        (b"GET", b"/metrics") => ("200 OK", handle.render()),
        (b"GET", _) => ("404 Not Found", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "method not allowed\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

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
