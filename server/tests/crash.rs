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
use tokio::process::{Child, Command};

mod common;
use common::{free_port, start_server, wait_until_serving};

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
