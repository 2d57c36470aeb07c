//! Who may do what: API keys from a TOML file, checked by one tower layer in
//! front of every service.
//!
//! ```toml
//! [[keys]]
//! name = "billing-app"                 # shown in logs, never the key
//! sha256 = "9f86d081884c7d65…"         # SHA-256 of the key, hex
//! role = "client"                      # client | worker | admin
//! tenant = "billing"                   # clients: whose tickets
//!
//! [[keys]]
//! name = "email-workers"
//! sha256 = "…"
//! role = "worker"
//! queues = ["emails", "billing.*"]     # exact names, or prefixes ending in *
//! rate_per_second = 200                # optional token bucket per key…
//! burst = 400                          # …and its size (default: 2 s worth)
//! ```
//!
//! A request carries `authorization: Bearer <key>`. The layer hashes the key
//! and compares it with every entry in constant time, checks the role
//! against the method, and hands the [`Caller`] to the handlers in the
//! request's extensions. Denials, reloads (SIGHUP) and admin calls are
//! written to the `asyncgate::audit` tracing target, each with the peer
//! address; denials and failed authentications at most once a second per
//! peer and reason (see [`audit_denial`]), so a flood of bad keys cannot
//! flood the log.
//!
//! Each key entry carries a revocation token. A reload carries it over to
//! the new table for keys whose secret, role, tenant and queues are
//! unchanged, and cancels it for the others: every open stream or wait of
//! such a key (worker sessions, watches, long-polls) selects on its own
//! child of that token and ends with UNAUTHENTICATED.
//!
//! The caller type is in `auth/caller.rs`, the keys file and its reload in
//! `auth/keys.rs`, audit records in `auth/audit.rs`; this file decides each
//! request and holds the tower layer.

use std::net::SocketAddr;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::codegen::http;

use crate::error::GatewayError;

mod audit;
mod caller;
mod keys;

pub use audit::{Peer, audit_admin, audit_cancel, audit_denial};
pub use caller::{Caller, Role};
pub use keys::{DEFAULT_TENANT, KeyTable, Keys, KeysError, MAX_TENANT_LEN, digest_hex};

/// The tracing target of audit lines.
pub const AUDIT: &str = "asyncgate::audit";

/// What a method needs.
enum Needs {
    Nothing,
    AnyKey,
    Role(&'static [Role], &'static str),
}

/// The methods that only read: a viewer key may call them.
const READS: [&str; 12] = [
    "/asyncgate.v1.Gateway/GetTicket",
    "/asyncgate.v1.Gateway/WatchTicket",
    "/asyncgate.v1.Gateway/WatchTickets",
    "/asyncgate.v1.Gateway/ListTickets",
    "/google.longrunning.Operations/GetOperation",
    "/google.longrunning.Operations/ListOperations",
    "/google.longrunning.Operations/WaitOperation",
    "/asyncgate.v1.Admin/ListQueues",
    "/asyncgate.v1.Admin/GetQueue",
    "/asyncgate.v1.Admin/ListWorkers",
    "/asyncgate.v1.Schedules/GetSchedule",
    "/asyncgate.v1.Schedules/ListSchedules",
];

/// Methods a key confined to a tenant may not call whatever its role: they
/// act beyond any tenant (a queue's target makes the gateway call into the
/// network).
const UNCONFINED: [&str; 1] = ["/asyncgate.v1.Admin/SetQueueTarget"];

/// Any valid key may ask what it is.
const WHO_AM_I: &str = "/asyncgate.v1.Gateway/WhoAmI";

fn needs(path: &str) -> Needs {
    let reads = READS.contains(&path);
    if path.starts_with("/grpc.health.v1.Health/") {
        Needs::Nothing
    } else if path == WHO_AM_I {
        Needs::AnyKey
    } else if path.starts_with("/asyncgate.v1.Gateway/")
        // The same tickets, seen as long-running operations.
        || path.starts_with("/google.longrunning.Operations/")
        // Tickets the gateway submits on the caller's behalf.
        || path.starts_with("/asyncgate.v1.Schedules/")
    {
        if reads {
            Needs::Role(
                &[Role::Client, Role::Admin, Role::Viewer],
                "a client, admin or viewer key",
            )
        } else {
            Needs::Role(&[Role::Client, Role::Admin], "a client or admin key")
        }
    } else if path.starts_with("/asyncgate.v1.Admin/") {
        if reads {
            Needs::Role(&[Role::Admin, Role::Viewer], "an admin or viewer key")
        } else {
            Needs::Role(&[Role::Admin], "an admin key")
        }
    } else if path.starts_with("/asyncgate.v1.Workers/") {
        Needs::Role(&[Role::Worker, Role::Admin], "a worker or admin key")
    } else {
        Needs::AnyKey
    }
}

/// Decides one request: the caller, or the status to answer with.
fn check(
    keys: &KeyTable,
    path: &str,
    authorization: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<Option<Caller>, Status> {
    check_need(keys, path, needs(path), authorization, peer)
}

/// [`check`] for a request that needs `need`.
fn check_need(
    keys: &KeyTable,
    path: &str,
    need: Needs,
    authorization: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<Option<Caller>, Status> {
    if let Needs::Nothing = need {
        return Ok(None);
    }
    let Some(header) = authorization else {
        audit_denial(
            peer,
            path,
            "-",
            "-",
            "unauthenticated",
            "no authorization metadata",
        );
        return Err(GatewayError::Unauthenticated(
            "missing credentials: send the metadata `authorization: Bearer <API key>`".into(),
        )
        .into());
    };
    let Some(key) = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
    else {
        audit_denial(
            peer,
            path,
            "-",
            "-",
            "unauthenticated",
            "not a bearer token",
        );
        return Err(GatewayError::Unauthenticated(
            "the authorization metadata must read `Bearer <API key>`".into(),
        )
        .into());
    };
    let Some(caller) = keys.authenticate(key.trim()) else {
        audit_denial(peer, path, "-", "-", "unauthenticated", "unknown key");
        return Err(GatewayError::Unauthenticated("unknown API key".into()).into());
    };
    if let Needs::Role(roles, what) = need
        && !roles.contains(&caller.role)
    {
        audit_denial(peer, path, &caller.name, "-", "permission_denied", "role");
        return Err(GatewayError::PermissionDenied(format!(
            "key {:?} has the {} role; {path} needs {what}",
            caller.name,
            caller.role.name()
        ))
        .into());
    }
    if caller.tenant.is_some() && UNCONFINED.contains(&path) {
        audit_denial(peer, path, &caller.name, "-", "permission_denied", "tenant");
        return Err(GatewayError::PermissionDenied(format!(
            "key {:?} is confined to a tenant; {path} needs a key that is not (it acts beyond any tenant)",
            caller.name
        ))
        .into());
    }
    if let Some(limiter) = &caller.limiter
        && let Err(wait) = limiter.take()
    {
        audit_denial(
            peer,
            path,
            &caller.name,
            "-",
            "resource_exhausted",
            "rate limit",
        );
        return Err(GatewayError::Exhausted(format!(
            "key {:?} is over its rate limit of {} requests/s; retry in {} ms",
            caller.name,
            limiter.rate,
            wait.as_millis().max(1)
        ))
        .into());
    }
    if caller.role == Role::Admin {
        tracing::info!(target: AUDIT, action = path, who = %caller.name, peer = %Peer(peer), outcome = "allowed");
    }
    Ok(Some(caller.clone()))
}

/// The tower layer that authenticates every request (see the module docs).
#[derive(Clone)]
pub struct AuthLayer {
    keys: Option<Keys>,
}

impl AuthLayer {
    /// With `None`, every request passes as [`Caller::anonymous`].
    pub fn new(keys: Option<Keys>) -> Self {
        Self { keys }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            keys: self.keys.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    keys: Option<Keys>,
}

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let caller = match &self.keys {
            None => Ok(Some(Caller::anonymous())),
            Some(keys) => check(
                &keys.current(),
                request.uri().path(),
                request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
                crate::connection::remote_addr(request.extensions()),
            ),
        };
        match caller {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(status) => {
                futures::future::Either::Right(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Every method of the gateway's own services (`asyncgate.*` and the
/// operations view of tickets) that `caller`'s role may call, sorted: read
/// from the same table the layer decides by, so a tool shows exactly what
/// the gateway would allow.
pub fn allowed_methods(caller: &Caller) -> Vec<String> {
    use prost::Message;
    static METHODS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        let set = prost_types::FileDescriptorSet::decode(asyncgate_proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled-in descriptors decode");
        let mut methods: Vec<String> =
            set.file
                .iter()
                .filter(|f| {
                    let package = f.package();
                    package.starts_with("asyncgate.") || package == "google.longrunning"
                })
                .flat_map(|f| {
                    f.service.iter().flat_map(move |service| {
                        service.method.iter().map(move |m| {
                            format!("/{}.{}/{}", f.package(), service.name(), m.name())
                        })
                    })
                })
                .collect();
        methods.sort();
        methods.dedup();
        methods
    });
    METHODS
        .iter()
        .filter(|path| match needs(path) {
            Needs::Nothing | Needs::AnyKey => true,
            Needs::Role(roles, _) => roles.contains(&caller.role),
        })
        .filter(|path| caller.tenant.is_none() || !UNCONFINED.contains(&path.as_str()))
        .cloned()
        .collect()
}

/// The caller of a request that passed the layer (anonymous when the layer
/// did not run, as in tests of a bare service).
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::anonymous)
}

#[cfg(test)]
mod tests;
