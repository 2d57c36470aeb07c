//! Worker output under a gateway-wide budget, against the real binary: the
//! attack was eight leases streaming output until the gateway held 595 MiB,
//! still held after the tickets finished. The memory store refuses chunks
//! past `--max-output-bytes`; the durable store holds a ticket's chunks in
//! memory only while it runs, so far more output than the budget is kept —
//! on disk — and replayed from there.

use asyncgate_client::worker::{TaskContext, Worker, handler_fn};
use asyncgate_client::{Client, Submit, payload, pb};
use futures::StreamExt as _;

mod common;
use common::{free_port, start_server, wait_until_serving};

const CHUNK: usize = 1_000_000;
const CHUNKS_PER_TICKET: usize = 20;
const TICKETS: usize = 6;
const BUDGET: u64 = 32 * 1024 * 1024;

/// Runs the tickets through a streaming worker, one at a time; returns the
/// chunks a watcher replays for each once they are all finished, and how
/// much the gateway grew.
async fn stream_output(store: &std::ffi::OsStr) -> (Vec<usize>, u64) {
    let port = free_port();
    let budget = BUDGET.to_string();
    let child = start_server(
        store,
        port,
        &[
            "--max-payload-bytes",
            "1048576",
            "--max-output-bytes",
            &budget,
        ],
    );
    let url = format!("http://127.0.0.1:{port}");
    let client = Client::connect_lazy(url.clone()).unwrap();
    wait_until_serving(&client).await;
    let rss = || common::rss(child.id().unwrap());
    let before = rss();
    let worker = Worker::builder(url)
        .queue("stream")
        .max_in_flight(1)
        .handler(handler_fn(|task: TaskContext| async move {
            for n in 0..CHUNKS_PER_TICKET {
                task.output(payload::binary(
                    vec![n as u8; CHUNK],
                    "application/octet-stream",
                ))
                .await;
            }
            Ok(payload::json(serde_json::json!("done")))
        }))
        .build()
        .unwrap()
        .spawn();
    let mut ids = Vec::new();
    for _ in 0..TICKETS {
        let ticket = client.submit(Submit::new("stream")).await.unwrap();
        ids.push(ticket.id);
    }
    let mut replayed = Vec::new();
    for id in &ids {
        let ticket = common::finished(&client, id).await;
        assert_eq!(ticket.state(), pb::TicketState::Succeeded, "{ticket:?}");
    }
    worker.shutdown();
    for id in &ids {
        let mut events = client.watch(id, Some(0)).await.unwrap();
        let mut chunks = 0;
        while let Some(event) = events.next().await {
            if event.unwrap().kind() == pb::TicketEventKind::Output {
                chunks += 1;
            }
        }
        replayed.push(chunks);
    }
    (replayed, rss().saturating_sub(before))
}

#[tokio::test]
async fn the_memory_store_refuses_output_past_the_gateway_budget() {
    let (replayed, grown) = stream_output("memory".as_ref()).await;
    let kept: usize = replayed.iter().sum();
    let fit = (BUDGET as usize) / (CHUNK + 16);
    assert!(kept <= fit, "kept {kept} chunks; the budget holds {fit}");
    assert!(kept >= fit - 1, "the budget is used: {kept} of {fit}");
    assert!(
        grown < BUDGET + 64 * 1024 * 1024,
        "grew {} MiB for a {} MiB budget",
        grown >> 20,
        BUDGET >> 20
    );
}

#[tokio::test]
async fn the_durable_store_keeps_finished_output_on_disk_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("asyncgate.redb");
    let (replayed, _) = stream_output(store.as_os_str()).await;
    // 120 MB of output under a 32 MiB budget: each ticket's chunks left
    // memory when it finished, and are replayed from disk.
    assert_eq!(replayed, vec![CHUNKS_PER_TICKET; TICKETS]);
}
