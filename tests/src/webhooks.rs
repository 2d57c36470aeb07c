//! A webhook receiver for the callback tests: an HTTP server on an
//! ephemeral loopback port that checks each delivery's Standard Webhooks
//! signature with its own HMAC (ring, not the gateway's crate), answers
//! 401 to a bad one, 503 (or the status it is given) while told to fail,
//! 200 otherwise, and keeps every delivery it saw.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub webhook_id: String,
    pub timestamp: i64,
    /// The body, parsed as JSON (`Null` if it is not).
    pub body: serde_json::Value,
    /// Which of the receiver's secrets (by index) signed it.
    pub signed_by: Vec<usize>,
    /// What the receiver answered.
    pub status: u16,
    pub content_type: String,
}

struct State {
    keys: Vec<ring::hmac::Key>,
    failing: AtomicUsize,
    /// The status the failing answers carry.
    failure: std::sync::atomic::AtomicU16,
    deliveries: Mutex<Vec<Delivery>>,
    arrived: Notify,
}

/// See the module docs.
pub struct WebhookReceiver {
    addr: SocketAddr,
    state: Arc<State>,
}

impl WebhookReceiver {
    /// Starts a receiver that knows `secrets` (`whsec_<base64>`).
    pub async fn start(secrets: &[&str]) -> Self {
        let keys = secrets
            .iter()
            .map(|s| {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(s.trim_start_matches("whsec_"))
                    .expect("a base64 secret");
                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &raw)
            })
            .collect();
        let state = Arc::new(State {
            keys,
            failing: AtomicUsize::new(0),
            failure: std::sync::atomic::AtomicU16::new(503),
            deliveries: Mutex::new(Vec::new()),
            arrived: Notify::new(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |r| answer(state.clone(), r));
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next `n` deliveries with 503.
    pub fn fail_next(&self, n: usize) {
        self.answer_next(n, 503);
    }

    /// Answers the next `n` deliveries with `status` (e.g. 410 Gone).
    pub fn answer_next(&self, n: usize, status: u16) {
        self.state.failure.store(status, Ordering::SeqCst);
        self.state.failing.store(n, Ordering::SeqCst);
    }

    /// Every delivery so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().unwrap().clone()
    }

    /// Waits (up to 20 s) until `done` holds of the deliveries so far.
    pub async fn wait_until(&self, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let wait = async {
            loop {
                let arrived = self.state.arrived.notified();
                let seen = self.deliveries();
                if done(&seen) {
                    return seen;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .unwrap_or_else(|_| panic!("deliveries never matched; got {:#?}", self.deliveries()))
    }
}

async fn answer(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (webhook_id, timestamp, signatures) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let content_type = header("content-type");
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let signed = format!(
        "{webhook_id}.{timestamp}.{}",
        String::from_utf8_lossy(&body)
    );
    let signed_by: Vec<usize> = state
        .keys
        .iter()
        .enumerate()
        .filter(|(_, key)| {
            let expected = base64::engine::general_purpose::STANDARD
                .encode(ring::hmac::sign(key, signed.as_bytes()).as_ref());
            signatures
                .split(' ')
                .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
        })
        .map(|(i, _)| i)
        .collect();
    let status = if signed_by.is_empty() {
        StatusCode::UNAUTHORIZED
    } else if state
        .failing
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        StatusCode::from_u16(state.failure.load(Ordering::SeqCst))
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    } else {
        StatusCode::OK
    };
    state.deliveries.lock().unwrap().push(Delivery {
        webhook_id,
        timestamp: timestamp.parse().unwrap_or_default(),
        body: serde_json::from_slice(&body).unwrap_or_default(),
        signed_by,
        status: status.as_u16(),
        content_type,
    });
    state.arrived.notify_waiters();
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    Ok(response)
}
