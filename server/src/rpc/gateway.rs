//! `asyncgate.v1.Gateway`: the client-facing service.

use tonic::{Request, Response, Status};
use tracing::Instrument;

use asyncgate_proto::trace_context::{TRACEPARENT, TRACESTATE, TraceParent};
use asyncgate_proto::v1 as pb;
use pb::gateway_server::Gateway;

use super::tickets::CancelBy;
use super::watch::{EventSink, EventStream};
use super::{Core, convert, streams};
use crate::auth::{self, Caller};
use crate::engine::Submitted;
use crate::error::GatewayError;
use crate::hub::Subscription;

mod batch;

pub(crate) use batch::BATCH_ANSWER_HEADROOM;

/// Largest ListTickets page.
pub(crate) const MAX_PAGE_SIZE: u32 = 1000;
/// ListTickets page when page_size is 0.
pub(crate) const DEFAULT_PAGE_SIZE: u32 = 100;

/// A caller's W3C trace context (request headers), kept with its ticket.
#[derive(Clone)]
struct TraceContext {
    parent: TraceParent,
    state: Option<String>,
}

/// Longest `tracestate` kept (the W3C limit is 32 members of ~256 bytes;
/// real ones are short).
const MAX_TRACESTATE_BYTES: usize = 512;

impl TraceContext {
    /// The headers' trace context; an invalid `traceparent` is ignored, as
    /// the W3C spec asks.
    fn of(headers: &tonic::metadata::MetadataMap) -> Option<Self> {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let parent = TraceParent::parse(header(TRACEPARENT)?)?;
        let state = header(TRACESTATE)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_BYTES)
            .map(str::to_owned);
        Some(Self { parent, state })
    }

    /// Stores the context in the ticket's metadata, unless the request set
    /// those keys itself.
    fn keep_with(self, metadata: &mut std::collections::HashMap<String, String>) {
        metadata
            .entry(TRACEPARENT.to_owned())
            .or_insert_with(|| self.parent.to_string());
        if let Some(state) = self.state {
            metadata.entry(TRACESTATE.to_owned()).or_insert(state);
        }
    }
}

/// The service implementation.
#[derive(Clone)]
pub(crate) struct GatewayService {
    core: Core,
    limits: convert::SubmitLimits,
}

impl GatewayService {
    /// A service over `core`.
    pub(crate) fn new(core: Core) -> Self {
        let limits = convert::SubmitLimits {
            max_payload_bytes: core.config.max_payload_bytes,
            default_max_attempts: core.config.default_max_attempts,
            max_attempts_limit: core.config.max_attempts_limit,
            callbacks: std::sync::Arc::new(core.config.callbacks.clone()),
        };
        Self { core, limits }
    }

    /// Submits within `span`, which continues the caller's trace. With
    /// `watch`, the ticket is watched from before it exists: the
    /// subscription comes back unless an idempotency key matched an older
    /// ticket (which may have changed unseen).
    async fn submit_in(
        &self,
        span: tracing::Span,
        request: Request<pb::SubmitRequest>,
        watch: bool,
    ) -> Result<(Submitted, Option<Subscription>), GatewayError> {
        crate::telemetry::continue_trace(&span, request.metadata());
        let caller = auth::caller(&request);
        let trace = TraceContext::of(request.metadata());
        self.submit_inner(&caller, trace, request.into_inner(), watch)
            .instrument(span)
            .await
    }

    async fn submit_inner(
        &self,
        caller: &Caller,
        trace: Option<TraceContext>,
        request: pb::SubmitRequest,
        watch: bool,
    ) -> Result<(Submitted, Option<Subscription>), GatewayError> {
        let mut new = convert::new_ticket(caller, request, &self.limits)?;
        if let Some(trace) = trace {
            tracing::Span::current().record("trace_id", trace.parent.trace_id_hex());
            trace.keep_with(&mut new.metadata);
        }
        let subscription = watch.then(|| self.core.hub.subscribe(new.id));
        let submitted = self.core.engine.submit(new).await?;
        if submitted.created {
            tracing::debug!(ticket_id = %submitted.ticket.id, queue = %submitted.ticket.queue, "ticket submitted");
        }
        let subscription = subscription.filter(|_| submitted.created);
        Ok((submitted, subscription))
    }

    /// The response stream of a watch on ticket `id`: `watch` emits the
    /// events into the sink it is given, as the client reads them.
    fn watch_stream<F>(
        &self,
        viewer: Caller,
        id: crate::domain::TicketId,
        watch: impl FnOnce(Core, EventSink) -> F,
    ) -> EventStream
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let span = tracing::debug_span!("watch", ticket_id = %id);
        EventStream::new(viewer, |sink| {
            watch(self.core.clone(), sink).instrument(span)
        })
    }
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::Ticket>, Status> {
        let span = tracing::info_span!("submit", queue = %request.get_ref().queue, trace_id = tracing::field::Empty);
        let caller = auth::caller(&request);
        let (submitted, _) = self.submit_in(span, request, false).await?;
        let ticket = self
            .core
            .present_with(&caller, &submitted.ticket, submitted.tickets_ahead)
            .await;
        Ok(Response::new(ticket))
    }

    type ExecuteStream = EventStream;

    async fn execute(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        if self.core.shutdown.is_cancelled() {
            return Err(GatewayError::ShuttingDown.into());
        }
        let span = tracing::info_span!("execute", queue = %request.get_ref().queue, trace_id = tracing::field::Empty);
        let caller = auth::caller(&request);
        let (submitted, subscription) = self.submit_in(span, request, true).await?;
        Ok(Response::new(self.watch_stream(
            caller,
            submitted.ticket.id,
            |core, sink| async move {
                match subscription {
                    Some(subscription) => core.watch_submitted(submitted, subscription, sink).await,
                    None => core.watch_into(submitted.ticket.id, None, sink).await,
                }
            },
        )))
    }

    #[tracing::instrument(name = "get_ticket", skip_all, fields(ticket_id = %request.get_ref().id))]
    async fn get_ticket(
        &self,
        request: Request<pb::GetTicketRequest>,
    ) -> Result<Response<pb::Ticket>, Status> {
        let caller = auth::caller(&request);
        let request = request.into_inner();
        let id = convert::ticket_id(&request.id, "id")?;
        let wait = convert::duration(request.wait, "wait", std::time::Duration::MAX)?
            .unwrap_or_default()
            .min(self.core.config.max_wait);
        let ticket = self.core.wait_visible(&caller, id, wait).await?;
        Ok(Response::new(self.core.present(&caller, &ticket).await))
    }

    type WatchTicketStream = EventStream;

    #[tracing::instrument(name = "watch_ticket", skip_all, fields(ticket_id = %request.get_ref().id))]
    async fn watch_ticket(
        &self,
        request: Request<pb::WatchTicketRequest>,
    ) -> Result<Response<Self::WatchTicketStream>, Status> {
        let caller = auth::caller(&request);
        let request = request.into_inner();
        let id = convert::ticket_id(&request.id, "id")?;
        if self.core.shutdown.is_cancelled() {
            return Err(GatewayError::ShuttingDown.into());
        }
        // Fail fast with NOT_FOUND rather than as the stream's first item.
        self.core.visible(&caller, id).await?;
        let limit = self.core.config.max_watchers_per_ticket;
        if self.core.hub.watchers(id) >= limit {
            return Err(GatewayError::Exhausted(format!(
                "ticket {id} already has {limit} watchers, the limit; poll it with GetTicket and wait instead"
            ))
            .into());
        }
        let after_seq = request.after_seq;
        Ok(Response::new(self.watch_stream(
            caller,
            id,
            move |core, sink| async move { core.watch_into(id, after_seq, sink).await },
        )))
    }

    #[tracing::instrument(name = "cancel_ticket", skip_all, fields(ticket_id = %request.get_ref().id))]
    async fn cancel_ticket(
        &self,
        request: Request<pb::CancelTicketRequest>,
    ) -> Result<Response<pb::Ticket>, Status> {
        let caller = auth::caller(&request);
        let peer = crate::connection::remote_addr(request.extensions());
        let request = request.into_inner();
        let id = convert::ticket_id(&request.id, "id")?;
        if request.reason.len() > 1024 {
            return Err(GatewayError::invalid("reason", "is longer than 1024 bytes").into());
        }
        let by = CancelBy {
            action: "cancel_ticket",
            peer,
            reason: &request.reason,
        };
        let ticket = self.core.cancel_visible(&caller, id, by).await?;
        Ok(Response::new(self.core.present(&caller, &ticket).await))
    }

    type SubmitStreamStream = streams::SubmitResults;

    async fn submit_stream(
        &self,
        request: Request<tonic::Streaming<pb::SubmitRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        if self.core.shutdown.is_cancelled() {
            return Err(GatewayError::ShuttingDown.into());
        }
        let caller = auth::caller(&request);
        let trace = TraceContext::of(request.metadata());
        let span = tracing::info_span!("submit_stream", trace_id = tracing::field::Empty);
        crate::telemetry::continue_trace(&span, request.metadata());
        let service = self.clone();
        let submit: streams::SubmitOne = Box::new(move |item| {
            let (service, caller, trace) = (service.clone(), caller.clone(), trace.clone());
            let span = span.clone();
            Box::pin(async move {
                let (submitted, _) = service
                    .submit_inner(&caller, trace, item, false)
                    .instrument(span)
                    .await?;
                Ok(service
                    .core
                    .present_with(&caller, &submitted.ticket, submitted.tickets_ahead)
                    .await)
            })
        });
        Ok(Response::new(streams::submit_stream(
            &self.core,
            request.into_inner(),
            submit,
        )))
    }

    async fn submit_batch(
        &self,
        request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let items = request.get_ref().requests.len();
        let span = tracing::info_span!("submit_batch", items, trace_id = tracing::field::Empty);
        crate::telemetry::continue_trace(&span, request.metadata());
        let caller = auth::caller(&request);
        let trace = TraceContext::of(request.metadata());
        let response = self
            .submit_batch_inner(&caller, trace, request.into_inner().requests)
            .instrument(span)
            .await?;
        Ok(Response::new(response))
    }

    type WatchTicketsStream = streams::TicketsEvents;

    async fn watch_tickets(
        &self,
        request: Request<tonic::Streaming<pb::WatchTicketsRequest>>,
    ) -> Result<Response<Self::WatchTicketsStream>, Status> {
        if self.core.shutdown.is_cancelled() {
            return Err(GatewayError::ShuttingDown.into());
        }
        let caller = auth::caller(&request);
        Ok(Response::new(streams::watch_tickets(
            &self.core,
            caller,
            request.into_inner(),
        )))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = auth::caller(&request);
        Ok(Response::new(pb::WhoAmIResponse {
            key_name: caller.name.to_string(),
            role: caller.role.name().to_owned(),
            tenant: caller.tenant.as_deref().unwrap_or_default().to_owned(),
            methods: auth::allowed_methods(&caller),
            sees_payloads: caller.payloads,
        }))
    }

    #[tracing::instrument(name = "list_tickets", skip_all, fields(queue = %request.get_ref().queue))]
    async fn list_tickets(
        &self,
        request: Request<pb::ListTicketsRequest>,
    ) -> Result<Response<pb::ListTicketsResponse>, Status> {
        let caller = auth::caller(&request);
        let query = convert::list_tickets(&caller, request.into_inner())?;
        let page = self.core.list_visible(&caller, query).await?;
        Ok(Response::new(pb::ListTicketsResponse {
            tickets: page.tickets,
            next_page_token: page.next_page_token,
        }))
    }
}
