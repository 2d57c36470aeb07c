//! Hostile and bad input to `asyncgate.v1.Admin` against the real
//! `asyncgate-server` binary: each call gets a precise status naming what to
//! fix, nothing it asked for happens, no forged line reaches the log, the
//! gateway's memory stays bounded and it serves everyone else throughout.

use std::process::Stdio;

use asyncgate_client::worker::{TaskContext, Worker, handler_fn};
use asyncgate_client::{Client, Submit, pb};
use tokio::io::AsyncReadExt as _;
use tonic::Code;

mod common;
use common::{free_port, rss, wait_until_serving};

/// A round trip through a fresh worker: the gateway still serves.
async fn still_serves(url: &str, client: &Client) {
    let worker = Worker::builder(url.to_owned())
        .queue("healthy")
        .handler(handler_fn(|task: TaskContext| async move {
            Ok(task.payload().clone())
        }))
        .build()
        .unwrap()
        .spawn();
    let ticket = client
        .submit(Submit::new("healthy").json(serde_json::json!(1)))
        .await
        .unwrap();
    let ticket = common::finished(client, &ticket.id).await;
    assert_eq!(ticket.state(), pb::TicketState::Succeeded);
    worker.shutdown();
}

#[tokio::test]
async fn hostile_admin_calls_are_refused_precisely_and_change_nothing() {
    let port = free_port();
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_asyncgate-server"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            "memory",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts");
    let url = format!("http://127.0.0.1:{port}");
    let client = Client::connect_lazy(url.clone()).unwrap();
    wait_until_serving(&client).await;
    let admin = client.admin();
    client.submit(Submit::new("q").build()).await.unwrap();
    let before = rss(gateway.id().unwrap());

    // A reason that would forge a log line and an ANSI escape.
    for reason in [
        "ok\n2026-12-06T00:00:00Z  INFO asyncgate::audit: action=PauseQueue who=root",
        "\u{1b}[2J cleared your terminal",
    ] {
        let refused = admin.pause_queue("q", reason).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
        assert!(refused.to_string().contains("reason"), "{refused}");
    }
    // A megabyte queue name.
    let huge = "q".repeat(1 << 20);
    let refused = admin.get_queue(&huge).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    assert!(refused.to_string().contains("128"), "{refused}");
    // 200,000 states naming a finished one, and a cut-off out of range.
    let mut raw = admin.raw();
    let refused = raw
        .purge_queue(pb::PurgeQueueRequest {
            name: "q".into(),
            states: vec![pb::TicketState::Succeeded as i32; 200_000],
            created_before: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let refused = raw
        .purge_queue(pb::PurgeQueueRequest {
            name: "q".into(),
            states: Vec::new(),
            created_before: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("created_before"), "{refused:?}");
    // Absurd limits, and a drain of something that is not a session.
    let refused = admin
        .set_queue_limits(
            "q",
            pb::QueueLimits {
                max_dispatch_per_second: u32::MAX,
                burst: u32::MAX,
                max_concurrent: u32::MAX,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    let refused = admin.drain_worker(&"x".repeat(10_000)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");

    // Nothing happened: not paused, not purged, not limited.
    let queue = admin.get_queue("q").await.unwrap();
    assert!(queue.pause.is_none());
    assert_eq!(queue.counts.unwrap().pending, 1);
    assert_eq!(queue.limits.unwrap(), pb::QueueLimits::default());
    still_serves(&url, &client).await;
    let after = rss(gateway.id().unwrap());
    assert!(
        after < before + 64 * 1024 * 1024,
        "RSS grew from {before} to {after} bytes"
    );

    // The log has no forged line: the refused reason was never written.
    gateway.start_kill().unwrap();
    let mut log = String::new();
    gateway
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(!log.contains("who=root"), "{log}");
    assert!(!log.contains("cleared your terminal"), "{log}");
}

/// `[queues.NAME]` in the config file sets a queue's limits at every start:
/// they hold from the first request, and a restart puts them back after an
/// operator changed them through the API. A bad table stops the start with
/// a message naming the key.
#[tokio::test]
async fn queue_limits_in_the_config_file_are_set_at_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("asyncgate.toml");
    let store = dir.path().join("store.redb");
    let start = |port: u16| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_asyncgate-server"))
            .arg("--config")
            .arg(&file)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--store"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the server binary starts")
    };
    std::fs::write(
        &file,
        "[queues.fragile]\nmax_dispatch_per_second = 20\nmax_concurrent = 2\n",
    )
    .unwrap();
    let configured = pb::QueueLimits {
        max_dispatch_per_second: 20,
        burst: 0,
        max_concurrent: 2,
    };
    for round in 0..2 {
        let port = free_port();
        let mut gateway = start(port);
        let client = Client::connect_lazy(format!("http://127.0.0.1:{port}")).unwrap();
        wait_until_serving(&client).await;
        let admin = client.admin();
        let queue = admin.get_queue("fragile").await.unwrap();
        assert_eq!(queue.limits, Some(configured), "round {round}");
        // An operator loosens them; the next start puts the file's back.
        let loose = pb::QueueLimits {
            max_concurrent: 50,
            ..Default::default()
        };
        admin.set_queue_limits("fragile", loose).await.unwrap();
        gateway.kill().await.unwrap();
    }

    std::fs::write(&file, "[queues.fragile]\nmax_concurrent = -3\n").unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_asyncgate-server"))
        .arg("--config")
        .arg(&file)
        .args(["--store", "memory"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("max_concurrent") && stderr.contains("not a whole number"),
        "{stderr}"
    );
}
