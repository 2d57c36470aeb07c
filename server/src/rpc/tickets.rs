//! Tickets as a caller sees them, shared by `asyncgate.v1.Gateway` and
//! `google.longrunning.Operations`: the two services are two spellings of
//! the same get, list, cancel and long-poll, so tenant visibility, paging,
//! auditing and how a ticket is presented live here once.
//!
//! Presenting a page costs a bounded number of store round trips: the
//! worker count once per queue on the page and the places in line in one
//! batched engine call, not one of each per ticket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use asyncgate_proto::v1 as pb;

use super::Core;
use super::convert::{self, PageQuery};
use crate::auth::{self, Caller};
use crate::domain::{QueueName, Ticket, TicketId, TicketState};
use crate::engine::{EngineError, ListFilter};
use crate::engine::{QueueFlow, Submitted};
use crate::error::GatewayError;

/// One page, presented to its caller.
pub struct Page {
    /// The tickets, in the listing's order.
    pub tickets: Vec<pb::Ticket>,
    /// The token of the next page; empty after the last.
    pub next_page_token: String,
}

/// Who cancels, for the audit line.
pub struct CancelBy<'a> {
    /// The RPC, as the audit line names it.
    pub action: &'static str,
    /// The caller's address.
    pub peer: Option<SocketAddr>,
    /// The reason kept with the ticket.
    pub reason: &'a str,
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

    /// Long-poll of a ticket `caller` may see: at once if terminal or if
    /// `wait` is zero, else when it becomes terminal or `wait` ends.
    pub async fn wait_visible(
        &self,
        caller: &Caller,
        id: TicketId,
        wait: Duration,
    ) -> Result<Ticket, GatewayError> {
        self.visible(caller, id).await?;
        self.wait_for_terminal(caller, id, wait).await
    }

    /// Cancels a ticket `caller` may see, and writes the audit line.
    pub async fn cancel_visible(
        &self,
        caller: &Caller,
        id: TicketId,
        by: CancelBy<'_>,
    ) -> Result<Ticket, GatewayError> {
        self.visible(caller, id).await?;
        let ticket = self.engine.cancel(id, by.reason).await?;
        auth::audit_cancel(caller, by.action, by.peer, &id.to_string());
        Ok(ticket)
    }

    /// A page of the tickets `caller` may see.
    pub async fn list_visible(
        &self,
        caller: &Caller,
        query: PageQuery,
    ) -> Result<Page, GatewayError> {
        let page = self
            .engine
            .list(ListFilter {
                queue: query.queue,
                states: query.states,
                page_size: query.page_size,
                after: query.after,
                tenant: caller.tenant.clone(),
                metadata: query.metadata,
                created_after: query.created_after,
                created_before: query.created_before,
                newest_first: query.newest_first,
                callback_states: query.callback_states,
            })
            .await?;
        Ok(Page {
            tickets: self.present_page(caller, &page.tickets).await,
            next_page_token: page
                .next
                .map(|id| convert::page_token(id, query.newest_first))
                .unwrap_or_default(),
        })
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
        let mut context = self.context(viewer);
        let (flow, target);
        if ticket.state == TicketState::Pending {
            flow = self.engine.queue_flow(&ticket.queue).await.ok();
            context.flow = flow.as_ref();
            context.workers = self.workers(&ticket.queue).await;
            target = self.targets.running(&ticket.queue);
            context.target = target.as_deref();
            if is_due(ticket) {
                context.tickets_ahead = match tickets_ahead {
                    Some(known) => known,
                    None => self.engine.tickets_ahead(ticket).await.unwrap_or(0),
                };
            }
        }
        convert::ticket_to_pb(ticket, context)
    }

    /// [`Core::present`] for a page: the workers once per queue, the
    /// places in line in one engine call.
    pub async fn present_page(&self, viewer: &Caller, tickets: &[Ticket]) -> Vec<pb::Ticket> {
        let tickets: Vec<&Ticket> = tickets.iter().collect();
        self.present_known(viewer, &tickets, &vec![None; tickets.len()])
            .await
    }

    /// [`Core::present_page`] of the tickets of a batch submit, with the
    /// places in line the engine learnt with the submit.
    pub async fn present_submitted(
        &self,
        viewer: &Caller,
        submitted: &[&Submitted],
    ) -> Vec<pb::Ticket> {
        let tickets: Vec<&Ticket> = submitted.iter().map(|s| &s.ticket).collect();
        let known: Vec<Option<u64>> = submitted.iter().map(|s| s.tickets_ahead).collect();
        self.present_known(viewer, &tickets, &known).await
    }

    /// [`Core::present_page`], with the places in line already `known`
    /// (per ticket) asked of no one.
    async fn present_known(
        &self,
        viewer: &Caller,
        tickets: &[&Ticket],
        known: &[Option<u64>],
    ) -> Vec<pb::Ticket> {
        let mut workers: HashMap<&QueueName, usize> = HashMap::new();
        let mut flows: HashMap<&QueueName, Option<QueueFlow>> = HashMap::new();
        for ticket in tickets.iter().filter(|t| t.state == TicketState::Pending) {
            if !workers.contains_key(&ticket.queue) {
                workers.insert(&ticket.queue, self.workers(&ticket.queue).await);
                let flow = self.engine.queue_flow(&ticket.queue).await.ok();
                flows.insert(&ticket.queue, flow);
            }
        }
        let mut ahead: HashMap<TicketId, u64> = tickets
            .iter()
            .zip(known)
            .filter_map(|(t, known)| Some((t.id, (*known)?)))
            .collect();
        let due: Vec<&Ticket> = tickets
            .iter()
            .copied()
            .filter(|t| t.state == TicketState::Pending && is_due(t) && !ahead.contains_key(&t.id))
            .collect();
        // Presentation only: a failed count shows as none ahead.
        if let Ok(counts) = self.engine.tickets_ahead_of(&due).await {
            ahead.extend(due.iter().map(|t| t.id).zip(counts));
        }
        let targets = self.targets.known();
        tickets
            .iter()
            .map(|ticket| {
                let mut context = self.context(viewer);
                if ticket.state == TicketState::Pending {
                    context.workers = workers.get(&ticket.queue).copied().unwrap_or(0);
                    context.flow = flows.get(&ticket.queue).and_then(Option::as_ref);
                    context.target = targets
                        .get(&ticket.queue)
                        .and_then(|known| known.running())
                        .map(|setting| &**setting);
                    if is_due(ticket) {
                        context.tickets_ahead = ahead.get(&ticket.id).copied().unwrap_or(0);
                    }
                }
                convert::ticket_to_pb(ticket, context)
            })
            .collect()
    }

    fn context(&self, viewer: &Caller) -> convert::WaitContext<'static> {
        convert::WaitContext {
            scoped_names: viewer.names_tenant_queues(),
            hide_payloads: !viewer.payloads,
            ..Default::default()
        }
    }

    /// Workers serving `queue` here, else on any replica.
    pub(crate) async fn workers(&self, queue: &QueueName) -> usize {
        match self.dispatcher.workers_for(queue) {
            0 => self
                .engine
                .connected_workers(queue)
                .await
                .ok()
                .flatten()
                .unwrap_or(0),
            here => here,
        }
    }
}

/// Whether a PENDING ticket is in line now (not waiting out a backoff).
fn is_due(ticket: &Ticket) -> bool {
    ticket.not_before.is_none_or(|t| t <= SystemTime::now())
}
