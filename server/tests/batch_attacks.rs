//! `SubmitBatch` as a hostile client sends it, against the real
//! `asyncgate-server` binary (as `attacks.rs` does): what it got, that the
//! gateway's memory stayed bounded, and that everyone else was still served.

use asyncgate_client::{Client, SUBMIT_BATCH_LIMIT, Submit, pb};
use tokio::process::Child;

mod common;
use common::{free_port, start_server, wait_until_serving};

/// A gateway child process on the memory store with `extra` flags.
async fn gateway(extra: &[&str]) -> (Child, Client) {
    let port = free_port();
    let child = start_server("memory", port, extra);
    let client = Client::connect_lazy(format!("http://127.0.0.1:{port}")).expect("client");
    wait_until_serving(&client).await;
    (child, client)
}

fn rss(child: &Child) -> u64 {
    common::rss(child.id().expect("the gateway runs"))
}

/// A binary payload whose encoded size is exactly `size` (under 16 KiB).
fn payload_of(size: usize) -> pb::Payload {
    // Tag, a two-byte length, the bytes.
    let payload = asyncgate_client::payload::binary(vec![9u8; size - 3], "");
    assert_eq!(prost::Message::encoded_len(&payload), size);
    payload
}

async fn pending(client: &Client, queue: &str) -> u64 {
    client
        .admin()
        .get_queue(queue)
        .await
        .ok()
        .and_then(|info| info.counts)
        .map_or(0, |counts| counts.pending)
}

/// 1,000 items each at the payload limit: 16 MB in one call to a gateway
/// whose message limit is 16 KiB plus 64 KiB. Refused whole, by the
/// decoder, before the body is read: RESOURCE_EXHAUSTED naming the limit,
/// nothing stored, no memory kept, and the next caller is served.
#[tokio::test]
async fn a_thousand_items_at_the_payload_limit_are_refused_by_the_message_limit() {
    let (child, client) = gateway(&["--max-payload-bytes", "16384"]).await;
    let flood = || {
        (0..SUBMIT_BATCH_LIMIT)
            .map(|_| Submit::new("flood").payload(payload_of(16384)))
            .collect::<Vec<_>>()
    };
    let before = rss(&child);
    for _ in 0..4 {
        let calls = (0..4).map(|_| {
            let client = client.clone();
            let batch = flood();
            async move { client.submit_batch(batch).await }
        });
        for refused in futures::future::join_all(calls).await {
            let error = refused.expect_err("over the message limit");
            assert_eq!(error.code(), tonic::Code::ResourceExhausted, "{error}");
            assert!(error.to_string().contains("--max-payload-bytes"), "{error}");
        }
    }
    let grown = rss(&child).saturating_sub(before);
    // 16 calls of 16 MB each were sent; none was buffered.
    assert!(
        grown < 32 * 1024 * 1024,
        "the gateway grew by {} MiB",
        grown >> 20
    );
    assert_eq!(pending(&client, "flood").await, 0, "nothing was stored");
    // The same items in batches that fit are stored, each at the limit.
    let fits = (0..4).map(|_| Submit::new("flood").payload(payload_of(16384)));
    let answers = client.submit_batch(fits).await.expect("within the limit");
    assert!(answers.iter().all(Result::is_ok));
    assert_eq!(pending(&client, "flood").await, 4);
}

/// The largest batches the default limits take (1,000 requests of 4 KiB,
/// about 4.1 MB a call), ten of them: each is stored, and the gateway
/// holds what it stored (41 MB of bodies) plus bookkeeping, not a copy of
/// every call's receive buffer.
#[tokio::test]
async fn the_largest_batches_that_fit_cost_what_they_store() {
    let (child, client) = gateway(&[]).await;
    let before = rss(&child);
    for round in 0..10 {
        let batch = (0..SUBMIT_BATCH_LIMIT).map(|_| Submit::new("full").payload(payload_of(4096)));
        let answers = client
            .submit_batch(batch)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(answers.iter().all(Result::is_ok), "round {round}");
    }
    let stored = 10 * SUBMIT_BATCH_LIMIT as u64 * 4096;
    let grown = rss(&child).saturating_sub(before);
    assert!(
        grown < stored + 64 * 1024 * 1024,
        "the gateway grew by {} MiB for {} MiB of bodies",
        grown >> 20,
        stored >> 20
    );
    assert_eq!(pending(&client, "full").await, 10_000);
}
