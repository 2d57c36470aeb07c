//! Target queues with the real `asyncgate-server` binary: three replicas on
//! one Redis call the upstream once per attempt, and a `kill -9` of a
//! durable gateway during a call leaves a ticket that is called again
//! after the restart and recorded once; an HTTP target's `header_env`
//! header reaches the upstream but never the logs or `--print-config`, and
//! a missing variable or unreadable file stops the start (exit 64).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncgate_client::{Client, Submit, pb};
use asyncgate_proto::bench as echo;
use asyncgate_server::testing::RedisServer;
use prost::Message;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

mod common;
use common::{free_port, start_server, wait_until_serving};

/// Counts calls per payload; a "hold" call waits until released.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<Mutex<HashMap<Vec<u8>, u32>>>,
    started: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

#[tonic::async_trait]
impl echo::echo_server::Echo for Upstream {
    async fn echo(
        &self,
        request: tonic::Request<echo::EchoRequest>,
    ) -> Result<tonic::Response<echo::EchoReply>, tonic::Status> {
        let payload = request.into_inner().payload;
        let calls = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(payload.to_vec()).or_default();
            *n += 1;
            *n
        };
        if &payload[..] == b"hold" && calls == 1 {
            self.started.notify_one();
            self.release.notified().await;
        }
        Ok(tonic::Response::new(echo::EchoReply { payload }))
    }
}

async fn upstream() -> (Upstream, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = Upstream::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(echo::echo_server::EchoServer::new(service.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (
        service,
        format!("echo=grpc://{addr}/asyncgate.bench.v1.Echo/Echo"),
    )
}

fn submit(text: &str) -> pb::SubmitRequest {
    let message = echo::EchoRequest {
        payload: text.as_bytes().to_vec().into(),
    };
    Submit::new("echo")
        .binary(message.encode_to_vec(), "application/x-protobuf")
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_call_the_target_once_per_ticket() {
    const TICKETS: usize = 30;
    let redis = RedisServer::start().expect("redis-server starts");
    let (upstream, target) = upstream().await;
    let ports = [free_port(), free_port(), free_port()];
    let _replicas: Vec<_> = ports
        .iter()
        .map(|port| start_server(redis.url(), *port, &["--target", &target]))
        .collect();
    let client = Client::connect_lazy(format!("http://127.0.0.1:{}", ports[0])).unwrap();
    wait_until_serving(&client).await;
    let mut ids = Vec::new();
    for i in 0..TICKETS {
        ids.push(client.submit(submit(&format!("t{i}"))).await.unwrap().id);
    }
    for id in &ids {
        let done = client.get(id, Some(Duration::from_secs(30))).await.unwrap();
        assert_eq!(done.state, pb::TicketState::Succeeded as i32, "{done:?}");
        assert_eq!(done.attempt, 1);
    }
    let calls = upstream.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), TICKETS);
    assert!(
        calls.values().all(|n| *n == 1),
        "one call per ticket: {calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_nine_during_a_target_call_calls_again_and_records_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("asyncgate.redb");
    let (upstream, target) = upstream().await;
    let port = free_port();
    let extra = ["--target", target.as_str(), "--max-worker-losses", "5"];
    let mut gateway = start_server(&store, port, &extra);
    let client = Client::connect_lazy(format!("http://127.0.0.1:{port}")).unwrap();
    wait_until_serving(&client).await;
    let started = upstream.started.notified();
    let id = client.submit(submit("hold")).await.unwrap().id;
    started.await;
    gateway.start_kill().expect("kill -9");
    gateway.wait().await.unwrap();
    let _gateway = start_server(&store, port, &extra);
    wait_until_serving(&client).await;
    let done = client
        .get(&id, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(done.state, pb::TicketState::Succeeded as i32, "{done:?}");
    assert_eq!(done.attempt, 2, "the interrupted call counts as an attempt");
    assert_eq!(upstream.calls.lock().unwrap()[&b"hold".to_vec()], 2);
    // The first call never answers: released now, it records nothing.
    upstream.release.notify_waiters();
    let again = client.get(&id, None).await.unwrap();
    assert_eq!((again.seq, again.result), (done.seq, done.result));
}

/// An HTTP upstream that sends each request's `authorization` header to
/// the channel returned and answers 200.
async fn http_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use http_body_util::Full;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                let authorization = request
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let _ = seen.send(authorization);
                async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        bytes::Bytes::from("ok"),
                    )))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (addr, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_from_the_environment_reaches_the_target_and_never_the_logs() {
    const VAR: &str = "ASYNCGATE_TEST_TARGET_TOKEN";
    const SECRET: &str = "Bearer s3cr3t-7f1c9a2e";
    let (addr, mut received) = http_upstream().await;
    let target = format!("hook=http://{addr}/hook?header_env=authorization:{VAR}");
    let binary = env!("CARGO_BIN_EXE_asyncgate-server");

    // A missing variable stops the start (exit 64), naming it; so does an
    // unreadable CA file, naming the file. (Bounded: a start that went on
    // would serve on an ephemeral port until killed.)
    let refused = |args: Vec<String>| async move {
        let run = tokio::process::Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--store", "memory"])
            .args(&args)
            .env_remove(VAR)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the gateway stops at once")
            .unwrap();
        assert_eq!(output.status.code(), Some(64), "{args:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = refused(vec!["--target".into(), target.clone()]).await;
    assert!(stderr.contains(&format!("{VAR} is not set")), "{stderr}");
    let stderr = refused(vec![
        "--target".into(),
        format!("hook=https://{addr}/hook?ca_file=/nonexistent/ca.pem"),
    ])
    .await;
    assert!(
        stderr.contains("ca_file=/nonexistent/ca.pem: cannot read it"),
        "{stderr}"
    );

    // --print-config names the variable, never its value.
    let printed = std::process::Command::new(binary)
        .args(["--print-config", "--store", "memory", "--target", &target])
        .env(VAR, SECRET)
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let stdout = String::from_utf8_lossy(&printed.stdout);
    assert!(
        stdout.contains(&format!("header_env=authorization:{VAR}")),
        "{stdout}"
    );
    assert!(!stdout.contains("s3cr3t"), "{stdout}");

    let port = free_port();
    let mut gateway = tokio::process::Command::new(binary)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            "memory",
        ])
        .args(["--target", &target])
        .env(VAR, SECRET)
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Read as it comes, so that a full pipe never blocks the gateway.
    let mut stderr = gateway.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut logs = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut logs)
            .await
            .unwrap();
        String::from_utf8_lossy(&logs).into_owned()
    });
    let client = Client::connect_lazy(format!("http://127.0.0.1:{port}")).unwrap();
    wait_until_serving(&client).await;
    let id = client
        .submit(Submit::new("hook").metadata("team", "shop").build())
        .await
        .unwrap()
        .id;
    let done = common::finished(&client, &id).await;
    assert_eq!(done.state, pb::TicketState::Succeeded as i32, "{done:?}");
    assert_eq!(received.recv().await.unwrap(), SECRET, "the header arrives");

    gateway.start_kill().unwrap();
    gateway.wait().await.unwrap();
    let logs = logs.await.unwrap();
    assert!(
        logs.lines().count() > 10,
        "the gateway logged at trace level:\n{logs}"
    );
    assert!(!logs.contains("s3cr3t"), "the secret is logged:\n{logs}");
}
