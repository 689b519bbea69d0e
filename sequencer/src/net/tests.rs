//! Transport tests: 4 validators on 127.0.0.1 with port-0 listeners.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout, Instant};

use super::*;

struct Node {
    net: Network,
    rx: InboundReceiver,
}

/// The genesis hash every test node has, unless a test changes it.
const GENESIS: [u8; 32] = [7; 32];

struct Cluster {
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
    cluster_tuned(listed, running, |_| {}).await
}

/// [`cluster_with`] with every config changed by `tune`.
async fn cluster_tuned(listed: u32, running: u32, tune: impl Fn(&mut NetConfig)) -> Cluster {
    let issued: Vec<Issued> = (0..listed)
        .map(|i| pki::self_signed(&format!("bank-{i}")).unwrap())
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
            name: format!("bank-{i}"),
            address: l.local_addr().unwrap().to_string(),
            cert_der: c.cert_der.clone(),
        })
        .collect();
    let mut cfgs = Vec::new();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let mut cfg = NetConfig::new(
            i as u32,
            listener.local_addr().unwrap(),
            peers.clone(),
            GENESIS,
            issued[i].cert_pem.clone(),
            issued[i].key_pem.clone(),
        );
        tune(&mut cfg);
        if (i as u32) < running {
            let (net, rx) = Network::start_with_listener(cfg.clone(), listener)
                .await
                .unwrap();
            nodes.push(Node { net, rx });
        }
        cfgs.push(cfg);
    }
    Cluster {
        issued,
        cfgs,
        nodes,
    }
}

async fn recv(rx: &mut InboundReceiver, d: Duration) -> Option<(u32, Bytes)> {
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
    // Each rogue claims a real validator's index (and name); only its certificate differs:
    // not the one pinned for that validator.
    let rogues_certs = [
        (1u32, pki::self_signed("bank-1").unwrap()),
        (2u32, DevCa::generate("some CA").issue("bank-2")),
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
    let me = tls::Identity::from_pem(&c.issued[who].cert_pem, &c.issued[who].key_pem).unwrap();
    let cfg = tls::client_config(&provider, c.issued[to].cert_der.clone(), &me).unwrap();
    let tcp = TcpStream::connect(c.nodes[to].net.local_addr())
        .await
        .unwrap();
    let name = tls::server_name_for(&c.nodes[to].net.local_addr().to_string());
    let mut s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    s.write_all(&conn::hello_frame(&GENESIS)).await.unwrap();
    s
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

    // A zero-length frame is a keepalive ping: not delivered, not a violation.
    let mut s = raw_client(&c, 4, 0).await;
    s.write_all(&[0, 0, 0, 0, 0, 0, 0, 1, b'!']).await.unwrap();
    s.flush().await.unwrap();
    let (from, payload) = recv(&mut c.nodes[0].rx, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!((from, &payload[..]), (4, &b"!"[..]));
    assert_eq!(n0.stats().malformed_frames, 1);
    drop(s);

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
    let s3 = c.nodes[3].net.stats();
    assert!(
        s3.peers
            .iter()
            .all(|p| !p.connected && !p.inbound_connected),
        "a stopped transport reports no connection: {s3:?}"
    );
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
    let me = tls::Identity::from_pem(&c.issued[2].cert_pem, &c.issued[2].key_pem).unwrap();
    // Node 0 answers with its own valid certificate, but we dial expecting validator 1's.
    let cfg = tls::client_config(&provider, c.issued[1].cert_der.clone(), &me).unwrap();
    let tcp = TcpStream::connect(c.nodes[0].net.local_addr())
        .await
        .unwrap();
    let name = tls::server_name_for("127.0.0.1:1");
    let err = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NotAValidator"), "{err}");

    for node in &c.nodes {
        node.net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_with_another_genesis_are_refused_on_both_sides() {
    // Validator 2 has the right keys and certificate but another genesis.
    let mut c = cluster_with(3, 2).await;
    let mut other = c.cfgs[2].clone();
    other.genesis_hash = [9; 32];
    let listener = TcpListener::bind(other.listen).await.unwrap();
    let (odd, mut odd_rx) = Network::start_with_listener(other, listener).await.unwrap();
    for k in 0..10 {
        odd.broadcast(Bytes::from(format!("odd:{k}")));
        c.nodes[0].net.send(2, Bytes::from_static(b"to-odd"));
        sleep(Duration::from_millis(50)).await;
    }
    let (n0, n1) = (c.nodes[0].net.clone(), c.nodes[1].net.clone());
    wait_for("mismatches counted on both sides", || {
        let a = n0.stats().peer(2).unwrap().genesis_mismatches;
        let b = odd.stats().peer(0).unwrap().genesis_mismatches;
        a >= 2 && b >= 2
    })
    .await;
    // The two with the same genesis still talk.
    deliver_eventually(&mut c, 0, 1, b"same").await;
    while let Some((from, payload)) = recv(&mut c.nodes[0].rx, Duration::from_millis(300)).await {
        assert!(
            from != 2 && !payload.starts_with(b"odd"),
            "a frame from another genesis was delivered"
        );
    }
    assert!(
        recv(&mut odd_rx, Duration::from_millis(300))
            .await
            .is_none(),
        "the odd node received a frame"
    );
    for net in [&n0, &n1] {
        let p = net.stats().peer(2).unwrap().clone();
        assert!(
            !p.connected && !p.inbound_connected && p.frames_received == 0,
            "{p:?}"
        );
    }
    odd.shutdown().await;
    for node in &c.nodes {
        node.net.shutdown().await;
    }
}

#[tokio::test]
async fn peers_without_the_protocol_version_are_refused() {
    let c = cluster_with(3, 2).await;
    let provider = tls::provider();
    let me = tls::Identity::from_pem(&c.issued[2].cert_pem, &c.issued[2].key_pem).unwrap();
    let cfg = tls::client_config(&provider, c.issued[0].cert_der.clone(), &me).unwrap();
    // Version 1 offered no ALPN at all; another version offers a different name.
    for alpn in [vec![], vec![b"bftcd-peer/1".to_vec()]] {
        let mut old = (*cfg).clone();
        old.alpn_protocols = alpn;
        let tcp = TcpStream::connect(c.nodes[0].net.local_addr())
            .await
            .unwrap();
        let name = tls::server_name_for(&c.nodes[0].net.local_addr().to_string());
        if let Ok(mut s) = tokio_rustls::TlsConnector::from(Arc::new(old))
            .connect(name, tcp)
            .await
        {
            let _ = s.write_all(&[0, 0, 0, 1, b'x']).await;
            let _ = s.flush().await;
            assert_closed(&mut s).await;
        }
    }
    let n0 = c.nodes[0].net.clone();
    wait_for("two refusals", || n0.stats().rejected_connections == 2).await;
    assert_eq!(n0.stats().peer(2).unwrap().frames_received, 0);
    for node in &c.nodes {
        node.net.shutdown().await;
    }
}

/// A TCP relay in front of one node that can go silent: while closed it forwards nothing in
/// either direction and connects nothing upstream (new connections are accepted and held, like
/// SYNs a cut link delays), without closing anything, so endpoints see neither RST nor FIN.
struct Relay {
    addr: String,
    open: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = bind_local().await;
        let addr = listener.local_addr().unwrap().to_string();
        let (open, open_rx) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    return;
                };
                let mut gate = open_rx.clone();
                conns.spawn(async move {
                    if gate.wait_for(|o| *o).await.is_err() {
                        return;
                    }
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::select! {
                        _ = Relay::pump(dr, uw, gate.clone()) => {}
                        _ = Relay::pump(ur, dw, gate) => {}
                    }
                });
            }
        });
        Relay { addr, open, task }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut gate: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if gate.wait_for(|o| *o).await.is_err() {
                return;
            }
            let n = tokio::select! {
                r = from.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
                // Stop mid-read when the gate closes (bytes not yet read stay unread).
                _ = gate.wait_for(|o| !*o) => continue,
            };
            // Bytes read just as the gate closed are held until it opens.
            if gate.wait_for(|o| *o).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Two nodes whose every connection runs through a relay: 0 dials 1 through `relays[1]`, 1
/// dials 0 through `relays[0]`.
async fn relayed_pair(tune: impl Fn(&mut NetConfig)) -> (Vec<Node>, Vec<Relay>) {
    let issued: Vec<Issued> = (0..2)
        .map(|i| pki::self_signed(&format!("bank-{i}")).unwrap())
        .collect();
    let listeners = [bind_local().await, bind_local().await];
    let mut relays = Vec::new();
    for l in &listeners {
        relays.push(Relay::start(l.local_addr().unwrap()).await);
    }
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let peers = (0..2)
            .map(|j| PeerInfo {
                index: j as u32,
                name: format!("bank-{j}"),
                address: relays[j].addr.clone(),
                cert_der: issued[j].cert_der.clone(),
            })
            .collect();
        let mut cfg = NetConfig::new(
            i as u32,
            listener.local_addr().unwrap(),
            peers,
            GENESIS,
            issued[i].cert_pem.clone(),
            issued[i].key_pem.clone(),
        );
        tune(&mut cfg);
        let (net, rx) = Network::start_with_listener(cfg, listener).await.unwrap();
        nodes.push(Node { net, rx });
    }
    (nodes, relays)
}

fn link_up(net: &Network, peer: u32) -> bool {
    let s = net.stats();
    let p = s.peer(peer).unwrap();
    p.connected && p.inbound_connected
}

fn link_down(net: &Network, peer: u32) -> bool {
    let s = net.stats();
    let p = s.peer(peer).unwrap();
    !p.connected && !p.inbound_connected
}

/// Waits up to `limit` for `cond`; returns how long it took.
async fn within_limit(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// With the default timers: a link that silently stops carrying anything is found dead on both
/// sides within the idle timeout, and comes back as soon as it carries traffic again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_peer_is_detected_and_reconnected() {
    let k = Keepalive::default();
    let (mut nodes, relays) = relayed_pair(|_| {}).await;
    let (a, b) = (nodes[0].net.clone(), nodes[1].net.clone());
    within_limit("link up", Duration::from_secs(10), || {
        link_up(&a, 1) && link_up(&b, 0)
    })
    .await;
    // Idle but healthy: pings keep the link up well past the idle timeout.
    sleep(k.idle_timeout * 2).await;
    assert!(link_up(&a, 1) && link_up(&b, 0), "{:?}", a.stats());
    assert_eq!(a.stats().peer(1).unwrap().keepalive_timeouts, 0);
    assert!(a.stats().peer(1).unwrap().last_heard.unwrap() <= k.ping_interval * 2);

    for r in &relays {
        r.set_open(false);
    }
    let took = within_limit(
        "both sides notice the silence",
        k.idle_timeout + Duration::from_secs(2),
        || link_down(&a, 1) && link_down(&b, 0),
    )
    .await;
    eprintln!("silence noticed on both sides after {took:?}");
    let s = a.stats();
    let p = s.peer(1).unwrap();
    assert!(p.keepalive_timeouts >= 1, "{p:?}");
    assert!(
        p.last_heard.unwrap() >= k.idle_timeout - k.ping_interval,
        "{p:?}"
    );
    // Sending into the cut never blocks; the queue keeps the messages.
    for i in 0..100u32 {
        a.send(1, Bytes::from(format!("cut:{i}")));
    }
    assert_eq!(a.stats().peer(1).unwrap().queued, 100);

    for r in &relays {
        r.set_open(true);
    }
    let took = within_limit(
        "reconnected after the heal",
        k.reconnect_max + Duration::from_secs(3),
        || link_up(&a, 1) && link_up(&b, 0),
    )
    .await;
    eprintln!("reconnected {took:?} after the heal");
    for i in 0..100u32 {
        let (from, payload) = recv(&mut nodes[1].rx, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((from, &payload[..]), (0, format!("cut:{i}").as_bytes()));
    }
    deliver_pair(&mut nodes, b"after").await;
    assert!(a.stats().peer(1).unwrap().connects >= 2);
    for node in &nodes {
        node.net.shutdown().await;
    }
}

async fn deliver_pair(nodes: &mut [Node], prefix: &[u8]) {
    for (from, to) in [(0usize, 1usize), (1, 0)] {
        let deadline = Instant::now() + Duration::from_secs(10);
        'outer: loop {
            assert!(Instant::now() < deadline, "{from} -> {to} never delivered");
            nodes[from]
                .net
                .send(to as u32, Bytes::copy_from_slice(prefix));
            let until = Instant::now() + Duration::from_millis(100);
            while let Ok(Some((f, p))) = timeout(until - Instant::now(), nodes[to].rx.recv()).await
            {
                if f == from as u32 && p.starts_with(prefix) {
                    break 'outer;
                }
            }
        }
    }
}

/// Short timers; repeated cuts; a queue that overflows during a cut keeps the newest messages,
/// and `send` stays instant throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_cuts_keep_the_newest_messages() {
    let k = Keepalive {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        write_timeout: Duration::from_millis(800),
        connect_timeout: Duration::from_millis(300),
        reconnect_max: Duration::from_millis(200),
    };
    let (mut nodes, relays) = relayed_pair(|cfg| {
        cfg.keepalive = k;
        cfg.queue_per_peer = 50;
    })
    .await;
    let (a, b) = (nodes[0].net.clone(), nodes[1].net.clone());
    for round in 0..3u32 {
        within_limit("link up", Duration::from_secs(5), || {
            link_up(&a, 1) && link_up(&b, 0)
        })
        .await;
        deliver_pair(&mut nodes, format!("hello:{round}").as_bytes()).await;
        for r in &relays {
            r.set_open(false);
        }
        within_limit(
            "silence noticed",
            k.idle_timeout + Duration::from_secs(1),
            || link_down(&a, 1) && link_down(&b, 0),
        )
        .await;
        while recv(&mut nodes[1].rx, Duration::from_millis(10))
            .await
            .is_some()
        {}
        let before = a.stats().peer(1).unwrap().dropped;
        let start = std::time::Instant::now();
        for i in 0..1000u32 {
            a.send(1, Bytes::from(format!("m:{round}:{i:04}")));
        }
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "send blocked: {:?}",
            start.elapsed()
        );
        let s = a.stats();
        assert_eq!(s.peer(1).unwrap().queued, 50);
        assert_eq!(s.peer(1).unwrap().dropped - before, 950);
        for r in &relays {
            r.set_open(true);
        }
        // The 50 newest arrive, in order, and nothing older.
        for i in 950..1000u32 {
            let (from, payload) = recv(&mut nodes[1].rx, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(
                (from, std::str::from_utf8(&payload).unwrap()),
                (0, format!("m:{round}:{i:04}").as_str())
            );
        }
    }
    assert!(a.stats().peer(1).unwrap().keepalive_timeouts >= 3);
    for node in &nodes {
        node.net.shutdown().await;
    }
}

/// A peer that stays connected and pings but stops reading (stuck): the sender's write stalls
/// and is given up after the write timeout; once the peer reads again, traffic flows on a new
/// connection. (The stuck peer is a bare TLS endpoint: a real node never stops reading, since
/// its full inbound queues drop instead of waiting.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_writes_are_given_up() {
    let k = Keepalive {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        write_timeout: Duration::from_millis(800),
        connect_timeout: Duration::from_millis(300),
        reconnect_max: Duration::from_millis(200),
    };
    let mut c = cluster_tuned(2, 1, |cfg| cfg.keepalive = k).await;
    let a = c.nodes[0].net.clone();
    // Validator 1's port: a TLS endpoint with its identity that pings and never reads.
    let listener = TcpListener::bind(c.cfgs[1].listen).await.unwrap();
    let me = tls::Identity::from_pem(&c.issued[1].cert_pem, &c.issued[1].key_pem).unwrap();
    let known = Arc::new(
        c.cfgs[1]
            .peers
            .iter()
            .map(|p| (p.cert_der.clone(), p.index))
            .collect(),
    );
    let server = tls::server_config(&tls::provider(), known, &me).unwrap();
    let stuck = tokio::spawn(async move {
        let mut held = JoinSet::new();
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
            held.spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                if s.write_all(&conn::hello_frame(&GENESIS)).await.is_err() {
                    return;
                }
                while s.write_all(&[0, 0, 0, 0]).await.is_ok() && s.flush().await.is_ok() {
                    sleep(Duration::from_millis(100)).await;
                }
            });
        }
    });
    within_limit("link up", Duration::from_secs(5), || a.stats().peer(1).unwrap().connected).await;
    let start = Instant::now();
    let big = Bytes::from(vec![7u8; 1 << 20]);
    while a.stats().peer(1).unwrap().keepalive_timeouts == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "stall never noticed: {:?}",
            a.stats()
        );
        if a.stats().peer(1).unwrap().queued < 2 {
            a.send(1, big.clone());
        }
        sleep(Duration::from_millis(20)).await;
    }
    eprintln!("stalled write given up after {:?}", start.elapsed());
    stuck.abort();
    let _ = stuck.await;
    let (net, rx) = Network::start(c.cfgs[1].clone()).await.expect("rebind validator 1's port");
    c.nodes.push(Node { net, rx });
    deliver_pair(&mut c.nodes, b"unstuck").await;
    assert!(a.stats().peer(1).unwrap().connects >= 2);
    for node in &c.nodes {
        node.net.shutdown().await;
    }
}

/// Writes `n` frames of `payload` as fast as the connection takes them.
async fn flood(mut s: tokio_rustls::client::TlsStream<TcpStream>, n: usize, payload: &[u8]) {
    let mut frame = encode_header(payload.len()).to_vec();
    frame.extend_from_slice(payload);
    for _ in 0..n {
        if s.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = s.flush().await;
    // Hold the connection open.
    sleep(Duration::from_secs(60)).await;
}

/// One peer floods (thousands of frames, more than its inbound queue holds) while the receiver
/// is not draining; another peer's single message is then handed out within one round of the
/// peers, not behind the flood. The flooder's queue dropped its own oldest messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_peer_does_not_starve_another() {
    const FLOOD: usize = 20_000;
    // Validators 1 and 2 are listed, not running: raw clients hold their certificates.
    let mut c = cluster_with(3, 1).await;
    let n0 = c.nodes[0].net.clone();
    let flooder = tokio::spawn(flood(raw_client(&c, 1, 0).await, FLOOD, &[0xf1; 100]));
    wait_for("the flood to fill node 0's queue", || {
        n0.stats().peer(1).unwrap().frames_received >= 4096
    })
    .await;
    let mut honest = raw_client(&c, 2, 0).await;
    honest.write_all(&[0, 0, 0, 6]).await.unwrap();
    honest.write_all(b"honest").await.unwrap();
    honest.flush().await.unwrap();
    wait_for("node 0 to read the honest frame", || {
        n0.stats().peer(2).unwrap().frames_received == 1
    })
    .await;
    let mut position = None;
    for i in 0..FLOOD {
        let (from, payload) = recv(&mut c.nodes[0].rx, Duration::from_secs(10))
            .await
            .expect("a message");
        if from == 2 {
            assert_eq!(&payload[..], b"honest");
            position = Some(i);
            break;
        }
        assert_eq!((from, payload.len()), (1, 100));
    }
    let position = position.expect("the honest message was delivered");
    eprintln!("the honest message came after {position} of the flooder's");
    // The peers' lanes (0, 1, 2) are drained in turn: at most one of the flooder's first.
    assert!(position <= 2, "the honest message waited behind {position} flood messages");
    let s = n0.stats();
    assert!(s.peer(1).unwrap().inbound_dropped > 0, "{s:?}");
    assert_eq!(s.peer(2).unwrap().inbound_dropped, 0);
    assert!(s.peer(1).unwrap().inbound_queued as usize <= DEFAULT_INBOUND_PER_PEER);
    // Local delivery still works beside the flood.
    n0.send(0, Bytes::from_static(b"self"));
    let mut seen_self = false;
    for _ in 0..4 {
        let (from, payload) = recv(&mut c.nodes[0].rx, Duration::from_secs(10)).await.unwrap();
        if from == 0 {
            assert_eq!(&payload[..], b"self");
            seen_self = true;
            break;
        }
    }
    assert!(seen_self, "local delivery waited behind the flood");
    flooder.abort();
    n0.shutdown().await;
}

/// Many connections from one address (127.0.0.2) that never send a byte hold every handshake
/// slot they can get; a validator connecting from another address (127.0.0.1) still gets in
/// at once, not only after the attacker's handshakes time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_open_connections_from_one_address_do_not_lock_out_a_peer() {
    const ATTACKERS: usize = 100;
    let mut c = cluster_with(4, 3).await;
    let target = c.nodes[0].net.local_addr();
    let mut held = Vec::new();
    for _ in 0..ATTACKERS {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        held.push(sock.connect(target).await.unwrap());
    }
    let n0 = c.nodes[0].net.clone();
    wait_for("node 0 to refuse the attacker's surplus", || {
        n0.stats().rejected_connections >= (ATTACKERS - MAX_PENDING_HANDSHAKES) as u64
    })
    .await;
    let refused = n0.stats().rejected_connections;
    eprintln!("node 0 refused {refused} of {ATTACKERS} half-open connections from 127.0.0.2");

    // Validator 3 starts only now and must get through well before HANDSHAKE_TIMEOUT (10 s).
    let started = Instant::now();
    let (net, rx) = Network::start(c.cfgs[3].clone()).await.unwrap();
    c.nodes.push(Node { net, rx });
    let limit = Duration::from_secs(5);
    let took = within_limit("validator 3 connected to node 0", limit, || {
        n0.stats().peer(3).unwrap().inbound_connected
    })
    .await;
    eprintln!("validator 3 connected after {took:?}");
    c.nodes[3].net.send(0, Bytes::from_static(b"through"));
    let (from, payload) = recv(&mut c.nodes[0].rx, limit.saturating_sub(started.elapsed()))
        .await
        .expect("validator 3's message within the limit");
    assert_eq!((from, &payload[..]), (3, &b"through"[..]));
    // All but the per-address limit were refused (some may still have been in the backlog above).
    wait_for("node 0 to refuse all but 4 of the attacker's connections", || {
        n0.stats().rejected_connections >= (ATTACKERS - MAX_HANDSHAKES_PER_SOURCE) as u64
    })
    .await;
    drop(held);
    for node in &c.nodes {
        node.net.shutdown().await;
    }
}

/// Half-open connections from 32 addresses (4 each, 128 in all) hold every shared handshake
/// slot; a validator dialing from the address it is listed with still gets through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_from_many_addresses_do_not_lock_out_a_listed_peer() {
    const SOURCES: u8 = 32;
    let mut c = cluster_with(4, 3).await;
    let target = c.nodes[0].net.local_addr();
    let mut held = Vec::new();
    for a in 0..SOURCES {
        for _ in 0..MAX_HANDSHAKES_PER_SOURCE {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(std::net::SocketAddr::from(([127, 0, 1, 2 + a], 0))).unwrap();
            held.push(sock.connect(target).await.unwrap());
        }
    }
    let n0 = c.nodes[0].net.clone();
    let surplus = SOURCES as usize * MAX_HANDSHAKES_PER_SOURCE - MAX_PENDING_HANDSHAKES;
    wait_for("node 0 to run out of shared handshake slots", || n0.stats().rejected_connections >= surplus as u64).await;

    let (net, rx) = Network::start(c.cfgs[3].clone()).await.unwrap();
    c.nodes.push(Node { net, rx });
    let took = within_limit("validator 3 connected to node 0", Duration::from_secs(5), || {
        n0.stats().peer(3).unwrap().inbound_connected
    })
    .await;
    eprintln!("validator 3 (127.0.0.1) connected after {took:?} with every shared slot held");
    drop(held);
    for node in &c.nodes {
        node.net.shutdown().await;
    }
}

/// A listener whose accept queue is full drops SYNs, as a cut link does: the staggered connect
/// gives up at its limit, and gets through once the queue drains (the link heals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_on_a_silent_link_gives_up_at_its_limit_and_gets_through_after_the_heal() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    // Fill the accept queue; connects beyond it hang with their SYNs dropped.
    let mut held = Vec::new();
    loop {
        match timeout(Duration::from_millis(300), TcpStream::connect(&address)).await {
            Ok(Ok(s)) => held.push(s),
            _ => break,
        }
        assert!(held.len() < 64, "the kernel never stopped answering: no silent link to test");
    }
    let started = Instant::now();
    let error = conn::connect_staggered(&address, Duration::from_millis(900)).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    let healing = tokio::spawn(async move {
        sleep(Duration::from_millis(300)).await;
        let mut accepted = Vec::new();
        while let Ok(Ok((s, _))) = timeout(Duration::from_secs(5), listener.accept()).await {
            accepted.push(s);
        }
    });
    conn::connect_staggered(&address, Duration::from_secs(4)).await.expect("connects once the link heals");
    healing.abort();
    drop(held);
}
