//! Audit records (target `asyncgate::audit`): denials, rate-limited per
//! peer and reason so a flood of bad keys cannot flood the log, and the
//! changes callers make. Separate from the checks that decide a request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use super::{AUDIT, Caller, Role};

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
pub(super) const DENIAL_WINDOW: Duration = Duration::from_secs(1);

/// The most (peer, reason) pairs whose denials are counted at once; past it
/// the pair seen least recently is forgotten, so a spray of addresses
/// cannot grow the map.
pub(super) const DENIAL_PEERS: usize = 1024;

/// Rate-limits denial records: the first denial of a (peer, reason) in each
/// window is written, the rest are counted and their number is written with
/// the next record of the pair.
pub(super) struct DenialLog {
    pub(super) windows: Mutex<HashMap<(Option<IpAddr>, &'static str), DenialWindow>>,
}

pub(super) struct DenialWindow {
    /// When the last written record of the pair was.
    started: tokio::time::Instant,
    /// Denials not written since then.
    suppressed: u64,
}

impl DenialLog {
    /// `Some(suppressed)` when this denial is to be written (with the
    /// number left out before it); `None` when it only counts.
    pub(super) fn admit(&self, peer: Option<IpAddr>, reason: &'static str) -> Option<u64> {
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
    pub(super) fn new() -> Self {
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
