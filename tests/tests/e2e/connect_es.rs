//! Connect-ES, the client library Connect's getting-started uses, against
//! the gateway: `examples/connect-es/client.mjs` (its pinned, locked npm
//! packages installed by `npm ci` into a scratch copy) submits and watches
//! over `createConnectTransport` with JSON and with binary, and over
//! `createGrpcWebTransport`, with a worker that reports progress. What the
//! script prints is what the library decoded.
//!
//! Needs `node` and `npm` (`scripts/test.sh` installs Debian's `nodejs` and
//! `npm` when missing) and the npm registry for `npm ci`.

use std::time::Duration;

use tokio::process::Command;

use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_tests::{TestGateway, fast_config};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/connect-es");

#[tokio::test]
async fn connect_es_submits_and_watches_over_every_transport() {
    let scratch = tempfile::tempdir().unwrap();
    for file in ["package.json", "package-lock.json", "client.mjs"] {
        std::fs::copy(format!("{EXAMPLE}/{file}"), scratch.path().join(file)).unwrap();
    }
    let descriptors = scratch.path().join("asyncgate.binpb");
    std::fs::write(&descriptors, asyncgate_proto::FILE_DESCRIPTOR_SET).unwrap();
    let installed = tokio::time::timeout(
        Duration::from_secs(300),
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent"])
            .current_dir(scratch.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("npm ci finishes")
    .expect("npm runs (scripts/test.sh installs it)");
    assert!(
        installed.status.success(),
        "npm ci: {}",
        String::from_utf8_lossy(&installed.stderr)
    );

    let gateway = TestGateway::start_with(asyncgate_server::Config {
        grpc_web: true,
        ..fast_config()
    })
    .await;
    let worker = gateway.spawn_worker(
        "upper",
        handler_fn(|task: TaskContext| async move {
            task.progress(50, "halfway").await;
            let text = task.json().unwrap().as_str().unwrap().to_uppercase();
            Ok(asyncgate_tests::json(serde_json::Value::String(text)))
        }),
    );
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new("node")
            .arg("client.mjs")
            .arg(gateway.url())
            .arg(&descriptors)
            .current_dir(scratch.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the script finishes")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for transport in ["connect-json", "connect-binary", "grpc-web"] {
        let lines: Vec<&str> = stdout
            .lines()
            .filter(|line| line.starts_with(&format!("{transport} ")))
            .collect();
        let shows = |needle: &str| lines.iter().any(|line| line.contains(needle));
        // Enum values as Connect-ES decodes them: SUCCEEDED is 3.
        assert!(shows(" submitted "), "{transport}: {lines:?}");
        assert!(
            shows(" 50%"),
            "{transport}: progress on the stream: {lines:?}"
        );
        assert!(
            shows("state 3"),
            "{transport}: the terminal event: {lines:?}"
        );
        assert!(
            shows(&format!("result \"HELLO {}\"", transport.to_uppercase())),
            "{transport}: {lines:?}"
        );
        // INVALID_ARGUMENT is 3, with the gateway's message.
        assert!(
            shows("refused code 3: invalid id"),
            "{transport}: {lines:?}"
        );
    }
    worker.shutdown();
}
