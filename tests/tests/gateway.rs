//! etcd's JSON gateway on the client port: the same HTTP/1.1 requests (curl, as etcd's docs use
//! it) to a stock etcd 3.5.16 and to banks of a four-bank chain get the same answers, byte for
//! byte once the member and cluster ids and the raft term are masked; writes at one bank are
//! read at another; auth, TLS, signed answers and the client limits hold as over gRPC.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use bftcd_proto::bftcd::{AnswerEvidence, Genesis};
use bftcd_proto::Message;
use bftcd_sequencer::keys::ChainCrypto;
use bftcd_tests::tls::https;
use bftcd_tests::{Chain, EtcdProcess, Etcdctl, Sidecar, TestDir};

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// One request with curl; `extra` are more curl arguments (headers, TLS files).
fn curl(base: &str, method: &str, path: &str, body: Option<&[u8]>, extra: &[&str]) -> Answer {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-i",
        "--max-time",
        "20",
        "-H",
        "Expect:",
        "-X",
        method,
    ])
    .args(extra);
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    cmd.arg(format!("{base}{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("curl must be installed for the gateway tests");
    let mut stdin = child.stdin.take().unwrap();
    let data = body.unwrap_or_default().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    parse(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|| panic!("{method} {base}{path}: no HTTP answer: {out:?}"))
}

fn parse(text: &str) -> Option<Answer> {
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}

fn post(base: &str, path: &str, body: &str) -> Answer {
    curl(base, "POST", path, Some(body.as_bytes()), &[])
}

/// What legitimately differs between a stock etcd and a bank: the ids and the raft term.
fn masked(body: &str) -> String {
    let re = regex::Regex::new(r#""(cluster_id|member_id|raft_term|leader|ID)":"\d+""#).unwrap();
    re.replace_all(body, r#""$1":"N""#).into_owned()
}

/// The same request at etcd and at a bank answers the same, status and body.
fn same(etcd: &str, bank: &str, path: &str, body: &str) -> Answer {
    let (e, b) = (post(etcd, path, body), post(bank, path, body));
    assert_eq!(
        (b.status, masked(&b.body)),
        (e.status, masked(&e.body)),
        "POST {path} {body}: bank (left) and etcd (right) differ"
    );
    assert_eq!(b.header("content-type"), e.header("content-type"), "{path}");
    b
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A watch over HTTP/1.1 as `curl -N` keeps it: its answer lines as they come.
struct Watch {
    lines: std::sync::mpsc::Receiver<String>,
    conn: TcpStream,
}

impl Drop for Watch {
    /// Closes the connection (the reader thread holds a clone of the socket).
    fn drop(&mut self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
    }
}

impl Watch {
    fn start(addr: &str, body: &str) -> Watch {
        let mut conn = TcpStream::connect(addr).unwrap();
        write!(
            conn,
            "POST /v3/watch HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let reader = BufReader::new(conn.try_clone().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Chunked: each chunk's size line, then its data; only the JSON lines are kept.
            for line in reader.lines().map_while(Result::ok) {
                if line.starts_with('{') && tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watch { lines, conn }
    }
    fn next(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .expect("a watch answer within 20 s")
    }
}

#[test]
fn the_gateway_answers_as_stock_etcd_across_banks() {
    let dir = TestDir::new("gateway");
    // etcd's own limits (a bank's etcd allows more, for the bookkeeping).
    let etcd = EtcdProcess::start(&dir, "stock");
    let chain = Chain::start(&dir, 4);
    let e = format!("http://{}", etcd.endpoint());
    let banks: Vec<String> = chain
        .endpoints()
        .iter()
        .map(|b| format!("http://{b}"))
        .collect();
    let bank = |i: usize| banks[i].as_str();

    // A put at bank 1 is read at bank 3, as etcd answers it (revisions included: both start at
    // revision 1 and each write here makes one revision at both).
    let put = format!(r#"{{"key":"{}","value":"{}"}}"#, b64("foo"), b64("bar"));
    same(&e, bank(0), "/v3/kv/put", &put);
    let read = same(
        &e,
        bank(2),
        "/v3/kv/range",
        &format!(r#"{{"key":"{}"}}"#, b64("foo")),
    );
    assert_eq!(read.json()["kvs"][0]["value"], b64("bar"), "{read:?}");
    assert!(
        read.body.contains(r#""count":"1""#),
        "int64 as a string: {}",
        read.body
    );
    same(
        &e,
        bank(1),
        "/v3/kv/put",
        &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("a"), b64("1")),
    );
    same(
        &e,
        bank(3),
        "/v3/kv/put",
        &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("b"), b64("2")),
    );
    same(
        &e,
        bank(0),
        "/v3/kv/range",
        &format!(
            r#"{{"key":"{}","range_end":"{}","limit":"5","sortOrder":"DESCEND"}}"#,
            b64("a"),
            b64("c")
        ),
    );
    same(
        &e,
        bank(1),
        "/v3/kv/range",
        &format!(
            r#"{{"key":"{}","count_only":true,"unknown":[1]}}"#,
            b64("a")
        ),
    );

    // Txn: both branches, nested answers.
    let txn = |value: &str| {
        format!(
            r#"{{"compare":[{{"target":"VALUE","key":"{a}","value":"{v}","result":"EQUAL"}}],"success":[{{"request_put":{{"key":"{a}","value":"{n}","prev_kv":true}}}},{{"request_range":{{"key":"{b}"}}}}],"failure":[{{"request_delete_range":{{"key":"{b}","prev_kv":true}}}}]}}"#,
            a = b64("a"),
            b = b64("b"),
            v = b64(value),
            n = b64("3")
        )
    };
    let t = same(&e, bank(2), "/v3/kv/txn", &txn("1"));
    assert_eq!(t.json()["succeeded"], true, "{t:?}");
    let t = same(&e, bank(3), "/v3/kv/txn", &txn("1"));
    assert!(
        t.json()["responses"][0]["response_delete_range"]["prev_kvs"].is_array(),
        "{t:?}"
    );
    same(&e, bank(0), "/v3/kv/txn", "{}");
    same(
        &e,
        bank(1),
        "/v3/kv/deleterange",
        &format!(r#"{{"key":"{}","prev_kv":true}}"#, b64("foo")),
    );
    same(
        &e,
        bank(2),
        "/v3/kv/deleterange",
        &format!(r#"{{"key":"{}"}}"#, b64("foo")),
    );

    // Errors: etcd's code, HTTP status and text.
    same(&e, bank(3), "/v3/kv/range", r#"{"key":""}"#);
    same(&e, bank(3), "/v3/kv/range", "");
    same(
        &e,
        bank(0),
        "/v3/kv/range",
        &format!(r#"{{"key":"{}","revision":"1000"}}"#, b64("a")),
    );
    same(
        &e,
        bank(1),
        "/v3/kv/put",
        &format!(r#"{{"value":"{}"}}"#, b64("no key")),
    );
    same(&e, bank(1), "/v3/kv/nothing", "{}");
    for (path, body) in [
        ("/v3/kv/range", "{bad"),
        ("/v3/kv/range", r#"{"key":"!!!"}"#),
        ("/v3/kv/put", "[1]"),
    ] {
        let (eb, bb) = (post(&e, path, body), post(bank(2), path, body));
        assert_eq!(
            (bb.status, bb.json()["code"].clone()),
            (eb.status, eb.json()["code"].clone()),
            "{path} {body}: {bb:?} vs {eb:?}"
        );
    }
    // A value over --max-request-bytes, and one over gRPC's receive limit too.
    for (size, code) in [(1_600_000, 3), (2_200_000, 8)] {
        let big = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64("big"),
            b64(&"x".repeat(size))
        );
        let (eb, bb) = (
            post(&e, "/v3/kv/put", &big),
            post(bank(0), "/v3/kv/put", &big),
        );
        assert_eq!(
            (bb.status, bb.json()["code"].as_i64()),
            (eb.status, Some(code)),
            "{size} bytes: {bb:?} vs {eb:?}"
        );
        if code == 3 {
            assert_eq!(bb.body, eb.body);
        } else {
            assert!(
                bb.json()["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("grpc: received message larger than max ("),
                "{bb:?}"
            );
        }
    }
    for path in ["/v3/kv/range", "/nothing", "/v3/nothing"] {
        let (eb, bb) = (
            curl(&e, "GET", path, None, &[]),
            curl(bank(0), "GET", path, None, &[]),
        );
        assert_eq!((bb.status, &bb.body), (eb.status, &eb.body), "GET {path}");
    }
    let (eb, bb) = (post(&e, "/health", ""), post(bank(0), "/health", ""));
    assert_eq!(
        (bb.status, &bb.body, bb.header("allow")),
        (eb.status, &eb.body, eb.header("allow")),
        "POST /health"
    );
    for path in ["/health", "/version"] {
        let (eb, bb) = (
            curl(&e, "GET", path, None, &[]),
            curl(bank(3), "GET", path, None, &[]),
        );
        assert_eq!(
            (bb.status, &bb.body, bb.header("content-type")),
            (eb.status, &eb.body, eb.header("content-type")),
            "GET {path}"
        );
    }

    // Leases: grant with an id, time to live (its TTL counts down on its own clock), list, revoke.
    same(&e, bank(0), "/v3/lease/grant", r#"{"TTL":"60","ID":"7"}"#);
    same(
        &e,
        bank(1),
        "/v3/kv/put",
        &format!(
            r#"{{"key":"{}","value":"{}","lease":"7"}}"#,
            b64("leased"),
            b64("v")
        ),
    );
    let ttl = regex::Regex::new(r#""TTL":"\d+""#).unwrap();
    for path in ["/v3/lease/timetolive", "/v3/kv/lease/timetolive"] {
        let body = r#"{"ID":"7","keys":true}"#;
        let (eb, bb) = (post(&e, path, body), post(bank(2), path, body));
        assert_eq!(
            ttl.replace(&masked(&bb.body), "TTL"),
            ttl.replace(&masked(&eb.body), "TTL"),
            "{path}"
        );
        let left: i64 = bb.json()["TTL"].as_str().unwrap().parse().unwrap();
        assert!((50..=60).contains(&left), "{bb:?}");
    }
    same(&e, bank(3), "/v3/lease/leases", "{}");
    same(&e, bank(3), "/v3/kv/lease/leases", "{}");
    // Keepalive: one answer line per request in the body, then the answer ends, as etcd's.
    let ka = same(
        &e,
        bank(1),
        "/v3/lease/keepalive",
        r#"{"ID":"7"}{"ID":"7"}"#,
    );
    assert_eq!(
        ka.body
            .lines()
            .filter(|l| l.starts_with(r#"{"result":"#))
            .count(),
        2,
        "{ka:?}"
    );
    same(&e, bank(2), "/v3/lease/keepalive", r#"{"ID":"12345"}"#);
    same(&e, bank(0), "/v3/lease/revoke", r#"{"ID":"7"}"#);
    same(&e, bank(1), "/v3/kv/lease/revoke", r#"{"ID":"7"}"#);
    same(
        &e,
        bank(2),
        "/v3/kv/range",
        &format!(r#"{{"key":"{}"}}"#, b64("leased")),
    );
    same(&e, bank(3), "/v3/kv/compaction", r#"{"revision":"3"}"#);
    same(
        &e,
        bank(3),
        "/v3/kv/range",
        &format!(r#"{{"key":"{}","revision":"2"}}"#, b64("a")),
    );

    // Status and member list: etcd's shape.
    let (es, bs) = (
        post(&e, "/v3/maintenance/status", "{}"),
        post(bank(1), "/v3/maintenance/status", "{}"),
    );
    assert_eq!(bs.status, 200);
    for field in [
        "header",
        "version",
        "dbSize",
        "leader",
        "raftIndex",
        "raftTerm",
        "dbSizeInUse",
    ] {
        assert!(
            es.json().get(field).is_some() && bs.json().get(field).is_some(),
            "{field}: {bs:?} vs {es:?}"
        );
    }
    assert_eq!(bs.json()["version"], "3.5.16");
    let members = post(bank(2), "/v3/cluster/member/list", "{}").json();
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(4),
        "{members}"
    );
    for m in members["members"].as_array().unwrap() {
        assert!(
            m["name"].is_string()
                && m["peerURLs"].is_array()
                && m["clientURLs"].is_array()
                && m["ID"].is_string(),
            "{m}"
        );
    }

    // Watch: a put and a delete through other banks arrive as etcd sends them.
    let watch = format!(
        r#"{{"create_request":{{"key":"{}","prev_kv":true}}}}"#,
        b64("w")
    );
    let ew = Watch::start(&etcd.endpoint(), &watch);
    let bw = Watch::start(&chain.endpoints()[1], &watch);
    let (ec, bc) = (ew.next(), bw.next());
    assert_eq!(masked(&bc), masked(&ec), "created");
    same(
        &e,
        bank(3),
        "/v3/kv/put",
        &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("w"), b64("1")),
    );
    same(
        &e,
        bank(0),
        "/v3/kv/deleterange",
        &format!(r#"{{"key":"{}"}}"#, b64("w")),
    );
    for what in ["put", "delete"] {
        let (ee, be) = (ew.next(), bw.next());
        assert_eq!(masked(&be), masked(&ee), "{what} event");
        assert!(
            be.starts_with(r#"{"result":{"header":"#) && be.contains(r#""events":[{"#),
            "{be}"
        );
    }

    // Signed answers: the signature header, and on request the evidence it covers.
    let signed = curl(
        bank(2),
        "POST",
        "/v3/kv/put",
        Some(put.as_bytes()),
        &["-H", "bftcd-answer: evidence"],
    );
    assert!(signed.header("bftcd-answer").is_some(), "{signed:?}");
    assert!(
        post(&e, "/v3/kv/put", &put)
            .header("bftcd-answer")
            .is_none(),
        "revisions kept in step; etcd signs nothing"
    );
    let evidence = base64::engine::general_purpose::STANDARD
        .decode(signed.header("bftcd-answer-evidence").expect("evidence"))
        .unwrap();
    let evidence = AnswerEvidence::decode(evidence.as_slice()).unwrap();
    let g = Genesis::decode(std::fs::read(&chain.genesis).unwrap().as_slice()).unwrap();
    let crypto = ChainCrypto::verifier(&g).unwrap();
    let kept = dir.join("gateway-evidence.pb");
    std::fs::write(&kept, evidence.encode_to_vec()).unwrap();
    let verify = Command::new(bftcd_tests::bftcd_bin().with_file_name("bftcd-verify"))
        .args([
            "response",
            &kept.display().to_string(),
            "--genesis",
            &chain.genesis.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(verify.status.success(), "bftcd-verify response: {verify:?}");
    let record = &evidence.answers[0];
    let st = bftcd_sequencer::answer::verify(
        &crypto,
        &g.chain_id,
        g.epoch,
        "/etcdserverpb.KV/Put",
        record,
    )
    .unwrap();
    assert_eq!(st.bank, 2);
    let json_rev: i64 = signed.json()["header"]["revision"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        st.revision, json_rev,
        "the signed protobuf answer is the JSON one"
    );
    let mut forged = record.clone();
    forged.response = bftcd_proto::etcdserverpb::PutResponse::default().encode_to_vec();
    assert!(bftcd_sequencer::answer::verify(
        &crypto,
        &g.chain_id,
        g.epoch,
        "/etcdserverpb.KV/Put",
        &forged
    )
    .is_err());

    // Auth, enabled through the gateway: a token in Authorization, as etcd's gateway takes it.
    for body in [r#"{"name":"root","password":"pw"}"#, r#"{"name":"root"}"#] {
        let path = if body.contains("password") {
            "/v3/auth/user/add"
        } else {
            "/v3/auth/role/add"
        };
        same(&e, bank(0), path, body);
    }
    same(
        &e,
        bank(1),
        "/v3/auth/user/grant",
        r#"{"user":"root","role":"root"}"#,
    );
    same(&e, bank(2), "/v3/auth/enable", "{}");
    let probe = format!(r#"{{"key":"{}"}}"#, b64("a"));
    same(&e, bank(3), "/v3/kv/range", &probe);
    same(
        &e,
        bank(3),
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"bad"}"#,
    );
    let login = r#"{"name":"root","password":"pw"}"#;
    let token = |base: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let a = post(base, "/v3/auth/authenticate", login);
            if let Some(t) = a.json()["token"].as_str() {
                return t.to_string();
            }
            assert!(Instant::now() < deadline, "{a:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let (et, bt) = (token(&e), token(bank(3)));
    let (ea, ba) = (
        format!("Authorization: {et}"),
        format!("Authorization: {bt}"),
    );
    let (eb, bb) = (
        curl(
            &e,
            "POST",
            "/v3/kv/range",
            Some(probe.as_bytes()),
            &["-H", &ea],
        ),
        curl(
            bank(3),
            "POST",
            "/v3/kv/range",
            Some(probe.as_bytes()),
            &["-H", &ba],
        ),
    );
    assert_eq!(
        (bb.status, masked(&bb.body)),
        (eb.status, masked(&eb.body)),
        "with a token"
    );
    let bad = ["-H", "Authorization: garbage"];
    let (eb, bb) = (
        curl(&e, "POST", "/v3/kv/range", Some(probe.as_bytes()), &bad),
        curl(
            bank(3),
            "POST",
            "/v3/kv/range",
            Some(probe.as_bytes()),
            &bad,
        ),
    );
    assert_eq!(
        (bb.status, &bb.body, bb.header("www-authenticate")),
        (eb.status, &eb.body, eb.header("www-authenticate")),
        "a bad token"
    );
}

/// Over TLS with client certificates: the gateway is behind the same handshake, and curl's
/// HTTP/2 (it negotiates h2 when offered) reaches the gateway too, not the gRPC services.
#[test]
fn the_gateway_follows_the_client_ports_tls() {
    let dir = TestDir::new("gateway-tls");
    let chain = Chain::start_client_tls(&dir, 4);
    let certs = chain.client_certs.clone().expect("client certificates");
    let (ca, cert, key) = (
        certs.ca().display().to_string(),
        certs.cert("admin").display().to_string(),
        certs.key("admin").display().to_string(),
    );
    let base = |i: usize| https(&chain.endpoints()[i]);
    let with_cert = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    let put = format!(r#"{{"key":"{}","value":"{}"}}"#, b64("tls"), b64("yes"));
    for http in ["--http1.1", "--http2"] {
        let args: Vec<&str> = with_cert.iter().copied().chain([http]).collect();
        let a = curl(&base(0), "POST", "/v3/kv/put", Some(put.as_bytes()), &args);
        assert_eq!(a.status, 200, "{http}: {a:?}");
        let r = curl(
            &base(2),
            "POST",
            "/v3/kv/range",
            Some(format!(r#"{{"key":"{}"}}"#, b64("tls")).as_bytes()),
            &args,
        );
        assert_eq!(r.json()["kvs"][0]["value"], b64("yes"), "{http}: {r:?}");
        assert!(r.header("bftcd-answer").is_some(), "{r:?}");
        let h = curl(&base(1), "GET", "/health", None, &args);
        assert_eq!(h.body, r#"{"health":"true","reason":""}"#, "{http}");
    }
    // With etcd's auth on, the certificate's CN is the user, as over gRPC: admin (given the
    // root role) writes, bank2's certificate (no such user) is refused.
    let as_admin = |path: &str, body: &str| {
        let a = curl(&base(0), "POST", path, Some(body.as_bytes()), &with_cert);
        assert_eq!(a.status, 200, "{path} {body}: {a:?}");
    };
    as_admin("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#);
    as_admin("/v3/auth/role/add", r#"{"name":"root"}"#);
    as_admin("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#);
    as_admin("/v3/auth/user/add", r#"{"name":"admin","password":"pw"}"#);
    as_admin("/v3/auth/user/grant", r#"{"user":"admin","role":"root"}"#);
    as_admin("/v3/auth/enable", "{}");
    as_admin("/v3/kv/put", &put);
    let (cert2, key2) = (
        certs.cert("bank2").display().to_string(),
        certs.key("bank2").display().to_string(),
    );
    let other = ["--cacert", &ca, "--cert", &cert2, "--key", &key2];
    let refused = curl(&base(0), "POST", "/v3/kv/put", Some(put.as_bytes()), &other);
    assert_eq!(
        (refused.status, refused.body.as_str()),
        (
            403,
            r#"{"code":7, "message":"etcdserver: permission denied"}"#
        ),
        "{refused:?}"
    );
    // Without a client certificate: no handshake, no answer.
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "--cacert",
            &ca,
            "-X",
            "POST",
            "-d",
            &put,
        ])
        .arg(format!("{}/v3/kv/put", base(0)))
        .output()
        .unwrap();
    assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
    // And etcdctl still speaks gRPC on the same port.
    assert_eq!(chain.etcdctl(3).get_value("tls").as_deref(), Some("yes"));
}

/// The gateway is another way in: a flood of HTTP/1.1 requests on one connection is limited as
/// a gRPC client's calls are (`etcdserver: too many requests`), bodies over the limit are refused
/// before they are read, garbage and stalled requests cost only their own connection, and the
/// bank keeps serving gRPC and JSON clients.
#[test]
fn gateway_floods_and_oversized_bodies_are_refused_and_the_bank_stays_up() {
    let dir = TestDir::new("gateway-hostile");
    let etcd = EtcdProcess::start_with_args(&dir, "etcd", bftcd_tests::sidecar::BANK_ETCD_ARGS);
    let sidecar = Sidecar::start_with_args(
        &dir,
        "bank",
        &etcd.endpoint(),
        &["--client-requests-per-second=20"],
    );
    let addr = sidecar.endpoint();
    let base = format!("http://{addr}");

    // A declared 1 GiB body is refused at once, without being sent.
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 512];
    let n = conn.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(
        head.contains("grpc: received message larger than max (1073741824 vs."),
        "{head}"
    );
    // A chunked body that keeps going is cut off at the limit.
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut answer = Vec::new();
    for _ in 0..8 {
        if write!(conn, "{:x}\r\n", chunk.len())
            .and_then(|_| conn.write_all(&chunk))
            .and_then(|_| conn.write_all(b"\r\n"))
            .is_err()
        {
            break;
        }
    }
    let _ = conn.read_to_end(&mut answer);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 429"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Garbage, and a request that never finishes its header.
    let mut garbage = TcpStream::connect(&addr).unwrap();
    garbage
        .write_all(b"\x16\x03\x01 not HTTP at all\r\n\r\n")
        .unwrap();
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled
        .write_all(b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\n")
        .unwrap();

    // 200 pipelined requests on one keep-alive connection: over the rate, some are refused.
    let body = format!(r#"{{"key":"{}"}}"#, b64("k"));
    let request = format!(
        "POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let flood = TcpStream::connect(&addr).unwrap();
    flood
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = flood.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for _ in 0..200 {
            if writer.write_all(request.as_bytes()).is_err() {
                break;
            }
        }
    });
    let mut reader = BufReader::new(flood);
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..200 {
        let mut status = String::new();
        if reader.read_line(&mut status).unwrap_or(0) == 0 {
            break;
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        match status.split_whitespace().nth(1) {
            Some("200") => ok += 1,
            Some("429") => {
                assert_eq!(
                    String::from_utf8_lossy(&body),
                    r#"{"code":8, "message":"etcdserver: too many requests"}"#
                );
                refused += 1;
            }
            other => panic!("unexpected {other:?}: {}", String::from_utf8_lossy(&body)),
        }
    }
    sender.join().unwrap();
    assert!(ok > 0 && refused > 0, "{ok} answered, {refused} refused");

    // The bank still serves: gRPC and JSON, while the stalled connection is still open.
    let ctl = Etcdctl::new(addr.clone());
    ctl.put("after", "flood");
    assert_eq!(ctl.get_value("after").as_deref(), Some("flood"));
    let r = post(
        &base,
        "/v3/kv/range",
        &format!(r#"{{"key":"{}"}}"#, b64("after")),
    );
    assert_eq!(r.json()["kvs"][0]["value"], b64("flood"), "{r:?}");
    drop(stalled);

    // Watches over HTTP/1.1 end with their connections: each holds a watch on the bank's etcd
    // until its client goes away, then the bank's etcd is back to its own watchers.
    let watchers = || -> usize {
        let metrics =
            bftcd_tests::etcd::http_get(etcd.client_port(), "/metrics", Duration::from_secs(5))
                .unwrap();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("etcd_debugging_mvcc_watcher_total "))
            .expect("etcd's watcher gauge");
        line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as usize
    };
    let before = watchers();
    let create = format!(r#"{{"create_request":{{"key":"{}"}}}}"#, b64("w"));
    let watches: Vec<Watch> = (0..10).map(|_| Watch::start(&addr, &create)).collect();
    for w in &watches {
        assert!(w.next().contains(r#""created":true"#));
    }
    assert!(
        watchers() >= before + 10,
        "{} watchers with 10 gateway watches open, {before} before",
        watchers()
    );
    drop(watches);
    let deadline = Instant::now() + Duration::from_secs(20);
    while watchers() > before {
        assert!(
            Instant::now() < deadline,
            "gateway watches outlived their connections: {} watchers, {before} before",
            watchers()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
