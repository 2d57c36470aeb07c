//! The durable store through the whole gateway: restarts lose nothing and
//! watchers resume across them.

use futures::StreamExt;

use asyncgate_client::pb;
use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{Submit, payload};
use asyncgate_tests::{Gate, TestGateway, finished, json, state};

#[tokio::test]
async fn a_restart_keeps_tickets_and_watchers_resume_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = TestGateway::start_with(TestGateway::durable_config(dir.path())).await;
    let client = gateway.client().await;
    let done = client
        .submit(Submit::new("kept").json("early".into()).build())
        .await
        .unwrap();
    let gate = Gate::default();
    let held = gate.clone();
    let worker = gateway
        .worker("kept")
        .handler(handler_fn(move |task: TaskContext| {
            let held = held.clone();
            async move {
                if task.json() == Some("early".into()) {
                    return Ok(payload::json("early result".into()));
                }
                if task.attempt() == 1 {
                    task.output(payload::json("a".into())).await;
                    task.output(payload::json("b".into())).await;
                    held.enter().await;
                    // The restart breaks the connection: the SDK says so.
                    task.cancelled().await;
                    assert_eq!(
                        task.cancel_reason().map(|(r, _)| r),
                        Some(pb::CancelReason::LeaseLost)
                    );
                    return Err(asyncgate_client::worker::TaskError::retryable(
                        "interrupted",
                    ));
                }
                task.output(payload::json("c".into())).await;
                Ok(payload::json(
                    format!("done on attempt {}", task.attempt()).into(),
                ))
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let early = finished(&client, &done.id).await;
    assert_eq!(state(&early), pb::TicketState::Succeeded);

    let ticket = client
        .submit(Submit::new("kept").json("long".into()).build())
        .await
        .unwrap();
    gate.started().await;
    gate.open();
    let mut raw = client.raw();
    let mut first = raw
        .watch_ticket(pb::WatchTicketRequest {
            id: ticket.id.clone(),
            after_seq: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = first.next().await.unwrap().unwrap();
        if event.kind == pb::TicketEventKind::Output as i32 {
            seen.push(event.seq);
        }
    }
    drop(first);

    // Restart: the running attempt is interrupted, the ticket is requeued.
    let gateway = gateway.restart().await;
    let client = gateway.client().await;
    let early = client.get(&done.id, None).await.unwrap();
    assert_eq!(
        early.result,
        Some(json("early result".into())),
        "results survive"
    );

    let mut resumed = client
        .raw()
        .watch_ticket(pb::WatchTicketRequest {
            id: ticket.id.clone(),
            after_seq: Some(seen[0]),
        })
        .await
        .unwrap()
        .into_inner();
    let mut outputs = Vec::new();
    let mut last = None;
    while let Some(event) = resumed.next().await {
        let event = event.unwrap();
        if event.kind == pb::TicketEventKind::Output as i32 {
            outputs.push(event.output.clone().unwrap());
        }
        if event.ticket.is_some() {
            last = event.ticket;
        }
    }
    assert_eq!(
        outputs,
        vec![json("b".into()), json("c".into())],
        "after \"a\": the stored \"b\", then the new attempt's \"c\""
    );
    let last = last.unwrap();
    assert_eq!(state(&last), pb::TicketState::Succeeded);
    assert_eq!(last.attempt, 2);
    assert_eq!(last.result, Some(json("done on attempt 2".into())));
    worker.abort();
}
