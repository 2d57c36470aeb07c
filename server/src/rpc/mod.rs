//! The gRPC layer: thin tonic services over the domain core (`gateway`,
//! `workers`, and `operations`, which serves the same tickets as
//! `google.longrunning` operations). Each handler validates its request
//! (`convert`), calls the engine, dispatcher or hub, and maps errors to a
//! status in one place (`crate::error`).

pub mod convert;
pub mod gateway;
pub mod operations;
pub mod watch;
pub mod workers;

use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use asyncgate_proto::v1 as pb;

use crate::auth::Caller;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::domain::{Ticket, TicketId, TicketState};
use crate::engine::{Engine, EngineError};
use crate::error::GatewayError;
use crate::hub::WatchHub;

/// What every service shares.
#[derive(Clone)]
pub struct Core {
    /// Ticket storage and transitions.
    pub engine: Arc<dyn Engine>,
    /// Live change fan-out.
    pub hub: Arc<WatchHub>,
    /// Worker matching.
    pub dispatcher: Dispatcher,
    /// Settings.
    pub config: Arc<Config>,
    /// Cancelled when shutdown begins: no new streams, workers drain.
    pub shutdown: CancellationToken,
    /// Cancelled once workers have drained (or the grace period is over):
    /// the remaining streams end, having delivered what the drain recorded.
    pub hard_stop: CancellationToken,
    /// Tracks the gateway's background tasks (timers, dispatch actors).
    pub tracker: TaskTracker,
    /// Tracks worker sessions, so shutdown knows when the drain is done.
    pub sessions: TaskTracker,
}

impl Core {
    /// Fails with NOT_FOUND — exactly as for an id that does not exist —
    /// unless `caller` may see ticket `id`.
    pub async fn visible(&self, caller: &Caller, id: TicketId) -> Result<Ticket, GatewayError> {
        let ticket = self.engine.get(id).await?;
        if caller.sees(ticket.tenant.as_deref()) {
            Ok(ticket)
        } else {
            Err(EngineError::NotFound(id).into())
        }
    }

    /// A ticket on the wire as `viewer` sees it (its queue by the name
    /// the viewer uses), with its waiting reason worked out.
    pub async fn present(&self, viewer: &Caller, ticket: &Ticket) -> pb::Ticket {
        self.present_with(viewer, ticket, None).await
    }

    /// Like [`Core::present`], with the tickets ahead already known (from
    /// the submit) rather than asked of the engine.
    pub async fn present_with(
        &self,
        viewer: &Caller,
        ticket: &Ticket,
        tickets_ahead: Option<u64>,
    ) -> pb::Ticket {
        let mut context = convert::WaitContext {
            scoped_names: viewer.names_tenant_queues(),
            ..Default::default()
        };
        if ticket.state == TicketState::Pending {
            context.workers = self.dispatcher.workers_for(&ticket.queue);
            if context.workers == 0 {
                // Workers may be connected to another replica.
                context.workers = self
                    .engine
                    .connected_workers(&ticket.queue)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(0);
            }
            if ticket.not_before.is_none_or(|t| t <= SystemTime::now()) {
                context.tickets_ahead = match tickets_ahead {
                    Some(known) => known,
                    None => self.engine.tickets_ahead(ticket).await.unwrap_or(0),
                };
            }
        }
        convert::ticket_to_pb(ticket, context)
    }
}
