//! The in-process worker of a target queue: one dispatcher session, like a
//! connected worker's, fed over channels. It answers pings, runs each task
//! as a call to the target (the attempt's deadline as the call's
//! `grpc-timeout`, the ticket's metadata as request metadata), reports the
//! reply or the status, and drops a call whose lease is revoked (cancel,
//! expiry). Leases, fencing, retries and redelivery are the session's, so a
//! target queue's tickets behave as a worker's do; on Redis only the
//! replica holding an attempt's lease calls the target for it.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use asyncgate_proto::v1::payload::Kind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Code;
use tracing::Instrument;

use super::TargetSetting;
use super::grpc::GrpcTarget;
use crate::dispatch::Dispatcher;
use crate::dispatch::session::messages::{Ack, Report};
use crate::dispatch::session::{self, FromWorker, Hello, Inbound, SessionSettings, ToWorker};
use crate::domain::ticket::Payload;
use crate::domain::{Outcome, TicketError};

/// Upstream codes another attempt may fix.
const RETRYABLE: [Code; 4] = [
    Code::Unavailable,
    Code::ResourceExhausted,
    Code::DeadlineExceeded,
    Code::Aborted,
];

/// What a target worker needs from the gateway.
#[derive(Clone)]
pub(crate) struct Gateway {
    pub(crate) dispatcher: Dispatcher,
    pub(crate) settings: SessionSettings,
    pub(crate) max_payload_bytes: usize,
    pub(crate) shutdown: CancellationToken,
    pub(crate) hard_stop: CancellationToken,
}

/// Starts one in-process worker per target, tracked by `tasks`.
pub(crate) fn spawn(
    targets: &[TargetSetting],
    gateway: &Gateway,
    tasks: &TaskTracker,
) -> Result<(), String> {
    for target in targets {
        let grpc = GrpcTarget::new(&target.origin, &target.method)?;
        let span = tracing::info_span!("target", queue = %target.queue, method = %target.method);
        tasks.spawn(serve(target.clone(), grpc, gateway.clone(), tasks.clone()).instrument(span));
    }
    Ok(())
}

/// Runs sessions for `target` until shutdown; a session that ends (the
/// store failed, the session was lost) is followed by a new one.
async fn serve(target: TargetSetting, grpc: GrpcTarget, gateway: Gateway, tasks: TaskTracker) {
    let mut pause = Duration::from_millis(50);
    while !gateway.shutdown.is_cancelled() {
        session(&target, &grpc, &gateway, &tasks).await;
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = gateway.shutdown.cancelled() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    target: &TargetSetting,
    grpc: &GrpcTarget,
    gateway: &Gateway,
    tasks: &TaskTracker,
) {
    let capacity = 2 * target.max_concurrent as usize + 64;
    let (to_session, inbound) = mpsc::channel::<Inbound>(capacity);
    let (outbound, mut from_session) = mpsc::channel(capacity);
    let hello = Hello {
        queues: vec![target.queue.clone()],
        max_in_flight: target.max_concurrent,
        worker_name: format!("target {}{}", target.origin, target.method),
    };
    if to_session
        .send(Ok(FromWorker::Hello(Ok(hello))))
        .await
        .is_err()
    {
        return;
    }
    tasks.spawn(session::run(
        gateway.dispatcher.clone(),
        gateway.settings.clone(),
        crate::auth::Caller::anonymous(),
        None,
        ReceiverStream::new(inbound),
        outbound,
        gateway.shutdown.child_token(),
        gateway.hard_stop.child_token(),
    ));
    let mut calls: HashMap<crate::domain::LeaseId, CancellationToken> = HashMap::new();
    while let Some(message) = from_session.recv().await {
        match message {
            Ok(ToWorker::Ping { nonce }) => {
                let _ = to_session.send(Ok(FromWorker::Heartbeat { nonce })).await;
            }
            Ok(ToWorker::Task { claimed, .. }) => {
                let cancel = CancellationToken::new();
                calls.retain(|_, token| !token.is_cancelled());
                calls.insert(claimed.lease.lease_id, cancel.clone());
                let (grpc, to_session) = (grpc.clone(), to_session.clone());
                let max = gateway.max_payload_bytes;
                tasks.spawn(async move {
                    let (ticket_id, lease_id) = (claimed.ticket.id, claimed.lease.lease_id);
                    let outcome = tokio::select! {
                        outcome = call(&grpc, &claimed, max) => outcome,
                        _ = cancel.cancelled() => return,
                    };
                    cancel.cancel();
                    let report = Report::Lease {
                        ticket_id,
                        lease_id,
                        body: Ok(outcome),
                    };
                    let _ = to_session.send(Ok(FromWorker::Result(report))).await;
                });
            }
            Ok(ToWorker::Cancel(revocation)) => {
                if let Some(token) = calls.remove(&revocation.lease_id) {
                    token.cancel();
                }
            }
            Ok(ToWorker::Ack {
                ack: Ack::Refused(error) | Ack::ProgressRefused(error),
                ticket_id,
                ..
            }) => tracing::warn!(%ticket_id, %error, "the gateway refused a target call's report"),
            Ok(ToWorker::Welcome { .. } | ToWorker::Drain { .. } | ToWorker::Ack { .. }) => {}
            Err(error) => {
                tracing::warn!(%error, "the target's session ended");
                break;
            }
        }
    }
    for token in calls.values() {
        token.cancel();
    }
}

/// Calls the target for one attempt; the outcome to record.
async fn call(
    grpc: &GrpcTarget,
    claimed: &crate::engine::Claimed,
    max_payload_bytes: usize,
) -> Outcome {
    let ticket = &claimed.ticket;
    let message = match &ticket.payload.kind {
        Some(Kind::Binary(bytes)) => bytes.clone(),
        None => bytes::Bytes::new(),
        Some(_) => {
            return failure(
                Code::InvalidArgument,
                "a target queue calls a gRPC method with the request message's bytes: submit a binary payload (the encoded request), not JSON".into(),
                false,
            );
        }
    };
    let deadline = claimed.lease.attempt_deadline.map(|at| {
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::from_millis(1))
    });
    match grpc.call(message, &ticket.metadata, deadline).await {
        Ok(reply) if reply.len() > max_payload_bytes => failure(
            Code::ResourceExhausted,
            format!(
                "the target's reply is {} bytes, above --max-payload-bytes ({max_payload_bytes})",
                reply.len()
            ),
            false,
        ),
        Ok(reply) => Outcome::Success(Payload {
            kind: Some(Kind::Binary(reply)),
            content_type: "application/x-protobuf".into(),
        }),
        Err(status) => {
            let retryable = RETRYABLE.contains(&status.code());
            let message = format!(
                "the target answered {:?}: {}",
                status.code(),
                status.message()
            );
            match (
                failure(status.code(), message, retryable),
                pushback(&status),
            ) {
                (Outcome::Failure(error), Some(after)) if retryable => {
                    Outcome::RetryAfter(error, after)
                }
                (outcome, _) => outcome,
            }
        }
    }
}

/// The retry delay an upstream asked for in `grpc-retry-pushback-ms` (gRPC
/// A6); a value that is not a whole number of milliseconds is ignored.
fn pushback(status: &tonic::Status) -> Option<Duration> {
    let value = status
        .metadata()
        .get("grpc-retry-pushback-ms")?
        .to_str()
        .ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_millis)
}

fn failure(code: Code, message: String, retryable: bool) -> Outcome {
    Outcome::Failure(TicketError {
        code: code as i32,
        message,
        retryable,
    })
}
