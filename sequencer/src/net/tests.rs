//! Transport tests: 4 validators on 127.0.0.1 with port-0 listeners.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Receiver;
use tokio::time::{sleep, timeout, Instant};

use super::*;

struct Node {
    net: Network,
    rx: Receiver<(u32, Bytes)>,
}

struct Cluster {
    ca: DevCa,
    issued: Vec<Issued>,
    cfgs: Vec<NetConfig>,
    nodes: Vec<Node>,
}

async fn bind_local() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

async fn cluster(n: u32) -> Cluster {
    cluster_with(n, n).await
}

/// Binds every listener first, then builds the configs with the real addresses and starts the
/// first `running` of the `listed` validators.
async fn cluster_with(listed: u32, running: u32) -> Cluster {
    let ca = DevCa::generate("bftcd test CA");
    let issued: Vec<Issued> = (0..listed)
        .map(|i| ca.issue(&format!("bank-{i}")))
        .collect();
    let mut listeners = Vec::new();
    for _ in 0..listed {
        listeners.push(bind_local().await);
    }
    let peers: Vec<PeerInfo> = listeners
        .iter()
        .zip(&issued)
        .enumerate()
        .map(|(i, (l, c))| PeerInfo {
            index: i as u32,
            address: l.local_addr().unwrap().to_string(),
            cert_der: c.cert_der.clone(),
        })
        .collect();
    let mut cfgs = Vec::new();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let cfg = NetConfig::new(
            i as u32,
            listener.local_addr().unwrap(),
            peers.clone(),
            ca.cert_pem.clone(),
            issued[i].cert_pem.clone(),
            issued[i].key_pem.clone(),
        );
        if (i as u32) < running {
            let (net, rx) = Network::start_with_listener(cfg.clone(), listener)
                .await
                .unwrap();
            nodes.push(Node { net, rx });
        }
        cfgs.push(cfg);
    }
    Cluster {
        ca,
        issued,
        cfgs,
        nodes,
    }
}

async fn recv(rx: &mut Receiver<(u32, Bytes)>, d: Duration) -> Option<(u32, Bytes)> {
    timeout(d, rx.recv()).await.ok().flatten()
}

/// Re-sends `payload` from `from` to `to` every 100 ms until `to` receives a frame from `from`
/// starting with `prefix` (other frames are discarded).
async fn deliver_eventually(c: &mut Cluster, from: u32, to: u32, prefix: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "{from} -> {to} never delivered");
        c.nodes[from as usize]
            .net
            .send(to, Bytes::copy_from_slice(prefix));
        let until = Instant::now() + Duration::from_millis(100);
        while let Ok(Some((f, p))) =
            timeout(until - Instant::now(), c.nodes[to as usize].rx.recv()).await
        {
            if f == from && p.starts_with(prefix) {
                return;
            }
        }
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_to_all_delivery() {
    const DIRECT: u32 = 300;
    const BCAST: u32 = 50;
    const SELF: u32 = 10;
    let mut c = cluster(4).await;
    for node in &c.nodes {
        let me = node.net.me();
        for seq in 0..DIRECT {
            for to in (0..4).filter(|&t| t != me) {
                node.net.send(to, Bytes::from(format!("d:{me}:{to}:{seq}")));
            }
        }
        for seq in 0..BCAST {
            node.net.broadcast(Bytes::from(format!("b:{me}:*:{seq}")));
        }
        for seq in 0..SELF {
            node.net.send(me, Bytes::from(format!("s:{me}:{me}:{seq}")));
        }
    }
    let expected = 3 * (DIRECT + BCAST) + SELF;
    for node in &mut c.nodes {
        let me = node.net.me();
        let mut next: HashMap<(String, u32), u32> = HashMap::new();
        for _ in 0..expected {
            let (from, payload) = recv(&mut node.rx, Duration::from_secs(30))
                .await
                .unwrap_or_else(|| panic!("node {me} timed out"));
            let text = std::str::from_utf8(&payload).unwrap();
            let parts: Vec<&str> = text.split(':').collect();
            assert_eq!(
                parts[1].parse::<u32>().unwrap(),
                from,
                "sender index must match"
            );
            if parts[0] == "d" || parts[0] == "s" {
                assert_eq!(parts[2].parse::<u32>().unwrap(), me);
            }
            let seq: u32 = parts[3].parse().unwrap();
            let slot = next.entry((parts[0].to_string(), from)).or_insert(0);
            assert_eq!(seq, *slot, "in order per sender and kind");
            *slot += 1;
        }
        assert!(recv(&mut node.rx, Duration::from_millis(100))
            .await
            .is_none());
        let s = node.net.stats();
        assert_eq!(s.frames_received, u64::from(expected));
        assert_eq!(
            (s.dropped, s.malformed_frames, s.rejected_connections),
            (0, 0, 0)
        );
        for p in s.peers.iter().filter(|p| p.index != me) {
            assert_eq!(p.frames_received, u64::from(DIRECT + BCAST));
            assert_eq!(p.frames_sent, u64::from(DIRECT + BCAST));
            assert!(p.connected && p.connects == 1);
        }
    }
    for node in &c.nodes {
        node.net.shutdown().await;
    }
    for node in &mut c.nodes {
        assert!(
            recv(&mut node.rx, Duration::from_secs(5)).await.is_none(),
            "receiver ends"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_certificates_are_rejected() {
    let mut c = cluster(4).await;
    let other_ca = DevCa::generate("some other CA");
    // Each rogue claims a real validator's index; only its certificate differs.
    let rogues_certs = [
        (1u32, other_ca.issue("bank-1")),
        (2u32, c.ca.issue("bank-9")),
    ];
    let mut rogues = Vec::new();
    for (claim, cert) in &rogues_certs {
        let mut cfg = c.cfgs[*claim as usize].clone();
        cfg.peers[*claim as usize].cert_der = cert.cert_der.clone();
        cfg.my_cert_pem = cert.cert_pem.clone();
        cfg.my_key_pem = cert.key_pem.clone();
        let (net, rx) = Network::start_with_listener(cfg, bind_local().await)
            .await
            .unwrap();
        rogues.push((net, rx));
    }
    for k in 0..20 {
        for (net, _) in &rogues {
            net.broadcast(Bytes::from_static(b"rogue"));
        }
        for from in 1..4 {
            c.nodes[from]
                .net
                .send(0, Bytes::from(format!("real:{from}:{k}")));
        }
        sleep(Duration::from_millis(50)).await;
    }
    let n0 = c.nodes[0].net.clone();
    wait_for("two rejections at node 0", || {
        n0.stats().rejected_connections >= 2
    })
    .await;
    let mut real = 0;
    while let Some((from, payload)) = recv(&mut c.nodes[0].rx, Duration::from_millis(1500)).await {
        assert_ne!(
            &payload[..],
            b"rogue",
            "rogue frame delivered as from {from}"
        );
        let text = std::str::from_utf8(&payload).unwrap();
        assert_eq!(
            text.split(':').nth(1).unwrap().parse::<u32>().unwrap(),
            from
        );
        real += 1;
    }
    assert_eq!(real, 60);
    for node in &mut c.nodes[1..] {
        while let Some((_, payload)) = recv(&mut node.rx, Duration::from_millis(200)).await {
            assert_ne!(&payload[..], b"rogue");
        }
        let net = node.net.clone();
        wait_for("a rejection", || net.stats().rejected_connections >= 1).await;
    }
    let s = n0.stats();
    assert_eq!(s.malformed_frames, 0);
    assert_eq!(s.peer(1).unwrap().frames_received, 20);
    assert_eq!(s.peer(2).unwrap().frames_received, 20);
    for (net, _) in &rogues {
        assert_eq!(net.stats().frames_received, 0);
        net.shutdown().await;
    }
}

/// A TLS client holding validator `who`'s certificate, connected to node `to`.
async fn raw_client(
    c: &Cluster,
    who: usize,
    to: usize,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let provider = tls::provider();
    let roots = tls::roots_from_pem(&c.ca.cert_pem).unwrap();
    let me = tls::Identity::from_pem(&c.issued[who].cert_pem, &c.issued[who].key_pem).unwrap();
    let cfg = tls::client_config(&provider, &roots, c.issued[to].cert_der.clone(), &me).unwrap();
    let tcp = TcpStream::connect(c.nodes[to].net.local_addr())
        .await
        .unwrap();
    let name = tls::server_name_for(&c.nodes[to].net.local_addr().to_string());
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap()
}

async fn assert_closed(stream: &mut tokio_rustls::client::TlsStream<TcpStream>) {
    let mut buf = [0u8; 64];
    loop {
        match timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Err(_) => panic!("connection not closed"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_frames_close_the_connection() {
    // Validator 4 is listed but not running: the raw client holds its certificate.
    let mut c = cluster_with(5, 4).await;
    // Valid frame, then a 4 GiB length prefix (never allocated).
    let mut s = raw_client(&c, 4, 0).await;
    s.write_all(&[0, 0, 0, 2, b'o', b'k']).await.unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    s.flush().await.unwrap();
    let (from, payload) = recv(&mut c.nodes[0].rx, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!((from, &payload[..]), (4, &b"ok"[..]));
    assert_closed(&mut s).await;
    let n0 = c.nodes[0].net.clone();
    wait_for("malformed count 1", || n0.stats().malformed_frames == 1).await;
    assert_eq!(n0.stats().peer(4).unwrap().malformed_frames, 1);

    // A zero-length frame is a violation too.
    let mut s = raw_client(&c, 4, 0).await;
    s.write_all(&[0, 0, 0, 0]).await.unwrap();
    s.flush().await.unwrap();
    assert_closed(&mut s).await;
    wait_for("malformed count 2", || n0.stats().malformed_frames == 2).await;
    assert_eq!(n0.stats().peer(4).unwrap().malformed_frames, 2);

    // A connection with validator 3's certificate displaces 3's own inbound connection; 3
    // notices and reconnects.
    let mut s = raw_client(&c, 3, 0).await;
    s.write_all(&[0, 0, 0, 3, b'r', b'a', b'w']).await.unwrap();
    s.flush().await.unwrap();
    assert_closed(&mut s).await;

    // Everybody still gets through.
    for from in 1..4 {
        deliver_eventually(&mut c, from, 0, format!("after:{from}").as_bytes()).await;
        deliver_eventually(&mut c, 0, from, b"back").await;
    }
    assert_eq!(n0.stats().rejected_connections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_peer_is_reconnected() {
    let mut c = cluster(4).await;
    deliver_eventually(&mut c, 3, 0, b"before").await;
    deliver_eventually(&mut c, 0, 3, b"before").await;

    let mut cfg3 = c.cfgs[3].clone();
    cfg3.listen = c.nodes[3].net.local_addr();
    c.nodes[3].net.shutdown().await;
    while recv(&mut c.nodes[3].rx, Duration::from_secs(5))
        .await
        .is_some()
    {}
    c.nodes[3]
        .net
        .send(0, Bytes::from_static(b"after shutdown")); // ignored
                                                         // Once 0 has noticed the loss, messages queued while 3 is down wait until it is back.
    let n0 = c.nodes[0].net.clone();
    wait_for("0 notices 3 is gone", || {
        !n0.stats().peer(3).unwrap().connected
    })
    .await;
    c.nodes[0].net.send(3, Bytes::from_static(b"queued"));
    sleep(Duration::from_millis(300)).await;

    let (net, rx) = Network::start(cfg3).await.expect("rebind the same port");
    c.nodes[3] = Node { net, rx };
    let (from, payload) = recv(&mut c.nodes[3].rx, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!((from, &payload[..]), (0, &b"queued"[..]));
    deliver_eventually(&mut c, 0, 3, b"after").await;
    deliver_eventually(&mut c, 3, 0, b"after").await;
    deliver_eventually(&mut c, 3, 1, b"after").await;
    deliver_eventually(&mut c, 2, 3, b"after").await;
    let s = c.nodes[0].net.stats();
    assert!(s.peer(3).unwrap().connects >= 2, "{s:?}");
    for node in &c.nodes {
        node.net.shutdown().await;
    }
}

#[tokio::test]
async fn config_is_validated() {
    let c = cluster(2).await;
    let mut bad = c.cfgs[0].clone();
    bad.me = 7;
    assert!(matches!(
        Network::start(bad).await,
        Err(NetError::Config(_))
    ));
    let mut bad = c.cfgs[0].clone();
    bad.my_cert_pem = c.issued[1].cert_pem.clone();
    bad.my_key_pem = c.issued[1].key_pem.clone();
    assert!(matches!(
        Network::start(bad).await,
        Err(NetError::Config(_))
    ));
    let mut bad = c.cfgs[0].clone();
    bad.peers[1].cert_der = bad.peers[0].cert_der.clone();
    assert!(matches!(
        Network::start(bad).await,
        Err(NetError::Config(_))
    ));
    // Oversized and empty sends are refused and counted.
    let n = &c.nodes[0].net;
    n.send(1, Bytes::new());
    n.send(1, Bytes::from(vec![0u8; DEFAULT_MAX_FRAME_BYTES + 1]));
    n.send(9, Bytes::from_static(b"x"));
    let s = n.stats();
    assert_eq!((s.dropped, s.peer(1).unwrap().dropped), (3, 2));
}

#[tokio::test]
async fn dialer_checks_server_identity() {
    let c = cluster(3).await;
    let provider = tls::provider();
    let roots = tls::roots_from_pem(&c.ca.cert_pem).unwrap();
    let me = tls::Identity::from_pem(&c.issued[2].cert_pem, &c.issued[2].key_pem).unwrap();
    // Node 0 answers with its own valid certificate, but we dial expecting validator 1's.
    let cfg = tls::client_config(&provider, &roots, c.issued[1].cert_der.clone(), &me).unwrap();
    let tcp = TcpStream::connect(c.nodes[0].net.local_addr())
        .await
        .unwrap();
    let name = tls::server_name_for("127.0.0.1:1");
    let err = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NotAValidator"), "{err}");

    // A server certificate from another CA fails the chain check.
    let other = DevCa::generate("other");
    let roots_other = tls::roots_from_pem(&other.cert_pem).unwrap();
    let cfg = tls::client_config(&provider, &roots_other, c.issued[0].cert_der.clone(), &me);
    let tcp = TcpStream::connect(c.nodes[0].net.local_addr())
        .await
        .unwrap();
    let err = tokio_rustls::TlsConnector::from(cfg.unwrap())
        .connect(tls::server_name_for("localhost:1"), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    for node in &c.nodes {
        node.net.shutdown().await;
    }
}
