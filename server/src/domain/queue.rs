//! Queue names: validated once at the edge, then cheap to clone everywhere.

use std::fmt;
use std::sync::Arc;

/// The longest queue name accepted.
pub const MAX_QUEUE_NAME_LEN: usize = 128;

/// A validated queue name: 1 to 128 characters of `[A-Za-z0-9._:-]`, starting
/// with a letter or digit.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(Arc<str>);

impl QueueName {
    /// Validates `name`, explaining what to fix when it is refused.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("queue name is empty; give a name such as \"emails\"".into());
        }
        if name.len() > MAX_QUEUE_NAME_LEN {
            return Err(format!(
                "queue name is {} bytes long; the limit is {MAX_QUEUE_NAME_LEN}",
                name.len()
            ));
        }
        if !name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        {
            return Err(format!(
                "queue name {name:?} must start with a letter or digit"
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(format!(
                "queue name {name:?} contains {bad:?}; use only letters, digits, '.', '_', ':' and '-'"
            ));
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        assert!(QueueName::parse("upper").is_ok());
        assert!(QueueName::parse("a.b_c:d-e9").is_ok());
        assert!(QueueName::parse("").unwrap_err().contains("empty"));
        assert!(QueueName::parse("-x").unwrap_err().contains("start with"));
        assert!(QueueName::parse("a b").unwrap_err().contains("' '"));
        assert!(
            QueueName::parse(&"q".repeat(129))
                .unwrap_err()
                .contains("limit")
        );
    }
}
