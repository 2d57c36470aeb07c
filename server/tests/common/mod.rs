//! Helpers shared by the tests that run the real `asyncgate-server` binary.
//! (Each test binary uses some of them.)
#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use asyncgate_client::{Client, pb};

/// A loopback port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("addr").port()
}

/// Starts the real server binary on `port` with `store`, fast heartbeats and
/// backoffs, and `extra` flags; it is killed when the handle is dropped.
pub(crate) fn start_server(store: impl AsRef<OsStr>, port: u16, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_asyncgate-server"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--store")
        .arg(store)
        .args(["--heartbeat-interval", "200ms", "--lease-ttl", "1s"])
        .args(["--backoff-base", "10ms", "--backoff-cap", "100ms"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts")
}

/// Waits until the gateway behind `client` answers (a child process takes
/// a moment to bind).
pub(crate) async fn wait_until_serving(client: &Client) {
    for _ in 0..200 {
        let probe = client
            .list(pb::ListTicketsRequest {
                page_size: 1,
                ..Default::default()
            })
            .await;
        if probe.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the gateway did not come up");
}

/// Waits (long-polling, within a generous bound) until ticket `id` is
/// terminal, and returns it.
pub(crate) async fn finished(client: &Client, id: &str) -> pb::Ticket {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let ticket = client
                .get(id, Some(Duration::from_secs(10)))
                .await
                .expect("GetTicket");
            if asyncgate_client::payload::is_terminal(ticket.state()) {
                return ticket;
            }
        }
    })
    .await
    .expect("the ticket finishes")
}

/// The resident memory of process `pid`, in bytes.
pub(crate) fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Sends SIGHUP to one process, by its id (never by name).
pub(crate) fn hangup(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -HUP {pid}: {status}");
}

/// Reads a gateway's log until a line contains `needle`; panics if its
/// stderr closes (it exited) or nothing matches within 30 s.
pub(crate) async fn line_containing(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    needle: &str,
) -> String {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("the gateway exited before logging {needle:?}");
    });
    found
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} within 30 s"))
}

/// Starts the real binary on a free port with the memory store, `args` and
/// `RUST_LOG=rust_log`, its stderr piped (for tests that read its logs) and
/// colour off; killed when dropped. Returns it and its port.
pub(crate) fn start_logged(args: &[&str], rust_log: &str) -> (Child, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_asyncgate-server"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--store", "memory"])
        .args(args)
        .env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts");
    (child, port)
}

/// A keys file with two tenants (a client and a worker key each) and an
/// admin key; the key of `who` is `who-secret`.
pub(crate) fn tenant_keys(dir: &std::path::Path) -> std::path::PathBuf {
    use asyncgate_server::auth::digest_hex;
    let entry = |name: &str, role: &str, extra: &str| {
        format!(
            "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n{extra}\n",
            digest_hex(&format!("{name}-secret"))
        )
    };
    let text = [
        entry("t1-app", "client", "tenant = \"t1\""),
        entry(
            "t1-worker",
            "worker",
            "tenant = \"t1\"\nqueues = [\"emails\"]",
        ),
        entry("t2-app", "client", "tenant = \"t2\""),
        entry(
            "t2-worker",
            "worker",
            "tenant = \"t2\"\nqueues = [\"emails\"]",
        ),
        entry("ops", "admin", ""),
    ]
    .concat();
    let path = dir.join("keys.toml");
    std::fs::write(&path, text).expect("keys file");
    path
}

/// A schedule `id` that submits an empty ticket to `queue` every second,
/// overlapping runs allowed.
pub(crate) fn every_second(id: &str, queue: &str) -> pb::Schedule {
    pb::Schedule {
        id: id.into(),
        spec: Some(pb::ScheduleSpec {
            every: Some(pb::schedule_spec::Every::Interval(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            })),
            ..Default::default()
        }),
        ticket: Some(asyncgate_client::Submit::new(queue).build()),
        overlap_policy: pb::OverlapPolicy::Allow as i32,
        ..Default::default()
    }
}

/// A worker on `url` serving `queues` that sends each task's ticket id to
/// `ran` as it starts it and succeeds.
pub(crate) fn reporting_worker(
    url: &str,
    queues: &[&str],
    ran: tokio::sync::mpsc::UnboundedSender<String>,
) -> asyncgate_client::worker::WorkerHandle {
    use asyncgate_client::worker::{TaskContext, Worker, handler_fn};
    let mut builder = Worker::builder(url.to_owned())
        .max_in_flight(32)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200));
    for queue in queues {
        builder = builder.queue(*queue);
    }
    builder
        .handler(handler_fn(move |task: TaskContext| {
            let ran = ran.clone();
            async move {
                let _ = ran.send(task.ticket_id().to_owned());
                Ok(asyncgate_client::payload::json("ran".into()))
            }
        }))
        .build()
        .expect("valid worker settings")
        .spawn()
}
