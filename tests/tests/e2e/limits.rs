//! Limits that protect the gateway: watchers per ticket, load shedding,
//! output budgets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::{Layer as _, filter::Targets};

use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{Submit, payload, pb};
use asyncgate_tests::{TestGateway, fast_config, finished};

#[tokio::test]
async fn a_ticket_takes_only_so_many_watchers() {
    let gateway = TestGateway::start_with(asyncgate_server::Config {
        max_watchers_per_ticket: 2,
        ..fast_config()
    })
    .await;
    let client = gateway.client().await;
    let ticket = client.submit(Submit::new("watched").build()).await.unwrap();
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut events = client.watch(&ticket.id, None).await.unwrap();
        assert!(events.next().await.unwrap().is_ok(), "the snapshot arrives");
        open.push(events);
    }
    let refused = client.watch(&ticket.id, None).await.map(drop).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.to_string().contains("GetTicket"), "{refused}");
    drop(open);
}

#[tokio::test]
async fn a_saturated_gateway_sheds_load_with_unavailable() {
    let gateway = TestGateway::start_with(asyncgate_server::Config {
        max_requests_in_progress: 1,
        ..fast_config()
    })
    .await;
    let client = gateway.client().await;
    let ticket = client.submit(Submit::new("busy").build()).await.unwrap();
    // A long-poll holds the one slot until the ticket ends.
    let poll = {
        let client = client.clone();
        let id = ticket.id.clone();
        tokio::spawn(async move { client.get(&id, Some(Duration::from_secs(30))).await })
    };
    let mut shed = None;
    for _ in 0..200 {
        match client.list(pb::ListTicketsRequest::default()).await {
            Err(error) if error.code() == tonic::Code::Unavailable => {
                shed = Some(error);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let shed = shed.expect("a second request is shed while the slot is taken");
    assert!(
        shed.to_string().contains("--max-requests-in-progress"),
        "{shed}"
    );
    // Health checks still answer.
    let channel = asyncgate_client::endpoint(gateway.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1, "SERVING");
    poll.abort();
}

fn idle_config(idle_timeout: Duration) -> asyncgate_server::Config {
    asyncgate_server::Config {
        idle_timeout: Some(idle_timeout),
        // Pings keep flowing on an idle connection; they are not calls.
        keepalive_interval: Duration::from_secs(1),
        ..fast_config()
    }
}

#[tokio::test]
async fn a_connection_without_calls_is_closed_after_the_idle_timeout() {
    let gateway = TestGateway::start_with(idle_config(Duration::from_millis(300))).await;

    // A socket that never even starts HTTP/2.
    let mut silent = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    // The server speaks first (its SETTINGS), then hangs up: well before
    // an unanswered keepalive ping (1s + 10s) would end the connection.
    let mut received = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut silent, &mut received),
    )
    .await
    .expect("the gateway closes a silent connection")
    .ok();

    // An HTTP/2 connection that made a call, then went quiet.
    let tcp = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!(
        "http://{}/grpc.health.v1.Health/Check",
        gateway.addr()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    // An empty HealthCheckRequest: uncompressed, zero bytes long.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut response = response.into_body();
    while let Some(data) = response.data().await {
        data.unwrap();
    }
    let trailers = response.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    drop(client);
    tokio::time::timeout(Duration::from_secs(20), connection)
        .await
        .expect("the gateway closes the idle connection")
        .unwrap()
        .ok();
}

#[tokio::test]
async fn an_open_stream_keeps_its_connection_past_the_idle_timeout() {
    let gateway = TestGateway::start_with(idle_config(Duration::from_millis(200))).await;
    let client = gateway.client().await;
    let ticket = client.submit(Submit::new("later").build()).await.unwrap();
    let mut events = client.watch(&ticket.id, None).await.unwrap();
    assert!(events.next().await.unwrap().is_ok(), "the snapshot arrives");
    // Several idle timeouts pass with only the watch open (time passing is
    // what is tested here; nothing signals it).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let worker = gateway.spawn_worker(
        "later",
        asyncgate_client::worker::handler_fn(
            |task: asyncgate_client::worker::TaskContext| async move { Ok(task.payload().clone()) },
        ),
    );
    let mut last = None;
    while let Some(event) = events.next().await {
        last = event.expect("the watch stream survives").ticket.or(last);
    }
    let last = last.expect("the stream carried the ticket");
    assert_eq!(asyncgate_tests::state(&last), pb::TicketState::Succeeded);
    worker.shutdown();
}

/// The gateway's log lines (level and message) that start with a prefix.
#[derive(Clone, Default)]
struct Logged(Arc<Mutex<Vec<(tracing::Level, String)>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logged {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), message.0));
    }
}

impl Logged {
    fn levels_of(&self, prefix: &str) -> Vec<tracing::Level> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, message)| message.starts_with(prefix))
            .map(|(level, _)| *level)
            .collect()
    }
}

// One thread, so the scoped subscriber sees the gateway's sessions.
#[tokio::test(flavor = "current_thread")]
async fn output_past_the_budget_is_refused_and_logged_once_per_lease() {
    let logged = Logged::default();
    let _scope =
        tracing::subscriber::set_default(
            tracing_subscriber::registry().with(logged.clone().with_filter(
                Targets::new().with_target("asyncgate_server", tracing::Level::DEBUG),
            )),
        );
    let mut config = fast_config();
    config.engine.max_output_bytes_per_ticket = 4096;
    let gateway = TestGateway::start_with(config).await;
    // Six chunks of 1,500 bytes against a 4,096-byte budget: two fit, the
    // other four are refused, and the worker keeps going.
    let worker = gateway.spawn_worker(
        "chatty",
        handler_fn(|task: TaskContext| async move {
            for i in 0..6u8 {
                task.output(payload::binary(vec![i; 1500], "application/octet-stream"))
                    .await;
            }
            Ok(payload::json("done".into()))
        }),
    );
    let client = gateway.client().await;
    let ticket = client.submit(Submit::new("chatty").build()).await.unwrap();
    let done = finished(&client, &ticket.id).await;
    assert_eq!(done.state, pb::TicketState::Succeeded as i32);
    // A graceful stop waits for the result's acknowledgement, which the
    // gateway sends after handling every earlier report of the lease.
    worker.shutdown();
    worker.join().await;

    let mut events = client.watch(&ticket.id, Some(0)).await.unwrap();
    let mut chunks = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        if event.kind == pb::TicketEventKind::Output as i32 {
            chunks.push(event.output.unwrap());
        }
    }
    assert_eq!(chunks.len(), 2, "the chunks within the budget are kept");

    let refusals = logged.levels_of("output refused");
    assert_eq!(
        refusals.len(),
        4,
        "every refused chunk is logged: {refusals:?}"
    );
    assert_eq!(
        refusals
            .iter()
            .filter(|l| **l == tracing::Level::WARN)
            .count(),
        1,
        "only the first at warn level: {refusals:?}"
    );
}
