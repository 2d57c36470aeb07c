//! `asyncgate submit --batch FILE`: one `SubmitRequest` per line, in its
//! proto3 JSON form (as grpcurl takes it), sent in `SubmitBatch` calls of up
//! to [`SUBMIT_BATCH_LIMIT`] requests; one line out per request, in input
//! order: its ticket, or why it was refused or could not be read.
//!
//! The input is read on a thread of its own, a bounded channel ahead of the
//! calls, so a file of any length is held a few batches at a time. A batch
//! the gateway refuses as a whole for its size (over its message limit,
//! which the CLI cannot know) is split in halves and sent again (and later
//! calls start at the size that got through): such a batch was refused
//! before any of it was read, so nothing is stored twice.

use std::io::BufRead as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use asyncgate_client::{Client, ClientError, SUBMIT_BATCH_LIMIT, pb};
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor};
use tokio::sync::mpsc;

use crate::output::Printer;

/// Encoded bytes of requests per call at most (one larger request goes
/// alone): the gateway's default message limit is 4 MiB plus 64 KiB.
const MAX_CALL_BYTES: usize = 4 << 20;

/// Longest line read (a request cannot be larger than the SDK sends).
const MAX_LINE_BYTES: usize = asyncgate_client::MAX_MESSAGE_BYTES;

/// Lines read ahead of the calls.
const READ_AHEAD: usize = 2 * SUBMIT_BATCH_LIMIT;

/// One non-blank input line: its request, or why it is not one.
struct Line {
    /// 1-based, blank lines counted.
    number: u64,
    request: Result<pb::SubmitRequest, String>,
}

/// What became of one line.
type Answer = Result<pb::Ticket, (tonic::Code, String)>;

/// Submits the requests of `path` ("-": stdin); exit code 1 if any line was
/// refused or unreadable.
pub(crate) async fn run(
    client: &Client,
    printer: &Printer,
    path: &Path,
) -> anyhow::Result<ExitCode> {
    let schema = Schema::load()?;
    let input = open(path)?;
    let (tx, mut lines) = mpsc::channel(READ_AHEAD);
    let reader = tokio::task::spawn_blocking(move || read_lines(input, &schema, &tx));
    let mut failed = false;
    // Requests per call: the limit, or fewer once the gateway found a
    // call over its message limit.
    let fits = AtomicUsize::new(SUBMIT_BATCH_LIMIT);
    let mut chunk: Vec<Line> = Vec::new();
    let (mut requests, mut bytes) = (0, 0);
    loop {
        let line = lines.recv().await;
        let full = requests >= fits.load(Ordering::Relaxed)
            || bytes >= MAX_CALL_BYTES
            || chunk.len() >= READ_AHEAD;
        if (line.is_none() || full) && !chunk.is_empty() {
            let chunk = std::mem::take(&mut chunk);
            failed |= send_and_print(client, printer, chunk, &fits).await?;
            (requests, bytes) = (0, 0);
        }
        let Some(line) = line else { break };
        if let Ok(request) = &line.request {
            requests += 1;
            bytes += prost::Message::encoded_len(request);
        }
        chunk.push(line);
    }
    reader
        .await
        .context("reading the batch")?
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(if failed {
        ExitCode::from(crate::EXIT_TICKET_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Sends the requests of `chunk` and prints every line's answer in order;
/// whether any was refused.
async fn send_and_print(
    client: &Client,
    printer: &Printer,
    chunk: Vec<Line>,
    fits: &AtomicUsize,
) -> anyhow::Result<bool> {
    let mut unread = Vec::new();
    let mut requests = Vec::new();
    for line in chunk {
        match line.request {
            Ok(request) => requests.push((line.number, request)),
            Err(reason) => unread.push((line.number, reason)),
        }
    }
    let mut answers: Vec<(u64, Answer)> = submit(client, requests, fits).await;
    answers.extend(
        unread
            .into_iter()
            .map(|(number, reason)| (number, Err((tonic::Code::InvalidArgument, reason)))),
    );
    answers.sort_by_key(|(number, _)| *number);
    let mut failed = false;
    for (number, answer) in answers {
        match answer {
            Ok(ticket) => printer.batch_ticket(&ticket)?,
            Err((code, message)) => {
                failed = true;
                printer.batch_refusal(number, code, &message)?;
            }
        }
    }
    Ok(failed)
}

/// One SubmitBatch call of `requests` (halved while the gateway finds it
/// over its message limit, which `fits` then remembers); each request's
/// answer.
fn submit<'a>(
    client: &'a Client,
    requests: Vec<(u64, pb::SubmitRequest)>,
    fits: &'a AtomicUsize,
) -> futures::future::BoxFuture<'a, Vec<(u64, Answer)>> {
    Box::pin(async move {
        let (numbers, sent): (Vec<u64>, Vec<pb::SubmitRequest>) = requests.iter().cloned().unzip();
        match client.submit_batch(sent).await {
            Ok(answers) => numbers
                .into_iter()
                .zip(answers)
                .map(|(number, answer)| (number, answer.map_err(|e| refusal(&e))))
                .collect(),
            Err(error) if too_large(&error) && requests.len() > 1 => {
                let mut first = requests;
                let second = first.split_off(first.len() / 2);
                // Later calls start at the size that got through.
                fits.fetch_min(first.len(), Ordering::Relaxed);
                let mut answers = submit(client, first, fits).await;
                answers.extend(submit(client, second, fits).await);
                answers
            }
            Err(error) => {
                let (code, message) = refusal(&error);
                numbers
                    .into_iter()
                    .map(|number| (number, Err((code, message.clone()))))
                    .collect()
            }
        }
    })
}

/// Whether the gateway refused a call for its size: it says so (see the
/// server's `rescue.rs`) before reading any of it.
fn too_large(error: &ClientError) -> bool {
    error.code() == tonic::Code::ResourceExhausted
        && error.to_string().contains("over the gateway's limit")
}

fn refusal(error: &ClientError) -> (tonic::Code, String) {
    let message = match error {
        ClientError::Status(status) => status.message().to_owned(),
        other => other.to_string(),
    };
    (error.code(), message)
}

/// The input: a file, or stdin for "-".
fn open(path: &Path) -> anyhow::Result<Box<dyn std::io::BufRead + Send>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::BufReader::new(std::io::stdin())));
    }
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Box::new(std::io::BufReader::new(file)))
}

/// Reads every line into `tx` (blank ones skipped) until the input ends or
/// the receiver is gone; an I/O error ends it.
fn read_lines(
    mut input: Box<dyn std::io::BufRead + Send>,
    schema: &Schema,
    tx: &mpsc::Sender<Line>,
) -> std::io::Result<()> {
    let mut number = 0;
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let read = std::io::Read::take(&mut input, MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buffer)?;
        if read == 0 {
            return Ok(());
        }
        number += 1;
        let request = if buffer.len() > MAX_LINE_BYTES && !buffer.ends_with(b"\n") {
            // Skip the rest of the line.
            input.skip_until(b'\n')?;
            Err(format!("the line is longer than {MAX_LINE_BYTES} bytes"))
        } else {
            match std::str::from_utf8(&buffer) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => schema.parse(text),
                Err(e) => Err(format!("the line is not UTF-8: {e}")),
            }
        };
        if tx.blocking_send(Line { number, request }).is_err() {
            return Ok(());
        }
    }
}

/// Reads `SubmitRequest`s from their proto3 JSON form.
struct Schema {
    request: MessageDescriptor,
}

impl Schema {
    fn load() -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(asyncgate_proto::FILE_DESCRIPTOR_SET)
            .context("decoding the asyncgate descriptor set")?;
        let request = pool
            .get_message_by_name("asyncgate.v1.SubmitRequest")
            .context("asyncgate.v1.SubmitRequest is missing from the descriptor set")?;
        Ok(Self { request })
    }

    /// One line as a request; unknown fields are refused (a typo must not
    /// drop a field silently).
    fn parse(&self, text: &str) -> Result<pb::SubmitRequest, String> {
        let text = text.trim_end_matches(['\n', '\r']);
        let mut json = serde_json::Deserializer::from_str(text);
        let dynamic = DynamicMessage::deserialize_with_options(
            self.request.clone(),
            &mut json,
            &DeserializeOptions::new(),
        )
        .and_then(|message| json.end().map(|()| message))
        .map_err(|e| {
            // Where in the line: serde's line number is always 1 here.
            let reason = e.to_string();
            let reason = reason
                .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
                .unwrap_or(&reason);
            format!(
                "not a SubmitRequest in proto3 JSON: {reason} (column {})",
                e.column()
            )
        })?;
        dynamic
            .transcode_to::<pb::SubmitRequest>()
            .map_err(|e| format!("not a SubmitRequest: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_proto3_json_and_say_what_is_wrong() {
        let schema = Schema::load().unwrap();
        let request = schema
            .parse(r#"{"queue": "q", "payload": {"json": {"n": 1}}, "priority": 5, "delay": "1.5s", "metadata": {"k": "v"}}"#)
            .unwrap();
        assert_eq!(request.queue, "q");
        assert_eq!(request.priority, 5);
        assert_eq!(
            request.delay.map(|d| (d.seconds, d.nanos)),
            Some((1, 500_000_000))
        );
        assert_eq!(request.metadata["k"], "v");
        let payload = request.payload.unwrap();
        assert_eq!(
            asyncgate_client::payload::to_json(&payload),
            Some(serde_json::json!({"n": 1}))
        );
        let binary = schema
            .parse(r#"{"queue": "q", "payload": {"binary": "aGk=", "contentType": "text/plain"}}"#)
            .unwrap();
        assert_eq!(
            asyncgate_client::payload::as_binary(&binary.payload.unwrap()).map(|b| b.to_vec()),
            Some(b"hi".to_vec())
        );
        for (line, says) in [
            (r#"{"queue": "q", "priorty": 1}"#, "priorty"),
            (r#"{"queue": "q"} trailing"#, "trailing"),
            ("not json", "proto3 JSON"),
            (r#"{"queue": 5}"#, "queue"),
        ] {
            let error = schema.parse(line).unwrap_err();
            assert!(error.contains("SubmitRequest"), "{line}: {error}");
            assert!(
                error.contains(says) || error.contains("expected"),
                "{line}: {error}"
            );
        }
    }
}
