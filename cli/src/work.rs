//! `asyncgate work -- CMD ARGS...`: a worker that runs a command per task.
//!
//! The payload ⇄ stdin/stdout mapping is two pure functions ([`stdin_for`],
//! [`result_for`]) so the rules are unit-tested without spawning anything;
//! the rules themselves are documented on the `work` subcommand in `cli.rs`.

use std::io;
use std::process::{ExitCode, ExitStatus, Stdio};

use anyhow::Context as _;
use async_trait::async_trait;
use asyncgate_client::payload::{self, TEXT_PLAIN_UTF8};
use asyncgate_client::pb;
use asyncgate_client::worker::{Handler, TaskContext, TaskError, Worker};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::WorkArgs;

/// How much of the command's stderr a failure message keeps (the end).
const STDERR_TAIL: usize = 1024;

pub(crate) async fn run(
    server: &str,
    tls: Option<asyncgate_client::Tls>,
    api_key: Option<&str>,
    compression: Option<asyncgate_client::CompressionEncoding>,
    args: WorkArgs,
) -> anyhow::Result<ExitCode> {
    let Some((program, program_args)) = args.command.split_first() else {
        anyhow::bail!("no command given after --");
    };
    let handler = CommandHandler {
        program: program.clone(),
        args: program_args.to_vec(),
    };
    let mut builder = Worker::builder(server)
        .queues(args.queues)
        .max_in_flight(args.concurrency)
        .handler(handler);
    if let Some(name) = args.name {
        builder = builder.name(name);
    }
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    if let Some(key) = api_key {
        builder = builder.api_key(key)?;
    }
    if let Some(encoding) = compression {
        builder = builder.compression(encoding);
    }
    let handle = builder.build()?.spawn();

    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::select! {
        () = handle.stopped() => {
            // An operator's drain (Admin.DrainWorker) stops it gracefully.
            if handle.stopping() {
                tracing::info!("drained by the gateway's operator; stopped");
                handle.join().await;
                return Ok(ExitCode::SUCCESS);
            }
            anyhow::bail!("the worker stopped unexpectedly")
        }
        () = next_signal(&mut terminate) => {}
    }
    tracing::info!("draining: finishing in-flight tasks (signal again to stop at once)");
    handle.shutdown();
    tokio::select! {
        () = handle.stopped() => {}
        () = next_signal(&mut terminate) => {
            tracing::warn!("second signal: stopping at once");
            handle.abort();
        }
    }
    handle.join().await;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT or SIGTERM.
async fn next_signal(terminate: &mut tokio::signal::unix::Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Runs `program args...` once per task.
struct CommandHandler {
    program: String,
    args: Vec<String>,
}

#[async_trait]
impl Handler for CommandHandler {
    async fn handle(&self, task: TaskContext) -> Result<pb::Payload, TaskError> {
        let input = stdin_for(task.payload());
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Dropping the child (on cancel) kills it.
            .kill_on_drop(true)
            .env("ASYNCGATE_TICKET_ID", task.ticket_id())
            .env("ASYNCGATE_LEASE_ID", task.lease_id())
            .env("ASYNCGATE_QUEUE", task.queue())
            .env("ASYNCGATE_ATTEMPT", task.attempt().to_string())
            .env("ASYNCGATE_MAX_ATTEMPTS", task.max_attempts().to_string())
            .env("ASYNCGATE_CONTENT_TYPE", &input.content_type);
        let started = tokio::time::Instant::now();
        let (ticket_id, attempt) = (task.ticket_id().to_owned(), task.attempt());
        let child = command.spawn().map_err(|err| {
            tracing::warn!(%ticket_id, attempt, error = %err, program = ?self.program, "cannot start the command");
            TaskError::retryable(format!("cannot start {:?}: {err}", self.program))
        })?;
        let finished = tokio::select! {
            finished = run_child(child, input.bytes) => finished,
            () = task.cancelled() => {
                // `run_child`'s future, and with it the child, is dropped
                // here: kill_on_drop sends SIGKILL.
                let reason = task.cancel_reason().map(|(reason, _)| reason.as_str_name()).unwrap_or("worker stopping");
                tracing::info!(%ticket_id, attempt, reason, elapsed = ?started.elapsed(), "task cancelled; the command was killed");
                return Err(TaskError::new(tonic::Code::Cancelled, format!("cancelled ({reason}); the command was killed"), false));
            }
        };
        let (status, stdout, stderr_tail) = finished
            .map_err(|err| TaskError::retryable(format!("talking to {:?}: {err}", self.program)))?;
        let elapsed = started.elapsed();
        if status.success() {
            tracing::info!(%ticket_id, attempt, %status, ?elapsed, "task done");
            Ok(result_for(input.json_string, stdout))
        } else {
            let message = failure_message(&stderr_tail, status);
            // The command's own words, for whoever reads the worker's log.
            tracing::info!(%ticket_id, attempt, %status, ?elapsed, stderr = %String::from_utf8_lossy(&stderr_tail).trim_end(), "task failed");
            Err(TaskError::retryable(message))
        }
    }
}

/// Feeds stdin while draining stdout and stderr (all at once, so a command
/// that writes before it has read everything cannot deadlock), then waits.
async fn run_child(mut child: Child, input: Vec<u8>) -> io::Result<(ExitStatus, Vec<u8>, Vec<u8>)> {
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let write = async move {
        let Some(mut stdin) = stdin else {
            return Ok(());
        };
        match stdin.write_all(&input).await {
            // The command need not read its input.
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
        // Dropping stdin here closes it: the command sees end-of-input.
    };
    let read_out = async move {
        let mut out = Vec::new();
        if let Some(mut stdout) = stdout {
            stdout.read_to_end(&mut out).await?;
        }
        Ok::<_, io::Error>(out)
    };
    let read_err = async move {
        match stderr {
            Some(stderr) => read_tail(stderr, STDERR_TAIL).await,
            None => Ok(Vec::new()),
        }
    };
    let (written, out, err) = tokio::join!(write, read_out, read_err);
    let status = child.wait().await?;
    written?;
    Ok((status, out?, err?))
}

/// Reads `reader` to the end, keeping only its last `limit` bytes.
async fn read_tail(mut reader: impl AsyncRead + Unpin, limit: usize) -> io::Result<Vec<u8>> {
    let mut tail = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 2 * limit {
            tail.drain(..tail.len() - limit);
        }
    }
    if tail.len() > limit {
        tail.drain(..tail.len() - limit);
    }
    Ok(tail)
}

/// What the command gets on stdin.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stdin {
    pub(crate) bytes: Vec<u8>,
    /// The payload was a JSON string (written raw, without quotes).
    pub(crate) json_string: bool,
    /// For ASYNCGATE_CONTENT_TYPE.
    pub(crate) content_type: String,
}

/// A JSON string as its raw text (no quotes, nothing appended), other JSON as
/// compact JSON text, binary as is, no payload as empty input.
pub(crate) fn stdin_for(p: &pb::Payload) -> Stdin {
    if let Some(value) = payload::to_json(p) {
        let (bytes, json_string) = match value {
            serde_json::Value::String(text) => (text.into_bytes(), true),
            // Serialising a `Value` cannot fail.
            other => (serde_json::to_vec(&other).unwrap_or_default(), false),
        };
        return Stdin {
            bytes,
            json_string,
            content_type: "application/json".to_owned(),
        };
    }
    Stdin {
        bytes: payload::as_binary(p)
            .map(|b| b.to_vec())
            .unwrap_or_default(),
        json_string: false,
        content_type: p.content_type.clone(),
    }
}

/// The result for the command's stdout: JSON if it parses as JSON; a JSON
/// string if the input was one and the output is UTF-8; else binary text or
/// octets.
pub(crate) fn result_for(input_was_json_string: bool, stdout: Vec<u8>) -> pb::Payload {
    let Ok(text) = std::str::from_utf8(&stdout) else {
        return payload::binary(stdout, "application/octet-stream");
    };
    let trimmed = text.trim();
    let parsed = (!trimmed.is_empty())
        .then(|| serde_json::from_str::<serde_json::Value>(trimmed).ok())
        .flatten();
    if let Some(value) = parsed {
        return payload::json(value);
    }
    if input_was_json_string {
        let text = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(text);
        return payload::json(serde_json::Value::String(text.to_owned()));
    }
    payload::binary(stdout, TEXT_PLAIN_UTF8)
}

/// The stderr tail (from a character boundary) and the exit status.
fn failure_message(stderr_tail: &[u8], status: ExitStatus) -> String {
    // The tail may start inside a multi-byte character: skip to the next one.
    let start = stderr_tail
        .iter()
        .position(|b| (b & 0b1100_0000) != 0b1000_0000)
        .unwrap_or(stderr_tail.len());
    let stderr = String::from_utf8_lossy(&stderr_tail[start..]);
    let stderr = stderr.trim_end();
    if stderr.is_empty() {
        status.to_string()
    } else {
        format!("{stderr}\n{status}")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use bytes::Bytes;
    use serde_json::json;

    use super::*;

    #[test]
    fn json_string_goes_in_raw() {
        let input = stdin_for(&payload::json(json!("hello")));
        assert_eq!(input.bytes, b"hello");
        assert!(input.json_string);
        assert_eq!(input.content_type, "application/json");
    }

    #[test]
    fn other_json_goes_in_as_json_text() {
        let input = stdin_for(&payload::json(json!({"n": 1, "s": "x"})));
        assert_eq!(input.bytes, br#"{"n":1,"s":"x"}"#);
        assert!(!input.json_string);
        let input = stdin_for(&payload::json(json!(42)));
        assert_eq!(input.bytes, b"42");
    }

    #[test]
    fn binary_goes_in_untouched() {
        let input = stdin_for(&payload::binary(
            Bytes::from_static(b"\x00raw"),
            "application/x",
        ));
        assert_eq!(input.bytes, b"\x00raw");
        assert!(!input.json_string);
        assert_eq!(input.content_type, "application/x");
        assert!(stdin_for(&pb::Payload::default()).bytes.is_empty());
    }

    #[test]
    fn upper_of_a_json_string_is_a_json_string() {
        // `tr a-z A-Z` on "hello" prints HELLO (no newline); `echo` adds one.
        assert_eq!(
            payload::to_json(&result_for(true, b"HELLO".to_vec())),
            Some(json!("HELLO"))
        );
        assert_eq!(
            payload::to_json(&result_for(true, b"HELLO\n".to_vec())),
            Some(json!("HELLO"))
        );
        // Only one newline is removed.
        assert_eq!(
            payload::to_json(&result_for(true, b"a\n\n".to_vec())),
            Some(json!("a\n"))
        );
        assert_eq!(
            payload::to_json(&result_for(true, Vec::new())),
            Some(json!(""))
        );
    }

    #[test]
    fn json_output_wins() {
        assert_eq!(
            payload::to_json(&result_for(false, b" {\"a\": 1}\n".to_vec())),
            Some(json!({"a": 1}))
        );
        // Even for a string input: "42" that comes back as 42 is a number.
        assert_eq!(
            payload::to_json(&result_for(true, b"42\n".to_vec())),
            Some(json!(42))
        );
        assert_eq!(
            payload::to_json(&result_for(true, b"\"quoted\"".to_vec())),
            Some(json!("quoted"))
        );
    }

    #[test]
    fn other_output_is_binary() {
        let text = result_for(false, b"plain words\n".to_vec());
        assert_eq!(text.content_type, TEXT_PLAIN_UTF8);
        assert_eq!(
            payload::as_binary(&text).map(|b| b.as_ref()),
            Some(&b"plain words\n"[..])
        );
        let octets = result_for(true, vec![0xff, 0xfe]);
        assert_eq!(octets.content_type, "application/octet-stream");
        assert_eq!(result_for(false, Vec::new()).content_type, TEXT_PLAIN_UTF8);
    }

    #[test]
    fn failure_message_keeps_the_stderr_tail_and_status() {
        let status = ExitStatus::from_raw(3 << 8);
        assert_eq!(failure_message(b"boom\n", status), "boom\nexit status: 3");
        assert_eq!(failure_message(b"", status), "exit status: 3");
        // A tail cut inside "é" (0xc3 0xa9) starts at the next character.
        assert_eq!(failure_message(&[0xa9, b'x'], status), "x\nexit status: 3");
    }

    #[tokio::test]
    async fn read_tail_keeps_the_end() -> io::Result<()> {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let tail = read_tail(&data[..], 1024).await?;
        assert_eq!(tail, data[data.len() - 1024..]);
        Ok(())
    }

    #[tokio::test]
    async fn run_child_pipes_stdin_to_stdout() -> io::Result<()> {
        let child = Command::new("tr")
            .args(["a-z", "A-Z"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (status, out, err) = run_child(child, b"hello".to_vec()).await?;
        assert!(status.success());
        assert_eq!(
            payload::to_json(&result_for(true, out)),
            Some(json!("HELLO"))
        );
        assert!(err.is_empty());

        let child = Command::new("sh")
            .args(["-c", "echo oops >&2; exit 4"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (status, _, err) = run_child(child, Vec::new()).await?;
        assert_eq!(failure_message(&err, status), "oops\nexit status: 4");
        Ok(())
    }
}
