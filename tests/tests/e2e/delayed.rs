//! Delayed tickets (`delay`, `not_before`) through the real client: answered
//! at once, explained as SCHEDULED, counted by the admin API, run once when
//! due and not before, cancellable while they wait, and kept across a
//! restart of a durable gateway.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use asyncgate_client::convert::timestamp_to_system_time;
use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{Submit, payload, pb};
use asyncgate_tests::TestGateway;

type Runs = Arc<Mutex<Vec<(String, SystemTime)>>>;

fn recording(runs: &Runs) -> impl asyncgate_client::worker::Handler {
    let runs = runs.clone();
    handler_fn(move |task: TaskContext| {
        let runs = runs.clone();
        async move {
            runs.lock()
                .unwrap()
                .push((task.ticket_id().to_owned(), SystemTime::now()));
            Ok(payload::json("ran".into()))
        }
    })
}

fn scheduled_for(ticket: &pb::Ticket) -> SystemTime {
    timestamp_to_system_time(ticket.scheduled_for.as_ref().expect("scheduled_for is set"))
}

#[tokio::test]
async fn a_delayed_ticket_waits_is_explained_and_runs_once_when_due() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let runs = Runs::default();
    let worker = gateway.spawn_worker("later", recording(&runs));

    let ticket = client
        .submit(
            Submit::new("later")
                .delay(Duration::from_millis(400))
                .timeout(Duration::from_secs(30))
                .build(),
        )
        .await
        .unwrap();
    let at = scheduled_for(&ticket);
    assert_eq!(ticket.state, pb::TicketState::Pending as i32);
    let reason = ticket.waiting_reason.clone().unwrap();
    assert_eq!(reason.kind, pb::WaitingReasonKind::Scheduled as i32);
    assert!(
        reason.description.starts_with("scheduled for "),
        "{reason:?}"
    );
    assert_eq!(reason.until, ticket.scheduled_for);
    // The deadline counts from the scheduled time.
    assert_eq!(
        timestamp_to_system_time(ticket.deadline.as_ref().unwrap()),
        at + Duration::from_secs(30)
    );
    let queue = client.admin().get_queue("later").await.unwrap();
    assert_eq!((queue.counts.unwrap().pending, queue.scheduled), (1, 1));
    assert!(queue.oldest_pending_at.is_none(), "nothing pending is due");

    let done = client
        .get(&ticket.id, Some(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(done.state, pb::TicketState::Succeeded as i32, "{done:?}");
    assert_eq!(done.scheduled_for, ticket.scheduled_for);
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(
        runs[0].1 >= at,
        "ran {:?} early",
        at.duration_since(runs[0].1)
    );
    worker.shutdown();
}

#[tokio::test]
async fn a_scheduled_ticket_is_cancelled_before_it_runs() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let runs = Runs::default();
    let worker = gateway.spawn_worker("later", recording(&runs));
    let at = SystemTime::now() + Duration::from_millis(300);
    let cancelled = client
        .submit(Submit::new("later").not_before(at).build())
        .await
        .unwrap();
    let control = client
        .submit(Submit::new("later").not_before(at).build())
        .await
        .unwrap();
    let answer = client.cancel(&cancelled.id, "plans changed").await.unwrap();
    assert_eq!(answer.state, pb::TicketState::Cancelled as i32);
    // The other one, due at the same time, runs: by then the cancelled one
    // would have run too.
    let done = client
        .get(&control.id, Some(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(done.state, pb::TicketState::Succeeded as i32);
    let ran: Vec<_> = runs
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(ran, std::slice::from_ref(&control.id));
    worker.shutdown();
}

#[tokio::test]
async fn a_durable_gateway_keeps_scheduled_tickets_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = TestGateway::start_with(TestGateway::durable_config(dir.path())).await;
    let ticket = gateway
        .client()
        .await
        .submit(
            Submit::new("later")
                .delay(Duration::from_millis(600))
                .build(),
        )
        .await
        .unwrap();
    let gateway = gateway.restart().await;
    let client = gateway.client().await;
    let read = client.get(&ticket.id, None).await.unwrap();
    assert_eq!(read.scheduled_for, ticket.scheduled_for);
    let runs = Runs::default();
    let worker = gateway.spawn_worker("later", recording(&runs));
    let done = client
        .get(&ticket.id, Some(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(done.state, pb::TicketState::Succeeded as i32, "{done:?}");
    assert_eq!(done.attempt, 1);
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].1 >= scheduled_for(&ticket));
    worker.shutdown();
}
