//! API keys: each role against each service, tenant isolation, key reload.

use std::time::Duration;

use futures::StreamExt;

use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{Client, Submit, pb};
use asyncgate_server::auth::digest_hex;
use asyncgate_tests::{TestGateway, fast_config, finished, state};

const ALICE: &str = "alice-client-key";
const BOB: &str = "bob-client-key";
const WORKER: &str = "jobs-worker-key";
const ADMIN: &str = "the-admin-key";

fn keys_toml(extra: &str) -> String {
    format!(
        r#"
[[keys]]
name = "alice"
sha256 = "{}"
role = "client"
tenant = "a"

[[keys]]
name = "bob"
sha256 = "{}"
role = "client"
tenant = "b"

[[keys]]
name = "jobs-workers"
sha256 = "{}"
role = "worker"
queues = ["jobs", "batch.*"]

[[keys]]
name = "ops"
sha256 = "{}"
role = "admin"
{extra}"#,
        digest_hex(ALICE),
        digest_hex(BOB),
        digest_hex(WORKER),
        digest_hex(ADMIN)
    )
}

async fn gateway(dir: &tempfile::TempDir) -> TestGateway {
    let path = dir.path().join("keys.toml");
    std::fs::write(&path, keys_toml("")).unwrap();
    TestGateway::start_with(asyncgate_server::Config {
        keys: Some(path),
        ..fast_config()
    })
    .await
}

async fn client(gateway: &TestGateway, key: &str) -> Client {
    gateway.client().await.with_api_key(key).unwrap()
}

fn code<T: std::fmt::Debug>(result: Result<T, asyncgate_client::ClientError>) -> tonic::Code {
    result.expect_err("the call is refused").code()
}

#[tokio::test]
async fn missing_unknown_and_wrong_role_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir).await;
    let submit = || Submit::new("jobs").build();
    let anonymous = gateway.client().await;
    assert_eq!(
        code(anonymous.submit(submit()).await),
        tonic::Code::Unauthenticated
    );
    let stranger = client(&gateway, "not-a-key").await;
    assert_eq!(
        code(stranger.submit(submit()).await),
        tonic::Code::Unauthenticated
    );
    let worker_as_client = client(&gateway, WORKER).await;
    let denied = worker_as_client.submit(submit()).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(denied.to_string().contains("worker role"), "{denied}");
    // A batch needs what a submit needs.
    assert_eq!(
        code(anonymous.submit_batch([submit()]).await),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        code(worker_as_client.submit_batch([submit()]).await),
        tonic::Code::PermissionDenied
    );

    // Every Gateway RPC with a client key and an admin key.
    for key in [ALICE, ADMIN] {
        let client = client(&gateway, key).await;
        let ticket = client.submit(submit()).await.unwrap();
        let batch = client.submit_batch([submit(), submit()]).await.unwrap();
        assert!(batch.iter().all(Result::is_ok));
        client.get(&ticket.id, None).await.unwrap();
        let mut events = client.watch(&ticket.id, None).await.unwrap();
        assert!(events.next().await.unwrap().is_ok());
        client
            .list(pb::ListTicketsRequest::default())
            .await
            .unwrap();
        client.cancel(&ticket.id, "done").await.unwrap();
    }

    // Workers.Connect: a client key may not; a worker key only its queues.
    assert_eq!(
        hello(&gateway, ALICE, "jobs").await,
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        hello(&gateway, WORKER, "other").await,
        tonic::Code::PermissionDenied
    );
    assert_eq!(hello(&gateway, WORKER, "jobs").await, tonic::Code::Ok);
    assert_eq!(hello(&gateway, WORKER, "batch.eu").await, tonic::Code::Ok);
    assert_eq!(hello(&gateway, ADMIN, "anything").await, tonic::Code::Ok);
    assert_eq!(
        hello(&gateway, "nope", "jobs").await,
        tonic::Code::Unauthenticated
    );
}

/// Opens Workers.Connect with `key` for `queue`: OK for a Welcome, else the
/// refusal's code.
async fn hello(gateway: &TestGateway, key: &str, queue: &str) -> tonic::Code {
    let channel = asyncgate_client::endpoint(gateway.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut workers = pb::workers_client::WorkersClient::with_interceptor(
        channel,
        asyncgate_client::Credentials::api_key(key).unwrap(),
    );
    let hello = pb::WorkerMessage {
        kind: Some(pb::worker_message::Kind::Hello(pb::Hello {
            worker_name: "probe".into(),
            queues: vec![queue.into()],
            max_in_flight: 1,
            batches: false,
        })),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello).await.unwrap();
    let opened = workers
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let mut inbound = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => return status.code(),
    };
    match inbound.next().await {
        Some(Ok(message)) => {
            assert!(matches!(
                message.kind,
                Some(pb::dispatch_message::Kind::Welcome(_))
            ));
            tonic::Code::Ok
        }
        Some(Err(status)) => status.code(),
        None => tonic::Code::Unknown,
    }
}

#[tokio::test]
async fn tenants_never_see_each_others_tickets() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir).await;
    let (alice, bob, admin) = (
        client(&gateway, ALICE).await,
        client(&gateway, BOB).await,
        client(&gateway, ADMIN).await,
    );
    let keyed = |key: &str| Submit::new("jobs").idempotency_key(key).build();
    let mine = alice.submit(keyed("order-1")).await.unwrap();
    // The same idempotency key in another tenant is another ticket.
    let theirs = bob.submit(keyed("order-1")).await.unwrap();
    assert_ne!(mine.id, theirs.id);
    assert_eq!(alice.submit(keyed("order-1")).await.unwrap().id, mine.id);

    let absent = uuid::Uuid::now_v7().to_string();
    let not_found = bob.get(&absent, None).await.unwrap_err();
    for refused in [
        bob.get(&mine.id, None).await.unwrap_err(),
        bob.get(&mine.id, Some(Duration::from_secs(1)))
            .await
            .unwrap_err(),
        bob.cancel(&mine.id, "not yours").await.unwrap_err(),
        bob.watch(&mine.id, None).await.map(drop).unwrap_err(),
    ] {
        assert_eq!(refused.code(), tonic::Code::NotFound);
        assert_eq!(
            refused.to_string().replace(&mine.id, "ID"),
            not_found.to_string().replace(&absent, "ID"),
            "indistinguishable from a ticket that does not exist"
        );
    }
    let listed = |client: Client| async move {
        client
            .list(pb::ListTicketsRequest::default())
            .await
            .unwrap()
            .tickets
            .into_iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(alice.clone()).await, vec![mine.id.clone()]);
    assert_eq!(listed(bob.clone()).await, vec![theirs.id.clone()]);
    let everything = listed(admin.clone()).await;
    assert!(everything.contains(&mine.id) && everything.contains(&theirs.id));
    // Still Alice's to run and to read.
    assert_eq!(
        state(&alice.get(&mine.id, None).await.unwrap()),
        pb::TicketState::Pending
    );
    admin.cancel(&mine.id, "admin may").await.unwrap();
}

/// A batch is validated for its caller item by item, as Submit is: a
/// tenant's items go to its own queues, and naming another tenant's queue
/// refuses that item alone.
#[tokio::test]
async fn a_tenants_batch_stays_in_its_own_queues() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir).await;
    let (alice, bob, admin) = (
        client(&gateway, ALICE).await,
        client(&gateway, BOB).await,
        client(&gateway, ADMIN).await,
    );
    let theirs = bob
        .submit(Submit::new("jobs").idempotency_key("order-1"))
        .await
        .unwrap();
    let answers = alice
        .submit_batch([
            Submit::new("jobs").idempotency_key("order-1"),
            Submit::new("b/jobs"),
            Submit::new("jobs"),
        ])
        .await
        .unwrap();
    let mine = answers[0].as_ref().unwrap();
    assert_ne!(mine.id, theirs.id, "Bob's key is not Alice's");
    assert_eq!(mine.queue, "jobs", "shown by the name Alice uses");
    let refused = answers[1].as_ref().unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.to_string().contains("invalid queue"), "{refused}");
    assert!(answers[2].is_ok());
    let listed = |client: Client| async move {
        let page = client
            .list(pb::ListTicketsRequest::default())
            .await
            .unwrap();
        let mut queues: Vec<String> = page.tickets.into_iter().map(|t| t.queue).collect();
        queues.sort();
        queues
    };
    assert_eq!(listed(bob.clone()).await, ["jobs"], "only Bob's own");
    assert_eq!(listed(alice.clone()).await, ["jobs", "jobs"]);
    assert_eq!(listed(admin).await, ["a/jobs", "a/jobs", "b/jobs"]);
    assert_eq!(
        bob.get(&mine.id, None).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
}

#[tokio::test]
async fn a_reloaded_keys_file_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir).await;
    let alice = client(&gateway, ALICE).await;
    alice.submit(Submit::new("jobs").build()).await.unwrap();
    // Alice's key is revoked, Carol's added.
    let carol = "carol-client-key";
    let rotated = keys_toml(&format!(
        "\n[[keys]]\nname = \"carol\"\nsha256 = \"{}\"\nrole = \"client\"\n",
        digest_hex(carol)
    ))
    .replace(&digest_hex(ALICE), &"0".repeat(64));
    std::fs::write(dir.path().join("keys.toml"), rotated).unwrap();
    let keys = gateway.keys().expect("the gateway runs with keys");
    assert_eq!(keys.reload().unwrap(), 5);
    assert_eq!(
        alice
            .submit(Submit::new("jobs").build())
            .await
            .unwrap_err()
            .code(),
        tonic::Code::Unauthenticated
    );
    let carol = client(&gateway, carol).await;
    let ticket = carol.submit(Submit::new("jobs").build()).await.unwrap();
    // A broken file is refused and the keys in force stay.
    std::fs::write(dir.path().join("keys.toml"), "[[keys]]\nname = 1\n").unwrap();
    assert!(keys.reload().is_err());
    carol.get(&ticket.id, None).await.unwrap();

    let worker = gateway
        .worker("jobs")
        .api_key(WORKER)
        .unwrap()
        .handler(handler_fn(|task: TaskContext| async move {
            Ok(task.payload().clone())
        }))
        .build()
        .unwrap()
        .spawn();
    assert_eq!(
        state(&finished(&carol, &ticket.id).await),
        pb::TicketState::Succeeded
    );
    worker.shutdown();
}

#[tokio::test]
async fn a_key_over_its_rate_is_told_when_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    let limited = "limited-key";
    std::fs::write(
        &path,
        format!(
            "[[keys]]\nname = \"slow\"\nsha256 = \"{}\"\nrole = \"client\"\nrate_per_second = 0.5\nburst = 2\n",
            digest_hex(limited)
        ),
    )
    .unwrap();
    let gateway = TestGateway::start_with(asyncgate_server::Config {
        keys: Some(path),
        ..fast_config()
    })
    .await;
    let client = client(&gateway, limited).await;
    for _ in 0..2 {
        client.submit(Submit::new("jobs").build()).await.unwrap();
    }
    let refused = client
        .submit(Submit::new("jobs").build())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.to_string().contains("retry in"), "{refused}");
}
