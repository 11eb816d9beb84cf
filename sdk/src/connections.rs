//! Connections granted to the task in its manifest (`connections = ["id"]`).
//! The host holds the credentials and moves the data; the task only names
//! tables and queries.

use crate::bindings::sluice::task::connections as wit;
use crate::error::{Error, Result};

/// A PostgreSQL connection opened by the host.
#[derive(Debug)]
pub struct Postgres {
    inner: wit::Postgres,
}

/// Keeps the kind the host gave the connection error.
fn error(e: wit::ConnectionError) -> Error {
    Error::new(e.kind.into(), e.message)
}

impl Postgres {
    /// Opens connection `id`; fails unless the manifest grants it to this task.
    pub fn open(id: &str) -> Result<Self> {
        Ok(Self {
            inner: wit::open_postgres(id).map_err(error)?,
        })
    }

    /// Runs one statement on the server (DDL, TRUNCATE, ...); returns rows changed.
    pub fn execute(&self, statement: &str) -> Result<u64> {
        self.inner.execute(statement).map_err(error)
    }

    /// Loads the result of a DuckDB `query` into Postgres `table` (binary COPY,
    /// one transaction, columns matched by name); returns rows loaded.
    pub fn copy_in(&self, table: &str, query: &str) -> Result<u64> {
        self.inner.copy_in(table, query).map_err(error)
    }

    /// Runs a Postgres `query` and stores its result as DuckDB table `table`
    /// (replacing it); returns rows extracted.
    pub fn extract(&self, query: &str, table: &str) -> Result<u64> {
        self.inner.extract(query, table).map_err(error)
    }
}

/// A bucket of an S3-compatible object store opened by the host. Files are
/// paths in the run's staging directory.
#[derive(Debug)]
pub struct Bucket {
    inner: wit::Bucket,
}

impl Bucket {
    /// Opens connection `id`; fails unless the manifest grants it to this task.
    pub fn open(id: &str) -> Result<Self> {
        Ok(Self {
            inner: wit::open_bucket(id).map_err(error)?,
        })
    }

    /// Uploads `staging_file` as `key` (multipart when large); returns bytes sent.
    pub fn put(&self, staging_file: &str, key: &str) -> Result<u64> {
        self.inner.put(staging_file, key).map_err(error)
    }

    /// Downloads `key` into `staging_file`; returns bytes received.
    pub fn get(&self, key: &str, staging_file: &str) -> Result<u64> {
        self.inner.get(key, staging_file).map_err(error)
    }

    /// Keys under `prefix`, sorted.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list_keys(prefix).map_err(error)
    }
}
