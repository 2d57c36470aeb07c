//! Store failures, typed: what kind (unreachable, unreadable, full), a hint
//! for the caller, and the cause for the log. A client sees the kind, the
//! hint and an error id; the cause (a path, Redis's words, an OS error)
//! goes to the log once, where the failure is handled, under the same id.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// What went wrong with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// It cannot be reached or written right now: the same call may
    /// succeed if tried again.
    Unavailable,
    /// Stored data cannot be read back: retrying will not help.
    Corrupt,
    /// It has no room (disk or memory): writes fail until room is made.
    Full,
}

impl StoreErrorKind {
    fn describe(self) -> &'static str {
        match self {
            Self::Unavailable => "store unavailable",
            Self::Corrupt => "stored data unreadable",
            Self::Full => "store full",
        }
    }
}

/// Names one failure in answers and in the log, so an operator can find
/// the detail behind what a client reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorId(u32);

impl ErrorId {
    /// A fresh id.
    pub fn new() -> Self {
        Self(rand::random())
    }

    /// The id as a number, to keep in an atomic.
    pub(crate) fn bits(self) -> u32 {
        self.0
    }

    /// An id kept as a number.
    pub(crate) fn from_bits(bits: u32) -> Self {
        Self(bits)
    }
}

impl Default for ErrorId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ErrorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// A store failure. Cheap to clone: one failed commit answers every caller
/// that waited for it, all with the same id.
#[derive(Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    hint: Cow<'static, str>,
    id: ErrorId,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A failure of `kind`; `hint` says what the caller can do, in words
    /// safe to show anyone.
    pub fn new(kind: StoreErrorKind, hint: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            hint: hint.into(),
            id: ErrorId::new(),
            source: None,
        }
    }

    /// The store cannot be reached or written right now.
    pub fn unavailable(hint: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StoreErrorKind::Unavailable, hint)
    }

    /// Stored data cannot be read back.
    pub fn corrupt(hint: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StoreErrorKind::Corrupt, hint)
    }

    /// With its cause, for the log.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// With this id: failures logged as one (a burst of Redis errors within
    /// a second) share it.
    pub fn with_id(mut self, id: ErrorId) -> Self {
        self.id = id;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The id in the answer and the log line.
    pub fn id(&self) -> ErrorId {
        self.id
    }

    /// The cause, as the log shows it (with its own causes).
    pub fn cause(&self) -> Option<String> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = self
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        let mut words = Vec::new();
        while let Some(error) = source {
            words.push(error.to_string());
            source = error.source();
        }
        (!words.is_empty()).then(|| words.join(": "))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (error {})",
            self.kind.describe(),
            self.hint,
            self.id
        )
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreError")
            .field("kind", &self.kind)
            .field("hint", &self.hint)
            .field("id", &self.id.to_string())
            .field("cause", &self.cause())
            .finish()
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_sees_the_kind_the_hint_and_the_id_but_not_the_cause() {
        let cause = std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "No space left on device (/var/lib/asyncgate/x.redb)",
        );
        let error = StoreError::new(StoreErrorKind::Full, "free disk space; writes resume then")
            .with_source(cause);
        let shown = error.to_string();
        assert_eq!(
            shown,
            format!(
                "store full: free disk space; writes resume then (error {})",
                error.id()
            )
        );
        assert!(!shown.contains("/var/lib"), "{shown}");
        assert!(error.cause().unwrap().contains("/var/lib"));
        assert_eq!(error.id().to_string().len(), 8);
        let again = error.clone();
        assert_eq!(again.id(), error.id());
        assert_ne!(StoreError::unavailable("x").id(), error.id());
    }
}
