//! The README's tour, run for real: an in-process gateway on an ephemeral
//! loopback port, `asyncgate work -- tr a-z A-Z` as a child process, and the
//! CLI submitting and waiting, in text and JSON output; and what the CLI
//! says on stderr while it waits (the waiting reason, progress), read from a
//! pipe as a script would see it.

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

mod common;
use common::{cli, gateway};

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
async fn sizes_take_units_and_a_bad_unit_is_refused_naming_the_flag() {
    // No gateway needed: the CLI refuses before it connects.
    let output = cli("http://127.0.0.1:9")
        .args(["bench", "--payload-size", "4XB"])
        .output()
        .await
        .expect("the CLI runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--payload-size"), "{stderr}");
    assert!(stderr.contains("\"4XB\" is not a size"), "{stderr}");
    assert!(stderr.contains("KiB, MiB, GiB"), "{stderr}");
}

#[tokio::test]
async fn a_lenient_duration_is_refused_with_the_canonical_forms() {
    // No gateway needed: the CLI refuses before it connects.
    let output = cli("http://127.0.0.1:9")
        .args(["submit", "q", "--data", "x", "--timeout", "5 seconds"])
        .output()
        .await
        .expect("the CLI runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--timeout"), "{stderr}");
    assert!(
        stderr.contains("\"5 seconds\" is not a duration"),
        "{stderr}"
    );
    assert!(stderr.contains("e.g. 500ms, 1.5s, 2m, 1h30m"), "{stderr}");
}

/// The lines of `asyncgate ARGS --help`.
async fn help(args: &[&str]) -> String {
    let output = cli("http://127.0.0.1:9")
        .args(args)
        .arg("--help")
        .output()
        .await
        .expect("the CLI runs");
    assert!(output.status.success(), "{args:?} --help");
    String::from_utf8(output.stdout).unwrap()
}

/// The flags (`--name`) listed under `heading` (up to the next heading).
fn flags_under(help: &str, heading: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| *line != heading)
        .skip(1)
        .take_while(|line| line.is_empty() || line.starts_with(' '))
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix("-h, ").unwrap_or(line);
            let line = line.strip_prefix("-V, ").unwrap_or(line);
            line.starts_with("--")
                .then(|| line.split([' ', '\t']).next().unwrap_or(line).to_owned())
        })
        .collect()
}

#[tokio::test]
async fn global_flags_have_their_own_heading_after_each_subcommands_flags() {
    const GLOBAL: [&str; 7] = [
        "--server",
        "--api-key",
        "--ca-cert",
        "--client-cert",
        "--client-key",
        "--compression",
        "--output",
    ];
    let submit = help(&["submit"]).await;
    let own = submit.find("\nOptions:\n").expect("an Options heading");
    let global = submit
        .find("\nGlobal options:\n")
        .expect("a Global options heading");
    assert!(
        own < global,
        "the subcommand's own flags come first:\n{submit}"
    );
    assert_eq!(flags_under(&submit, "Global options:"), GLOBAL, "{submit}");
    let own = flags_under(&submit, "Options:");
    assert!(own.contains(&"--wait".to_owned()), "{own:?}");
    assert!(
        GLOBAL.iter().all(|g| !own.contains(&g.to_string())),
        "{own:?}"
    );

    for command in [
        &[][..],
        &["get"],
        &["watch"],
        &["cancel"],
        &["list"],
        &["work"],
        &["bench"],
    ] {
        let text = help(command).await;
        assert_eq!(
            flags_under(&text, "Global options:"),
            GLOBAL,
            "{command:?}:\n{text}"
        );
        let own = flags_under(&text, "Options:");
        assert!(
            GLOBAL.iter().all(|g| !own.contains(&g.to_string())),
            "{command:?}: {own:?}"
        );
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

/// The stderr of a child, line by line.
type StderrLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>;

/// Reads `lines` until one contains `needle` (30 s at most).
async fn line_with(lines: &mut StderrLines, needle: &str) -> String {
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("stderr ended before a line with {needle:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no line with {needle:?} on stderr within 30s"))
}

/// Waits for a child started with piped stdout; its exit code and stdout.
async fn finish(child: Child) -> (i32, String) {
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the CLI finishes")
        .unwrap();
    (
        output.status.code().expect("an exit code"),
        String::from_utf8(output.stdout).unwrap(),
    )
}

#[tokio::test]
async fn a_wait_on_an_unserved_queue_says_why_on_stderr_and_ends_once_served() {
    use tokio::io::AsyncBufReadExt as _;
    let (running, url) = gateway().await;
    let mut waiting = cli(&url)
        .args(["submit", "unserved", "--json", "\"late\"", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(waiting.stderr.take().unwrap()).lines();
    // Promptly: the reason comes with the submit's answer.
    let line = line_with(&mut stderr, "no worker").await;
    let id = line
        .strip_prefix("ticket ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("names the ticket: {line}"))
        .to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{line}");
    assert!(line.contains("PENDING"), "{line}");
    assert!(line.contains("\"unserved\""), "names the queue: {line}");

    let worker = KillOnDrop(
        cli(&url)
            .args(["work", "--queue", "unserved", "--", "tr", "a-z", "A-Z"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (code, stdout) = finish(waiting).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.starts_with(&id),
        "the result is the ticket: {stdout}"
    );
    assert!(stdout.contains("SUCCEEDED"), "{stdout}");
    assert!(stdout.contains("\"LATE\""), "{stdout}");
    assert!(
        !stdout.contains("no worker"),
        "stdout holds only the result: {stdout}"
    );
    drop(worker);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_watch_shows_the_workers_progress_on_stderr() {
    use asyncgate_client::worker::{TaskContext, TaskError, Worker, handler_fn};
    use tokio::io::AsyncBufReadExt as _;
    let (running, url) = gateway().await;
    // The task reports progress, then holds until the test has seen it on
    // the CLI's stderr: no race with the result, no sleep.
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let worker = Worker::builder(url.as_str())
        .queue("slow")
        .handler(handler_fn(move |task: TaskContext| {
            let gate = gate.clone();
            async move {
                task.progress(50, "halfway").await;
                gate.notified().await;
                Ok::<_, TaskError>(task.payload().clone())
            }
        }))
        .build()
        .unwrap()
        .spawn();

    let mut watching = cli(&url)
        .args([
            "--output", "json", "submit", "slow", "--json", "\"x\"", "--watch",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(watching.stderr.take().unwrap()).lines();
    let line = line_with(&mut stderr, "progress").await;
    assert!(line.ends_with("progress 50%: halfway"), "{line}");
    assert!(!line.contains('\u{1b}'), "plain text in a pipe: {line:?}");
    release.notify_one();

    let (code, stdout) = finish(watching).await;
    assert_eq!(code, 0, "{stdout}");
    // Stdout is unchanged: the events, one JSON document per line.
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON event"))
        .collect();
    let last = events.last().expect("events");
    assert_eq!(last["ticket"]["state"], "TICKET_STATE_SUCCEEDED");
    worker.shutdown();
    worker.join().await;
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn bench_submit_against_a_gateway_leaves_no_pending_ticket_behind() {
    let (running, url) = gateway().await;
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        cli(&url)
            .args([
                "bench",
                "--mode",
                "submit",
                "--duration",
                "1s",
                "--warmup",
                "0s",
                "--concurrency",
                "4",
                "--quiet",
            ])
            .output(),
    )
    .await
    .expect("the bench finishes")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("bench: cleaned up queue bench-submit-"),
        "{stderr}"
    );

    let client = asyncgate_client::Client::connect(url.as_str())
        .await
        .unwrap();
    let list = |states: Vec<asyncgate_client::pb::TicketState>| {
        let request = asyncgate_client::pb::ListTicketsRequest {
            states: states.into_iter().map(|s| s as i32).collect(),
            page_size: 1000,
            ..Default::default()
        };
        let client = client.clone();
        async move { client.list(request).await.unwrap().tickets }
    };
    use asyncgate_client::pb::TicketState;
    let pending = list(vec![TicketState::Pending, TicketState::Running]).await;
    assert!(pending.is_empty(), "{} left pending", pending.len());
    let all = list(Vec::new()).await;
    assert!(!all.is_empty(), "the bench submitted tickets");
    for ticket in &all {
        assert_eq!(ticket.state(), TicketState::Cancelled, "{ticket:?}");
        assert!(
            ticket.deadline.is_some(),
            "each carries a timeout: {ticket:?}"
        );
    }
    // The report counts them all (one page holds them at this rate).
    if all.len() < 1000 {
        assert!(
            stderr.contains(&format!("cancelled {0} of the {0} tickets", all.len())),
            "{stderr}"
        );
    }
    running.shutdown().await.unwrap();
}

/// An operator's round with the real CLI: the queues table, a pause that
/// shows in `queue show` (text and JSON), a purge, a resume; and the exit
/// status and stderr of a queue that does not exist.
#[tokio::test]
async fn an_operator_lists_pauses_purges_and_resumes_a_queue() {
    let (running, url) = gateway().await;
    for _ in 0..3 {
        let (code, out) = run(cli(&url).args(["submit", "reports", "--empty"])).await;
        assert_eq!(code, 0, "{out}");
    }
    run(cli(&url).args(["submit", "emails", "--empty"])).await;

    let (code, table) = run(cli(&url).args(["queues"])).await;
    assert_eq!(code, 0, "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("QUEUE") && lines[0].contains("PENDING"),
        "{table}"
    );
    let reports = lines
        .iter()
        .find(|l| l.starts_with("reports"))
        .expect("a row for reports");
    let cells: Vec<&str> = reports.split_whitespace().collect();
    assert_eq!(cells[1], "3", "pending: {table}");
    assert_eq!(cells.last(), Some(&"no"), "paused: {table}");

    let (code, out) =
        run(cli(&url).args(["queue", "pause", "reports", "--reason", "quarter close"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("paused: by \"anonymous\""), "{out}");
    assert!(out.contains("quarter close"), "{out}");
    // Nothing ran: the windows say so rather than print zero latencies.
    assert!(
        out.contains("last minute: 0 succeeded, 0 failed") && out.contains("run time (5 min): -"),
        "{out}"
    );
    let (_, json) = run(cli(&url).args(["--output", "json", "queue", "show", "reports"])).await;
    let shown: serde_json::Value = serde_json::from_str(json.trim()).expect(&json);
    assert_eq!(shown["pause"]["reason"], "quarter close");
    assert_eq!(
        shown["counts"]["pending"], "3",
        "64-bit counts are JSON strings"
    );

    let (code, out) = run(cli(&url).args(["queue", "purge", "reports"])).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), "cancelled 3 tickets of queue \"reports\"");
    let (code, out) = run(cli(&url).args(["queue", "resume", "reports"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("paused: no"), "{out}");
    assert!(
        out.contains("0 pending") && out.contains("3 cancelled"),
        "{out}"
    );

    let output = cli(&url)
        .args(["queue", "show", "nope"])
        .output()
        .await
        .unwrap();
    assert_ne!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("never used"), "{stderr}");
    running.shutdown().await.unwrap();
}

/// `queue target`: a queue worked by an existing gRPC method (the
/// gateway's own health check, an empty request) with no worker; shown by
/// `queue show`; taken off with `--clear`; a host off the allowlist is
/// refused on stderr with a non-zero exit.
#[tokio::test]
async fn an_operator_puts_a_target_on_a_queue_and_takes_it_off() {
    let mut config = asyncgate_server::Config::default();
    config.callbacks.allow = vec![asyncgate_server::callbacks::parse_allowed("127.0.0.1").unwrap()];
    let (running, url) = common::gateway_with(config).await;
    let host = url.trim_start_matches("http://");
    let target = format!("grpc://{host}/grpc.health.v1.Health/Check?max_concurrent=2");
    let (code, out) = run(cli(&url).args(["queue", "target", "health", &target])).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("target: {target} (set by anonymous)")),
        "{out}"
    );
    let (code, out) = run(cli(&url).args(["submit", "health", "--empty", "--wait"])).await;
    assert_eq!(code, 0, "the target answered: {out}");
    assert!(out.contains("SUCCEEDED"), "{out}");
    let (code, out) = run(cli(&url).args(["queue", "target", "health", "--clear"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("target:"), "{out}");

    let output = cli(&url)
        .args(["queue", "target", "health", "grpc://10.1.2.3:50051/a.B/C"])
        .output()
        .await
        .unwrap();
    assert_ne!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--callback-allow"), "{stderr}");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn list_filters_by_metadata_and_time_and_pages_newest_first() {
    let (running, url) = gateway().await;
    let mut ids = Vec::new();
    for team in ["x", "y", "x", "x"] {
        let metadata = format!("team={team}");
        let (code, json) = run(cli(&url).args([
            "--output",
            "json",
            "submit",
            "listed",
            "--empty",
            "--metadata",
            &metadata,
        ]))
        .await;
        assert_eq!(code, 0, "{json}");
        let ticket: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        ids.push(ticket["id"].as_str().unwrap().to_owned());
    }
    let listed = |page: &serde_json::Value| -> Vec<String> {
        page["tickets"]
            .as_array()
            .map(|tickets| {
                tickets
                    .iter()
                    .map(|t| t["id"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let filters = [
        "list",
        "--queue",
        "listed",
        "--metadata",
        "team=x",
        "--since",
        "1h",
        "--newest-first",
        "--page-size",
        "2",
    ];
    let (code, json) = run(cli(&url).args(["--output", "json"]).args(filters)).await;
    assert_eq!(code, 0, "{json}");
    let first: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(listed(&first), [ids[3].clone(), ids[2].clone()]);
    let token = first["nextPageToken"].as_str().unwrap().to_owned();
    let (code, json) = run(cli(&url)
        .args(["--output", "json"])
        .args(filters)
        .args(["--page-token", &token]))
    .await;
    assert_eq!(code, 0, "{json}");
    let second: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(listed(&second), [ids[0].clone()]);
    assert!(second.get("nextPageToken").is_none(), "{second}");

    // The token of a newest-first listing does not continue an oldest-first one.
    let output = cli(&url)
        .args(["list", "--queue", "listed", "--page-token", &token])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("page_token"), "{stderr}");

    // Text output: one line per ticket; none created before 2000.
    let (code, text) = run(cli(&url).args(["list", "--metadata", "team=y"])).await;
    assert_eq!(code, 0);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with(&format!("{}  listed  PENDING", ids[1])),
        "{text}"
    );
    let (code, text) = run(cli(&url).args(["list", "--before", "2000-01-01T00:00:00Z"])).await;
    assert_eq!((code, text.as_str()), (0, "(no tickets)\n"));
    running.shutdown().await.unwrap();
}

/// Submits an empty ticket to `queue` with the CLI; its id.
async fn submitted_id(url: &str, queue: &str) -> String {
    let (code, out) = run(cli(url).args(["--output", "json", "submit", queue, "--empty"])).await;
    assert_eq!(code, 0, "{out}");
    let ticket: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    ticket["id"].as_str().expect("an id").to_owned()
}

/// An operator's retry and delete with the real CLI: a cancelled ticket
/// retried by id (text), a queue's cancelled tickets in bulk (text and
/// JSON), a finished ticket deleted (JSON); and what a delete of an
/// unfinished ticket and a lookup of a deleted one say on stderr.
#[tokio::test]
async fn an_operator_retries_and_deletes_tickets() {
    let (running, url) = gateway().await;
    let (a, b, c) = (
        submitted_id(&url, "nightly").await,
        submitted_id(&url, "nightly").await,
        submitted_id(&url, "nightly").await,
    );
    for id in [&a, &b] {
        let (code, out) = run(cli(&url).args(["cancel", id])).await;
        assert_eq!(code, 0, "{out}");
    }

    let (code, out) = run(cli(&url).args(["retry", &a])).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!("{a}  nightly  PENDING  attempt 0/")),
        "{out}"
    );
    assert!(
        out.contains("error: "),
        "the last error, for context: {out}"
    );
    let (code, out) =
        run(cli(&url).args(["retry", "--queue", "nightly", "--state", "cancelled"])).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), "retried 1 ticket of queue \"nightly\"");
    run(cli(&url).args(["cancel", &b])).await;
    let (code, out) = run(cli(&url).args([
        "--output",
        "json",
        "retry",
        "--queue",
        "nightly",
        "--state",
        "cancelled,failed",
        "--older-than",
        "0s",
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    let retried: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    assert_eq!(retried["retried"], "1", "{out}");

    let refused = cli(&url).args(["delete", &c]).output().await.unwrap();
    assert_ne!(refused.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("cancel it first"), "{stderr}");
    run(cli(&url).args(["cancel", &c])).await;
    let (code, out) = run(cli(&url).args(["--output", "json", "delete", &c])).await;
    assert_eq!(code, 0, "{out}");
    let deleted: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    let at = deleted["deletedAt"].as_str().expect("deletedAt").to_owned();
    let gone = cli(&url).args(["get", &c]).output().await.unwrap();
    assert_ne!(gone.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(stderr.contains(&at), "says when: {at}: {stderr}");
    let (code, out) = run(cli(&url).args(["delete", &a])).await;
    assert_ne!(code, 0, "a pending ticket: {out}");

    let usage = cli(&url)
        .args(["retry", "--state", "failed"])
        .output()
        .await
        .unwrap();
    assert_eq!(usage.status.code(), Some(2), "an id or --queue is required");
    running.shutdown().await.unwrap();
}
