//! Hostile callbacks against the real binary: a caller aiming callbacks at
//! the cloud metadata address, at an unlisted loopback address, or with an
//! oversized URL is refused with a status that says why; and a flood of
//! callbacks to a receiver that accepts connections and never answers holds
//! no more than `--callback-concurrency` connections, keeps the gateway's
//! memory bounded, and leaves other callers served at once. Hostile queue
//! targets (`Admin.SetQueueTarget`) likewise: the metadata address, an
//! unlisted loopback address, options that would read the gateway's
//! environment or files, an oversized target are refused; a target that
//! accepts connections and never answers holds no more than its
//! `max_concurrent` of them, and once taken off lets its tickets go after
//! the shutdown grace.

use std::time::Duration;

use asyncgate_client::{Client, Submit, pb};
use tokio::net::TcpListener;

mod common;
use common::{free_port, rss, start_server, wait_until_serving};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const CONCURRENCY: usize = 16;

/// Accepts connections and never answers; counts them.
async fn tarpit() -> (tokio::sync::watch::Receiver<usize>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (count, accepted) = tokio::sync::watch::channel(0);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
            count.send_replace(held.len());
        }
    });
    (accepted, url)
}

/// Another caller's submit and cancel are answered at once (well under 2 s).
async fn others_are_served_at_once(client: &Client) {
    let started = tokio::time::Instant::now();
    let other = client
        .submit(Submit::new("other").json(serde_json::json!("fine")))
        .await
        .unwrap();
    let cancelled = client.cancel(&other.id, "").await.unwrap();
    assert_eq!(cancelled.state, pb::TicketState::Cancelled as i32);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_callbacks_are_refused_or_bounded_and_others_stay_served() {
    let (mut accepted, tarpit_url) = tarpit().await;
    let port = free_port();
    let concurrency = CONCURRENCY.to_string();
    let mut gateway = start_server(
        "memory",
        port,
        &[
            "--callback-allow",
            "127.0.0.1,hooks.example.com",
            "--callback-allow-http",
            "--callback-secret",
            SECRET,
            "--callback-concurrency",
            &concurrency,
        ],
    );
    let pid = gateway.id().expect("the gateway runs");
    let client = Client::connect_lazy(format!("http://127.0.0.1:{port}")).unwrap();
    wait_until_serving(&client).await;

    // SSRF attempts and a malformed URL: refused, each saying why.
    let long = format!("http://127.0.0.1:9/{}", "a".repeat(4096));
    for (url, code, needle) in [
        (
            "http://169.254.169.254/latest/meta-data/",
            tonic::Code::FailedPrecondition,
            "not in",
        ),
        (
            "http://[::1]:9/x",
            tonic::Code::FailedPrecondition,
            "not in",
        ),
        (
            "http://10.0.0.1/x",
            tonic::Code::FailedPrecondition,
            "not in",
        ),
        (
            "gopher://127.0.0.1:9/x",
            tonic::Code::InvalidArgument,
            "scheme",
        ),
        (long.as_str(), tonic::Code::InvalidArgument, "limit"),
    ] {
        let refused = client
            .submit(Submit::new("q").callback(url))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            code,
            "{}: {refused}",
            &url[..url.len().min(60)]
        );
        assert!(refused.to_string().contains(needle), "{refused}");
    }

    // A flood of callbacks into a receiver that never answers.
    let before = rss(pid);
    let mut tickets = Vec::new();
    for batch in 0..2 {
        let requests = (0..1_000).map(|n| {
            Submit::new("flood")
                .json(serde_json::json!(batch * 1_000 + n))
                .callback(&tarpit_url)
        });
        for stored in client.submit_batch(requests).await.unwrap() {
            tickets.push(stored.unwrap().id);
        }
    }
    let purged = client
        .admin()
        .purge_queue("flood", &[], None)
        .await
        .unwrap();
    assert_eq!(purged, 2_000);
    // The deliverer fills its slots, and no more.
    tokio::time::timeout(
        Duration::from_secs(20),
        accepted.wait_for(|n| *n >= CONCURRENCY),
    )
    .await
    .expect("the deliverer reaches the receiver")
    .unwrap();
    // Others are served at once meanwhile.
    others_are_served_at_once(&client).await;
    let held = *accepted.borrow();
    assert!(
        held <= CONCURRENCY,
        "{held} connections held; --callback-concurrency is {CONCURRENCY}"
    );
    let pending = client
        .get(&tickets[1_999], None)
        .await
        .unwrap()
        .callback
        .unwrap();
    assert_eq!(pending.state, pb::CallbackState::Pending as i32);
    let grown = rss(pid).saturating_sub(before);
    assert!(grown < 64 << 20, "RSS grew {} MiB", grown >> 20);
    gateway.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queue_targets_are_refused_or_bounded_and_others_stay_served() {
    let (mut accepted, tarpit_url) = tarpit().await;
    let port = free_port();
    let mut gateway = start_server(
        "memory",
        port,
        &["--callback-allow", "127.0.0.1", "--shutdown-grace", "1s"],
    );
    let pid = gateway.id().expect("the gateway runs");
    let client = Client::connect_lazy(format!("http://127.0.0.1:{port}")).unwrap();
    wait_until_serving(&client).await;
    let admin = client.admin();

    let huge = format!("{tarpit_url}?x={}", "a".repeat(100_000));
    for (target, code, needle) in [
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            tonic::Code::FailedPrecondition,
            "not in",
        ),
        (
            "grpc://[::1]:9/a.B/C".to_owned(),
            tonic::Code::FailedPrecondition,
            "not in",
        ),
        (
            format!("{tarpit_url}?header_env=authorization:HOME"),
            tonic::Code::InvalidArgument,
            "header_env",
        ),
        (
            format!("{tarpit_url}?key_file=/etc/shadow"),
            tonic::Code::InvalidArgument,
            "key_file",
        ),
        (huge, tonic::Code::InvalidArgument, "limit"),
    ] {
        let refused = admin.set_queue_target("q", &target).await.unwrap_err();
        let shown = &target[..target.len().min(60)];
        assert_eq!(refused.code(), code, "{shown}: {refused}");
        assert!(refused.to_string().contains(needle), "{shown}: {refused}");
    }

    // A target that never answers, flooded.
    const MAX: usize = 8;
    admin
        .set_queue_target("slow", &format!("{tarpit_url}?max_concurrent={MAX}"))
        .await
        .unwrap();
    let before = rss(pid);
    for batch in 0..2 {
        let requests =
            (0..1_000).map(|n| Submit::new("slow").json(serde_json::json!(batch * 1_000 + n)));
        for stored in client.submit_batch(requests).await.unwrap() {
            stored.unwrap();
        }
    }
    tokio::time::timeout(Duration::from_secs(20), accepted.wait_for(|n| *n >= MAX))
        .await
        .expect("the target is called")
        .unwrap();
    others_are_served_at_once(&client).await;
    let held = *accepted.borrow();
    assert!(
        held <= MAX,
        "{held} connections held; max_concurrent is {MAX}"
    );
    let queue = admin.get_queue("slow").await.unwrap();
    let counts = queue.counts.unwrap();
    assert_eq!(
        (counts.running, counts.pending),
        (MAX as u64, 2_000 - MAX as u64)
    );

    // Taken off: after the grace its hung calls are dropped and their
    // tickets wait in the queue again.
    admin.set_queue_target("slow", "").await.unwrap();
    let mut left = 200;
    loop {
        let counts = admin.get_queue("slow").await.unwrap().counts.unwrap();
        if counts.running == 0 && admin.list_workers(Some("slow")).await.unwrap().is_empty() {
            assert_eq!(counts.pending, 2_000, "every ticket waits again");
            break;
        }
        left -= 1;
        assert!(left > 0, "the hung calls were never let go: {counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = rss(pid).saturating_sub(before);
    assert!(grown < 64 << 20, "RSS grew {} MiB", grown >> 20);
    gateway.start_kill().unwrap();
}
