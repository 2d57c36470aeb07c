//! Target queues: the gateway itself works a queue's tickets by calling an
//! existing unary gRPC method with each ticket's payload and recording the
//! reply as its result, so a service with no worker code sits behind
//! tickets.
//!
//! # Layout
//! - `mod.rs`: a target as configured (`--target QUEUE=URL`) and its
//!   validation.
//! - `grpc.rs`: the raw-bytes unary call on a reused HTTP/2 channel.
//! - `worker.rs`: the in-process worker: a session of the dispatcher like a
//!   connected worker's (leases, heartbeats, fencing, cancellation and
//!   redelivery are the same), fed over channels instead of a stream.

mod grpc;
mod worker;

pub(crate) use worker::{Gateway, spawn};

use crate::domain::QueueName;

/// Calls each target runs at once unless its URL says otherwise.
pub const DEFAULT_TARGET_CONCURRENCY: u32 = 64;

/// One target queue as configured: `QUEUE=grpc://host:port/pkg.Service/Method`
/// (or `grpcs://`), optionally `?max_concurrent=N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSetting {
    /// The queue whose tickets the gateway works (as stored).
    pub queue: QueueName,
    /// `http://host:port` or `https://host:port`.
    pub origin: String,
    /// `/package.Service/Method`.
    pub method: String,
    /// Calls at once.
    pub max_concurrent: u32,
}

impl std::fmt::Display for TargetSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.origin.starts_with("https://") {
            "grpcs"
        } else {
            "grpc"
        };
        let host = self.origin.split_once("://").map_or("", |(_, h)| h);
        write!(
            f,
            "{}={scheme}://{host}{}?max_concurrent={}",
            self.queue, self.method, self.max_concurrent
        )
    }
}

/// Parses `QUEUE=grpc://host:port/package.Service/Method[?max_concurrent=N]`.
pub fn parse_target(text: &str) -> Result<TargetSetting, String> {
    let form =
        "QUEUE=grpc://HOST:PORT/package.Service/Method (or grpcs://), optionally ?max_concurrent=N";
    let (queue, url) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} has no '='; the form is {form}"))?;
    let queue = QueueName::parse_scoped(queue.trim()).map_err(|e| format!("queue: {e}"))?;
    let url = url.trim();
    let (tls, rest) = if let Some(rest) = url.strip_prefix("grpcs://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("grpc://") {
        (false, rest)
    } else {
        return Err(format!(
            "{url:?}: a target URL starts with grpc:// or grpcs:// (HTTP targets are not served yet); the form is {form}"
        ));
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, method) = rest
        .split_once('/')
        .ok_or_else(|| format!("{url:?} names no method; the form is {form}"))?;
    let method = format!("/{method}");
    let valid_method = method[1..].split_once('/').is_some_and(|(service, name)| {
        !service.is_empty() && service.contains('.') && !name.is_empty() && !name.contains('/')
    });
    if host.is_empty() || !valid_method {
        return Err(format!(
            "{url:?}: the method must be /package.Service/Method after HOST:PORT; the form is {form}"
        ));
    }
    let mut max_concurrent = DEFAULT_TARGET_CONCURRENCY;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("max_concurrent", n)) => {
                max_concurrent = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=crate::dispatch::session::MAX_IN_FLIGHT_LIMIT).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "max_concurrent={n:?}: use 1 to {}",
                            crate::dispatch::session::MAX_IN_FLIGHT_LIMIT
                        )
                    })?;
            }
            _ => {
                return Err(format!(
                    "unknown option {pair:?}; the only one is max_concurrent=N"
                ));
            }
        }
    }
    Ok(TargetSetting {
        queue,
        origin: format!("{}://{host}", if tls { "https" } else { "http" }),
        method,
        max_concurrent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_say_what_to_fix() {
        let t = parse_target("orders=grpc://127.0.0.1:50052/shop.v1.Orders/Place").unwrap();
        assert_eq!(
            (t.queue.as_str(), t.origin.as_str(), t.method.as_str()),
            ("orders", "http://127.0.0.1:50052", "/shop.v1.Orders/Place")
        );
        assert_eq!(t.max_concurrent, DEFAULT_TARGET_CONCURRENCY);
        let t = parse_target("a/q=grpcs://svc.internal:443/x.Y/Z?max_concurrent=8").unwrap();
        assert_eq!(
            (t.origin.as_str(), t.max_concurrent),
            ("https://svc.internal:443", 8)
        );
        assert_eq!(
            parse_target(&t.to_string()).unwrap(),
            t,
            "prints as it parses"
        );
        for (bad, needle) in [
            ("no-equals", "has no '='"),
            ("q=http://h:1/a.B/C", "starts with grpc://"),
            ("q=grpc://h:1", "names no method"),
            ("q=grpc://h:1/Method", "package.Service/Method"),
            ("q=grpc://h:1/a.B/C?max_concurrent=0", "use 1 to"),
            ("q=grpc://h:1/a.B/C?retries=3", "unknown option"),
            ("bad queue=grpc://h:1/a.B/C", "queue:"),
        ] {
            let error = parse_target(bad).unwrap_err();
            assert!(error.contains(needle), "{bad}: {error}");
        }
    }
}
