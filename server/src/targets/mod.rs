//! Target queues: the gateway itself works a queue's tickets by calling an
//! existing unary gRPC method or HTTP endpoint with each ticket's payload
//! and recording the reply as its result, so a service with no worker code
//! sits behind tickets.
//!
//! # Layout
//! - `mod.rs`: a target as configured (`--target QUEUE=URL`), printed back
//!   as it parses; secrets (header values, key files) never printed.
//! - `setting.rs`: parsing a target's URL and its query options.
//! - `grpc.rs`: the raw-bytes unary call on a reused HTTP/2 channel.
//! - `transcode.rs`: JSON payloads for gRPC targets serving reflection.
//! - `http.rs`: the POST on a reused HTTP/1.1 client.
//! - `supervisor.rs`: which targets run here: the config's, and those set
//!   through the admin API (stored, read every second, checked against the
//!   destination allowlist), started and drained as they change.
//! - `worker.rs`: the in-process worker: a session of the dispatcher like a
//!   connected worker's (leases, heartbeats, fencing, cancellation and
//!   redelivery are the same), fed over channels instead of a stream.

mod grpc;
mod http;
mod setting;
mod supervisor;
mod transcode;
mod worker;

use std::fmt;
use std::ops::RangeInclusive;

pub use setting::{MAX_TARGET_LEN, parse_admin_target, parse_target};
pub(crate) use supervisor::{KnownTarget, Supervisor, Targets};
pub(crate) use worker::Gateway;

use crate::domain::QueueName;

/// Calls each target runs at once unless its URL says otherwise.
pub const DEFAULT_TARGET_CONCURRENCY: u32 = 64;

/// How a target is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A unary gRPC method (`grpc://`, `grpcs://`).
    Grpc,
    /// An HTTP POST (`http://`, `https://`).
    Http,
}

/// One target queue as configured:
/// `QUEUE=grpc://host:port/pkg.Service/Method` (or `grpcs://`, `http://`,
/// `https://host:port/path`) with optional `?option=value&…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSetting {
    /// The queue whose tickets the gateway works (as stored).
    pub queue: QueueName,
    /// gRPC or HTTP.
    pub protocol: Protocol,
    /// `http://host:port` or `https://host:port` (TLS).
    pub origin: String,
    /// gRPC: `/package.Service/Method`; HTTP: the request's path.
    pub path: String,
    /// The query options.
    pub options: TargetOptions,
}

/// A target's query options; each says why it exists in its doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetOptions {
    /// Calls at once (the session's `max_in_flight`).
    pub max_concurrent: u32,
    /// Calls started per second, paced evenly; `None`: unpaced. Tickets
    /// beyond it wait for their turn rather than fail.
    pub max_per_second: Option<u32>,
    /// Which upstream answers are retried, when not the default set.
    pub retry_on: Option<RetryOn>,
    /// Static headers (e.g. `authorization`) read from the environment at
    /// startup, so secrets stay out of config files and command lines.
    pub headers: Vec<StaticHeader>,
    /// A private CA to trust instead of the system roots.
    pub ca_file: Option<PemFile>,
    /// The client identity for mTLS: certificate chain and private key.
    pub identity: Option<(PemFile, PemFile)>,
}

impl Default for TargetOptions {
    fn default() -> Self {
        Self {
            max_concurrent: DEFAULT_TARGET_CONCURRENCY,
            max_per_second: None,
            retry_on: None,
            headers: Vec::new(),
            ca_file: None,
            identity: None,
        }
    }
}

/// Upstream answers that a new attempt may fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOn {
    /// gRPC status codes.
    Codes(Vec<tonic::Code>),
    /// HTTP statuses: one (`503`) or a class (`5xx`).
    Statuses(Vec<RangeInclusive<u16>>),
}

/// A value never printed: Debug and Display show `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(pub T);

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `header_env=NAME:ENVVAR`: header `name` with the value of `env` as it
/// was at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticHeader {
    /// The header's name, lowercase.
    pub name: String,
    /// The environment variable it was read from (printed back instead of
    /// the value).
    pub env: String,
    /// The value: a secret as far as logs are concerned.
    pub value: Secret<String>,
}

/// A PEM file read at startup (so a bad path stops the start, naming it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemFile {
    /// Where it was read from.
    pub path: String,
    /// Its contents (a private key among them: never printed).
    pub pem: Secret<Vec<u8>>,
}

impl TargetSetting {
    /// The target's URL without its options, as waiting reasons and logs
    /// name it (`grpc://host:port/pkg.Service/Method`).
    pub fn url(&self) -> String {
        let tls = self.origin.starts_with("https://");
        let scheme = match (self.protocol, tls) {
            (Protocol::Grpc, false) => "grpc",
            (Protocol::Grpc, true) => "grpcs",
            (Protocol::Http, false) => "http",
            (Protocol::Http, true) => "https",
        };
        let host = self.origin.split_once("://").map_or("", |(_, h)| h);
        format!("{scheme}://{host}{}", self.path)
    }
}

impl fmt::Display for TargetSetting {
    /// As it parses (`QUEUE=URL?options`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.queue, self.spec())
    }
}

impl TargetSetting {
    /// The URL with every option, as `--target QUEUE=` takes it after the
    /// `=`, with each header's variable name in place of its value.
    pub fn spec(&self) -> String {
        use fmt::Write as _;
        let options = &self.options;
        let mut f = format!("{}?max_concurrent={}", self.url(), options.max_concurrent);
        if let Some(n) = options.max_per_second {
            let _ = write!(f, "&max_per_second={n}");
        }
        if let Some(retry_on) = &options.retry_on {
            let _ = write!(f, "&retry_on={retry_on}");
        }
        for header in &options.headers {
            let _ = write!(f, "&header_env={}:{}", header.name, header.env);
        }
        if let Some(ca) = &options.ca_file {
            let _ = write!(f, "&ca_file={}", ca.path);
        }
        if let Some((cert, key)) = &options.identity {
            let _ = write!(f, "&cert_file={}&key_file={}", cert.path, key.path);
        }
        f
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = match self {
            Self::Codes(codes) => codes
                .iter()
                .map(|code| setting::grpc_code_name(*code).to_owned())
                .collect(),
            Self::Statuses(ranges) => ranges
                .iter()
                .map(|range| {
                    if range.start() == range.end() {
                        range.start().to_string()
                    } else {
                        format!("{}xx", range.start() / 100)
                    }
                })
                .collect(),
        };
        f.write_str(&items.join(","))
    }
}
