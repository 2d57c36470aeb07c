//! Completion callbacks against real gateways: an HTTP receiver that checks
//! the Standard Webhooks signatures with its own HMAC gets the terminal
//! ticket in the proto3 JSON mapping, again after a 503 with the same
//! `webhook-id`; a gRPC receiver gets `Callbacks.TicketFinished`; the
//! ticket shows its delivery; a delivery given up is listed and sent again
//! by Admin.RetryCallback; three replicas on one Redis deliver each
//! callback once; and a destination off the allowlist — or a name
//! that leads to a private address not listed — is refused.

use std::time::Duration;

use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{Client, Submit, pb};
use asyncgate_server::callbacks::{CallbackSettings, parse_allowed, parse_secret};
use asyncgate_tests::webhooks::WebhookReceiver;
use asyncgate_tests::{TestGateway, fast_config, finished, json};
use tokio::sync::mpsc;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEXT_SECRET: &str = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=";

fn callbacks(allow: &[&str]) -> CallbackSettings {
    CallbackSettings {
        allow: allow.iter().map(|a| parse_allowed(a).unwrap()).collect(),
        allow_http: true,
        secrets: [SECRET, NEXT_SECRET]
            .iter()
            .map(|s| parse_secret(s).unwrap())
            .collect(),
        ..CallbackSettings::default()
    }
}

async fn gateway(allow: &[&str]) -> TestGateway {
    let mut config = fast_config();
    config.callbacks = callbacks(allow);
    TestGateway::start_with(config).await
}

/// Reads the ticket until its callback is settled or has made `attempts`.
async fn callback_after(client: &Client, id: &str, attempts: u32) -> pb::CallbackDelivery {
    for _ in 0..500 {
        let ticket = client.get(id, None).await.unwrap();
        let callback = ticket.callback.expect("the ticket has its callback");
        if callback.attempts >= attempts {
            return callback;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the callback of {id} never made {attempts} attempts");
}

#[tokio::test]
async fn an_http_callback_is_signed_retried_with_the_same_id_and_shown_on_the_ticket() {
    let receiver = WebhookReceiver::start(&[SECRET, NEXT_SECRET]).await;
    receiver.fail_next(1);
    let gateway = gateway(&["127.0.0.1"]).await;
    let worker = gateway.spawn_worker(
        "orders",
        handler_fn(|task: TaskContext| async move { Ok(task.payload().clone()) }),
    );
    let client = gateway.client().await;
    let ticket = client
        .submit(
            Submit::new("orders")
                .payload(json(serde_json::json!({"order": 42})))
                .callback(receiver.url("/hooks/done")),
        )
        .await
        .unwrap();
    assert_eq!(
        ticket.callback.as_ref().map(|c| c.state),
        Some(pb::CallbackState::Waiting as i32)
    );
    let done = finished(&client, &ticket.id).await;
    let seen = receiver
        .wait_until(|d| d.iter().any(|d| d.status == 200))
        .await;
    assert_eq!(seen.len(), 2, "one 503, then the delivery: {seen:#?}");
    let webhook_id = format!("{}.{}", ticket.id, done.seq);
    for delivery in &seen {
        assert_eq!(
            delivery.webhook_id, webhook_id,
            "the same id on every attempt"
        );
        assert_eq!(delivery.signed_by, [0, 1], "signed with both secrets");
        assert_eq!(delivery.content_type, "application/json");
        assert_eq!(delivery.body["id"], ticket.id.as_str());
        assert_eq!(delivery.body["state"], "TICKET_STATE_SUCCEEDED");
        assert_eq!(
            delivery.body["result"]["json"]["order"].as_f64(),
            Some(42.0)
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - seen[1].timestamp).abs() < 60, "a current timestamp");

    let callback = callback_after(&client, &ticket.id, 2).await;
    assert_eq!(callback.state, pb::CallbackState::Delivered as i32);
    assert_eq!(callback.webhook_id, webhook_id);
    assert!(callback.last_error.contains("503"), "{callback:?}");
    assert!(callback.delivered_at.is_some());
    worker.shutdown();
}

struct GrpcReceiver(mpsc::UnboundedSender<(pb::Ticket, String)>);

#[tonic::async_trait]
impl pb::callbacks_server::Callbacks for GrpcReceiver {
    async fn ticket_finished(
        &self,
        request: tonic::Request<pb::Ticket>,
    ) -> Result<tonic::Response<pb::TicketFinishedResponse>, tonic::Status> {
        let id = request
            .metadata()
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let _ = self.0.send((request.into_inner(), id));
        Ok(tonic::Response::new(pb::TicketFinishedResponse {}))
    }
}

#[tokio::test]
async fn a_grpc_callback_gets_the_terminal_ticket() {
    let (sent, mut received) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::callbacks_server::CallbacksServer::new(GrpcReceiver(
                sent,
            )))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let gateway = gateway(&["127.0.0.1"]).await;
    let client = gateway.client().await;
    // No worker: the ticket ends by a cancel.
    let ticket = client
        .submit(
            Submit::new("nobody")
                .payload(json(serde_json::json!("x")))
                .callback(format!("grpc://{addr}")),
        )
        .await
        .unwrap();
    let cancelled = client.cancel(&ticket.id, "changed my mind").await.unwrap();
    let (delivered, webhook_id) = tokio::time::timeout(Duration::from_secs(20), received.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivered.id, ticket.id);
    assert_eq!(delivered.state, pb::TicketState::Cancelled as i32);
    assert!(delivered.error.unwrap().message.contains("changed my mind"));
    assert_eq!(webhook_id, format!("{}.{}", ticket.id, cancelled.seq));
    let callback = callback_after(&client, &ticket.id, 1).await;
    assert_eq!(callback.state, pb::CallbackState::Delivered as i32);
}

#[tokio::test]
async fn callbacks_go_only_where_the_gateway_allows() {
    let receiver = WebhookReceiver::start(&[SECRET]).await;
    // Without an allowlist, callbacks are off.
    let closed = TestGateway::start().await;
    let client = closed.client().await;
    let refused = client
        .submit(Submit::new("q").callback(receiver.url("/x")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.to_string().contains("--callback-allow"),
        "{refused}"
    );

    // A list of names, not the loopback network.
    let gateway = gateway(&["hooks.example.com", "localhost"]).await;
    let client = gateway.client().await;
    for (url, code, needle) in [
        (
            "https://evil.example.com/x",
            tonic::Code::FailedPrecondition,
            "not in",
        ),
        (
            "http://127.0.0.1:9/x",
            tonic::Code::FailedPrecondition,
            "not in",
        ),
        (
            "ftp://hooks.example.com/x",
            tonic::Code::InvalidArgument,
            "callback",
        ),
        (
            "https://user:pw@hooks.example.com/x",
            tonic::Code::InvalidArgument,
            "credentials",
        ),
    ] {
        let refused = client
            .submit(Submit::new("q").callback(url))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "{url}: {refused}");
        assert!(refused.to_string().contains(needle), "{url}: {refused}");
    }
    // `localhost` is listed by name, but it leads to a loopback address the
    // list does not hold: the delivery is refused, the receiver never hit.
    let port = receiver.url("").rsplit(':').next().unwrap().to_owned();
    let ticket = client
        .submit(Submit::new("q").callback(format!("http://localhost:{port}/x")))
        .await
        .unwrap();
    client.cancel(&ticket.id, "").await.unwrap();
    let callback = callback_after(&client, &ticket.id, 1).await;
    assert!(
        callback.last_error.contains("may not reach"),
        "{callback:?}"
    );
    assert!(receiver.deliveries().is_empty(), "no request reached it");
    // The same for a gRPC receiver (resolved at each connect).
    let ticket = client
        .submit(Submit::new("q").callback(format!("grpc://localhost:{port}")))
        .await
        .unwrap();
    client.cancel(&ticket.id, "").await.unwrap();
    let callback = callback_after(&client, &ticket.id, 1).await;
    assert!(
        callback
            .last_error
            .starts_with("could not reach the receiver")
            && callback.last_error.contains("may not reach"),
        "{callback:?}"
    );
    assert!(receiver.deliveries().is_empty(), "no request reached it");
}

#[tokio::test]
async fn a_given_up_callback_is_listed_and_sent_again_by_the_admin() {
    let receiver = WebhookReceiver::start(&[SECRET]).await;
    // 410 Gone: the receiver wants no more; the delivery gives up at once.
    receiver.answer_next(1, 410);
    let gateway = gateway(&["127.0.0.1"]).await;
    let client = gateway.client().await;
    let ticket = client
        .submit(Submit::new("nobody").callback(receiver.url("/gone")))
        .await
        .unwrap();
    let plain = client.submit(Submit::new("nobody")).await.unwrap();
    client.cancel(&ticket.id, "").await.unwrap();
    client.cancel(&plain.id, "").await.unwrap();
    let callback = callback_after(&client, &ticket.id, 1).await;
    assert_eq!(
        callback.state,
        pb::CallbackState::GaveUp as i32,
        "{callback:?}"
    );
    assert!(callback.last_error.contains("410"), "{callback:?}");

    let given_up = client
        .list(pb::ListTicketsRequest {
            callback_states: vec![pb::CallbackState::GaveUp as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .tickets;
    assert_eq!(
        given_up.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        [ticket.id.as_str()],
        "only the given-up delivery"
    );

    let retried = client.admin().retry_callback(&ticket.id).await.unwrap();
    assert_eq!(
        retried.callback.map(|c| c.state),
        Some(pb::CallbackState::Pending as i32)
    );
    let seen = receiver
        .wait_until(|d| d.iter().any(|d| d.status == 200))
        .await;
    assert_eq!(seen[0].webhook_id, seen[1].webhook_id, "the same delivery");
    let callback = callback_after(&client, &ticket.id, 2).await;
    assert_eq!(callback.state, pb::CallbackState::Delivered as i32);
    // Only a given-up delivery is sent again.
    for id in [&ticket.id, &plain.id] {
        let refused = client.admin().retry_callback(id).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    }
    // Bad input names its field.
    let refused = client
        .admin()
        .retry_callback("not-a-ticket")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(refused.to_string().contains("id"), "{refused}");
    let refused = client
        .list(pb::ListTicketsRequest {
            callback_states: vec![99],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(
        refused.to_string().contains("callback_states[0]"),
        "{refused}"
    );
}

#[tokio::test]
async fn three_replicas_on_one_redis_deliver_each_callback_once() {
    let redis = asyncgate_server::testing::RedisServer::start().expect("redis-server starts");
    let receiver = WebhookReceiver::start(&[SECRET]).await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let mut config = TestGateway::redis_config(&redis.url());
        config.callbacks = callbacks(&["127.0.0.1"]);
        replicas.push(TestGateway::start_with(config).await);
    }
    let mut clients = Vec::new();
    for replica in &replicas {
        clients.push(replica.client().await);
    }
    const TICKETS: usize = 60;
    let mut ids = Vec::new();
    for n in 0..TICKETS {
        let client = &clients[n % 3];
        let ticket = client
            .submit(Submit::new("shared").callback(receiver.url("/done")))
            .await
            .unwrap();
        // Ended on another replica than the one that stored it.
        let ended = clients[(n + 1) % 3].cancel(&ticket.id, "").await.unwrap();
        ids.push((ticket.id, format!("{}.{}", ended.id, ended.seq)));
    }
    receiver
        .wait_until(|d| {
            ids.iter()
                .all(|(_, w)| d.iter().any(|d| d.webhook_id == *w))
        })
        .await;
    for (id, _) in &ids {
        let callback = callback_after(&clients[0], id, 1).await;
        assert_eq!(
            callback.state,
            pb::CallbackState::Delivered as i32,
            "{callback:?}"
        );
    }
    let seen = receiver.deliveries();
    assert_eq!(seen.len(), TICKETS, "each delivered once, by one replica");
    assert!(seen.iter().all(|d| d.status == 200 && d.signed_by == [0]));
}
