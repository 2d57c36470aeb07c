//! `--log-format json`: the real binary writes one JSON object per line.

use std::net::TcpListener;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_asyncgate-server"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--store", "memory", "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts");
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let mut listening = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        let entry: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            entry["timestamp"].is_string() && entry["level"].is_string(),
            "{line}"
        );
        if entry["fields"]["message"] == "asyncgate listening" {
            listening = Some(entry);
            break;
        }
    }
    let listening = listening.expect("the listening line");
    assert_eq!(listening["level"], "INFO");
    assert_eq!(
        listening["fields"]["local_addr"],
        format!("127.0.0.1:{port}")
    );
    server.kill().await.unwrap();
}
