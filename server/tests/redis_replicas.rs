//! A replica killed with SIGKILL mid-task, on a real Redis, with the real
//! `asyncgate-server` binary: its worker's lease expires, another replica
//! dispatches the ticket again, and the ticket is finished exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use asyncgate_client::worker::{TaskContext, Worker, handler_fn};
use asyncgate_client::{Client, Submit, payload, pb};
use asyncgate_server::testing::RedisServer;
use tokio::process::{Child, Command};

mod common;
use common::{every_second, free_port, reporting_worker, start_server, wait_until_serving};

fn start_replica(redis: &RedisServer, port: u16) -> Child {
    start_server(redis.url(), port, &[])
}

async fn serving(url: String) -> Client {
    let client = Client::connect_lazy(url).unwrap();
    wait_until_serving(&client).await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_ticket_is_finished_once_through_another() {
    let redis = RedisServer::start().expect("redis-server starts");
    let (port_x, port_y) = (free_port(), free_port());
    let (url_x, url_y) = (
        format!("http://127.0.0.1:{port_x}"),
        format!("http://127.0.0.1:{port_y}"),
    );
    let mut replica_x = start_replica(&redis, port_x);
    let _replica_y = start_replica(&redis, port_y);
    serving(url_x.clone()).await;
    let client = serving(url_y.clone()).await;

    let runs = Arc::new(AtomicU32::new(0));
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(1);
    let stuck = {
        let runs = runs.clone();
        Worker::builder(url_x)
            .name("on-x")
            .queue("failover")
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
            .handler(handler_fn(move |task: TaskContext| {
                let started_tx = started_tx.clone();
                let runs = runs.clone();
                async move {
                    if runs.fetch_add(1, Ordering::SeqCst) > 0 {
                        // Back on the restarted replica: a normal run, like the rescuer's.
                        return Ok(payload::json("second attempt".into()));
                    }
                    started_tx.send(()).await.unwrap();
                    task.cancelled().await;
                    // What `asyncgate work` reports when the connection
                    // drops under its command: a final failure. Sent again
                    // once the worker reconnects (to the restarted
                    // replica), it must not be recorded.
                    Err(asyncgate_client::worker::TaskError::new(
                        tonic::Code::Aborted,
                        "the command was killed",
                        false,
                    ))
                }
            }))
            .build()
            .unwrap()
            .spawn()
    };
    let ticket = client
        .submit(Submit::new("failover").build())
        .await
        .unwrap();
    started_rx.recv().await.unwrap();

    let rescuer = {
        let runs = runs.clone();
        Worker::builder(url_y)
            .name("on-y")
            .queue("failover")
            .handler(handler_fn(move |_task: TaskContext| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(payload::json("second attempt".into()))
                }
            }))
            .build()
            .unwrap()
            .spawn()
    };
    replica_x.kill().await.expect("SIGKILL the replica");
    // It comes back on the same port, as under a supervisor.
    let _replica_x = start_replica(&redis, port_x);

    let done = client
        .get(&ticket.id, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(done.state, pb::TicketState::Succeeded as i32, "{done:?}");
    assert_eq!(done.result, Some(payload::json("second attempt".into())));
    assert_eq!(done.attempt, 2, "the lost attempt counts");
    assert!(
        done.error
            .is_none_or(|e| e.message.contains("lost its worker")),
        "the first attempt's error names the lost worker"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one run per attempt");
    stuck.shutdown();
    rescuer.shutdown();
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_startup_error() {
    let unused = free_port();
    let output = Command::new(env!("CARGO_BIN_EXE_asyncgate-server"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--store", &format!("redis://127.0.0.1:{unused}/0")])
        .env("RUST_LOG", "off")
        .output()
        .await
        .expect("the server binary runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach Redis") && stderr.contains(&unused.to_string()),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_evicting_redis_is_refused_at_startup() {
    let redis = RedisServer::start().expect("redis-server starts");
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut admin)
        .await
        .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_asyncgate-server"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--store", &redis.url()])
        .env("RUST_LOG", "off")
        .output()
        .await
        .expect("the server binary runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("allkeys-lru") && stderr.contains("noeviction"),
        "{stderr}"
    );
}

/// A private CA and a server certificate for 127.0.0.1, as PEM files.
fn private_ca(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("redis.pem"),
        dir.join("redis.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, server.pem()).unwrap();
    std::fs::write(&paths.2, server_key.serialize_pem()).unwrap();
    paths
}

#[tokio::test]
async fn a_rediss_store_verifies_the_server_against_the_given_ca() {
    use asyncgate_server::engine::redis::{RedisTls, connect};
    use asyncgate_server::engine::{Engine, EngineConfig};
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(dir.path());
    let redis = RedisServer::start_tls(&cert, &key, &ca).expect("a TLS redis-server starts");
    assert!(redis.url().starts_with("rediss://"));

    let untrusted = connect(
        &redis.url(),
        "tls",
        &RedisTls::default(),
        EngineConfig::default(),
    )
    .await;
    let error = untrusted
        .err()
        .expect("an unknown CA is refused")
        .to_string();
    assert!(error.contains("cannot reach Redis"), "{error}");

    let tls = RedisTls {
        ca: Some(ca),
        ..RedisTls::default()
    };
    let engine = connect(&redis.url(), "tls", &tls, EngineConfig::default())
        .await
        .expect("the CA makes the server trusted");
    let submitted = engine
        .submit(asyncgate_server::domain::NewTicket {
            id: asyncgate_server::domain::TicketId::new(),
            queue: asyncgate_server::domain::QueueName::parse("tls").unwrap(),
            payload: payload::json("over tls".into()),
            priority: 0,
            idempotency_key: None,
            metadata: Default::default(),
            timeout: None,
            attempt_timeout: None,
            max_attempts: 1,
            tenant: None,
            not_before: None,
            callback: None,
        })
        .await
        .unwrap();
    let read = engine.get(submitted.ticket.id).await.unwrap();
    assert_eq!(*read.payload, payload::json("over tls".into()));
}

/// A gateway that crashed between claiming an idempotency key and storing
/// its ticket left the claim behind: the next submit with that key finds
/// the claim's gateway gone and takes it over at once (it used to wait and
/// answer UNAVAILABLE for a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_claim_of_a_crashed_gateway_is_taken_over_promptly() {
    let redis = RedisServer::start().expect("redis-server starts");
    let port = free_port();
    let _replica = start_replica(&redis, port);
    let client = serving(format!("http://127.0.0.1:{port}")).await;
    // What a gateway killed right after its claim leaves in Redis (the
    // layout: `<prefix>:idem:<scope>` holding `<ticket id> <instance>`).
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let orphan = uuid::Uuid::now_v7();
    let _: () = redis::cmd("SET")
        .arg("asyncgate:idem:-:order-17")
        .arg(format!("{orphan} crashed-gateway"))
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let ticket = client
        .submit(Submit::new("orders").idempotency_key("order-17"))
        .await
        .expect("the orphaned claim is taken over");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_ne!(ticket.id, orphan.to_string(), "a fresh ticket");
    // The key now names the new ticket: a retry gets it back.
    let again = client
        .submit(Submit::new("orders").idempotency_key("order-17"))
        .await
        .unwrap();
    assert_eq!(again.id, ticket.id);

    // A claim of a gateway that is alive is respected: no second ticket.
    let _: () = redis::cmd("SET")
        .arg("asyncgate:alive:busy-gateway")
        .arg(1)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("asyncgate:idem:-:order-18")
        .arg(format!("{} busy-gateway", uuid::Uuid::now_v7()))
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let waiting = client
        .submit(Submit::new("orders").idempotency_key("order-18"))
        .await
        .expect_err("the live claim holds");
    assert_eq!(waiting.code(), tonic::Code::Unavailable, "{waiting}");
}

/// Polls `grpc.health.v1` until it says `serving` (or the bound is hit).
async fn until_health(client: &Client, serving: bool) {
    for _ in 0..400 {
        if client.serving("").await.ok() == Some(serving) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("health never said serving = {serving}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_store_down_and_up_again() {
    let mut redis = RedisServer::start().expect("redis-server starts");
    let port = free_port();
    let _gateway = start_server(redis.url(), port, &[]);
    let client = serving(format!("http://127.0.0.1:{port}")).await;
    assert!(client.serving("").await.unwrap());

    // The store goes away: every service reports NOT_SERVING (a probe
    // without a key sees a gateway that cannot store anything).
    redis.kill();
    until_health(&client, false).await;
    for service in ["asyncgate.v1.Gateway", "asyncgate.v1.Workers"] {
        assert!(!client.serving(service).await.unwrap(), "{service}");
    }

    // It comes back: SERVING again, and submits work.
    redis.restart().expect("redis-server restarts");
    until_health(&client, true).await;
    client
        .submit(Submit::new("after").json(serde_json::json!(1)))
        .await
        .expect("a submit after the store came back");
}

/// Delayed tickets on two replicas sharing one Redis: both run timer passes
/// over the same timers, and every ticket still runs exactly once, and not
/// before its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fire_each_delayed_ticket_once_and_not_early() {
    const TICKETS: usize = 40;
    let redis = RedisServer::start().expect("redis-server starts");
    let (port_x, port_y) = (free_port(), free_port());
    let urls = [
        format!("http://127.0.0.1:{port_x}"),
        format!("http://127.0.0.1:{port_y}"),
    ];
    let _replicas = [start_replica(&redis, port_x), start_replica(&redis, port_y)];
    let client = serving(urls[0].clone()).await;
    serving(urls[1].clone()).await;

    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = urls
        .iter()
        .map(|url| {
            let runs = runs.clone();
            Worker::builder(url.clone())
                .queue("later")
                .handler(handler_fn(move |task: TaskContext| {
                    let runs = runs.clone();
                    async move {
                        let id = task.ticket_id().to_owned();
                        runs.lock()
                            .unwrap()
                            .push((id, std::time::SystemTime::now()));
                        Ok(payload::json("ran".into()))
                    }
                }))
                .build()
                .unwrap()
                .spawn()
        })
        .collect();
    let mut scheduled = std::collections::HashMap::new();
    for i in 0..TICKETS {
        let delay = Duration::from_millis(300 + 20 * i as u64);
        let ticket = client
            .submit(Submit::new("later").delay(delay).build())
            .await
            .unwrap();
        let at = asyncgate_client::convert::timestamp_to_system_time(
            ticket
                .scheduled_for
                .as_ref()
                .expect("a delayed ticket says when"),
        );
        assert_eq!(
            ticket.waiting_reason.as_ref().map(|w| w.kind),
            Some(pb::WaitingReasonKind::Scheduled as i32),
            "{ticket:?}"
        );
        scheduled.insert(ticket.id, at);
    }
    for id in scheduled.keys() {
        let done = client.get(id, Some(Duration::from_secs(30))).await.unwrap();
        assert_eq!(done.state, pb::TicketState::Succeeded as i32, "{done:?}");
        assert_eq!(done.attempt, 1);
    }
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), TICKETS, "one run per ticket: {runs:?}");
    for (id, ran_at) in &runs {
        let at = scheduled[id];
        assert!(
            *ran_at >= at,
            "{id} ran {:?} early",
            at.duration_since(*ran_at)
        );
    }
    for worker in workers {
        worker.shutdown();
    }
}

/// A schedule on two replicas sharing one Redis: both runners see every
/// slot due, and each slot still becomes exactly one ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fire_each_schedule_slot_once() {
    let redis = RedisServer::start().expect("redis-server starts");
    let (port_x, port_y) = (free_port(), free_port());
    let urls = [
        format!("http://127.0.0.1:{port_x}"),
        format!("http://127.0.0.1:{port_y}"),
    ];
    let _replicas = [start_replica(&redis, port_x), start_replica(&redis, port_y)];
    let client = serving(urls[0].clone()).await;
    serving(urls[1].clone()).await;
    let (ran_tx, mut ran_rx) = tokio::sync::mpsc::unbounded_channel();
    let workers: Vec<_> = urls
        .iter()
        .map(|url| reporting_worker(url, &["ticks"], ran_tx.clone()))
        .collect();
    client
        .schedules()
        .create(every_second("every-second", "ticks"))
        .await
        .unwrap();
    let mut slots = std::collections::HashSet::new();
    let mut tickets = std::collections::HashSet::new();
    while slots.len() < 4 {
        let id = ran_rx.recv().await.unwrap();
        assert!(tickets.insert(id.clone()), "ticket {id} ran twice");
        let ticket = client.get(&id, None).await.unwrap();
        let slot = ticket.metadata["asyncgate.fire_time"].clone();
        assert!(
            slots.insert(slot.clone()),
            "slot {slot} got a second ticket"
        );
    }
    client
        .schedules()
        .pause("every-second", "done")
        .await
        .unwrap();
    let seen = client.schedules().get("every-second").await.unwrap();
    let fired: Vec<_> = seen.recent_runs.iter().map(|r| r.fire_time).collect();
    let distinct: std::collections::HashSet<_> = fired
        .iter()
        .map(|t| t.as_ref().map(|t| t.seconds))
        .collect();
    assert_eq!(
        distinct.len(),
        fired.len(),
        "each slot recorded once: {fired:?}"
    );
    assert_eq!(seen.fired as usize, fired.len());
    for worker in workers {
        worker.shutdown();
    }
}
