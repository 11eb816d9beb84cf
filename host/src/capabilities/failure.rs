//! Why a connection call failed and whether a later try can succeed: what
//! becomes the guest's `connection-error` once its message is redacted.

use crate::bindings::sluice::task::types::ErrorKind;

use super::sql::SqlError;

/// A failed connection call: its message (not yet redacted) and its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Permanent when no later try of the same request can succeed.
    pub kind: ErrorKind,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    /// A failure a later try may not meet (the network, the server, the data).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            message: message.into(),
        }
    }

    /// A failure of the request or the configuration, the same on every try.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }

    /// The same failure with `context` before its message.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        Self {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }
}

/// A DuckDB error in a transfer keeps the kind the session gave it.
impl From<SqlError> for Failure {
    fn from(e: SqlError) -> Self {
        Self {
            kind: e.kind,
            message: e.message,
        }
    }
}
