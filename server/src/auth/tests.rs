//! Unit tests of `auth.rs` and its submodules (`auth/`).

use std::net::IpAddr;
use std::time::Duration;

use super::audit::{DENIAL_PEERS, DENIAL_WINDOW, DenialLog};
use super::*;
use crate::domain::QueueName;

fn table(text: &str) -> Result<KeyTable, KeysError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    std::fs::write(&path, text).unwrap();
    KeyTable::load(&path)
}

#[test]
fn keys_are_matched_by_hash_and_roles_are_enforced() {
    let keys = table(&format!(
        "[[keys]]\nname = \"app\"\nsha256 = \"{}\"\nrole = \"client\"\ntenant = \"t1\"\n\
         [[keys]]\nname = \"w\"\nsha256 = \"{}\"\nrole = \"worker\"\nqueues = [\"emails\", \"bill.*\"]\n",
        digest_hex("client-secret"),
        digest_hex("worker-secret"),
    ))
    .unwrap();
    let client = keys.authenticate("client-secret").unwrap();
    assert_eq!(client.tenant.as_deref(), Some("t1"));
    assert!(keys.authenticate("nope").is_none());
    let worker = keys.authenticate("worker-secret").unwrap();
    let scoped =
        |name: &str| QueueName::scoped(worker.tenant.as_deref(), QueueName::parse(name).unwrap());
    assert!(worker.may_serve(&scoped("emails")));
    assert!(worker.may_serve(&scoped("bill.eu")));
    assert!(!worker.may_serve(&scoped("email")));
    assert!(
        !worker.may_serve(&QueueName::parse("emails").unwrap()),
        "another tenant's (unscoped) queue"
    );
    let denied = check(
        &keys,
        "/asyncgate.v1.Workers/Connect",
        Some("Bearer client-secret"),
        None,
    )
    .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let denied = check(
        &keys,
        "/google.longrunning.Operations/GetOperation",
        Some("Bearer worker-secret"),
        None,
    )
    .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        check(
            &keys,
            "/google.longrunning.Operations/GetOperation",
            Some("Bearer client-secret"),
            None,
        )
        .unwrap()
        .is_some()
    );
    // A batch of submits needs what a submit needs.
    let batch = "/asyncgate.v1.Gateway/SubmitBatch";
    let denied = check(&keys, batch, Some("Bearer worker-secret"), None).unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let allowed = check(&keys, batch, Some("Bearer client-secret"), None).unwrap();
    assert_eq!(allowed.and_then(|c| c.tenant).as_deref(), Some("t1"));
    let missing = check(&keys, "/asyncgate.v1.Gateway/Submit", None, None).unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    assert!(
        check(&keys, "/grpc.health.v1.Health/Check", None, None)
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_viewer_may_follow_tickets_on_one_stream_but_not_change_them() {
    let keys = table(&format!(
        "[[keys]]\nname = \"v\"\nsha256 = \"{}\"\nrole = \"viewer\"\n",
        digest_hex("viewer-secret"),
    ))
    .unwrap();
    let viewer = Some("Bearer viewer-secret");
    for read in [
        "/asyncgate.v1.Gateway/WatchTicket",
        "/asyncgate.v1.Gateway/WatchTickets",
        "/asyncgate.v1.Admin/ListQueues",
    ] {
        assert!(check(&keys, read, viewer, None).is_ok(), "{read}");
    }
    for change in [
        "/asyncgate.v1.Gateway/CancelTicket",
        "/asyncgate.v1.Admin/PauseQueue",
    ] {
        let denied = check(&keys, change, viewer, None).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{change}");
    }
}

#[test]
fn a_reload_keeps_the_buckets_of_unchanged_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    // One token per 1000 s: none comes back while the test runs.
    let file = |name: &str, rate: &str| {
        format!(
            "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"client\"\nrate_per_second = {rate}\nburst = 1\n",
            digest_hex("secret")
        )
    };
    let take = |keys: &Keys| {
        let table = keys.current();
        let caller = table.authenticate("secret").expect("the key is known");
        caller.limiter.as_ref().expect("a rate limit").take()
    };
    std::fs::write(&path, file("app", "0.001")).unwrap();
    let keys = Keys::open(&path).unwrap();
    assert!(take(&keys).is_ok());
    assert!(take(&keys).is_err(), "the burst of one is spent");

    keys.reload().unwrap();
    assert!(
        take(&keys).is_err(),
        "a reload of the same file refills nothing"
    );

    // A new name for the same secret and limits is still the same client.
    std::fs::write(&path, file("renamed", "0.001")).unwrap();
    keys.reload().unwrap();
    assert!(take(&keys).is_err(), "a rename refills nothing");

    std::fs::write(&path, file("renamed", "0.002")).unwrap();
    keys.reload().unwrap();
    assert!(take(&keys).is_ok(), "a changed rate starts a fresh bucket");
    assert!(take(&keys).is_err());
}

#[test]
fn a_reload_ends_the_calls_of_removed_and_changed_keys_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    let entry = |name: &str, secret: &str, role: &str, extra: &str| {
        format!(
            "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n{extra}\n",
            digest_hex(secret)
        )
    };
    std::fs::write(
        &path,
        [
            entry("same", "s1", "client", "tenant = \"t1\""),
            entry("worker", "s2", "worker", "queues = [\"a\"]"),
            entry("gone", "s3", "client", ""),
            entry("renamed", "s4", "client", ""),
            entry("moved", "s5", "client", "tenant = \"t1\""),
        ]
        .concat(),
    )
    .unwrap();
    let keys = Keys::open(&path).unwrap();
    let call = |secret: &str| {
        keys.current()
            .authenticate(secret)
            .expect("known")
            .revocation()
    };
    let calls: Vec<_> = ["s1", "s2", "s3", "s4", "s5"].map(call).into();
    std::fs::write(
        &path,
        [
            entry("same", "s1", "client", "tenant = \"t1\""),
            entry("worker", "s2", "worker", "queues = [\"a\", \"b\"]"),
            entry("renamed-2", "s4", "client", ""),
            entry("moved", "s5", "client", "tenant = \"t2\""),
            entry("new", "s6", "client", ""),
        ]
        .concat(),
    )
    .unwrap();
    let previous = keys.current();
    let mut table = KeyTable::load(&path).unwrap();
    let (summary, _) = table.carry_over_from(&previous);
    assert_eq!(
        (summary.added, summary.removed, summary.changed),
        (1, 1, 3),
        "{summary:?}"
    );
    assert_eq!(keys.reload().unwrap(), 5);
    let ended: Vec<bool> = calls.iter().map(|c| c.is_cancelled()).collect();
    assert_eq!(
        ended,
        [false, true, true, false, true],
        "same and renamed go on; other queues, removed and another tenant end"
    );
    assert!(!call("s1").is_cancelled(), "a new call of a kept key runs");
    assert!(
        !call("s2").is_cancelled(),
        "the changed key's new calls run"
    );
    // A second reload of the same file changes nothing.
    let kept = call("s2");
    keys.reload().unwrap();
    assert!(!kept.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn denials_are_audited_once_a_second_per_peer_and_reason() {
    let log = DenialLog::new();
    let peer = Some(IpAddr::from([127, 0, 0, 1]));
    assert_eq!(log.admit(peer, "unknown key"), Some(0));
    for _ in 0..49 {
        assert_eq!(log.admit(peer, "unknown key"), None);
    }
    assert_eq!(log.admit(peer, "role"), Some(0), "another reason");
    assert_eq!(
        log.admit(Some(IpAddr::from([10, 0, 0, 1])), "unknown key"),
        Some(0),
        "another peer"
    );
    tokio::time::advance(DENIAL_WINDOW).await;
    assert_eq!(log.admit(peer, "unknown key"), Some(49));
    assert_eq!(log.admit(peer, "unknown key"), None);

    // Bounded: a spray of addresses evicts the pair seen least recently.
    for n in 0..DENIAL_PEERS as u32 {
        tokio::time::advance(Duration::from_millis(1)).await;
        log.admit(Some(IpAddr::from(n.to_be_bytes())), "spray");
    }
    let windows = log.windows.lock().unwrap();
    assert_eq!(windows.len(), DENIAL_PEERS);
    assert!(!windows.contains_key(&(Some(IpAddr::from([10, 0, 0, 1])), "unknown key")));
}

#[test]
fn bad_files_say_what_to_fix() {
    assert!(
        table("[[keys]]\nname = \"a\"\nsha256 = \"xyz\"\nrole = \"client\"\n")
            .err()
            .unwrap()
            .to_string()
            .contains("64 hex digits")
    );
    assert!(
        table("[[keys]]\nname = \"a\"\nsha256 = \"00\"\nrole = \"root\"\n")
            .err()
            .unwrap()
            .to_string()
            .contains("role")
    );
    assert!(
        table("[[keys]]\nnam = \"a\"\n")
            .err()
            .unwrap()
            .to_string()
            .contains("nam")
    );
    let worker_without_queues = format!(
        "[[keys]]\nname = \"w\"\nsha256 = \"{}\"\nrole = \"worker\"\n",
        digest_hex("k")
    );
    assert!(
        table(&worker_without_queues)
            .err()
            .unwrap()
            .to_string()
            .contains("queues")
    );
}
