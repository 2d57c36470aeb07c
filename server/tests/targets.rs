//! Target queues with the real `asyncgate-server` binary: three replicas on
//! one Redis call the upstream once per attempt, and a `kill -9` of a
//! durable gateway during a call leaves a ticket that is called again
//! after the restart and recorded once.

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
