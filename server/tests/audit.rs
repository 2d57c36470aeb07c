//! The real binary's audit log (`asyncgate::audit`): every record names the
//! peer; denials and failed authentications are rate-limited per peer and
//! reason with a count of what was left out; cancels, admin actions and key
//! reloads are recorded with their fields.

use std::time::Duration;

use asyncgate_client::{Client, Submit};
use asyncgate_server::auth::digest_hex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

mod common;

/// A keys-file entry whose key is `<name>-secret`.
fn entry(name: &str, role: &str, extra: &str) -> String {
    format!(
        "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n{extra}\n",
        digest_hex(&format!("{name}-secret"))
    )
}

/// The gateway with its stderr read line by line into a channel.
struct Audited {
    child: Child,
    url: String,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far.
    seen: Vec<String>,
}

impl Audited {
    async fn start(keys: &std::path::Path) -> Audited {
        let (mut child, port) = common::start_logged(
            &["--keys", keys.to_str().unwrap()],
            "warn,asyncgate::audit=info",
        );
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let url = format!("http://127.0.0.1:{port}");
        Audited {
            child,
            url,
            lines,
            seen: Vec::new(),
        }
    }

    fn client(&self, key: &str) -> Client {
        Client::connect_lazy(self.url.clone())
            .unwrap()
            .with_api_key(key)
            .unwrap()
    }

    /// Reads lines until one contains every needle; returns it.
    async fn line_with(&mut self, needles: &[&str]) -> String {
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let line = self.lines.recv().await.expect("the gateway runs");
                self.seen.push(line.clone());
                if needles.iter().all(|n| line.contains(n)) {
                    return line;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no line with {needles:?}: {:#?}", self.seen))
    }

    fn hangup(&self) {
        let pid = self.child.id().expect("the gateway runs");
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -HUP {pid}: {status}");
    }
}

#[tokio::test]
async fn audit_records_name_the_peer_and_denials_cannot_flood_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let app = entry("app", "client", "tenant = \"t1\"");
    let worker = entry("w", "worker", "tenant = \"t1\"\nqueues = [\"jobs\"]");
    let ops = entry("ops", "admin", "");
    std::fs::write(&keys, [app.clone(), worker.clone(), ops.clone()].concat()).unwrap();
    let mut gateway = Audited::start(&keys).await;
    let app_client = gateway.client("app-secret");
    for _ in 0..200 {
        if app_client.list(Default::default()).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // A permission denial: a worker key calls the client API.
    let denied = gateway
        .client("w-secret")
        .submit(Submit::new("jobs"))
        .await
        .expect_err("wrong role");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let line = gateway.line_with(&["permission_denied"]).await;
    for field in [
        "asyncgate::audit",
        "action=\"/asyncgate.v1.Gateway/Submit\"",
        "who=w",
        "peer=127.0.0.1:",
        "reason=\"role\"",
        "suppressed=0",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }

    // Fifty failed authentications in a burst, over one connection.
    let burst_started = tokio::time::Instant::now();
    let intruder = gateway.client("not-a-key");
    for _ in 0..50 {
        let refused = intruder.submit(Submit::new("jobs")).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }

    // A client's cancel, and an admin's (an admin action).
    let mine = app_client.submit(Submit::new("jobs")).await.unwrap();
    app_client
        .cancel(&mine.id, "no longer needed")
        .await
        .unwrap();
    let line = gateway.line_with(&["cancel_ticket", &mine.id]).await;
    for field in ["who=app", "role=\"client\"", "peer=127.0.0.1:"] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    let theirs = app_client.submit(Submit::new("jobs")).await.unwrap();
    let mut operations = asyncgate_proto::longrunning::operations_client::OperationsClient::new(
        tonic::transport::Endpoint::from_shared(gateway.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut cancel = tonic::Request::new(asyncgate_proto::longrunning::CancelOperationRequest {
        name: format!("operations/{}", theirs.id),
    });
    cancel
        .metadata_mut()
        .insert("authorization", "Bearer ops-secret".parse().unwrap());
    operations.cancel_operation(cancel).await.unwrap();
    let line = gateway.line_with(&["cancel_operation", &theirs.id]).await;
    for field in ["who=ops", "role=\"admin\"", "peer=127.0.0.1:"] {
        assert!(line.contains(field), "{field} missing: {line}");
    }

    // A reload that adds a key and drops one, then one that fails.
    std::fs::write(
        &keys,
        [app.clone(), ops.clone(), entry("new", "client", "")].concat(),
    )
    .unwrap();
    gateway.hangup();
    let line = gateway.line_with(&["reload_keys", "outcome"]).await;
    for field in [
        "peer=local",
        "keys=3",
        "added=1",
        "removed=1",
        "changed=0",
        "outcome=\"ok\"",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    std::fs::write(&keys, "[[keys]]\nname = 1\n").unwrap();
    gateway.hangup();
    let line = gateway
        .line_with(&["reload_keys", "outcome=\"failed\""])
        .await;
    assert!(
        line.contains("peer=local") && line.contains("reason="),
        "{line}"
    );

    // Once the burst's second is over, the next failure is written with
    // the number left out. (The window is one second of wall-clock time in
    // the real binary: this waits for it to pass, it synchronises nothing.)
    tokio::time::sleep_until(burst_started + Duration::from_millis(1100)).await;
    intruder.submit(Submit::new("jobs")).await.unwrap_err();
    let last = gateway.line_with(&["unknown key", "suppressed="]).await;
    assert!(!last.contains("suppressed=0"), "{last}");
    // Records are written in order: every earlier one has been read.
    let audit: Vec<&String> = gateway
        .seen
        .iter()
        .filter(|l| l.contains("asyncgate::audit"))
        .collect();
    for line in &audit {
        assert!(
            line.contains("peer=127.0.0.1:") || line.contains("peer=local"),
            "a record without its peer: {line}"
        );
    }
    let unknown: Vec<&&String> = audit
        .iter()
        .filter(|l| l.contains("reason=\"unknown key\""))
        .collect();
    assert!(
        unknown.len() <= 3,
        "51 failed authentications wrote {} records: {unknown:#?}",
        unknown.len()
    );
    // Nothing is lost: written records plus the ones left out are all 51.
    let suppressed: u64 = unknown
        .iter()
        .map(|l| {
            let value = l.split("suppressed=").nth(1).expect("a count");
            value
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(unknown.len() as u64 + suppressed, 51, "{unknown:#?}");
}
