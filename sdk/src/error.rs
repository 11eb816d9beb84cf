//! The error a task returns.

use std::fmt;

use crate::bindings::sluice::task::types::{ErrorKind as WitErrorKind, TaskError};
use crate::sql::SqlError;

/// Whether a failure is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The host may retry the task if it has tries left (the default).
    Retryable,
    /// Retrying cannot help; the host fails the task at once.
    Permanent,
}

/// A task failure: a kind and a human-readable message.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// The result type of task functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A failure that may succeed on a later try.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            message: message.into(),
        }
    }

    /// A failure that no retry can fix (bad parameters, missing input, ...).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn into_wit(self) -> TaskError {
        let kind = match self.kind {
            ErrorKind::Retryable => WitErrorKind::Retryable,
            ErrorKind::Permanent => WitErrorKind::Permanent,
        };
        TaskError {
            kind,
            message: self.message,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<SqlError> for Error {
    fn from(err: SqlError) -> Self {
        Self::retryable(format!("SQL error: {}", err.message()))
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Self::permanent(format!("JSON error: {err}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Self::retryable(format!("I/O error: {err}"))
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self::retryable(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self::retryable(message)
    }
}
