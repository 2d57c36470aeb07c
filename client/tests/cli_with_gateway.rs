//! The README's tour, run for real: an in-process gateway on an ephemeral
//! loopback port, `asyncgate work -- tr a-z A-Z` as a child process, and the
//! CLI submitting and waiting, in text and JSON output.

use std::process::Stdio;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::process::{Child, Command};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

async fn gateway() -> (asyncgate_server::Running, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = asyncgate_server::Config {
        store: asyncgate_server::config::StoreConfig::Memory,
        ..asyncgate_server::Config::default()
    };
    let running = asyncgate_server::start_on(config, listener).await.unwrap();
    (running, url)
}

fn cli(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_asyncgate"));
    command.env("ASYNCGATE_SERVER", url).kill_on_drop(true);
    command
}

async fn run(command: &mut Command) -> (i32, String) {
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the CLI finishes")
        .unwrap();
    assert!(
        output.status.code().is_some(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

#[tokio::test]
async fn tour_submit_and_wait_through_a_command_worker() {
    let (running, url) = gateway().await;
    let worker = KillOnDrop(
        cli(&url)
            .args(["work", "--queue", "upper", "--", "tr", "a-z", "A-Z"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let (code, text) =
        run(cli(&url).args(["submit", "upper", "--json", "\"hello\"", "--wait"])).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("SUCCEEDED"), "{text}");
    assert!(text.contains("\"HELLO\""), "{text}");

    let (code, json) = run(cli(&url).args([
        "--output",
        "json",
        "submit",
        "upper",
        "--json",
        "\"json out\"",
        "--wait",
    ]))
    .await;
    assert_eq!(code, 0);
    let ticket: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(ticket["state"], "TICKET_STATE_SUCCEEDED");
    assert_eq!(ticket["result"]["json"], "JSON OUT");
    assert_eq!(ticket["maxAttempts"], 3);

    let (code, events) = run(cli(&url).args([
        "--output",
        "json",
        "submit",
        "upper",
        "--json",
        "\"watch me\"",
        "--watch",
    ]))
    .await;
    assert_eq!(code, 0);
    let last: serde_json::Value =
        serde_json::from_str(events.trim().lines().last().unwrap()).unwrap();
    assert_eq!(last["ticket"]["state"], "TICKET_STATE_SUCCEEDED");
    assert_eq!(last["ticket"]["result"]["json"], "WATCH ME");

    let id = ticket["id"].as_str().unwrap();
    let (code, fetched) = run(cli(&url).args(["get", id])).await;
    assert_eq!(code, 0);
    assert!(fetched.contains(id));

    drop(worker);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failing_command_fails_the_ticket_with_its_stderr() {
    let (running, url) = gateway().await;
    let worker = KillOnDrop(
        cli(&url)
            .args([
                "work",
                "--queue",
                "broken",
                "--",
                "sh",
                "-c",
                "echo kaputt >&2; exit 3",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (code, text) = run(cli(&url).args([
        "submit",
        "broken",
        "--json",
        "1",
        "--max-attempts",
        "1",
        "--wait",
    ]))
    .await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAILED"), "{text}");
    assert!(text.contains("kaputt"), "{text}");
    // The worker's log says what happened to the task, with the command's
    // stderr.
    let mut worker = worker;
    let stderr = worker.0.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let logged = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("task failed") {
                return line;
            }
        }
        panic!("the worker exited");
    })
    .await
    .expect("the task's failure is logged");
    for needle in [
        "ticket_id=",
        "attempt=1",
        "exit status: 3",
        "kaputt",
        "elapsed=",
    ] {
        assert!(logged.contains(needle), "{needle}: {logged}");
    }
    drop(worker);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_submit_without_a_body_flag_is_refused_before_sending() {
    // No gateway needed: the CLI refuses before it connects.
    let output = cli("http://127.0.0.1:9")
        .args(["submit", "upper"])
        .output()
        .await
        .expect("the CLI runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for flag in ["--json", "--file", "--data", "--empty"] {
        assert!(stderr.contains(flag), "{flag} is offered: {stderr}");
    }
}

#[tokio::test]
async fn a_worker_logs_plainly_to_a_pipe_naming_the_gateway_it_cannot_reach() {
    use tokio::io::AsyncBufReadExt as _;
    // Nothing listens on port 9 of loopback: the worker keeps retrying and
    // says so on stderr, which is a pipe here.
    let mut worker = cli("http://127.0.0.1:9")
        .args(["work", "--queue", "q", "--", "true"])
        .env("RUST_LOG", "warn")
        .env_remove("NO_COLOR")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the CLI runs");
    let mut lines = tokio::io::BufReader::new(worker.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("cannot connect") {
                return line;
            }
        }
        panic!("the worker exited");
    })
    .await
    .expect("a connect warning");
    worker.start_kill().unwrap();
    assert!(!line.contains('\u{1b}'), "no colour in a pipe: {line:?}");
    assert!(line.contains("127.0.0.1:9"), "names the gateway: {line}");
    let refused = line.matches("refused").count();
    assert!(refused <= 1, "the cause is said once: {line}");
}

#[tokio::test]
async fn https_against_a_plaintext_gateway_says_so() {
    let (running, url) = gateway().await;
    let https = url.replace("http://", "https://");
    let output = tokio::time::timeout(Duration::from_secs(30), cli(&https).args(["list"]).output())
        .await
        .expect("the CLI finishes")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not speak TLS on that port"),
        "{stderr}"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_needs_no_key_and_says_serving() {
    // A gateway with keys: `list` without one is refused, `health` is not
    // (what compose's health check and Kubernetes probes rely on).
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"admin\"\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = asyncgate_server::Config {
        store: asyncgate_server::config::StoreConfig::Memory,
        keys: Some(keys),
        insecure: true,
        ..asyncgate_server::Config::default()
    };
    let running = asyncgate_server::start_on(config, listener).await.unwrap();

    let (code, _) = run(cli(&url).args(["list", "--page-size", "1"])).await;
    assert_eq!(code, 2, "list needs a key");
    let (code, out) = run(cli(&url).arg("health")).await;
    assert_eq!((code, out.as_str()), (0, "SERVING\n"));
    let (code, out) = run(cli(&url).args([
        "--output",
        "json",
        "health",
        "--service",
        "asyncgate.v1.Workers",
    ]))
    .await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!({"status": "SERVING"})
    );
    let (code, _) = run(cli(&url).args(["health", "--service", "no.Such"])).await;
    assert_eq!(code, 2, "an unknown service is an error, not NOT_SERVING");
    running.shutdown().await.unwrap();
}
