//! Completion callbacks: when a ticket that names a callback
//! (`SubmitRequest.callback`) ends, the gateway delivers the terminal
//! ticket to it — a signed POST (Standard Webhooks) or a gRPC call
//! (`Callbacks.TicketFinished`) — at least once, with retries, from an
//! outbox in the engine that survives restarts and is shared by replicas.
//!
//! # Layout
//! - `mod.rs`: the settings and the destination policy: the allowlist of
//!   hosts and networks, checked at submit and again, on the resolved
//!   addresses, at every delivery (no SSRF through the gateway).
//! - `deliver.rs`: one delivery attempt over HTTP or gRPC.
//! - `runner.rs`: the loop that claims due callbacks from the engine,
//!   delivers them a bounded number at a time, and records each outcome.

mod deliver;
mod runner;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

pub(crate) use deliver::{CheckedConnector, CheckedResolver};
pub(crate) use runner::spawn;

/// The longest callback URL accepted.
pub const MAX_CALLBACK_URL_LEN: usize = 2048;

/// One entry of `--callback-allow`: a host name, a `*.suffix` of names, or
/// an address or network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// Exactly this name (lowercase).
    Host(String),
    /// Names ending in `.suffix` (stored with its leading dot).
    Suffix(String),
    /// Addresses in this network (a single address is a /32 or /128).
    Net(IpNet),
}

impl std::fmt::Display for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allowed::Host(host) => f.write_str(host),
            Allowed::Suffix(suffix) => write!(f, "*{suffix}"),
            Allowed::Net(net) => write!(f, "{net}"),
        }
    }
}

/// Parses one `--callback-allow` entry.
pub fn parse_allowed(text: &str) -> Result<Allowed, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(Allowed::Net(net));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Allowed::Net(IpNet::from(ip)));
    }
    let (suffix, name) = match text.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(format!(
            "{text:?} is not a host name, *.domain, address or network (e.g. hooks.example.com, *.example.com, 10.0.0.0/8, 127.0.0.1)"
        ));
    }
    let name = name.to_ascii_lowercase();
    Ok(if suffix {
        Allowed::Suffix(format!(".{name}"))
    } else {
        Allowed::Host(name)
    })
}

/// A secret that signs HTTP callbacks: `whsec_` and base64, as the
/// Standard Webhooks specification writes them. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// The secret as given.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Parses one `--callback-secret`.
pub fn parse_secret(text: &str) -> Result<Secret, String> {
    let text = text.trim();
    let form = "a callback secret is `whsec_` followed by the base64 of at least 16 random bytes, e.g. whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    // 16 bytes are 24 base64 characters: a shorter key is guessable.
    if text.trim_start_matches("whsec_").len() < 24 {
        return Err(format!("too short: {form}"));
    }
    standardwebhooks::Webhook::new(text).map_err(|_| format!("not base64: {form}"))?;
    Ok(Secret(text.into()))
}

/// The callback settings (`--callback-*`).
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    /// Destinations allowed; empty: callbacks are refused.
    pub allow: Vec<Allowed>,
    /// Whether `http://` (unencrypted) callbacks are allowed.
    pub allow_http: bool,
    /// Secrets that sign HTTP callbacks (each adds a signature: rotation).
    pub secrets: Vec<Secret>,
    /// How long a delivery is retried after the ticket ended.
    pub retry_window: Duration,
    /// Deliveries in flight at once on this gateway.
    pub concurrency: usize,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            allow_http: false,
            secrets: Vec::new(),
            retry_window: Duration::from_secs(24 * 3600),
            concurrency: 256,
        }
    }
}

/// Why a callback URL was refused at submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The URL is malformed: fix the request.
    Invalid(String),
    /// The gateway's settings do not allow it.
    NotAllowed(String),
}

impl CallbackSettings {
    /// Checks `url` as a callback destination; its normal form.
    pub fn check(&self, url: &str) -> Result<Arc<str>, Refused> {
        if url.len() > MAX_CALLBACK_URL_LEN {
            return Err(Refused::Invalid(format!(
                "is {} characters; the limit is {MAX_CALLBACK_URL_LEN}",
                url.len()
            )));
        }
        let parsed = url::Url::parse(url).map_err(|e| {
            Refused::Invalid(format!(
                "{url:?} is not a URL ({e}); use https://HOST/PATH or grpc(s)://HOST:PORT"
            ))
        })?;
        let scheme = parsed.scheme();
        if !matches!(scheme, "https" | "http" | "grpc" | "grpcs") {
            return Err(Refused::Invalid(format!(
                "scheme {scheme:?} is not served; use https://HOST/PATH, http:// (where allowed) or grpc(s)://HOST:PORT"
            )));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Refused::Invalid(
                "credentials in the URL are refused: the gateway signs HTTP callbacks (webhook-signature) instead".into(),
            ));
        }
        if scheme.starts_with("grpc") && !matches!(parsed.path(), "" | "/") {
            return Err(Refused::Invalid(format!(
                "a gRPC callback names HOST:PORT only (it is called at /asyncgate.v1.Callbacks/TicketFinished); drop {:?}",
                parsed.path()
            )));
        }
        if scheme.starts_with("grpc") && parsed.port().is_none() {
            return Err(Refused::Invalid(
                "a gRPC callback needs a port: grpc(s)://HOST:PORT".into(),
            ));
        }
        if self.allow.is_empty() {
            return Err(Refused::NotAllowed(
                "callbacks are off on this gateway: it has no --callback-allow list of destinations".into(),
            ));
        }
        if scheme.starts_with("http") && self.secrets.is_empty() {
            return Err(Refused::NotAllowed(
                "HTTP callbacks are off on this gateway: it has no --callback-secret to sign them with (gRPC callbacks need none)".into(),
            ));
        }
        if scheme == "http" && !self.allow_http {
            return Err(Refused::NotAllowed(
                "plain http:// callbacks are refused on this gateway; use https:// (or start it with --callback-allow-http)".into(),
            ));
        }
        self.check_host(&parsed)?;
        Ok(parsed.as_str().into())
    }

    /// Checks the origin of a target set through the admin API
    /// (`http(s)://HOST:PORT`) against the same allowlist: an operator's
    /// key must not make the gateway call into the network beyond it.
    pub fn check_target(&self, origin: &str) -> Result<(), Refused> {
        if self.allow.is_empty() {
            return Err(Refused::NotAllowed(
                "targets set through the admin API are off on this gateway: it has no --callback-allow list of destinations (or put the target in its config with --target)".into(),
            ));
        }
        let parsed = url::Url::parse(origin)
            .map_err(|e| Refused::Invalid(format!("{origin:?} is not a URL ({e})")))?;
        self.check_host(&parsed)
    }

    /// Whether `url`'s host is listed (a name or suffix entry, or a network
    /// holding its address).
    fn check_host(&self, url: &url::Url) -> Result<(), Refused> {
        let allowed = match url.host() {
            // grpc(s) URLs are not "special" to the URL standard: their
            // hosts come back as names, addresses included.
            Some(url::Host::Domain(name)) => match name.parse::<IpAddr>() {
                Ok(ip) => self.allows_ip(ip),
                Err(_) => self.allows_name(name),
            },
            Some(url::Host::Ipv4(ip)) => self.allows_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.allows_ip(IpAddr::V6(ip)),
            None => {
                return Err(Refused::Invalid(format!(
                    "{:?} names no host",
                    url.as_str()
                )));
            }
        };
        if !allowed {
            return Err(Refused::NotAllowed(format!(
                "host {:?} is not in this gateway's --callback-allow list",
                url.host_str().unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// Whether the name matches a host or suffix entry.
    fn allows_name(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.allow.iter().any(|entry| match entry {
            Allowed::Host(host) => *host == name,
            Allowed::Suffix(suffix) => name.ends_with(suffix.as_str()),
            Allowed::Net(_) => false,
        })
    }

    /// Whether an address is in a listed network.
    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.allow
            .iter()
            .any(|entry| matches!(entry, Allowed::Net(net) if net.contains(&ip)))
    }

    /// Whether a destination may be reached at `ip` (a resolved address):
    /// public addresses may; loopback, private, link-local and other
    /// special ones only when a listed network holds them.
    pub fn may_connect(&self, ip: IpAddr) -> bool {
        !is_special(ip) || self.allows_ip(ip)
    }
}

/// Addresses no callback reaches unless listed: loopback, private,
/// link-local, shared, unspecified, broadcast, multicast, unique-local.
fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let shared = v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64;
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || shared
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_special(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests;
