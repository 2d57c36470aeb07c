//! Parsing `--target QUEUE=URL[?options]`. Everything a target needs from
//! outside (header values from the environment, PEM files) is read here, so
//! a bad setting stops the gateway before it binds (exit 64), with a
//! message that names what to fix. Header values never appear in errors.

use std::ops::RangeInclusive;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::Code;

use super::{PemFile, Protocol, RetryOn, Secret, StaticHeader, TargetOptions, TargetSetting};
use crate::domain::QueueName;

const FORM: &str = "QUEUE=grpc://HOST:PORT/package.Service/Method (or grpcs://) or QUEUE=http://HOST:PORT/path (or https://), optionally ?option=value&...";

const OPTIONS: &str = "max_concurrent=N, max_per_second=N, retry_on=CODES, header_env=NAME:ENVVAR, ca_file=PATH, cert_file=PATH, key_file=PATH";

/// gRPC status codes by their canonical names.
const GRPC_CODES: [(&str, Code); 17] = [
    ("OK", Code::Ok),
    ("CANCELLED", Code::Cancelled),
    ("UNKNOWN", Code::Unknown),
    ("INVALID_ARGUMENT", Code::InvalidArgument),
    ("DEADLINE_EXCEEDED", Code::DeadlineExceeded),
    ("NOT_FOUND", Code::NotFound),
    ("ALREADY_EXISTS", Code::AlreadyExists),
    ("PERMISSION_DENIED", Code::PermissionDenied),
    ("RESOURCE_EXHAUSTED", Code::ResourceExhausted),
    ("FAILED_PRECONDITION", Code::FailedPrecondition),
    ("ABORTED", Code::Aborted),
    ("OUT_OF_RANGE", Code::OutOfRange),
    ("UNIMPLEMENTED", Code::Unimplemented),
    ("INTERNAL", Code::Internal),
    ("UNAVAILABLE", Code::Unavailable),
    ("DATA_LOSS", Code::DataLoss),
    ("UNAUTHENTICATED", Code::Unauthenticated),
];

/// A gRPC code's canonical name (`UNAVAILABLE`).
pub(super) fn grpc_code_name(code: Code) -> &'static str {
    GRPC_CODES
        .iter()
        .find(|(_, c)| *c == code)
        .map_or("UNKNOWN", |(name, _)| name)
}

/// Parses `QUEUE=URL[?option=value&...]`; see [`OPTIONS`] for the options.
pub fn parse_target(text: &str) -> Result<TargetSetting, String> {
    let (queue, url) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} has no '='; the form is {FORM}"))?;
    let queue = QueueName::parse_scoped(queue.trim()).map_err(|e| format!("queue: {e}"))?;
    let url = url.trim();
    let (protocol, tls, rest) = [
        ("grpcs://", Protocol::Grpc, true),
        ("grpc://", Protocol::Grpc, false),
        ("https://", Protocol::Http, true),
        ("http://", Protocol::Http, false),
    ]
    .into_iter()
    .find_map(|(prefix, protocol, tls)| Some((protocol, tls, url.strip_prefix(prefix)?)))
    .ok_or_else(|| {
        format!("{url:?}: a target URL starts with grpc://, grpcs://, http:// or https://; the form is {FORM}")
    })?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, path) = match rest.split_once('/') {
        Some((host, path)) => (host, format!("/{path}")),
        None if protocol == Protocol::Http => (rest, "/".to_owned()),
        None => return Err(format!("{url:?} names no method; the form is {FORM}")),
    };
    if host.is_empty() || host.contains('@') {
        return Err(format!(
            "{url:?}: give HOST:PORT after the scheme (no user:password@: send credentials with header_env=authorization:ENVVAR); the form is {FORM}"
        ));
    }
    let origin = format!("{}://{host}", if tls { "https" } else { "http" });
    match protocol {
        Protocol::Grpc => check_method(url, &path)?,
        Protocol::Http => {
            reqwest::Url::parse(&format!("{origin}{path}"))
                .map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
        }
    }
    let options = parse_options(query, protocol, tls)?;
    Ok(TargetSetting {
        queue,
        protocol,
        origin,
        path,
        options,
    })
}

/// Options that read this gateway's environment or files: only its own
/// config may use them, never a target set through the admin API (an
/// admin key must not send the gateway's secrets to a host it picks).
const CONFIG_ONLY: [&str; 4] = ["header_env", "ca_file", "cert_file", "key_file"];

/// Longest target accepted through the admin API.
pub const MAX_TARGET_LEN: usize = 2048;

/// Parses a target set through the admin API (`Admin.SetQueueTarget`) for
/// `queue`: the URL and options of `--target`, without [`CONFIG_ONLY`]'s
/// (refused before anything is read).
pub fn parse_admin_target(queue: &QueueName, spec: &str) -> Result<TargetSetting, String> {
    if spec.len() > MAX_TARGET_LEN {
        return Err(format!(
            "is {} bytes; the limit is {MAX_TARGET_LEN}",
            spec.len()
        ));
    }
    if spec.contains(char::is_whitespace) {
        return Err(format!("{spec:?} contains white space; give the URL alone"));
    }
    let query = spec.split_once('?').map_or("", |(_, q)| q);
    for pair in query.split('&') {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if CONFIG_ONLY.contains(&key) {
            return Err(format!(
                "{key} reads this gateway's environment or files: only its config (--target) may use it; put this target there instead"
            ));
        }
    }
    parse_target(&format!("{queue}={spec}"))
}

fn check_method(url: &str, method: &str) -> Result<(), String> {
    let valid = method[1..].split_once('/').is_some_and(|(service, name)| {
        !service.is_empty() && service.contains('.') && !name.is_empty() && !name.contains('/')
    });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{url:?}: the method must be /package.Service/Method after HOST:PORT; the form is {FORM}"
        ))
    }
}

/// The query options, checked against the protocol and TLS.
fn parse_options(query: &str, protocol: Protocol, tls: bool) -> Result<TargetOptions, String> {
    let mut options = TargetOptions::default();
    let (mut cert_file, mut key_file) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("option {pair:?} has no '='; the options are {OPTIONS}"))?;
        match key {
            "max_concurrent" => {
                let limit = crate::dispatch::session::MAX_IN_FLIGHT_LIMIT;
                options.max_concurrent = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=limit).contains(n))
                    .ok_or_else(|| format!("max_concurrent={value:?}: use 1 to {limit}"))?;
            }
            "max_per_second" => {
                options.max_per_second = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|n| (1..=1_000_000).contains(n))
                        .ok_or_else(|| {
                            format!("max_per_second={value:?}: use 1 to 1000000 (calls started per second)")
                        })?,
                );
            }
            "retry_on" => options.retry_on = Some(parse_retry_on(value, protocol)?),
            "header_env" => options.headers.push(parse_header_env(value, protocol)?),
            "ca_file" | "cert_file" | "key_file" if !tls => {
                return Err(format!(
                    "{key} is for TLS: use grpcs:// or https:// with it"
                ));
            }
            "ca_file" => options.ca_file = Some(read_pem(key, value, PemKind::Certificates)?),
            "cert_file" => cert_file = Some(read_pem(key, value, PemKind::Certificates)?),
            "key_file" => key_file = Some(read_pem(key, value, PemKind::PrivateKey)?),
            _ => {
                return Err(format!(
                    "unknown option {pair:?}; the options are {OPTIONS}"
                ));
            }
        }
    }
    options.identity = match (cert_file, key_file) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(
                "cert_file and key_file go together (the client certificate and its key for mTLS)"
                    .into(),
            );
        }
    };
    Ok(options)
}

/// `UNAVAILABLE,INTERNAL` for gRPC; `429,503,5xx` for HTTP.
fn parse_retry_on(value: &str, protocol: Protocol) -> Result<RetryOn, String> {
    let items = value.split(',').map(str::trim).filter(|s| !s.is_empty());
    match protocol {
        Protocol::Grpc => items
            .map(|item| {
                GRPC_CODES
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(item))
                    .map(|(_, code)| *code)
                    .ok_or_else(|| {
                        format!("retry_on: {item:?} is not a gRPC code name; use names such as UNAVAILABLE,RESOURCE_EXHAUSTED")
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(RetryOn::Codes),
        Protocol::Http => items
            .map(parse_status_pattern)
            .collect::<Result<Vec<_>, _>>()
            .map(RetryOn::Statuses),
    }
}

/// `503` (one status) or `5xx` (a class).
fn parse_status_pattern(item: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || {
        format!(
            "retry_on: {item:?} is not an HTTP status; use statuses (100 to 599) or classes, such as 429,503,5xx"
        )
    };
    if let Some(class) = item
        .to_ascii_lowercase()
        .strip_suffix("xx")
        .and_then(|d| d.parse::<u16>().ok())
    {
        return (1..=5)
            .contains(&class)
            .then(|| class * 100..=class * 100 + 99)
            .ok_or_else(bad);
    }
    let status: u16 = item.parse().map_err(|_| bad())?;
    (100..=599)
        .contains(&status)
        .then_some(status..=status)
        .ok_or_else(bad)
}

/// `NAME:ENVVAR`: the header's value is read from `ENVVAR` now.
fn parse_header_env(value: &str, protocol: Protocol) -> Result<StaticHeader, String> {
    let (name, env) = value
        .split_once(':')
        .filter(|(name, env)| !name.is_empty() && !env.is_empty())
        .ok_or_else(|| {
            format!("header_env={value:?}: use header_env=NAME:ENVVAR, e.g. header_env=authorization:API_TOKEN")
        })?;
    let name = name.to_ascii_lowercase();
    let valid_name = match protocol {
        Protocol::Http => reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok(),
        Protocol::Grpc => {
            name.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>()
                .is_ok()
                && !name.starts_with("grpc-")
        }
    };
    if !valid_name {
        return Err(format!("header_env: {name:?} is not a valid header name"));
    }
    let secret = std::env::var(env).map_err(|_| {
        format!("header_env={name}:{env}: the environment variable {env} is not set (or not UTF-8)")
    })?;
    if reqwest::header::HeaderValue::from_str(&secret).is_err() {
        // The value itself is a secret: it is not shown.
        return Err(format!(
            "header_env={name}:{env}: the value of {env} is not a valid header value (visible ASCII)"
        ));
    }
    Ok(StaticHeader {
        name,
        env: env.to_owned(),
        value: Secret(secret),
    })
}

#[derive(Clone, Copy)]
enum PemKind {
    Certificates,
    PrivateKey,
}

/// Reads a PEM file now, checking that it holds what `kind` needs.
fn read_pem(option: &str, path: &str, kind: PemKind) -> Result<PemFile, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{option}={path}: cannot read it: {e}"))?;
    let usable = match kind {
        PemKind::Certificates => {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
            certs.is_ok_and(|certs| !certs.is_empty())
        }
        PemKind::PrivateKey => PrivateKeyDer::from_pem_slice(&pem).is_ok(),
    };
    if !usable {
        let what = match kind {
            PemKind::Certificates => "PEM certificates",
            PemKind::PrivateKey => "PEM private key",
        };
        return Err(format!("{option}={path}: the file holds no {what}"));
    }
    Ok(PemFile {
        path: path.to_owned(),
        pem: Secret(pem),
    })
}

#[cfg(test)]
mod tests;
