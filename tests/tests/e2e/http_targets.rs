//! HTTP target queues (`--target QUEUE=http://…`): a plain HTTP endpoint
//! on a loopback port, knowing nothing of Asyncgate, behind tickets. The
//! result keeps its content type; metadata, `traceparent` and the ticket's
//! id, attempt and deadline arrive as headers; 503 is retried (after its
//! `Retry-After`), 400 and redirects fail at once; a cancel closes the
//! call's connection; `max_per_second` paces calls; HTTPS with a private CA
//! and a client certificate; a waiting ticket's reason names the target.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncgate_client::{Client, Submit, pb};
use asyncgate_server::config::Config;
use asyncgate_server::targets::parse_target;
use asyncgate_tests::{TestGateway, TestPki, as_json, fast_config, json};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: hyper::HeaderMap,
    at: Instant,
}

/// The upstream: answers by path, and records every request.
#[derive(Clone, Default)]
struct Upstream {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Told when a "/hold" call has arrived.
    held: Arc<tokio::sync::Notify>,
    /// Releases the "/hold" calls.
    release: Arc<tokio::sync::Notify>,
}

impl Upstream {
    /// The requests seen on `path`, in order.
    fn seen(&self, path: &str) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|s| s.path == path).cloned().collect()
    }

    async fn answer(self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = request.uri().path().to_owned();
        let headers = request.headers().clone();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let calls = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(Seen {
                path: path.clone(),
                headers: headers.clone(),
                at: Instant::now(),
            });
            seen.iter().filter(|s| s.path == path).count()
        };
        let reply = |status: StatusCode, body: Bytes| {
            let mut response = Response::new(Full::new(body));
            *response.status_mut() = status;
            response
        };
        if path == "/hold" {
            self.held.notify_one();
            self.release.notified().await;
        }
        let mut response = match (path.as_str(), calls) {
            ("/echo", _) => {
                let mut response = reply(StatusCode::OK, body);
                if let Some(content_type) = headers.get("content-type") {
                    response
                        .headers_mut()
                        .insert("content-type", content_type.clone());
                }
                response
            }
            ("/flaky" | "/later", 1) => reply(StatusCode::SERVICE_UNAVAILABLE, "warming up".into()),
            ("/bad", _) => {
                let long = format!("missing field: items{}", "x".repeat(4000));
                reply(StatusCode::BAD_REQUEST, long.into())
            }
            ("/moved", _) => reply(StatusCode::FOUND, Bytes::new()),
            _ => reply(StatusCode::OK, "done".into()),
        };
        match path.as_str() {
            "/later" if calls == 1 => {
                response
                    .headers_mut()
                    .insert("retry-after", "1".parse().unwrap());
            }
            "/moved" => {
                response
                    .headers_mut()
                    .insert("location", "/echo".parse().unwrap());
            }
            _ => {}
        }
        Ok(response)
    }
}

/// Serves `upstream` on `listener` (over TLS when `tls` is given).
fn serve(listener: TcpListener, upstream: Upstream, tls: Option<tokio_rustls::TlsAcceptor>) {
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (upstream, tls) = (upstream.clone(), tls.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |r| upstream.clone().answer(r));
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    Some(tls) => {
                        let Ok(stream) = tls.accept(stream).await else {
                            return;
                        };
                        let io = hyper_util::rt::TokioIo::new(stream);
                        http.serve_connection(io, service).await
                    }
                    None => {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        http.serve_connection(io, service).await
                    }
                };
            });
        }
    });
}

async fn gateway_for(targets: &[String]) -> TestGateway {
    TestGateway::start_with(Config {
        targets: targets.iter().map(|t| parse_target(t).unwrap()).collect(),
        ..fast_config()
    })
    .await
}

async fn finish(client: &Client, request: pb::SubmitRequest) -> pb::Ticket {
    let ticket = client.submit(request).await.unwrap();
    client
        .get(&ticket.id, Some(Duration::from_secs(20)))
        .await
        .unwrap()
}

fn header<'a>(seen: &'a Seen, name: &str) -> &'a str {
    seen.headers
        .get(name)
        .map_or("", |v| v.to_str().unwrap_or(""))
}

#[tokio::test]
async fn an_http_endpoint_serves_a_queue_with_no_worker_code() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = Upstream::default();
    serve(listener, upstream.clone(), None);
    let mut targets: Vec<String> = ["flaky", "later", "bad", "moved"]
        .iter()
        .map(|path| format!("{path}=http://{addr}/{path}"))
        .collect();
    // An environment variable cargo sets for tests (tests cannot set one).
    targets.push(format!(
        "echo=http://{addr}/echo?header_env=x-team:CARGO_PKG_NAME"
    ));
    let gateway = gateway_for(&targets).await;
    let client = gateway.client().await;

    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let done = finish(
        &client,
        Submit::new("echo")
            .binary(&b"hello"[..], "text/plain; charset=utf-8")
            .metadata("team", "shop")
            .metadata("x-team", "not this one")
            .trace_parent(traceparent)
            .attempt_timeout(Duration::from_secs(30))
            .build(),
    )
    .await;
    assert_eq!(done.state, pb::TicketState::Succeeded as i32, "{done:?}");
    let result = done.result.clone().unwrap();
    assert_eq!(
        result.kind,
        Some(pb::payload::Kind::Binary(Bytes::from_static(b"hello")))
    );
    assert_eq!(result.content_type, "text/plain; charset=utf-8");
    let seen = &upstream.seen("/echo")[0];
    assert_eq!(header(seen, "team"), "shop", "metadata arrives as headers");
    assert_eq!(
        header(seen, "x-team"),
        std::env::var("CARGO_PKG_NAME").unwrap(),
        "a header_env header wins over the metadata"
    );
    assert_eq!(header(seen, "traceparent"), traceparent);
    assert_eq!(header(seen, "x-asyncgate-ticket-id"), done.id);
    assert_eq!(header(seen, "x-asyncgate-attempt"), "1");
    let deadline = header(seen, "x-asyncgate-deadline");
    assert!(
        deadline.ends_with('Z') && deadline.contains('T'),
        "RFC 3339: {deadline}"
    );

    // A JSON payload goes as JSON text and a JSON answer comes back as JSON.
    let value = serde_json::json!({"order": 7, "items": ["a", "b"]});
    let done = finish(
        &client,
        Submit::new("echo").payload(json(value.clone())).build(),
    )
    .await;
    assert_eq!(as_json(done.result.as_ref()), value, "{done:?}");
    assert_eq!(done.result.unwrap().content_type, "application/json");

    let flaky = finish(&client, Submit::new("flaky").build()).await;
    assert_eq!(
        (flaky.state, flaky.attempt),
        (pb::TicketState::Succeeded as i32, 2),
        "503 is retried: {flaky:?}"
    );

    // Retry-After: 1 outweighs the backoff (at most 100 ms).
    let later = finish(&client, Submit::new("later").build()).await;
    assert_eq!(later.state, pb::TicketState::Succeeded as i32, "{later:?}");
    let calls = upstream.seen("/later");
    let waited = calls[1].at - calls[0].at;
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}"
    );

    let bad = finish(&client, Submit::new("bad").build()).await;
    assert_eq!(
        (bad.state, bad.attempt),
        (pb::TicketState::Failed as i32, 1)
    );
    let error = bad.error.unwrap();
    assert_eq!(error.code, 400);
    assert!(!error.retryable);
    assert!(
        error
            .message
            .contains("HTTP 400 Bad Request: missing field: items"),
        "{error:?}"
    );
    assert!(
        error.message.len() < 700,
        "the body is cut: {}",
        error.message.len()
    );

    let moved = finish(&client, Submit::new("moved").build()).await;
    assert_eq!(
        (moved.state, moved.attempt),
        (pb::TicketState::Failed as i32, 1)
    );
    let message = moved.error.unwrap().message;
    assert!(message.contains("redirects are not followed"), "{message}");
    assert!(message.contains("302"), "{message}");
    assert_eq!(
        upstream.seen("/echo").len(),
        2,
        "the redirect was not followed"
    );
}

#[tokio::test]
async fn cancelling_a_ticket_closes_the_http_call_in_flight() {
    // A raw TCP upstream: it reads the request and never answers, and says
    // when its connection is closed.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (started_tx, closed_tx) = (started_tx.clone(), closed_tx.clone());
            tokio::spawn(async move {
                let mut buffer = vec![0; 4096];
                let mut request = Vec::new();
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                    if request.windows(4).any(|w| w == b"\r\n\r\n") && !request.is_empty() {
                        let _ = started_tx.send(());
                        request.clear();
                    }
                }
                let _ = closed_tx.send(());
                let _ = stream.shutdown().await;
            });
        }
    });
    let gateway = gateway_for(&[format!("slow=http://{addr}/slow")]).await;
    let client = gateway.client().await;
    let ticket = client.submit(Submit::new("slow").build()).await.unwrap();
    started.recv().await.unwrap();
    let cancelled_at = Instant::now();
    client.cancel(&ticket.id, "no longer needed").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), closed.recv())
        .await
        .expect("the upstream sees its connection closed")
        .unwrap();
    assert!(cancelled_at.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn max_per_second_paces_the_calls() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = Upstream::default();
    serve(listener, upstream.clone(), None);
    let gateway = gateway_for(&[format!("paced=http://{addr}/paced?max_per_second=5")]).await;
    let client = gateway.client().await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(
            client
                .submit(Submit::new("paced").build())
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids {
        let done = client.get(id, Some(Duration::from_secs(20))).await.unwrap();
        assert_eq!(done.state, pb::TicketState::Succeeded as i32, "{done:?}");
    }
    let calls = upstream.seen("/paced");
    assert_eq!(calls.len(), 10);
    let span = calls[9].at - calls[0].at;
    assert!(span >= Duration::from_millis(1500), "10 calls in {span:?}");
    let gaps: HashMap<usize, Duration> = calls
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i, w[1].at - w[0].at))
        .collect();
    assert!(
        gaps.values().all(|gap| *gap >= Duration::from_millis(100)),
        "evenly spaced: {gaps:?}"
    );
}

#[tokio::test]
async fn an_https_target_with_a_private_ca_and_a_client_certificate() {
    let pki = TestPki::generate();
    let dir = pki.dir();
    std::fs::write(dir.join("client.pem"), &pki.client.0).unwrap();
    std::fs::write(dir.join("client.key"), &pki.client.1).unwrap();
    let acceptor = {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let chain = CertificateDer::pem_file_iter(dir.join("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = Upstream::default();
    serve(listener, upstream.clone(), Some(acceptor));
    let files = format!(
        "ca_file={}&cert_file={}&key_file={}",
        dir.join("ca.pem").display(),
        dir.join("client.pem").display(),
        dir.join("client.key").display()
    );
    let gateway = gateway_for(&[
        format!("secure=https://{addr}/echo?{files}"),
        format!("untrusted=https://{addr}/echo"),
    ])
    .await;
    let client = gateway.client().await;
    let done = finish(
        &client,
        Submit::new("secure")
            .binary(&b"sealed"[..], "text/plain")
            .build(),
    )
    .await;
    assert_eq!(done.state, pb::TicketState::Succeeded as i32, "{done:?}");
    assert_eq!(
        done.result.unwrap().kind,
        Some(pb::payload::Kind::Binary(Bytes::from_static(b"sealed")))
    );
    // Without the CA the system roots do not trust the upstream.
    let refused = finish(&client, Submit::new("untrusted").max_attempts(1).build()).await;
    assert_eq!(refused.state, pb::TicketState::Failed as i32);
    let error = refused.error.unwrap();
    assert!(
        error.message.contains("unreachable") && error.message.contains("certificate"),
        "{error:?}"
    );
    assert_eq!(upstream.seen("/echo").len(), 1);
}

#[tokio::test]
async fn a_waiting_ticket_names_its_target() {
    use futures::StreamExt as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = Upstream::default();
    serve(listener, upstream.clone(), None);
    let gateway = gateway_for(&[
        format!("hold=http://{addr}/hold?max_concurrent=1"),
        format!("later=http://{addr}/later"),
    ])
    .await;
    let client = gateway.client().await;

    // The target's one call is in flight: the next ticket waits for it.
    let first = client.submit(Submit::new("hold").build()).await.unwrap();
    upstream.held.notified().await;
    let second = client.submit(Submit::new("hold").build()).await.unwrap();
    let waiting = client.get(&second.id, None).await.unwrap();
    let reason = waiting.waiting_reason.unwrap();
    assert_eq!(
        reason.kind,
        pb::WaitingReasonKind::Limited as i32,
        "{reason:?}"
    );
    assert!(
        reason.description.starts_with(&format!(
            "waiting for target http://{addr}/hold (1 calls in flight, its max_concurrent)"
        )),
        "{reason:?}"
    );
    let running = client.get(&first.id, None).await.unwrap();
    let leased = running.waiting_reason.unwrap();
    assert!(
        leased
            .description
            .contains(&format!("target http://{addr}/hold")),
        "{leased:?}"
    );
    upstream.release.notify_waiters();

    // After the upstream's 503 (Retry-After: 1) the ticket waits to retry.
    let later = client.submit(Submit::new("later").build()).await.unwrap();
    let mut events = client.watch(&later.id, None).await.unwrap();
    let backoff = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            let reason = event.unwrap().ticket.and_then(|t| t.waiting_reason);
            if let Some(reason) = reason.filter(|r| r.kind == pb::WaitingReasonKind::Backoff as i32)
            {
                return reason;
            }
        }
        panic!("the watch ended before a backoff")
    })
    .await
    .expect("a backoff within 10 s");
    assert!(
        backoff.description.starts_with(
            "retrying after target error (attempt 1 of 3): the target answered HTTP 503 Service Unavailable: warming up"
        ),
        "{backoff:?}"
    );
    assert!(
        backoff
            .description
            .contains(&format!("target http://{addr}/later is called again at"))
    );
}

#[tokio::test]
async fn an_answer_over_the_payload_limit_is_refused_without_buffering_it() {
    // A raw upstream: "/sized" announces 10 MB and sends nothing; "/endless"
    // streams chunks until its connection closes, then reports how much it
    // wrote.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (written_tx, mut written) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let written_tx = written_tx.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                if request.starts_with(b"POST /sized ") {
                    let head = "HTTP/1.1 200 OK\r\ncontent-length: 10000000\r\n\r\n";
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.read(&mut buffer).await;
                    return;
                }
                let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let chunk = format!("400\r\n{}\r\n", "x".repeat(1024));
                let mut total = 0usize;
                while stream.write_all(chunk.as_bytes()).await.is_ok() {
                    total += 1024;
                }
                let _ = written_tx.send(total);
            });
        }
    });
    let gateway = TestGateway::start_with(Config {
        targets: vec![
            parse_target(&format!("sized=http://{addr}/sized")).unwrap(),
            parse_target(&format!("endless=http://{addr}/endless")).unwrap(),
        ],
        max_payload_bytes: 64 * 1024,
        ..fast_config()
    })
    .await;
    let client = gateway.client().await;
    for (queue, size) in [("sized", "10000000"), ("endless", "over 65536")] {
        let done = finish(&client, Submit::new(queue).build()).await;
        assert_eq!(
            (done.state, done.attempt),
            (pb::TicketState::Failed as i32, 1)
        );
        let error = done.error.unwrap();
        assert_eq!(error.code, tonic::Code::ResourceExhausted as i32);
        assert!(
            error.message.contains(&format!(
                "is {size} bytes, above --max-payload-bytes (65536)"
            )),
            "{error:?}"
        );
    }
    let total = tokio::time::timeout(Duration::from_secs(10), written.recv())
        .await
        .expect("the gateway closes the endless answer")
        .unwrap();
    assert!(total < 32 << 20, "{total} bytes written before the close");
}
