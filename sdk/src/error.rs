//! The error a task returns, and whether the host retries it.
//!
//! See [`ErrorKind`] for which errors are permanent.

use std::fmt;

use crate::bindings::sluice::task::types::{ErrorKind as WitErrorKind, TaskError};
use crate::sql::SqlError;

/// Whether a failure is worth retrying.
///
/// A task's error has a kind: [`ErrorKind::Permanent`] fails the task at once,
/// [`ErrorKind::Retryable`] lets the host try again if the task has retries
/// left. Errors of host calls ([`SqlError`], and the [`Error`] of connection
/// calls) carry the kind the host decided, since only the host knows their
/// cause; `?` keeps it in the task's error. The host decides:
///
/// | Failure | Kind |
/// |---|---|
/// | connection not granted to the task in its manifest | permanent |
/// | connection refused as privileged (no `privileged_connections` opt-in) | permanent |
/// | connection misconfigured (wrong type, unknown `sslmode`, unreadable `sslrootcert`) | permanent |
/// | SQL that does not parse or bind (DuckDB parser, syntax, binder, catalog, parameter, dependency, not implemented) | permanent |
/// | SQL refused by the sandbox (DuckDB permission, missing extension, autoloading) | permanent |
/// | a request past a cap (`query-json` over 16 MiB, 64 open cursors, a listing over its bytes) | permanent |
/// | a staging path outside staging, an invalid object key | permanent |
/// | Postgres: SQLSTATE classes `0A` (not supported), `28` (authentication), `3D`/`3F` (no such database or schema), `42` (syntax, undefined object, no privilege), `54` (program limit) | permanent |
/// | a PostgreSQL type that `extract` or `copy-in` does not support | permanent |
/// | object store: permission denied, unauthenticated, not supported, invalid path | permanent |
/// | a connection refused, dropped or timed out (network, I/O, TLS) | retryable |
/// | DuckDB interrupted, out of memory, I/O | retryable |
/// | data errors (DuckDB conversion, constraint, out of range, invalid input; other SQLSTATEs) | retryable |
/// | anything else the host cannot tell apart | retryable |
///
/// The SDK's own errors: parameters or an upstream output that do not decode,
/// a missing upstream output, and a query result that does not decode into
/// the requested type are permanent; I/O errors (WASI files) and a query with
/// no row for [`crate::Sql::query_one`] are retryable. An error the task makes
/// from a string is retryable; say [`Error::permanent`] when retrying cannot help.
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

    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
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

impl From<WitErrorKind> for ErrorKind {
    fn from(kind: WitErrorKind) -> Self {
        match kind {
            WitErrorKind::Retryable => Self::Retryable,
            WitErrorKind::Permanent => Self::Permanent,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Keeps the kind the host gave the SQL error.
impl From<SqlError> for Error {
    fn from(err: SqlError) -> Self {
        Self::new(err.kind(), format!("SQL error: {}", err.message()))
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
