//! Watchers: fan-out, resume without gaps, keepalives.

use std::time::Duration;

use futures::StreamExt;

use asyncgate_client::pb;
use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{Submit, payload};
use asyncgate_tests::{TestGateway, json, state};

#[tokio::test]
async fn a_hundred_watchers_all_see_the_terminal_event() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let worker = gateway
        .worker("fanout")
        .handler(handler_fn(move |task: TaskContext| {
            let mut release = release_rx.clone();
            async move {
                task.progress(50, "half way").await;
                release.wait_for(|r| *r).await.unwrap();
                Ok(payload::json("done".into()))
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let ticket = client.submit(Submit::new("fanout").build()).await.unwrap();
    let mut watchers = Vec::new();
    let (subscribed_tx, mut subscribed_rx) = tokio::sync::mpsc::channel(100);
    for _ in 0..100 {
        let client = client.clone();
        let id = ticket.id.clone();
        let subscribed = subscribed_tx.clone();
        watchers.push(tokio::spawn(async move {
            let mut events = client.watch(&id, None).await.unwrap();
            let first = events.next().await.unwrap().unwrap();
            assert_eq!(first.kind, pb::TicketEventKind::Snapshot as i32);
            subscribed.send(()).await.unwrap();
            let mut last = first;
            while let Some(event) = events.next().await {
                last = event.unwrap();
            }
            last.ticket.unwrap()
        }));
    }
    for _ in 0..100 {
        subscribed_rx.recv().await.unwrap();
    }
    release_tx.send(true).unwrap();
    for watcher in watchers {
        let ticket = watcher.await.unwrap();
        assert_eq!(state(&ticket), pb::TicketState::Succeeded);
        assert_eq!(ticket.result, Some(json("done".into())));
    }
    worker.shutdown();
}

#[tokio::test]
async fn resume_with_after_seq_replays_chunks_without_gap_or_duplicate() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let mut raw = client.raw();
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let worker = gateway
        .worker("chunks")
        .handler(handler_fn(move |task: TaskContext| {
            let mut release = release_rx.clone();
            async move {
                for part in ["a", "b", "c"] {
                    task.output(payload::json(part.into())).await;
                }
                release.wait_for(|r| *r).await.unwrap();
                task.output(payload::json("d".into())).await;
                Ok(payload::json("abcd".into()))
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let ticket = client.submit(Submit::new("chunks").build()).await.unwrap();

    // First watcher: read until chunk "c", remember chunk "a"'s seq, leave.
    let mut first = raw
        .watch_ticket(pb::WatchTicketRequest {
            id: ticket.id.clone(),
            after_seq: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    let mut outputs = Vec::new();
    while outputs.len() < 3 {
        let event = first.next().await.unwrap().unwrap();
        if event.kind == pb::TicketEventKind::Output as i32 {
            outputs.push((event.seq, event.output.unwrap()));
        }
    }
    assert_eq!(
        outputs.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>(),
        vec![json("a".into()), json("b".into()), json("c".into())]
    );
    drop(first);

    // Reconnect as if we had processed only "a".
    let after = outputs[0].0;
    let mut resumed = raw
        .watch_ticket(pb::WatchTicketRequest {
            id: ticket.id.clone(),
            after_seq: Some(after),
        })
        .await
        .unwrap()
        .into_inner();
    let snapshot = resumed.next().await.unwrap().unwrap();
    assert_eq!(snapshot.kind, pb::TicketEventKind::Snapshot as i32);
    release_tx.send(true).unwrap();
    let mut seen = Vec::new();
    let mut terminal = None;
    while let Some(event) = resumed.next().await {
        let event = event.unwrap();
        if event.kind == pb::TicketEventKind::Output as i32 {
            seen.push(event.output.unwrap());
        } else if event.kind != pb::TicketEventKind::Keepalive as i32 {
            terminal = event.ticket;
        }
    }
    assert_eq!(
        seen,
        vec![json("b".into()), json("c".into()), json("d".into())],
        "resumed stream must continue exactly after \"a\""
    );
    let terminal = terminal.unwrap();
    assert_eq!(state(&terminal), pb::TicketState::Succeeded);
    worker.shutdown();
}

#[tokio::test]
async fn idle_watch_streams_carry_keepalives() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let (ticket, mut stream, snapshot) = watch_idle_ticket(&client).await;
    let keepalive = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a keepalive within the cadence")
        .unwrap()
        .unwrap();
    assert_eq!(keepalive.kind, pb::TicketEventKind::Keepalive as i32);
    assert_eq!(keepalive.seq, snapshot.seq);
    assert!(keepalive.ticket.is_none());
    let again = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("keepalives keep coming while the ticket is idle")
        .unwrap()
        .unwrap();
    assert_eq!(again.kind, pb::TicketEventKind::Keepalive as i32);
    client.cancel(&ticket.id, "").await.unwrap();
    let last = stream.next().await.unwrap().unwrap();
    assert_eq!(
        state(last.ticket.as_ref().unwrap()),
        pb::TicketState::Cancelled
    );
    assert!(
        stream.next().await.is_none(),
        "the stream ends after the terminal event"
    );
}

#[tokio::test]
async fn watch_and_long_poll_never_miss_a_racing_completion() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let worker = gateway
        .worker("race")
        .max_in_flight(16)
        .handler(handler_fn(|_task: TaskContext| async {
            Ok(payload::json(1.into()))
        }))
        .build()
        .unwrap()
        .spawn();
    for _ in 0..50 {
        let ticket = client.submit(Submit::new("race").build()).await.unwrap();
        let (watched, polled) = tokio::join!(
            async {
                let mut events = client.watch(&ticket.id, None).await.unwrap();
                let mut last = None;
                while let Some(event) = events.next().await {
                    last = event.unwrap().ticket;
                }
                last.unwrap()
            },
            client.get(&ticket.id, Some(Duration::from_secs(10)))
        );
        assert_eq!(state(&watched), pb::TicketState::Succeeded);
        assert_eq!(state(&polled.unwrap()), pb::TicketState::Succeeded);
    }
    worker.shutdown();
}

/// A watcher that stops reading holds no one else back: a watcher of the
/// same ticket on another connection gets every chunk as it comes, and the
/// stalled one, once it reads again, resumes from a fresh snapshot plus the
/// stored chunks — every chunk, in order, then the terminal event.
#[tokio::test]
async fn a_watcher_that_stops_reading_catches_up_without_holding_others_back() {
    let gateway = TestGateway::start_with(unhurried(asyncgate_tests::fast_config())).await;
    stalled_watcher_catches_up(&gateway, &gateway).await;
}

/// Heartbeats of a second: these tests check what watchers receive, not
/// how fast a silent worker is found out, and a worker streaming 12 MiB on
/// a loaded machine may answer a 200 ms ping late (and lose its lease, so
/// the chunks would start over in a second attempt).
fn unhurried(config: asyncgate_server::Config) -> asyncgate_server::Config {
    asyncgate_server::Config {
        heartbeat_interval: Duration::from_secs(1),
        lease_ttl: Duration::from_secs(10),
        ..config
    }
}

#[tokio::test]
async fn a_stalled_watcher_catches_up_on_the_durable_store() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = TestGateway::start_with(unhurried(TestGateway::durable_config(dir.path()))).await;
    stalled_watcher_catches_up(&gateway, &gateway).await;
}

/// Bytes of each chunk [`spawn_flooder`] sends.
const FLOOD_CHUNK_BYTES: usize = 64 * 1024;

/// A worker on `queue` that, once `release` is true, sends `chunks` output
/// chunks of [`FLOOD_CHUNK_BYTES`] (chunk `i` filled with byte `i`), then
/// succeeds.
fn spawn_flooder(
    gateway: &TestGateway,
    queue: &str,
    chunks: usize,
    release: tokio::sync::watch::Receiver<bool>,
) -> asyncgate_client::worker::WorkerHandle {
    gateway.spawn_worker(
        queue,
        handler_fn(move |task: TaskContext| {
            let mut release = release.clone();
            async move {
                release.wait_for(|r| *r).await.unwrap();
                for i in 0..chunks {
                    let chunk = vec![i as u8; FLOOD_CHUNK_BYTES];
                    task.output(payload::binary(chunk, "application/octet-stream"))
                        .await;
                }
                Ok(payload::json("done".into()))
            }
        }),
    )
}

/// The ticket is submitted, worked and watched on `work`; the stalled
/// watcher reads through `watch` (another replica, or the same gateway).
pub(crate) async fn stalled_watcher_catches_up(work: &TestGateway, watch: &TestGateway) {
    // 12 MiB of output: more than any HTTP/2 window the stalled reader has.
    const CHUNKS: usize = 192;
    let client = work.client().await;
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let worker = spawn_flooder(work, "chatty", CHUNKS, release_rx);
    let ticket = client.submit(Submit::new("chatty").build()).await.unwrap();
    let stalled_client = watch.client().await;
    let mut stalled = stalled_client.watch(&ticket.id, None).await.unwrap();
    let first = stalled.next().await.unwrap().unwrap();
    assert_eq!(first.kind, pb::TicketEventKind::Snapshot as i32);

    /// The chunk indexes seen, the snapshots seen, and the last event.
    async fn read_to_end<E: std::fmt::Debug>(
        mut events: impl futures::Stream<Item = Result<pb::TicketEvent, E>> + Unpin,
    ) -> (Vec<u8>, usize, pb::TicketEvent) {
        let (mut chunks, mut snapshots, mut last) = (Vec::new(), 0, None);
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            if event.kind == pb::TicketEventKind::Output as i32 {
                let bytes = payload::as_binary(event.output.as_ref().unwrap()).unwrap();
                assert_eq!(bytes.len(), FLOOD_CHUNK_BYTES);
                chunks.push(bytes[0]);
            } else if event.kind == pb::TicketEventKind::Snapshot as i32 {
                snapshots += 1;
            }
            last = Some(event);
        }
        (chunks, snapshots, last.expect("at least one event"))
    }
    let every_chunk: Vec<u8> = (0..CHUNKS).map(|i| i as u8).collect();

    let reader = client.clone();
    let id = ticket.id.clone();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let fast = tokio::spawn(async move {
        let mut events = reader.watch(&id, None).await.unwrap();
        events.next().await.unwrap().unwrap();
        subscribed_tx.send(()).unwrap();
        read_to_end(events).await
    });
    subscribed_rx.await.unwrap();
    release_tx.send(true).unwrap();
    let (chunks, _, last) = tokio::time::timeout(Duration::from_secs(60), fast)
        .await
        .expect("the reading watcher finishes while the other one is stalled")
        .unwrap();
    assert_eq!(chunks, every_chunk);
    let done = last.ticket.as_ref().unwrap();
    assert_eq!(state(done), pb::TicketState::Succeeded);
    assert_eq!(done.attempt, 1, "the streaming worker kept its lease");

    let (chunks, snapshots, last) = read_to_end(stalled).await;
    assert_eq!(chunks, every_chunk, "resumed without a gap or a repeat");
    assert!(
        snapshots >= 1,
        "the stalled watcher fell behind and was resynchronised"
    );
    assert_eq!(
        state(last.ticket.as_ref().unwrap()),
        pb::TicketState::Succeeded
    );
    worker.shutdown();
}

/// A watcher that never reads again cannot hold the gateway open: shutdown
/// ends its stream (or its connection) once the grace period is over.
#[tokio::test]
async fn shutdown_finishes_despite_a_stalled_watcher() {
    let gateway = TestGateway::start().await;
    let grace = gateway.config().shutdown_grace;
    let client = gateway.client().await;
    let (_release_tx, release_rx) = tokio::sync::watch::channel(true);
    let worker = spawn_flooder(&gateway, "flood", 64, release_rx);
    let ticket = client.submit(Submit::new("flood").build()).await.unwrap();
    let stalled_client = gateway.client().await;
    let mut stalled = stalled_client.watch(&ticket.id, None).await.unwrap();
    stalled.next().await.unwrap().unwrap();
    let done = asyncgate_tests::finished(&client, &ticket.id).await;
    assert_eq!(state(&done), pb::TicketState::Succeeded);
    worker.shutdown();
    tokio::time::timeout(grace + Duration::from_secs(10), gateway.shutdown())
        .await
        .expect("shutdown is not held up by a watcher that stopped reading");
    drop(stalled);
}

/// The hard stop ends a live watch with UNAVAILABLE saying where to resume,
/// and returns a long-poll at once with the ticket's state.
#[tokio::test]
async fn the_hard_stop_ends_live_watches_and_long_polls() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let (ticket, mut watch, snapshot) = watch_idle_ticket(&client).await;
    let long_poll = {
        let client = client.clone();
        let id = ticket.id.clone();
        tokio::spawn(async move { client.get(&id, Some(Duration::from_secs(600))).await })
    };
    gateway.shutdown().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the watch ends at the hard stop");
    let status = ended
        .expect("the stream ends with a status")
        .expect_err("the watch ends with an error status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("shutting down")
            && status
                .message()
                .contains(&format!("after_seq={}", snapshot.seq)),
        "says why and where to resume: {}",
        status.message()
    );
    let polled = tokio::time::timeout(Duration::from_secs(10), long_poll)
        .await
        .expect("the long-poll returns at the hard stop")
        .unwrap()
        .expect("the long-poll answers with the ticket");
    assert_eq!(state(&polled), pb::TicketState::Pending);
}

/// Submits a ticket to a queue no worker serves (it stays PENDING) and opens
/// a plain WatchTicket stream on it, past its snapshot.
async fn watch_idle_ticket(
    client: &asyncgate_client::Client,
) -> (
    pb::Ticket,
    tonic::Streaming<pb::TicketEvent>,
    pb::TicketEvent,
) {
    let ticket = client.submit(Submit::new("idle").build()).await.unwrap();
    let mut stream = client
        .raw()
        .watch_ticket(pb::WatchTicketRequest {
            id: ticket.id.clone(),
            after_seq: None,
        })
        .await
        .unwrap()
        .into_inner();
    let snapshot = stream.next().await.unwrap().unwrap();
    assert_eq!(snapshot.kind, pb::TicketEventKind::Snapshot as i32);
    (ticket, stream, snapshot)
}
