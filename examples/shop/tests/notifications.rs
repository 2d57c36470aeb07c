//! The notifications endpoint over real HTTP on a loopback port, with
//! requests signed here independently of the `standardwebhooks` crate
//! (HMAC-SHA256 over `{id}.{timestamp}.{body}`, base64): a correctly signed
//! notification is handled once, its retry (same `webhook-id`) acknowledged
//! without being handled again; a wrong secret, a changed body, a stale
//! timestamp or missing headers are refused with 401; a rotated-in secret
//! is accepted beside the old one; other methods and paths are refused.
//! The last test does it through the `shop-services` binary and reads
//! what it prints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use asyncgate_example_shop::notifications::{Endpoint, Notification};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const OLD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_SECRET: &str = "whsec_c2hvcC1leGFtcGxlLW5ldy1zZWNyZXQ=";
const OTHER_SECRET: &str = "whsec_b3RoZXItc2VjcmV0LW5vdC1naXZlbg==";

const BODY: &str =
    r#"{"id":"01a2-ticket","queue":"orders","state":"TICKET_STATE_SUCCEEDED","attempt":1}"#;

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mac = hmac_sha256::HMAC::mac(format!("{id}.{timestamp}.{body}").as_bytes(), key);
    format!("v1,{}", STANDARD.encode(mac))
}

fn now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since.as_secs()).expect("fits")
}

/// Posts `body` to /notifications with the given headers; returns the
/// status.
async fn post(
    addr: SocketAddr,
    method: Method,
    headers: &[(&str, &str)],
    body: &str,
) -> StatusCode {
    post_to(addr, "/notifications", method, headers, body).await
}

/// Sends `body` to `path` with the given headers; returns the status.
async fn post_to(
    addr: SocketAddr,
    path: &str,
    method: Method,
    headers: &[(&str, &str)],
    body: &str,
) -> StatusCode {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    // Ends when the request is answered and the sender dropped.
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let response = sender.send_request(request).await.expect("an answer");
    let status = response.status();
    response.into_body().collect().await.expect("body read");
    status
}

async fn start(secrets: &[&str]) -> (SocketAddr, mpsc::UnboundedReceiver<Notification>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let secrets: Vec<String> = secrets.iter().map(|s| (*s).to_owned()).collect();
    let endpoint = Endpoint::new(&secrets, move |n| {
        let _ = tx.send(n);
    })
    .expect("valid secrets");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    // Runs until the test's runtime ends.
    tokio::spawn(Arc::new(endpoint).serve(listener));
    (addr, rx)
}

#[tokio::test]
async fn a_signed_notification_is_handled_once_and_a_bad_signature_is_refused() {
    let (addr, mut notifications) = start(&[OLD_SECRET]).await;
    let ts = now();
    let ts_text = ts.to_string();
    let good = sign(OLD_SECRET, "msg_1", ts, BODY);
    let headers = |id: &'static str, signature: &str| -> Vec<(&'static str, String)> {
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts_text.clone()),
            ("webhook-signature", signature.to_owned()),
        ]
    };
    let send = async |headers: Vec<(&'static str, String)>, body: &str| {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        post(addr, Method::POST, &headers, body).await
    };

    assert_eq!(send(headers("msg_1", &good), BODY).await, StatusCode::OK);
    // The callback runs before the answer is sent: nothing to wait for.
    let handled = notifications.try_recv().expect("handled");
    assert_eq!(
        handled,
        Notification {
            webhook_id: "msg_1".into(),
            ticket_id: "01a2-ticket".into(),
            queue: "orders".into(),
            state: "SUCCEEDED".into(),
            error: None,
        }
    );

    // A retry of the same delivery: acknowledged, not handled again.
    assert_eq!(send(headers("msg_1", &good), BODY).await, StatusCode::OK);
    assert!(notifications.try_recv().is_err(), "a duplicate was handled");

    // Signed with a secret the endpoint does not know.
    let wrong = sign(OTHER_SECRET, "msg_2", ts, BODY);
    assert_eq!(
        send(headers("msg_2", &wrong), BODY).await,
        StatusCode::UNAUTHORIZED
    );
    // The body changed after signing.
    let tampered = BODY.replace("SUCCEEDED", "FAILED");
    let signed = sign(OLD_SECRET, "msg_3", ts, BODY);
    assert_eq!(
        send(headers("msg_3", &signed), &tampered).await,
        StatusCode::UNAUTHORIZED
    );
    // A signature made for another webhook-id (a replay under a new id).
    assert_eq!(
        send(headers("msg_4", &good), BODY).await,
        StatusCode::UNAUTHORIZED
    );
    // A timestamp ten minutes old, correctly signed: a replay.
    let old = ts - 600;
    let stale = vec![
        ("webhook-id", "msg_5".to_owned()),
        ("webhook-timestamp", old.to_string()),
        ("webhook-signature", sign(OLD_SECRET, "msg_5", old, BODY)),
    ];
    assert_eq!(send(stale, BODY).await, StatusCode::UNAUTHORIZED);
    // No signature headers at all.
    assert_eq!(send(Vec::new(), BODY).await, StatusCode::UNAUTHORIZED);
    assert!(
        notifications.try_recv().is_err(),
        "a refused request was handled"
    );

    assert_eq!(
        post(addr, Method::GET, &[], "").await,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn a_rotated_secret_is_accepted_beside_the_old_one() {
    let (addr, mut notifications) = start(&[OLD_SECRET, NEW_SECRET]).await;
    let ts = now();
    let body = r#"{"type":"ticket.finished","data":{"id":"t-9","queue":"inventory","state":"TICKET_STATE_FAILED","error":{"code":14,"message":"gave up"}}}"#;
    for (id, secret) in [("msg_a", OLD_SECRET), ("msg_b", NEW_SECRET)] {
        // Several signatures in one header, as a sender rotating keys sends
        // them: one unknown, one valid.
        let signature = format!(
            "{} {}",
            sign(OTHER_SECRET, id, ts, body),
            sign(secret, id, ts, body)
        );
        let ts = ts.to_string();
        let headers = [
            ("webhook-id", id),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", signature.as_str()),
        ];
        assert_eq!(
            post(addr, Method::POST, &headers, body).await,
            StatusCode::OK
        );
        let handled = notifications.try_recv().expect("handled");
        assert_eq!(handled.webhook_id, id);
        assert_eq!(handled.ticket_id, "t-9");
        assert_eq!(handled.state, "FAILED");
        assert_eq!(handled.error.as_deref(), Some("gave up"));
    }
}

/// `shop-services --webhook-secret` serves the endpoint and prints each new
/// notification once.
#[tokio::test]
async fn shop_services_serves_the_endpoint_and_prints_each_notification_once() {
    use tokio::io::AsyncBufReadExt as _;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop-services"))
        .args(["--catalog", "127.0.0.1:0", "--inventory", "127.0.0.1:0"])
        .args(["--orders", "127.0.0.1:0", "--notifications", "127.0.0.1:0"])
        .args(["--webhook-secret", NEW_SECRET])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("shop-services starts");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut next_line = async || {
        tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("shop-services prints")
            .expect("stdout readable")
            .expect("shop-services is running")
    };
    let addr: SocketAddr = loop {
        let line = next_line().await;
        if let Some(rest) = line.strip_prefix("notifications listening on http://") {
            let addr = rest.strip_suffix("/notifications").expect("the path");
            break addr.parse().expect("an address");
        }
    };
    let ts = now();
    let ts_text = ts.to_string();
    let signature = sign(NEW_SECRET, "msg_bin", ts, BODY);
    let headers = [
        ("webhook-id", "msg_bin"),
        ("webhook-timestamp", ts_text.as_str()),
        ("webhook-signature", signature.as_str()),
    ];
    for _ in 0..2 {
        assert_eq!(
            post(addr, Method::POST, &headers, BODY).await,
            StatusCode::OK
        );
    }
    let bad = [
        ("webhook-id", "msg_bad"),
        ("webhook-timestamp", ts_text.as_str()),
        ("webhook-signature", "v1,AAAA"),
    ];
    assert_eq!(
        post(addr, Method::POST, &bad, BODY).await,
        StatusCode::UNAUTHORIZED
    );
    // Printed in the order the requests were answered.
    assert_eq!(
        next_line().await,
        "notifications: ticket 01a2-ticket (orders) SUCCEEDED [webhook-id msg_bin]"
    );
    assert_eq!(
        next_line().await,
        "notifications: webhook-id msg_bin again, already handled"
    );
    assert_eq!(
        next_line().await,
        "notifications: refused a request: signature invalid"
    );
}
