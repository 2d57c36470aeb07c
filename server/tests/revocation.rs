//! Revoking a key on the real `asyncgate-server` binary: after the keys file
//! is rewritten and the process gets SIGHUP, every open stream of a key that
//! was removed (or whose role, tenant or queues changed) ends with
//! UNAUTHENTICATED — a worker's leases go back to the queue at once, without
//! costing an attempt — while the streams of unchanged keys go on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use asyncgate_client::{Client, Submit, pb};
use asyncgate_server::auth::digest_hex;
use pb::dispatch_message::Kind as Out;
use pb::worker_message::Kind as In;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

mod common;
use common::{free_port, hangup, line_containing, start_server, wait_until_serving};

/// A keys-file entry whose key is `<name>-secret`.
fn entry(name: &str, role: &str, extra: &str) -> String {
    format!(
        "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\ntenant = \"t1\"\n{extra}\n",
        digest_hex(&format!("{name}-secret"))
    )
}

fn write_keys(path: &Path, entries: &[String]) {
    std::fs::write(path, entries.concat()).expect("keys file");
}

/// The gateway with `keys`, and a client presenting `app-secret`.
async fn gateway(keys: &Path) -> (Child, String, Client) {
    let port = free_port();
    let child = start_server("memory", port, &["--keys", keys.to_str().unwrap()]);
    let url = format!("http://127.0.0.1:{port}");
    let client = Client::connect_lazy(url.clone())
        .expect("client")
        .with_api_key("app-secret")
        .expect("key");
    wait_until_serving(&client).await;
    (child, url, client)
}

async fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("the gateway accepts connections")
}

fn authorized<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ascii"),
    );
    request
}

/// A worker speaking the raw protocol, so the test sees every task and
/// status exactly as the gateway sent it.
struct RawWorker {
    tx: mpsc::Sender<pb::WorkerMessage>,
    inbound: tonic::Streaming<pb::DispatchMessage>,
}

impl RawWorker {
    /// Connects with `key`, says Hello for `jobs` and waits for Welcome.
    async fn connect(url: &str, key: &str) -> RawWorker {
        let mut workers = pb::workers_client::WorkersClient::new(channel(url).await);
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::WorkerMessage {
            kind: Some(In::Hello(pb::Hello {
                worker_name: key.into(),
                queues: vec!["jobs".into()],
                max_in_flight: 1,
                batches: false,
            })),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut inbound = workers
            .connect(authorized(ReceiverStream::new(rx), key))
            .await
            .expect("Connect opens")
            .into_inner();
        match inbound.message().await {
            Ok(Some(pb::DispatchMessage {
                kind: Some(Out::Welcome(_)),
                ..
            })) => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
        RawWorker { tx, inbound }
    }

    /// The next message that is not a ping (pings are answered), or the
    /// status the stream ended with.
    async fn next(&mut self) -> Result<Out, tonic::Status> {
        let next = async {
            loop {
                match self.inbound.message().await?.and_then(|m| m.kind) {
                    Some(Out::Ping(ping)) => {
                        let _ = self
                            .tx
                            .send(pb::WorkerMessage {
                                kind: Some(In::Heartbeat(pb::Heartbeat { nonce: ping.nonce })),
                                ..Default::default()
                            })
                            .await;
                    }
                    Some(kind) => return Ok(kind),
                    None => {
                        return Err(tonic::Status::unknown("the stream ended without a status"));
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), next)
            .await
            .expect("the gateway sends more than pings within 30 s")
    }

    async fn next_task(&mut self) -> pb::Task {
        match self.next().await {
            Ok(Out::Task(task)) => task,
            other => panic!("expected a Task, got {other:?}"),
        }
    }

    async fn succeed(&self, task: &pb::Task, text: &str) {
        let _ = self
            .tx
            .send(pb::WorkerMessage {
                kind: Some(In::Result(pb::TaskResult {
                    ticket_id: task.ticket_id.clone(),
                    lease_id: task.lease_id.clone(),
                    outcome: Some(pb::task_result::Outcome::Success(
                        asyncgate_client::payload::json(text.into()),
                    )),
                })),
                ..Default::default()
            })
            .await;
    }
}

fn assert_revoked(status: &tonic::Status, key: &str) {
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("revoked or changed") && status.message().contains(key),
        "{status:?}"
    );
}

fn keys_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("keys.toml")
}

#[tokio::test]
async fn a_revoked_workers_stream_ends_and_its_ticket_runs_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_path(&dir);
    let app = entry("app", "client", "");
    let doomed = entry("doomed", "worker", "queues = [\"jobs\"]");
    let steady = entry("steady", "worker", "queues = [\"jobs\"]");
    write_keys(&keys, &[app.clone(), doomed, steady.clone()]);
    let (gateway, url, client) = gateway(&keys).await;

    // The doomed worker holds the ticket; the steady one waits, idle.
    let mut revoked = RawWorker::connect(&url, "doomed-secret").await;
    let ticket = client
        .submit(Submit::new("jobs").json("payload".into()))
        .await
        .unwrap();
    let held = revoked.next_task().await;
    assert_eq!(held.ticket_id, ticket.id);
    assert_eq!(held.attempt, 1);
    let mut survivor = RawWorker::connect(&url, "steady-secret").await;

    write_keys(&keys, &[app, steady]);
    hangup(gateway.id().expect("the gateway runs"));

    // The revoked stream ends with UNAUTHENTICATED, with no task before.
    match revoked.next().await {
        Err(status) => assert_revoked(&status, "doomed"),
        Ok(other) => panic!("a revoked worker was sent {other:?}"),
    }
    // A result it sends now reaches nothing.
    revoked.succeed(&held, "from a revoked key").await;

    // The lease went back at once: the steady worker (its key unchanged,
    // its stream still open) gets the ticket, as the same first attempt.
    let again = survivor.next_task().await;
    assert_eq!(again.ticket_id, ticket.id);
    assert_ne!(again.lease_id, held.lease_id);
    assert_eq!(again.attempt, 1, "a revocation costs no attempt");
    survivor.succeed(&again, "from the steady worker").await;
    match survivor.next().await {
        Ok(Out::ResultAck(ack)) => assert_eq!(ack.code, 0, "{ack:?}"),
        other => panic!("expected a ResultAck, got {other:?}"),
    }
    let done = client.get(&ticket.id, None).await.unwrap();
    assert_eq!(done.state(), pb::TicketState::Succeeded, "{done:?}");
    assert_eq!(done.attempt, 1);
    assert_eq!(
        done.result,
        Some(asyncgate_client::payload::json(
            "from the steady worker".into()
        ))
    );
    // The revoked key cannot come back.
    let mut workers = pb::workers_client::WorkersClient::new(channel(&url).await);
    let (_tx, rx) = mpsc::channel::<pb::WorkerMessage>(1);
    let refused = workers
        .connect(authorized(ReceiverStream::new(rx), "doomed-secret"))
        .await
        .expect_err("an unknown key");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn revoked_and_changed_keys_lose_their_watches_and_waits_unchanged_ones_keep_them() {
    use tokio::io::AsyncBufReadExt as _;

    let dir = tempfile::tempdir().unwrap();
    let keys = keys_path(&dir);
    let app = entry("app", "client", "");
    let removed = entry("removed", "client", "");
    let demoted = entry("demoted", "client", "");
    let renamed = entry("renamed", "client", "");
    write_keys(&keys, &[app.clone(), removed, demoted, renamed]);
    // Its log says when a long-poll has begun to wait.
    let port = free_port();
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_asyncgate-server"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--store", "memory", "--keys", keys.to_str().unwrap()])
        .env("RUST_LOG", "warn,asyncgate_server::rpc::watch=debug")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts");
    let mut log = tokio::io::BufReader::new(gateway.stderr.take().unwrap()).lines();
    let url = format!("http://127.0.0.1:{port}");
    let client = Client::connect_lazy(url.clone())
        .unwrap()
        .with_api_key("app-secret")
        .unwrap();
    wait_until_serving(&client).await;
    let ticket = client.submit(Submit::new("jobs")).await.unwrap();

    let gateway_client = pb::gateway_client::GatewayClient::new(channel(&url).await);
    let watch = |key: &'static str| {
        let mut gateway_client = gateway_client.clone();
        let id = ticket.id.clone();
        async move {
            let mut stream = gateway_client
                .watch_ticket(authorized(
                    pb::WatchTicketRequest {
                        id,
                        after_seq: None,
                    },
                    key,
                ))
                .await
                .expect("WatchTicket opens")
                .into_inner();
            let snapshot = stream.message().await.unwrap().expect("a snapshot");
            assert_eq!(snapshot.kind(), pb::TicketEventKind::Snapshot);
            stream
        }
    };
    let mut gone = watch("removed-secret").await;
    let mut changed = watch("demoted-secret").await;
    let mut kept = watch("app-secret").await;
    // A rename alone changes nothing the key may do.
    let mut renamed_watch = watch("renamed-secret").await;
    // A long-poll of the removed key, on a ticket that does not end.
    let long_poll = {
        let mut gateway_client = gateway_client.clone();
        let id = ticket.id.clone();
        tokio::spawn(async move {
            gateway_client
                .get_ticket(authorized(
                    pb::GetTicketRequest {
                        id,
                        wait: Some(prost_types::Duration {
                            seconds: 60,
                            nanos: 0,
                        }),
                    },
                    "removed-secret",
                ))
                .await
        })
    };
    line_containing(&mut log, "long-poll waiting").await;

    // `removed` is gone; `demoted` keeps its secret but becomes an admin
    // (another role); `renamed` keeps secret, role and tenant.
    let promoted = format!(
        "[[keys]]\nname = \"demoted\"\nsha256 = \"{}\"\nrole = \"admin\"\n",
        digest_hex("demoted-secret")
    );
    let renamed_again = renamed_entry();
    write_keys(&keys, &[app, promoted, renamed_again]);
    hangup(gateway.id().expect("the gateway runs"));

    for (stream, key) in [(&mut gone, "removed"), (&mut changed, "demoted")] {
        let status = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match stream.message().await {
                    Ok(Some(event)) => {
                        assert_eq!(event.kind(), pb::TicketEventKind::Keepalive, "{event:?}")
                    }
                    Ok(None) => panic!("the watch of {key} ended without a status"),
                    Err(status) => return status,
                }
            }
        })
        .await
        .expect("the revoked watch ends");
        assert_revoked(&status, key);
    }
    let waited = tokio::time::timeout(Duration::from_secs(30), long_poll)
        .await
        .expect("the long-poll ends before its wait")
        .unwrap()
        .expect_err("the long-poll is refused");
    assert_revoked(&waited, "removed");

    // The unchanged keys' watches still follow the ticket: they see its
    // cancel, the terminal event.
    let mut canceller = gateway_client.clone();
    canceller
        .cancel_ticket(authorized(
            pb::CancelTicketRequest {
                id: ticket.id.clone(),
                reason: "done watching".into(),
            },
            "app-secret",
        ))
        .await
        .expect("cancel");
    for stream in [&mut kept, &mut renamed_watch] {
        let terminal = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let event = stream
                    .message()
                    .await
                    .expect("an unchanged key's watch goes on")
                    .expect("until the terminal event");
                if event
                    .ticket
                    .as_ref()
                    .is_some_and(|t| t.state() == pb::TicketState::Cancelled)
                {
                    return event;
                }
            }
        })
        .await
        .expect("the cancel is seen");
        assert_eq!(terminal.kind(), pb::TicketEventKind::State);
    }
}

/// The `renamed` key's entry under a new name (same secret, role, tenant).
fn renamed_entry() -> String {
    entry("renamed", "client", "").replace("name = \"renamed\"", "name = \"renamed-2\"")
}
