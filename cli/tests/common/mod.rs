//! What the CLI's end-to-end tests share: an in-process gateway on an
//! ephemeral loopback port, and the `asyncgate` binary run against it.

#![allow(dead_code)]

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::process::Command;

/// A memory-store gateway and its URL.
pub(crate) async fn gateway() -> (asyncgate_server::Running, String) {
    gateway_with(asyncgate_server::Config::default()).await
}

/// A gateway with `config` on the memory store, and its URL.
pub(crate) async fn gateway_with(
    config: asyncgate_server::Config,
) -> (asyncgate_server::Running, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = asyncgate_server::Config {
        store: asyncgate_server::config::StoreConfig::Memory,
        ..config
    };
    let running = asyncgate_server::start_on(config, listener).await.unwrap();
    (running, url)
}

/// The CLI, pointed at `url`.
pub(crate) fn cli(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_asyncgate"));
    command.env("ASYNCGATE_SERVER", url).kill_on_drop(true);
    command
}

/// Runs `command` to its end: its exit code, stdout and stderr.
pub(crate) async fn run_full(command: &mut Command) -> (i32, String, String) {
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the CLI finishes")
        .unwrap();
    (
        output.status.code().expect("the CLI exits"),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}
