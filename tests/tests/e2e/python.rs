//! The Python examples (`examples/python`) against a real gateway: their
//! stubs are generated from `proto/` into a temporary directory by the
//! example's own `generate.sh`, the worker runs as a child process serving a
//! queue, and the client's printed events and results are checked, then the
//! same tickets through the Rust client. `scripts/test.sh` installs grpcio and
//! grpcio-tools from PyPI when they are missing.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use asyncgate_client::{Submit, pb};
use asyncgate_server::auth::digest_hex;
use asyncgate_tests::{TestGateway, as_json, fast_config, finished, state};
use tokio::process::{Child, Command};

/// Far above what any step needs (a Python start is a fraction of a second).
const PATIENCE: Duration = Duration::from_secs(60);

/// The examples with freshly generated stubs; logs of the children go to
/// the same temporary directory.
struct Examples {
    dir: PathBuf,
    stubs: tempfile::TempDir,
}

impl Examples {
    async fn generate() -> Examples {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python");
        let stubs = tempfile::tempdir().expect("temp dir");
        let output = Command::new("bash")
            .arg(dir.join("generate.sh"))
            .arg(stubs.path())
            .output()
            .await
            .expect("bash runs");
        assert!(
            output.status.success(),
            "generate.sh failed (scripts/test.sh installs grpcio and grpcio-tools): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Examples { dir, stubs }
    }

    /// `python3 -u SCRIPT ARGS…` with the stubs importable, killed when the
    /// handle is dropped (a failed assertion leaves no process behind).
    fn python(&self, script: &str, args: &[&str]) -> Command {
        let mut command = Command::new("python3");
        command
            .arg("-u")
            .arg(self.dir.join(script))
            .args(args)
            .env("PYTHONPATH", self.stubs.path())
            .env_remove("ASYNCGATE_API_KEY")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Starts the worker; its output goes to `worker.log` (see [`Self::worker_log`]).
    fn worker(&self, args: &[&str]) -> Child {
        let log = std::fs::File::create(self.stubs.path().join("worker.log")).expect("log file");
        let log2 = log.try_clone().expect("log file");
        self.python("worker.py", args)
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("python3 runs worker.py")
    }

    fn worker_log(&self) -> String {
        std::fs::read_to_string(self.stubs.path().join("worker.log")).unwrap_or_default()
    }

    /// Runs the client to its end.
    async fn client(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let child = self
            .python("client.py", args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs client.py");
        tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "client.py did not finish; worker log:\n{}",
                    self.worker_log()
                )
            })
            .expect("client.py runs")
    }
}

/// One `result <id> <STATE> <result or error>` line of the client.
#[derive(Debug)]
struct Finished {
    id: String,
    state: String,
    outcome: String,
}

/// The client's results, asserting that it exited 0 (every ticket SUCCEEDED).
fn results(output: &Output, examples: &Examples) -> (String, Vec<Finished>) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "client.py: {}\nstdout:\n{stdout}\nstderr:\n{}\nworker log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        examples.worker_log()
    );
    let finished = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("result "))
        .map(|rest| {
            let mut parts = rest.splitn(3, ' ');
            let mut next = || parts.next().unwrap_or_default().to_owned();
            Finished {
                id: next(),
                state: next(),
                outcome: next(),
            }
        })
        .collect();
    (stdout, finished)
}

/// Sends SIGTERM (by the child's pid) and expects the worker to drain and
/// exit 0; kills it by its handle if it does not.
async fn stop_gracefully(mut worker: Child, examples: &Examples) {
    let pid = worker.id().expect("the worker is running").to_string();
    let signalled = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(signalled.success());
    match tokio::time::timeout(PATIENCE, worker.wait()).await {
        Ok(status) => assert!(
            status.expect("wait").success(),
            "worker.py did not exit cleanly:\n{}",
            examples.worker_log()
        ),
        Err(_) => {
            worker.kill().await.expect("kill the worker");
            panic!("worker.py did not drain:\n{}", examples.worker_log());
        }
    }
    assert!(examples.worker_log().contains("stopped"));
}

#[tokio::test]
async fn python_worker_serves_python_client_submit_watch_and_execute() {
    let gateway = TestGateway::start().await;
    let examples = Examples::generate().await;
    let target = gateway.addr().to_string();
    // Started before or after the submits makes no difference: tickets wait
    // in their queue until a worker connects.
    let worker = examples.worker(&["--target", &target, "--queue", "py-upper"]);

    let output = examples
        .client(
            &["--target", &target, "--queue", "py-upper", "hello", "world"],
            &[],
        )
        .await;
    let (stdout, watched) = results(&output, &examples);
    let submits = stdout.lines().filter(|l| l.starts_with("submit ")).count();
    assert_eq!(submits, 2, "{stdout}");
    assert!(stdout.contains(" SNAPSHOT "), "{stdout}");
    let outcomes: Vec<_> = watched
        .iter()
        .map(|f| (f.state.as_str(), f.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [("SUCCEEDED", "\"HELLO\""), ("SUCCEEDED", "\"WORLD\"")],
        "{stdout}"
    );

    let output = examples
        .client(
            &[
                "--target",
                &target,
                "--queue",
                "py-upper",
                "--execute",
                "in one call",
            ],
            &[],
        )
        .await;
    let (stdout, executed) = results(&output, &examples);
    assert_eq!(executed.len(), 1, "{stdout}");
    assert_eq!(executed[0].outcome, "\"IN ONE CALL\"", "{stdout}");

    // The gateway holds what the Python worker produced.
    let client = gateway.client().await;
    for (finished, expected) in
        watched
            .iter()
            .chain(&executed)
            .zip(["HELLO", "WORLD", "IN ONE CALL"])
    {
        let ticket = client.get(&finished.id, None).await.expect("GetTicket");
        assert_eq!(state(&ticket), pb::TicketState::Succeeded);
        assert_eq!(ticket.queue, "py-upper");
        assert_eq!(as_json(ticket.result.as_ref()), expected);
        // The progress it reported stays on the ticket (whether a watcher
        // saw it as its own event depends on when the watch began).
        let progress = ticket.progress.expect("the worker reported progress");
        assert_eq!(
            (progress.percent, progress.message.as_str()),
            (50, "upper-casing")
        );
    }

    // Anything but text is refused, as a non-retryable failure.
    let refused = client
        .submit(Submit::new("py-upper").json(serde_json::json!({"n": 1})))
        .await
        .expect("Submit");
    let refused = finished(&client, &refused.id).await;
    assert_eq!(state(&refused), pb::TicketState::Failed, "{refused:?}");
    let error = refused.error.expect("an error");
    assert_eq!(error.code, tonic::Code::InvalidArgument as i32);
    assert!(!error.retryable);
    assert_eq!(refused.attempt, 1, "not retried");

    // The deepest JSON the gateway accepts (objects cost the most decoder
    // levels) reaches grpcio inside its Task and decodes: the worker answers
    // it (refusing it as not text) instead of losing its stream.
    let deepest = asyncgate_tests::nested_json(asyncgate_client::payload::MAX_JSON_DEPTH, true);
    let deep = client
        .submit(Submit::new("py-upper").json(deepest))
        .await
        .expect("the deepest accepted JSON is accepted");
    let deep = finished(&client, &deep.id).await;
    assert_eq!(state(&deep), pb::TicketState::Failed, "{deep:?}");
    let error = deep.error.expect("an error");
    assert!(error.message.contains("expected text"), "{error:?}");
    assert_eq!(deep.attempt, 1, "the worker kept its stream: no lost lease");

    stop_gracefully(worker, &examples).await;
}

#[tokio::test]
async fn python_examples_present_api_keys() {
    const CLIENT: &str = "python-client-key";
    const WORKER: &str = "python-worker-key";
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nname = \"app\"\nsha256 = \"{}\"\nrole = \"client\"\n\n\
             [[keys]]\nname = \"py-workers\"\nsha256 = \"{}\"\nrole = \"worker\"\nqueues = [\"py-upper\"]\n",
            digest_hex(CLIENT),
            digest_hex(WORKER)
        ),
    )
    .expect("write keys");
    let gateway = TestGateway::start_with(asyncgate_server::Config {
        keys: Some(keys),
        ..fast_config()
    })
    .await;
    let examples = Examples::generate().await;
    let target = gateway.addr().to_string();
    let mut worker = examples.worker(&[
        "--target",
        &target,
        "--queue",
        "py-upper",
        "--api-key",
        WORKER,
    ]);

    let anonymous = examples
        .client(&["--target", &target, "--queue", "py-upper", "x"], &[])
        .await;
    assert!(!anonymous.status.success());
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");

    // The client takes its key from the environment, as the CLI does.
    let output = examples
        .client(
            &["--target", &target, "--queue", "py-upper", "keyed"],
            &[("ASYNCGATE_API_KEY", CLIENT)],
        )
        .await;
    let (stdout, done) = results(&output, &examples);
    assert_eq!(done.len(), 1, "{stdout}");
    assert_eq!(done[0].outcome, "\"KEYED\"", "{stdout}");
    let client = gateway
        .client()
        .await
        .with_api_key(CLIENT)
        .expect("valid key");
    let ticket = client.get(&done[0].id, None).await.expect("GetTicket");
    assert_eq!(as_json(ticket.result.as_ref()), "KEYED");

    worker.kill().await.expect("kill the worker");
}
