//! An HTTP endpoint called with a POST per attempt: the ticket's payload is
//! the body (a JSON payload as its JSON text), a 2xx answer's body and
//! content type are the result. One client per target, so connections are
//! reused; redirects are never followed (a target is one known endpoint,
//! and following one would send the ticket, and its headers, elsewhere).

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use asyncgate_proto::json::{JsonValue, MAX_JSON_DEPTH};
use asyncgate_proto::v1::payload::Kind;
use bytes::{Bytes, BytesMut};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::Code;

use super::worker::{failure, time_left};
use super::{RetryOn, TargetSetting};
use crate::domain::Outcome;
use crate::domain::ticket::Payload;
use crate::engine::Claimed;

/// Statuses retried unless `retry_on` says otherwise.
const RETRYABLE: [RangeInclusive<u16>; 3] = [408..=408, 429..=429, 500..=599];

/// How much of a failed answer's body goes into the ticket's error.
const ERROR_BODY_BYTES: usize = 512;

/// Headers the gateway sets itself (or that describe one hop): a ticket's
/// metadata under these names is not forwarded.
const NOT_FORWARDED: [&str; 11] = [
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "x-asyncgate-ticket-id",
    "x-asyncgate-attempt",
    "x-asyncgate-deadline",
];

/// One endpoint and the client (and its connection pool) that calls it.
#[derive(Clone)]
pub(crate) struct HttpTarget {
    client: reqwest::Client,
    url: reqwest::Url,
    /// `header_env` headers, marked sensitive, set after the ticket's
    /// metadata (so a ticket cannot override them).
    headers: Arc<HeaderMap>,
    /// The statuses retried.
    retry_on: Arc<[RangeInclusive<u16>]>,
}

impl HttpTarget {
    /// The client for `target`: rustls on ring trusting its `ca_file` (else
    /// the system roots), with its client identity; HTTP/1.1, no proxy, no
    /// redirects.
    /// With a `policy` (a target set through the admin API), names resolve
    /// only to addresses it allows.
    pub(crate) fn new(
        target: &TargetSetting,
        policy: Option<Arc<crate::callbacks::CallbackSettings>>,
    ) -> Result<Self, String> {
        let url = reqwest::Url::parse(&format!("{}{}", target.origin, target.path))
            .map_err(|e| format!("{}: {e}", target.url()))?;
        let options = &target.options;
        let mut headers = HeaderMap::new();
        for header in &options.headers {
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|_| format!("header_env {}: not a valid header name", header.name))?;
            let mut value = HeaderValue::from_str(&header.value.0)
                .map_err(|_| format!("header_env {}: not a valid header value", header.name))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let retry_on = match &options.retry_on {
            Some(RetryOn::Statuses(statuses)) => statuses.clone(),
            _ => RETRYABLE.to_vec(),
        };
        let mut client = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(target)?)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if let Some(policy) = policy {
            client = client.dns_resolver(Arc::new(crate::callbacks::CheckedResolver(policy)));
        }
        let client = client
            .build()
            .map_err(|e| format!("{}: {e}", target.url()))?;
        Ok(Self {
            client,
            url,
            headers: Arc::new(headers),
            retry_on: retry_on.into(),
        })
    }

    /// Calls the target for one attempt; the outcome to record.
    pub(crate) async fn attempt(&self, claimed: &Claimed, max_payload_bytes: usize) -> Outcome {
        let ticket = &claimed.ticket;
        let (body, content_type) = match request_body(&ticket.payload) {
            Ok(body) => body,
            Err(message) => return failure(Code::InvalidArgument as i32, message, false),
        };
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(forwarded(&ticket.metadata))
            .header("x-asyncgate-ticket-id", ticket.id.to_string())
            .header("x-asyncgate-attempt", ticket.attempt.to_string());
        if let Some(at) = claimed.lease.attempt_deadline {
            request = request.header("x-asyncgate-deadline", crate::time::rfc3339(at));
        }
        if let Some(left) = time_left(claimed) {
            request = request.timeout(left);
        }
        if !content_type.is_empty() {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let request = request.headers((*self.headers).clone()).body(body);
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => return transport_failure(&error),
        };
        let status = response.status();
        if status.is_success() {
            let content_type = header_text(response.headers(), CONTENT_TYPE);
            return match read_bounded(&mut response, max_payload_bytes).await {
                Ok(body) => Outcome::Success(result_payload(body, content_type)),
                Err(outcome) => outcome,
            };
        }
        self.refused(status, response).await
    }

    /// The outcome of a non-2xx answer: retried (after its `Retry-After`)
    /// when its status is in the retry set, else the ticket fails.
    async fn refused(&self, status: StatusCode, mut response: reqwest::Response) -> Outcome {
        let retryable = self
            .retry_on
            .iter()
            .any(|range| range.contains(&status.as_u16()));
        let retry_after = header_text(response.headers(), RETRY_AFTER);
        let message = if status.is_redirection() {
            let to = header_text(response.headers(), LOCATION);
            format!(
                "the target answered HTTP {status} (to {to:?}): redirects are not followed; give the target's final URL"
            )
        } else {
            let start = body_start(&mut response).await;
            format!("the target answered HTTP {status}: {start}")
        };
        let outcome = failure(i32::from(status.as_u16()), message, retryable);
        match (outcome, parse_retry_after(&retry_after, SystemTime::now())) {
            (Outcome::Failure(error), Some(after)) if retryable => {
                Outcome::RetryAfter(error, after)
            }
            (outcome, _) => outcome,
        }
    }
}

/// The TLS of a target: rustls on ring (as the gateway's own TLS), trusting
/// `ca_file` alone when given (a private CA), else the system roots.
fn tls_config(target: &TargetSetting) -> Result<rustls::ClientConfig, String> {
    let options = &target.options;
    let mut roots = rustls::RootCertStore::empty();
    match &options.ca_file {
        Some(ca) => {
            for cert in CertificateDer::pem_slice_iter(&ca.pem.0) {
                let cert = cert.map_err(|e| format!("ca_file={}: {e}", ca.path))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file={}: {e}", ca.path))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::debug!(%error, "a system root certificate was not loaded");
            }
            roots.add_parsable_certificates(native.certs);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_root_certificates(roots);
    let mut config = match &options.identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert.pem.0)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("cert_file={}: {e}", cert.path))?;
            let key_der = PrivateKeyDer::from_pem_slice(&key.pem.0)
                .map_err(|e| format!("key_file={}: {e}", key.path))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("cert_file={} with key_file={}: {e}", cert.path, key.path))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The body and its content type: a binary payload as it is (its content
/// type, else `application/octet-stream`), a JSON one as its JSON text
/// (`application/json`).
fn request_body(payload: &Payload) -> Result<(Bytes, String), String> {
    match &payload.kind {
        Some(Kind::Binary(bytes)) if payload.content_type.is_empty() => {
            Ok((bytes.clone(), "application/octet-stream".into()))
        }
        Some(Kind::Binary(bytes)) => Ok((bytes.clone(), payload.content_type.clone())),
        Some(Kind::Json(value)) => {
            let value = value
                .decode()
                .map_err(|e| format!("the JSON payload does not decode: {e}"))?;
            let text = serde_json::to_vec(&proto_to_json(&value))
                .map_err(|e| format!("the JSON payload does not print: {e}"))?;
            Ok((text.into(), "application/json".into()))
        }
        None => Ok((Bytes::new(), payload.content_type.clone())),
    }
}

/// The ticket's metadata as headers; entries that are not valid headers,
/// or that the gateway sets itself, are left out.
fn forwarded(metadata: &std::collections::HashMap<String, String>) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(metadata.len());
    for (key, value) in metadata {
        let key = key.to_ascii_lowercase();
        if NOT_FORWARDED.contains(&key.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    headers
}

/// A request that got no answer: connection errors and timeouts are
/// retried.
fn transport_failure(error: &reqwest::Error) -> Outcome {
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_timeout() {
        failure(
            Code::DeadlineExceeded as i32,
            format!("the target did not answer within the attempt's deadline: {detail}"),
            true,
        )
    } else {
        failure(
            Code::Unavailable as i32,
            format!("the target is unreachable: {detail}"),
            true,
        )
    }
}

/// A 2xx body, refused (not buffered further) once it passes `max` bytes.
async fn read_bounded(response: &mut reqwest::Response, max: usize) -> Result<Bytes, Outcome> {
    let too_large = |size: &str| {
        failure(
            Code::ResourceExhausted as i32,
            format!(
                "the target's answer is {size} bytes, above --max-payload-bytes ({max}); it was not kept"
            ),
            false,
        )
    };
    if let Some(length) = response.content_length().filter(|n| *n > max as u64) {
        return Err(too_large(&length.to_string()));
    }
    let mut body = BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() > max => {
                return Err(too_large(&format!("over {max}")));
            }
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return Ok(body.freeze()),
            Err(error) => return Err(transport_failure(&error)),
        }
    }
}

/// The first [`ERROR_BODY_BYTES`] of a failed answer, as text.
async fn body_start(response: &mut reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let cut = body.len() > ERROR_BODY_BYTES;
    body.truncate(ERROR_BODY_BYTES);
    let text = String::from_utf8_lossy(&body);
    let text = text.trim_end_matches('\u{FFFD}').trim();
    match (text.is_empty(), cut) {
        (true, _) => "(empty body)".into(),
        (false, true) => format!("{text}…"),
        (false, false) => text.to_owned(),
    }
}

fn header_text(headers: &HeaderMap, name: HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// `Retry-After` as seconds or an HTTP-date (RFC 9110); `None` when absent
/// or unreadable. A date in the past means no wait.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The result: a JSON payload when the content type says JSON and the body
/// parses (within the gateway's nesting limit), else the bytes as they are.
fn result_payload(body: Bytes, content_type: String) -> Payload {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        let value = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .map(|v| JsonValue::from_value(&json_to_proto(v)))
            .filter(|v| v.check(MAX_JSON_DEPTH).is_ok());
        if let Some(value) = value {
            return Payload {
                kind: Some(Kind::Json(value)),
                content_type,
            };
        }
    }
    Payload {
        kind: Some(Kind::Binary(body)),
        content_type,
    }
}

/// `google.protobuf.Value` → JSON; numbers that are whole and exact print
/// as integers, as a proto3 JSON printer shows them.
pub(super) fn proto_to_json(value: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind as V;
    match &value.kind {
        None | Some(V::NullValue(_)) => serde_json::Value::Null,
        Some(V::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(V::NumberValue(n)) if n.fract() == 0.0 && n.abs() <= 9_007_199_254_740_992.0 => {
            serde_json::Value::from(*n as i64)
        }
        Some(V::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(V::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(V::ListValue(list)) => list.values.iter().map(proto_to_json).collect(),
        Some(V::StructValue(st)) => serde_json::Value::Object(
            st.fields
                .iter()
                .map(|(k, v)| (k.clone(), proto_to_json(v)))
                .collect(),
        ),
    }
}

/// JSON → `google.protobuf.Value` (numbers as f64, as proto3 holds them).
pub(super) fn json_to_proto(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind as V;
    let kind = match value {
        serde_json::Value::Null => V::NullValue(0),
        serde_json::Value::Bool(b) => V::BoolValue(b),
        serde_json::Value::Number(n) => V::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => V::StringValue(s),
        serde_json::Value::Array(items) => V::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_proto).collect(),
        }),
        serde_json::Value::Object(map) => V::StructValue(prost_types::Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, json_to_proto(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn json_answers_become_json_results_and_others_stay_bytes() {
        let json = result_payload(
            Bytes::from_static(br#"{"n":5,"a":[true]}"#),
            "application/json; charset=utf-8".into(),
        );
        let Some(Kind::Json(value)) = &json.kind else {
            panic!("{json:?}")
        };
        assert_eq!(
            proto_to_json(&value.decode().unwrap()),
            serde_json::json!({"n": 5, "a": [true]})
        );
        assert_eq!(json.content_type, "application/json; charset=utf-8");
        let problem = result_payload(Bytes::from_static(b"{}"), "application/problem+json".into());
        assert!(matches!(problem.kind, Some(Kind::Json(_))));
        for (body, content_type) in [("not json", "application/json"), ("{}", "text/plain")] {
            let payload = result_payload(Bytes::from(body), content_type.into());
            assert_eq!(payload.kind, Some(Kind::Binary(Bytes::from(body))));
            assert_eq!(payload.content_type, content_type);
        }
        let deep = "[".repeat(MAX_JSON_DEPTH + 2) + &"]".repeat(MAX_JSON_DEPTH + 2);
        let payload = result_payload(Bytes::from(deep), "application/json".into());
        assert!(
            matches!(payload.kind, Some(Kind::Binary(_))),
            "too deep: kept as bytes"
        );
    }

    #[test]
    fn payloads_become_bodies_with_a_content_type() {
        let binary = |content_type: &str| Payload {
            kind: Some(Kind::Binary(Bytes::from_static(b"\x01\x02"))),
            content_type: content_type.into(),
        };
        assert_eq!(
            request_body(&binary("")).unwrap(),
            (
                Bytes::from_static(b"\x01\x02"),
                "application/octet-stream".into()
            )
        );
        assert_eq!(request_body(&binary("image/png")).unwrap().1, "image/png");
        let value = json_to_proto(serde_json::json!({"id": 7, "tags": ["a"], "x": 1.5}));
        let json = Payload {
            kind: Some(Kind::Json(JsonValue::from_value(&value))),
            content_type: String::new(),
        };
        let (body, content_type) = request_body(&json).unwrap();
        assert_eq!(content_type, "application/json");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"id": 7, "tags": ["a"], "x": 1.5})
        );
        assert_eq!(
            request_body(&Payload::default()).unwrap(),
            (Bytes::new(), String::new())
        );
    }

    #[test]
    fn metadata_is_forwarded_except_what_the_gateway_sets() {
        let metadata = [
            ("Team", "shop"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("content-length", "1"),
            ("x-asyncgate-attempt", "9"),
            ("bad name", "x"),
            ("bad-value", "line\nbreak"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let headers = forwarded(&metadata);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["team", "traceparent"]);
    }
}
