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
