//! `asyncgate.v1.Workers`: the worker-facing service. Each `Connect` stream
//! runs one `dispatch::session` task.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Stream, StreamExt};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use asyncgate_proto::v1 as pb;
use pb::workers_server::Workers;

use super::Core;
use super::convert::worker;
use crate::dispatch::session::{self, SessionSettings};
use crate::error::GatewayError;

/// The service implementation.
pub(crate) struct WorkersService {
    core: Core,
}

impl WorkersService {
    /// A service over `core`.
    pub(crate) fn new(core: Core) -> Self {
        Self { core }
    }
}

type DispatchStream = Pin<Box<dyn Stream<Item = Result<pb::DispatchMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Workers for WorkersService {
    type ConnectStream = DispatchStream;

    async fn connect(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        if self.core.shutdown.is_cancelled() {
            return Err(GatewayError::ShuttingDown.into());
        }
        let peer = crate::connection::remote_addr(request.extensions());
        let caller = crate::auth::caller(&request);
        let limits = crate::rescue::Limits {
            max_message_bytes: self.core.config.max_payload_bytes + 64 * 1024,
        };
        let max_payload_bytes = self.core.config.max_payload_bytes;
        let edge_caller = caller.clone();
        // Set by a Hello that asks for batches; read by the outbound side.
        let batches = Arc::new(AtomicBool::new(false));
        let wants_batches = batches.clone();
        let inbound = request.into_inner().flat_map(move |item| {
            let items = match item {
                Ok(message) => {
                    if let Some(pb::worker_message::Kind::Hello(hello)) = &message.kind {
                        wants_batches.store(hello.batches, Ordering::Relaxed);
                    }
                    match worker::from_pb_all(&edge_caller, message, max_payload_bytes) {
                        Ok(all) => all.into_iter().map(Ok).collect(),
                        Err(error) => vec![Err(Some(error))],
                    }
                }
                Err(status) => vec![Err(unreadable(status, limits))],
            };
            futures::stream::iter(items)
        });
        // Room for every task and ack a well-behaved worker can have
        // outstanding, plus pings; a worker that lets it fill is not reading.
        let (tx, rx) = mpsc::channel(2 * session::MAX_IN_FLIGHT_LIMIT as usize + 64);
        let settings = SessionSettings {
            heartbeat_interval: self.core.config.heartbeat_interval,
            lease_ttl: self.core.config.lease_ttl,
        };
        let dispatcher = self.core.dispatcher.clone();
        // The session's own tokens: polling them locks only their own
        // state, not the gateway-wide tokens every session shares.
        let shutdown = self.core.shutdown.child_token();
        let hard_stop = self.core.hard_stop.child_token();
        let span = tracing::info_span!("connect", peer = ?peer);
        self.core.sessions.spawn(
            session::run(
                dispatcher,
                settings,
                caller,
                peer,
                Box::pin(inbound),
                tx,
                shutdown,
                hard_stop,
            )
            .instrument(span),
        );
        // What is ready at once goes as one DispatchBatch to a worker that
        // reads them; nothing waits for a batch to fill.
        let outbound = ReceiverStream::new(rx)
            .ready_chunks(MAX_DISPATCH_BATCH)
            .flat_map(move |chunk| {
                futures::stream::iter(batched(chunk, batches.load(Ordering::Relaxed)))
            });
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// Messages one batch carries at most.
const MAX_DISPATCH_BATCH: usize = 256;
/// Bytes of tasks and acks batched into one message at most.
const MAX_DISPATCH_BATCH_BYTES: usize = 256 * 1024;

/// The messages that `chunk` (what was ready at once) goes out as. For a
/// worker that reads batches, each run of tasks and acks is one message
/// (tasks and acks are of different leases, so their order within a run
/// does not matter); anything else goes alone, in order, as does the error
/// that ends the stream.
fn batched(
    chunk: Vec<Result<session::ToWorker, GatewayError>>,
    batches: bool,
) -> Vec<Result<pb::DispatchMessage, Status>> {
    use pb::dispatch_message::Kind;
    let mut out = Vec::new();
    let mut run = pb::DispatchMessage::default();
    let mut run_bytes = 0;
    let flush = |run: &mut pb::DispatchMessage, out: &mut Vec<_>| {
        if run.task_batch.len() + run.ack_batch.len() > 0 {
            out.push(Ok(std::mem::take(run)));
        }
    };
    for item in chunk {
        let message = match item {
            Ok(message) => worker::to_pb(message),
            Err(error) => {
                flush(&mut run, &mut out);
                out.push(Err(Status::from(error)));
                continue;
            }
        };
        if !batches || !matches!(message.kind, Some(Kind::Task(_) | Kind::ResultAck(_))) {
            flush(&mut run, &mut out);
            run_bytes = 0;
            out.push(Ok(message));
            continue;
        }
        // A batch stays far below any decoder's limit; one larger task
        // goes alone.
        let size = message.encoded_len();
        if run_bytes + size > MAX_DISPATCH_BATCH_BYTES {
            flush(&mut run, &mut out);
            run_bytes = 0;
        }
        run_bytes += size;
        match message.kind {
            Some(Kind::Task(task)) => run.task_batch.push(task),
            Some(Kind::ResultAck(ack)) => run.ack_batch.push(ack),
            _ => unreachable!("only tasks and acks are batched"),
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Why a worker's stream could not be read: a message it sent that the
/// gateway cannot decode or that is too large (the session ends with that
/// status), or `None` when the stream itself broke (the worker left).
fn unreadable(status: Status, limits: crate::rescue::Limits) -> Option<GatewayError> {
    let status = crate::rescue::normalize(status, limits);
    let reason = status.message().to_owned();
    match status.code() {
        tonic::Code::InvalidArgument => Some(GatewayError::invalid("WorkerMessage", reason)),
        tonic::Code::ResourceExhausted => Some(GatewayError::TooLarge {
            field: "WorkerMessage".into(),
            reason,
        }),
        _ => None,
    }
}
