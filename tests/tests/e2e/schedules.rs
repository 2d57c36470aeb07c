//! Schedules (`asyncgate.v1.Schedules`) through the SDK against a real
//! gateway: an interval schedule whose slots each become one ticket that a
//! worker runs, the schedule's runs and next fire times, pause, resume,
//! trigger and delete, what bad input gets, and tenants kept apart.

use std::time::{Duration, SystemTime};

use asyncgate_client::convert::timestamp_to_system_time;
use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{Client, Submit, payload, pb};
use asyncgate_server::auth::digest_hex;
use asyncgate_tests::{TestGateway, fast_config};
use tonic::Code;

fn every_second(id: &str, queue: &str) -> pb::Schedule {
    pb::Schedule {
        id: id.into(),
        spec: Some(pb::ScheduleSpec {
            every: Some(pb::schedule_spec::Every::Interval(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            })),
            ..Default::default()
        }),
        ticket: Some(
            Submit::new(queue)
                .text("tick")
                .metadata("team", "ops")
                .build(),
        ),
        overlap_policy: pb::OverlapPolicy::Allow as i32,
        ..Default::default()
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, asyncgate_client::ClientError>) -> (Code, String) {
    let error = result.expect_err("refused");
    (error.code(), error.to_string())
}

#[tokio::test]
async fn an_interval_schedule_submits_one_ticket_per_slot_that_workers_run() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let schedules = client.schedules();
    let (ran_tx, mut ran_rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = gateway.spawn_worker(
        "ticks",
        handler_fn(move |task: TaskContext| {
            let ran_tx = ran_tx.clone();
            async move {
                let _ = ran_tx.send((task.ticket_id().to_owned(), SystemTime::now()));
                Ok(payload::json("done".into()))
            }
        }),
    );
    let created = schedules
        .create(every_second("ticker", "ticks"))
        .await
        .unwrap();
    assert_eq!(created.next_fire_times.len(), 5);
    let first = timestamp_to_system_time(&created.next_fire_times[0]);
    let ran = [ran_rx.recv().await.unwrap(), ran_rx.recv().await.unwrap()];
    let mut slots = Vec::new();
    for (id, at) in &ran {
        let ticket = client.get(id, Some(Duration::from_secs(10))).await.unwrap();
        assert_eq!(ticket.metadata["asyncgate.schedule"], "ticker");
        assert_eq!(ticket.metadata["team"], "ops");
        let slot = SystemTime::try_from(
            ticket.metadata["asyncgate.fire_time"]
                .parse::<prost_types::Timestamp>()
                .unwrap(),
        )
        .unwrap();
        assert!(*at >= slot, "ran before its slot");
        slots.push(slot);
    }
    assert_eq!(
        slots[0], first,
        "the first slot is the first next fire time shown"
    );
    assert_eq!(
        slots[1].duration_since(slots[0]).unwrap(),
        Duration::from_secs(1)
    );
    let seen = schedules.get("ticker").await.unwrap();
    assert!(seen.fired >= 2);
    let finished: Vec<_> = seen
        .recent_runs
        .iter()
        .filter(|run| run.state == pb::TicketState::Succeeded as i32)
        .collect();
    assert!(finished.len() >= 2, "{:?}", seen.recent_runs);
    schedules.delete("ticker").await.unwrap();
    assert_eq!(code(schedules.get("ticker").await).0, Code::NotFound);
    worker.shutdown();
}

#[tokio::test]
async fn pause_resume_and_trigger() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let schedules = client.schedules();
    let mut hourly = every_second("report", "reports");
    hourly.spec = Some(pb::ScheduleSpec {
        every: Some(pb::schedule_spec::Every::Cron("0 * * * *".into())),
        time_zone: "Europe/Berlin".into(),
        ..Default::default()
    });
    schedules.create(hourly).await.unwrap();
    let paused = schedules.pause("report", "quarter close").await.unwrap();
    assert!(paused.paused && paused.next_fire_times.is_empty());
    assert_eq!(paused.pause_note, "quarter close");
    let ticket = schedules.trigger("report").await.unwrap();
    assert_eq!(ticket.metadata["asyncgate.schedule"], "report");
    let resumed = schedules.resume("report").await.unwrap();
    assert!(!resumed.paused);
    // The next five hours, on the hour.
    assert_eq!(resumed.next_fire_times.len(), 5);
    assert!(
        resumed
            .next_fire_times
            .iter()
            .all(|t| t.seconds % 3600 == 0 && t.nanos == 0)
    );
    assert_eq!(resumed.recent_runs.len(), 1);
    assert!(resumed.recent_runs[0].manual);
    assert_eq!(resumed.recent_runs[0].ticket_id, ticket.id);
    let listed = schedules.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["report"]
    );
    // An update replaces the definition and keeps the runs.
    let mut daily = every_second("report", "summaries");
    daily.spec = Some(pb::ScheduleSpec {
        every: Some(pb::schedule_spec::Every::Cron("0 6 * * MON-FRI".into())),
        time_zone: "Asia/Tokyo".into(),
        ..Default::default()
    });
    let updated = schedules.update(daily).await.unwrap();
    assert_eq!(updated.ticket.unwrap().queue, "summaries");
    assert_eq!(updated.recent_runs.len(), 1, "the runs so far are kept");
    // 06:00 in Tokyo is 21:00 UTC the day before.
    assert!(
        updated
            .next_fire_times
            .iter()
            .all(|t| t.seconds % 86_400 == 21 * 3600)
    );
    let (code_missing, _) = code(schedules.update(every_second("nope", "q")).await);
    assert_eq!(code_missing, Code::NotFound);
}

#[tokio::test]
async fn bad_schedules_name_the_field_to_fix() {
    let gateway = TestGateway::start().await;
    let schedules = gateway.client().await.schedules();
    let with = |change: &dyn Fn(&mut pb::Schedule)| {
        let mut schedule = every_second("s", "q");
        change(&mut schedule);
        schedule
    };
    let cron = |expression: &str| {
        let expression = expression.to_owned();
        move |s: &mut pb::Schedule| {
            s.spec.as_mut().unwrap().every =
                Some(pb::schedule_spec::Every::Cron(expression.clone()))
        }
    };
    let cases: Vec<(pb::Schedule, Code, &str)> = vec![
        (
            with(&cron("0 25 * * *")),
            Code::InvalidArgument,
            "invalid schedule.spec.cron: field 2 (hour) \"25\"",
        ),
        (with(&cron("* * *")), Code::InvalidArgument, "has 3 fields"),
        (
            with(&|s| s.spec.as_mut().unwrap().time_zone = "Mars/Olympus".into()),
            Code::InvalidArgument,
            "invalid schedule.spec.time_zone: \"Mars/Olympus\" is not a known IANA time zone",
        ),
        (
            with(&|s| {
                let spec = s.spec.as_mut().unwrap();
                spec.start_at = Some(prost_types::Timestamp {
                    seconds: 2_000_000_000,
                    nanos: 0,
                });
                spec.end_at = Some(prost_types::Timestamp {
                    seconds: 1_900_000_000,
                    nanos: 0,
                });
            }),
            Code::InvalidArgument,
            "invalid schedule.spec.end_at",
        ),
        (
            with(&|s| s.ticket.as_mut().unwrap().idempotency_key = "k".into()),
            Code::InvalidArgument,
            "invalid schedule.ticket.idempotency_key",
        ),
        (
            with(&|s| s.ticket.as_mut().unwrap().priority = 5000),
            Code::InvalidArgument,
            "invalid schedule.ticket.priority",
        ),
        (
            with(&|s| s.id = "no spaces".into()),
            Code::InvalidArgument,
            "invalid schedule.id",
        ),
        (
            with(&|s| s.ticket = None),
            Code::InvalidArgument,
            "invalid schedule.ticket",
        ),
        (
            with(&|s| s.spec = Some(pb::ScheduleSpec::default())),
            Code::InvalidArgument,
            "needs a cron expression or an interval",
        ),
        (
            with(&|s| s.overlap_policy = 42),
            Code::InvalidArgument,
            "invalid schedule.overlap_policy",
        ),
    ];
    for (schedule, expected, needle) in cases {
        let (code, message) = code(schedules.create(schedule).await);
        assert_eq!(code, expected, "{message}");
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
    schedules.create(every_second("taken", "q")).await.unwrap();
    let (code_taken, message) = code(schedules.create(every_second("taken", "q")).await);
    assert_eq!(code_taken, Code::AlreadyExists, "{message}");
    let (code_unknown, _) = code(schedules.trigger("nope").await);
    assert_eq!(code_unknown, Code::NotFound);
    let far = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let (code_range, message) = code(
        schedules
            .backfill("taken", far, far + Duration::from_secs(3600))
            .await,
    );
    assert_eq!(code_range, Code::InvalidArgument, "{message}");
    assert!(message.contains("more than 1000 slots"), "{message}");
}

const ALICE: &str = "alice-client-key";
const BOB: &str = "bob-client-key";
const VIEWER: &str = "viewer-key";

#[tokio::test]
async fn tenants_see_and_fire_only_their_own_schedules() {
    let dir = tempfile::tempdir().unwrap();
    let keys = format!(
        "[[keys]]\nname = \"alice\"\nsha256 = \"{}\"\nrole = \"client\"\ntenant = \"a\"\n\n\
         [[keys]]\nname = \"bob\"\nsha256 = \"{}\"\nrole = \"client\"\ntenant = \"b\"\n\n\
         [[keys]]\nname = \"viewer\"\nsha256 = \"{}\"\nrole = \"viewer\"\ntenant = \"a\"\n",
        digest_hex(ALICE),
        digest_hex(BOB),
        digest_hex(VIEWER),
    );
    let path = dir.path().join("keys.toml");
    std::fs::write(&path, keys).unwrap();
    let gateway = TestGateway::start_with(asyncgate_server::Config {
        keys: Some(path),
        ..fast_config()
    })
    .await;
    let key = |k: &'static str| {
        let gateway = &gateway;
        async move { gateway.client().await.with_api_key(k).unwrap() }
    };
    let (alice, bob, viewer): (Client, Client, Client) =
        (key(ALICE).await, key(BOB).await, key(VIEWER).await);
    let mut mine = every_second("nightly", "jobs");
    mine.spec = Some(pb::ScheduleSpec {
        every: Some(pb::schedule_spec::Every::Cron("0 3 * * *".into())),
        ..Default::default()
    });
    alice.schedules().create(mine.clone()).await.unwrap();
    // Bob has a schedule of the same name: a different one.
    bob.schedules().create(mine).await.unwrap();
    assert_eq!(
        code(bob.schedules().get("a/nightly").await).0,
        Code::InvalidArgument
    );
    let ticket = bob.schedules().trigger("nightly").await.unwrap();
    assert_eq!(ticket.queue, "jobs");
    // Bob's trigger ran Bob's schedule: Alice's has no runs.
    let alices = alice.schedules().get("nightly").await.unwrap();
    assert!(alices.recent_runs.is_empty());
    assert_eq!(
        alice.get(&ticket.id, None).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(bob.schedules().list().await.unwrap().len(), 1);
    // A viewer reads its tenant's schedules and changes nothing.
    assert_eq!(viewer.schedules().list().await.unwrap()[0].id, "nightly");
    assert_eq!(
        code(viewer.schedules().trigger("nightly").await).0,
        Code::PermissionDenied
    );
    assert_eq!(
        code(viewer.schedules().delete("nightly").await).0,
        Code::PermissionDenied
    );
}
