//! Prometheus metrics: per-queue ticket counters, gauges and histograms, and
//! per-RPC outcomes, scraped over HTTP like Prometheus does; the listener's
//! TLS, admin key and cap on queue labels.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use asyncgate_client::worker::{TaskContext, TaskError, handler_fn};
use asyncgate_client::{Submit, pb};
use asyncgate_server::auth::digest_hex;
use asyncgate_tests::{TestGateway, TestPki, fast_config, finished, json, state};

/// One `GET path` over `stream` (plain TCP or TLS), with an
/// `authorization` header when given: the response's head and body, or the
/// I/O error that ended it.
async fn get_over(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> std::io::Result<(String, String)> {
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response).await {
        Ok(_) => {}
        // A TLS peer that closed without close_notify after a whole response.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {
        }
        Err(error) => return Err(error),
    }
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP response"))?;
    Ok((head.to_owned(), body.to_owned()))
}

async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    keyed_get(addr, path, None).await
}

async fn keyed_get(addr: SocketAddr, path: &str, key: Option<&str>) -> (String, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let authorization = key.map(|key| format!("Bearer {key}"));
    get_over(stream, addr, path, authorization.as_deref())
        .await
        .expect("an HTTP response")
}

/// A TLS client trusting the test CA, presenting its client certificate
/// when `with_certificate`.
fn tls_client(pki: &TestPki, with_certificate: bool) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = if with_certificate {
        builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(pki.client.0.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(pki.client.1.as_bytes()).unwrap(),
            )
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// `GET /metrics` over TLS: the response, or the error that ended the
/// handshake or the exchange.
async fn tls_get(
    client: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<(String, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::from(addr.ip());
    let stream = client.connect(name, tcp).await?;
    get_over(stream, addr, "/metrics", None).await
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
    let submits = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="asyncgate.v1.Gateway",grpc_method="Submit",grpc_code="OK"}"#;
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
        r#"grpc_server_handled_total{grpc_type="unary",grpc_service="asyncgate.v1.Gateway",grpc_method="Submit",grpc_code="InvalidArgument"}"#,
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
    expect(r#"asyncgate_queue_held_back_tickets{queue="idle"}"#, 0.0);
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

#[tokio::test]
async fn metrics_are_served_over_the_gateways_tls() {
    let pki = TestPki::generate();
    let gateway = TestGateway::start_with(asyncgate_server::Config {
        tls: Some(pki.server_files(false)),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..fast_config()
    })
    .await;
    let addr = gateway.metrics_addr().expect("metrics are served");
    let (head, body) = tls_get(&tls_client(&pki, false), addr)
        .await
        .expect("the gateway's certificate is trusted through the CA");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // No Accept header: the classic text format, as client_golang serves.
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(
        body.contains("# TYPE grpc_server_started_total counter"),
        "{body}"
    );

    // Plaintext is not served: a TLS server answers it with no HTTP response.
    let plaintext = get_over(
        TcpStream::connect(addr).await.unwrap(),
        addr,
        "/metrics",
        None,
    )
    .await;
    assert!(
        !plaintext.is_ok_and(|(head, _)| head.starts_with("HTTP/1.1 200")),
        "metrics in clear on a TLS gateway"
    );
}

#[tokio::test]
async fn metrics_of_a_mutual_tls_gateway_need_a_client_certificate() {
    let pki = TestPki::generate();
    let gateway = TestGateway::start_with(asyncgate_server::Config {
        tls: Some(pki.server_files(true)),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..fast_config()
    })
    .await;
    let addr = gateway.metrics_addr().expect("metrics are served");
    assert!(
        tls_get(&tls_client(&pki, false), addr).await.is_err(),
        "no client certificate, no metrics"
    );
    let (head, _) = tls_get(&tls_client(&pki, true), addr)
        .await
        .expect("a certificate of the CA is accepted");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

const CLIENT_KEY: &str = "metrics-client-key";
const ADMIN_KEY: &str = "metrics-admin-key";

async fn keyed_gateway(dir: &tempfile::TempDir, public: bool) -> TestGateway {
    let path = dir.path().join("keys.toml");
    std::fs::write(
        &path,
        format!(
            "[[keys]]\nname = \"app\"\nsha256 = \"{}\"\nrole = \"client\"\n\
             [[keys]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"admin\"\n",
            digest_hex(CLIENT_KEY),
            digest_hex(ADMIN_KEY)
        ),
    )
    .unwrap();
    TestGateway::start_with(asyncgate_server::Config {
        keys: Some(path),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        metrics_public: public,
        ..fast_config()
    })
    .await
}

#[tokio::test]
async fn metrics_need_an_admin_key_when_keys_are_configured() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = keyed_gateway(&dir, false).await;
    let addr = gateway.metrics_addr().expect("metrics are served");
    let client = gateway.client().await.with_api_key(CLIENT_KEY).unwrap();
    client.submit(Submit::new("counted").build()).await.unwrap();
    for key in [None, Some("not-a-key"), Some(CLIENT_KEY)] {
        let (head, body) = keyed_get(addr, "/metrics", key).await;
        assert!(head.starts_with("HTTP/1.1 401"), "{key:?}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
        assert!(!body.contains("asyncgate_"), "{key:?} read metrics: {body}");
        assert!(body.len() < 200, "a short reason: {body}");
    }
    let (_, body) = keyed_get(addr, "/metrics", Some(CLIENT_KEY)).await;
    assert!(body.contains("admin key"), "{body}");

    let (head, body) = keyed_get(addr, "/metrics", Some(ADMIN_KEY)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        sample(
            &body,
            r#"asyncgate_tickets_submitted_total{queue="default/counted"}"#
        ),
        Some(1.0),
        "{body}"
    );
}

#[tokio::test]
async fn metrics_public_serves_them_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = keyed_gateway(&dir, true).await;
    let addr = gateway.metrics_addr().expect("metrics are served");
    let (head, _) = http_get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn metrics_name_at_most_the_capped_number_of_queues() {
    let gateway = TestGateway::start_with(asyncgate_server::Config {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        metrics_max_queues: 5,
        ..fast_config()
    })
    .await;
    let client = gateway.client().await;
    // One at a time, so the first five queues are the named ones.
    for n in 0..510 {
        client
            .submit(Submit::new(format!("minted-{n}")).build())
            .await
            .unwrap();
    }
    let (head, text) = http_get(gateway.metrics_addr().unwrap(), "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let queues: BTreeSet<&str> = text
        .split("queue=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(queues.len() <= 6, "{queues:?}");
    assert!(queues.contains("_other"), "{queues:?}");
    assert_eq!(
        sample(
            &text,
            r#"asyncgate_tickets_submitted_total{queue="minted-0"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"asyncgate_tickets_submitted_total{queue="_other"}"#
        ),
        Some(505.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"asyncgate_tickets_pending{queue="_other"}"#),
        Some(505.0),
        "the store's gauges are summed under _other too"
    );
}
