//! The metadatabase: SQLite in WAL mode, so CLI readers never block a running
//! scheduler. [`Store`] is one handle; each table family is a module with its
//! records, its tables and its `impl Store` block:
//!
//! - [`versions`]: deployed DAG versions and which one is current;
//! - [`runs`]: runs, their task instances and tries, and the scheduler's
//!   interval lookups;
//! - [`logs`]: task log lines;
//! - [`volumes`]: run staging directories and what became of them;
//! - [`connections`]: connections (secrets sealed) and the vault's check value;
//! - [`trust`]: signatures, trusted keys and the signature policy;
//! - [`tokens`]: API tokens of `sluice serve` and its web UI's sessions (hashed).
//!
//! States and run types are stored by their names (see [`crate::state`]); a
//! stored value that does not decode is a [`StoreError::Corrupt`] naming the
//! table, the row and the value.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{Connection, Row, ToSql};

use crate::state::{RunState, RunType, TaskState, VolumeState};

pub mod connections;
pub mod logs;
pub mod runs;
pub mod tokens;
pub mod trust;
pub mod versions;
pub mod volumes;

pub use connections::{Sealed, StoredConnection};
pub use logs::{LogRecord, NewLog};
pub use runs::{IntervalRuns, RunRecord, TaskRecord, TryRecord};
pub use tokens::{SessionRecord, TokenRecord};
pub use versions::VersionRecord;
pub use volumes::VolumeRecord;

/// A metadatabase error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("metadatabase: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value does not decode.
    #[error("metadatabase table `{table}`, row {row}: {detail}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The row's key.
        row: String,
        /// The column and the value, and why it does not decode.
        detail: String,
    },
    /// A value could not be encoded for storage.
    #[error("metadatabase: cannot encode {what}: {source}")]
    Encode {
        /// What was being stored.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The metadatabase was written by an incompatible version of sluice.
    #[error("metadatabase: {0}")]
    Incompatible(String),
    /// Something asked for does not exist.
    #[error("{0}")]
    NotFound(String),
}

type Result<T> = std::result::Result<T, StoreError>;

/// The statement batches that bring a metadatabase of version `i + 1` to
/// version `i + 2`. The tables' `SCHEMA`s describe the latest version; a home
/// made by an older sluice is upgraded in place, keeping its rows.
const MIGRATIONS: &[&[&str]] = &[
    // 2: how the host threads of each try were confined.
    &["ALTER TABLE task_tries ADD COLUMN sandbox TEXT;"],
    // 3: indexes for the lookups that used to read every row.
    &[runs::INDEXES_V3, volumes::INDEXES_V3],
    // 4: API tokens of `sluice serve`.
    &[tokens::SCHEMA],
    // 5: sessions of its web UI.
    &[tokens::SESSIONS],
    // 6: runs in one state, newest first.
    &[runs::INDEXES_V6],
];

/// The version the tables' `SCHEMA`s describe: the first, plus one per migration.
const SCHEMA_VERSION: u32 = 1 + MIGRATIONS.len() as u32;

/// Every table family's tables and indexes, at [`SCHEMA_VERSION`].
const SCHEMAS: &[&str] = &[
    versions::SCHEMA,
    runs::SCHEMA,
    runs::INDEXES_V3,
    runs::INDEXES_V6,
    logs::SCHEMA,
    volumes::SCHEMA,
    volumes::INDEXES_V3,
    connections::SCHEMA,
    trust::SCHEMA,
    tokens::SCHEMA,
    tokens::SESSIONS,
];

/// Whether the metadatabase is new or older than this sluice (so `open` must
/// write its schema).
fn fresh_or_old(conn: &Connection) -> Result<bool> {
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let fresh: bool = conn.query_row("SELECT count(*) = 0 FROM sqlite_master", [], |r| r.get(0))?;
    Ok(fresh || version != SCHEMA_VERSION)
}

/// The metadatabase handle. Cheap operations; one connection behind a mutex.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the metadatabase at `path`, upgrading one
    /// made by an older sluice in place.
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Up to date (the common case, and every worker process): no write.
        if !fresh_or_old(&conn)? {
            return Ok(Self {
                conn: Mutex::new(conn),
            });
        }
        // Creating or upgrading takes the write lock first (waiting as long as
        // the busy timeout), so two processes opening a home at once cannot
        // both read the old version and then fail to upgrade.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let fresh: bool =
            tx.query_row("SELECT count(*) = 0 FROM sqlite_master", [], |r| r.get(0))?;
        if !fresh && (1..SCHEMA_VERSION).contains(&version) {
            for batch in MIGRATIONS[version as usize - 1..].iter().copied().flatten() {
                tx.execute_batch(batch)?;
            }
        } else if !fresh && version != SCHEMA_VERSION {
            return Err(StoreError::Incompatible(format!(
                "{} has schema version {version}; this sluice uses version {SCHEMA_VERSION} \
                 (no migration exists: use a new SLUICE_HOME)",
                path.display()
            )));
        }
        for schema in SCHEMAS {
            tx.execute_batch(schema)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut conn)
    }
}

/// How timestamps are stored: RFC 3339, UTC, microseconds. Fixed width, so
/// stored timestamps compare in SQL as they do in time.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A stored timestamp, decoded.
struct Stamp(DateTime<Utc>);

impl FromSql for Stamp {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        DateTime::parse_from_rfc3339(text)
            .map(|t| Self(t.with_timezone(&Utc)))
            .map_err(|e| {
                FromSqlError::Other(format!("`{text}` is not an RFC 3339 timestamp: {e}").into())
            })
    }
}

/// A stored name that names no value of its type.
#[derive(Debug, thiserror::Error)]
#[error("`{value}` is not a {kind}")]
struct UnknownName {
    kind: &'static str,
    value: String,
}

/// Stores an enum of [`crate::state`] by its name.
macro_rules! stored_by_name {
    ($($ty:ident => $kind:literal),* $(,)?) => {$(
        impl ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $ty {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let name = value.as_str()?;
                $ty::parse(name).ok_or_else(|| {
                    FromSqlError::Other(Box::new(UnknownName {
                        kind: $kind,
                        value: name.to_owned(),
                    }))
                })
            }
        }
    )*};
}

stored_by_name!(
    RunState => "run state",
    TaskState => "task state",
    RunType => "run type",
    VolumeState => "volume state",
);

/// One row being decoded: a value that does not decode is a
/// [`StoreError::Corrupt`] naming the table, this row and the column.
struct Fields<'r> {
    row: &'r Row<'r>,
    table: &'static str,
    key: String,
}

impl<'r> Fields<'r> {
    /// Row `row` of `table`, whose key is read from the columns `key` (joined by `/`).
    fn new(row: &'r Row<'r>, table: &'static str, key: &[usize]) -> Result<Self> {
        let mut parts = Vec::with_capacity(key.len());
        for &idx in key {
            parts.push(match row.get_ref(idx)? {
                ValueRef::Text(text) => String::from_utf8_lossy(text).into_owned(),
                ValueRef::Integer(i) => i.to_string(),
                ValueRef::Real(r) => r.to_string(),
                ValueRef::Null => "NULL".to_owned(),
                ValueRef::Blob(_) => "<blob>".to_owned(),
            });
        }
        Ok(Self {
            row,
            table,
            key: format!("`{}`", parts.join("/")),
        })
    }

    /// Column `idx`, decoded.
    fn get<T: FromSql>(&self, idx: usize) -> Result<T> {
        self.row.get(idx).map_err(|e| match e {
            rusqlite::Error::FromSqlConversionFailure(_, _, cause) => {
                self.corrupt(idx, cause.to_string())
            }
            rusqlite::Error::InvalidColumnType(_, _, found) => {
                self.corrupt(idx, format!("holds a {found} value"))
            }
            rusqlite::Error::IntegralValueOutOfRange(_, value) => {
                self.corrupt(idx, format!("`{value}` is out of range"))
            }
            other => StoreError::Sqlite(other),
        })
    }

    /// Column `idx`, a timestamp.
    fn ts(&self, idx: usize) -> Result<DateTime<Utc>> {
        Ok(self.get::<Stamp>(idx)?.0)
    }

    /// Column `idx`, a timestamp or NULL.
    fn opt_ts(&self, idx: usize) -> Result<Option<DateTime<Utc>>> {
        Ok(self.get::<Option<Stamp>>(idx)?.map(|s| s.0))
    }

    /// Column `idx`, a JSON document.
    fn json<T: serde::de::DeserializeOwned>(&self, idx: usize) -> Result<T> {
        let text: String = self.get(idx)?;
        serde_json::from_str(&text).map_err(|e| self.corrupt(idx, e.to_string()))
    }

    fn corrupt(&self, idx: usize, why: String) -> StoreError {
        let column = self.row.as_ref().column_name(idx).unwrap_or("?");
        StoreError::Corrupt {
            table: self.table,
            row: self.key.clone(),
            detail: format!("column `{column}`: {why}"),
        }
    }
}

/// Runs `sql` with `params` and decodes every row with `decode`. Every
/// lookup of the store goes through here (so unit tests can check its plan).
fn query_all<T>(
    c: &Connection,
    sql: &str,
    params: &[&dyn ToSql],
    decode: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    #[cfg(test)]
    tests::record_plan(c, sql, params)?;
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode(row)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
