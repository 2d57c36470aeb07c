//! `asyncgate schedule` against a real gateway: create (cron in a time
//! zone), list, show, pause, resume, trigger, backfill and delete, in text
//! and JSON output, and a malformed cron expression refused naming the
//! field.

mod common;
use common::{cli, gateway, run_full};

#[tokio::test]
async fn schedule_commands_manage_a_schedule_end_to_end() {
    let (running, url) = gateway().await;
    let (code, out, err) = run_full(cli(&url).args([
        "schedule",
        "create",
        "nightly",
        "--cron",
        "30 2 * * *",
        "--tz",
        "America/New_York",
        "--queue",
        "reports",
        "--json",
        r#"{"kind":"daily"}"#,
        "--overlap",
        "buffer-one",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("schedule nightly"), "{out}");
    assert!(
        out.contains("cron \"30 2 * * *\" in America/New_York"),
        "{out}"
    );
    assert!(out.contains("overlap   BUFFER_ONE"), "{out}");

    let (code, out, _) = run_full(cli(&url).args(["schedule", "list"])).await;
    assert_eq!(code, 0);
    assert!(out.lines().nth(1).unwrap().starts_with("nightly"), "{out}");

    let (code, out, err) = run_full(cli(&url).args(["schedule", "trigger", "nightly"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("PENDING"), "{out}");

    let (code, out, err) = run_full(cli(&url).args([
        "--output", "json", "schedule", "pause", "nightly", "--note", "audit",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (json["paused"].as_bool(), json["pauseNote"].as_str()),
        (Some(true), Some("audit"))
    );
    assert_eq!(json["recentRuns"][0]["manual"], true);

    let (code, out, _) = run_full(cli(&url).args(["schedule", "resume", "nightly"])).await;
    assert_eq!(code, 0);
    assert!(out.contains("next      "), "{out}");

    let (code, out, err) = run_full(cli(&url).args([
        "schedule",
        "backfill",
        "nightly",
        "--from",
        "2026-11-01T00:00:00Z",
        "--to",
        "2026-11-02T23:59:59Z",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    // 02:30 in New York on Nov 1 (EDT ended at 02:00, so EST) and Nov 2.
    assert_eq!(out.lines().count(), 2, "{out}");

    let (code, out, _) = run_full(cli(&url).args(["schedule", "show", "nightly"])).await;
    assert_eq!(code, 0);
    assert!(out.contains("fired     3 (skipped 0)"), "{out}");

    let (code, _, _) = run_full(cli(&url).args(["schedule", "delete", "nightly"])).await;
    assert_eq!(code, 0);
    let (code, _, err) = run_full(cli(&url).args(["schedule", "show", "nightly"])).await;
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");

    let (code, _, err) = run_full(cli(&url).args([
        "schedule",
        "create",
        "bad",
        "--cron",
        "61 * * * *",
        "--queue",
        "q",
    ]))
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("invalid schedule.spec.cron: field 1 (minute) \"61\""),
        "{err}"
    );
    running.shutdown().await.unwrap();
}
