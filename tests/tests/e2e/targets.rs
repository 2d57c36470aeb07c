//! Target queues (`--target`): an unmodified tonic service behind tickets.
//! The gateway calls its unary method with each ticket's binary payload and
//! records the reply; an upstream UNAVAILABLE is retried, INVALID_ARGUMENT
//! fails the ticket with the upstream's message, a JSON payload to a
//! target without reflection is refused
//! saying what to send, and cancelling a ticket cancels the call in flight.
//! Over TLS with a private CA and a client certificate, `retry_on` replaces
//! the retried codes and `header_env` headers reach the upstream, winning
//! over the ticket's metadata. A target serving reflection (v1, or only
//! v1alpha) takes JSON payloads and answers JSON; JSON that does not fit
//! the request type fails naming it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use asyncgate_client::{Submit, pb};
use asyncgate_proto::bench as echo;
use asyncgate_server::config::Config;
use asyncgate_tests::{TestGateway, fast_config, json};
use prost::Message;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// The upstream: an Echo service that knows nothing of Asyncgate.
struct Upstream {
    flaky_calls: Arc<AtomicU32>,
    internal_calls: Arc<AtomicU32>,
    /// When each "pushback" call came.
    pushback_calls: Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>,
    /// Told when a "slow" call is dropped by its caller.
    dropped: tokio::sync::mpsc::UnboundedSender<()>,
    /// Told when a "slow" call has started.
    started: tokio::sync::mpsc::UnboundedSender<()>,
}

struct DropSignal(tokio::sync::mpsc::UnboundedSender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[tonic::async_trait]
impl echo::echo_server::Echo for Upstream {
    async fn echo(
        &self,
        request: tonic::Request<echo::EchoRequest>,
    ) -> Result<tonic::Response<echo::EchoReply>, tonic::Status> {
        let team = request
            .metadata()
            .get("team")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let payload = request.into_inner().payload;
        match &payload[..] {
            b"bad" => Err(tonic::Status::invalid_argument("the order has no items")),
            b"pushback" => {
                let mut calls = self.pushback_calls.lock().unwrap();
                calls.push(tokio::time::Instant::now());
                if calls.len() == 1 {
                    let mut status = tonic::Status::unavailable("overloaded");
                    status
                        .metadata_mut()
                        .insert("grpc-retry-pushback-ms", "400".parse().unwrap());
                    return Err(status);
                }
                Ok(tonic::Response::new(echo::EchoReply::default()))
            }
            b"flaky" if self.flaky_calls.fetch_add(1, Ordering::SeqCst) == 0 => {
                Err(tonic::Status::unavailable("warming up"))
            }
            b"internal" if self.internal_calls.fetch_add(1, Ordering::SeqCst) == 0 => {
                Err(tonic::Status::internal("a hiccup"))
            }
            b"slow" => {
                let _signal = DropSignal(self.dropped.clone());
                let _ = self.started.send(());
                std::future::pending::<()>().await;
                unreachable!()
            }
            _ => Ok(tonic::Response::new(echo::EchoReply {
                payload: [b"echo:".as_slice(), &payload, b" team=", team.as_bytes()]
                    .concat()
                    .into(),
            })),
        }
    }
}

/// Submits `request` and waits for its terminal state.
async fn finish(
    client: &asyncgate_client::Client,
    request: pb::SubmitRequest,
) -> Result<pb::Ticket, asyncgate_client::ClientError> {
    let ticket = client.submit(request).await?;
    client.get(&ticket.id, Some(Duration::from_secs(20))).await
}

fn request(text: &str) -> Vec<u8> {
    echo::EchoRequest {
        payload: text.as_bytes().to_vec().into(),
    }
    .encode_to_vec()
}

fn reply(ticket: &pb::Ticket) -> String {
    let Some(pb::payload::Kind::Binary(bytes)) =
        ticket.result.as_ref().and_then(|p| p.kind.clone())
    else {
        panic!("no binary result: {ticket:?}");
    };
    String::from_utf8(echo::EchoReply::decode(bytes).unwrap().payload.to_vec()).unwrap()
}

#[tokio::test]
async fn a_grpc_method_serves_a_queue_with_no_worker_code() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let (dropped_tx, mut dropped) = tokio::sync::mpsc::unbounded_channel();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let pushback_calls = Arc::<std::sync::Mutex<Vec<tokio::time::Instant>>>::default();
    let upstream = Upstream {
        flaky_calls: Arc::default(),
        internal_calls: Arc::default(),
        pushback_calls: pushback_calls.clone(),
        dropped: dropped_tx,
        started: started_tx,
    };
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(echo::echo_server::EchoServer::new(upstream))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let target = format!("echo=grpc://{upstream_addr}/asyncgate.bench.v1.Echo/Echo");
    let gateway = TestGateway::start_with(Config {
        targets: vec![asyncgate_server::targets::parse_target(&target).unwrap()],
        ..fast_config()
    })
    .await;
    let client = gateway.client().await;
    let submit = |text: &str| {
        Submit::new("echo")
            .binary(request(text), "application/x-protobuf")
            .metadata("team", "shop")
            .build()
    };

    let done = finish(&client, submit("hello")).await.unwrap();
    assert_eq!(done.state, pb::TicketState::Succeeded as i32, "{done:?}");
    assert_eq!(
        reply(&done),
        "echo:hello team=shop",
        "metadata reaches the upstream"
    );

    let flaky = finish(&client, submit("flaky")).await.unwrap();
    assert_eq!(flaky.state, pb::TicketState::Succeeded as i32, "{flaky:?}");
    assert_eq!(flaky.attempt, 2, "UNAVAILABLE is retried");

    // The upstream's pushback (400 ms) outweighs the backoff (at most 100 ms).
    let pushed = finish(&client, submit("pushback")).await.unwrap();
    assert_eq!(
        (pushed.state, pushed.attempt),
        (pb::TicketState::Succeeded as i32, 2)
    );
    let calls = pushback_calls.lock().unwrap().clone();
    assert!(
        calls[1] - calls[0] >= Duration::from_millis(400),
        "retried after {:?}",
        calls[1] - calls[0]
    );

    let bad = finish(&client, submit("bad")).await.unwrap();
    assert_eq!(bad.state, pb::TicketState::Failed as i32);
    let error = bad.error.unwrap();
    assert_eq!(error.code, tonic::Code::InvalidArgument as i32);
    assert!(
        error.message.contains("the order has no items"),
        "{error:?}"
    );
    assert_eq!(bad.attempt, 1, "INVALID_ARGUMENT is not retried");

    let json = finish(
        &client,
        Submit::new("echo")
            .payload(json(serde_json::json!({"a": 1})))
            .build(),
    )
    .await
    .unwrap();
    assert_eq!(json.state, pb::TicketState::Failed as i32);
    let error = json.error.unwrap();
    assert_eq!(error.code, tonic::Code::InvalidArgument as i32, "{error:?}");
    assert!(
        error.message.contains("serve gRPC reflection")
            && error.message.contains("as a binary payload"),
        "{error:?}"
    );
    assert_eq!(json.attempt, 1, "not retried");

    // Cancelling the ticket cancels the call in flight.
    let slow = client.submit(submit("slow")).await.unwrap();
    started.recv().await.unwrap();
    client.cancel(&slow.id, "no longer needed").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), dropped.recv())
        .await
        .expect("the upstream call is dropped")
        .unwrap();
    server.abort();
}

#[tokio::test]
async fn a_grpcs_target_with_a_private_ca_retry_on_and_headers() {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let pki = asyncgate_tests::TestPki::generate();
    let dir = pki.dir();
    std::fs::write(dir.join("client.pem"), &pki.client.0).unwrap();
    std::fs::write(dir.join("client.key"), &pki.client.1).unwrap();
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("server.pem"), read("server.key")))
        .client_ca_root(Certificate::from_pem(read("ca.pem")));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let (dropped, _) = tokio::sync::mpsc::unbounded_channel();
    let upstream = Upstream {
        flaky_calls: Arc::default(),
        internal_calls: Arc::default(),
        pushback_calls: Arc::default(),
        dropped: dropped.clone(),
        started: dropped,
    };
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(echo::echo_server::EchoServer::new(upstream))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    // An environment variable cargo sets for tests (tests cannot set one).
    let team = std::env::var("CARGO_PKG_NAME").unwrap();
    let target = format!(
        "echo=grpcs://{upstream_addr}/asyncgate.bench.v1.Echo/Echo?retry_on=INTERNAL\
         &header_env=team:CARGO_PKG_NAME&ca_file={}&cert_file={}&key_file={}",
        dir.join("ca.pem").display(),
        dir.join("client.pem").display(),
        dir.join("client.key").display(),
    );
    let gateway = TestGateway::start_with(Config {
        targets: vec![asyncgate_server::targets::parse_target(&target).unwrap()],
        ..fast_config()
    })
    .await;
    let client = gateway.client().await;
    let submit = |text: &str| {
        Submit::new("echo")
            .binary(request(text), "application/x-protobuf")
            .metadata("team", "shop")
            .build()
    };
    let done = finish(&client, submit("hello")).await.unwrap();
    assert_eq!(done.state, pb::TicketState::Succeeded as i32, "{done:?}");
    assert_eq!(
        reply(&done),
        format!("echo:hello team={team}"),
        "the header_env header wins over the ticket's metadata"
    );
    let internal = finish(&client, submit("internal")).await.unwrap();
    assert_eq!(
        (internal.state, internal.attempt),
        (pb::TicketState::Succeeded as i32, 2),
        "INTERNAL is retried with retry_on=INTERNAL: {internal:?}"
    );
    let flaky = finish(&client, submit("flaky")).await.unwrap();
    assert_eq!(
        (flaky.state, flaky.attempt),
        (pb::TicketState::Failed as i32, 1),
        "UNAVAILABLE is no longer retried: {flaky:?}"
    );
    let error = flaky.error.unwrap();
    assert_eq!(error.code, tonic::Code::Unavailable as i32);
    assert!(
        error.message.contains("UNAVAILABLE: warming up"),
        "{error:?}"
    );
    server.abort();
}

/// A tonic health service with reflection of one version, as an upstream.
async fn health_upstream(v1alpha_only: bool) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.v1.Orders", tonic_health::ServingStatus::NotServing)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    let router = tonic::transport::Server::builder().add_service(health);
    let router = if v1alpha_only {
        router.add_service(reflection.build_v1alpha().unwrap())
    } else {
        router.add_service(reflection.build_v1().unwrap())
    };
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    addr
}

#[tokio::test]
async fn json_goes_to_a_target_serving_reflection_and_comes_back_json() {
    let (v1, v1alpha) = (health_upstream(false).await, health_upstream(true).await);
    let targets = [("health", v1), ("health-alpha", v1alpha)]
        .map(|(queue, addr)| {
            asyncgate_server::targets::parse_target(&format!(
                "{queue}=grpc://{addr}/grpc.health.v1.Health/Check"
            ))
            .unwrap()
        })
        .to_vec();
    let gateway = TestGateway::start_with(Config {
        targets,
        ..fast_config()
    })
    .await;
    let client = gateway.client().await;
    for queue in ["health", "health-alpha"] {
        for (service, status) in [("", "SERVING"), ("shop.v1.Orders", "NOT_SERVING")] {
            let ticket = finish(
                &client,
                Submit::new(queue)
                    .payload(json(serde_json::json!({ "service": service })))
                    .build(),
            )
            .await
            .unwrap();
            assert_eq!(
                ticket.state,
                pb::TicketState::Succeeded as i32,
                "{queue}: {ticket:?}"
            );
            let result = ticket.result.as_ref().unwrap();
            assert_eq!(result.content_type, "application/json");
            assert_eq!(
                asyncgate_tests::as_json(ticket.result.as_ref()),
                serde_json::json!({ "status": status }),
                "{queue}"
            );
        }
        // JSON that is not the request type fails at once, naming it.
        let wrong = finish(
            &client,
            Submit::new(queue)
                .payload(json(serde_json::json!({ "servce": "typo" })))
                .build(),
        )
        .await
        .unwrap();
        assert_eq!(wrong.state, pb::TicketState::Failed as i32);
        let error = wrong.error.unwrap();
        assert_eq!(error.code, tonic::Code::InvalidArgument as i32, "{error:?}");
        assert!(
            error.message.contains("grpc.health.v1.HealthCheckRequest"),
            "{error:?}"
        );
        assert_eq!(wrong.attempt, 1, "not retried");
    }
}
