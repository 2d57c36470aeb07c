//! Crash safety of the durable store, end to end: the real `asyncgate-server`
//! binary as a child process, concurrent clients and workers, `kill -9`
//! several times mid-load, restarts on the same file, then the checks: every
//! ticket whose Submit got a reply (or whose SubmitStream item got its
//! answer) exists and reaches a terminal state, and no
//! result observed by a client ever changes afterwards (a result recorded
//! twice, or lost and recorded again, would show up as a change: each result
//! names the lease that produced it).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncgate_client::worker::{TaskContext, Worker, handler_fn};
use asyncgate_client::{Client, Submit, payload, pb};
use futures::StreamExt;
use tokio::process::{Child, Command};

mod common;
use common::{every_second, free_port, reporting_worker, start_server, wait_until_serving};

const SUBMITTERS: usize = 4;
/// Inputs of the SubmitStream producer start here.
const STREAMED: i64 = 9_000_000;
const CRASHES: usize = 3;

fn start(store: &Path, port: u16) -> Child {
    start_server(
        store,
        port,
        &[
            "--max-worker-losses",
            "20",
            "--shutdown-grace",
            "1s",
            "--dispatch-stored-only",
        ],
    )
}

/// A result: the input doubled, and the lease that produced it.
fn expected_value(result: &serde_json::Value) -> Option<i64> {
    result.get("doubled").and_then(|v| v.as_i64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_mid_load_loses_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("asyncgate.redb");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = start(&store, port);
    let client = Client::connect_lazy(url.clone()).unwrap();
    wait_until_serving(&client).await;

    // Every ticket a worker ran: each must exist after the crashes (a
    // worker is only handed tickets that are on disk).
    let ran: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let workers: Vec<_> = (0..2)
        .map(|i| {
            let ran = ran.clone();
            Worker::builder(url.clone())
                .name(format!("crash-worker-{i}"))
                .queue("crash")
                .max_in_flight(8)
                .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
                .handler(handler_fn(move |task: TaskContext| {
                    ran.lock().unwrap().insert(task.ticket_id().to_owned());
                    async move {
                        let input = task.json().and_then(|v| v.as_i64()).unwrap_or(-1);
                        Ok(payload::json(serde_json::json!({
                            "doubled": input * 2,
                            "lease": task.lease_id(),
                        })))
                    }
                }))
                .build()
                .unwrap()
                .spawn()
        })
        .collect();

    // Tickets whose Submit got a reply: id -> input.
    let acknowledged: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    // The first result a client saw for each ticket.
    let observed: Arc<Mutex<HashMap<String, serde_json::Value>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    let mut load = Vec::new();
    for submitter in 0..SUBMITTERS {
        let (client, acknowledged, stop) = (client.clone(), acknowledged.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) && n < 5_000 {
                let input = (submitter as i64) * 1_000_000 + n;
                n += 1;
                let request = Submit::new("crash")
                    .json(input.into())
                    .idempotency_key(format!("k-{input}"))
                    .max_attempts(50)
                    .build();
                // Retry the same key across a crash: at most one ticket.
                for _ in 0..40 {
                    match client.submit(request.clone()).await {
                        Ok(ticket) => {
                            acknowledged.lock().unwrap().insert(ticket.id, input);
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
                    }
                }
            }
        }));
    }
    // One producer on SubmitStream (the SDK's submitter), 32 items in
    // flight: an item whose answer came is acknowledged like a Submit's
    // reply; those cut off by a crash are sent again, same key, on a new
    // stream.
    {
        let (client, acknowledged, stop) = (client.clone(), acknowledged.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let (mut next, mut again) = (0i64, Vec::new());
            while !stop.load(Ordering::Relaxed) && next < 5_000 {
                let Ok(submitter) = client.submitter().await else {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    continue;
                };
                loop {
                    let mut inputs: Vec<i64> = std::mem::take(&mut again);
                    while inputs.len() < 32 {
                        inputs.push(STREAMED + next);
                        next += 1;
                    }
                    let sent = inputs.iter().map(|input| {
                        let request = Submit::new("crash")
                            .json((*input).into())
                            .idempotency_key(format!("k-{input}"))
                            .max_attempts(50);
                        submitter.submit(request)
                    });
                    let answers = futures::future::join_all(sent).await;
                    for (input, answer) in inputs.into_iter().zip(answers) {
                        match answer {
                            Ok(ticket) => {
                                acknowledged.lock().unwrap().insert(ticket.id, input);
                            }
                            Err(_) => again.push(input),
                        }
                    }
                    if !again.is_empty() || stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
        }));
    }
    {
        let (client, acknowledged, observed, stop) = (
            client.clone(),
            acknowledged.clone(),
            observed.clone(),
            stop.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ids: Vec<String> = acknowledged.lock().unwrap().keys().cloned().collect();
                for id in ids.iter().rev().take(200) {
                    if observed.lock().unwrap().contains_key(id) {
                        continue;
                    }
                    if let Ok(ticket) = client.get(id, None).await
                        && ticket.state == pb::TicketState::Succeeded as i32
                    {
                        let result = payload::to_json(ticket.result.as_ref().unwrap()).unwrap();
                        observed.lock().unwrap().insert(id.clone(), result);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    for crash in 0..CRASHES {
        let before = acknowledged.lock().unwrap().len();
        // Let the load run for a while, then crash the server mid-flight.
        while acknowledged.lock().unwrap().len() < before + 150 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50 * (crash as u64 + 1))).await;
        server.start_kill().expect("kill -9");
        server.wait().await.unwrap();
        server = start(&store, port);
        wait_until_serving(&client).await;
    }
    let target = acknowledged.lock().unwrap().len() + 100;
    while acknowledged.lock().unwrap().len() < target {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    let observed = observed.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 550,
        "too little load: {}",
        acknowledged.len()
    );
    let mut changed = Vec::new();
    for (id, input) in &acknowledged {
        let ticket = client
            .get(id, Some(Duration::from_secs(30)))
            .await
            .unwrap_or_else(|e| panic!("acknowledged ticket {id} is missing: {e}"));
        assert_eq!(
            ticket.state,
            pb::TicketState::Succeeded as i32,
            "ticket {id} did not finish: {ticket:?}"
        );
        let result = payload::to_json(ticket.result.as_ref().unwrap()).unwrap();
        assert_eq!(expected_value(&result), Some(input * 2), "ticket {id}");
        if let Some(first) = observed.get(id)
            && *first != result
        {
            changed.push((id.clone(), first.clone(), result));
        }
    }
    assert!(
        changed.is_empty(),
        "results changed after being observed: {changed:?}"
    );
    let ran = ran.lock().unwrap().clone();
    for id in &ran {
        let exists = client.get(id, None).await;
        assert!(
            exists.is_ok(),
            "a worker ran ticket {id}, which the store does not have: {exists:?}"
        );
    }
    eprintln!(
        "crash test: {} acknowledged ({} on SubmitStream), {} observed during load",
        acknowledged.len(),
        acknowledged
            .values()
            .filter(|input| **input >= STREAMED)
            .count(),
        observed.len()
    );
    assert!(
        !observed.is_empty(),
        "the observer saw results during the load"
    );
    assert!(
        acknowledged.values().any(|input| *input >= STREAMED),
        "the SubmitStream producer had items acknowledged"
    );
    for worker in workers {
        worker.abort();
    }
    server.start_kill().unwrap();
    let _ = server.wait().await;
}

/// The output chunks of a `WatchTickets` stream, by ticket: (seq, bytes).
type Outputs = HashMap<String, Vec<(u64, Vec<u8>)>>;

/// Opens `WatchTickets` following `ids`, each after its seq in `after`
/// (from its first output without one).
async fn follow(
    client: &Client,
    ids: &[String],
    after: &HashMap<String, u64>,
) -> tonic::Streaming<pb::TicketEvent> {
    let add = ids
        .iter()
        .map(|id| pb::WatchSubscription {
            id: id.clone(),
            after_seq: Some(after.get(id).copied().unwrap_or(0)),
        })
        .collect();
    let first = pb::WatchTicketsRequest {
        add,
        ..Default::default()
    };
    // The request side stays open (a pending stream) until the test ends.
    let requests = futures::stream::iter([first]).chain(futures::stream::pending());
    client
        .raw()
        .watch_tickets(requests)
        .await
        .expect("WatchTickets opens")
        .into_inner()
}

/// Reads `events` into `outputs` and `last` (each ticket's highest seq)
/// until `done` says stop; false if the stream broke first.
async fn read_events(
    events: &mut tonic::Streaming<pb::TicketEvent>,
    outputs: &mut Outputs,
    last: &mut HashMap<String, u64>,
    ended: &mut std::collections::HashSet<String>,
    done: impl Fn(&Outputs, &std::collections::HashSet<String>) -> bool,
) -> bool {
    while !done(outputs, ended) {
        let Ok(Some(Ok(event))) = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .map(|e| e.map(|r| r.map_err(|_| ())))
        else {
            return false;
        };
        if event.ticket_id.is_empty() || event.kind == pb::TicketEventKind::Keepalive as i32 {
            continue;
        }
        assert!(event.error.is_none(), "{event:?}");
        let seen = last.entry(event.ticket_id.clone()).or_default();
        if event.kind == pb::TicketEventKind::Output as i32 {
            let chunks = outputs.entry(event.ticket_id.clone()).or_default();
            assert!(
                chunks.last().is_none_or(|(seq, _)| event.seq > *seq),
                "ticket {}: output {} again or out of order after {chunks:?}",
                event.ticket_id,
                event.seq
            );
            let bytes = match event.output.and_then(|p| p.kind) {
                Some(pb::payload::Kind::Binary(bytes)) => bytes.to_vec(),
                other => panic!("binary output expected: {other:?}"),
            };
            chunks.push((event.seq, bytes));
        }
        *seen = (*seen).max(event.seq);
        if event
            .ticket
            .as_ref()
            .is_some_and(|t| asyncgate_client::payload::is_terminal(t.state()))
        {
            ended.insert(event.ticket_id.clone());
        }
    }
    true
}

/// `WatchTickets` across a `kill -9`: a watcher that saw output chunks of
/// running tickets resumes on the restarted gateway with each ticket's
/// last seq, and then sees every later chunk once, in order: together, what
/// it saw is exactly the tickets' stored output (the attempts cut off by
/// the crash included; their tickets ran again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_tickets_resumes_across_a_kill_nine_without_a_gap() {
    const TICKETS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("asyncgate.redb");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = start(&store, port);
    let client = Client::connect_lazy(url.clone()).unwrap();
    wait_until_serving(&client).await;
    // Two chunks, then the rest once the test says so (after the restart).
    let (release, released) = tokio::sync::watch::channel(false);
    let worker = Worker::builder(url.clone())
        .name("resume-worker")
        .queue("resume")
        .max_in_flight(TICKETS as u32)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .handler(handler_fn(move |task: TaskContext| {
            let mut released = released.clone();
            async move {
                for n in 0..4u8 {
                    if n == 2 {
                        let _ = released.wait_for(|go| *go).await;
                    }
                    let chunk = format!("{} chunk {n}", task.attempt());
                    task.output(payload::binary(chunk.into_bytes(), "")).await;
                }
                Ok(payload::binary(b"done".to_vec(), ""))
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let mut ids = Vec::new();
    for _ in 0..TICKETS {
        ids.push(
            client
                .submit(Submit::new("resume").build())
                .await
                .unwrap()
                .id,
        );
    }
    let (mut outputs, mut last, mut ended) = (Outputs::new(), HashMap::new(), Default::default());
    let mut events = follow(&client, &ids, &HashMap::new()).await;
    let two_each = |outputs: &Outputs, _: &std::collections::HashSet<String>| {
        outputs.len() == TICKETS && outputs.values().all(|o| o.len() >= 2)
    };
    assert!(read_events(&mut events, &mut outputs, &mut last, &mut ended, two_each).await);
    server.start_kill().expect("kill -9");
    server.wait().await.unwrap();
    server = start(&store, port);
    wait_until_serving(&client).await;
    // Resume from each ticket's last seq, on the restarted gateway.
    let mut events = follow(&client, &ids, &last).await;
    release.send_replace(true);
    // Every ticket ended, and its last chunk (each run ends with chunk 3)
    // read: a resumed ticket that had already ended comes as a terminal
    // snapshot first, with its stored chunks after it on the stream.
    let all_ended = |outputs: &Outputs, ended: &std::collections::HashSet<String>| {
        ended.len() == TICKETS
            && outputs.values().all(|o| {
                o.last()
                    .is_some_and(|(_, bytes)| bytes.ends_with(b"chunk 3"))
            })
    };
    assert!(
        read_events(&mut events, &mut outputs, &mut last, &mut ended, all_ended).await,
        "the resumed stream broke"
    );
    // What was seen is what is stored: every ticket's whole output, from
    // its start, read again.
    for id in &ids {
        let mut replay = client.watch(id, Some(0)).await.unwrap();
        let mut stored = Vec::new();
        while let Some(event) = replay.next().await {
            let event = event.unwrap();
            if event.kind == pb::TicketEventKind::Output as i32
                && let Some(pb::payload::Kind::Binary(bytes)) = event.output.and_then(|p| p.kind)
            {
                stored.push((event.seq, bytes.to_vec()));
            }
        }
        assert_eq!(
            outputs[id], stored,
            "ticket {id}: the watcher missed or repeated output"
        );
        assert!(stored.len() >= 4, "ticket {id}: {stored:?}");
    }
    worker.abort();
    server.start_kill().unwrap();
    let _ = server.wait().await;
}

/// Schedules and delayed tickets across a `kill -9`: the schedule, its runs
/// and the delayed tickets are still there after the restart; every slot
/// has exactly one ticket (a slot handled when the gateway died is not
/// submitted twice); every acknowledged delayed ticket runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_and_delayed_tickets_survive_a_kill_nine() {
    const DELAYED: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("asyncgate.redb");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = start(&store, port);
    let client = Client::connect_lazy(url.clone()).unwrap();
    wait_until_serving(&client).await;
    let (ran_tx, mut ran_rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = reporting_worker(&url, &["ticks", "later"], ran_tx);
    client
        .schedules()
        .create(every_second("every-second", "ticks"))
        .await
        .unwrap();
    let mut delayed = Vec::new();
    for i in 0..DELAYED {
        let delay = Duration::from_millis(1500 + 100 * i as u64);
        let ticket = client
            .submit(Submit::new("later").delay(delay).build())
            .await
            .unwrap();
        delayed.push(ticket.id);
    }
    // Two slots ran: the gateway dies while slots and delayed tickets are
    // coming due.
    ran_rx.recv().await.unwrap();
    ran_rx.recv().await.unwrap();
    server.start_kill().expect("kill -9");
    server.wait().await.unwrap();
    server = start(&store, port);
    wait_until_serving(&client).await;
    for id in &delayed {
        let done = client.get(id, Some(Duration::from_secs(30))).await.unwrap();
        assert_eq!(done.state, pb::TicketState::Succeeded as i32, "{done:?}");
    }
    let before = client.schedules().get("every-second").await.unwrap().fired;
    let restarted = std::time::SystemTime::now();
    // It goes on firing after the restart: a slot later than the restart runs.
    loop {
        let id = ran_rx.recv().await.unwrap();
        let ticket = client.get(&id, None).await.unwrap();
        let Some(slot) = ticket.metadata.get("asyncgate.fire_time") else {
            continue;
        };
        let slot = std::time::SystemTime::try_from(slot.parse::<prost_types::Timestamp>().unwrap())
            .unwrap();
        if slot > restarted {
            break;
        }
    }
    client.schedules().pause("every-second", "").await.unwrap();
    let seen = client.schedules().get("every-second").await.unwrap();
    assert!(seen.fired > before, "{seen:?}");
    // One ticket per slot, across the crash.
    let mut tickets = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list(pb::ListTicketsRequest {
                queue: "ticks".into(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap();
        tickets.extend(page.tickets);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let slots: std::collections::HashSet<&str> = tickets
        .iter()
        .map(|t| t.metadata["asyncgate.fire_time"].as_str())
        .collect();
    assert_eq!(slots.len(), tickets.len(), "a slot got two tickets");
    assert_eq!(tickets.len() as u64, seen.fired);
    worker.abort();
    server.start_kill().unwrap();
    let _ = server.wait().await;
}

#[tokio::test]
async fn a_corrupt_store_file_stops_startup_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("broken.redb");
    std::fs::write(&store, vec![0x5Au8; 32 * 1024]).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_asyncgate-server"))
        .args(["--listen", "127.0.0.1:0", "--store"])
        .arg(&store)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot open the store"), "{stderr}");
    assert!(stderr.contains("broken.redb"), "{stderr}");
}
