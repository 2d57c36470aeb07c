//! The Python SDK (`sdk/python`) against real gateways: its stubs are
//! generated into the package by its own `generate.py`, then its `unittest`
//! suite (`sdk/python/tests`) runs in one `python3` child with the gateways'
//! URLs in the environment: a plain gateway (`ASYNCGATE_TEST_URL`), one
//! with API keys (`ASYNCGATE_TEST_KEYED_URL` and the keys) and one serving
//! mutual TLS with a private CA (`ASYNCGATE_TEST_TLS_URL`, the PEM files in
//! `ASYNCGATE_TEST_TLS_DIR`). The suite's own output is shown when it
//! fails. `scripts/test.sh` installs grpcio, grpcio-tools and h2 from PyPI
//! when they are missing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use asyncgate_client::pb;
use asyncgate_server::auth::digest_hex;
use asyncgate_tests::{TestGateway, fast_config};
use tokio::process::Command;

/// Far above what the suite needs (about a second on a laptop); a hang fails
/// the test instead of stalling the run.
const PATIENCE: Duration = Duration::from_secs(240);

const CLIENT_KEY: &str = "python-sdk-client-key";
const WORKER_KEY: &str = "python-sdk-worker-key";

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python")
}

/// Runs `generate.py`, which writes the stubs into `sdk/python/asyncgate/_proto`
/// (ignored by git); each file is renamed into place, so a concurrent run
/// never imports half a module.
async fn generate_stubs() {
    let output = Command::new("python3")
        .arg(sdk_dir().join("generate.py"))
        .output()
        .await
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "generate.py failed (scripts/test.sh installs grpcio and grpcio-tools): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A gateway with a client key and a worker key for the queues the suite's
/// keyed tests use (`py-sdk-keyed-*`).
async fn keyed_gateway(dir: &Path) -> TestGateway {
    let keys = dir.join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nname = \"py-sdk-app\"\nsha256 = \"{}\"\nrole = \"client\"\n\n\
             [[keys]]\nname = \"py-sdk-workers\"\nsha256 = \"{}\"\nrole = \"worker\"\nqueues = [\"py-sdk-keyed-*\"]\n",
            digest_hex(CLIENT_KEY),
            digest_hex(WORKER_KEY)
        ),
    )
    .expect("write keys");
    TestGateway::start_with(asyncgate_server::Config {
        keys: Some(keys),
        ..fast_config()
    })
    .await
}

/// A private CA with a server certificate for 127.0.0.1 and a client
/// certificate, as PEM files (`ca.pem`, `server.pem`, `server.key`,
/// `client.pem`, `client.key`) in `dir`.
///
/// Not the harness's `TestPki`: its certificates all carry rcgen's default
/// subject, so a leaf's issuer equals its subject. rustls does not mind, but
/// grpcio's BoringSSL takes such a leaf for self-signed and refuses it.
/// Distinct subjects make a chain every TLS stack accepts.
fn write_pki(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
        KeyPair,
    };
    let subject = |name: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = subject("asyncgate python-sdk test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key"))
        .expect("CA certificate");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    for (file, name) in [
        ("server", "127.0.0.1"),
        ("client", "python-sdk-test-client"),
    ] {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name = subject(name);
        let cert = params.signed_by(&key, &ca).expect("certificate");
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).expect("write");
    }
}

/// A gateway that requires a client certificate of the CA in `dir`.
async fn tls_gateway(dir: &Path) -> TestGateway {
    write_pki(dir);
    TestGateway::start_with(asyncgate_server::Config {
        tls: Some(asyncgate_server::config::TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: Some(dir.join("ca.pem")),
        }),
        ..fast_config()
    })
    .await
}

#[tokio::test]
async fn python_sdk_unittest_suite_passes_against_a_real_gateway() {
    let gateway = TestGateway::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let keyed = keyed_gateway(dir.path()).await;
    let pki = tempfile::tempdir().expect("temp dir");
    let tls = tls_gateway(pki.path()).await;
    generate_stubs().await;

    // stdout and stderr (where unittest reports) go to one file, so that even
    // a run that hangs shows how far it got.
    let log_path = dir.path().join("unittest.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let log2 = log.try_clone().expect("log file");
    let mut child = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests", "-v"])
        .current_dir(sdk_dir())
        .env("PYTHONPATH", sdk_dir())
        .env("ASYNCGATE_TEST_URL", gateway.url())
        .env("ASYNCGATE_TEST_KEYED_URL", keyed.url())
        .env("ASYNCGATE_TEST_CLIENT_KEY", CLIENT_KEY)
        .env("ASYNCGATE_TEST_WORKER_KEY", WORKER_KEY)
        .env("ASYNCGATE_TEST_TLS_URL", tls.url())
        .env("ASYNCGATE_TEST_TLS_DIR", pki.path())
        .env_remove("ASYNCGATE_API_KEY")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let report = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let status = match tokio::time::timeout(PATIENCE, child.wait()).await {
        Ok(status) => status.expect("wait for python3"),
        Err(_) => {
            child.kill().await.expect("kill python3");
            panic!(
                "the Python SDK suite did not finish in {PATIENCE:?}:\n{}",
                report()
            );
        }
    };
    let report = report();
    assert!(
        status.success(),
        "the Python SDK suite failed ({status}):\n{report}"
    );
    let ran = report
        .lines()
        .find_map(|line| {
            line.strip_prefix("Ran ")?
                .split(' ')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or(0);
    assert!(ran >= 30, "expected the whole suite, ran {ran}:\n{report}");
    // Every gateway test runs here: a skip means the environment was not passed on.
    assert!(!report.contains("skipped"), "tests were skipped:\n{report}");

    gateway.shutdown().await;
    keyed.shutdown().await;
    tls.shutdown().await;
}

/// `examples/python/sdk_example.py`, the SDK's example, against a real
/// gateway: it runs its own worker, submits its texts on one SubmitStream,
/// follows them on one WatchTickets stream and prints each result; the
/// tickets are then read back through the Rust client.
#[tokio::test]
async fn the_python_sdk_example_runs_a_worker_and_a_producer() {
    let gateway = TestGateway::start().await;
    generate_stubs().await;
    let example = sdk_dir().join("../../examples/python/sdk_example.py");
    let child = Command::new("python3")
        .arg("-u")
        .arg(&example)
        .args(["--url", &gateway.url(), "--queue", "py-sdk-example"])
        .args(["hello", "asyncgate", "from python"])
        .env("PYTHONPATH", sdk_dir())
        .env_remove("ASYNCGATE_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("the example finishes")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "sdk_example.py: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut results: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("result "))
        .map(|rest| {
            let (id, rest) = rest.split_once(' ').expect("id");
            let (state, outcome) = rest.split_once(' ').expect("state");
            assert_eq!(state, "SUCCEEDED", "{stdout}");
            (id.to_owned(), outcome.to_owned())
        })
        .collect();
    results.sort_by(|a, b| a.1.cmp(&b.1));
    let outcomes: Vec<&str> = results.iter().map(|(_, o)| o.as_str()).collect();
    assert_eq!(outcomes, ["ASYNCGATE", "FROM PYTHON", "HELLO"], "{stdout}");
    let client = gateway.client().await;
    for (id, outcome) in &results {
        let ticket = client.get(id, None).await.expect("the ticket exists");
        assert_eq!(ticket.state(), pb::TicketState::Succeeded);
        assert_eq!(
            asyncgate_client::payload::to_json(ticket.result.as_ref().unwrap()),
            Some(serde_json::json!(outcome))
        );
    }
}
