//! Completion callbacks survive a `kill -9` of the real binary: tickets end
//! while their receiver answers 503, the durable gateway is killed with
//! their callbacks pending, and after the restart every one is delivered,
//! with the `webhook-id` its earlier attempts carried and a valid
//! signature. So does a queue target set through the admin API: acknowledged,
//! then `kill -9`, and the restarted gateway calls it for the queue's
//! tickets.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncgate_client::{Client, Submit, pb};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;
use tokio::sync::Notify;

mod common;
use common::{free_port, start_server, wait_until_serving};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver saw: per webhook-id, the statuses it answered.
#[derive(Default)]
struct Seen {
    answers: Mutex<HashMap<String, Vec<u16>>>,
    changed: Notify,
    accepting: AtomicBool,
}

impl Seen {
    async fn wait_until(&self, done: impl Fn(&HashMap<String, Vec<u16>>) -> bool) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if done(&self.answers.lock().unwrap()) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("the deliveries arrive");
    }
}

async fn receiver() -> (Arc<Seen>, String) {
    let seen = Arc::new(Seen::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/done", listener.local_addr().unwrap());
    let shared = seen.clone();
    tokio::spawn(async move {
        let verifier = Arc::new(standardwebhooks::Webhook::new(SECRET).unwrap());
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (seen, verifier) = (shared.clone(), verifier.clone());
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let (seen, verifier) = (seen.clone(), verifier.clone());
                    async move {
                        let headers = request.headers().clone();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let signed = verifier.verify(&body, &headers).is_ok();
                        let status = match (signed, seen.accepting.load(Ordering::SeqCst)) {
                            (false, _) => 401,
                            (true, false) => 503,
                            (true, true) => 200,
                        };
                        let id = headers["webhook-id"].to_str().unwrap().to_owned();
                        seen.answers
                            .lock()
                            .unwrap()
                            .entry(id)
                            .or_default()
                            .push(status);
                        seen.changed.notify_waiters();
                        let mut response = hyper::Response::new(Full::new(bytes::Bytes::new()));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (seen, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_callbacks_are_delivered_after_a_kill_nine_with_the_same_webhook_id() {
    const TICKETS: usize = 20;
    let (seen, url) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("asyncgate.redb");
    let port = free_port();
    let extra = [
        "--callback-allow",
        "127.0.0.1",
        "--callback-allow-http",
        "--callback-secret",
        SECRET,
    ];
    let mut gateway = start_server(&store, port, &extra);
    let client = Client::connect_lazy(format!("http://127.0.0.1:{port}")).unwrap();
    wait_until_serving(&client).await;
    let mut expected = HashSet::new();
    for n in 0..TICKETS {
        let ticket = client
            .submit(
                Submit::new("nobody")
                    .json(serde_json::json!(n))
                    .callback(&url),
            )
            .await
            .unwrap();
        let cancelled = client.cancel(&ticket.id, "ended").await.unwrap();
        expected.insert((ticket.id, format!("{}.{}", cancelled.id, cancelled.seq)));
    }
    let ids: HashSet<String> = expected.iter().map(|(_, w)| w.clone()).collect();
    // Every callback tried once (and refused) before the kill.
    seen.wait_until(|answers| ids.iter().all(|id| answers.contains_key(id)))
        .await;
    gateway.start_kill().expect("kill -9");
    gateway.wait().await.unwrap();
    seen.accepting.store(true, Ordering::SeqCst);
    let _gateway = start_server(&store, port, &extra);
    wait_until_serving(&client).await;
    seen.wait_until(|answers| {
        ids.iter()
            .all(|id| answers.get(id).is_some_and(|a| a.contains(&200)))
    })
    .await;
    let answers = seen.answers.lock().unwrap().clone();
    assert_eq!(answers.len(), TICKETS, "no other webhook-id: {answers:?}");
    assert!(answers.values().flatten().all(|s| *s != 401), "all signed");
    for (ticket, _) in &expected {
        let callback = client.get(ticket, None).await.unwrap().callback.unwrap();
        // Recorded after the answer: wait briefly for the record.
        let mut callback = callback;
        for _ in 0..100 {
            if callback.state == pb::CallbackState::Delivered as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            callback = client.get(ticket, None).await.unwrap().callback.unwrap();
        }
        assert_eq!(
            callback.state,
            pb::CallbackState::Delivered as i32,
            "{callback:?}"
        );
        // The refused attempt may or may not have been recorded before the
        // kill (the receiver saw it either way): at least once.
        assert!(callback.attempts >= 1, "{callback:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_set_through_the_admin_api_survives_a_kill_nine() {
    // The upstream: a tonic health service (an empty request is valid).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("asyncgate.redb");
    let port = free_port();
    let extra = ["--callback-allow", "127.0.0.1"];
    let mut gateway = start_server(&store, port, &extra);
    let client = Client::connect_lazy(format!("http://127.0.0.1:{port}")).unwrap();
    wait_until_serving(&client).await;
    let target = format!("grpc://{upstream}/grpc.health.v1.Health/Check");
    client
        .admin()
        .set_queue_target("health", &target)
        .await
        .unwrap();
    gateway.start_kill().expect("kill -9");
    gateway.wait().await.unwrap();
    let _gateway = start_server(&store, port, &extra);
    wait_until_serving(&client).await;
    let info = client.admin().get_queue("health").await.unwrap();
    let shown = info.target.expect("the target is stored");
    assert_eq!(shown.url, target);
    let ticket = client
        .submit(Submit::new("health").binary(Vec::new(), "application/x-protobuf"))
        .await
        .unwrap();
    let done = common::finished(&client, &ticket.id).await;
    assert_eq!(done.state, pb::TicketState::Succeeded as i32, "{done:?}");
}
