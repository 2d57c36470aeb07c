//! The authenticated caller a request carries (its role, tenant, queues
//! and revocation token) and the token bucket that rate-limits its key:
//! what handlers ask about a caller, apart from how keys are loaded.

use std::sync::Arc;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::domain::QueueName;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submit, execute, get, watch, cancel and list its tenant's tickets.
    Client,
    /// Connect as a worker to the queues its entry allows.
    Worker,
    /// Everything: every tenant's, or its own tenant's when its entry
    /// names one.
    Admin,
    /// Read only: queues, workers and tickets (its tenant's, when its entry
    /// names one), and nothing that changes them.
    Viewer,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's name.
    pub name: Arc<str>,
    /// Its role.
    pub role: Role,
    /// The tenant whose tickets it sees; `None` sees every tenant (admins,
    /// and every caller when no keys file is configured).
    pub tenant: Option<Arc<str>>,
    /// Queues a worker key may serve (exact names or `prefix*`).
    pub queues: Arc<[String]>,
    /// Whether tickets show it their results and output chunks: a
    /// permission apart from the role, so an operator's read-only key can
    /// watch the work without seeing customers' data.
    pub payloads: bool,
    /// The key's request budget, if it has one.
    pub(super) limiter: Option<Arc<TokenBucket>>,
    /// False for [`Caller::anonymous`] (no keys file): only a real admin
    /// key names other tenants' queues (`tenant/queue`).
    pub(super) authenticated: bool,
    /// Cancelled when a reload removes the key or changes what it grants;
    /// shared by every request of the key (see [`Caller::revocation`]).
    pub(super) revoked: CancellationToken,
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub(super) struct TokenBucket {
    pub(super) rate: f64,
    pub(super) burst: f64,
    state: std::sync::Mutex<(f64, tokio::time::Instant)>,
}

impl TokenBucket {
    pub(super) fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            state: std::sync::Mutex::new((burst, tokio::time::Instant::now())),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub(super) fn take(&self) -> Result<(), std::time::Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        let (tokens, updated) = *state;
        let tokens =
            (tokens + now.duration_since(updated).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(std::time::Duration::from_secs_f64(
                (1.0 - tokens) / self.rate,
            ))
        }
    }
}

impl Caller {
    /// The caller when authentication is off: everything is allowed.
    pub fn anonymous() -> Caller {
        Caller {
            name: "anonymous".into(),
            role: Role::Admin,
            tenant: None,
            queues: Arc::from(["*".to_owned()]),
            payloads: true,
            limiter: None,
            authenticated: false,
            revoked: CancellationToken::new(),
        }
    }

    /// A token cancelled once a keys reload removes this caller's key or
    /// changes its role, tenant or queues: long-lived calls select on it
    /// and end. A child of the key's token, so that polling it per event
    /// touches only the call's own state, not the key's shared one.
    pub fn revocation(&self) -> CancellationToken {
        self.revoked.child_token()
    }

    /// Whether this caller's key was revoked or changed by a reload.
    pub fn is_revoked(&self) -> bool {
        self.revoked.is_cancelled()
    }

    /// The error that ends a call of a revoked key.
    pub fn revoked_error(&self) -> crate::error::GatewayError {
        crate::error::GatewayError::KeyRevoked(self.name.to_string())
    }

    /// Whether `other` (the same secret, in another table) grants exactly
    /// what this one does: its open calls may go on.
    pub(super) fn grants_as(&self, other: &Caller) -> bool {
        self.role == other.role
            && self.tenant == other.tenant
            && self.queues == other.queues
            && self.payloads == other.payloads
    }

    /// Whether this caller may name any tenant's queue as `tenant/queue`
    /// (an admin key; not the anonymous caller of a gateway without keys,
    /// where no tenants exist).
    pub fn names_tenant_queues(&self) -> bool {
        self.authenticated && self.tenant.is_none()
    }

    /// Whether this caller may serve `queue` (stored form: a worker key's
    /// patterns name its own tenant's queues).
    pub fn may_serve(&self, queue: &QueueName) -> bool {
        if self.role == Role::Admin {
            return self.sees(queue.tenant());
        }
        if queue.tenant() != self.tenant.as_deref() {
            return false;
        }
        let name = queue.seen_by(self.tenant.as_deref());
        self.queues
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => pattern == name,
            })
    }

    /// Whether this caller may see a ticket of `tenant`.
    pub fn sees(&self, tenant: Option<&str>) -> bool {
        match &self.tenant {
            None => true,
            Some(mine) => tenant == Some(&**mine),
        }
    }
}
