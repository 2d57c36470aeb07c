//! Conformance cases of time: delayed submits wait for their time, come due
//! once, count their timeout from then, and can be cancelled while they
//! wait.

use super::*;

fn delayed(q: &str, at: SystemTime) -> NewTicket {
    NewTicket {
        not_before: Some(at),
        timeout: Some(Duration::from_secs(10)),
        ..new_ticket(q)
    }
}

async fn claimable(engine: &Arc<dyn Engine>, s: &SessionInfo) -> Vec<Claimed> {
    engine
        .claim(&queue("q"), std::slice::from_ref(s))
        .await
        .unwrap()
}

pub(crate) async fn a_delayed_ticket_runs_once_when_due(factory: Factory) {
    let h = harness(factory).await;
    let at = later(Duration::from_secs(30));
    let t = h.engine.submit(delayed("q", at)).await.unwrap().ticket;
    let read = h.engine.get(t.id).await.unwrap();
    assert_eq!(read.state, TicketState::Pending);
    assert_eq!((read.not_before, read.scheduled_for), (Some(at), Some(at)));
    assert_eq!(
        read.deadline,
        Some(at + Duration::from_secs(10)),
        "the timeout counts from the scheduled time"
    );
    let s = session(&h.engine, "w").await;
    assert!(claimable(&h.engine, &s).await.is_empty(), "not yet due");
    let info = h.engine.queue_info(&queue("q")).await.unwrap().unwrap();
    assert_eq!((info.counts.pending, info.scheduled), (1, 1));
    assert_eq!(info.oldest_pending_at, None, "nothing pending is due yet");

    // Timer passes before the time leave it be (and its deadline too).
    h.engine
        .run_timers(at - Duration::from_secs(1))
        .await
        .unwrap();
    assert!(claimable(&h.engine, &s).await.is_empty());

    h.engine
        .run_timers(at + Duration::from_millis(5))
        .await
        .unwrap();
    let c = claim_one(&h.engine, "q", &s).await;
    assert_eq!((c.ticket.id, c.ticket.attempt), (t.id, 1));
    assert_eq!(c.ticket.scheduled_for, Some(at), "kept after it came due");
    // Fired once: later passes find nothing more to run.
    h.engine
        .run_timers(at + Duration::from_millis(10))
        .await
        .unwrap();
    assert!(claimable(&h.engine, &s).await.is_empty());
    let info = h.engine.queue_info(&queue("q")).await.unwrap().unwrap();
    assert_eq!((info.counts.running, info.scheduled), (1, 0));
}

pub(crate) async fn a_scheduled_ticket_is_cancelled_listed_and_a_past_time_runs_now(
    factory: Factory,
) {
    let h = harness(factory).await;
    let at = later(Duration::from_secs(30));
    let waiting = h.engine.submit(delayed("q", at)).await.unwrap().ticket;
    let page = h
        .engine
        .list(ListFilter {
            queue: Some(queue("q")),
            states: vec![TicketState::Pending],
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.tickets.iter().map(|t| t.id).collect::<Vec<_>>(),
        [waiting.id]
    );
    let cancelled = h.engine.cancel(waiting.id, "not needed").await.unwrap();
    assert_eq!(cancelled.state, TicketState::Cancelled);
    let info = h.engine.queue_info(&queue("q")).await.unwrap().unwrap();
    assert_eq!((info.counts.pending, info.scheduled), (0, 0));

    // A time already past is no delay.
    let past = NewTicket {
        not_before: Some(SystemTime::now() - Duration::from_secs(5)),
        ..new_ticket("q")
    };
    let now = h.engine.submit(past).await.unwrap().ticket;
    assert_eq!((now.not_before, now.scheduled_for), (None, None));
    h.engine
        .run_timers(at + Duration::from_millis(5))
        .await
        .unwrap();
    let s = session(&h.engine, "w").await;
    let c = claim_one(&h.engine, "q", &s).await;
    assert_eq!(c.ticket.id, now.id, "the cancelled one never runs");
    assert!(claimable(&h.engine, &s).await.is_empty());
}

fn schedule_record(id: &str, due: Option<SystemTime>, body: &'static str) -> ScheduleRecord {
    ScheduleRecord {
        id: id.into(),
        revision: 0,
        due,
        body: Bytes::from_static(body.as_bytes()),
    }
}

pub(crate) async fn schedules_are_stored_fenced_listed_and_due(factory: Factory) {
    let h = harness(factory).await;
    let e = &h.engine;
    let now = SystemTime::now();
    let soon = now - Duration::from_secs(1);
    assert_eq!(
        e.put_schedule(schedule_record("a", None, "one"), 0)
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        e.put_schedule(schedule_record("a", None, "again"), 0).await,
        Err(EngineError::ScheduleExists(id)) if id == "a"
    ));
    assert_eq!(
        e.put_schedule(schedule_record("a", Some(soon), "two"), 1)
            .await
            .unwrap(),
        2
    );
    // A writer that read revision 1 lost the race: its write is refused.
    assert!(matches!(
        e.put_schedule(schedule_record("a", None, "stale"), 1).await,
        Err(EngineError::ScheduleChanged(_))
    ));
    let read = e.get_schedule("a").await.unwrap().unwrap();
    assert_eq!((read.revision, &read.body[..]), (2, &b"two"[..]));
    assert!(
        read.due.is_some_and(
            |at| at.duration_since(soon).unwrap_or_default() < Duration::from_millis(2)
        )
    );

    let later = now + Duration::from_secs(60);
    e.put_schedule(
        schedule_record("t/b", Some(now - Duration::from_secs(5)), "b"),
        0,
    )
    .await
    .unwrap();
    e.put_schedule(schedule_record("t/c", Some(later), "c"), 0)
        .await
        .unwrap();
    let ids = |records: Vec<ScheduleRecord>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(e.list_schedules("", "", 10).await.unwrap()),
        ["a", "t/b", "t/c"]
    );
    assert_eq!(
        ids(e.list_schedules("t/", "", 10).await.unwrap()),
        ["t/b", "t/c"]
    );
    assert_eq!(
        ids(e.list_schedules("t/", "t/b", 10).await.unwrap()),
        ["t/c"]
    );
    assert_eq!(ids(e.list_schedules("", "", 1).await.unwrap()), ["a"]);
    assert_eq!(e.count_schedules("").await.unwrap(), 3);
    assert_eq!(e.count_schedules("t/").await.unwrap(), 2);
    assert_eq!(e.count_schedules("u/").await.unwrap(), 0);
    // Due: earliest first; not yet due and never due (paused) left out.
    assert_eq!(ids(e.due_schedules(now, 10).await.unwrap()), ["t/b", "a"]);
    assert_eq!(ids(e.due_schedules(now, 1).await.unwrap()), ["t/b"]);

    assert!(e.delete_schedule("t/b").await.unwrap());
    assert!(!e.delete_schedule("t/b").await.unwrap());
    assert_eq!(e.get_schedule("t/b").await.unwrap(), None);
    assert_eq!(ids(e.due_schedules(now, 10).await.unwrap()), ["a"]);
}
