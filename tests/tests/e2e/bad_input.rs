//! Bad input gets a precise status naming what to fix.

use std::time::Duration;

use asyncgate_client::Submit;
use asyncgate_client::pb;
use asyncgate_server::config::Config;
use asyncgate_tests::{TestGateway, fast_config, json};
use tonic::Code;

async fn submit_error(gateway: &TestGateway, request: pb::SubmitRequest) -> (Code, String) {
    let error = gateway.client().await.submit(request).await.unwrap_err();
    (error.code(), error.to_string())
}

#[tokio::test]
async fn malformed_submits_name_the_field() {
    let config = Config {
        max_payload_bytes: 1024,
        ..fast_config()
    };
    let gateway = TestGateway::start_with(config).await;
    let cases: Vec<(pb::SubmitRequest, Code, &str)> = vec![
        (
            Submit::new("").build(),
            Code::InvalidArgument,
            "queue name is empty",
        ),
        (
            Submit::new("has space").build(),
            Code::InvalidArgument,
            "contains ' '",
        ),
        (
            Submit::new("q").priority(1001).build(),
            Code::InvalidArgument,
            "invalid priority",
        ),
        (
            Submit::new("q").max_attempts(1000).build(),
            Code::InvalidArgument,
            "invalid max_attempts",
        ),
        // Over a size limit: RESOURCE_EXHAUSTED naming the limit and its flag.
        (
            Submit::new("q")
                .binary(vec![0u8; 4096], "application/octet-stream")
                .build(),
            Code::ResourceExhausted,
            "limit is 1024 bytes (--max-payload-bytes)",
        ),
        (
            Submit::new("q").timeout(Duration::ZERO).build(),
            Code::InvalidArgument,
            "invalid timeout",
        ),
        // Delayed submits: one of the two, within a year, not negative.
        (
            pb::SubmitRequest {
                delay: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                not_before: Some(prost_types::Timestamp {
                    seconds: 2_000_000_000,
                    nanos: 0,
                }),
                ..Submit::new("q").build()
            },
            Code::InvalidArgument,
            "invalid delay: set either not_before (a time) or delay (a duration from now), not both",
        ),
        (
            Submit::new("q")
                .delay(Duration::from_secs(400 * 86_400))
                .build(),
            Code::InvalidArgument,
            "invalid delay",
        ),
        (
            pb::SubmitRequest {
                delay: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..Submit::new("q").build()
            },
            Code::InvalidArgument,
            "invalid delay: must not be negative",
        ),
        (
            Submit::new("q")
                .not_before(std::time::SystemTime::now() + Duration::from_secs(400 * 86_400))
                .build(),
            Code::InvalidArgument,
            "invalid not_before: is more than 365 days ahead",
        ),
        (
            pb::SubmitRequest {
                not_before: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: -5,
                }),
                ..Submit::new("q").build()
            },
            Code::InvalidArgument,
            "invalid not_before: is not a valid timestamp",
        ),
    ];
    for (request, expected, needle) in cases {
        let (code, message) = submit_error(&gateway, request).await;
        assert_eq!(code, expected, "{message}");
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let error = client.get("not-a-uuid", None).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.to_string().contains("must be a UUID"), "{error}");
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        client.get(&unknown, None).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        client.cancel(&unknown, "").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        client.watch(&unknown, None).await.unwrap_err().code(),
        Code::NotFound
    );
    let bad_page = client
        .list(pb::ListTicketsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_page.code(), Code::InvalidArgument);
    let bad_state = client
        .list(pb::ListTicketsRequest {
            states: vec![42],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_state.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_full_queue_says_resource_exhausted() {
    let mut config = fast_config();
    config.engine.max_pending_per_queue = 3;
    let gateway = TestGateway::start_with(config).await;
    let client = gateway.client().await;
    for _ in 0..3 {
        client.submit(Submit::new("tiny").build()).await.unwrap();
    }
    let error = client
        .submit(Submit::new("tiny").build())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert!(error.to_string().contains("limit"), "{error}");
    // Other queues are unaffected.
    client
        .submit(Submit::new("roomy").payload(json(1.into())).build())
        .await
        .unwrap();
}
