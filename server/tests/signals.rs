//! Signals to the real `asyncgate-server` binary: SIGHUP reloads the keys
//! file, and without one it is logged and ignored (its default action would
//! end the process).

use asyncgate_client::{Client, pb};
use tokio::io::{AsyncBufReadExt, BufReader};

mod common;
use common::{hangup, line_containing};

#[tokio::test]
async fn sighup_without_keys_is_logged_and_the_gateway_keeps_serving() {
    let (mut server, port) = common::start_logged(&[], "info");
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
