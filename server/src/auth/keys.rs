//! The keys file: parsing and checking it into a `KeyTable`, matching a
//! presented key in constant time, and reloading it (on SIGHUP) with what
//! outlives a reload carried over and the rest revoked.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::caller::TokenBucket;
use super::{AUDIT, Caller, Needs, Role, audit_denial, check_need};
use crate::domain::QueueName;
use crate::error::GatewayError;

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
    /// Whether tickets show this key their results and output; by default
    /// every role but `viewer` sees them.
    payloads: Option<bool>,
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
                // An operator's key sees every tenant unless its entry
                // confines it to one.
                Role::Admin | Role::Viewer => entry.tenant.as_deref().map(Arc::from),
                _ => Some(Arc::from(entry.tenant.as_deref().unwrap_or(DEFAULT_TENANT))),
            };
            entries.push(KeyEntry {
                digest,
                caller: Caller {
                    name: entry.name.into(),
                    payloads: entry.payloads.unwrap_or(entry.role != Role::Viewer),
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
    pub(super) fn carry_over_from(
        &mut self,
        previous: &KeyTable,
    ) -> (ReloadSummary, Vec<CancellationToken>) {
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
pub(super) struct ReloadSummary {
    /// Keys in force now.
    keys: usize,
    /// Secrets that are new.
    pub(super) added: usize,
    /// Secrets that are gone.
    pub(super) removed: usize,
    /// Secrets still there with another name, role, tenant, queues or
    /// limit.
    pub(super) changed: usize,
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

    pub(super) fn current(&self) -> Arc<KeyTable> {
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
        let caller = check_need(
            &self.current(),
            "/metrics",
            Needs::Role(&[Role::Admin], "an admin key"),
            authorization,
            peer,
        )?;
        if let Some(caller) = caller.filter(|c| c.tenant.is_some()) {
            audit_denial(
                peer,
                "/metrics",
                &caller.name,
                "-",
                "permission_denied",
                "tenant",
            );
            return Err(GatewayError::PermissionDenied(format!(
                "key {:?} is confined to a tenant, and the metrics name every tenant's queues: scrape with an admin key without a tenant",
                caller.name
            ))
            .into());
        }
        Ok(())
    }
}
