//! What a worker's code sees: the [`Handler`] trait (and [`handler_fn`] for
//! closures), the [`TaskContext`] of one attempt, and [`TaskError`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{convert, payload, pb};
use asyncgate_proto::trace_context::TRACEPARENT;
pub use asyncgate_proto::trace_context::TraceParent;

/// The sender of the current connection's request stream, `None` while
/// disconnected. Every message of a task goes through it, so progress and
/// the result of one lease stay in order.
pub(crate) type Link = watch::Receiver<Option<mpsc::Sender<pb::WorkerMessage>>>;

/// Runs tasks. One value serves every task of a worker, concurrently (up to
/// `max_in_flight` at once), hence `&self` and `Send + Sync`.
///
/// Return `Ok(payload)` for a result and `Err(TaskError)` for a failure; a
/// panic is reported as a retryable `INTERNAL` failure. After a cancellation
/// ([`TaskContext::cancelled`]) the return value is still sent, and the
/// gateway discards it.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt of one ticket.
    async fn handle(&self, task: TaskContext) -> Result<pb::Payload, TaskError>;
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for Arc<H> {
    async fn handle(&self, task: TaskContext) -> Result<pb::Payload, TaskError> {
        (**self).handle(task).await
    }
}

/// A [`Handler`] made from an async closure; see [`handler_fn`].
#[derive(Clone)]
pub struct HandlerFn<F> {
    f: F,
}

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerFn").finish_non_exhaustive()
    }
}

/// Adapts `Fn(TaskContext) -> impl Future<Output = Result<Payload, TaskError>>`
/// into a [`Handler`], so small workers need no struct and no `async_trait`:
///
/// ```no_run
/// use asyncgate_client::worker::{handler_fn, TaskContext, TaskError};
/// use asyncgate_client::payload;
///
/// let upper = handler_fn(|task: TaskContext| async move {
///     let text = task.json().and_then(|v| v.as_str().map(str::to_uppercase));
///     text.map(|t| payload::json(t.into()))
///         .ok_or_else(|| TaskError::fatal("expected a JSON string"))
/// });
/// ```
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<pb::Payload, TaskError>> + Send + 'static,
{
    HandlerFn { f }
}

#[async_trait]
impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<pb::Payload, TaskError>> + Send + 'static,
{
    async fn handle(&self, task: TaskContext) -> Result<pb::Payload, TaskError> {
        (self.f)(task).await
    }
}

/// A failed attempt, as the worker reports it.
///
/// `retryable` is the worker's opinion: the gateway retries only while the
/// ticket has attempts left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// A gRPC code for the failure; `OK` is sent as `UNKNOWN`.
    pub code: tonic::Code,
    /// For people; stored in the ticket's error.
    pub message: String,
    /// Whether a new attempt may succeed.
    pub retryable: bool,
}

impl TaskError {
    /// A failure with every field chosen.
    pub fn new(code: tonic::Code, message: impl Into<String>, retryable: bool) -> Self {
        TaskError {
            code,
            message: message.into(),
            retryable,
        }
    }

    /// A transient failure (code `UNKNOWN`): try again.
    pub fn retryable(message: impl Into<String>) -> Self {
        TaskError::new(tonic::Code::Unknown, message, true)
    }

    /// A failure that another attempt would repeat (code `UNKNOWN`): the
    /// ticket fails at once.
    pub fn fatal(message: impl Into<String>) -> Self {
        TaskError::new(tonic::Code::Unknown, message, false)
    }

    /// The same failure with a more precise code.
    #[must_use]
    pub fn with_code(mut self, code: tonic::Code) -> Self {
        self.code = code;
        self
    }

    pub(crate) fn into_failure(self) -> pb::TaskFailure {
        let code = match self.code {
            tonic::Code::Ok => tonic::Code::Unknown,
            code => code,
        };
        pb::TaskFailure {
            code: code as i32,
            message: self.message,
            retryable: self.retryable,
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.retryable { "retryable" } else { "fatal" };
        write!(f, "{:?} ({kind}): {}", self.code, self.message)
    }
}

impl std::error::Error for TaskError {}

/// Cancellation of one lease: the token plus why, filled in by the
/// connection loop when the gateway's `Cancel` arrives.
#[derive(Debug)]
pub(crate) struct CancelSignal {
    token: CancellationToken,
    reason: OnceLock<(pb::CancelReason, String)>,
}

impl CancelSignal {
    /// A signal that also fires when `parent` (the worker's hard stop) does.
    pub(crate) fn child_of(parent: &CancellationToken) -> Self {
        CancelSignal {
            token: parent.child_token(),
            reason: OnceLock::new(),
        }
    }

    /// The gateway cancelled this lease.
    pub(crate) fn cancel(&self, reason: pb::CancelReason, message: String) {
        // A second Cancel keeps the first reason.
        let _ = self.reason.set((reason, message));
        self.token.cancel();
    }
}

/// One attempt of one ticket, handed to [`Handler::handle`].
///
/// Cheap to clone (an `Arc`), so it can be moved into helper tasks that
/// report progress or watch for cancellation.
#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<TaskInner>,
}

struct TaskInner {
    ticket_id: String,
    lease_id: String,
    queue: String,
    attempt: u32,
    max_attempts: u32,
    payload: pb::Payload,
    metadata: HashMap<String, String>,
    trace: Option<TraceParent>,
    span_id: u64,
    deadline: Option<SystemTime>,
    cancel: Arc<CancelSignal>,
    link: Link,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("ticket_id", &self.inner.ticket_id)
            .field("lease_id", &self.inner.lease_id)
            .field("queue", &self.inner.queue)
            .field("attempt", &self.inner.attempt)
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    pub(crate) fn new(task: pb::Task, cancel: Arc<CancelSignal>, link: Link, span_id: u64) -> Self {
        TaskContext {
            inner: Arc::new(TaskInner {
                deadline: task
                    .deadline
                    .as_ref()
                    .map(convert::timestamp_to_system_time),
                ticket_id: task.ticket_id,
                lease_id: task.lease_id,
                queue: task.queue,
                attempt: task.attempt,
                max_attempts: task.max_attempts,
                payload: task.payload.unwrap_or_default(),
                trace: task
                    .metadata
                    .get(TRACEPARENT)
                    .and_then(|value| TraceParent::parse(value)),
                span_id,
                metadata: task.metadata,
                cancel,
                link,
            }),
        }
    }

    /// The W3C trace context the ticket's submitter sent (its
    /// `traceparent`), if any: this attempt's span continues that trace.
    pub fn trace_parent(&self) -> Option<TraceParent> {
        self.inner.trace
    }

    /// This attempt's own span id within the caller's trace (random, fixed
    /// per attempt).
    pub fn span_id(&self) -> u64 {
        self.inner.span_id
    }

    /// The `traceparent` to send on calls this handler makes (sub-tickets,
    /// other services), so they join the same trace as children of this
    /// attempt; `None` when the ticket came without trace context.
    pub fn traceparent_for_calls(&self) -> Option<String> {
        self.inner
            .trace
            .map(|trace| trace.child(self.inner.span_id).to_string())
    }

    /// The ticket this attempt works on.
    pub fn ticket_id(&self) -> &str {
        &self.inner.ticket_id
    }

    /// Names this attempt; the gateway fences results with it.
    pub fn lease_id(&self) -> &str {
        &self.inner.lease_id
    }

    /// The queue the ticket was submitted to.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }

    /// 1 for the first attempt.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The ticket's attempt budget.
    pub fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    /// The request body (an empty payload when the caller sent none).
    pub fn payload(&self) -> &pb::Payload {
        &self.inner.payload
    }

    /// The request body if it is a JSON payload.
    pub fn json(&self) -> Option<serde_json::Value> {
        payload::to_json(&self.inner.payload)
    }

    /// The caller's metadata.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.inner.metadata
    }

    /// When this attempt times out (its attempt timeout or the ticket's
    /// deadline, whichever is first); `None` when neither is set. The
    /// gateway sends a Cancel then, so watching [`TaskContext::cancelled`]
    /// is enough; this is for handlers that pass deadlines downstream.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.inner.deadline
    }

    /// Reports progress (percent is capped at 100). Best effort: while the
    /// worker is disconnected the report is dropped (a later one replaces
    /// it anyway).
    pub async fn progress(&self, percent: u32, message: &str) {
        let percent = percent.min(100);
        let sender = self.inner.link.borrow().clone();
        if let Some(sender) = sender {
            let _ = sender
                .send(self.progress_message(percent, message.to_owned(), None))
                .await;
        }
    }

    /// Sends a partial-output chunk; watchers receive chunks in the order
    /// sent. While the worker is disconnected this waits for the next
    /// connection rather than lose the chunk (it returns early if the task is
    /// cancelled or the worker stops).
    ///
    /// The chunk travels alone (percent 0, no message): the gateway reads
    /// that as "output only" and leaves the reported progress as it was.
    pub async fn output(&self, chunk: pb::Payload) {
        let message = self.progress_message(0, String::new(), Some(chunk));
        let mut link = self.inner.link.clone();
        let sender = tokio::select! {
            sender = wait_for_link(&mut link) => sender,
            _ = self.cancelled() => None,
        };
        if let Some(sender) = sender {
            let _ = sender.send(message).await;
        }
    }

    /// Whether the gateway cancelled this attempt (or the worker was
    /// aborted). The handler decides what to do; its result is still sent.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.token.is_cancelled()
    }

    /// Resolves when the gateway cancels this attempt (the ticket was
    /// cancelled, expired or hit its attempt timeout, or the lease was lost)
    /// or the worker is aborted. Select on it next to the real work.
    pub async fn cancelled(&self) {
        self.inner.cancel.token.cancelled().await;
    }

    /// Why the gateway cancelled this attempt, once it did (`None` before, and
    /// after an abort of the worker).
    pub fn cancel_reason(&self) -> Option<(pb::CancelReason, &str)> {
        self.inner
            .cancel
            .reason
            .get()
            .map(|(reason, message)| (*reason, message.as_str()))
    }

    fn progress_message(
        &self,
        percent: u32,
        message: String,
        output: Option<pb::Payload>,
    ) -> pb::WorkerMessage {
        pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Progress(pb::TaskProgress {
                ticket_id: self.inner.ticket_id.clone(),
                lease_id: self.inner.lease_id.clone(),
                percent,
                message,
                output,
            })),
            ..Default::default()
        }
    }
}

/// The current connection's sender, waiting for one if disconnected; `None`
/// once the worker is gone.
async fn wait_for_link(link: &mut Link) -> Option<mpsc::Sender<pb::WorkerMessage>> {
    match link.wait_for(Option::is_some).await {
        Ok(sender) => sender.clone(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(link: Link) -> (TaskContext, Arc<CancelSignal>, CancellationToken) {
        let hard = CancellationToken::new();
        let signal = Arc::new(CancelSignal::child_of(&hard));
        let task = pb::Task {
            ticket_id: "t".into(),
            lease_id: "l".into(),
            queue: "q".into(),
            attempt: 1,
            max_attempts: 3,
            payload: Some(payload::json(serde_json::json!("hi"))),
            ..Default::default()
        };
        (
            TaskContext::new(task, signal.clone(), link, 1),
            signal,
            hard,
        )
    }

    fn progress_of(message: Option<pb::WorkerMessage>) -> Option<pb::TaskProgress> {
        match message?.kind? {
            pb::worker_message::Kind::Progress(p) => Some(p),
            _ => None,
        }
    }

    #[tokio::test]
    async fn progress_and_output_share_the_link_in_order() {
        let (tx, mut rx) = mpsc::channel(8);
        let (_link_tx, link) = watch::channel(Some(tx));
        let (ctx, _, _) = context(link);
        assert_eq!(ctx.json(), Some(serde_json::json!("hi")));
        ctx.progress(150, "half").await;
        ctx.output(payload::text("chunk")).await;
        let first = progress_of(rx.recv().await);
        assert_eq!(
            first.as_ref().map(|p| (p.percent, p.message.as_str())),
            Some((100, "half"))
        );
        let second = progress_of(rx.recv().await);
        // A chunk alone: no percent, no message.
        assert_eq!(
            second
                .as_ref()
                .map(|p| (p.percent, p.message.as_str(), p.output.is_some())),
            Some((0, "", true))
        );
    }

    #[tokio::test]
    async fn progress_is_dropped_while_disconnected_but_output_waits() {
        let (link_tx, link) = watch::channel(None);
        let (ctx, _, _) = context(link);
        ctx.progress(10, "lost").await;
        let waiting = tokio::spawn({
            let ctx = ctx.clone();
            async move { ctx.output(payload::text("kept")).await }
        });
        let (tx, mut rx) = mpsc::channel(8);
        link_tx.send_replace(Some(tx));
        let _ = waiting.await;
        let chunk = progress_of(rx.recv().await);
        assert!(chunk.is_some_and(|p| p.output.is_some()));
    }

    #[tokio::test]
    async fn cancel_carries_a_reason_and_abort_cancels_too() {
        let (_link_tx, link) = watch::channel(None);
        let (ctx, signal, _hard) = context(link.clone());
        assert!(!ctx.is_cancelled());
        signal.cancel(pb::CancelReason::Expired, "deadline".into());
        ctx.cancelled().await;
        assert_eq!(
            ctx.cancel_reason(),
            Some((pb::CancelReason::Expired, "deadline"))
        );

        let (ctx, _, hard) = context(link);
        hard.cancel();
        assert!(ctx.is_cancelled());
        assert_eq!(ctx.cancel_reason(), None);
        // An output on a cancelled, disconnected task returns at once.
        ctx.output(payload::text("x")).await;
    }

    #[test]
    fn task_error_constructors() {
        let e = TaskError::retryable("busy");
        assert!(e.retryable);
        assert_eq!(e.code, tonic::Code::Unknown);
        let f = TaskError::fatal("bad input").with_code(tonic::Code::InvalidArgument);
        assert!(!f.retryable);
        assert_eq!(
            f.clone().into_failure().code,
            tonic::Code::InvalidArgument as i32
        );
        assert_eq!(
            TaskError::new(tonic::Code::Ok, "x", false)
                .into_failure()
                .code,
            2
        );
        assert_eq!(f.to_string(), "InvalidArgument (fatal): bad input");
    }
}
