//! Client TLS with etcd's own flags (`--cert-file`, `--key-file`, `--trusted-ca-file`,
//! `--client-cert-auth`): four banks serving their clients over TLS with client certificate
//! auth, used by stock etcdctl and by the etcd-client crate, and refused to anyone without a
//! certificate from the trusted CA.

use std::process::Command;
use std::time::{Duration, Instant};

use bftcd_tests::tls::https;
use bftcd_tests::{bftcd_bin, Chain, ClientCerts, Etcdctl, TestDir};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// etcdctl that gives up quickly: refused clients otherwise retry until the command timeout.
fn quick(ctl: Etcdctl) -> Etcdctl {
    ctl.with_global_arg("--dial-timeout=3s").with_global_arg("--command-timeout=5s")
}

fn wait_value(ctl: &Etcdctl, key: &str, value: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while ctl.get_value(key).as_deref() != Some(value) {
        assert!(Instant::now() < deadline, "{what} never served {key}={value}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn crate_client(endpoints: &[String], certs: &ClientCerts, client: Option<&str>) -> Result<Client, etcd_client::Error> {
    let read = |p: std::path::PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(certs.ca())));
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(read(certs.cert(c)), read(certs.key(c))));
    }
    let opts = ConnectOptions::new().with_tls(tls).with_connect_timeout(Duration::from_secs(3)).with_timeout(Duration::from_secs(10));
    let urls: Vec<String> = endpoints.iter().map(|e| https(e)).collect();
    Client::connect(urls, Some(opts)).await
}

#[test]
fn four_banks_serve_clients_over_tls_with_client_certificates() {
    let dir = TestDir::new("client-tls");
    let chain = Chain::start_client_tls(&dir, 4);
    let certs = chain.client_certs.clone().expect("client certificates");
    let endpoints = chain.endpoints();
    assert!(chain.banks.iter().all(|b| b.sidecar.https()), "every bank announces an https endpoint");

    // The admin certificate writes at bank 1 and reads at every bank.
    chain.etcdctl(0).put("tls/greeting", "hello");
    for b in 0..4 {
        wait_value(&chain.etcdctl(b), "tls/greeting", "hello", &format!("bank {}", b + 1));
    }
    // A bank's own identity works as well, and MemberList reports https client URLs.
    certs.etcdctl(&endpoints[1], Some("bank2")).put("tls/from-bank2", "yes");
    wait_value(&chain.etcdctl(3), "tls/from-bank2", "yes", "bank 4");
    let members = chain.etcdctl(2).run(&["member", "list"]);
    let members = members.expect_success();
    for ep in &endpoints {
        assert!(members.contains(&format!("https://{ep}")), "member list names https://{ep}: {members}");
    }
    // Several endpoints at once, as kube-apiserver's --etcd-servers.
    let all = certs.etcdctl(&endpoints.join(","), Some("admin"));
    all.run(&["endpoint", "health"]).expect_success();

    // No client certificate: refused at the handshake.
    let out = quick(certs.etcdctl(&endpoints[0], None)).run(&["get", "tls/greeting"]);
    assert!(!out.success(), "a client without a certificate must be refused: {out}");
    assert!(!out.stdout.contains("hello"), "{out}");

    // A certificate from another CA: refused.
    let other = ClientCerts::make(&dir.join("other-ca"), &["admin"], &[]);
    let foreign = Etcdctl::new(https(&endpoints[0]))
        .with_global_arg(format!("--cacert={}", certs.ca().display()))
        .with_global_arg(format!("--cert={}", other.cert("admin").display()))
        .with_global_arg(format!("--key={}", other.key("admin").display()));
    let out = quick(foreign).run(&["put", "tls/intruder", "x"]);
    assert!(!out.success(), "a certificate from another CA must be refused: {out}");

    // Plaintext to a TLS port: refused.
    let out = quick(Etcdctl::new(&endpoints[0])).run(&["get", "tls/greeting"]);
    assert!(!out.success(), "plaintext must be refused: {out}");
    assert!(chain.etcdctl(2).get_value("tls/intruder").is_none(), "the refused write must not exist");

    // The etcd-client crate: with the admin certificate it works at every bank; without one
    // the bank refuses it.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = crate_client(&endpoints, &certs, Some("admin")).await.expect("connect with the admin certificate");
        c.put("tls/crate", "1", None).await.expect("put through the crate");
        let got = c.get("tls/greeting", None).await.expect("get through the crate");
        assert_eq!(got.kvs()[0].value(), b"hello");
        for ep in &endpoints {
            let mut one = crate_client(std::slice::from_ref(ep), &certs, Some("admin")).await.expect("connect to one bank");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let r = one.get("tls/crate", None).await.expect("get at one bank");
                if r.kvs().first().map(|kv| kv.value()) == Some(b"1".as_slice()) {
                    break;
                }
                assert!(Instant::now() < deadline, "{ep} never served tls/crate");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let refused = async {
            let mut c = crate_client(&endpoints[..1], &certs, None).await?;
            c.get("tls/greeting", None).await
        };
        let refused = tokio::time::timeout(Duration::from_secs(20), refused).await;
        assert!(!matches!(refused, Ok(Ok(_))), "the crate without a certificate must be refused");
    });

    // The ledger names the client each bank vouched for: its certificate's CN, under the
    // bank's signature.
    let (ok, listing, errors) = bftcd_tests::ledger::verify(&chain.banks[2].sidecar.data_dir().join("ledger.log"), true);
    assert!(ok, "{errors}");
    let line = |key: &str| listing.lines().find(|l| l.ends_with(&format!("\tput\t{key}"))).map(|l| l.split('\t').collect::<Vec<_>>());
    assert_eq!(line("tls/greeting").map(|l| (l[1].to_string(), l[2].to_string())), Some(("bank1".into(), "cn=admin".into())), "{listing}");
    assert_eq!(line("tls/from-bank2").map(|l| (l[1].to_string(), l[2].to_string())), Some(("bank2".into(), "cn=bank2".into())), "{listing}");
}

/// `bftcd serve` with TLS flags that do not fit together refuses to start and says why.
#[test]
fn inconsistent_tls_flags_refuse_to_start() {
    let dir = TestDir::new("client-tls-flags");
    let certs = ClientCerts::make(&dir.join("clients"), &["admin"], &["bank1"]);
    let cert = format!("--cert-file={}", certs.cert("bank1-server").display());
    let key = format!("--key-file={}", certs.key("bank1-server").display());
    let ca = format!("--trusted-ca-file={}", certs.ca().display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--listen-client=https://127.0.0.1:1".into()], "needs --cert-file and --key-file"),
        (vec!["--listen-client=http://127.0.0.1:1".into(), cert.clone(), key.clone()], "use https://"),
        (vec![cert.clone()], "--cert-file and --key-file go together"),
        (vec![cert.clone(), key.clone(), "--client-cert-auth".into()], "--client-cert-auth needs --trusted-ca-file"),
        (vec![ca.clone()], "need TLS on the client port"),
        (vec!["--listen-client=ftp://127.0.0.1:1".into()], "unsupported scheme"),
        (vec![format!("--cert-file={}", certs.ca().display()), format!("--key-file={}", certs.ca().display())], "no usable private key"),
    ];
    for (args, expected) in cases {
        let out = Command::new(bftcd_bin())
            .args(["serve", "--name=bank1", "--etcd-endpoint=http://127.0.0.1:1"])
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must not start");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in: {stderr}");
        assert!(!stderr.contains("PRIVATE KEY"), "{args:?}: key material in the error: {stderr}");
    }
}
