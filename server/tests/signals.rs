//! Signals to the real `asyncgate-server` binary: SIGHUP reloads the keys
//! file, and without one it is logged and ignored (its default action would
//! end the process).

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use asyncgate_client::{Client, pb};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStderr, Command};

/// Reads log lines until one contains `needle`; panics if the gateway's
/// stderr closes (it exited) or nothing matches within 30 s.
async fn line_containing(lines: &mut Lines<BufReader<ChildStderr>>, needle: &str) -> String {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("the gateway exited before logging {needle:?}");
    });
    found
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} within 30 s"))
}

/// Sends SIGHUP to one process, by its id.
fn hangup(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -HUP {pid}: {status}");
}

#[tokio::test]
async fn sighup_without_keys_is_logged_and_the_gateway_keeps_serving() {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind loopback")
        .local_addr()
        .expect("addr")
        .port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_asyncgate-server"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--store", "memory"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts");
    let pid = server.id().expect("the gateway runs");
    let mut lines = BufReader::new(server.stderr.take().expect("stderr")).lines();
    line_containing(&mut lines, "asyncgate listening").await;

    // Twice: the handler keeps listening after the first.
    for _ in 0..2 {
        hangup(pid);
        let line = line_containing(&mut lines, "SIGHUP").await;
        assert!(line.contains("INFO"), "{line}");
        assert!(line.contains("SIGHUP: no --keys file to reload"), "{line}");
    }

    let client = Client::connect_lazy(format!("http://127.0.0.1:{port}")).expect("client");
    client
        .list(pb::ListTicketsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("the gateway still serves after SIGHUP");
    assert!(
        server.try_wait().expect("wait").is_none(),
        "the gateway is still running"
    );
    server.kill().await.expect("kill the gateway");
}
