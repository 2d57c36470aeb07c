//! Unit tests of the session's state machine: inputs in, effects out, no
//! runtime and no engine. Time is an input, so the heartbeat rules are
//! tested at exact instants.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::domain::{Lease, NewTicket, QueueName, Ticket};
use crate::engine::RevokeReason;

const HEARTBEAT: Duration = Duration::from_secs(10);

fn machine(max_in_flight: u32) -> (Machine, Instant) {
    let now = Instant::now();
    let settings = SessionSettings {
        heartbeat_interval: HEARTBEAT,
        lease_ttl: Duration::from_secs(30),
    };
    (Machine::new(settings, false, max_in_flight, now), now)
}

fn claimed(tenant: Option<&str>, queue: &str) -> Box<Claimed> {
    let new = NewTicket {
        tenant: tenant.map(Arc::from),
        ..NewTicket::for_test(QueueName::parse_scoped(queue).expect("a queue name"))
    };
    let ticket = Ticket::create(new.id, new, SystemTime::now());
    Box::new(Claimed {
        ticket: Arc::new(ticket),
        lease: Lease {
            lease_id: LeaseId::new(),
            session_id: SessionId::new(),
            worker_name: "w".into(),
            leased_at: SystemTime::now(),
            attempt_deadline: None,
        },
    })
}

fn success(ticket_id: TicketId, lease_id: LeaseId) -> FromWorker {
    FromWorker::Result(Report::Lease {
        ticket_id,
        lease_id,
        body: Ok(Outcome::Success(Default::default())),
    })
}

/// The machine's effects so far, as short names with the ack's verdict.
fn effects(machine: &mut Machine) -> Vec<String> {
    machine
        .effects()
        .map(|effect| match effect {
            Effect::Send(ToWorker::Ack { ack, .. }) => match ack {
                Ack::Refused(error) => format!("ack refused {:?}", error.code()),
                Ack::ProgressRefused(error) => format!("ack progress refused {:?}", error.code()),
                Ack::Recorded { state } => format!("ack recorded {state}"),
                Ack::Duplicate => "ack duplicate".into(),
            },
            Effect::Send(ToWorker::Task { queue, .. }) => format!("task {queue}"),
            Effect::Send(ToWorker::Ping { nonce }) => format!("ping {nonce}"),
            Effect::Send(ToWorker::Drain { .. }) => "drain".into(),
            Effect::Send(ToWorker::Cancel(_)) => "cancel".into(),
            Effect::Send(ToWorker::Welcome { .. }) => "welcome".into(),
            Effect::Progress(_) => "progress".into(),
            Effect::Complete {
                held, was_revoked, ..
            } => {
                format!("complete held={held} revoked={was_revoked}")
            }
            Effect::Release { .. } => "release".into(),
            Effect::Renew => "renew".into(),
            Effect::Detach => "detach".into(),
            Effect::CreditReturned => "credit".into(),
        })
        .collect()
}

fn recorded(ticket_id: TicketId, lease_id: LeaseId) -> Recorded {
    let mut ticket = claimed(None, "q").ticket.as_ref().clone();
    ticket.state = crate::domain::TicketState::Succeeded;
    Recorded::Result {
        ticket_id,
        lease_id,
        held: true,
        was_revoked: false,
        outcome: Box::new(Ok(Completion::Recorded(ticket))),
    }
}

#[test]
fn a_result_is_recorded_then_acknowledged_and_its_credit_returned() {
    let (mut m, now) = machine(1);
    let task = claimed(None, "q");
    let (ticket_id, lease_id) = (task.ticket.id, task.lease.lease_id);
    m.on_deliver(task);
    assert_eq!(effects(&mut m), ["task q"]);
    m.on_message(now, success(ticket_id, lease_id)).unwrap();
    assert_eq!(effects(&mut m), ["complete held=true revoked=false"]);
    assert!(m.recording());
    m.on_recorded(recorded(ticket_id, lease_id));
    assert_eq!(effects(&mut m), ["credit", "ack recorded succeeded"]);
    assert!(!m.recording());

    // A resend of that result still reaches the engine (whose fencing
    // answers it), but holds no credit.
    m.on_message(now, success(ticket_id, lease_id)).unwrap();
    assert_eq!(effects(&mut m), ["complete held=false revoked=false"]);
}

#[test]
fn a_result_on_a_lease_never_held_is_refused_without_reaching_the_engine() {
    let (mut m, now) = machine(1);
    m.on_message(now, success(TicketId::new(), LeaseId::new()))
        .unwrap();
    assert_eq!(effects(&mut m), ["ack refused FailedPrecondition"]);
    assert!(!m.recording());
}

#[test]
fn a_result_naming_another_ticket_leaves_the_lease_held() {
    let (mut m, now) = machine(1);
    let task = claimed(None, "q");
    let (ticket_id, lease_id) = (task.ticket.id, task.lease.lease_id);
    m.on_deliver(task);
    effects(&mut m);
    m.on_message(now, success(TicketId::new(), lease_id))
        .unwrap();
    assert_eq!(effects(&mut m), ["ack refused InvalidArgument"]);
    assert_eq!(m.take_leases().get(&lease_id), Some(&ticket_id));
}

#[test]
fn a_result_without_an_outcome_is_refused_and_the_lease_kept() {
    let (mut m, now) = machine(1);
    let task = claimed(None, "q");
    let (ticket_id, lease_id) = (task.ticket.id, task.lease.lease_id);
    m.on_deliver(task);
    effects(&mut m);
    let empty = FromWorker::Result(Report::Lease {
        ticket_id,
        lease_id,
        body: Err(GatewayError::invalid("result.outcome", "is empty")),
    });
    m.on_message(now, empty).unwrap();
    assert_eq!(effects(&mut m), ["ack refused InvalidArgument"]);
    // The worker can still answer it.
    m.on_message(now, success(ticket_id, lease_id)).unwrap();
    assert_eq!(effects(&mut m), ["complete held=true revoked=false"]);
}

#[test]
fn only_an_answer_to_one_of_the_two_latest_pings_proves_the_worker_alive() {
    let (mut m, start) = machine(1);
    assert_eq!(m.liveness_deadline(), start + HEARTBEAT * 2);
    for _ in 0..3 {
        m.on_ping_due();
    }
    assert_eq!(effects(&mut m), ["ping 1", "ping 2", "ping 3"]);
    let later = start + HEARTBEAT;
    for stale in [0, 1, 4] {
        m.on_message(later, FromWorker::Heartbeat { nonce: stale })
            .unwrap();
        assert!(effects(&mut m).is_empty(), "nonce {stale}");
        assert_eq!(m.liveness_deadline(), start + HEARTBEAT * 2);
    }
    m.on_message(later, FromWorker::Heartbeat { nonce: 2 })
        .unwrap();
    assert_eq!(effects(&mut m), ["renew"]);
    assert_eq!(m.liveness_deadline(), later + HEARTBEAT * 2);
}

#[test]
fn progress_on_a_held_lease_proves_the_worker_alive_at_most_twice_an_interval() {
    let (mut m, start) = machine(1);
    let task = claimed(None, "q");
    let (ticket_id, lease_id) = (task.ticket.id, task.lease.lease_id);
    m.on_deliver(task);
    effects(&mut m);
    let progress = || {
        FromWorker::Progress(Report::Lease {
            ticket_id,
            lease_id,
            body: Ok(ProgressUpdate {
                progress: None,
                output: None,
            }),
        })
    };
    m.on_message(start + HEARTBEAT / 4, progress()).unwrap();
    assert_eq!(effects(&mut m), ["progress"]);
    assert_eq!(m.liveness_deadline(), start + HEARTBEAT * 2);
    m.on_message(start + HEARTBEAT / 2, progress()).unwrap();
    assert_eq!(effects(&mut m), ["renew", "progress"]);
    assert_eq!(m.liveness_deadline(), start + HEARTBEAT / 2 + HEARTBEAT * 2);

    // Progress on a lease not held is dropped and proves nothing.
    let stranger = FromWorker::Progress(Report::Lease {
        ticket_id: TicketId::new(),
        lease_id: LeaseId::new(),
        body: Ok(ProgressUpdate {
            progress: None,
            output: None,
        }),
    });
    m.on_message(start + HEARTBEAT * 2, stranger).unwrap();
    assert!(effects(&mut m).is_empty());
}

#[test]
fn a_refused_progress_report_is_acknowledged_and_the_session_goes_on() {
    let (mut m, now) = machine(1);
    let task = claimed(None, "q");
    let (ticket_id, lease_id) = (task.ticket.id, task.lease.lease_id);
    m.on_deliver(task);
    effects(&mut m);
    let too_large = FromWorker::Progress(Report::Lease {
        ticket_id,
        lease_id,
        body: Err(GatewayError::TooLarge {
            field: "progress.output".into(),
            reason: "is too large".into(),
        }),
    });
    m.on_message(now, too_large).unwrap();
    assert_eq!(effects(&mut m), ["ack progress refused ResourceExhausted"]);
    let bad_ids = FromWorker::Progress(Report::BadIds {
        ticket_id: "x".into(),
        lease_id: "y".into(),
        error: GatewayError::invalid("progress.ticket_id", "not a UUID"),
    });
    m.on_message(now, bad_ids).unwrap();
    assert_eq!(effects(&mut m), ["ack progress refused InvalidArgument"]);
}

#[test]
fn a_drain_detaches_once_and_tasks_claimed_meanwhile_go_back() {
    let (mut m, now) = machine(2);
    let held = claimed(None, "q");
    let (ticket_id, lease_id) = (held.ticket.id, held.lease.lease_id);
    m.on_deliver(held);
    effects(&mut m);
    m.on_message(now, FromWorker::Drain).unwrap();
    assert_eq!(effects(&mut m), ["detach", "drain"]);
    m.on_message(now, FromWorker::Drain).unwrap();
    assert!(effects(&mut m).is_empty());
    assert!(!m.attached());

    m.on_deliver(claimed(None, "q"));
    assert_eq!(effects(&mut m), ["release"]);

    // A worker's own drain does not end the session; the gateway's does,
    // once every lease is answered and recorded.
    m.on_gateway_drain();
    assert_eq!(effects(&mut m), ["drain"]);
    assert!(!m.drained());
    m.on_message(now, success(ticket_id, lease_id)).unwrap();
    effects(&mut m);
    assert!(!m.drained(), "the result is not recorded yet");
    m.on_recorded(recorded(ticket_id, lease_id));
    assert!(m.drained());
}

#[test]
fn a_cancel_reaches_the_worker_only_for_a_lease_it_holds() {
    let (mut m, now) = machine(1);
    let task = claimed(None, "q");
    let (ticket_id, lease_id) = (task.ticket.id, task.lease.lease_id);
    m.on_deliver(task);
    effects(&mut m);
    let revocation = |lease_id| Revocation {
        session_id: SessionId::new(),
        ticket_id,
        lease_id,
        reason: RevokeReason::Cancelled,
        message: "cancelled".into(),
    };
    m.on_revoke(revocation(LeaseId::new()));
    assert!(effects(&mut m).is_empty());
    m.on_revoke(revocation(lease_id));
    assert_eq!(effects(&mut m), ["cancel"]);
    m.on_message(now, success(ticket_id, lease_id)).unwrap();
    assert_eq!(effects(&mut m), ["complete held=true revoked=true"]);
}

#[test]
fn a_tenants_worker_sees_its_queues_by_its_own_names() {
    let (mut m, _) = machine(1);
    m.on_deliver(claimed(Some("acme"), "acme/q"));
    assert_eq!(effects(&mut m), ["task q"]);
}

#[test]
fn protocol_errors_end_the_session() {
    let (mut m, now) = machine(1);
    for message in [
        FromWorker::Empty,
        FromWorker::Hello(Err(GatewayError::ShuttingDown)),
    ] {
        match m.on_message(now, message) {
            Err(End::Error(GatewayError::Protocol(_))) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_fast_reporter_is_paused_while_its_reports_wait_for_the_store() {
    let (mut m, now) = machine(1);
    let limit = m.in_flight_limit();
    let mut tasks = Vec::new();
    for _ in 0..limit {
        let task = claimed(None, "q");
        tasks.push((task.ticket.id, task.lease.lease_id));
        m.on_deliver(task);
    }
    for (ticket_id, lease_id) in &tasks {
        assert!(m.reads_worker());
        m.on_message(now, success(*ticket_id, *lease_id)).unwrap();
    }
    assert!(!m.reads_worker());
    let (ticket_id, lease_id) = tasks[0];
    m.on_recorded(recorded(ticket_id, lease_id));
    assert!(m.reads_worker());
}

#[test]
fn answered_leases_are_bounded_oldest_first() {
    let mut answered = AnsweredLeases::default();
    let leases: Vec<LeaseId> = (0..5).map(|_| LeaseId::new()).collect();
    for lease in &leases {
        answered.insert(*lease, 3);
    }
    answered.insert(leases[4], 3);
    assert!(!answered.contains(leases[0]) && !answered.contains(leases[1]));
    assert!(leases[2..].iter().all(|l| answered.contains(*l)));
    assert_eq!(answered.order.len(), 3);
    assert_eq!(answered.set.len(), 3);
}
