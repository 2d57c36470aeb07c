//! [`Submit`]: a builder for [`pb::SubmitRequest`], so callers write
//! `Submit::new("upper").json(json!("hi")).priority(5).build()` instead of a
//! struct literal full of `Option<prost_types::Duration>`.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::{convert, payload, pb};

/// Builds a [`pb::SubmitRequest`]. Every setter is optional except the queue;
/// unset fields keep the server's defaults (no deadline, server-chosen
/// `max_attempts`, priority 0).
///
/// `Submit` also converts into the request, so it can be handed straight to
/// [`Client::submit`](crate::Client::submit) or
/// [`Client::execute`](crate::Client::execute) without `.build()`.
#[derive(Debug, Clone)]
#[must_use = "a Submit does nothing until built and sent"]
pub struct Submit {
    request: pb::SubmitRequest,
}

impl Submit {
    /// A request for `queue`, with no payload yet.
    pub fn new(queue: impl Into<String>) -> Self {
        Submit {
            request: pb::SubmitRequest {
                queue: queue.into(),
                ..Default::default()
            },
        }
    }

    /// Sets the payload as is.
    pub fn payload(mut self, payload: pb::Payload) -> Self {
        self.request.payload = Some(payload);
        self
    }

    /// A JSON payload.
    pub fn json(self, value: serde_json::Value) -> Self {
        self.payload(payload::json(value))
    }

    /// A binary payload with an optional (may be empty) content type.
    pub fn binary(self, data: impl Into<Bytes>, content_type: &str) -> Self {
        self.payload(payload::binary(data, content_type))
    }

    /// A UTF-8 text payload (binary, `text/plain; charset=utf-8`).
    pub fn text(self, text: impl Into<String>) -> Self {
        self.payload(payload::text(text))
    }

    /// Higher runs first; FIFO within a priority (-1000 to 1000).
    pub fn priority(mut self, priority: i32) -> Self {
        self.request.priority = priority;
        self
    }

    /// A repeat of the key returns the original ticket, which also makes a
    /// broken `Execute` call safe to retry.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.request.idempotency_key = key.into();
        self
    }

    /// Adds one metadata entry (a later value for the same key wins).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.metadata.insert(key.into(), value.into());
        self
    }

    /// Continues this W3C trace (a `traceparent` value, e.g. from
    /// [`TaskContext::traceparent_for_calls`](crate::worker::TaskContext::traceparent_for_calls)):
    /// the worker that runs the ticket gets it with the task. The gateway
    /// also takes it from a `traceparent` request header.
    pub fn trace_parent(self, traceparent: impl Into<String>) -> Self {
        self.metadata(asyncgate_proto::trace_context::TRACEPARENT, traceparent)
    }

    /// The whole budget from submit to result; past it the ticket is EXPIRED.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.request.timeout = Some(convert::duration_to_proto(timeout));
        self
    }

    /// One attempt's run time; past it the attempt fails and may be retried.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.request.attempt_timeout = Some(convert::duration_to_proto(timeout));
        self
    }

    /// Attempts before the ticket is FAILED (0: the server's default).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.request.max_attempts = attempts;
        self
    }

    /// Runs the ticket no sooner than `delay` from now: it is stored (and
    /// answered) at once and waits PENDING until then. Replaces any
    /// [`Submit::not_before`].
    pub fn delay(mut self, delay: Duration) -> Self {
        self.request.not_before = None;
        self.request.delay = Some(convert::duration_to_proto(delay));
        self
    }

    /// Runs the ticket no sooner than `at` (a time already past runs it at
    /// once). Replaces any [`Submit::delay`].
    pub fn not_before(mut self, at: SystemTime) -> Self {
        self.request.delay = None;
        self.request.not_before = Some(prost_types::Timestamp::from(at));
        self
    }

    /// Delivers the terminal ticket to `url` when it ends: `https://…`
    /// (a signed POST), `http://…` where the gateway allows it, or
    /// `grpc(s)://HOST:PORT` (`Callbacks.TicketFinished`). The gateway
    /// refuses a destination off its `--callback-allow` list.
    pub fn callback(mut self, url: impl Into<String>) -> Self {
        self.request.callback = url.into();
        self
    }

    /// The finished request.
    pub fn build(self) -> pb::SubmitRequest {
        self.request
    }
}

impl From<Submit> for pb::SubmitRequest {
    fn from(submit: Submit) -> Self {
        submit.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_every_field() {
        let req = Submit::new("upper")
            .json(serde_json::json!("hi"))
            .priority(5)
            .idempotency_key("k")
            .timeout(Duration::from_secs(30))
            .attempt_timeout(Duration::from_millis(1500))
            .max_attempts(3)
            .metadata("a", "1")
            .metadata("b", "2")
            .build();
        assert_eq!(req.queue, "upper");
        assert_eq!(
            req.payload.as_ref().and_then(payload::to_json),
            Some(serde_json::json!("hi"))
        );
        assert_eq!(req.priority, 5);
        assert_eq!(req.idempotency_key, "k");
        assert_eq!(req.timeout.map(|d| d.seconds), Some(30));
        assert_eq!(
            req.attempt_timeout.map(|d| (d.seconds, d.nanos)),
            Some((1, 500_000_000))
        );
        assert_eq!(req.max_attempts, 3);
        assert_eq!(req.metadata.len(), 2);
    }

    #[test]
    fn delay_and_not_before_replace_each_other() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let req = Submit::new("q")
            .delay(Duration::from_secs(5))
            .not_before(at)
            .build();
        assert_eq!(
            (req.delay, req.not_before.map(|t| t.seconds)),
            (None, Some(2_000_000_000))
        );
        let req = Submit::new("q")
            .not_before(at)
            .delay(Duration::from_secs(5))
            .build();
        assert_eq!(
            (req.delay.map(|d| d.seconds), req.not_before),
            (Some(5), None)
        );
    }

    #[test]
    fn binary_payload_keeps_content_type() {
        let req: pb::SubmitRequest = Submit::new("q")
            .binary(Bytes::from_static(b"\x01"), "application/x-thing")
            .into();
        let payload = req.payload.unwrap_or_default();
        assert_eq!(payload.content_type, "application/x-thing");
        assert!(payload::as_binary(&payload).is_some());
    }
}
