//! Attacks on the real `asyncgate-server` binary, each reproduced as a
//! security reviewer ran it: what was sent, the status it got, that the
//! gateway's memory stayed bounded, and that everyone else was still served.

use std::time::Duration;

use asyncgate_client::payload::{self, JsonValue, MAX_JSON_DEPTH};
use asyncgate_client::worker::{TaskContext, Worker, handler_fn};
use asyncgate_client::{Client, CompressionEncoding, Submit, pb};
use tokio::process::Child;

mod common;
use common::{free_port, start_server, tenant_keys, wait_until_serving};

/// A gateway child process and a client of it.
struct Gateway {
    child: Child,
    url: String,
    client: Client,
    /// The key `client` presents, for workers too.
    key: Option<String>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// The binary on `store` (`memory`, or `durable` for a file in a
    /// temporary directory) with `extra` flags.
    async fn start(store: &str, extra: &[&str]) -> Gateway {
        Self::start_as(store, extra, None).await
    }

    /// Like [`Gateway::start`]; the gateway's `client` presents `key`.
    async fn start_as(store: &str, extra: &[&str], key: Option<&str>) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = match store {
            "durable" => dir.path().join("asyncgate.redb").into_os_string(),
            other => other.into(),
        };
        let port = free_port();
        let child = start_server(&store, port, extra);
        let url = format!("http://127.0.0.1:{port}");
        let mut client = Client::connect_lazy(url.clone()).expect("client");
        if let Some(key) = key {
            client = client.with_api_key(key).expect("key");
        }
        wait_until_serving(&client).await;
        Gateway {
            child,
            url,
            client,
            key: key.map(str::to_owned),
            _dir: dir,
        }
    }

    /// The gateway's resident memory, in bytes.
    fn rss(&self) -> u64 {
        common::rss(self.child.id().expect("the gateway runs"))
    }

    /// A worker on `queue` that echoes the request back.
    fn echo_worker(&self, queue: &str) -> asyncgate_client::worker::WorkerHandle {
        let mut builder = Worker::builder(self.url.clone());
        if let Some(key) = &self.key {
            builder = builder.api_key(key).expect("key");
        }
        builder
            .queue(queue)
            .max_in_flight(4)
            .handler(handler_fn(|task: TaskContext| async move {
                Ok(task.payload().clone())
            }))
            .build()
            .expect("worker")
            .spawn()
    }

    /// Waits for a ticket to finish.
    async fn finished(&self, id: &str) -> pb::Ticket {
        common::finished(&self.client, id).await
    }

    /// Proves the gateway still serves everyone: a fresh ticket round trip.
    async fn still_serves(&self, queue: &str) {
        let worker = self.echo_worker(queue);
        let ticket = self
            .client
            .submit(Submit::new(queue).json(serde_json::json!("still here")))
            .await
            .expect("an innocent submit");
        let ticket = self.finished(&ticket.id).await;
        assert_eq!(ticket.state(), pb::TicketState::Succeeded, "{ticket:?}");
        assert_eq!(
            payload::to_json(ticket.result.as_ref().unwrap()),
            Some(serde_json::json!("still here"))
        );
        worker.shutdown();
    }
}

/// About two million empty `google.protobuf.Value`s in one list: a 4 MB
/// body that cost 70–90 MiB decoded, and 4 KiB gzip'd.
fn empty_values_list(count: usize) -> pb::Payload {
    let mut items = Vec::with_capacity(count * 2);
    for _ in 0..count {
        items.extend_from_slice(&[0x0a, 0x00]);
    }
    let mut encoded = vec![0x32]; // field 6 (list_value), length-delimited
    let mut len = items.len() as u64;
    while len >= 0x80 {
        encoded.push((len as u8) | 0x80);
        len >>= 7;
    }
    encoded.push(len as u8);
    encoded.extend_from_slice(&items);
    pb::Payload {
        kind: Some(pb::payload::Kind::Json(JsonValue::from_encoded(encoded))),
        content_type: String::new(),
    }
}

fn nested(depth: usize, objects: bool) -> serde_json::Value {
    let mut value = serde_json::Value::from("leaf");
    for _ in 0..depth {
        value = if objects {
            serde_json::json!({ "k": value })
        } else {
            serde_json::json!([value])
        };
    }
    value
}

/// The field a refusal names in its `BadRequest` details.
fn violation_field(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_details_bad_request()
        .and_then(|bad| bad.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

async fn json_amplification_is_bounded_on(store: &str) {
    let gateway = Gateway::start(store, &[]).await;
    let gzip = gateway
        .client
        .clone()
        .with_compression(CompressionEncoding::Gzip);
    let before = gateway.rss();
    for _ in 0..5 {
        gzip.submit(Submit::new("bomb").payload(empty_values_list(2_000_000)))
            .await
            .expect("a 4 MB JSON body within the limit is accepted");
    }
    let grown = gateway.rss().saturating_sub(before);
    // Five pending tickets of 4 MB each: 20 MB kept, plus receive buffers.
    // Decoded into trees they took 450 MiB.
    assert!(
        grown < 96 * 1024 * 1024,
        "the gateway grew by {} MiB for 20 MB of pending requests",
        grown >> 20
    );
    gateway.still_serves("innocent").await;
}

#[tokio::test]
async fn json_amplification_is_bounded_memory() {
    json_amplification_is_bounded_on("memory").await;
}

#[tokio::test]
async fn json_amplification_is_bounded_durable() {
    json_amplification_is_bounded_on("durable").await;
}

#[tokio::test]
async fn pending_request_bytes_have_one_budget_across_queues() {
    let gateway = Gateway::start(
        "memory",
        &[
            "--max-pending-bytes",
            "10000000",
            "--max-payload-bytes",
            "4194304",
        ],
    )
    .await;
    let body = || payload::binary(vec![7u8; 4_000_000], "application/octet-stream");
    let first = gateway
        .client
        .submit(Submit::new("q1").payload(body()))
        .await
        .expect("within the budget");
    gateway
        .client
        .submit(Submit::new("q2").payload(body()))
        .await
        .expect("within the budget");
    // A third queue (the per-queue cap is far away): the gateway's budget.
    let refused = gateway
        .client
        .submit(Submit::new("q3").payload(body()))
        .await
        .expect_err("past the budget");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(
        refused.to_string().contains("--max-pending-bytes"),
        "{refused}"
    );
    // Small submits still fit, and finishing a ticket gives its bytes back.
    gateway.still_serves("small").await;
    let worker = gateway.echo_worker("q1");
    gateway.finished(&first.id).await;
    worker.shutdown();
    gateway
        .client
        .submit(Submit::new("q3").payload(body()))
        .await
        .expect("the finished ticket's bytes were released");
}

#[tokio::test]
async fn json_nested_past_the_limit_is_refused_at_submit() {
    let gateway = Gateway::start("memory", &[]).await;
    // The attack: 49 lists deep sat a level past decoders' limit inside a
    // Task, and every worker that received it dropped its stream.
    for (depth, objects) in [
        (49, false),
        (MAX_JSON_DEPTH + 1, false),
        (MAX_JSON_DEPTH + 1, true),
    ] {
        let refused = gateway
            .client
            .submit(Submit::new("deep").json(nested(depth, objects)))
            .await
            .expect_err("too deep");
        let ClientErrorStatus(status) = ClientErrorStatus::of(refused);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert_eq!(violation_field(&status), "payload.json");
        assert!(
            status
                .message()
                .contains(&format!("{MAX_JSON_DEPTH} levels")),
            "{status:?}"
        );
    }
    // The deepest accepted value reaches a Rust worker, decodes, and comes
    // back as the result.
    let worker = gateway.echo_worker("deep");
    for objects in [false, true] {
        let deepest = nested(MAX_JSON_DEPTH, objects);
        let ticket = gateway
            .client
            .submit(Submit::new("deep").json(deepest.clone()))
            .await
            .expect("the limit itself is accepted");
        let ticket = gateway.finished(&ticket.id).await;
        assert_eq!(ticket.state(), pb::TicketState::Succeeded, "{ticket:?}");
        assert_eq!(ticket.attempt, 1);
        assert_eq!(
            payload::to_json(ticket.result.as_ref().unwrap()),
            Some(deepest)
        );
    }
    worker.shutdown();
    gateway.still_serves("innocent").await;
}

#[tokio::test]
async fn a_worker_result_nested_too_deep_fails_its_ticket_not_the_session() {
    let gateway = Gateway::start("memory", &[]).await;
    let worker = Worker::builder(gateway.url.clone())
        .queue("deep-results")
        .max_in_flight(1)
        .handler(handler_fn(|task: TaskContext| async move {
            if task.json() == Some(serde_json::json!("deep")) {
                Ok(payload::json(nested(MAX_JSON_DEPTH + 5, false)))
            } else {
                Ok(task.payload().clone())
            }
        }))
        .build()
        .expect("worker")
        .spawn();
    let deep = gateway
        .client
        .submit(Submit::new("deep-results").json(serde_json::json!("deep")))
        .await
        .unwrap();
    let deep = gateway.finished(&deep.id).await;
    assert_eq!(deep.state(), pb::TicketState::Failed, "{deep:?}");
    let error = deep.error.unwrap();
    assert_eq!(error.code, tonic::Code::InvalidArgument as i32);
    assert!(error.message.contains("result.success.json"), "{error:?}");
    // The same worker, on the same stream, serves the next ticket.
    let next = gateway
        .client
        .submit(Submit::new("deep-results").json(serde_json::json!("fine")))
        .await
        .unwrap();
    let next = gateway.finished(&next.id).await;
    assert_eq!(next.state(), pb::TicketState::Succeeded, "{next:?}");
    worker.shutdown();
}

/// The status inside a client error.
struct ClientErrorStatus(tonic::Status);

impl ClientErrorStatus {
    fn of(error: asyncgate_client::ClientError) -> Self {
        match error {
            asyncgate_client::ClientError::Status(status) => Self(status),
            other => panic!("expected a status, got {other}"),
        }
    }
}

/// A worker of `key` on `emails` that reports each payload it receives.
fn recording_worker(
    url: &str,
    key: &str,
) -> (
    asyncgate_client::worker::WorkerHandle,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let (seen, rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = Worker::builder(url.to_owned())
        .api_key(key)
        .expect("key")
        .queue("emails")
        .max_in_flight(4)
        .handler(handler_fn(move |task: TaskContext| {
            let seen = seen.clone();
            async move {
                assert_eq!(task.queue(), "emails", "a task shows the tenant's own name");
                let _ = seen.send(task.json().unwrap_or_default());
                Ok(task.payload().clone())
            }
        }))
        .build()
        .expect("worker")
        .spawn();
    (worker, rx)
}

#[tokio::test]
async fn tenants_own_their_queues() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = tenant_keys(keys_dir.path());
    let keys = keys.to_str().unwrap();
    let gateway = Gateway::start_as("memory", &["--keys", keys], Some("ops-secret")).await;
    let as_key = |key: &str| gateway.client.clone().with_api_key(key).unwrap();
    let (t1, t2, admin) = (
        as_key("t1-app-secret"),
        as_key("t2-app-secret"),
        &gateway.client,
    );

    // Tenant 2 fills its `emails` queue first.
    let mut t2_ids = Vec::new();
    for n in 0..3 {
        let ticket = t2
            .submit(Submit::new("emails").json(serde_json::json!(format!("t2 secret {n}"))))
            .await
            .unwrap();
        t2_ids.push(ticket.id);
    }
    // Tenant 1's ticket on its own `emails` has nothing ahead of it, and
    // its waiting reason says nothing of tenant 2.
    let mine = t1
        .submit(Submit::new("emails").json(serde_json::json!("t1 request")))
        .await
        .unwrap();
    assert_eq!(mine.queue, "emails");
    let reason = mine.waiting_reason.clone().unwrap();
    assert_eq!(reason.tickets_ahead, 0, "{reason:?}");
    assert!(!reason.description.contains("t2"), "{reason:?}");

    // Tenant 1's worker receives tenant 1's ticket and nothing else.
    let (t1_worker, mut t1_seen) = recording_worker(&gateway.url, "t1-worker-secret");
    let done = common::finished(&t1, &mine.id).await;
    assert_eq!(done.state(), pb::TicketState::Succeeded);
    assert_eq!(t1_seen.recv().await, Some(serde_json::json!("t1 request")));
    for id in &t2_ids {
        let ticket = t2.get(id, None).await.unwrap();
        assert_eq!(
            ticket.state(),
            pb::TicketState::Pending,
            "not served by t1's worker"
        );
        assert_eq!(
            ticket.waiting_reason.unwrap().kind(),
            pb::WaitingReasonKind::NoWorkers,
            "t1's worker does not count as serving t2's queue"
        );
    }
    assert!(
        t1_seen.try_recv().is_err(),
        "t1's worker never saw t2's payloads"
    );

    // Lists show each tenant its own tickets by its own names; the admin
    // sees both tenants' queues apart.
    let list = |client: Client, queue: &'static str| async move {
        client
            .list(pb::ListTicketsRequest {
                queue: queue.into(),
                ..Default::default()
            })
            .await
    };
    let t1_list = list(t1.clone(), "emails").await.unwrap().tickets;
    assert_eq!(t1_list.len(), 1);
    assert_eq!(t1_list[0].queue, "emails");
    assert_eq!(list(t2.clone(), "emails").await.unwrap().tickets.len(), 3);
    let all: Vec<String> = list(admin.clone(), "")
        .await
        .unwrap()
        .tickets
        .into_iter()
        .map(|t| t.queue)
        .collect();
    assert_eq!(
        all.iter().filter(|q| *q == "t1/emails").count(),
        1,
        "{all:?}"
    );
    assert_eq!(
        all.iter().filter(|q| *q == "t2/emails").count(),
        3,
        "{all:?}"
    );
    assert_eq!(
        list(admin.clone(), "t2/emails")
            .await
            .unwrap()
            .tickets
            .len(),
        3
    );

    // A tenant cannot name another tenant's queue.
    let refused = t1
        .submit(Submit::new("t2/emails").json(serde_json::json!("sneaky")))
        .await
        .expect_err("no '/' in a tenant's queue names");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    let refused = list(t1.clone(), "t2/emails")
        .await
        .expect_err("nor list it");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // Tenant 2's worker gets exactly tenant 2's tickets.
    let (t2_worker, mut t2_seen) = recording_worker(&gateway.url, "t2-worker-secret");
    for id in &t2_ids {
        assert_eq!(
            common::finished(&t2, id).await.state(),
            pb::TicketState::Succeeded
        );
    }
    let mut payloads = Vec::new();
    while let Ok(value) = t2_seen.try_recv() {
        payloads.push(value);
    }
    payloads.sort_by_key(|v| v.to_string());
    assert_eq!(
        payloads,
        (0..3)
            .map(|n| serde_json::json!(format!("t2 secret {n}")))
            .collect::<Vec<_>>()
    );
    t1_worker.shutdown();
    t2_worker.shutdown();
}

/// Opens a keyless `Health/Watch` stream on `channel`.
async fn health_watch(
    channel: tonic::transport::Channel,
) -> Result<tonic::Streaming<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    Ok(health
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await?
        .into_inner())
}

#[tokio::test]
async fn keyless_health_streams_are_bounded_and_hold_no_connection() {
    const LIMIT: usize = 50;
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = tenant_keys(keys_dir.path());
    let limit = LIMIT.to_string();
    let gateway = Gateway::start_as(
        "memory",
        &[
            "--keys",
            keys.to_str().unwrap(),
            "--max-health-calls",
            &limit,
            "--idle-timeout",
            "1s",
        ],
        Some("ops-secret"),
    )
    .await;
    let before = gateway.rss();
    // The attack: keyless watch streams by the thousand over a few
    // connections (40,000 took 416 MiB). Past the budget: UNAVAILABLE.
    let mut open = Vec::new();
    let mut refused = 0;
    for connection in 0..4 {
        let channel = tonic::transport::Endpoint::from_shared(gateway.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        for _ in 0..(LIMIT / 2) {
            match health_watch(channel.clone()).await {
                Ok(stream) => open.push((connection, stream)),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    assert!(
                        status.message().contains("--max-health-calls"),
                        "{status:?}"
                    );
                    refused += 1;
                }
            }
        }
    }
    assert_eq!(open.len(), LIMIT, "the budget is used up exactly");
    assert_eq!(refused, LIMIT, "every call past it is refused");
    let grown = gateway.rss().saturating_sub(before);
    assert!(grown < 32 << 20, "grew {} MiB", grown >> 20);
    // Keyed callers are not affected.
    gateway.still_serves("keyed").await;
    // Connections that carry only keyless streams are idle: the gateway
    // closes them after --idle-timeout, ending the streams.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        for (_, stream) in &mut open {
            while let Ok(Some(_)) = stream.message().await {}
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "idle connections held by health watches were closed"
    );
    drop(open);
    // Their places are free again.
    let channel = tonic::transport::Endpoint::from_shared(gateway.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    health_watch(channel).await.expect("a place is free again");
}

#[tokio::test]
async fn open_streams_count_against_the_gateway_limit() {
    const LIMIT: usize = 20;
    let limit = LIMIT.to_string();
    let gateway = Gateway::start("memory", &["--max-requests-in-progress", &limit]).await;
    let ticket = gateway
        .client
        .submit(Submit::new("nobody-serves-this"))
        .await
        .unwrap();
    let mut watches = Vec::new();
    for _ in 0..LIMIT {
        watches.push(
            gateway
                .client
                .watch(&ticket.id, None)
                .await
                .expect("a place"),
        );
    }
    // Every place is held by an open watch: the next call of any kind is
    // refused at once.
    let refused = gateway
        .client
        .submit(Submit::new("q"))
        .await
        .expect_err("over the limit");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    assert!(
        refused.to_string().contains("--max-requests-in-progress"),
        "{refused}"
    );
    // A watch that ends gives its place back.
    drop(watches.pop());
    let retried = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match gateway.client.submit(Submit::new("q")).await {
                Ok(ticket) => return ticket,
                Err(error) => assert_eq!(error.code(), tonic::Code::Unavailable),
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(retried.is_ok(), "the place came back");
}

#[tokio::test]
async fn a_trickled_request_body_is_cut_off() {
    let gateway = Gateway::start("memory", &["--request-read-timeout", "1s"]).await;
    let tcp = tokio::net::TcpStream::connect(gateway.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = tonic::codegen::http::Request::post(format!(
        "{}/asyncgate.v1.Gateway/GetTicket",
        gateway.url
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    // A frame that announces 100 bytes, then one byte every 100 ms: the
    // request would take ten seconds to arrive.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 100]), false)
        .unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if body
                .send_data(bytes::Bytes::from_static(b"\x0a"), false)
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = tokio::time::Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(8), async {
        let response = response.await.unwrap();
        if response.headers().contains_key("grpc-status") {
            // Trailers-only: the status came with the headers.
            return Some(response.headers().clone());
        }
        let mut body = response.into_body();
        while let Some(data) = body.data().await {
            if data.is_err() {
                break;
            }
        }
        body.trailers().await.ok().flatten()
    })
    .await
    .expect("the gateway ends the call before the body could arrive");
    let trailers = response.expect("a status");
    assert_eq!(trailers.get("grpc-status").unwrap(), "4", "{trailers:?}");
    let message = trailers.get("grpc-message").unwrap().to_str().unwrap();
    assert!(message.contains("request-read-timeout"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(8));
    trickle.abort();
    gateway.still_serves("after-trickle").await;
}

/// A worker speaking the raw protocol on `emails` with `key`, so the test
/// sees the lease ids the gateway hands out and can forge reports.
struct RawWorker {
    tx: tokio::sync::mpsc::Sender<pb::WorkerMessage>,
    inbound: tonic::Streaming<pb::DispatchMessage>,
}

impl RawWorker {
    async fn connect(url: &str, key: &str) -> RawWorker {
        use pb::worker_message::Kind as In;
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(pb::WorkerMessage {
            kind: Some(In::Hello(pb::Hello {
                worker_name: key.into(),
                queues: vec!["emails".into()],
                max_in_flight: 1,
                batches: false,
            })),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        let inbound = pb::workers_client::WorkersClient::new(channel)
            .connect(request)
            .await
            .expect("Connect opens")
            .into_inner();
        let mut worker = RawWorker { tx, inbound };
        match worker.next().await {
            pb::dispatch_message::Kind::Welcome(_) => worker,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// The next message other than a ping (pings are answered).
    async fn next(&mut self) -> pb::dispatch_message::Kind {
        use pb::dispatch_message::Kind as Out;
        let next = async {
            loop {
                let message = self.inbound.message().await.expect("the stream goes on");
                match message.and_then(|m| m.kind).expect("a message") {
                    Out::Ping(ping) => {
                        let _ = self
                            .tx
                            .send(pb::WorkerMessage {
                                kind: Some(pb::worker_message::Kind::Heartbeat(pb::Heartbeat {
                                    nonce: ping.nonce,
                                })),
                                ..Default::default()
                            })
                            .await;
                    }
                    other => return other,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), next)
            .await
            .expect("the gateway sends more than pings within 30 s")
    }

    async fn send(&self, kind: pb::worker_message::Kind) {
        self.tx
            .send(pb::WorkerMessage {
                kind: Some(kind),
                ..Default::default()
            })
            .await
            .expect("the stream is open");
    }

    async fn result(&self, ticket_id: &str, lease_id: &str, text: &str) {
        self.send(pb::worker_message::Kind::Result(pb::TaskResult {
            ticket_id: ticket_id.into(),
            lease_id: lease_id.into(),
            outcome: Some(pb::task_result::Outcome::Success(payload::json(
                text.into(),
            ))),
        }))
        .await;
    }

    async fn ack(&mut self) -> pb::ResultAck {
        match self.next().await {
            pb::dispatch_message::Kind::ResultAck(ack) => ack,
            other => panic!("expected a ResultAck, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn only_the_session_holding_a_lease_reports_on_it() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = tenant_keys(keys_dir.path());
    let gateway = Gateway::start_as(
        "memory",
        &["--keys", keys.to_str().unwrap()],
        Some("t1-app-secret"),
    )
    .await;
    let ticket = gateway
        .client
        .submit(Submit::new("emails").json(serde_json::json!("t1's request")))
        .await
        .unwrap();
    // Worker A (tenant 1) holds the ticket; the test sees its lease id, as
    // a worker of tenant 2 might learn it (a log, a shared trace).
    let mut owner = RawWorker::connect(&gateway.url, "t1-worker-secret").await;
    let task = match owner.next().await {
        pb::dispatch_message::Kind::Task(task) => task,
        other => panic!("expected a Task, got {other:?}"),
    };
    assert_eq!(task.ticket_id, ticket.id);

    // Worker B (tenant 2, which may not serve tenant 1's queue) forges a
    // progress report and a result with A's ticket and lease ids.
    let mut forger = RawWorker::connect(&gateway.url, "t2-worker-secret").await;
    forger
        .send(pb::worker_message::Kind::Progress(pb::TaskProgress {
            ticket_id: task.ticket_id.clone(),
            lease_id: task.lease_id.clone(),
            percent: 99,
            message: "forged progress".into(),
            output: Some(payload::json("forged output".into())),
        }))
        .await;
    forger
        .result(&task.ticket_id, &task.lease_id, "forged result")
        .await;
    // The session answers in order: the progress was dealt with before this.
    let refused = forger.ack().await;
    assert_eq!(
        refused.code,
        tonic::Code::FailedPrecondition as i32,
        "{refused:?}"
    );
    assert!(
        refused.message.contains("does not hold lease"),
        "{refused:?}"
    );
    // The ticket was not touched: still running under A, no progress.
    let untouched = gateway.client.get(&ticket.id, None).await.unwrap();
    assert_eq!(untouched.state(), pb::TicketState::Running, "{untouched:?}");
    assert!(
        untouched
            .progress
            .as_ref()
            .is_none_or(|p| p.percent == 0 && p.message.is_empty()),
        "{untouched:?}"
    );

    // A's result is the one recorded.
    owner
        .result(&task.ticket_id, &task.lease_id, "A's result")
        .await;
    assert_eq!(owner.ack().await.code, tonic::Code::Ok as i32);
    let done = gateway.finished(&ticket.id).await;
    assert_eq!(done.state(), pb::TicketState::Succeeded, "{done:?}");
    assert_eq!(
        payload::to_json(done.result.as_ref().unwrap()),
        Some(serde_json::json!("A's result"))
    );
    // The forger's stream is still usable (a refusal, not an error), and a
    // repeat of A's own result on A's session is a duplicate, as before.
    forger
        .result(&task.ticket_id, &task.lease_id, "forged again")
        .await;
    assert_eq!(
        forger.ack().await.code,
        tonic::Code::FailedPrecondition as i32
    );
    owner
        .result(&task.ticket_id, &task.lease_id, "A's result")
        .await;
    assert_eq!(owner.ack().await.code, tonic::Code::AlreadyExists as i32);
}
