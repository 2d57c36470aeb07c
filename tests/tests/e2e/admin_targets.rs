//! Targets put on queues through the admin API (`Admin.SetQueueTarget`),
//! against real gateways and a real upstream tonic service: the gateway
//! works the queue's tickets by calling it until the target is taken off;
//! the queue shows its target; a durable gateway calls it again after a
//! restart; three replicas on one Redis all pick it up (each attempt calls
//! the upstream once) and all let it go. Refused: a gateway without a
//! destination allowlist, a host not in it, a name that resolves to a
//! loopback address not listed (at connect), options that read the
//! gateway's environment or files, a queue whose target is in the config,
//! and keys that may not (a viewer, a tenant's admin).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use asyncgate_client::{Client, Submit, pb};
use asyncgate_proto::bench as echo;
use asyncgate_server::auth::digest_hex;
use asyncgate_server::callbacks::{CallbackSettings, parse_allowed};
use asyncgate_server::config::Config;
use asyncgate_tests::{TestGateway, fast_config, finished};
use prost::Message;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

const METHOD: &str = "asyncgate.bench.v1.Echo/Echo";

/// An Echo service that knows nothing of Asyncgate, counting its calls and
/// the most it had in flight at once; a `slow…` request takes 30 ms.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<AtomicU32>,
    in_flight: Arc<AtomicU32>,
    most_in_flight: Arc<AtomicU32>,
}

#[tonic::async_trait]
impl echo::echo_server::Echo for Upstream {
    async fn echo(
        &self,
        request: tonic::Request<echo::EchoRequest>,
    ) -> Result<tonic::Response<echo::EchoReply>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let payload = request.into_inner().payload;
        if payload.starts_with(b"slow") {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(tonic::Response::new(echo::EchoReply {
            payload: [b"echo:".as_slice(), &payload].concat().into(),
        }))
    }
}

impl Upstream {
    /// Serves on an ephemeral loopback port; its address.
    async fn start(&self) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(echo::echo_server::EchoServer::new(self.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

fn allowing(allow: &[&str]) -> CallbackSettings {
    CallbackSettings {
        allow: allow.iter().map(|a| parse_allowed(a).unwrap()).collect(),
        ..CallbackSettings::default()
    }
}

fn config(allow: &[&str]) -> Config {
    let mut config = fast_config();
    config.callbacks = allowing(allow);
    config
}

fn echo_request(text: &str) -> Submit {
    let bytes = echo::EchoRequest {
        payload: text.as_bytes().to_vec().into(),
    }
    .encode_to_vec();
    Submit::new("echo").binary(bytes, "application/x-protobuf")
}

fn reply(ticket: &pb::Ticket) -> String {
    let Some(pb::payload::Kind::Binary(bytes)) =
        ticket.result.as_ref().and_then(|p| p.kind.clone())
    else {
        panic!("no binary result: {ticket:?}");
    };
    String::from_utf8(echo::EchoReply::decode(bytes).unwrap().payload.to_vec()).unwrap()
}

/// The status a refused call got.
fn status_of(error: asyncgate_client::ClientError) -> tonic::Status {
    match error {
        asyncgate_client::ClientError::Status(status) => status,
        other => panic!("not a status: {other}"),
    }
}

/// Submits `text` to queue `echo` and waits for the ticket to end.
async fn run(client: &Client, text: &str) -> pb::Ticket {
    let ticket = client.submit(echo_request(text)).await.unwrap();
    finished(client, &ticket.id).await
}

#[tokio::test]
async fn a_target_set_through_the_admin_api_works_the_queue_until_taken_off() {
    let upstream = Upstream::default();
    let addr = upstream.start().await;
    let gateway = TestGateway::start_with(config(&["127.0.0.1"])).await;
    let client = gateway.client().await;
    let admin = client.admin();

    let url = format!("grpc://{addr}/{METHOD}");
    let info = admin
        .set_queue_target(
            "echo",
            &format!("{url}?max_concurrent=4&max_per_second=500"),
        )
        .await
        .unwrap();
    let target = info.target.expect("the queue shows its target");
    assert_eq!(target.url, url);
    assert_eq!((target.max_concurrent, target.max_per_second), (4, 500));
    assert!(!target.from_config);
    assert_eq!(target.set_by, "anonymous");
    assert!(target.set_at.is_some());
    assert_eq!(target.problem, "", "this gateway calls it");
    assert_eq!(
        target.target,
        format!("{url}?max_concurrent=4&max_per_second=500")
    );

    let ticket = run(&client, "first").await;
    assert_eq!(
        ticket.state,
        pb::TicketState::Succeeded as i32,
        "{ticket:?}"
    );
    assert_eq!(reply(&ticket), "echo:first");
    assert_eq!(upstream.calls(), 1);
    let listed = admin.list_queues().await.unwrap();
    let echo = listed.iter().find(|q| q.name == "echo").expect("listed");
    assert_eq!(
        echo.target.as_ref().map(|t| t.url.as_str()),
        Some(url.as_str())
    );
    let workers = admin.list_workers(Some("echo")).await.unwrap();
    assert_eq!(workers.len(), 1, "the target's in-process worker");
    assert_eq!(workers[0].worker_name, format!("target {url}"));

    // Taken off: the queue waits for a worker again, and says so.
    let info = admin.set_queue_target("echo", "").await.unwrap();
    assert!(info.target.is_none());
    let waiting = client.submit(echo_request("second")).await.unwrap();
    let mut left = 200;
    while !admin.list_workers(Some("echo")).await.unwrap().is_empty() {
        left -= 1;
        assert!(left > 0, "the target's worker never left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = client.get(&waiting.id, None).await.unwrap();
    assert_eq!(seen.state, pb::TicketState::Pending as i32);
    let reason = seen.waiting_reason.expect("a waiting reason");
    assert_eq!(
        reason.kind,
        pb::WaitingReasonKind::NoWorkers as i32,
        "{reason:?}"
    );
    assert_eq!(upstream.calls(), 1, "not called once taken off");

    // Put back (an HTTP target would do as well): the waiting ticket runs.
    admin.set_queue_target("echo", &url).await.unwrap();
    let done = finished(&client, &waiting.id).await;
    assert_eq!(reply(&done), "echo:second");
}

#[tokio::test]
async fn set_queue_target_refuses_what_it_must_and_says_what_to_fix() {
    const OPS: &str = "ops-admin-key";
    const ACME_OPS: &str = "acme-admin-key";
    const VIEWER: &str = "viewer-key";
    let dir = tempfile::tempdir().unwrap();
    let keys = format!(
        "[[keys]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"admin\"\n\n\
         [[keys]]\nname = \"acme-ops\"\nsha256 = \"{}\"\nrole = \"admin\"\ntenant = \"acme\"\n\n\
         [[keys]]\nname = \"dashboard\"\nsha256 = \"{}\"\nrole = \"viewer\"\n",
        digest_hex(OPS),
        digest_hex(ACME_OPS),
        digest_hex(VIEWER)
    );
    std::fs::write(dir.path().join("keys.toml"), keys).unwrap();
    let upstream = Upstream::default();
    let addr = upstream.start().await;
    let mut keyed = config(&["127.0.0.1", "*.internal.example"]);
    keyed.keys = Some(dir.path().join("keys.toml"));
    keyed.targets = vec![
        asyncgate_server::targets::parse_target(&format!("configured=grpc://{addr}/{METHOD}"))
            .unwrap(),
    ];
    let gateway = TestGateway::start_with(keyed).await;
    let as_key = |key: &'static str| {
        let gateway = &gateway;
        async move { gateway.client().await.with_api_key(key).unwrap() }
    };
    let ops = as_key(OPS).await.admin();
    let good = format!("grpc://{addr}/{METHOD}");

    for (target, code, needle) in [
        (
            "ftp://127.0.0.1:21/x".to_owned(),
            tonic::Code::InvalidArgument,
            "starts with grpc://",
        ),
        (
            format!("grpc://{addr}/NoService"),
            tonic::Code::InvalidArgument,
            "package.Service/Method",
        ),
        (
            format!("{good}?max_concurrent=0"),
            tonic::Code::InvalidArgument,
            "max_concurrent",
        ),
        (
            format!("{good}?header_env=authorization:HOME"),
            tonic::Code::InvalidArgument,
            "only its config (--target) may use it",
        ),
        (
            format!("grpcs://{addr}/{METHOD}?ca_file=/etc/passwd"),
            tonic::Code::InvalidArgument,
            "ca_file reads this gateway's environment or files",
        ),
        (
            format!("{good}?x={}", "a".repeat(3000)),
            tonic::Code::InvalidArgument,
            "the limit is 2048",
        ),
        (
            format!("grpc://10.0.0.7:50051/{METHOD}"),
            tonic::Code::FailedPrecondition,
            "\"10.0.0.7\" is not in this gateway's --callback-allow list",
        ),
        (
            "http://169.254.169.254/latest/meta-data".to_owned(),
            tonic::Code::FailedPrecondition,
            "--callback-allow",
        ),
        (
            format!("grpc://orders.elsewhere.example:50051/{METHOD}"),
            tonic::Code::FailedPrecondition,
            "not in this gateway's --callback-allow list",
        ),
    ] {
        let refused = ops.set_queue_target("q", &target).await.unwrap_err();
        let status = status_of(refused);
        assert_eq!(status.code(), code, "{target}: {status:?}");
        assert!(status.message().contains(needle), "{target}: {status:?}");
        if code == tonic::Code::InvalidArgument {
            assert!(
                status.message().contains("target"),
                "names the field: {status:?}"
            );
        }
    }
    // A listed suffix is accepted (it is resolved and checked at connect).
    let info = ops
        .set_queue_target(
            "q",
            &format!("grpc://orders.internal.example:50051/{METHOD}"),
        )
        .await
        .unwrap();
    assert_eq!(info.target.unwrap().set_by, "ops");
    // Nothing to take off a queue never used.
    let status = status_of(ops.set_queue_target("never-used", "").await.unwrap_err());
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(
        status.message().contains("no target to take off"),
        "{status:?}"
    );
    // The config's target is changed in the config.
    let refused = ops.set_queue_target("configured", &good).await.unwrap_err();
    let status = status_of(refused);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("change it there"), "{status:?}");
    // Its in-process worker made the queue known.
    let shown = ops.get_queue("configured").await.unwrap();
    let shown = shown.target.expect("the config's target is shown");
    assert!(shown.from_config && shown.set_by.is_empty(), "{shown:?}");
    assert_eq!(shown.target, format!("{good}?max_concurrent=64"));
    // Keys that may not: a viewer, and an admin confined to a tenant (its
    // WhoAmI does not list the method either).
    for key in [VIEWER, ACME_OPS] {
        let client = as_key(key).await;
        let refused = client
            .admin()
            .set_queue_target("q", &good)
            .await
            .unwrap_err();
        let status = status_of(refused);
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{key}: {status:?}"
        );
        let me = client.who_am_i().await.unwrap();
        assert!(
            !me.methods
                .iter()
                .any(|m| m == "/asyncgate.v1.Admin/SetQueueTarget"),
            "{key}: {:?}",
            me.methods
        );
    }
    let unchanged = ops.get_queue("q").await.unwrap().target.unwrap();
    assert!(unchanged.url.contains("orders.internal.example"));
    assert_eq!(upstream.calls(), 0);

    // Without an allowlist, admin-set targets are off.
    let open = TestGateway::start_with(fast_config()).await;
    let refused = open
        .client()
        .await
        .admin()
        .set_queue_target("q", &good)
        .await
        .unwrap_err();
    let status = status_of(refused);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("no --callback-allow list"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_listed_name_that_resolves_to_loopback_is_refused_at_connect() {
    let upstream = Upstream::default();
    let addr = upstream.start().await;
    // The name is listed, its loopback address is not.
    let gateway = TestGateway::start_with(config(&["localhost"])).await;
    let client = gateway.client().await;
    client
        .admin()
        .set_queue_target(
            "echo",
            &format!("grpc://localhost:{}/{METHOD}", addr.port()),
        )
        .await
        .unwrap();
    let ticket = client
        .submit(echo_request("sneaky").max_attempts(2))
        .await
        .unwrap();
    let ticket = finished(&client, &ticket.id).await;
    assert_eq!(ticket.state, pb::TicketState::Failed as i32, "{ticket:?}");
    let error = ticket.error.expect("an error");
    assert_eq!(error.code, tonic::Code::Unavailable as i32, "{error:?}");
    assert!(
        error.message.contains("may not reach"),
        "says why: {error:?}"
    );
    assert_eq!(upstream.calls(), 0, "never connected");
}

#[tokio::test]
async fn a_stored_target_works_the_queue_again_after_a_restart() {
    let upstream = Upstream::default();
    let addr = upstream.start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut durable = TestGateway::durable_config(dir.path());
    durable.callbacks = allowing(&["127.0.0.0/8"]);
    let gateway = TestGateway::start_with(durable).await;
    gateway
        .client()
        .await
        .admin()
        .set_queue_target("echo", &format!("grpc://{addr}/{METHOD}"))
        .await
        .unwrap();
    let gateway = gateway.restart().await;
    let client = gateway.client().await;
    let ticket = run(&client, "after the restart").await;
    assert_eq!(reply(&ticket), "echo:after the restart");
    let info = client.admin().get_queue("echo").await.unwrap();
    assert_eq!(info.target.unwrap().set_by, "anonymous");
}

#[tokio::test]
async fn three_replicas_on_one_redis_pick_up_a_target_and_call_once_per_attempt() {
    let redis = asyncgate_server::testing::RedisServer::start().expect("redis-server starts");
    let upstream = Upstream::default();
    let addr = upstream.start().await;
    let mut replicas = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut config = TestGateway::redis_config(&redis.url());
        config.callbacks = allowing(&["127.0.0.1"]);
        let replica = TestGateway::start_with(config).await;
        clients.push(replica.client().await);
        replicas.push(replica);
    }
    let url = format!("grpc://{addr}/{METHOD}");
    clients[0]
        .admin()
        .set_queue_target("echo", &format!("{url}?max_concurrent=8"))
        .await
        .unwrap();
    // Every replica shows it within its reload interval.
    for client in &clients {
        let mut left = 300;
        loop {
            let info = client.admin().get_queue("echo").await.unwrap();
            if info
                .target
                .is_some_and(|t| t.problem.is_empty() && t.url == url)
            {
                break;
            }
            left -= 1;
            assert!(left > 0, "a replica never picked the target up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut left = 300;
    while clients[0]
        .admin()
        .list_workers(Some("echo"))
        .await
        .unwrap()
        .len()
        < 3
    {
        left -= 1;
        assert!(left > 0, "each replica runs the target's worker");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    const TICKETS: usize = 60;
    let mut ids = Vec::new();
    for n in 0..TICKETS {
        let ticket = clients[n % 3]
            .submit(echo_request(&format!("n{n}")))
            .await
            .unwrap();
        ids.push(ticket.id);
    }
    for (n, id) in ids.iter().enumerate() {
        let ticket = finished(&clients[(n + 1) % 3], id).await;
        assert_eq!(reply(&ticket), format!("echo:n{n}"));
        assert_eq!(ticket.attempt, 1, "{ticket:?}");
    }
    assert_eq!(
        upstream.calls() as usize,
        TICKETS,
        "each attempt called the upstream once, by one replica"
    );
    // The queue's limits hold over all three replicas' target workers
    // (each may call 8 at once).
    clients[1]
        .admin()
        .set_queue_limits(
            "echo",
            pb::QueueLimits {
                max_concurrent: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    upstream.most_in_flight.store(0, Ordering::SeqCst);
    let mut slow = Vec::new();
    for n in 0..12 {
        slow.push(
            clients[n % 3]
                .submit(echo_request(&format!("slow{n}")))
                .await
                .unwrap()
                .id,
        );
    }
    for id in &slow {
        finished(&clients[0], id).await;
    }
    let most = upstream.most_in_flight.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&most),
        "{most} calls at once; the queue allows 2"
    );

    // Taken off through another replica: every replica lets it go.
    clients[2]
        .admin()
        .set_queue_target("echo", "")
        .await
        .unwrap();
    let mut left = 300;
    while !clients[1]
        .admin()
        .list_workers(Some("echo"))
        .await
        .unwrap()
        .is_empty()
    {
        left -= 1;
        assert!(left > 0, "a replica kept the target's worker");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for client in &clients {
        assert!(
            client
                .admin()
                .get_queue("echo")
                .await
                .unwrap()
                .target
                .is_none()
        );
    }
}
