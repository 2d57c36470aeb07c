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

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::codegen::http;

use crate::domain::QueueName;
use crate::error::GatewayError;

/// The tracing target of audit lines.
pub const AUDIT: &str = "asyncgate::audit";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submit, execute, get, watch, cancel and list its tenant's tickets.
    Client,
    /// Connect as a worker to the queues its entry allows.
    Worker,
    /// Everything, every tenant.
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Admin => "admin",
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
    /// The key's request budget, if it has one.
    limiter: Option<Arc<TokenBucket>>,
    /// False for [`Caller::anonymous`] (no keys file): only a real admin
    /// key names other tenants' queues (`tenant/queue`).
    authenticated: bool,
    /// Cancelled when a reload removes the key or changes what it grants;
    /// shared by every request of the key (see [`Caller::revocation`]).
    revoked: CancellationToken,
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    state: std::sync::Mutex<(f64, tokio::time::Instant)>,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            state: std::sync::Mutex::new((burst, tokio::time::Instant::now())),
        }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&self) -> Result<(), std::time::Duration> {
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
    fn grants_as(&self, other: &Caller) -> bool {
        self.role == other.role && self.tenant == other.tenant && self.queues == other.queues
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
            return true;
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

/// Why the keys file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("keys file {path}: {reason}")]
pub struct KeysError {
    path: PathBuf,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntryFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntryFile {
    name: String,
    sha256: String,
    role: Role,
    tenant: Option<String>,
    #[serde(default)]
    queues: Vec<String>,
    rate_per_second: Option<f64>,
    burst: Option<f64>,
}

struct KeyEntry {
    digest: [u8; 32],
    caller: Caller,
}

/// The keys in force.
pub struct KeyTable {
    entries: Vec<KeyEntry>,
}

/// The `sha256` a keys file stores for `key` (as `printf %s KEY | sha256sum`
/// prints it).
pub fn digest_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The longest tenant name (it prefixes the tenant's queue names).
pub const MAX_TENANT_LEN: usize = 64;

/// The tenant of client keys that name none.
pub const DEFAULT_TENANT: &str = "default";

fn hex_digest(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(digest)
}

impl KeyTable {
    /// Reads and checks a keys file.
    pub fn load(path: &Path) -> Result<KeyTable, KeysError> {
        let error = |reason: String| KeysError {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let file: KeysFile = toml::from_str(&text).map_err(|e| error(e.to_string()))?;
        let mut names = HashSet::new();
        let mut entries = Vec::with_capacity(file.keys.len());
        for entry in file.keys {
            if !names.insert(entry.name.clone()) {
                return Err(error(format!(
                    "the key name {:?} appears twice",
                    entry.name
                )));
            }
            let digest = hex_digest(&entry.sha256).ok_or_else(|| {
                error(format!(
                    "key {:?}: sha256 must be 64 hex digits (the SHA-256 of the key, e.g. `printf %s KEY | sha256sum`)",
                    entry.name
                ))
            })?;
            if entry.role == Role::Worker && entry.queues.is_empty() {
                return Err(error(format!(
                    "worker key {:?} names no queues: list them in `queues` (exact names or prefixes ending in *)",
                    entry.name
                )));
            }
            let limiter = match (entry.rate_per_second, entry.burst) {
                (None, None) => None,
                (Some(rate), burst) if rate > 0.0 && burst.is_none_or(|b| b >= 1.0) => {
                    Some(Arc::new(TokenBucket::new(
                        rate,
                        burst.unwrap_or((rate * 2.0).max(1.0)),
                    )))
                }
                (None, Some(_)) => {
                    return Err(error(format!(
                        "key {:?}: burst needs rate_per_second",
                        entry.name
                    )));
                }
                _ => {
                    return Err(error(format!(
                        "key {:?}: rate_per_second must be above 0 and burst at least 1",
                        entry.name
                    )));
                }
            };
            if let Some(tenant) = &entry.tenant {
                if tenant.len() > MAX_TENANT_LEN {
                    return Err(error(format!(
                        "key {:?}: tenant is {} bytes; the limit is {MAX_TENANT_LEN}",
                        entry.name,
                        tenant.len()
                    )));
                }
                QueueName::parse(tenant).map_err(|e| {
                    error(format!(
                        "key {:?}: tenant names follow the rules of queue names: {}",
                        entry.name,
                        e.replace("queue name", "tenant")
                    ))
                })?;
            }
            let tenant = match entry.role {
                Role::Admin => None,
                _ => Some(Arc::from(entry.tenant.as_deref().unwrap_or(DEFAULT_TENANT))),
            };
            entries.push(KeyEntry {
                digest,
                caller: Caller {
                    name: entry.name.into(),
                    role: entry.role,
                    tenant,
                    queues: entry.queues.into(),
                    limiter,
                    authenticated: true,
                    revoked: CancellationToken::new(),
                },
            });
        }
        Ok(KeyTable { entries })
    }

    /// The caller a presented key belongs to. Every entry is compared (in
    /// constant time), so timing says nothing about which one matched.
    pub fn authenticate(&self, key: &str) -> Option<&Caller> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(&entry.caller);
            }
        }
        found
    }

    /// The entry `authenticate` picks for `digest` (the last match).
    fn effective(&self, digest: &[u8; 32]) -> Option<&KeyEntry> {
        self.entries.iter().rev().find(|e| e.digest == *digest)
    }

    /// Carries over from `previous` what outlives a reload, and says what
    /// changed. A key whose secret and limits are unchanged keeps its bucket,
    /// so a reload does not hand a client at its limit a fresh burst (a key
    /// whose rate or burst changed starts full). A key whose secret, role,
    /// tenant and queues are unchanged keeps its revocation token, so its
    /// open calls go on; the tokens of every other previous key are returned
    /// for the caller to cancel once the new table is in force.
    fn carry_over_from(&mut self, previous: &KeyTable) -> (ReloadSummary, Vec<CancellationToken>) {
        for entry in &mut self.entries {
            let Some(old) = previous.effective(&entry.digest) else {
                continue;
            };
            if let (Some(fresh), Some(bucket)) = (&entry.caller.limiter, &old.caller.limiter)
                && bucket.rate == fresh.rate
                && bucket.burst == fresh.burst
            {
                entry.caller.limiter = Some(bucket.clone());
            }
            if entry.caller.grants_as(&old.caller) {
                entry.caller.revoked = old.caller.revoked.clone();
            }
        }
        let mut summary = ReloadSummary {
            keys: self.entries.len(),
            ..ReloadSummary::default()
        };
        let mut revoked = Vec::new();
        for old in &previous.entries {
            // Only the effective entry of the new table decides: an earlier
            // duplicate of the secret is never what `authenticate` returns.
            match self.effective(&old.digest) {
                Some(new) if new.caller.grants_as(&old.caller) => {}
                _ => revoked.push(old.caller.revoked.clone()),
            }
        }
        let old_digests: HashSet<[u8; 32]> = previous.entries.iter().map(|e| e.digest).collect();
        let new_digests: HashSet<[u8; 32]> = self.entries.iter().map(|e| e.digest).collect();
        summary.added = new_digests.difference(&old_digests).count();
        summary.removed = old_digests.difference(&new_digests).count();
        summary.changed = new_digests
            .intersection(&old_digests)
            .filter(|digest| {
                let (Some(new), Some(old)) = (self.effective(digest), previous.effective(digest))
                else {
                    return false;
                };
                let limits = |c: &Caller| c.limiter.as_ref().map(|b| (b.rate, b.burst));
                !new.caller.grants_as(&old.caller)
                    || new.caller.name != old.caller.name
                    || limits(&new.caller) != limits(&old.caller)
            })
            .count();
        (summary, revoked)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What a reload changed, for the audit log.
#[derive(Debug, Default, Clone, Copy)]
struct ReloadSummary {
    /// Keys in force now.
    keys: usize,
    /// Secrets that are new.
    added: usize,
    /// Secrets that are gone.
    removed: usize,
    /// Secrets still there with another name, role, tenant, queues or
    /// limit.
    changed: usize,
}

/// The `peer` of audit records that no network peer caused (a SIGHUP).
const LOCAL_PEER: &str = "local";

/// The keys in force, replaced as a whole on reload.
#[derive(Clone)]
pub struct Keys {
    path: Arc<PathBuf>,
    table: Arc<RwLock<Arc<KeyTable>>>,
}

impl Keys {
    /// Loads the keys file.
    pub fn open(path: &Path) -> Result<Keys, KeysError> {
        let table = KeyTable::load(path)?;
        Ok(Keys {
            path: Arc::new(path.to_owned()),
            table: Arc::new(RwLock::new(Arc::new(table))),
        })
    }

    /// Reads the file again; on an error the keys in force stay. Open calls
    /// of keys that were removed, or whose role, tenant or queues changed,
    /// are ended (see the module docs). Returns the number of keys.
    pub fn reload(&self) -> Result<usize, KeysError> {
        match KeyTable::load(&self.path) {
            Ok(mut table) => {
                // Under the write lock, so two reloads cannot both start
                // from one table and the later one drop what the earlier
                // carried over. (Buckets are shared `Arc`s: requests on the
                // old table meanwhile spend the same tokens.)
                let mut current = self.table.write().unwrap_or_else(|p| p.into_inner());
                let (summary, revoked) = table.carry_over_from(&current);
                *current = Arc::new(table);
                drop(current);
                // After the swap: a request that authenticates from now on
                // meets the new table, and one that met the old table holds
                // a token that stays cancelled.
                for token in &revoked {
                    token.cancel();
                }
                tracing::info!(
                    target: AUDIT,
                    action = "reload_keys",
                    peer = %LOCAL_PEER,
                    file = %self.path.display(),
                    keys = summary.keys,
                    added = summary.added,
                    removed = summary.removed,
                    changed = summary.changed,
                    outcome = "ok",
                );
                Ok(summary.keys)
            }
            Err(error) => {
                tracing::warn!(target: AUDIT, action = "reload_keys", peer = %LOCAL_PEER, file = %self.path.display(), outcome = "failed", reason = %error);
                Err(error)
            }
        }
    }

    /// Number of keys in force.
    pub fn count(&self) -> usize {
        self.current().len()
    }

    fn current(&self) -> Arc<KeyTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Checks a metrics scrape's `authorization` header: it takes an admin
    /// key, because the exposition names every tenant's queues. Denials are
    /// audited like RPCs'; the status's message says what is missing.
    pub fn check_scrape(
        &self,
        authorization: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Result<(), Status> {
        check_need(
            &self.current(),
            "/metrics",
            Needs::Role(&[Role::Admin], "an admin key"),
            authorization,
            peer,
        )
        .map(drop)
    }
}

/// What a method needs.
enum Needs {
    Nothing,
    AnyKey,
    Role(&'static [Role], &'static str),
}

fn needs(path: &str) -> Needs {
    if path.starts_with("/grpc.health.v1.Health/") {
        Needs::Nothing
    } else if path.starts_with("/asyncgate.v1.Gateway/")
        // The same tickets, seen as long-running operations.
        || path.starts_with("/google.longrunning.Operations/")
    {
        Needs::Role(&[Role::Client, Role::Admin], "a client or admin key")
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

/// A peer address in audit records: `ip:port`, or `-` when unknown.
pub struct Peer(pub Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// How often one peer's denials of one reason reach the audit log.
const DENIAL_WINDOW: Duration = Duration::from_secs(1);

/// The most (peer, reason) pairs whose denials are counted at once; past it
/// the pair seen least recently is forgotten, so a spray of addresses
/// cannot grow the map.
const DENIAL_PEERS: usize = 1024;

/// Rate-limits denial records: the first denial of a (peer, reason) in each
/// window is written, the rest are counted and their number is written with
/// the next record of the pair.
struct DenialLog {
    windows: Mutex<HashMap<(Option<IpAddr>, &'static str), DenialWindow>>,
}

struct DenialWindow {
    /// When the last written record of the pair was.
    started: tokio::time::Instant,
    /// Denials not written since then.
    suppressed: u64,
}

impl DenialLog {
    /// `Some(suppressed)` when this denial is to be written (with the
    /// number left out before it); `None` when it only counts.
    fn admit(&self, peer: Option<IpAddr>, reason: &'static str) -> Option<u64> {
        let now = tokio::time::Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(window) = windows.get_mut(&(peer, reason)) {
            if now.duration_since(window.started) < DENIAL_WINDOW {
                window.suppressed += 1;
                return None;
            }
            let suppressed = std::mem::take(&mut window.suppressed);
            window.started = now;
            return Some(suppressed);
        }
        if windows.len() >= DENIAL_PEERS {
            // A linear scan, only when a new pair arrives at a full map:
            // cheap at this size, and no second index to keep in step.
            let oldest = windows
                .iter()
                .min_by_key(|(_, window)| window.started)
                .map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                windows.remove(&oldest);
            }
        }
        windows.insert(
            (peer, reason),
            DenialWindow {
                started: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

impl DenialLog {
    fn new() -> Self {
        Self {
            windows: Mutex::default(),
        }
    }
}

static DENIALS: LazyLock<DenialLog> = LazyLock::new(DenialLog::new);

/// Audits a refused call (a failed authentication or a permission
/// denial): at most one record per second per peer address (IP: a new
/// connection per attempt gains nothing) and reason, each with the number
/// of records left out before it (`suppressed`).
/// `target` names what was refused beyond the method (a queue), or is `-`.
pub fn audit_denial(
    peer: Option<SocketAddr>,
    action: &str,
    who: &str,
    target: &str,
    outcome: &'static str,
    reason: &'static str,
) {
    let Some(suppressed) = DENIALS.admit(peer.map(|p| p.ip()), reason) else {
        return;
    };
    tracing::info!(target: AUDIT, action, who = %who, peer = %Peer(peer), target = %target, outcome, reason, suppressed);
}

/// Audits a change a caller made: who (and with which role), what, on
/// what, from where.
fn audit_change(caller: &Caller, action: &str, peer: Option<SocketAddr>, target: &str) {
    tracing::info!(target: AUDIT, action, who = %caller.name, role = caller.role.name(), peer = %Peer(peer), target = %target, outcome = "ok");
}

/// Audits a change an admin key made: call it from every admin RPC that
/// changes something (cancels call it through [`audit_cancel`]).
pub fn audit_admin(caller: &Caller, action: &str, peer: Option<SocketAddr>, target: &str) {
    audit_change(caller, action, peer, target);
}

/// Audits a cancel (CancelTicket or CancelOperation) by any key; an admin's
/// is an admin action (`role=admin`).
pub fn audit_cancel(caller: &Caller, action: &str, peer: Option<SocketAddr>, ticket_id: &str) {
    if caller.role == Role::Admin {
        audit_admin(caller, action, peer, ticket_id);
    } else {
        audit_change(caller, action, peer, ticket_id);
    }
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
