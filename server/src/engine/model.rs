//! A reference checker for the engine's state machine, shared by the
//! property tests (`properties.rs`) and the fuzz targets (`fuzz/`): random
//! sequences of submit, claim, progress, result, release, cancel, session
//! loss, timer passes and an operator's retry and delete, checked after
//! every step against what must always hold:
//!
//! - a ticket records at most one result, and only from its current lease;
//! - a terminal ticket never changes again, but for an operator's retry of a
//!   FAILED, CANCELLED or EXPIRED one (PENDING, its seq continuing) or
//!   delete (gone for good);
//! - no two leases of one ticket are live at once (a claim never hands out a
//!   ticket that is running under another lease).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::domain::ticket::Payload;
use crate::domain::{Lease, TicketError};

macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(format!($($message)+));
        }
    };
}

macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($message:tt)+) => {
        if $left != $right {
            return Err(format!("{}: {:?} != {:?}", format!($($message)+), $left, $right));
        }
    };
}

/// One step of a sequence.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum Op {
    Submit { priority: i32, key: Option<u8> },
    Claim { session: usize, want: usize },
    Succeed { lease: usize },
    Fail { lease: usize, retryable: bool },
    Progress { lease: usize },
    Release { lease: usize, delivered: bool },
    Cancel { ticket: usize },
    Retry { ticket: usize },
    Delete { ticket: usize },
    EndSession { session: usize },
    Timers { advance_secs: u64 },
}

fn new_ticket(priority: i32, key: Option<u8>) -> NewTicket {
    NewTicket {
        id: TicketId::new(),
        queue: QueueName::parse("q").unwrap(),
        payload: Payload::default(),
        priority,
        idempotency_key: key.map(|k| format!("key-{k}")),
        metadata: Default::default(),
        timeout: Some(Duration::from_secs(60)),
        attempt_timeout: Some(Duration::from_secs(20)),
        max_attempts: 3,
        tenant: None,
        not_before: None,
        callback: None,
    }
}

/// What the test has seen, to check the engine against.
#[derive(Default)]
struct Model {
    tickets: Vec<TicketId>,
    leases: Vec<(TicketId, Lease)>,
    /// The lease each ticket is running under, as the engine last said.
    live: HashMap<TicketId, LeaseId>,
    /// Terminal snapshots: (state, result, seq) never change once seen.
    terminal: HashMap<TicketId, (TicketState, Option<Payload>, u64)>,
    /// Results recorded per ticket.
    recorded: HashMap<TicketId, u32>,
    /// Tickets an operator deleted: they never come back.
    deleted: std::collections::HashSet<TicketId>,
}

impl Model {
    fn observe(&mut self, ticket: &Ticket) -> Result<(), String> {
        if let Some((state, result, seq)) = self.terminal.get(&ticket.id) {
            ensure_eq!(ticket.state, *state, "a terminal ticket changed state");
            ensure_eq!(
                &ticket.result,
                result,
                "a terminal ticket changed its result"
            );
            ensure_eq!(ticket.seq, *seq, "a terminal ticket changed");
        } else if ticket.state.is_terminal() {
            self.terminal
                .insert(ticket.id, (ticket.state, ticket.result.clone(), ticket.seq));
            self.live.remove(&ticket.id);
        }
        match (&ticket.lease, ticket.state) {
            (Some(lease), TicketState::Running) => {
                self.live.insert(ticket.id, lease.lease_id);
            }
            _ => {
                self.live.remove(&ticket.id);
            }
        }
        Ok(())
    }
}

/// The engine settings every check runs with: backoffs of seconds, so that
/// the `Timers` steps (up to 40 s) both do and do not reach them.
pub fn config() -> EngineConfig {
    EngineConfig {
        backoff: crate::domain::backoff::Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(4),
        },
        ..EngineConfig::default()
    }
}

/// Runs `ops` against a fresh memory engine, checking the invariants after
/// every step; the error says which one broke.
pub async fn check(ops: Vec<Op>) -> Result<(), String> {
    check_on(Arc::new(LocalEngine::in_memory(config())), ops).await
}

/// Runs `ops` against `engine` (fresh, built with [`config`]), checking the
/// invariants after every step.
pub async fn check_on(engine: Arc<dyn Engine>, ops: Vec<Op>) -> Result<(), String> {
    let mut clock = SystemTime::now();
    let sessions = open_sessions(&engine, clock).await;
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Submit { priority, key } => {
                let submitted = engine.submit(new_ticket(priority, key)).await.unwrap();
                if submitted.created {
                    model.tickets.push(submitted.ticket.id);
                }
            }
            Op::Claim { session, want } => {
                claim(&engine, &mut model, &sessions[session], want).await?;
            }
            Op::Succeed { lease } | Op::Fail { lease, .. } if lease < model.leases.len() => {
                let outcome = match op {
                    Op::Succeed { .. } => Outcome::Success(body("done")),
                    Op::Fail { retryable, .. } => Outcome::Failure(TicketError {
                        code: 2,
                        message: "boom".into(),
                        retryable,
                    }),
                    _ => unreachable!(),
                };
                complete(&engine, &mut model, lease, outcome).await?;
            }
            Op::Progress { lease } if lease < model.leases.len() => {
                progress(&engine, &model, lease).await?;
            }
            Op::Release { lease, delivered } if lease < model.leases.len() => {
                let (id, held) = model.leases[lease].clone();
                let reason = if delivered {
                    ReleaseReason::WorkerLost
                } else {
                    ReleaseReason::Undelivered
                };
                match engine.release(id, held.lease_id, reason).await {
                    Ok(()) => {}
                    // Deleted by an operator since: nothing to give back.
                    Err(EngineError::ResultExpired { .. }) if model.deleted.contains(&id) => {}
                    Err(other) => ensure!(false, "release failed: {other}"),
                }
            }
            Op::Cancel { ticket } if ticket < model.tickets.len() => {
                let id = model.tickets[ticket];
                match engine.cancel(id, "property").await {
                    Ok(ticket) => model.observe(&ticket)?,
                    Err(EngineError::AlreadyTerminal { .. }) => {}
                    Err(EngineError::ResultExpired { .. }) if model.deleted.contains(&id) => {}
                    Err(other) => ensure!(false, "unexpected error {other}"),
                }
            }
            Op::Retry { ticket } if ticket < model.tickets.len() => {
                let id = model.tickets[ticket];
                retry(&engine, &mut model, id).await?;
            }
            Op::Delete { ticket } if ticket < model.tickets.len() => {
                let id = model.tickets[ticket];
                delete(&engine, &mut model, id).await?;
            }
            Op::EndSession { session } => {
                engine
                    .end_session(sessions[session].session_id)
                    .await
                    .unwrap();
                engine
                    .open_session(&sessions[session], clock + Duration::from_secs(3600))
                    .await
                    .unwrap();
            }
            Op::Timers { advance_secs } => {
                clock += Duration::from_secs(advance_secs);
                engine.run_timers(clock).await.unwrap();
            }
            _ => {}
        }
        check_every_ticket(&engine, &mut model).await?;
    }
    Ok(())
}

/// Opens the three worker sessions a run claims with, each serving `q` for
/// an hour from `clock`.
async fn open_sessions(engine: &Arc<dyn Engine>, clock: SystemTime) -> Vec<SessionInfo> {
    let sessions: Vec<SessionInfo> = (0..3)
        .map(|i| SessionInfo {
            session_id: SessionId::new(),
            worker_name: format!("w{i}").into(),
            queues: Arc::from([QueueName::parse("q").unwrap()]),
        })
        .collect();
    for session in &sessions {
        engine
            .open_session(session, clock + Duration::from_secs(3600))
            .await
            .unwrap();
    }
    sessions
}

/// A binary payload of `text`.
fn body(text: &'static str) -> Payload {
    Payload {
        kind: Some(asyncgate_proto::v1::payload::Kind::Binary(
            bytes::Bytes::from_static(text.as_bytes()),
        )),
        content_type: String::new(),
    }
}

/// `Op::Claim`: claims up to `want` tickets for `session`; none may be
/// leased already or terminal.
async fn claim(
    engine: &Arc<dyn Engine>,
    model: &mut Model,
    session: &SessionInfo,
    want: usize,
) -> Result<(), String> {
    let asked = vec![session.clone(); want];
    for claimed in engine
        .claim(&QueueName::parse("q").unwrap(), &asked)
        .await
        .unwrap()
    {
        let id = claimed.ticket.id;
        ensure!(
            !model.live.contains_key(&id),
            "ticket {id} leased again while its lease {:?} is live",
            model.live.get(&id)
        );
        ensure!(
            !model.terminal.contains_key(&id),
            "a terminal ticket was leased"
        );
        model.live.insert(id, claimed.lease.lease_id);
        model.leases.push((id, claimed.lease));
    }
    Ok(())
}

/// `Op::Succeed` and `Op::Fail`: reports `outcome` under the `lease`-th
/// lease seen; only a live lease's result may be recorded, and only once.
async fn complete(
    engine: &Arc<dyn Engine>,
    model: &mut Model,
    lease: usize,
    outcome: Outcome,
) -> Result<(), String> {
    let (id, held) = model.leases[lease].clone();
    let was_live = model.live.get(&id) == Some(&held.lease_id);
    match engine.complete(id, held.lease_id, outcome).await {
        Ok(Completion::Recorded(ticket)) => {
            ensure!(
                was_live,
                "a result was recorded for a lease that was not live"
            );
            if ticket.state == TicketState::Succeeded {
                *model.recorded.entry(id).or_default() += 1;
                ensure_eq!(model.recorded[&id], 1, "two results recorded");
            }
            model.observe(&ticket)?;
        }
        Ok(Completion::Duplicate(ticket)) => model.observe(&ticket)?,
        Err(EngineError::StaleLease { .. }) => {
            ensure!(!was_live, "the live lease's result was refused");
        }
        Err(EngineError::ResultExpired { .. }) if model.deleted.contains(&id) => {}
        Err(other) => ensure!(false, "unexpected error {other}"),
    }
    Ok(())
}

/// `Op::Progress`: reports progress and a chunk under the `lease`-th lease
/// seen; accepted exactly when that lease is live.
async fn progress(engine: &Arc<dyn Engine>, model: &Model, lease: usize) -> Result<(), String> {
    let (id, held) = model.leases[lease].clone();
    let outcome = engine
        .progress(ProgressReport {
            ticket_id: id,
            lease_id: held.lease_id,
            progress: Some(crate::domain::Progress {
                percent: 50,
                message: "half".into(),
            }),
            output: Some(body("chunk")),
        })
        .await;
    let was_live = model.live.get(&id) == Some(&held.lease_id);
    ensure_eq!(outcome.is_ok(), was_live, "progress fencing");
    Ok(())
}

/// `Op::Retry`: only a FAILED, CANCELLED or EXPIRED ticket goes back to
/// PENDING, its seq continuing, with a fresh attempt budget.
async fn retry(engine: &Arc<dyn Engine>, model: &mut Model, id: TicketId) -> Result<(), String> {
    let ended = model
        .terminal
        .get(&id)
        .map(|(state, _, seq)| (*state, *seq));
    match engine.retry(id).await {
        Ok(ticket) => {
            let Some((state, seq)) = ended else {
                return Err(format!("unfinished ticket {id} was retried"));
            };
            ensure!(
                state != TicketState::Succeeded,
                "succeeded ticket {id} was retried"
            );
            ensure_eq!(ticket.state, TicketState::Pending, "a retried ticket");
            ensure_eq!(ticket.seq, seq + 1, "a retry continues the seq");
            ensure_eq!(ticket.attempt, 0, "a retry's attempt budget");
            model.terminal.remove(&id);
            model.observe(&ticket)?;
        }
        Err(EngineError::NotFinished { .. }) => {
            ensure!(
                ended.is_none(),
                "finished ticket {id} refused as unfinished"
            );
        }
        Err(EngineError::SucceededNotRetried(_)) => {
            ensure_eq!(
                ended.map(|(state, _)| state),
                Some(TicketState::Succeeded),
                "refused as succeeded"
            );
        }
        Err(EngineError::ResultExpired { .. }) => {}
        Err(other) => ensure!(false, "unexpected error {other}"),
    }
    Ok(())
}

/// `Op::Delete`: only a finished ticket is deleted, for good.
async fn delete(engine: &Arc<dyn Engine>, model: &mut Model, id: TicketId) -> Result<(), String> {
    let ended = model.terminal.contains_key(&id);
    match engine.delete(id).await {
        Ok(_) => {
            ensure!(ended, "unfinished ticket {id} was deleted");
            model.deleted.insert(id);
        }
        Err(EngineError::NotFinished { .. }) => {
            ensure!(!ended, "finished ticket {id} refused as unfinished");
        }
        Err(EngineError::ResultExpired { .. }) => {}
        Err(other) => ensure!(false, "unexpected error {other}"),
    }
    Ok(())
}

/// Every ticket, after every step: the invariants hold.
async fn check_every_ticket(engine: &Arc<dyn Engine>, model: &mut Model) -> Result<(), String> {
    // What the admin API must show of each queue, from the tickets.
    let mut expected: HashMap<QueueName, (StateCounts, Option<SystemTime>)> = HashMap::new();
    for id in model.tickets.clone() {
        match engine.get(id).await {
            Ok(ticket) => {
                ensure!(!model.deleted.contains(&id), "deleted ticket {id} is back");
                model.observe(&ticket)?;
                let (counts, oldest) = expected.entry(ticket.queue.clone()).or_default();
                *counts.get_mut(ticket.state) += 1;
                if ticket.state == TicketState::Pending {
                    let at = ticket.created_at;
                    *oldest = Some(oldest.map_or(at, |o| o.min(at)));
                }
            }
            Err(EngineError::ResultExpired { .. }) => {}
            Err(other) => ensure!(false, "ticket {id} vanished: {other}"),
        }
    }
    let ms = |t: Option<SystemTime>| {
        t.map(|t| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
        })
    };
    for info in engine.queues().await.map_err(|e| e.to_string())? {
        let (counts, oldest) = expected.remove(&info.queue).unwrap_or_default();
        ensure_eq!(info.counts, counts, "queue {} counts", info.queue);
        ensure_eq!(
            ms(info.oldest_pending_at),
            ms(oldest),
            "queue {} oldest pending",
            info.queue
        );
    }
    ensure!(
        expected.is_empty(),
        "queues with tickets missing from the list: {:?}",
        expected.keys().collect::<Vec<_>>()
    );
    Ok(())
}
