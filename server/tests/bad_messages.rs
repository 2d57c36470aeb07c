//! Bad input at the gRPC level, against the real `asyncgate-server` binary:
//! whatever form a too-large or unreadable message takes, the caller gets one
//! code for one condition and a short message that says what to fix, and
//! the gateway keeps serving everyone else.

use std::time::Duration;

use asyncgate_client::worker::{TaskContext, Worker, handler_fn};
use asyncgate_client::{Client, CompressionEncoding, Submit, payload, pb};
use bytes::Bytes;
use tokio::process::Child;
use tonic::Code;
use tonic::codegen::http;

mod common;
use common::{free_port, start_server, wait_until_serving};

/// The payload limit every test here runs with.
const PAYLOAD_LIMIT: usize = 1024;

struct Gateway {
    _child: Child,
    url: String,
    client: Client,
}

impl Gateway {
    async fn start() -> Gateway {
        let port = free_port();
        let limit = PAYLOAD_LIMIT.to_string();
        let child = start_server("memory", port, &["--max-payload-bytes", &limit]);
        let url = format!("http://127.0.0.1:{port}");
        let client = Client::connect_lazy(url.clone()).unwrap();
        wait_until_serving(&client).await;
        Gateway {
            _child: child,
            url,
            client,
        }
    }

    /// A ticket round trip through a fresh worker: the gateway still serves.
    async fn still_serves(&self) {
        let worker = Worker::builder(self.url.clone())
            .queue("healthy")
            .handler(handler_fn(|task: TaskContext| async move {
                Ok(task.payload().clone())
            }))
            .build()
            .unwrap()
            .spawn();
        let ticket = self
            .client
            .submit(Submit::new("healthy").json(serde_json::json!(1)))
            .await
            .unwrap();
        let ticket = common::finished(&self.client, &ticket.id).await;
        assert_eq!(ticket.state(), pb::TicketState::Succeeded);
        worker.shutdown();
    }

    /// An HTTP/2 connection for hand-made gRPC requests.
    async fn raw(&self) -> h2::client::SendRequest<Bytes> {
        let tcp = tokio::net::TcpStream::connect(self.url.trim_start_matches("http://"))
            .await
            .unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        client.ready().await.unwrap()
    }
}

/// One length-prefixed gRPC message.
fn frame(message: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.into()
}

/// Sends `body` to `path` and returns the call's status (from the
/// trailers, or the headers of a trailers-only answer).
async fn raw_call(
    client: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    body: Bytes,
    extra_headers: &[(&str, String)],
) -> (Code, String) {
    let mut request = http::Request::post(format!("http://gateway{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra_headers {
        request = request.header(*name, value);
    }
    let (response, mut send) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    send.send_data(body, true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("an answer")
        .unwrap();
    let status_of = |headers: &http::HeaderMap| {
        let status = tonic::Status::from_header_map(headers)?;
        Some((status.code(), status.message().to_owned()))
    };
    if let Some(status) = status_of(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        if data.is_err() {
            break;
        }
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    status_of(&trailers).expect("a grpc-status")
}

#[tokio::test]
async fn an_over_size_request_is_resource_exhausted_however_it_is_sent() {
    let gateway = Gateway::start().await;
    let big = |n: usize| Submit::new("q").payload(payload::binary(vec![b'a'; n], "text/plain"));
    let gzip = gateway
        .client
        .clone()
        .with_compression(CompressionEncoding::Gzip);
    let cases = [
        // Just past the payload limit: the edge check.
        (
            "plain, past the payload limit",
            gateway.client.clone(),
            big(PAYLOAD_LIMIT + 100),
        ),
        // Past the whole message limit: tonic's decoder.
        (
            "plain, past the message limit",
            gateway.client.clone(),
            big(200_000),
        ),
        // Small on the wire, large once decompressed.
        ("gzip, past the message limit", gzip.clone(), big(200_000)),
        (
            "gzip, past the payload limit",
            gzip,
            big(PAYLOAD_LIMIT + 100),
        ),
    ];
    for (what, client, request) in cases {
        let error = client.submit(request).await.expect_err(what);
        assert_eq!(error.code(), Code::ResourceExhausted, "{what}: {error}");
        assert!(
            error.to_string().contains("--max-payload-bytes"),
            "{what}: {error}"
        );
    }
    gateway.still_serves().await;
}

#[tokio::test]
async fn an_undecodable_request_is_invalid_argument_in_a_few_words() {
    let gateway = Gateway::start().await;
    let mut raw = gateway.raw().await;
    // A queue name that is not UTF-8 (field 1, length 2).
    let bad_utf8 = frame(&[0x0a, 0x02, 0xff, 0xfe]);
    // Not protobuf at all.
    let garbage = frame(&[0xff; 40]);
    // A frame cut short: it announces more than the body holds.
    let mut truncated = frame(&[0x0a, 0x01, b'q']).to_vec();
    truncated[4] = 50;
    for (what, body) in [
        ("bad UTF-8", bad_utf8),
        ("garbage", garbage),
        ("truncated", Bytes::from(truncated)),
    ] {
        let (code, message) = raw_call(&mut raw, "/asyncgate.v1.Gateway/Submit", body, &[]).await;
        assert_eq!(code, Code::InvalidArgument, "{what}: {message}");
        assert!(message.len() < 300, "{what}: {} characters", message.len());
    }
    gateway.still_serves().await;
}

#[tokio::test]
async fn over_size_headers_get_a_status_that_says_so() {
    let gateway = Gateway::start().await;
    let mut raw = gateway.raw().await;
    let (code, message) = raw_call(
        &mut raw,
        "/asyncgate.v1.Gateway/ListTickets",
        frame(&[]),
        &[("x-padding", "p".repeat(20 * 1024))],
    )
    .await;
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("headers"), "{message}");
    gateway.still_serves().await;
}

/// A worker stream by hand: a Hello, then `then`; returns the status the
/// stream ends with, after reading everything the gateway sent.
async fn worker_stream_status(gateway: &Gateway, then: Bytes) -> (Code, String) {
    use prost::Message as _;
    let mut raw = gateway.raw().await;
    let hello = pb::WorkerMessage {
        kind: Some(pb::worker_message::Kind::Hello(pb::Hello {
            worker_name: "raw".into(),
            queues: vec!["raw".into()],
            max_in_flight: 1,
            batches: false,
        })),
        ..Default::default()
    };
    let request = http::Request::post("http://gateway/asyncgate.v1.Workers/Connect")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = raw.send_request(request, false).unwrap();
    send.send_data(frame(&hello.encode_to_vec()), false)
        .unwrap();
    send.send_data(then, false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .unwrap()
        .unwrap();
    let mut body = response.into_body();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(data) = body.data().await {
            if data.is_err() {
                break;
            }
        }
    })
    .await
    .expect("the gateway ends the stream");
    let trailers = body.trailers().await.unwrap().expect("trailers");
    let status = tonic::Status::from_header_map(&trailers).expect("a status");
    (status.code(), status.message().to_owned())
}

#[tokio::test]
async fn a_worker_message_the_gateway_cannot_read_ends_the_stream_with_the_reason() {
    let gateway = Gateway::start().await;
    // A Drain (field 5) whose reason is not UTF-8.
    let undecodable = frame(&[0x2a, 0x04, 0x0a, 0x02, 0xff, 0xfe]);
    let (code, message) = worker_stream_status(&gateway, undecodable).await;
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("WorkerMessage"), "{message}");
    assert!(message.len() < 400, "{message}");
    // A message past the message limit.
    let huge = frame(&vec![0u8; PAYLOAD_LIMIT + 100 * 1024]);
    let (code, message) = worker_stream_status(&gateway, huge).await;
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("--max-payload-bytes"), "{message}");
    gateway.still_serves().await;
}

#[tokio::test]
async fn a_malformed_progress_is_refused_and_the_session_carries_on() {
    use asyncgate_proto::v1::workers_client::WorkersClient;
    let gateway = Gateway::start().await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let channel = tonic::transport::Endpoint::from_shared(gateway.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let send = |kind| pb::WorkerMessage {
        kind: Some(kind),
        ..Default::default()
    };
    tx.send(send(pb::worker_message::Kind::Hello(pb::Hello {
        worker_name: "sloppy".into(),
        queues: vec!["sloppy".into()],
        max_in_flight: 1,
        batches: false,
    })))
    .await
    .unwrap();
    let mut inbound = WorkersClient::new(channel)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut next = async || loop {
        let message = inbound
            .message()
            .await
            .unwrap()
            .expect("the stream stays open");
        match message.kind {
            Some(pb::dispatch_message::Kind::Ping(ping)) => {
                tx.send(send(pb::worker_message::Kind::Heartbeat(pb::Heartbeat {
                    nonce: ping.nonce,
                })))
                .await
                .unwrap();
            }
            Some(pb::dispatch_message::Kind::Welcome(_)) => {}
            Some(other) => return other,
            None => {}
        }
    };
    let ticket = gateway
        .client
        .submit(Submit::new("sloppy").json(serde_json::json!("x")))
        .await
        .unwrap();
    let Some(pb::dispatch_message::Kind::Task(task)) = Some(next().await) else {
        panic!("expected the task");
    };
    // A progress with a lease id that is not one.
    tx.send(send(pb::worker_message::Kind::Progress(pb::TaskProgress {
        ticket_id: task.ticket_id.clone(),
        lease_id: "not-a-lease".into(),
        percent: 5,
        ..Default::default()
    })))
    .await
    .unwrap();
    let pb::dispatch_message::Kind::ResultAck(ack) = next().await else {
        panic!("expected an ack");
    };
    assert_eq!(ack.code, Code::InvalidArgument as i32, "{ack:?}");
    assert_eq!(ack.lease_id, "not-a-lease");
    assert!(ack.message.contains("progress"), "{ack:?}");
    // The session is still there: its result is recorded.
    tx.send(send(pb::worker_message::Kind::Result(pb::TaskResult {
        ticket_id: task.ticket_id.clone(),
        lease_id: task.lease_id.clone(),
        outcome: Some(pb::task_result::Outcome::Success(payload::json(
            serde_json::json!("done"),
        ))),
    })))
    .await
    .unwrap();
    let pb::dispatch_message::Kind::ResultAck(ack) = next().await else {
        panic!("expected an ack");
    };
    assert_eq!(ack.code, Code::Ok as i32, "{ack:?}");
    let done = gateway.client.get(&ticket.id, None).await.unwrap();
    assert_eq!(done.state(), pb::TicketState::Succeeded);
}

#[tokio::test]
async fn store_errors_reach_callers_without_internals() {
    const PASSWORD: &str = "s3cret-pw";
    let mut redis =
        asyncgate_server::testing::RedisServer::start_with_password(PASSWORD).expect("redis");
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("gateway.log");
    let port = free_port();
    let _child = tokio::process::Command::new(env!("CARGO_BIN_EXE_asyncgate-server"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--store", &redis.url()])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = Client::connect_lazy(format!("http://127.0.0.1:{port}")).unwrap();
    wait_until_serving(&client).await;
    client.submit(Submit::new("q")).await.expect("Redis is up");

    redis.kill();
    let error = client
        .submit(Submit::new("q"))
        .await
        .expect_err("Redis is down");
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    let message = error.to_string();
    for secret in [PASSWORD, "redis://", "127.0.0.1"] {
        assert!(!message.contains(secret), "{secret:?} leaked: {message}");
    }
    assert!(message.contains("retry"), "{message}");

    redis.restart().expect("redis restarts");
    let recovered = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if client.submit(Submit::new("q")).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(recovered.is_ok(), "the gateway recovers with Redis");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains(PASSWORD),
        "the log shows the password:\n{log}"
    );
    assert!(
        log.contains("Redis call failed"),
        "the detail is logged:\n{log}"
    );
}

#[tokio::test]
async fn a_ticket_that_succeeds_after_a_failed_attempt_shows_no_error() {
    let gateway = Gateway::start().await;
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let worker = Worker::builder(gateway.url.clone())
        .queue("flaky")
        .handler(handler_fn(move |task: TaskContext| {
            let attempts = attempts.clone();
            async move {
                if attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    Err(asyncgate_client::worker::TaskError::new(
                        Code::Unavailable,
                        "flaky downstream",
                        true,
                    ))
                } else {
                    Ok(task.payload().clone())
                }
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let ticket = gateway
        .client
        .submit(Submit::new("flaky").json(serde_json::json!("x")))
        .await
        .unwrap();
    let done = common::finished(&gateway.client, &ticket.id).await;
    assert_eq!(done.state(), pb::TicketState::Succeeded, "{done:?}");
    assert_eq!(done.attempt, 2);
    assert_eq!(done.error, None, "the final outcome carries no stale error");
    worker.shutdown();
}
