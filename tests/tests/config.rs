//! Configuration without flags: a sidecar configured only by a YAML config file, or only by
//! BFTCD_* environment variables, serves on the port they name; `--log-format json` makes its
//! stderr JSON lines; a config file with a wrong key stops it at start, saying which.

use std::process::Command;
use std::time::Duration;

use bftcd_tests::dir::{log_of_last_run, START_MARKER};
use bftcd_tests::process::run_with_timeout;
use bftcd_tests::{bftcd_bin, free_port, EtcdProcess, Etcdctl, Sidecar, TestDir};

fn serves_on(sidecar: &Sidecar, port: u16) {
    assert_eq!(
        sidecar.endpoint(),
        format!("127.0.0.1:{port}"),
        "READY names another address"
    );
    let ctl = Etcdctl::new(format!("127.0.0.1:{port}"));
    ctl.put("configured", "yes");
    assert_eq!(ctl.get_value("configured").as_deref(), Some("yes"));
}

#[test]
fn a_sidecar_configured_only_by_a_config_file_serves() {
    let dir = TestDir::new("config-file");
    let etcd = EtcdProcess::start_with_args(&dir, "etcd", bftcd_tests::sidecar::BANK_ETCD_ARGS);
    let port = free_port();
    let file = dir.join("bftcd.yaml");
    std::fs::write(
        &file,
        format!(
            "# only this file configures the sidecar\nname: bank\ndata-dir: {}\nlisten-client: 127.0.0.1:{port}\netcd-endpoint: {}\nwrite-timeout: 20s\nclient-cert-auth: false\nlog-level: debug\n",
            dir.join("bank").display(),
            etcd.client_url()
        ),
    )
    .unwrap();
    let file = file.display().to_string();
    let sidecar =
        Sidecar::try_start_configured(&dir, "bank", port, &["--config-file", &file, "serve"], &[])
            .unwrap_or_else(|e| panic!("{e}"));
    serves_on(&sidecar, port);
    assert!(
        sidecar.data_dir().join("ledger.log").is_file(),
        "no ledger in the configured data-dir"
    );
    // log-level: debug from the file took effect.
    let log = log_of_last_run(sidecar.stderr_log());
    assert!(log.contains("config file read"), "{log}");
    assert!(
        log.contains("DEBUG"),
        "log-level: debug in the file logged nothing at debug:\n{log}"
    );
}

#[test]
fn a_sidecar_configured_only_by_environment_variables_serves() {
    let dir = TestDir::new("config-env");
    let etcd = EtcdProcess::start_with_args(&dir, "etcd", bftcd_tests::sidecar::BANK_ETCD_ARGS);
    let port = free_port();
    let data_dir = dir.join("bank").display().to_string();
    let listen = format!("127.0.0.1:{port}");
    let etcd_url = etcd.client_url();
    let env = [
        ("BFTCD_NAME", "bank"),
        ("BFTCD_DATA_DIR", data_dir.as_str()),
        ("BFTCD_LISTEN_CLIENT", listen.as_str()),
        ("BFTCD_ETCD_ENDPOINT", etcd_url.as_str()),
        ("BFTCD_CLIENT_CERT_AUTH", "0"),
        ("BFTCD_SIGN_ANSWERS", "false"),
        ("BFTCD_LOG_FORMAT", "json"),
    ];
    let sidecar = Sidecar::try_start_configured(&dir, "bank", port, &["serve"], &env)
        .unwrap_or_else(|e| panic!("{e}"));
    serves_on(&sidecar, port);
    assert!(
        sidecar.data_dir().join("ledger.log").is_file(),
        "no ledger in BFTCD_DATA_DIR"
    );
    let log = log_of_last_run(sidecar.stderr_log());
    assert!(
        log.lines().any(|l| l.starts_with('{')),
        "BFTCD_LOG_FORMAT=json ignored:\n{log}"
    );
}

#[test]
fn json_log_format_makes_every_stderr_line_a_json_object() {
    let dir = TestDir::new("config-json-log");
    let etcd = EtcdProcess::start_with_args(&dir, "etcd", bftcd_tests::sidecar::BANK_ETCD_ARGS);
    let mut sidecar = Sidecar::start_with_args(
        &dir,
        "bank",
        &etcd.endpoint(),
        &["--log-format", "json", "--log-level", "debug"],
    );
    let ctl = Etcdctl::new(sidecar.endpoint());
    ctl.put("k", "v");
    assert_eq!(ctl.get_value("k").as_deref(), Some("v"));
    sidecar.stop();
    let log = log_of_last_run(sidecar.stderr_log());
    // The harness's own marker line starts the run's log.
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(START_MARKER))
        .collect();
    assert!(lines.len() >= 5, "too few log lines to tell:\n{log}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "target"] {
            assert!(v.get(field).is_some(), "no {field} in {line}");
        }
        // An event is a message, fields (a trace point's), or both.
        assert!(
            v.as_object().is_some_and(|o| o.len() > 3),
            "neither message nor fields: {line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("\"level\":\"DEBUG\"")),
        "--log-level debug ignored"
    );
    assert!(
        lines.iter().any(|l| l.contains("\"message\":")),
        "no message in any line"
    );
}

#[test]
fn a_wrong_key_or_value_in_the_config_file_stops_the_sidecar_saying_which() {
    let dir = TestDir::new("config-bad");
    let etcd = EtcdProcess::start_with_args(&dir, "etcd", bftcd_tests::sidecar::BANK_ETCD_ARGS);
    let port = free_port();
    let base = format!(
        "name: bank\ndata-dir: {}\netcd-endpoint: {}\n",
        dir.join("bank").display(),
        etcd.client_url()
    );
    let file = dir.join("bftcd.yaml");
    let file_arg = file.display().to_string();

    std::fs::write(&file, format!("{base}listen-clinet: 127.0.0.1:{port}\n")).unwrap();
    let err = Sidecar::try_start_configured(
        &dir,
        "bank",
        port,
        &["--config-file", &file_arg, "serve"],
        &[],
    )
    .err()
    .expect("started with an unknown key");
    assert!(
        err.contains("unknown key `listen-clinet` (did you mean `listen-client`?)"),
        "{err}"
    );
    assert!(err.contains(&file_arg), "{err}");

    // BFTCD_CONFIG_FILE names it as well; a bad value gets the flag's own error.
    std::fs::write(
        &file,
        format!("{base}listen-client: 127.0.0.1:{port}\nwrite-timeout: soon\n"),
    )
    .unwrap();
    let mut cmd = Command::new(bftcd_bin());
    cmd.arg("serve").env("BFTCD_CONFIG_FILE", &file);
    let out = run_with_timeout(cmd, "bftcd serve".into(), None, Duration::from_secs(30));
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out}");
    assert!(
        out.stderr.contains(
            "key `write-timeout`: invalid value 'soon' for '--write-timeout <WRITE_TIMEOUT>'"
        ),
        "{out}"
    );
    assert!(
        !dir.join("bank").exists(),
        "the sidecar started before refusing its config"
    );
}

/// A child dev-cluster, killed (with its sidecars, which die with it) if the test fails.
struct DevCluster(std::process::Child);

impl Drop for DevCluster {
    fn drop(&mut self) {
        bftcd_tests::process::kill_and_wait(&mut self.0);
    }
}

/// dev-cluster read from a config file, with variables of `serve` set around it: its sidecars
/// get neither (a leaked BFTCD_WRITE_TIMEOUT=soon would stop them), and do get its log format.
#[test]
fn dev_cluster_configured_by_a_file_keeps_its_configuration_from_its_sidecars() {
    let dir = TestDir::new("config-dev-cluster");
    // One bank: clients at base+1, its etcd at base+101 and base+201.
    let base = (0..200)
        .map(|_| free_port().saturating_sub(301))
        .find(|b| {
            *b > 1024
                && [b + 1, b + 101, b + 201]
                    .iter()
                    .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        })
        .expect("a free port range");
    let cluster = dir.join("cluster");
    let file = dir.join("dev-cluster.yaml");
    std::fs::write(
        &file,
        format!(
            "banks: 1\nbase-port: {base}\ndir: {}\nlog-format: json\n",
            cluster.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bftcd_bin());
    cmd.arg("dev-cluster")
        .env("BFTCD_CONFIG_FILE", &file)
        .env("BFTCD_WRITE_TIMEOUT", "soon")
        .env("BFTCD_NAME", "not-a-bank")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("dev-cluster.log")).unwrap());
    let mut child = DevCluster(bftcd_tests::process::spawn(cmd).unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let ready = lines.next().and_then(|l| l.ok()).unwrap_or_else(|| {
        panic!(
            "no READY line; dev-cluster log:\n{}\nbank1 log:\n{}",
            bftcd_tests::log_tail(&dir.join("dev-cluster.log"), 30),
            bftcd_tests::log_tail(&cluster.join("bank1/bftcd.log"), 30)
        )
    });
    assert_eq!(ready, format!("READY 127.0.0.1:{}", base + 1));
    let ctl = Etcdctl::new(format!("127.0.0.1:{}", base + 1));
    ctl.put("k", "v");
    assert_eq!(ctl.get_value("k").as_deref(), Some("v"));
    let sidecar_log = std::fs::read_to_string(cluster.join("bank1/bftcd.log")).unwrap();
    assert!(
        !sidecar_log.is_empty() && sidecar_log.lines().all(|l| l.starts_with('{')),
        "the sidecar did not log JSON as dev-cluster does:\n{sidecar_log}"
    );
    bftcd_tests::process::signal(&mut child.0, libc::SIGTERM);
    let status = bftcd_tests::process::wait_timeout(&mut child.0, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "dev-cluster did not stop cleanly: {status:?}"
    );
}
