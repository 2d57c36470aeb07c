//! ListTickets' filters through the SDK, on a memory gateway and on one
//! over Redis: metadata entries, creation-time bounds, newest first, and
//! page tokens that continue only the order they came from.

use tonic::Code;

use asyncgate_client::{Client, Submit, pb};
use asyncgate_server::testing::RedisServer;
use asyncgate_tests::TestGateway;

/// The ids of every page of `request`, followed token by token.
async fn every_page(client: &Client, mut request: pb::ListTicketsRequest) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..50 {
        let page = client.list(request.clone()).await.unwrap();
        assert!(page.tickets.len() <= request.page_size as usize);
        seen.extend(page.tickets.into_iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            return seen;
        }
        request.page_token = page.next_page_token;
    }
    panic!("the listing never ended: {seen:?}");
}

/// The message of a refused list call, checked to be INVALID_ARGUMENT.
async fn refused(client: &Client, request: pb::ListTicketsRequest) -> String {
    let error = client.list(request).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error}");
    error.to_string()
}

async fn filters_and_newest_first_pages(gateway: &TestGateway) {
    let client = gateway.client().await;
    let mut tickets = Vec::new();
    for i in 0..6 {
        let team = if i % 3 == 2 { "y" } else { "x" };
        let request = Submit::new("listed")
            .metadata("team", team)
            .metadata("n", i.to_string())
            .build();
        tickets.push(client.submit(request).await.unwrap());
    }
    let elsewhere = Submit::new("elsewhere").metadata("team", "x").build();
    client.submit(elsewhere).await.unwrap();
    let ids = |indexes: &[usize]| -> Vec<String> {
        indexes.iter().map(|&i| tickets[i].id.clone()).collect()
    };
    let listed = pb::ListTicketsRequest {
        queue: "listed".into(),
        page_size: 2,
        ..Default::default()
    };

    let team_x = pb::ListTicketsRequest {
        metadata: [("team".to_owned(), "x".to_owned())].into(),
        newest_first: true,
        ..listed.clone()
    };
    assert_eq!(every_page(&client, team_x).await, ids(&[4, 3, 1, 0]));
    let both = pb::ListTicketsRequest {
        metadata: [
            ("team".to_owned(), "x".to_owned()),
            ("n".to_owned(), "3".to_owned()),
        ]
        .into(),
        ..listed.clone()
    };
    assert_eq!(every_page(&client, both).await, ids(&[3]));

    let window = pb::ListTicketsRequest {
        created_after: tickets[1].created_at,
        created_before: tickets[4].created_at,
        newest_first: true,
        ..listed.clone()
    };
    assert_eq!(every_page(&client, window).await, ids(&[3, 2, 1]));
    let oldest = every_page(&client, listed.clone()).await;
    assert_eq!(oldest, ids(&[0, 1, 2, 3, 4, 5]));

    // A token continues only the order it came from.
    let newest = pb::ListTicketsRequest {
        newest_first: true,
        ..listed.clone()
    };
    let first = client.list(newest.clone()).await.unwrap();
    assert_eq!(first.tickets[0].id, tickets[5].id);
    let message = refused(
        &client,
        pb::ListTicketsRequest {
            page_token: first.next_page_token.clone(),
            ..listed.clone()
        },
    )
    .await;
    assert!(message.contains("page_token"), "{message}");
    assert!(message.contains("newest_first = true"), "{message}");
    let oldest_first = client.list(listed.clone()).await.unwrap();
    let message = refused(
        &client,
        pb::ListTicketsRequest {
            page_token: oldest_first.next_page_token,
            ..newest
        },
    )
    .await;
    assert!(message.contains("page_token"), "{message}");

    // Bad filters name their field.
    let message = refused(
        &client,
        pb::ListTicketsRequest {
            created_after: tickets[4].created_at,
            created_before: tickets[1].created_at,
            ..listed.clone()
        },
    )
    .await;
    assert!(message.contains("created_after"), "{message}");
    let message = refused(
        &client,
        pb::ListTicketsRequest {
            metadata: (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
            ..listed
        },
    )
    .await;
    assert!(
        message.contains("metadata") && message.contains("16"),
        "{message}"
    );
}

#[tokio::test]
async fn list_filters_and_orders_on_a_memory_gateway() {
    let gateway = TestGateway::start().await;
    filters_and_newest_first_pages(&gateway).await;
}

#[tokio::test]
async fn list_filters_and_orders_on_a_redis_gateway() {
    let redis = RedisServer::start().expect("redis-server starts");
    let gateway = TestGateway::start_with(TestGateway::redis_config(&redis.url())).await;
    filters_and_newest_first_pages(&gateway).await;
}
