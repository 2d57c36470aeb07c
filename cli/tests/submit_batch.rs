//! `asyncgate submit --batch`: JSON lines in (a file or stdin), one line
//! out per request in input order, against an in-process gateway on an
//! ephemeral loopback port.

use std::process::Stdio;
use std::time::Duration;

use asyncgate_client::{Client, pb};
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

mod common;
use common::cli;

/// A memory gateway whose payload limit is `max_payload_bytes` (its message
/// limit is that plus 64 KiB).
async fn gateway(max_payload_bytes: usize) -> (asyncgate_server::Running, String) {
    common::gateway_with(asyncgate_server::Config {
        max_payload_bytes,
        ..asyncgate_server::Config::default()
    })
    .await
}

/// Runs the CLI with `stdin`; its exit code and stdout lines.
async fn run(command: &mut Command, stdin: &str) -> (i32, Vec<String>) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let text = stdin.to_owned();
    let writer = tokio::spawn(async move {
        input.write_all(text.as_bytes()).await.unwrap();
    });
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the CLI finishes")
        .unwrap();
    writer.await.unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.code().is_some(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        output.status.code().unwrap(),
        stdout.lines().map(str::to_owned).collect(),
    )
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// Every kind of line in one file: each gets its own answer in order, an
/// unreadable or refused one says its line number, blank lines are
/// skipped, and the exit code says something was refused.
#[tokio::test]
async fn each_line_of_a_file_is_answered_in_order() {
    let (running, url) = gateway(4 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("requests.jsonl");
    let lines = [
        r#"{"queue": "jobs", "payload": {"json": {"n": 1}}}"#,
        "",
        r#"{"queue": "jobs", "payload": {"json": "two"}, "priority": 5000}"#,
        r#"{"queue": "jobs", "payload": {"json": "three""#,
        r#"{"queue": "jobs", "priorty": 1}"#,
        "   ",
        r#"{"queue": "jobs", "idempotencyKey": "k", "metadata": {"team": "x"}, "delay": "3600s"}"#,
        r#"{"queue": "jobs", "idempotency_key": "k"}"#,
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let (code, out) = run(
        cli(&url)
            .args(["--output", "json", "submit", "--batch"])
            .arg(&file),
        "",
    )
    .await;
    assert_eq!(code, 1, "{out:?}");
    assert_eq!(out.len(), 6, "one line per non-blank line: {out:?}");
    let first = json(&out[0]);
    assert_eq!(first["queue"], "jobs");
    assert_eq!(first["state"], "TICKET_STATE_PENDING");
    for (at, line, code, says) in [
        (1, 3, "INVALID_ARGUMENT", "invalid priority: 5000"),
        (
            2,
            4,
            "INVALID_ARGUMENT",
            "EOF while parsing an object (column 45)",
        ),
        (3, 5, "INVALID_ARGUMENT", "priorty"),
    ] {
        let refused = json(&out[at]);
        assert_eq!(refused["line"], line, "{refused}");
        assert_eq!(refused["code"], code, "{refused}");
        let message = refused["message"].as_str().unwrap();
        assert!(message.contains(says), "{refused}");
    }
    let keyed = json(&out[4]);
    assert_eq!(keyed["metadata"]["team"], "x");
    assert!(keyed["scheduledFor"].is_string(), "{keyed}");
    assert_eq!(json(&out[5])["id"], keyed["id"], "the key named one ticket");
    let client = Client::connect(url.clone()).await.unwrap();
    let listed = client
        .list(pb::ListTicketsRequest {
            queue: "jobs".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.tickets.len(), 2);
    running.shutdown().await.unwrap();
}

/// 2,500 lines on stdin: more than one call holds (1,000), and more bytes
/// than the gateway's message limit allows per call (each line carries
/// 900 bytes; the limit is 1 KiB + 64 KiB), so calls are split and split
/// again; every line is stored once and answered in its place.
#[tokio::test]
async fn a_long_stdin_is_sent_in_calls_that_fit() {
    let (running, url) = gateway(1024).await;
    let body = "b".repeat(900);
    let input: String = (0..2500)
        .map(|n| {
            format!(
                "{{\"queue\": \"bulk\", \"metadata\": {{\"n\": \"{n}\"}}, \"payload\": {{\"json\": \"{body}\"}}}}\n"
            )
        })
        .collect();
    let (code, out) = run(
        cli(&url).args(["--output", "json", "submit", "--batch", "-"]),
        &input,
    )
    .await;
    assert_eq!(code, 0, "{:?}", out.iter().find(|l| !l.contains("PENDING")));
    assert_eq!(out.len(), 2500);
    for (n, line) in out.iter().enumerate() {
        let ticket = json(line);
        assert_eq!(ticket["metadata"]["n"], n.to_string(), "{line}");
        assert_eq!(ticket["state"], "TICKET_STATE_PENDING");
    }
    let client = Client::connect(url.clone()).await.unwrap();
    let queue = client.admin().get_queue("bulk").await.unwrap();
    assert_eq!(queue.counts.map(|c| c.pending), Some(2500));
    running.shutdown().await.unwrap();
}
