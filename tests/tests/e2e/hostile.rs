//! A hostile worker and a slow watcher beside well-behaved ones: the others
//! still get every result.

use std::time::Duration;

use futures::StreamExt;

use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{Submit, payload, pb};
use asyncgate_server::config::Config;
use asyncgate_tests::{TestGateway, fast_config, finished, json, state};

#[tokio::test]
async fn hostile_workers_and_a_stalled_watcher_hurt_no_one_else() {
    // Heartbeats slow enough that the flooder (which never answers pings)
    // is still connected while it floods, even on a loaded machine.
    let gateway = TestGateway::start_with(Config {
        heartbeat_interval: Duration::from_secs(1),
        lease_ttl: Duration::from_secs(5),
        ..fast_config()
    })
    .await;
    let client = gateway.client().await;

    // A worker that floods the gateway with reports for leases it does not
    // hold, duplicates and garbage, and never answers its tasks.
    let mut flooder = gateway.raw_worker().await;
    flooder.hello(&["shared"], 8).await;
    // A worker that never reads its stream after the handshake.
    let mut deaf = gateway.raw_worker().await;
    deaf.hello(&["shared"], 8).await;

    let good = gateway.spawn_worker(
        "shared",
        handler_fn(|task: TaskContext| async move {
            task.progress(10, "working").await;
            Ok(task.payload().clone())
        }),
    );

    // A watcher that opens a stream and never reads it.
    let chatty = client.submit(Submit::new("chatty").build()).await.unwrap();
    let stalled = client.watch(&chatty.id, None).await.unwrap();

    let forged_ticket = chatty.id.clone();
    for round in 0..300u32 {
        use pb::worker_message::Kind;
        let forged_lease = uuid::Uuid::new_v4().to_string();
        let kind = match round % 3 {
            0 => Kind::Progress(pb::TaskProgress {
                ticket_id: forged_ticket.clone(),
                lease_id: forged_lease,
                percent: 99,
                message: "not mine".into(),
                output: Some(payload::json("forged".into())),
            }),
            1 => Kind::Result(pb::TaskResult {
                ticket_id: forged_ticket.clone(),
                lease_id: forged_lease,
                outcome: Some(pb::task_result::Outcome::Success(payload::json(
                    "forged result".into(),
                ))),
            }),
            _ => Kind::Result(pb::TaskResult {
                ticket_id: "garbage".into(),
                lease_id: "more garbage".into(),
                outcome: None,
            }),
        };
        if flooder
            .tx
            .send(pb::WorkerMessage {
                kind: Some(kind),
                ..Default::default()
            })
            .await
            .is_err()
        {
            break;
        }
    }
    // The forged reports are answered with refusals.
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = flooder.inbound.next().await {
            if let Some(pb::dispatch_message::Kind::ResultAck(ack)) = message.kind
                && ack.code != 0
            {
                return true;
            }
        }
        false
    })
    .await
    .expect("the flooder gets answers");
    assert!(refused, "forged results are refused");
    let mut ids = Vec::new();
    for n in 0..120 {
        let ticket = client
            .submit(
                Submit::new("shared")
                    .payload(payload::json(n.into()))
                    .build(),
            )
            .await
            .unwrap();
        ids.push((ticket.id, n));
    }
    // Finally a message that breaks the protocol outright: disconnected.
    let _ = flooder
        .tx
        .send(pb::WorkerMessage {
            kind: None,
            ..Default::default()
        })
        .await;

    for (id, n) in &ids {
        let ticket = finished(&client, id).await;
        assert_eq!(state(&ticket), pb::TicketState::Succeeded, "{ticket:?}");
        assert_eq!(
            ticket.result,
            Some(json((*n).into())),
            "never a forged result"
        );
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match flooder.inbound.next().await {
                Some(Ok(_)) => {}
                Some(Err(status)) => return Some(status),
                None => return None,
            }
        }
    })
    .await
    .expect("the flooder's stream ends");
    assert!(ended.is_some_and(|s| s.message().contains("WorkerMessage")));
    drop(deaf);
    drop(stalled);
    good.shutdown();
}
