//! Unit tests of `engine/durable/mod.rs`.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::*;
use crate::domain::ticket::Outcome;
use crate::domain::ticket::Payload;
use crate::domain::{NewTicket, Progress, QueueName, SessionId, TicketState};
use crate::engine::{Engine, ProgressReport, SessionInfo};

fn body(text: &'static str) -> Payload {
    Payload {
        kind: Some(asyncgate_proto::v1::payload::Kind::Binary(
            Bytes::from_static(text.as_bytes()),
        )),
        content_type: String::new(),
    }
}

fn new_ticket(priority: i32, key: Option<&str>) -> NewTicket {
    NewTicket {
        id: TicketId::new(),
        queue: QueueName::parse("q").unwrap(),
        payload: body("request"),
        priority,
        idempotency_key: key.map(String::from),
        metadata: [("k".to_string(), "v".to_string())].into(),
        timeout: None,
        attempt_timeout: None,
        max_attempts: 3,
        tenant: None,
        not_before: None,
        callback: None,
    }
}

async fn session(engine: &LocalEngine) -> SessionInfo {
    let info = SessionInfo {
        session_id: SessionId::new(),
        worker_name: "w".into(),
        queues: Arc::from([QueueName::parse("q").unwrap()]),
    };
    engine
        .open_session(&info, SystemTime::now() + Duration::from_secs(60))
        .await
        .unwrap();
    info
}

#[tokio::test]
async fn a_restart_restores_queues_results_keys_and_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/store.redb");
    let config = EngineConfig::default();
    let (a, b, c, done, keyed);
    {
        let engine = open(&path, config.clone()).unwrap();
        a = engine.submit(new_ticket(0, None)).await.unwrap().ticket.id;
        b = engine.submit(new_ticket(5, None)).await.unwrap().ticket.id;
        c = engine.submit(new_ticket(0, None)).await.unwrap().ticket.id;
        done = engine.submit(new_ticket(9, None)).await.unwrap().ticket.id;
        keyed = engine
            .submit(new_ticket(-5, Some("key")))
            .await
            .unwrap()
            .ticket
            .id;
        let s = session(&engine).await;
        let queue = QueueName::parse("q").unwrap();
        let first = engine
            .claim(&queue, std::slice::from_ref(&s))
            .await
            .unwrap();
        assert_eq!(first[0].ticket.id, done);
        engine
            .complete(
                done,
                first[0].lease.lease_id,
                Outcome::Success(body("result")),
            )
            .await
            .unwrap();
        let running = engine
            .claim(&queue, std::slice::from_ref(&s))
            .await
            .unwrap();
        assert_eq!(running[0].ticket.id, b);
        for text in ["x", "y"] {
            engine
                .progress(ProgressReport {
                    ticket_id: b,
                    lease_id: running[0].lease.lease_id,
                    progress: Some(Progress {
                        percent: 10,
                        message: String::new(),
                    }),
                    output: Some(body(text)),
                })
                .await
                .unwrap();
        }
    }
    let engine = open(&path, config).unwrap();
    let done = engine.get(done).await.unwrap();
    assert_eq!(done.state, TicketState::Succeeded);
    assert_eq!(done.result, Some(body("result")));
    assert_eq!(*done.payload, Payload::default(), "not kept once finished");
    assert_eq!(done.metadata.get("k").map(String::as_str), Some("v"));
    let interrupted = engine.get(b).await.unwrap();
    assert_eq!(interrupted.state, TicketState::Pending);
    assert_eq!(
        *interrupted.payload,
        body("request"),
        "kept while unfinished"
    );
    assert_eq!((interrupted.attempt, interrupted.worker_losses), (1, 1));
    assert!(
        interrupted
            .error
            .unwrap()
            .message
            .contains("gateway restart")
    );
    let (_, chunks) = engine.get_with_chunks(b, 0).await.unwrap();
    assert_eq!(
        chunks.iter().map(|c| c.output.clone()).collect::<Vec<_>>(),
        vec![body("x"), body("y")]
    );
    let again = engine.submit(new_ticket(-5, Some("key"))).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.ticket.id, keyed);
    let s = session(&engine).await;
    let order: Vec<TicketId> = engine
        .claim(&QueueName::parse("q").unwrap(), &vec![s; 4])
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.ticket.id)
        .collect();
    assert_eq!(order, vec![b, a, c, keyed], "priority, then FIFO, kept");
    let fresh = engine.submit(new_ticket(0, None)).await.unwrap().ticket;
    assert!(
        fresh.enqueue_seq > 5,
        "FIFO numbering continues after a restart"
    );
}

/// Shutdown's last step: the file is let go although the engine is
/// still referenced (a task finishing late), so the next gateway opens
/// it at once; the closed engine refuses writes instead of panicking.
#[tokio::test]
async fn close_releases_the_file_while_the_engine_is_still_held() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let engine = Arc::new(open(&path, EngineConfig::default()).unwrap());
    let id = engine.submit(new_ticket(0, None)).await.unwrap().ticket.id;
    let still_held = engine.clone();
    engine.close().await;
    let reopened = open(&path, EngineConfig::default()).expect("the file is free again");
    assert_eq!(reopened.get(id).await.unwrap().state, TicketState::Pending);
    let refused = still_held.submit(new_ticket(0, None)).await.unwrap_err();
    assert!(refused.is_unavailable(), "{refused}");
}

#[tokio::test]
async fn deleted_tickets_keep_their_tombstones_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let config = EngineConfig {
        result_retention: Duration::from_secs(1),
        ..EngineConfig::default()
    };
    let id;
    {
        let engine = open(&path, config.clone()).unwrap();
        id = engine.submit(new_ticket(0, None)).await.unwrap().ticket.id;
        engine.cancel(id, "").await.unwrap();
        engine
            .run_timers(SystemTime::now() + Duration::from_secs(2))
            .await
            .unwrap();
    }
    let engine = open(&path, config).unwrap();
    let error = engine.get(id).await.unwrap_err();
    assert!(
        matches!(error, EngineError::ResultExpired { .. }),
        "{error}"
    );
}

/// A delayed ticket stored by one process comes due in the next, once:
/// one that came due before the restart (and was leased) is not fired again.
#[tokio::test]
async fn delayed_tickets_come_due_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let at = SystemTime::now() + Duration::from_secs(30);
    let soon = SystemTime::now() + Duration::from_secs(10);
    let (waiting, fired);
    {
        let engine = open(&path, EngineConfig::default()).unwrap();
        let delayed = |at| NewTicket {
            not_before: Some(at),
            ..new_ticket(0, None)
        };
        waiting = engine.submit(delayed(at)).await.unwrap().ticket.id;
        fired = engine.submit(delayed(soon)).await.unwrap().ticket.id;
        engine.run_timers(soon).await.unwrap();
        let s = session(&engine).await;
        let claimed = engine
            .claim(&QueueName::parse("q").unwrap(), &[s])
            .await
            .unwrap();
        assert_eq!(
            claimed.iter().map(|c| c.ticket.id).collect::<Vec<_>>(),
            [fired]
        );
        engine.close().await;
    }
    let engine = open(&path, EngineConfig::default()).unwrap();
    let t = engine.get(waiting).await.unwrap();
    assert_eq!(
        (t.state, t.not_before, t.scheduled_for),
        (TicketState::Pending, Some(at), Some(at))
    );
    let s = session(&engine).await;
    let q = QueueName::parse("q").unwrap();
    // The lease the first process held went with it: that ticket runs again
    // as a retry, the one still waiting does not run before its time.
    let claimed = engine.claim(&q, std::slice::from_ref(&s)).await.unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.ticket.id).collect::<Vec<_>>(),
        [fired]
    );
    assert_eq!(claimed[0].ticket.scheduled_for, Some(soon));
    assert!(
        engine
            .claim(&q, std::slice::from_ref(&s))
            .await
            .unwrap()
            .is_empty()
    );
    engine
        .run_timers(at + Duration::from_millis(1))
        .await
        .unwrap();
    let claimed = engine.claim(&q, std::slice::from_ref(&s)).await.unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.ticket.id).collect::<Vec<_>>(),
        [waiting]
    );
    engine
        .run_timers(at + Duration::from_millis(2))
        .await
        .unwrap();
    assert!(
        engine.claim(&q, &[s]).await.unwrap().is_empty(),
        "fired once"
    );
}

/// Schedules are stored: after a restart they read back with their
/// revision and due time, and a deleted one stays deleted.
#[tokio::test]
async fn schedules_survive_a_restart() {
    use crate::engine::ScheduleRecord;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let due = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let record = |id: &str| ScheduleRecord {
        id: id.into(),
        revision: 0,
        due: Some(due),
        body: Bytes::from_static(b"body"),
    };
    {
        let engine = open(&path, EngineConfig::default()).unwrap();
        engine.put_schedule(record("kept"), 0).await.unwrap();
        engine.put_schedule(record("kept"), 1).await.unwrap();
        engine.put_schedule(record("gone"), 0).await.unwrap();
        engine.delete_schedule("gone").await.unwrap();
        engine.close().await;
    }
    let engine = open(&path, EngineConfig::default()).unwrap();
    let kept = engine.get_schedule("kept").await.unwrap().unwrap();
    assert_eq!(
        (kept.revision, kept.due, &kept.body[..]),
        (2, Some(due), &b"body"[..])
    );
    assert_eq!(engine.get_schedule("gone").await.unwrap(), None);
    assert!(matches!(
        engine.put_schedule(record("kept"), 1).await,
        Err(EngineError::ScheduleChanged(_))
    ));
}

#[test]
fn a_corrupt_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    std::fs::write(&path, vec![0xA5u8; 64 * 1024]).unwrap();
    let error = open(&path, EngineConfig::default()).err().expect("refused");
    let message = error.to_string();
    assert!(message.contains("cannot open the store"), "{message}");
    assert!(message.contains("store.redb"), "{message}");
}

#[tokio::test]
async fn a_full_disk_answers_unavailable_then_recovers_by_itself() {
    let disk = super::simdisk::SimDisk::default();
    let database = Database::builder()
        .create_with_backend(disk.database())
        .unwrap();
    let reopening = disk.clone();
    let reopen: Reopen = Box::new(move || {
        Database::builder()
            .create_with_backend(reopening.database())
            .map_err(redb::Error::from)
    });
    let engine = open_database(
        database,
        disk.log(),
        Path::new("test-disk"),
        EngineConfig {
            dispatch_stored_only: true,
            ..EngineConfig::default()
        },
        reopen,
        Checkpoints::default(),
    )
    .unwrap();
    let kept = engine.submit(new_ticket(0, None)).await.unwrap().ticket.id;
    let worker = session(&engine).await;
    disk.set_full(true);
    let error = engine.submit(new_ticket(9, None)).await.unwrap_err();
    assert!(
        matches!(&error, EngineError::Store(e) if e.kind() == crate::engine::StoreErrorKind::Full),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("store full: the disk holding the store is full"),
        "{error}"
    );
    assert!(!error.to_string().contains("test-disk"), "no path: {error}");
    let EngineError::Store(full_disk) = &error else {
        unreachable!()
    };
    assert!(
        full_disk.cause().unwrap().contains("No space left"),
        "{full_disk:?}"
    );
    // The unacknowledged ticket is in memory, not on disk: no worker
    // may run it.
    let queue = QueueName::parse("q").unwrap();
    let claimed = engine.claim(&queue, std::slice::from_ref(&worker)).await;
    assert!(
        claimed.as_ref().map_or(true, Vec::is_empty),
        "dispatched a ticket that is not stored: {claimed:?}"
    );
    // Later calls fail the same way rather than showing unwritten state.
    let error = engine.cancel(kept, "").await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    let error = engine.submit(new_ticket(0, None)).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    // Space comes back: the writer's retry lands what memory holds, and
    // new calls succeed without a restart.
    disk.set_full(false);
    let submitted = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match engine.submit(new_ticket(0, None)).await {
                Ok(submitted) => return submitted,
                Err(error) if error.is_transient() => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(other) => panic!("{other}"),
            }
        }
    })
    .await
    .expect("writes succeed again once there is space");
    assert!(submitted.created);
    // The ticket that could not be stored is stored now, and is handed
    // out (priority 9: first).
    let claimed = engine
        .claim(&queue, std::slice::from_ref(&worker))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].ticket.priority, 9);
    // The cancel that was refused as unacknowledged is on disk now
    // (memory and disk agree), and the store takes new transitions.
    let kept = engine.get(kept).await.unwrap();
    assert_eq!(kept.state, crate::domain::TicketState::Cancelled);
    engine.cancel(submitted.ticket.id, "").await.unwrap();
}

/// A pause, limits and a target are stored: after a restart the queue is
/// still paused (and dispatches nothing) with its target, its counts are rebuilt from the tickets, and a
/// resume then lets it run.
#[tokio::test]
async fn a_pause_limits_target_and_the_queue_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let q = QueueName::parse("q").unwrap();
    {
        let engine = open(&path, EngineConfig::default()).unwrap();
        let done = engine.submit(new_ticket(0, None)).await.unwrap().ticket.id;
        engine.cancel(done, "").await.unwrap();
        engine.submit(new_ticket(0, None)).await.unwrap();
        engine.submit(new_ticket(0, None)).await.unwrap();
        let pause = crate::domain::QueuePause {
            by: "ops".into(),
            at: SystemTime::now(),
            reason: "migrating the database".into(),
        };
        engine.set_pause(&q, Some(pause)).await.unwrap();
        let limits = crate::domain::QueueLimits {
            max_dispatch_per_second: 50,
            burst: 10,
            max_concurrent: 1,
        };
        engine.set_limits(&q, limits).await.unwrap();
        let target = crate::domain::QueueTarget {
            spec: "grpc://orders.internal:50051/shop.v1.Orders/Place".into(),
            by: "ops".into(),
            at: SystemTime::now(),
        };
        engine.set_target(&q, Some(target)).await.unwrap();
        engine.close().await;
    }
    let engine = open(&path, EngineConfig::default()).unwrap();
    let info = engine.queue_info(&q).await.unwrap().expect("the queue");
    assert_eq!(
        info.pause.expect("still paused").reason,
        "migrating the database"
    );
    assert_eq!((info.counts.pending, info.counts.cancelled), (2, 1));
    let targets = engine.targets().await.unwrap();
    assert_eq!(targets.len(), 1, "the target is stored");
    assert_eq!(
        (targets[0].0.as_str(), targets[0].1.by.as_str()),
        ("q", "ops")
    );
    engine.set_target(&q, None).await.unwrap();
    let worker = session(&engine).await;
    assert!(
        engine
            .claim(&q, std::slice::from_ref(&worker))
            .await
            .unwrap()
            .is_empty()
    );
    engine.set_pause(&q, None).await.unwrap();
    engine
        .set_limits(&q, crate::domain::QueueLimits::default())
        .await
        .unwrap();
    engine.close().await;
    let engine = open(&path, EngineConfig::default()).unwrap();
    assert!(
        engine.targets().await.unwrap().is_empty(),
        "cleared for good"
    );
    assert!(
        engine
            .queue_info(&q)
            .await
            .unwrap()
            .unwrap()
            .pause
            .is_none()
    );
    let worker = session(&engine).await;
    let claimed = engine.claim(&q, &[worker.clone(), worker]).await.unwrap();
    assert_eq!(claimed.len(), 2, "resumed for good");
}

/// A ticket that failed keeps its body on disk and gets it back after a
/// crash (the engine dropped, as by kill -9, then the file reopened): an
/// operator's retry then runs it with its body, and its old output, dropped
/// by the retry, stays dropped across the next restart. Failed and
/// cancelled tickets' bodies weigh on the pending-bytes budget after the
/// restart too, until deleted.
#[tokio::test]
async fn a_retry_after_a_crash_still_has_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let q = QueueName::parse("q").unwrap();
    let weight = {
        let new = new_ticket(0, None);
        crate::engine::request_bytes(&new.payload, &new.metadata)
    };
    let config = EngineConfig {
        max_pending_bytes: 3 * weight,
        ..EngineConfig::default()
    };
    let (failed, cancelled);
    {
        let engine = open(&path, config.clone()).unwrap();
        failed = engine.submit(new_ticket(0, None)).await.unwrap().ticket.id;
        let worker = session(&engine).await;
        let c = engine
            .claim(&q, std::slice::from_ref(&worker))
            .await
            .unwrap()
            .remove(0);
        engine
            .progress(ProgressReport {
                ticket_id: failed,
                lease_id: c.lease.lease_id,
                progress: None,
                output: Some(body("old output")),
            })
            .await
            .unwrap();
        let outcome = Outcome::Failure(crate::domain::TicketError {
            code: 3,
            message: "downstream refused".into(),
            retryable: false,
        });
        engine
            .complete(failed, c.lease.lease_id, outcome)
            .await
            .unwrap();
        cancelled = engine.submit(new_ticket(0, None)).await.unwrap().ticket.id;
        engine.cancel(cancelled, "").await.unwrap();
        // No close: the process dies here.
    }
    let engine = open(&path, config.clone()).unwrap();
    let ticket = engine.get(failed).await.unwrap();
    assert_eq!(ticket.state, TicketState::Failed);
    assert_eq!(*ticket.payload, body("request"), "read back for a retry");
    // Both kept bodies still count: room for one more submit, not two.
    engine.submit(new_ticket(0, None)).await.unwrap();
    let full = engine.submit(new_ticket(0, None)).await.unwrap_err();
    assert!(full.to_string().contains("--max-pending-bytes"), "{full}");
    engine.delete(cancelled).await.unwrap();
    engine
        .submit(new_ticket(0, None))
        .await
        .expect("the deleted ticket's body was given back");

    let retried = engine.retry(failed).await.unwrap();
    assert_eq!(retried.state, TicketState::Pending);
    assert_eq!(retried.seq, ticket.seq + 1);
    let (_, chunks) = engine.get_with_chunks(failed, 0).await.unwrap();
    assert!(chunks.is_empty(), "{chunks:?}");
    drop(engine);

    let engine = open(&path, config).unwrap();
    let (ticket, chunks) = engine.get_with_chunks(failed, 0).await.unwrap();
    assert_eq!(ticket.state, TicketState::Pending);
    assert_eq!(ticket.attempt, 0, "a fresh attempt budget");
    assert!(
        chunks.is_empty(),
        "the old output stays dropped: {chunks:?}"
    );
    let worker = session(&engine).await;
    let claimed = engine
        .claim(&q, &[worker.clone(), worker.clone(), worker])
        .await
        .unwrap();
    let again = claimed
        .iter()
        .find(|c| c.ticket.id == failed)
        .expect("the retried ticket is dispatched");
    assert_eq!(*again.ticket.payload, body("request"));
    assert!(matches!(
        engine.get(cancelled).await,
        Err(EngineError::ResultExpired { .. })
    ));
}

/// A finished ticket's output chunks are read from the store: from the
/// log's side until a checkpoint applies them (interval of an hour), from
/// redb after one (a checkpoint after every group), the same either way;
/// and after a crash the log's are replayed into redb.
#[tokio::test]
async fn finished_output_reads_the_same_before_and_after_a_checkpoint() {
    for interval in [Duration::from_secs(3600), Duration::ZERO] {
        let disk = super::simdisk::SimDisk::default();
        let database = Database::builder()
            .create_with_backend(disk.database())
            .unwrap();
        let engine = open_database(
            database,
            disk.log(),
            Path::new("test-disk"),
            EngineConfig::default(),
            Box::new(|| Err(redb::Error::Io(std::io::Error::other("no reopen")))),
            Checkpoints {
                log_bytes: u64::MAX,
                interval,
            },
        )
        .unwrap();
        let id = engine.submit(new_ticket(0, None)).await.unwrap().ticket.id;
        let s = session(&engine).await;
        let queue = QueueName::parse("q").unwrap();
        let lease = engine
            .claim(&queue, std::slice::from_ref(&s))
            .await
            .unwrap()[0]
            .lease
            .lease_id;
        for text in ["x", "y", "z"] {
            engine
                .progress(ProgressReport {
                    ticket_id: id,
                    lease_id: lease,
                    progress: None,
                    output: Some(body(text)),
                })
                .await
                .unwrap();
        }
        engine
            .complete(id, lease, Outcome::Success(body("done")))
            .await
            .unwrap();
        let outputs = |chunks: Vec<Chunk>| chunks.into_iter().map(|c| c.output).collect::<Vec<_>>();
        let (ticket, chunks) = engine.get_with_chunks(id, 0).await.unwrap();
        assert_eq!(
            outputs(chunks),
            vec![body("x"), body("y"), body("z")],
            "{interval:?}"
        );
        let (_, after) = engine.get_with_chunks(id, ticket.seq - 2).await.unwrap();
        assert_eq!(outputs(after), vec![body("z")], "{interval:?}");
        let (_, none) = engine.get_with_chunks(id, u64::MAX).await.unwrap();
        assert!(none.is_empty());
        // A crash (nothing closed): the log's frames are replayed.
        let (database, log) = disk.images(super::simdisk::Survives::Synced);
        drop(engine);
        let after_crash = super::simdisk::SimDisk::from_images(database, log);
        let engine = open_database(
            Database::builder()
                .create_with_backend(after_crash.database())
                .unwrap(),
            after_crash.log(),
            Path::new("test-disk"),
            EngineConfig::default(),
            Box::new(|| Err(redb::Error::Io(std::io::Error::other("no reopen")))),
            Checkpoints::default(),
        )
        .unwrap();
        let (ticket, chunks) = engine.get_with_chunks(id, 0).await.unwrap();
        assert_eq!(ticket.state, TicketState::Succeeded, "{interval:?}");
        assert_eq!(
            outputs(chunks),
            vec![body("x"), body("y"), body("z")],
            "{interval:?}"
        );
    }
}

/// A batch is one group commit however fast the writer is: its appends
/// reach the log as one frame with one sync (and a restart after that sync
/// finds every ticket of it).
#[tokio::test]
async fn a_batch_costs_one_sync() {
    let disk = super::simdisk::SimDisk::default();
    let database = Database::builder()
        .create_with_backend(disk.database())
        .unwrap();
    let engine = open_database(
        database,
        disk.log(),
        Path::new("test-disk"),
        EngineConfig::default(),
        Box::new(|| Err(redb::Error::Io(std::io::Error::other("no reopen")))),
        Checkpoints {
            log_bytes: u64::MAX,
            interval: Duration::from_secs(3600),
        },
    )
    .unwrap();
    for round in 0..3 {
        let before = disk.log_syncs();
        let batch: Vec<NewTicket> = (0..200).map(|_| new_ticket(round, None)).collect();
        let results = engine.submit_batch(batch).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(disk.log_syncs() - before, 1, "round {round}");
    }
    let (database, log) = disk.images(super::simdisk::Survives::Synced);
    engine.close().await;
    let after = super::simdisk::SimDisk::from_images(database, log);
    let reopened = open_database(
        Database::builder()
            .create_with_backend(after.database())
            .unwrap(),
        after.log(),
        Path::new("test-disk"),
        EngineConfig::default(),
        Box::new(|| Err(redb::Error::Io(std::io::Error::other("no reopen")))),
        Checkpoints::default(),
    )
    .unwrap();
    let queue = QueueName::parse("q").unwrap();
    let info = reopened.queue_info(&queue).await.unwrap().unwrap();
    assert_eq!(info.counts.pending, 600);
}
