//! SQL in the task's DuckDB session.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::bindings::sluice::task::sql as wit;
use crate::error::ErrorKind;

/// A DuckDB error as reported by the host, with whether a later try can
/// succeed (see [`ErrorKind`] for which errors are permanent).
#[derive(Debug, Clone)]
pub struct SqlError {
    kind: ErrorKind,
    message: String,
}

impl SqlError {
    /// DuckDB's message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the error is permanent or retryable.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqlError {}

impl From<wit::SqlError> for SqlError {
    fn from(err: wit::SqlError) -> Self {
        Self {
            kind: err.kind.into(),
            message: err.message,
        }
    }
}

/// The task's DuckDB session. File access is confined to the staging directory.
#[derive(Debug, Default)]
pub struct Sql {
    _private: (),
}

impl Sql {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }

    /// Runs one statement; returns the rows it changed (or wrote, for `COPY`).
    pub fn execute(&self, statement: &str) -> Result<u64, SqlError> {
        Ok(wit::execute(statement)?)
    }

    /// Runs a query and streams its result as Arrow IPC batches.
    pub fn query(&self, statement: &str) -> Result<Cursor, SqlError> {
        Ok(Cursor {
            inner: wit::query(statement)?,
        })
    }

    /// Runs a query and decodes at most `max_rows` rows into `T` (via JSON). The
    /// host refuses a result over 16 MiB of JSON: use [`Sql::query`] for large ones.
    pub fn query_rows<T: DeserializeOwned>(
        &self,
        statement: &str,
        max_rows: u32,
    ) -> Result<Vec<T>, SqlError> {
        let json = wit::query_json(statement, max_rows)?;
        // The statement's columns do not fit `T`: the same on every try.
        serde_json::from_str(&json).map_err(|e| SqlError {
            kind: ErrorKind::Permanent,
            message: format!("result does not decode: {e}"),
        })
    }

    /// Runs a query and returns its first row decoded into `T`.
    pub fn query_one<T: DeserializeOwned>(&self, statement: &str) -> Result<T, SqlError> {
        self.query_rows(statement, 1)?
            .into_iter()
            .next()
            // The data may be there at a later try.
            .ok_or_else(|| SqlError {
                kind: ErrorKind::Retryable,
                message: "query returned no rows".into(),
            })
    }
}

/// A streaming query result. Each batch is a self-contained Arrow IPC stream
/// that `arrow_ipc::reader::StreamReader` can decode.
#[derive(Debug)]
pub struct Cursor {
    inner: wit::Cursor,
}

impl Cursor {
    /// The result's schema as an Arrow IPC stream without batches.
    pub fn schema_ipc(&self) -> Vec<u8> {
        self.inner.schema()
    }

    /// The next batch, or `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<Vec<u8>>, SqlError> {
        Ok(self.inner.next_batch()?)
    }
}

/// Quotes `value` as a SQL string literal: `it's` becomes `'it''s'`.
pub fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
