//! What a key learns about itself and what it is shown, against a real
//! gateway with a keys file: `Gateway.WhoAmI` for every role (the methods
//! it lists are the ones the gateway then allows), payloads hidden from a
//! viewer key unless its entry grants them, and a queue's 15-minute history
//! for the dashboard's charts.

use futures::StreamExt;

use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{Client, Submit, pb};
use asyncgate_server::auth::digest_hex;
use asyncgate_tests::{TestGateway, fast_config, finished, json};

const OPS: &str = "ops-admin-key";
const VIEWER: &str = "plain-viewer-key";
const TRUSTED_VIEWER: &str = "viewer-with-payloads-key";
const ALICE: &str = "alice-client-key";
const WORKER: &str = "worker-key";

async fn gateway_with_keys(dir: &tempfile::TempDir) -> TestGateway {
    let keys = format!(
        r#"
[[keys]]
name = "ops"
sha256 = "{}"
role = "admin"

[[keys]]
name = "dashboard"
sha256 = "{}"
role = "viewer"

[[keys]]
name = "support"
sha256 = "{}"
role = "viewer"
payloads = true

[[keys]]
name = "alice"
sha256 = "{}"
role = "client"
tenant = "a"

[[keys]]
name = "workers"
sha256 = "{}"
role = "worker"
queues = ["jobs"]
"#,
        digest_hex(OPS),
        digest_hex(VIEWER),
        digest_hex(TRUSTED_VIEWER),
        digest_hex(ALICE),
        digest_hex(WORKER),
    );
    let path = dir.path().join("keys.toml");
    std::fs::write(&path, keys).unwrap();
    TestGateway::start_with(asyncgate_server::Config {
        keys: Some(path),
        ..fast_config()
    })
    .await
}

async fn as_key(gateway: &TestGateway, key: &str) -> Client {
    gateway.client().await.with_api_key(key).unwrap()
}

const PAUSE: &str = "/asyncgate.v1.Admin/PauseQueue";
const LIST_QUEUES: &str = "/asyncgate.v1.Admin/ListQueues";
const SUBMIT: &str = "/asyncgate.v1.Gateway/Submit";
const CANCEL: &str = "/asyncgate.v1.Gateway/CancelTicket";
const WATCH_MANY: &str = "/asyncgate.v1.Gateway/WatchTickets";
const CONNECT: &str = "/asyncgate.v1.Workers/Connect";

#[tokio::test]
async fn who_am_i_tells_each_key_its_role_and_exactly_the_methods_it_may_call() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_with_keys(&dir).await;
    let cases = [
        (OPS, "ops", "admin", "", true),
        (VIEWER, "dashboard", "viewer", "", false),
        (TRUSTED_VIEWER, "support", "viewer", "", true),
        (ALICE, "alice", "client", "a", true),
        (WORKER, "workers", "worker", "default", true),
    ];
    for (key, name, role, tenant, payloads) in cases {
        let me = as_key(&gateway, key).await.who_am_i().await.unwrap();
        assert_eq!(
            (me.key_name.as_str(), me.role.as_str(), me.tenant.as_str()),
            (name, role, tenant),
            "{me:?}"
        );
        assert_eq!(me.sees_payloads, payloads, "{name}");
        let may = |method: &str| me.methods.iter().any(|m| m == method);
        let expected = match role {
            "admin" => [true, true, true, true, true, true],
            "viewer" => [false, true, false, false, true, false],
            "client" => [false, false, true, true, true, false],
            _ => [false, false, false, false, false, true],
        };
        let got = [PAUSE, LIST_QUEUES, SUBMIT, CANCEL, WATCH_MANY, CONNECT].map(may);
        assert_eq!(got, expected, "{name}: {:?}", me.methods);
        assert!(may("/asyncgate.v1.Gateway/WhoAmI"), "{name}");
        assert!(me.methods.is_sorted(), "sorted");
    }

    // What WhoAmI says is what the gateway does: the viewer's "no" to
    // PauseQueue is a PERMISSION_DENIED, its "yes" to ListQueues answers.
    let viewer = as_key(&gateway, VIEWER).await;
    let denied = viewer.admin().pause_queue("jobs", "").await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    viewer.admin().list_queues().await.unwrap();

    // A bad key learns nothing.
    let stranger = as_key(&gateway, "not-a-key").await.who_am_i().await;
    assert_eq!(stranger.unwrap_err().code(), tonic::Code::Unauthenticated);

    // Without a keys file everyone is the anonymous admin.
    let open = TestGateway::start().await;
    let me = open.client().await.who_am_i().await.unwrap();
    assert_eq!(
        (me.key_name.as_str(), me.role.as_str()),
        ("anonymous", "admin")
    );
    assert!(me.methods.iter().any(|m| m == PAUSE) && me.sees_payloads);
}

#[tokio::test]
async fn a_viewer_key_sees_the_work_but_not_the_payloads_unless_granted() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_with_keys(&dir).await;
    let worker = gateway
        .worker("jobs")
        .api_key(OPS)
        .unwrap()
        .handler(handler_fn(|task: TaskContext| async move {
            task.output(pb::Payload {
                kind: Some(pb::payload::Kind::Binary(b"card 4242".to_vec().into())),
                content_type: "text/plain".into(),
            })
            .await;
            Ok(json(serde_json::json!({"secret": "s3cr3t"})))
        }))
        .build()
        .unwrap()
        .spawn();
    let ops = as_key(&gateway, OPS).await;
    let ticket = ops
        .submit(Submit::new("jobs").payload(json(serde_json::json!("x"))))
        .await
        .unwrap();
    let done = finished(&ops, &ticket.id).await;
    assert!(done.result.is_some() && !done.payloads_hidden);

    // The plain viewer: state, attempts and metadata, no result.
    let viewer = as_key(&gateway, VIEWER).await;
    let seen = viewer.get(&ticket.id, None).await.unwrap();
    assert_eq!(seen.state, pb::TicketState::Succeeded as i32);
    assert!(seen.payloads_hidden, "marked hidden");
    assert_eq!(seen.result, None, "no result");
    let listed = viewer
        .list(pb::ListTicketsRequest::default())
        .await
        .unwrap()
        .tickets;
    assert!(
        listed
            .iter()
            .all(|t| t.result.is_none() && t.payloads_hidden)
    );
    // A watch replays the output chunk's event, without the chunk.
    let events: Vec<pb::TicketEvent> = viewer
        .watch(&ticket.id, Some(0))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    let outputs: Vec<_> = events
        .iter()
        .filter(|e| e.kind == pb::TicketEventKind::Output as i32)
        .collect();
    assert_eq!(outputs.len(), 1, "{events:?}");
    assert_eq!(outputs[0].output, None, "the chunk is left out");
    assert!(
        events
            .iter()
            .all(|e| e.ticket.as_ref().is_none_or(|t| t.result.is_none()))
    );

    // A viewer whose entry says `payloads = true` sees them.
    let support = as_key(&gateway, TRUSTED_VIEWER).await;
    let seen = support.get(&ticket.id, None).await.unwrap();
    assert!(!seen.payloads_hidden);
    assert_eq!(seen.result, done.result);
    worker.shutdown();
}

#[tokio::test]
async fn a_queue_history_has_its_recent_buckets_only_when_asked() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let worker = gateway.spawn_worker(
        "charts",
        handler_fn(|task: TaskContext| async move { Ok(task.payload().clone()) }),
    );
    for n in 0..3 {
        let ticket = client
            .submit(Submit::new("charts").payload(json(serde_json::json!(n))))
            .await
            .unwrap();
        finished(&client, &ticket.id).await;
    }
    let admin = client.admin();
    let plain = admin.get_queue("charts").await.unwrap();
    assert!(plain.history.is_empty(), "not asked for");
    assert!(admin.list_queues().await.unwrap()[0].history.is_empty());

    let info = admin.queue_history("charts").await.unwrap();
    assert!(
        !info.history.is_empty() && info.history.len() <= 2,
        "{:?}",
        info.history
    );
    let succeeded: u64 = info.history.iter().map(|b| b.succeeded).sum();
    assert_eq!(succeeded, 3);
    let waits: u64 = info
        .history
        .iter()
        .map(|b| b.queue_wait.as_ref().map_or(0, |l| l.count))
        .sum();
    assert_eq!(waits, 3, "three leases");
    let starts: Vec<i64> = info
        .history
        .iter()
        .map(|b| b.start.as_ref().unwrap().seconds)
        .collect();
    assert!(
        starts.is_sorted() && starts.iter().all(|s| s % 15 == 0),
        "{starts:?}"
    );
    worker.shutdown();
}
