//! The Connect protocol (`--grpc-web`): unary calls in JSON and binary, a
//! server-streamed watch in JSON relayed event by event, errors as Connect
//! error bodies with their HTTP statuses (and as end-stream messages), the
//! request limits, API keys, and a gateway that stays healthy after abuse.
//! Spoken by hand over HTTP/1.1, as a browser's `fetch` would.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use prost::Message as _;
use serde_json::{Value, json};

use asyncgate_client::pb;
use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_tests::{Gate, TestGateway, fast_config};

const APP: &str = "http://app.example.com";

fn config() -> asyncgate_server::Config {
    asyncgate_server::Config {
        grpc_web: true,
        cors_allow_origins: vec![APP.to_owned()],
        ..fast_config()
    }
}

/// An HTTP/1.1 connection to the gateway.
async fn connection(gateway: &TestGateway) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// A Connect POST to `/{method}`.
fn post(
    gateway: &TestGateway,
    method: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut request = Request::post(format!("http://{}/{method}", gateway.addr()))
        .header("content-type", content_type)
        .header("connect-protocol-version", "1")
        .header("origin", APP);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::new(body.into())).unwrap()
}

/// One unary exchange: status, headers, body.
async fn exchange(
    gateway: &TestGateway,
    request: Request<Full<Bytes>>,
) -> (hyper::http::response::Parts, Bytes) {
    let response = connection(gateway)
        .await
        .send_request(request)
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

/// A unary JSON call: HTTP status and the JSON body.
async fn unary_json(
    gateway: &TestGateway,
    method: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (u16, Value) {
    let request = post(
        gateway,
        method,
        "application/json",
        headers,
        body.to_string(),
    );
    let (parts, body) = exchange(gateway, request).await;
    assert_eq!(
        parts.headers["content-type"], "application/json",
        "{parts:?}"
    );
    (
        parts.status.as_u16(),
        serde_json::from_slice(&body).unwrap(),
    )
}

fn envelope(flags: u8, message: &[u8]) -> Bytes {
    let mut frame = BytesMut::new();
    frame.put_u8(flags);
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    frame.freeze()
}

/// A server stream being read envelope by envelope.
struct Stream {
    body: hyper::body::Incoming,
    buf: BytesMut,
}

impl Stream {
    async fn open(
        gateway: &TestGateway,
        method: &str,
        headers: &[(&str, &str)],
        request: Value,
    ) -> Self {
        let request = post(
            gateway,
            method,
            "application/connect+json",
            headers,
            envelope(0, request.to_string().as_bytes()),
        );
        let response = connection(gateway)
            .await
            .send_request(request)
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "streams always answer 200");
        assert_eq!(
            response.headers()["content-type"],
            "application/connect+json"
        );
        assert_eq!(response.headers()["access-control-allow-origin"], APP);
        Self {
            body: response.into_body(),
            buf: BytesMut::new(),
        }
    }

    /// The next envelope: (end of stream, JSON); `None` when the body ends.
    async fn next(&mut self) -> Option<(bool, Value)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    let flags = self.buf.get_u8();
                    self.buf.advance(4);
                    let message = self.buf.split_to(len);
                    return Some((flags & 2 != 0, serde_json::from_slice(&message).unwrap()));
                }
            }
            let frame = self.body.frame().await?.unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// Every remaining message, and the end-stream message.
    async fn rest(mut self) -> (Vec<Value>, Value) {
        let mut messages = Vec::new();
        while let Some((end, message)) = self.next().await {
            if end {
                assert!(
                    self.next().await.is_none(),
                    "the end-stream message is last"
                );
                return (messages, message);
            }
            messages.push(message);
        }
        panic!("the stream ended without an end-stream message");
    }
}

#[tokio::test]
async fn json_submit_and_watch_relays_each_event() {
    let gateway = TestGateway::start_with(config()).await;
    let (status, ticket) = unary_json(
        &gateway,
        "asyncgate.v1.Gateway/Submit",
        &[],
        json!({"queue": "connect", "payload": {"json": {"n": 21}}, "metadata": {"from": "fetch"}}),
    )
    .await;
    assert_eq!(status, 200, "{ticket}");
    assert_eq!(ticket["state"], "TICKET_STATE_PENDING");
    assert_eq!(ticket["metadata"]["from"], "fetch");
    let id = ticket["id"].as_str().unwrap().to_owned();

    let gate = Gate::default();
    let worker = gateway.spawn_worker(
        "connect",
        handler_fn({
            let gate = gate.clone();
            move |task: TaskContext| {
                let gate = gate.clone();
                async move {
                    gate.enter().await;
                    task.progress(50, "halfway").await;
                    let n = task.json().unwrap()["n"].as_i64().unwrap();
                    Ok(asyncgate_tests::json(json!({"doubled": n * 2})))
                }
            }
        }),
    );
    gate.started().await;
    let mut watch = Stream::open(
        &gateway,
        "asyncgate.v1.Gateway/WatchTicket",
        &[],
        json!({"id": id}),
    )
    .await;
    // The snapshot arrives while the task is held: relayed as it comes, not
    // at the end of the stream.
    let (end, snapshot) = watch.next().await.unwrap();
    assert!(!end);
    assert_eq!(snapshot["kind"], "TICKET_EVENT_KIND_SNAPSHOT", "{snapshot}");
    assert_eq!(snapshot["ticket"]["state"], "TICKET_STATE_RUNNING");
    gate.open();
    let (events, end) = watch.rest().await;
    assert_eq!(end, json!({}), "a successful stream ends without an error");
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "TICKET_EVENT_KIND_PROGRESS"
                && e["ticket"]["progress"]["message"] == "halfway"),
        "{events:?}"
    );
    let last = &events.last().unwrap()["ticket"];
    assert_eq!(last["state"], "TICKET_STATE_SUCCEEDED", "{events:?}");
    // google.protobuf.Value numbers are doubles: 42.0 in JSON.
    assert_eq!(last["result"]["json"]["doubled"].as_f64(), Some(42.0));
    worker.shutdown();

    // Unary replies to a finished ticket, with the CORS header for the page.
    let request = post(
        &gateway,
        "asyncgate.v1.Gateway/GetTicket",
        "application/json",
        &[],
        json!({"id": id}).to_string(),
    );
    let (parts, body) = exchange(&gateway, request).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["access-control-allow-origin"], APP);
    let ticket: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(ticket["result"]["json"]["doubled"].as_f64(), Some(42.0));
}

#[tokio::test]
async fn binary_unary_calls_carry_protobuf() {
    let gateway = TestGateway::start_with(config()).await;
    let submit = pb::SubmitRequest {
        queue: "binary".into(),
        payload: Some(pb::Payload {
            kind: Some(pb::payload::Kind::Binary(Bytes::from_static(
                b"\x00\x01raw",
            ))),
            content_type: "application/octet-stream".into(),
        }),
        ..Default::default()
    };
    let request = post(
        &gateway,
        "asyncgate.v1.Gateway/Submit",
        "application/proto",
        &[],
        submit.encode_to_vec(),
    );
    let (parts, body) = exchange(&gateway, request).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["content-type"], "application/proto");
    let ticket = pb::Ticket::decode(body).unwrap();
    assert_eq!(ticket.queue, "binary");

    // Binary server streaming: the snapshot, then the end-stream message
    // (a keepalive would come first on a slow stream; the deadline ends it).
    let request = post(
        &gateway,
        "asyncgate.v1.Gateway/WatchTicket",
        "application/connect+proto",
        &[("connect-timeout-ms", "300")],
        envelope(
            0,
            &pb::WatchTicketRequest {
                id: ticket.id.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    );
    let (parts, mut body) = exchange(&gateway, request).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["content-type"], "application/connect+proto");
    let mut end = None;
    let mut events = Vec::new();
    while body.has_remaining() {
        let flags = body.get_u8();
        let len = body.get_u32() as usize;
        let message = body.split_to(len);
        if flags & 2 != 0 {
            end = Some(serde_json::from_slice::<Value>(&message).unwrap());
        } else {
            events.push(pb::TicketEvent::decode(message).unwrap());
        }
    }
    assert_eq!(events[0].ticket.as_ref().unwrap().id, ticket.id);
    assert_eq!(
        end.unwrap()["error"]["code"],
        "deadline_exceeded",
        "connect-timeout-ms ends the stream"
    );
}

#[tokio::test]
async fn errors_are_connect_errors_with_their_http_status() {
    let gateway = TestGateway::start_with(config()).await;
    let submit = "asyncgate.v1.Gateway/Submit";

    // The gateway's own validation, with the field to fix in the details.
    let (status, error) = unary_json(
        &gateway,
        submit,
        &[],
        json!({"queue": "", "payload": {"json": 1}}),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["code"], "invalid_argument");
    assert!(
        error["message"].as_str().unwrap().contains("queue"),
        "{error}"
    );
    assert_eq!(
        error["details"][0]["type"], "google.rpc.BadRequest",
        "{error}"
    );
    assert_eq!(
        error["details"][0]["debug"]["fieldViolations"][0]["field"],
        "queue"
    );

    let (status, error) = unary_json(
        &gateway,
        "asyncgate.v1.Gateway/GetTicket",
        &[],
        json!({"id": uuid::Uuid::now_v7().to_string()}),
    )
    .await;
    assert_eq!((status, error["code"].as_str()), (404, Some("not_found")));

    // Malformed JSON, and a misspelt field: named.
    let request = post(&gateway, submit, "application/json", &[], "{\"queue\": ");
    let (parts, body) = exchange(&gateway, request).await;
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(parts.status, 400, "{error}");
    assert_eq!(error["code"], "invalid_argument");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not a valid asyncgate.v1.SubmitRequest in JSON"),
        "{error}"
    );
    let (status, error) =
        unary_json(&gateway, submit, &[], json!({"queue": "q", "payloadd": {}})).await;
    assert_eq!(status, 400);
    assert!(
        error["message"].as_str().unwrap().contains("payloadd"),
        "{error}"
    );

    // Over the message limit: refused while reading, with the flag to change.
    let big = "x".repeat(gateway.config().max_payload_bytes + 100 * 1024);
    let (status, error) = unary_json(
        &gateway,
        submit,
        &[],
        json!({"queue": "q", "payload": {"json": big}}),
    )
    .await;
    assert_eq!(status, 429, "{error}");
    assert_eq!(error["code"], "resource_exhausted");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("--max-payload-bytes"),
        "{error}"
    );

    // Unknown methods, and the bidi stream Connect does not carry here.
    let (status, error) =
        unary_json(&gateway, "asyncgate.v1.Gateway/Frobnicate", &[], json!({})).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (501, Some("unimplemented"))
    );
    let request = post(
        &gateway,
        "asyncgate.v1.Workers/Connect",
        "application/connect+json",
        &[],
        envelope(0, b"{}"),
    );
    let (parts, body) = exchange(&gateway, request).await;
    assert_eq!(parts.status, 200);
    let end: Value = serde_json::from_slice(&body[5..]).unwrap();
    assert_eq!(end["error"]["code"], "unimplemented", "{end}");
    assert!(
        end["error"]["message"].as_str().unwrap().contains("gRPC"),
        "{end}"
    );

    // Unsupported compression names the supported ones; gzip works.
    let (status, error) =
        unary_json(&gateway, submit, &[("content-encoding", "br")], json!({})).await;
    assert_eq!(status, 501);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("gzip, identity"),
        "{error}"
    );
    let gzipped = {
        use std::io::Write as _;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder
            .write_all(
                json!({"queue": "gz", "payload": {"json": "zipped"}})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap();
        encoder.finish().unwrap()
    };
    let request = post(
        &gateway,
        submit,
        "application/json",
        &[("content-encoding", "gzip")],
        gzipped,
    );
    let (parts, body) = exchange(&gateway, request).await;
    assert_eq!(parts.status, 200, "{body:?}");

    let (status, error) = unary_json(
        &gateway,
        submit,
        &[("connect-protocol-version", "2")],
        json!({}),
    )
    .await;
    assert_eq!(status, 400, "{error}");

    // A stream's error is its end-stream message, after HTTP 200.
    let (messages, end) = Stream::open(
        &gateway,
        "asyncgate.v1.Gateway/WatchTicket",
        &[],
        json!({"id": uuid::Uuid::now_v7().to_string()}),
    )
    .await
    .rest()
    .await;
    assert!(messages.is_empty());
    assert_eq!(end["error"]["code"], "not_found", "{end}");

    // After all that, the gateway still serves, over Connect and gRPC.
    let (status, health) =
        unary_json(&gateway, "grpc.health.v1.Health/Check", &[], json!({})).await;
    assert_eq!((status, &health), (200, &json!({"status": "SERVING"})));
    let ticket = gateway
        .client()
        .await
        .submit(asyncgate_client::Submit::new("after").json(json!(1)))
        .await
        .unwrap();
    assert_eq!(ticket.queue, "after");
}

#[tokio::test]
async fn connect_calls_need_the_api_key_like_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nname = \"page\"\nsha256 = \"{}\"\nrole = \"client\"\ntenant = \"web\"\n",
            asyncgate_server::auth::digest_hex("page-key")
        ),
    )
    .unwrap();
    let gateway = TestGateway::start_with(asyncgate_server::Config {
        keys: Some(keys),
        ..config()
    })
    .await;
    let body = json!({"queue": "keyed", "payload": {"json": true}});
    let submit = "asyncgate.v1.Gateway/Submit";
    let (status, error) = unary_json(&gateway, submit, &[], body.clone()).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    let (status, error) = unary_json(
        &gateway,
        submit,
        &[("authorization", "Bearer wrong-key")],
        body.clone(),
    )
    .await;
    assert_eq!(status, 401, "{error}");
    let (status, ticket) = unary_json(
        &gateway,
        submit,
        &[("authorization", "Bearer page-key")],
        body,
    )
    .await;
    assert_eq!(status, 200, "{ticket}");
    assert_eq!(ticket["queue"], "keyed");
}
