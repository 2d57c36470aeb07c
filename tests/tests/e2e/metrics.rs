//! Prometheus metrics: per-queue ticket counters, gauges and histograms, and
//! per-RPC outcomes, scraped over HTTP like Prometheus does.

use std::net::SocketAddr;
use std::time::Duration;

use asyncgate_client::worker::{TaskContext, TaskError, handler_fn};
use asyncgate_client::{Submit, pb};
use asyncgate_tests::{TestGateway, fast_config, finished, json, state};

async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_owned(), body.to_owned())
}

/// The value of the sample named exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test]
async fn metrics_count_tickets_per_queue_and_rpcs_per_status() {
    let gateway = TestGateway::start_with(asyncgate_server::Config {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..fast_config()
    })
    .await;
    let addr = gateway.metrics_addr().expect("metrics are served");
    let client = gateway.client().await;
    let worker = gateway.spawn_worker(
        "metered",
        handler_fn(|task: TaskContext| async move {
            match task.json().as_ref().and_then(|v| v.as_str()) {
                Some("flaky") if task.attempt() == 1 => Err(TaskError::retryable("try again")),
                Some("broken") => Err(TaskError::fatal("cannot do it")),
                _ => Ok(task.payload().clone()),
            }
        }),
    );
    let mut outcomes = Vec::new();
    for input in ["fine", "flaky", "broken"] {
        let ticket = client
            .submit(Submit::new("metered").payload(json(input.into())).build())
            .await
            .unwrap();
        outcomes.push(state(&finished(&client, &ticket.id).await));
    }
    assert_eq!(
        outcomes,
        [
            pb::TicketState::Succeeded,
            pb::TicketState::Succeeded,
            pb::TicketState::Failed
        ]
    );
    let cancelled = client.submit(Submit::new("idle").build()).await.unwrap();
    client.cancel(&cancelled.id, "not needed").await.unwrap();
    client.submit(Submit::new("idle").build()).await.unwrap();
    let refused = client
        .submit(Submit::new("no spaces allowed").build())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // RPCs are recorded as their responses end, which can trail the reply
    // the client already holds by a moment.
    let submits = r#"grpc_server_handled_total{grpc_service="asyncgate.v1.Gateway",grpc_method="Submit",grpc_code="OK"}"#;
    let mut text = String::new();
    for _ in 0..100 {
        let (head, body) = http_get(addr, "/metrics").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        text = body;
        if sample(&text, submits) == Some(5.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    };
    expect(submits, 5.0);
    expect(
        r#"grpc_server_handled_total{grpc_service="asyncgate.v1.Gateway",grpc_method="Submit",grpc_code="InvalidArgument"}"#,
        1.0,
    );
    expect(r#"asyncgate_tickets_submitted_total{queue="metered"}"#, 3.0);
    expect(
        r#"asyncgate_tickets_completed_total{queue="metered",outcome="succeeded"}"#,
        2.0,
    );
    expect(
        r#"asyncgate_tickets_completed_total{queue="metered",outcome="failed"}"#,
        1.0,
    );
    expect(r#"asyncgate_tickets_retried_total{queue="metered"}"#, 1.0);
    expect(
        r#"asyncgate_tickets_completed_total{queue="idle",outcome="cancelled"}"#,
        1.0,
    );
    expect(r#"asyncgate_tickets_pending{queue="idle"}"#, 1.0);
    expect(r#"asyncgate_tickets_pending{queue="metered"}"#, 0.0);
    expect(r#"asyncgate_tickets_running{queue="metered"}"#, 0.0);
    expect(r#"asyncgate_workers_connected{queue="metered"}"#, 1.0);
    // Four attempts were leased (one retried), three tickets finished.
    expect(
        r#"asyncgate_ticket_queue_wait_seconds_count{queue="metered"}"#,
        4.0,
    );
    expect(
        r#"asyncgate_ticket_run_seconds_count{queue="metered"}"#,
        4.0,
    );
    expect(
        r#"asyncgate_ticket_end_to_end_seconds_count{queue="metered"}"#,
        3.0,
    );
    assert!(
        text.contains("# TYPE grpc_server_handling_seconds histogram"),
        "{text}"
    );

    let (head, _) = http_get(addr, "/other").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    worker.shutdown();
}

#[tokio::test]
async fn metrics_are_off_unless_asked_for() {
    let gateway = TestGateway::start().await;
    assert_eq!(gateway.metrics_addr(), None);
}
