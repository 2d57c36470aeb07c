//! `asyncgate.v1.Workers`: the worker-facing service. Each `Connect` stream
//! runs one `dispatch::session` task.

use std::pin::Pin;

use futures::{Stream, StreamExt};
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
        let inbound = request.into_inner().map(move |item| match item {
            Ok(message) => Ok(worker::from_pb(&edge_caller, message, max_payload_bytes)),
            Err(status) => Err(unreadable(status, limits)),
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
        let outbound =
            ReceiverStream::new(rx).map(|item| item.map(worker::to_pb).map_err(Status::from));
        Ok(Response::new(Box::pin(outbound)))
    }
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
