//! Helpers shared by the tests that run the real `asyncgate-server` binary.

use std::net::TcpListener;
use std::time::Duration;

use asyncgate_client::{Client, pb};

/// A loopback port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("addr").port()
}

/// Waits until the gateway behind `client` answers (a child process takes
/// a moment to bind).
pub(crate) async fn wait_until_serving(client: &Client) {
    for _ in 0..200 {
        let probe = client
            .list(pb::ListTicketsRequest {
                page_size: 1,
                ..Default::default()
            })
            .await;
        if probe.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the gateway did not come up");
}
