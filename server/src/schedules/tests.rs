//! The schedule operations and the firing of slots, on the memory engine
//! with chosen times (the engines' own conformance covers storage).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::model::{FIRE_TIME_KEY, Overlap, SCHEDULE_KEY, Template};
use super::service::{Definition, ScheduleError, Schedules};
use super::spec::Spec;
use crate::domain::{QueueName, TicketState};
use crate::engine::{Engine, EngineConfig, ListFilter, LocalEngine};

fn t(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(2_000_000_000 + seconds)
}

fn every_minute(overlap: Overlap) -> Definition {
    Definition {
        spec: Spec::new(None, Some(Duration::from_secs(60)), "UTC", Some(t(0)), None).unwrap(),
        jitter: Duration::ZERO,
        template: Template {
            queue: QueueName::parse("reports").unwrap(),
            payload: Default::default(),
            priority: 0,
            metadata: [("team".to_string(), "ops".to_string())].into(),
            timeout: None,
            attempt_timeout: None,
            max_attempts: 3,
        },
        overlap,
        catchup_window: Duration::from_secs(300),
    }
}

fn setup() -> (Arc<dyn Engine>, Schedules, QueueName) {
    let engine: Arc<dyn Engine> = Arc::new(LocalEngine::in_memory(EngineConfig::default()));
    let schedules = Schedules::new(engine.clone());
    (engine, schedules, QueueName::parse("nightly").unwrap())
}

async fn tickets(engine: &Arc<dyn Engine>) -> Vec<crate::domain::Ticket> {
    engine
        .list(ListFilter {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .tickets
}

#[tokio::test]
async fn each_slot_fires_once_even_when_two_runners_race() {
    let (engine, a, id) = setup();
    let b = Schedules::new(engine.clone());
    a.create(id.clone(), every_minute(Overlap::Allow), t(0))
        .await
        .unwrap();
    // Both "replicas" pass at the same moments, concurrently.
    for now in [t(61), t(125), t(125), t(181)] {
        let (x, y) = tokio::join!(a.fire_due(now), b.fire_due(now));
        x.unwrap();
        y.unwrap();
    }
    let tickets = tickets(&engine).await;
    let mut slots: Vec<String> = tickets
        .iter()
        .map(|t| t.metadata[FIRE_TIME_KEY].clone())
        .collect();
    slots.sort();
    assert_eq!(
        slots,
        [
            crate::time::rfc3339(t(60)),
            crate::time::rfc3339(t(120)),
            crate::time::rfc3339(t(180))
        ]
    );
    assert!(tickets.iter().all(|t| t.metadata[SCHEDULE_KEY] == "nightly"
        && t.metadata["team"] == "ops"
        && t.queue.as_str() == "reports"));
    let seen = a.get(&id).await.unwrap();
    assert_eq!(seen.schedule.fired, 3);
    assert_eq!(seen.schedule.next_fire, Some(t(240)));
}

#[tokio::test]
async fn skip_buffer_and_cancel_previous_while_a_run_is_going() {
    for (overlap, fired, skipped) in [
        (Overlap::Skip, 1, 2),
        (Overlap::BufferOne, 1, 1),
        (Overlap::CancelPrevious, 3, 0),
        (Overlap::Allow, 3, 0),
    ] {
        let (engine, s, id) = setup();
        s.create(id.clone(), every_minute(overlap), t(0))
            .await
            .unwrap();
        // Nobody runs the tickets: the first stays PENDING.
        for now in [t(60), t(120), t(180)] {
            s.fire_due(now).await.unwrap();
        }
        let seen = s.get(&id).await.unwrap().schedule;
        assert_eq!((seen.fired, seen.skipped), (fired, skipped), "{overlap:?}");
        let all = tickets(&engine).await;
        if overlap == Overlap::CancelPrevious {
            let states: Vec<_> = all.iter().map(|t| t.state).collect();
            assert_eq!(
                states,
                [
                    TicketState::Cancelled,
                    TicketState::Cancelled,
                    TicketState::Pending
                ]
            );
        }
        if overlap == Overlap::BufferOne {
            // The buffered slot runs once the previous run ends.
            assert_eq!(seen.buffered, Some(t(120)));
            engine.cancel(all[0].id, "done").await.unwrap();
            s.fire_due(t(181)).await.unwrap();
            let seen = s.get(&id).await.unwrap().schedule;
            assert_eq!((seen.fired, seen.buffered), (2, None));
        }
    }
}

#[tokio::test]
async fn missed_slots_run_within_the_catch_up_window_and_are_skipped_past_it() {
    let (engine, s, id) = setup();
    s.create(id.clone(), every_minute(Overlap::Allow), t(0))
        .await
        .unwrap();
    // The gateway was down from t(0) to t(600): the window is 300 s.
    s.fire_due(t(600)).await.unwrap();
    let seen = s.get(&id).await.unwrap().schedule;
    // Slots 60..=240 are more than 300 s late; 300..=600 run.
    assert_eq!((seen.fired, seen.skipped), (6, 4));
    assert_eq!(tickets(&engine).await.len(), 6);
    assert!(
        seen.runs[0]
            .skipped
            .as_deref()
            .unwrap()
            .contains("catch-up window")
    );
}

#[tokio::test]
async fn paused_schedules_fire_nothing_and_resume_from_the_next_slot() {
    let (engine, s, id) = setup();
    s.create(id.clone(), every_minute(Overlap::Allow), t(0))
        .await
        .unwrap();
    s.pause(&id, "maintenance", t(30)).await.unwrap();
    assert_eq!(
        s.fire_due(t(200)).await.unwrap(),
        0,
        "a paused schedule is not due"
    );
    let resumed = s.resume(&id, t(200)).await.unwrap();
    assert_eq!(resumed.next_fire, Some(t(240)));
    s.fire_due(t(241)).await.unwrap();
    assert_eq!(tickets(&engine).await.len(), 1);
}

#[tokio::test]
async fn trigger_and_backfill_submit_once_per_slot() {
    let (engine, s, id) = setup();
    s.create(id.clone(), every_minute(Overlap::Skip), t(0))
        .await
        .unwrap();
    let triggered = s.trigger(&id, t(10)).await.unwrap();
    assert_eq!(triggered.state, TicketState::Pending);
    let filled = s.backfill(&id, t(60), t(180), t(200)).await.unwrap();
    assert_eq!(filled.len(), 3);
    // Backfilling again returns the same tickets, and the runner finds the
    // slots taken too.
    let again = s.backfill(&id, t(60), t(180), t(200)).await.unwrap();
    assert_eq!(
        again.iter().map(|t| t.id).collect::<Vec<_>>(),
        filled.iter().map(|t| t.id).collect::<Vec<_>>()
    );
    s.fire_due(t(200)).await.unwrap();
    assert_eq!(tickets(&engine).await.len(), 4);
    let too_many = s
        .backfill(&id, t(0), t(60 * 2000), t(200))
        .await
        .unwrap_err();
    assert!(
        matches!(too_many, ScheduleError::Invalid { field: "to", .. }),
        "{too_many}"
    );
    s.delete(&id).await.unwrap();
    assert!(matches!(s.get(&id).await, Err(ScheduleError::NotFound(_))));
}
