//! The real binary's logs: `--log-format json` writes one JSON object per
//! line, and in the text format no client-chosen text can break a line,
//! forge one, or carry a terminal escape.

use std::net::TcpListener;
use std::process::Stdio;

use asyncgate_client::pb;
use pb::worker_message::Kind as In;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

mod common;
use tonic_types::StatusExt as _;

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_asyncgate-server"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--store", "memory", "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts");
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let mut listening = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        let entry: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            entry["timestamp"].is_string() && entry["level"].is_string(),
            "{line}"
        );
        if entry["fields"]["message"] == "asyncgate listening" {
            listening = Some(entry);
            break;
        }
    }
    let listening = listening.expect("the listening line");
    assert_eq!(listening["level"], "INFO");
    assert_eq!(
        listening["fields"]["local_addr"],
        format!("127.0.0.1:{port}")
    );
    server.kill().await.unwrap();
}

/// A line a client tries to slip into the log, with a terminal escape.
const FORGED: &str = "2026-01-01T00:00:00Z  INFO asyncgate::audit: forged";

/// The real binary with text logs at info level, its stderr captured.
struct TextLogs {
    child: Child,
    url: String,
    /// What was logged up to "asyncgate listening".
    head: Vec<u8>,
    /// Reads the rest until the process ends.
    rest: JoinHandle<Vec<u8>>,
}

impl TextLogs {
    async fn start(extra: &[&str]) -> TextLogs {
        let (mut child, port) = common::start_logged(extra, "info");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut head = Vec::new();
        loop {
            let start = head.len();
            let read = stderr.read_until(b'\n', &mut head).await.unwrap();
            assert!(
                read > 0,
                "the gateway exited: {}",
                String::from_utf8_lossy(&head)
            );
            if String::from_utf8_lossy(&head[start..]).contains("asyncgate listening") {
                break;
            }
        }
        let rest = tokio::spawn(async move {
            let mut rest = Vec::new();
            stderr.read_to_end(&mut rest).await.unwrap();
            rest
        });
        TextLogs {
            child,
            url: format!("http://127.0.0.1:{port}"),
            head,
            rest,
        }
    }

    /// A raw `Connect` stream with `authorization` (if any): the sender of
    /// worker messages, and the gateway's answer.
    async fn connect(
        &self,
        authorization: Option<&str>,
    ) -> (
        mpsc::Sender<pb::WorkerMessage>,
        Result<tonic::Streaming<pb::DispatchMessage>, tonic::Status>,
    ) {
        let channel = tonic::transport::Endpoint::from_shared(self.url.clone())
            .expect("url")
            .connect()
            .await
            .expect("the gateway accepts connections");
        let mut workers = pb::workers_client::WorkersClient::new(channel);
        let (tx, rx) = mpsc::channel(8);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        let stream = workers.connect(request).await.map(|r| r.into_inner());
        (tx, stream)
    }

    /// Everything the gateway logged. Every line logged before a reply the
    /// test has seen is in the pipe by then (logging is synchronous), so the
    /// process is killed rather than asked to stop.
    async fn all(mut self) -> String {
        self.child.kill().await.unwrap();
        let mut all = self.head;
        all.extend(self.rest.await.unwrap());
        assert!(
            !all.contains(&0x1b),
            "an ESC byte reached the log: {}",
            String::from_utf8_lossy(&all)
        );
        let all = String::from_utf8(all).expect("the log is UTF-8");
        for line in all.lines() {
            assert!(!line.starts_with(FORGED), "a forged line: {all}");
        }
        all
    }
}

fn hello(name: &str) -> pb::WorkerMessage {
    pb::WorkerMessage {
        kind: Some(In::Hello(pb::Hello {
            worker_name: name.into(),
            queues: vec!["emails".into()],
            max_in_flight: 1,
            batches: false,
        })),
        ..Default::default()
    }
}

/// The first error on a Connect stream (pings and the welcome skipped).
async fn first_error(stream: &mut tonic::Streaming<pb::DispatchMessage>) -> tonic::Status {
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => return status,
        }
    }
}

#[tokio::test]
async fn a_worker_name_that_forges_log_lines_is_refused() {
    let gateway = TextLogs::start(&[]).await;
    let (tx, stream) = gateway.connect(None).await;
    tx.send(hello(&format!("evil\n{FORGED}\u{1b}[31m")))
        .await
        .unwrap();
    let status = first_error(&mut stream.expect("Connect opens")).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("hello.worker_name"), "{status:?}");
    let violations = status.get_error_details();
    let bad = violations.bad_request().expect("a bad-request detail");
    assert_eq!(bad.field_violations[0].field, "hello.worker_name");
    drop(tx);
    gateway.all().await;
}

#[tokio::test]
async fn client_text_in_a_logged_error_stays_on_its_line() {
    let gateway = TextLogs::start(&[]).await;
    let (tx, stream) = gateway.connect(None).await;
    let mut stream = stream.expect("Connect opens");
    tx.send(hello("honest")).await.unwrap();
    // A progress report whose ticket id is the forgery: it is refused, and
    // the refusal is logged quoting what the worker sent.
    tx.send(pb::WorkerMessage {
        kind: Some(In::Progress(pb::TaskProgress {
            ticket_id: format!("x\n{FORGED}\u{1b}[31m"),
            lease_id: "0190b6c2-8a3e-7c4d-9f1a-2b3c4d5e6f70".into(),
            percent: 1,
            ..Default::default()
        })),
        ..Default::default()
    })
    .await
    .unwrap();
    let ack = loop {
        match stream
            .message()
            .await
            .unwrap()
            .expect("the session carries on")
        {
            pb::DispatchMessage {
                kind: Some(pb::dispatch_message::Kind::ResultAck(ack)),
                ..
            } => break ack,
            _ => continue,
        }
    };
    assert_eq!(ack.code, tonic::Code::InvalidArgument as i32, "{ack:?}");
    drop(tx);
    let log = gateway.all().await;
    let ended = log
        .lines()
        .find(|line| line.contains("progress refused"))
        .unwrap_or_else(|| panic!("the refusal is logged: {log}"));
    assert!(ended.contains("progress.ticket_id"), "{ended}");
    assert!(
        ended.contains(&format!("x\\n{FORGED}\\u{{1b}}[31m")),
        "the text is there, escaped: {ended}"
    );
}

#[tokio::test]
async fn a_displayed_field_is_escaped_on_its_line() {
    // `who` is written with Display (`%`), which escapes nothing by itself:
    // the key's name, from the keys file, stands in for any such value.
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nname = \"ops\\n{FORGED}\\u001b[31m\"\nsha256 = \"{}\"\nrole = \"client\"\n",
            asyncgate_server::auth::digest_hex("client-secret")
        ),
    )
    .unwrap();
    let gateway = TextLogs::start(&["--keys", keys.to_str().unwrap()]).await;
    // A client key may not connect as a worker: the refusal is audited.
    let (_tx, stream) = gateway.connect(Some("Bearer client-secret")).await;
    let status = stream.expect_err("a client key is refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let log = gateway.all().await;
    let audit = log
        .lines()
        .find(|line| line.contains("permission_denied"))
        .unwrap_or_else(|| panic!("the refusal is audited: {log}"));
    assert!(
        audit.contains(&format!("who=ops\\u{{a}}{FORGED}\\u{{1b}}[31m")),
        "{audit}"
    );
}

/// Sends `request` (raw HTTP/1.1) to the gateway and reads the answer.
async fn http1_exchange(port: u16, request: &str) -> String {
    use tokio::io::AsyncWriteExt as _;
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // The gateway closes after the answer (connection: close), or on EOF.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        socket.read_to_end(&mut answer),
    )
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn browser_mistakes_are_answered_and_logged() {
    // Without --grpc-web: an HTTP/1.1 call is answered 505 naming the flag,
    // and a warning says so.
    let (mut server, port) = common::start_logged(&[], "warn,asyncgate_server=info");
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    common::line_containing(&mut lines, "asyncgate listening").await;
    let request = "POST /asyncgate.v1.Gateway/Submit HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    let answer = http1_exchange(port, request).await;
    assert!(answer.starts_with("HTTP/1.1 505"), "{answer:?}");
    assert!(answer.contains("--grpc-web"), "{answer:?}");
    let line = common::line_containing(&mut lines, "refused an HTTP/1.1 request").await;
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("start it with --grpc-web"), "{line}");
    server.kill().await.unwrap();

    // With it, a page on an origin not allowed is refused by CORS: logged at
    // debug level with the origin and the allowed ones.
    let (mut server, port) = common::start_logged(
        &["--grpc-web", "--cors-allow-origin", "http://127.0.0.1:8000"],
        "warn,asyncgate_server=debug",
    );
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    common::line_containing(&mut lines, "asyncgate listening").await;
    let preflight = "OPTIONS /asyncgate.v1.Gateway/Submit HTTP/1.1\r\nhost: gateway\r\norigin: http://localhost:8000\r\naccess-control-request-method: POST\r\naccess-control-request-headers: content-type,connect-protocol-version\r\nconnection: close\r\n\r\n";
    let answer = http1_exchange(port, preflight).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        !answer
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{answer:?}"
    );
    let line = common::line_containing(&mut lines, "CORS: refused").await;
    assert!(line.contains("http://localhost:8000"), "{line}");
    assert!(line.contains("allowed=http://127.0.0.1:8000"), "{line}");
    server.kill().await.unwrap();
}
