//! Limits that protect the gateway: watchers per ticket, load shedding.

use std::time::Duration;

use futures::StreamExt;

use asyncgate_client::{Submit, pb};
use asyncgate_tests::{TestGateway, fast_config};

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
    assert!(shed.to_string().contains("requests in progress"), "{shed}");
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
