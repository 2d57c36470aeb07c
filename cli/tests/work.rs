//! `asyncgate work -- CMD` against a scripted fake gateway on `127.0.0.1:0`:
//! stdin/stdout mapped to payloads, and a clean drain on SIGTERM. (The worker
//! SDK's own protocol tests use the same fake, from
//! `client/tests/support/fake_workers.rs`.)

use std::time::Duration;

#[path = "../../client/tests/support/fake_workers.rs"]
mod fake_workers;
use fake_workers::*;

#[tokio::test]
async fn cli_work_maps_stdin_stdout_and_drains_on_sigterm() {
    let (addr, mut conns) = serve_workers().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_asyncgate"))
        .args([
            "--server",
            &format!("http://{addr}"),
            "work",
            "--queue",
            "upper",
        ])
        .args(["--concurrency", "2", "--", "tr", "a-z", "A-Z"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut conn = next_conn(&mut conns).await;
    let hello = conn.welcome("s1", Duration::from_secs(1)).await;
    assert_eq!(
        (hello.queues.as_slice(), hello.max_in_flight),
        (&["upper".to_owned()][..], 2)
    );

    conn.task("L1", "hello".into()).await;
    let result = conn.result().await;
    assert_eq!(success_json(&result), Some("HELLO".into()));
    conn.task("L2", serde_json::json!({"k": "v"})).await;
    let result = conn.result().await;
    assert_eq!(success_json(&result), Some(serde_json::json!({"K": "V"})));
    conn.ack("L1", tonic::Code::Ok).await;
    conn.ack("L2", tonic::Code::Ok).await;

    let pid = child.id().unwrap_or_else(|| panic!("no pid")).to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(killed.success());
    conn.drain_and_close().await;
    let status = step("the CLI exits", child.wait())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}");
}
