//! Metrics and health of a four-bank chain: under load every bank's `/metrics` shows ordering,
//! disk, network and client metrics moving and exports every metric the Grafana dashboard
//! (docs/grafana/bftcd-dashboard.json) queries; `/readyz`, `/health` and `grpc.health.v1` say
//! ready, turn to not ready when the bank loses its quorum, and back once the others return; a
//! bank that goes CORRUPT is not ready.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bftcd_proto::grpc_health::health_check_response::ServingStatus;
use bftcd_proto::grpc_health::health_client::HealthClient;
use bftcd_proto::grpc_health::HealthCheckRequest;
use bftcd_tests::{kv, Chain, Etcdctl, TestDir};

/// One HTTP GET; returns the status code and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// A scrape: series (name and labels as written) to value.
fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let (code, body) = get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l:?}"));
            (series.to_string(), value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

fn name_of(series: &str) -> &str {
    series.split('{').next().unwrap()
}

/// The sum of every series of `name` (0 when there is none).
fn total(s: &BTreeMap<String, f64>, name: &str) -> f64 {
    s.iter().filter(|(k, _)| name_of(k) == name).map(|(_, v)| v).sum()
}

fn value(s: &BTreeMap<String, f64>, series: &str) -> Option<f64> {
    s.get(series).copied()
}

/// Metric names a PromQL expression reads: identifiers outside label matchers, ranges,
/// strings and `by (...)`/`without (...)` lists, less PromQL's functions and keywords.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    const NOT_METRICS: &[&str] = &[
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "rate",
        "irate",
        "increase",
        "delta",
        "histogram_quantile",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "offset",
        "abs",
        "clamp_min",
        "clamp_max",
        "topk",
        "bottomk",
        "time",
        "vector",
        "label_replace",
        "avg_over_time",
        "max_over_time",
        "min_over_time",
        "changes",
        "resets",
        "deriv",
        "idelta",
        "bool",
    ];
    let mut plain = String::new();
    let (mut depth_brace, mut depth_bracket, mut in_string) = (0, 0, false);
    for c in expr.chars() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            c => plain.push(c),
        }
        if matches!(c, '}' | ']') {
            plain.push(' ');
        }
    }
    // Label lists of aggregations.
    let grouping = regex::Regex::new(r"\b(by|without|on|ignoring)\s*\([^)]*\)").unwrap();
    let plain = grouping.replace_all(&plain, " ");
    let ident = regex::Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*").unwrap();
    ident.find_iter(&plain).map(|m| m.as_str()).filter(|w| !NOT_METRICS.contains(w)).map(str::to_string).collect()
}

/// Every PromQL expression in the dashboard.
fn dashboard_exprs() -> Vec<String> {
    let path = bftcd_tests::workspace_root().join("docs/grafana/bftcd-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&json, &mut exprs);
    exprs
}

#[test]
fn promql_metric_names_are_found() {
    let e = r#"histogram_quantile(0.99, sum by (instance, le) (rate(bftcd_qc_latency_seconds_bucket{instance=~"$instance"}[5m])))"#;
    assert_eq!(promql_metrics(e), BTreeSet::from(["bftcd_qc_latency_seconds_bucket".to_string()]));
    let e = r#"sum by (a) (rate(grpc_server_handled_total{grpc_code!="OK", x="sum by (y)"}[1m])) / bftcd_view"#;
    assert_eq!(promql_metrics(e), BTreeSet::from(["grpc_server_handled_total".to_string(), "bftcd_view".to_string()]));
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{exprs:?}");
    assert!(exprs.iter().all(|e| !promql_metrics(e).is_empty()), "{exprs:?}");
}

fn readyz(addr: &str) -> (u16, String) {
    get(addr, "/readyz?verbose")
}

/// Polls `check` every 500 ms until it returns true, for at most `limit`.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

async fn grpc_status(endpoint: &str) -> Option<ServingStatus> {
    let ch = tonic::transport::Channel::from_shared(format!("http://{endpoint}")).ok()?.timeout(Duration::from_secs(5)).connect_lazy();
    let r = HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await.ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

/// Writes at every bank and linearizable reads at every bank (each read takes a read index
/// from the other banks, so every bank measures round trips).
fn load(rt: &tokio::runtime::Runtime, endpoints: &[String], round: usize) {
    rt.block_on(async {
        for i in 0..10 {
            for (b, ep) in endpoints.iter().enumerate() {
                let key = format!("load-{round}-{i}-{b}");
                kv::put(ep, &key, "v").await.unwrap_or_else(|e| panic!("put at bank {b}: {e}"));
                let got = kv::get(ep, &key, Duration::from_secs(25)).await.unwrap_or_else(|e| panic!("get at bank {b}: {e}"));
                assert_eq!(got.as_deref(), Some(&b"v"[..]));
            }
        }
    });
}

#[test]
fn four_banks_export_metrics_and_report_health() {
    let dir = TestDir::new("health");
    let mut chain = Chain::start_named(&dir, 4, "", true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let endpoints = chain.endpoints();
    let metrics: Vec<String> = chain.banks.iter().map(|b| b.metrics.clone().expect("metrics listener")).collect();

    load(&rt, &endpoints, 0);
    // The sampler runs once a second.
    std::thread::sleep(Duration::from_millis(2500));
    let before: Vec<_> = metrics.iter().map(|m| scrape(m)).collect();
    load(&rt, &endpoints, 1);
    std::thread::sleep(Duration::from_millis(2500));
    let after: Vec<_> = metrics.iter().map(|m| scrape(m)).collect();

    for (b, (s0, s1)) in before.iter().zip(&after).enumerate() {
        for name in [
            "etcd_server_proposals_committed_total",
            "etcd_server_proposals_applied_total",
            "etcd_disk_wal_fsync_duration_seconds_count",
            "etcd_network_peer_round_trip_time_seconds_count",
            "grpc_server_started_total",
            "grpc_server_handled_total",
            "bftcd_view",
            "bftcd_certified_height",
            "bftcd_committed_height",
            "bftcd_applied_height",
            "bftcd_qc_latency_seconds_count",
            "bftcd_read_index_duration_seconds_count",
            "bftcd_forwarded_batches_total",
            "bftcd_digest_checks_total",
        ] {
            assert!(total(s1, name) > total(s0, name), "bank {b}: {name} did not grow: {} then {}", total(s0, name), total(s1, name));
        }
        assert_eq!(value(s1, "etcd_server_has_leader"), Some(1.0), "bank {b}");
        assert_eq!(value(s1, "bftcd_ready"), Some(1.0), "bank {b}");
        let put = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Put",grpc_code="OK"}"#;
        assert!(value(s1, put).unwrap_or(0.0) >= 20.0, "bank {b}: {put}");
        let connected: Vec<_> = s1.iter().filter(|(k, _)| name_of(k) == "bftcd_peer_connected").collect();
        assert_eq!(connected.len(), 3, "bank {b}: {connected:?}");
        assert!(connected.iter().all(|(_, v)| **v == 1.0), "bank {b}: {connected:?}");
        // Histograms render as Prometheus histograms, with buckets.
        assert!(s1.keys().any(|k| k.starts_with("etcd_disk_wal_fsync_duration_seconds_bucket{le=")), "bank {b}");
        assert!(s1.keys().any(|k| k.starts_with("etcd_network_peer_round_trip_time_seconds_bucket{To=")), "bank {b}");
        assert_eq!(value(s1, r#"bftcd_digest_checks_total{result="failed"}"#), None, "bank {b}");
    }

    // Every metric the dashboard reads is exported by every bank.
    for expr in dashboard_exprs() {
        for metric in promql_metrics(&expr) {
            for (b, s) in after.iter().enumerate() {
                assert!(s.keys().any(|k| name_of(k) == metric), "bank {b} does not export {metric} (dashboard: {expr})");
            }
        }
    }

    // Ready everywhere, in etcd's formats.
    for (b, m) in metrics.iter().enumerate() {
        let (code, body) = readyz(m);
        assert_eq!(code, 200, "bank {b}: {body}");
        assert!(body.contains("[+]linearizable_read ok\n") && body.ends_with("ok\n"), "bank {b}: {body}");
        assert_eq!(get(m, "/readyz"), (200, "ok\n".to_string()), "bank {b}");
        assert_eq!(get(m, "/livez"), (200, "ok\n".to_string()), "bank {b}");
        assert_eq!(get(m, "/health"), (200, r#"{"health":"true","reason":""}"#.to_string()), "bank {b}");
    }
    assert_eq!(rt.block_on(grpc_status(&endpoints[0])), Some(ServingStatus::Serving));
    // An idle healthy chain stays ready (no view timers run, nothing counts up).
    let idle_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < idle_until {
        for (b, m) in metrics.iter().enumerate() {
            let (code, body) = readyz(m);
            assert_eq!(code, 200, "idle bank {b}: {body}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // A Watch on the health service reports the changes below as they happen.
    let (tx, mut watched) = tokio::sync::mpsc::unbounded_channel();
    let ep = endpoints[0].clone();
    rt.spawn(async move {
        let ch = tonic::transport::Channel::from_shared(format!("http://{ep}")).unwrap().connect_lazy();
        let mut stream = HealthClient::new(ch).watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
        while let Ok(Some(m)) = stream.message().await {
            let _ = tx.send(ServingStatus::try_from(m.status).unwrap());
        }
    });
    let next_watched = |watched: &mut tokio::sync::mpsc::UnboundedReceiver<ServingStatus>| {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), watched.recv()).await.ok().flatten() })
    };
    assert_eq!(next_watched(&mut watched), Some(ServingStatus::Serving));

    // Bank 1 alone: no quorum, not ready (and says why), but alive.
    for b in 1..4 {
        chain.banks[b].sidecar.stop();
    }
    eventually(Duration::from_secs(90), "bank 0 not ready without a quorum", || readyz(&metrics[0]).0 == 503);
    let (_, body) = readyz(&metrics[0]);
    assert!(body.contains("[-]linearizable_read failed: "), "{body}");
    assert!(body.contains("[+]data_corruption ok\n"), "{body}");
    let (code, health) = get(&metrics[0], "/health");
    assert_eq!(code, 503, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["health"], "false");
    assert!(health["reason"].as_str().unwrap().starts_with("linearizable_read: "), "{health}");
    assert_eq!(get(&metrics[0], "/livez").0, 200);
    assert_eq!(value(&scrape(&metrics[0]), "etcd_server_has_leader"), Some(0.0));
    assert_eq!(rt.block_on(grpc_status(&endpoints[0])), Some(ServingStatus::NotServing));
    assert_eq!(next_watched(&mut watched), Some(ServingStatus::NotServing));

    // The others return: ready again once ordering works, and writes go through.
    for b in 1..4 {
        chain.banks[b].sidecar.restart();
    }
    eventually(Duration::from_secs(180), "bank 0 ready again", || readyz(&metrics[0]).0 == 200);
    assert_eq!(next_watched(&mut watched), Some(ServingStatus::Serving));
    assert_eq!(rt.block_on(grpc_status(&endpoints[0])), Some(ServingStatus::Serving));
    rt.block_on(kv::put(&endpoints[0], "after", "v")).unwrap();
    for (b, m) in metrics.iter().enumerate() {
        eventually(Duration::from_secs(180), &format!("bank {b} ready after the restart"), || readyz(m).0 == 200);
    }

    // A key written behind bank 4's sidecar: at the next write it goes CORRUPT and not ready;
    // the others stay ready.
    Etcdctl::new(chain.banks[3].etcd.endpoint()).run(&["put", "behind", "x"]).expect_success();
    rt.block_on(kv::put(&endpoints[0], "after-tampering", "v")).unwrap();
    eventually(Duration::from_secs(60), "bank 4 not ready once corrupt", || readyz(&metrics[3]).0 == 503);
    let (_, body) = readyz(&metrics[3]);
    assert!(body.contains("[-]data_corruption failed: alarm activated: CORRUPT\n"), "{body}");
    eventually(Duration::from_secs(10), "bank 4 counts the failed digest check", || {
        value(&scrape(&metrics[3]), r#"bftcd_digest_checks_total{result="failed"}"#).unwrap_or(0.0) >= 1.0
    });
    assert_eq!(readyz(&metrics[0]).0, 200);
}
