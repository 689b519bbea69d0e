//! etcd's auth beyond what etcdctl can express (issue 12; `auth_compat.rs` compares the etcdctl
//! flow with stock etcd): a nested Txn is checked as deeply as it goes (etcd once shipped
//! without that check), and a client certificate's CN acts as the etcd user of that name.

use std::time::Duration;

use bftcd_tests::tls::ClientCerts;
use bftcd_tests::{Chain, TestDir};
use etcd_client::{Client, ConnectOptions, Txn, TxnOp};

fn setup(ctl: &bftcd_tests::Etcdctl, steps: &[&[&str]]) {
    for s in steps {
        ctl.run(s).expect_success();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_txns_are_checked_at_every_depth() {
    let dir = TestDir::new("auth-nested");
    let chain = Chain::start(&dir, 4);
    let ctl = chain.etcdctl(0);
    setup(&ctl, &[
        &["user", "add", "root:pw", "--interactive=false"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:apw", "--interactive=false"],
        &["role", "add", "r"],
        &["role", "grant-permission", "r", "readwrite", "/a/", "--prefix"],
        &["user", "grant-role", "alice", "r"],
        &["auth", "enable"],
    ]);
    let endpoint = format!("http://{}", chain.endpoints()[1]);
    let opts = ConnectOptions::new().with_user("alice", "apw").with_timeout(Duration::from_secs(20));
    let mut alice = Client::connect([endpoint.as_str()], Some(opts)).await.expect("alice connects to bank 2");
    alice.put("/a/1", "ok", None).await.expect("alice writes her prefix");
    // Two levels down, in the branch that is not taken: still refused, and nothing written.
    let deep = Txn::new().and_then([TxnOp::put("/a/2", "x", None), TxnOp::put("/b/secret", "x", None)]);
    let nested = Txn::new().and_then([TxnOp::put("/a/3", "x", None)]).or_else([TxnOp::txn(Txn::new().and_then([TxnOp::txn(deep)]))]);
    let err = alice.txn(nested).await.expect_err("a nested write outside alice's permission");
    assert!(err.to_string().contains("etcdserver: permission denied"), "{err}");
    let allowed = Txn::new().and_then([TxnOp::txn(Txn::new().and_then([TxnOp::put("/a/4", "y", None)]))]);
    alice.txn(allowed).await.expect("a nested write inside her permission");
    for b in 0..4 {
        let keys = chain.etcdctl(b).with_global_arg("--user=root:pw").run(&["get", "/", "--prefix", "--keys-only"]).expect_success().to_string();
        let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
        // Banks apply in their own time: wait for the last write.
        if !keys.contains(&"/a/4") {
            chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
        }
        let keys = chain.etcdctl(b).with_global_arg("--user=root:pw").run(&["get", "/", "--prefix", "--keys-only"]).expect_success().to_string();
        let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(keys, ["/a/1", "/a/4"], "bank {}", b + 1);
    }
}

#[test]
fn a_client_certificates_cn_is_its_etcd_user() {
    let dir = TestDir::new("auth-cn");
    let chain = Chain::start_client_tls(&dir, 4);
    let certs: ClientCerts = chain.client_certs.clone().expect("client certificates");
    let endpoints = chain.endpoints();
    // The admin certificate (CN admin) sets up auth while it is still off; admin becomes root.
    let admin = certs.etcdctl(&endpoints[0], Some("admin"));
    setup(&admin, &[
        &["user", "add", "root:pw", "--interactive=false"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "admin", "--no-password"],
        &["user", "grant-role", "admin", "root"],
        &["user", "add", "bank2", "--no-password"],
        &["role", "add", "b2"],
        &["role", "grant-permission", "b2", "readwrite", "/bank2/", "--prefix"],
        &["user", "grant-role", "bank2", "b2"],
        &["auth", "enable"],
    ]);
    // No password anywhere: the certificate is the credential.
    let bank2 = certs.etcdctl(&endpoints[1], Some("bank2"));
    bank2.run(&["put", "/bank2/x", "1"]).expect_success();
    bank2.run(&["put", "/elsewhere", "1"]).expect_error("etcdserver: permission denied");
    bank2.run(&["user", "list"]).expect_error("etcdserver: permission denied");
    // admin is root by its CN: admin-only calls work for it at another bank.
    let admin3 = certs.etcdctl(&endpoints[2], Some("admin"));
    assert!(admin3.run(&["user", "list"]).expect_success().contains("bank2"));
    admin3.run(&["endpoint", "hashkv"]).expect_success();
    // A certificate whose CN is no user is denied, not let in.
    let bank3 = certs.etcdctl(&endpoints[2], Some("bank3"));
    bank3.run(&["get", "/bank2/x"]).expect_error("etcdserver: permission denied");
    // The ledger names the user each write was made as.
    chain.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    let (_, listing, _) = bftcd_tests::ledger::verify(&chain.banks[3].sidecar.data_dir().join("ledger.log"), true);
    assert!(listing.lines().any(|l| l.contains("\tcn=bank2,user=bank2\tput\t/bank2/x")), "{listing}");
}
