//! The notifications endpoint: a small HTTP server (hyper 1) that receives
//! Asyncgate's completion callbacks, as any service receiving webhooks
//! would.
//!
//! Every request must carry a valid Standard Webhooks signature
//! (`webhook-id`, `webhook-timestamp` within 5 minutes of now,
//! `webhook-signature` = `v1,<base64 HMAC-SHA256(secret,
//! "{id}.{timestamp}.{body}")>`), checked by the `standardwebhooks` crate
//! against each configured secret (several, for rotation); anything else is
//! refused with 401 before the body is looked at. Deliveries are at least
//! once, so a `webhook-id` already handled is acknowledged (200) and not
//! handled again. The body is the finished ticket in the proto3 JSON
//! mapping, either at the top level or under `data` (the Standard Webhooks
//! envelope `{"type", "timestamp", "data"}`).

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use standardwebhooks::Webhook;
use tokio::net::TcpListener;

/// Where notifications are posted.
pub const PATH: &str = "/notifications";

/// The largest body accepted (a ticket with its result).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// How many webhook ids are remembered for deduplication (the oldest are
/// forgotten first).
const REMEMBERED_IDS: usize = 100_000;

/// One notification, verified and seen for the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The delivery's `webhook-id` (the same across retries).
    pub webhook_id: String,
    /// The ticket's id.
    pub ticket_id: String,
    /// The ticket's queue.
    pub queue: String,
    /// The ticket's state without its prefix: `SUCCEEDED`, `FAILED`, ...
    pub state: String,
    /// The ticket's error message, when it has one.
    pub error: Option<String>,
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ticket {} ({}) {}",
            self.ticket_id, self.queue, self.state
        )?;
        if let Some(error) = &self.error {
            write!(f, ": {error}")?;
        }
        write!(f, " [webhook-id {}]", self.webhook_id)
    }
}

/// The webhook ids handled, oldest first, bounded by [`REMEMBERED_IDS`].
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// Remembers `id`; false when it was already known.
    fn insert(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > REMEMBERED_IDS
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        true
    }
}

type Handler = dyn Fn(Notification) + Send + Sync;

/// The endpoint: its secrets, the ids seen, and what to do with each new
/// notification.
pub struct Endpoint {
    /// One verifier per secret; a request signed with any of them passes.
    webhooks: Vec<Webhook>,
    /// Deduplication by `webhook-id`; a std Mutex (no await while held).
    seen: Mutex<Seen>,
    /// Called once per new, verified notification.
    on_notification: Box<Handler>,
}

impl Endpoint {
    /// An endpoint accepting signatures made with any of `secrets`
    /// (`whsec_<base64>`), calling `on_notification` once per new
    /// notification.
    pub fn new(
        secrets: &[String],
        on_notification: impl Fn(Notification) + Send + Sync + 'static,
    ) -> Result<Self, String> {
        if secrets.is_empty() {
            return Err("give at least one webhook secret (whsec_<base64>)".into());
        }
        let webhooks = secrets
            .iter()
            .map(|secret| {
                Webhook::new(secret)
                    .map_err(|e| format!("a webhook secret is whsec_ followed by base64: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            webhooks,
            seen: Mutex::default(),
            on_notification: Box::new(on_notification),
        })
    }

    /// Serves HTTP/1.1 on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let endpoint = self.clone();
            // One task per connection; it ends when the peer closes it.
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let endpoint = endpoint.clone();
                    async move { Ok::<_, Infallible>(endpoint.handle(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    /// Answers one request: 404 off [`PATH`], 405 for a method other than
    /// POST, 401 for a bad signature, 200 for a new or an already handled
    /// notification.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() != PATH {
            return reply(
                StatusCode::NOT_FOUND,
                "notifications are posted to /notifications",
            );
        }
        if request.method() != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "POST notifications here");
        }
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
        };
        if let Err(error) = self.verify(&body, &parts.headers) {
            println!("notifications: refused a request: {error}");
            return reply(StatusCode::UNAUTHORIZED, &error);
        }
        // Present: verification needs it.
        let webhook_id = parts
            .headers
            .get(standardwebhooks::HEADER_WEBHOOK_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let notification = match parse(webhook_id, &body) {
            Ok(notification) => notification,
            Err(error) => return reply(StatusCode::BAD_REQUEST, &error),
        };
        let new = self
            .seen
            .lock()
            .expect("not poisoned")
            .insert(&notification.webhook_id);
        if new {
            (self.on_notification)(notification);
        } else {
            println!(
                "notifications: webhook-id {} again, already handled",
                notification.webhook_id
            );
        }
        reply(StatusCode::OK, "ok")
    }

    /// Ok when any secret verifies the request; else the first secret's
    /// reason (they all see the same headers).
    fn verify(&self, body: &[u8], headers: &hyper::HeaderMap) -> Result<(), String> {
        let mut reason = String::new();
        for webhook in &self.webhooks {
            match webhook.verify(body, headers) {
                Ok(()) => return Ok(()),
                Err(error) if reason.is_empty() => reason = error.to_string(),
                Err(_) => {}
            }
        }
        Err(reason)
    }
}

/// The notification a verified body holds.
fn parse(webhook_id: String, body: &[u8]) -> Result<Notification, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let ticket = match value.get("data") {
        Some(data) if data.is_object() => data,
        _ => &value,
    };
    let text = |key: &str| ticket.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let ticket_id = text("id").ok_or("the body holds no ticket id")?;
    let state = text("state").unwrap_or_else(|| "UNSPECIFIED".to_owned());
    Ok(Notification {
        webhook_id,
        ticket_id,
        queue: text("queue").unwrap_or_default(),
        state: state
            .strip_prefix("TICKET_STATE_")
            .unwrap_or(&state)
            .to_owned(),
        error: ticket
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(|m| m.as_str())
            .map(str::to_owned),
    })
}

fn reply(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_a_bare_ticket_and_an_enveloped_one() {
        let bare = br#"{"id":"t1","queue":"orders","state":"TICKET_STATE_FAILED","error":{"code":3,"message":"the cart is empty"}}"#;
        let n = parse("msg_1".into(), bare).unwrap();
        assert_eq!(
            (n.ticket_id.as_str(), n.queue.as_str(), n.state.as_str()),
            ("t1", "orders", "FAILED")
        );
        assert_eq!(n.error.as_deref(), Some("the cart is empty"));
        let enveloped =
            br#"{"type":"ticket.finished","data":{"id":"t2","state":"TICKET_STATE_SUCCEEDED"}}"#;
        let n = parse("msg_2".into(), enveloped).unwrap();
        assert_eq!(
            (n.ticket_id.as_str(), n.state.as_str()),
            ("t2", "SUCCEEDED")
        );
        assert!(parse("msg_3".into(), b"{}").is_err());
        assert!(parse("msg_4".into(), b"not json").is_err());
    }

    #[test]
    fn seen_forgets_the_oldest_ids_past_its_bound() {
        let mut seen = Seen::default();
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"));
        for i in 0..REMEMBERED_IDS {
            seen.insert(&i.to_string());
        }
        assert_eq!(seen.ids.len(), REMEMBERED_IDS);
        assert!(seen.insert("a"), "the oldest id was forgotten");
    }
}
