//! gRPC message compression: clients and workers that ask for gzip or zstd
//! get it both ways; callers that do not are unaffected.

use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{CompressionEncoding, Submit, payload, pb};
use asyncgate_tests::{TestGateway, state};
use futures::StreamExt as _;

/// A 64 KiB JSON-like document: compressible, like typical API data.
fn document() -> bytes::Bytes {
    let record = r#"{"order_id":123456,"customer":"customer-42","status":"shipped"},"#;
    bytes::Bytes::from(record.repeat(64 * 1024 / record.len()))
}

#[tokio::test]
async fn compressed_clients_and_workers_round_trip_large_payloads() {
    let gateway = TestGateway::start().await;
    let worker = gateway
        .worker("zipped")
        .compression(CompressionEncoding::Zstd)
        .handler(handler_fn(|task: TaskContext| async move {
            Ok(task.payload().clone())
        }))
        .build()
        .unwrap()
        .spawn();
    let body = document();
    for (encoding, queue) in [
        (Some(CompressionEncoding::Gzip), "zipped"),
        (Some(CompressionEncoding::Zstd), "zipped"),
        (None, "zipped"),
    ] {
        let client = gateway.client().await;
        let client = match encoding {
            Some(encoding) => client.with_compression(encoding),
            None => client,
        };
        let request = Submit::new(queue)
            .payload(payload::binary(body.clone(), "application/json"))
            .build();
        let mut events = client.execute(request).await.unwrap();
        let mut last = None;
        while let Some(event) = events.next().await {
            last = event.unwrap().ticket.or(last);
        }
        let ticket = last.expect("the stream carried the ticket");
        assert_eq!(state(&ticket), pb::TicketState::Succeeded, "{encoding:?}");
        assert_eq!(
            ticket.result,
            Some(payload::binary(body.clone(), "application/json")),
            "{encoding:?}"
        );
    }
    worker.shutdown();
}
