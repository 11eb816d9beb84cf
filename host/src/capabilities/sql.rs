//! The `sql` capability: one DuckDB database per task instance, locked to the
//! run's staging directory before the guest can say anything.
//!
//! DuckDB statements borrow their connection and are not `Send`, while wasmtime
//! store data must be; so the session lives on its own thread and host calls
//! reach it over a channel. The thread owns the connection and the open cursors.
//! The session's thread starts at its first SQL call and takes a fresh
//! database (opened ahead of time, with no DuckDB threads of its own); the
//! thread then confines itself to staging with the kernel ([`crate::confine`])
//! and only then sets the task's thread counts, which makes DuckDB launch its
//! worker pools from the confined thread: every thread that runs a task's
//! statement is confined.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use duckdb::arrow::array::RecordBatch;
use duckdb::arrow::datatypes::Schema;
use duckdb::{Config, Connection, InterruptHandle, Statement};

use crate::bindings::sluice::task::types::ErrorKind;

/// Open cursors per session; more is a guest error, not host memory growth.
pub const MAX_OPEN_CURSORS: usize = 64;

/// Largest Arrow batch (in memory) that one `next-batch` hands a guest. DuckDB's
/// chunks (2,048 rows) of wide rows are sent in row slices, so a guest with
/// little linear memory can still walk a wide result; only a single row larger
/// than its memory makes it trap.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// Settings of a task's DuckDB database.
#[derive(Debug, Clone)]
pub struct SqlConfig {
    /// The run's staging directory (canonical); the only place files may be read or written.
    pub staging_dir: PathBuf,
    /// `memory_limit` in bytes.
    pub memory_limit: u64,
    /// Worker threads.
    pub threads: u32,
    /// `max_temp_directory_size` in bytes.
    pub spill_limit: u64,
    /// How the session's thread (and so DuckDB's threads) is confined.
    pub sandbox: crate::confine::Sandbox,
}

/// An error from the session: DuckDB's message, or why the session is gone;
/// and whether a later try can succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    /// Permanent when the statement or the request cannot succeed on any try.
    pub kind: ErrorKind,
    /// What went wrong.
    pub message: String,
}

impl SqlError {
    /// An error a later try may not meet (the session's state, the machine).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            message: message.into(),
        }
    }

    /// An error of the request itself, the same on every try.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }
}

/// DuckDB's error types (the `<type> Error: ` its messages start with, from
/// `Exception::ExceptionTypeToString`) that no later try can fix: the
/// statement does not parse or bind against the session's catalog (which each
/// try builds afresh), or asks what the locked-down session never allows.
/// Every other type is retryable: interrupts, out of memory, I/O, and data
/// errors (conversion, constraint, out of range, invalid input), whose data
/// may differ at a later try.
const PERMANENT_DUCKDB_ERRORS: [&str; 11] = [
    "Parser",
    "Syntax",
    "Binder",
    "Catalog",
    "Parameter Not Resolved",
    "Parameter Not Allowed",
    "Not implemented",
    "Dependency",
    "Permission",
    "Missing Extension",
    "Extension Autoloading",
];

/// The kind of a DuckDB error, from the error type its message starts with.
/// (duckdb-rs keeps DuckDB's message but not its `duckdb_error_type`.)
fn duckdb_kind(message: &str) -> ErrorKind {
    match message.split_once(" Error: ") {
        Some((error_type, _)) if PERMANENT_DUCKDB_ERRORS.contains(&error_type) => {
            ErrorKind::Permanent
        }
        _ => ErrorKind::Retryable,
    }
}

impl From<duckdb::Error> for SqlError {
    fn from(e: duckdb::Error) -> Self {
        let message = e.to_string();
        let kind = match e {
            duckdb::Error::DuckDBFailure(..) => duckdb_kind(&message),
            // Refused by duckdb-rs before DuckDB runs it: a statement with
            // parameters (a task binds none) or with a NUL byte.
            duckdb::Error::InvalidParameterCount(..) | duckdb::Error::NulError(_) => {
                ErrorKind::Permanent
            }
            _ => ErrorKind::Retryable,
        };
        Self { kind, message }
    }
}

impl From<duckdb::arrow::error::ArrowError> for SqlError {
    fn from(e: duckdb::arrow::error::ArrowError) -> Self {
        Self::retryable(format!("Arrow encoding: {e}"))
    }
}

type Reply<T> = mpsc::SyncSender<Result<T, SqlError>>;

enum Request {
    Execute(String, Reply<u64>),
    Query(String, Reply<(u32, Vec<u8>)>),
    NextBatch(u32, Reply<Option<Vec<u8>>>),
    NextRows(u32, u32, Reply<Option<String>>),
    CloseCursor(u32),
    QueryJson(String, u32, Reply<String>),
    /// Streams a query's batches to the host (bounded by the channel).
    Stream(String, mpsc::SyncSender<Result<RecordBatch, SqlError>>),
    /// Runs `create`, then appends the batches the host sends to `table` until it hangs up.
    Append {
        create: String,
        table: String,
        batches: mpsc::Receiver<RecordBatch>,
        reply: Reply<u64>,
    },
}

/// Handles to the session's running statement, usable from any thread.
#[derive(Clone)]
pub struct SqlHandles {
    /// Interrupts the statement running now.
    pub interrupt: Arc<InterruptHandle>,
    /// DuckDB's progress estimate for the statement running now.
    pub progress: duckdb::ProgressHandle,
}

/// The sender of batches to append, and the receiver of the rows appended.
pub type AppendChannels = (
    mpsc::SyncSender<RecordBatch>,
    mpsc::Receiver<Result<u64, SqlError>>,
);

/// Where a session publishes its [`SqlHandles`] once its database is open.
pub type SharedHandles = Arc<std::sync::Mutex<Option<SqlHandles>>>;

/// A task instance's DuckDB session. The database is opened (and locked down)
/// at the first SQL call, so tasks that use no SQL pay nothing for it.
/// [`SqlSession::close`] hands back the thread that closes the database, so
/// the caller decides when to wait for it.
pub struct SqlSession {
    pool: Arc<SqlPool>,
    config: SqlConfig,
    requests: Option<mpsc::Sender<Request>>,
    handles: SharedHandles,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SqlSession {
    /// A session that will take a fresh database from `pool` and lock it down with `config`.
    pub fn new(pool: Arc<SqlPool>, config: SqlConfig) -> Self {
        Self {
            pool,
            config,
            requests: None,
            handles: SharedHandles::default(),
            thread: None,
        }
    }

    /// Where the interrupt and progress handles appear once the database is open.
    pub fn handles(&self) -> SharedHandles {
        self.handles.clone()
    }

    /// Opens the database on its own confined thread, if not yet done.
    fn requests(&mut self) -> Result<&mpsc::Sender<Request>, SqlError> {
        if self.requests.is_none() {
            let fresh = self.pool.take();
            let config = self.config.clone();
            let (requests, inbox) = mpsc::channel::<Request>();
            let (ready_tx, ready_rx) = mpsc::sync_channel(1);
            let thread = std::thread::Builder::new()
                .name("sluice-sql".into())
                .spawn(move || {
                    let opened = fresh.and_then(|conn| {
                        config
                            .sandbox
                            .confine_current_thread(&config.staging_dir)
                            .map_err(|e| SqlError::retryable(e.to_string()))?;
                        lock_down(conn, &config)
                    });
                    let conn = match opened {
                        Ok(conn) => conn,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let handles = SqlHandles {
                        interrupt: conn.interrupt_handle(),
                        progress: conn.progress_handle(),
                    };
                    let _ = ready_tx.send(Ok(handles));
                    serve(&conn, &inbox);
                })
                .map_err(|e| SqlError::retryable(format!("cannot start the SQL thread: {e}")))?;
            let handles = ready_rx.recv().map_err(|_| {
                SqlError::retryable("the SQL thread stopped while opening DuckDB")
            })??;
            *self
                .handles
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handles);
            self.requests = Some(requests);
            self.thread = Some(thread);
        }
        self.requests
            .as_ref()
            .ok_or_else(|| SqlError::retryable("the SQL session is closed"))
    }

    fn call<T>(&mut self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, SqlError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.requests()?
            .send(make(tx))
            .map_err(|_| SqlError::retryable("the SQL session is closed"))?;
        rx.recv()
            .map_err(|_| SqlError::retryable("the SQL session stopped"))?
    }

    /// Runs one statement; returns the rows it changed.
    pub fn execute(&mut self, sql: &str) -> Result<u64, SqlError> {
        self.call(|r| Request::Execute(sql.to_owned(), r))
    }

    /// Starts a streaming query; returns the cursor id and the schema as Arrow IPC.
    pub fn query(&mut self, sql: &str) -> Result<(u32, Vec<u8>), SqlError> {
        self.call(|r| Request::Query(sql.to_owned(), r))
    }

    /// The next batch of a cursor as an Arrow IPC stream, or `None` at the end.
    pub fn next_batch(&mut self, cursor: u32) -> Result<Option<Vec<u8>>, SqlError> {
        self.call(|r| Request::NextBatch(cursor, r))
    }

    /// The next rows of a cursor (at most `max_rows`, at most one batch) as a
    /// JSON array of objects, or `None` at the end.
    pub fn next_rows(&mut self, cursor: u32, max_rows: u32) -> Result<Option<String>, SqlError> {
        self.call(|r| Request::NextRows(cursor, max_rows, r))
    }

    /// Releases a cursor.
    pub fn close_cursor(&self, cursor: u32) {
        if let Some(requests) = &self.requests {
            let _ = requests.send(Request::CloseCursor(cursor));
        }
    }

    /// Streams the batches of `sql` to the caller, at most `depth` in flight.
    pub fn stream(
        &mut self,
        sql: &str,
        depth: usize,
    ) -> Result<mpsc::Receiver<Result<RecordBatch, SqlError>>, SqlError> {
        let (tx, rx) = mpsc::sync_channel(depth);
        self.requests()?
            .send(Request::Stream(sql.to_owned(), tx))
            .map_err(|_| SqlError::retryable("the SQL session is closed"))?;
        Ok(rx)
    }

    /// Runs `create` (which makes `table`), then appends every batch sent on the
    /// returned sender, at most `depth` in flight. Drop the sender, then read the
    /// receiver for the rows appended.
    pub fn append(
        &mut self,
        create: &str,
        table: &str,
        depth: usize,
    ) -> Result<AppendChannels, SqlError> {
        let (batches_tx, batches) = mpsc::sync_channel(depth);
        let (reply, done) = mpsc::sync_channel(1);
        self.requests()?
            .send(Request::Append {
                create: create.to_owned(),
                table: table.to_owned(),
                batches,
                reply,
            })
            .map_err(|_| SqlError::retryable("the SQL session is closed"))?;
        Ok((batches_tx, done))
    }

    /// Runs a query and returns at most `max_rows` rows as a JSON array of objects.
    pub fn query_json(&mut self, sql: &str, max_rows: u32) -> Result<String, SqlError> {
        self.call(|r| Request::QueryJson(sql.to_owned(), max_rows, r))
    }
}

impl SqlSession {
    /// Stops what runs and closes the database; returns the thread doing the
    /// closing (none if the database was never opened). Join it before deleting
    /// the staging directory.
    pub fn close(mut self) -> Option<std::thread::JoinHandle<()>> {
        self.stop();
        self.thread.take()
    }

    fn stop(&mut self) {
        // Stop whatever runs; closing the channel ends the thread, which closes the database.
        if let Some(handles) = self
            .handles
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
        {
            handles.interrupt.interrupt();
        }
        self.requests.take();
    }
}

impl Drop for SqlSession {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Opens a database with the options that only take effect at start-up:
/// no extension autoload or autoinstall, no community extensions, no persistent
/// secrets; and no threads of DuckDB's own (one thread, the caller's, and no
/// async I/O threads), so that the thread that will serve a task can confine
/// itself before any DuckDB thread exists. DuckDB reads `/proc/self/cgroup`
/// here to size its allocator, and aborts the process if it cannot: the open
/// must happen outside the confinement. It has run nothing.
pub(crate) fn open_fresh() -> Result<Connection, SqlError> {
    let options = Config::default()
        .enable_autoload_extension(false)?
        .with("autoinstall_known_extensions", "false")?
        .with("allow_community_extensions", "false")?
        .with("allow_persistent_secrets", "false")?
        .threads(1)?
        .with("async_threads", "0")?
        // A fixed HTTP client pool (there is no HTTP without extensions):
        // sizing it automatically reads cgroups, at every thread-count change.
        .with("http_client_pool_capacity", "1")?;
    Ok(Connection::open_in_memory_with_flags(options)?)
}

/// DuckDB's async I/O threads for a task's session: none, so files are
/// written by the statement's own threads. With them (DuckDB's default is
/// four per worker thread), a `COPY` stopped mid-write (its staging limit
/// reached, its deadline passed, a disk error) can deadlock DuckDB 2.0: the
/// aborting thread drains the async writer's tasks while holding the
/// stream queue's lock, and a finishing write task waits for that lock
/// (`AsyncFileWriter::AbortWrite` → `TaskExecutor::DrainTasks` against
/// `ManagedAsyncWriteStreamQueue::SchedulePendingWritesInternal`; seen in
/// `limits::a_task_filling_staging_is_stopped_at_its_staging_limit`).
const ASYNC_THREADS: u32 = 0;

/// Applies the task's limits and threads (DuckDB launches its worker pools
/// from the calling thread, at the end of the statement that changes their
/// size), confines file access to staging, then locks the configuration.
/// Options set after the lock fail.
pub(crate) fn lock_down(conn: Connection, config: &SqlConfig) -> Result<Connection, SqlError> {
    conn.set_query_progress_tracking(true)?;
    let staging = dir_with_slash(&config.staging_dir)?;
    let temp = config.staging_dir.join(".duckdb_tmp");
    let temp = temp
        .to_str()
        .ok_or_else(|| SqlError::retryable("staging path is not UTF-8"))?;
    // `~` means staging, and the (unused) secret directory is there too: no
    // setting shows the host user's home.
    let secrets = config.staging_dir.join(".duckdb_secrets");
    let secrets = secrets
        .to_str()
        .ok_or_else(|| SqlError::retryable("staging path is not UTF-8"))?;
    conn.execute_batch(&format!(
        "SET memory_limit = '{memory}B';
         SET max_temp_directory_size = '{spill}B';
         SET threads = {threads};
         SET async_threads = {async_threads};
         SET allowed_directories = [{staging}];
         SET temp_directory = {temp};
         SET home_directory = {home};
         SET secret_directory = {secrets};
         SET enable_external_access = false;
         SET lock_configuration = true;",
        memory = config.memory_limit,
        spill = config.spill_limit,
        threads = config.threads,
        async_threads = ASYNC_THREADS,
        staging = literal(&staging),
        temp = literal(temp),
        home = literal(staging.trim_end_matches('/')),
        secrets = literal(secrets),
    ))?;
    Ok(conn)
}

/// Fresh DuckDB databases opened ahead of time (opening one costs ~11 ms, the
/// lockdown about 2 ms). Each database serves exactly one task instance and is
/// never reused; the pool only moves the opening off the critical path. A
/// pooled database has no DuckDB threads yet (see [`open_fresh`]), so the
/// session thread that takes it can still confine every thread that will run
/// the task's statements. A refilling pool's thread starts with the first
/// session (or [`SqlPool::warm`]); an on-demand pool opens at most the one
/// database `warm` asks for ahead. The opening thread is joined when the pool
/// is dropped, so a process never exits while DuckDB is opening a database.
pub struct SqlPool {
    depth: usize,
    state: std::sync::Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    ready: Option<mpsc::Receiver<Result<Connection, SqlError>>>,
    opener: Option<std::thread::JoinHandle<()>>,
}

impl SqlPool {
    /// Keeps up to `depth` fresh databases ready once sessions start.
    pub fn new(depth: usize) -> Self {
        Self {
            depth,
            state: std::sync::Mutex::new(PoolState::default()),
        }
    }

    /// A pool that opens every database on demand, but the one [`SqlPool::warm`]
    /// opens ahead (for a process that serves one try, where refills would
    /// only compete with the try for the CPU).
    pub fn on_demand() -> Self {
        Self::new(0)
    }

    /// Starts opening ahead now, for a session expected soon: a refilling
    /// pool starts its refills; an on-demand pool opens one database, which
    /// the next session waits for rather than opening another.
    pub fn warm(&self) {
        let mut state = self.lock();
        if state.ready.is_none() {
            self.start(&mut state);
        }
    }

    /// A fresh database: a ready one, or one opened now.
    fn take(&self) -> Result<Connection, SqlError> {
        let mut state = self.lock();
        if self.depth == 0 {
            // The database `warm` is opening, if any: it started earlier
            // than one opened now would. It is taken once.
            let ahead = state.ready.take();
            drop(state);
            return match ahead {
                Some(ahead) => ahead.recv().unwrap_or_else(|_| open_fresh()),
                None => open_fresh(),
            };
        }
        if state.ready.is_none() {
            self.start(&mut state);
        }
        let ready = state.ready.as_ref().and_then(|rx| rx.try_recv().ok());
        drop(state);
        ready.unwrap_or_else(open_fresh)
    }

    /// Starts the thread that opens databases ahead: refills up to `depth`,
    /// or one database for an on-demand pool.
    fn start(&self, state: &mut PoolState) {
        // An earlier one-database opener has handed its database over.
        if let Some(done) = state.opener.take() {
            let _ = done.join();
        }
        let (tx, rx) = mpsc::sync_channel(self.depth.max(1));
        let refill = self.depth > 0;
        let opener = std::thread::Builder::new()
            .name("sluice-sql-pool".into())
            .spawn(move || {
                // A refill ends when the pool is dropped (send fails).
                while tx.send(open_fresh()).is_ok() && refill {}
            });
        match opener {
            Ok(opener) => {
                state.opener = Some(opener);
                state.ready = Some(rx);
            }
            // Sessions open their databases themselves then.
            Err(e) => tracing::warn!("cannot start a thread opening DuckDB databases ahead: {e}"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for SqlPool {
    fn drop(&mut self) {
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.ready.take();
        if let Some(opener) = state.opener.take() {
            let _ = opener.join();
        }
    }
}

/// The directory as a string with a trailing slash, so that `/staging/run1` does
/// not also allow `/staging/run10`.
fn dir_with_slash(dir: &Path) -> Result<String, SqlError> {
    let s = dir
        .to_str()
        .ok_or_else(|| SqlError::retryable("staging path is not UTF-8"))?;
    Ok(if s.ends_with('/') {
        s.to_owned()
    } else {
        format!("{s}/")
    })
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The session loop: answers requests until the handle is dropped.
fn serve(conn: &Connection, inbox: &mpsc::Receiver<Request>) {
    let mut cursors: HashMap<u32, Cursor<'_>> = HashMap::new();
    let mut next_id: u32 = 1;
    while let Ok(request) = inbox.recv() {
        match request {
            Request::Execute(sql, reply) => {
                let _ = reply.send(execute(conn, &sql));
            }
            Request::Query(sql, reply) => {
                let opened = if cursors.len() >= MAX_OPEN_CURSORS {
                    Err(SqlError::permanent(format!(
                        "too many open cursors (limit {MAX_OPEN_CURSORS}); drop some first"
                    )))
                } else {
                    open_cursor(conn, &sql)
                };
                let _ = reply.send(opened.map(|(stmt, schema)| {
                    let id = next_id;
                    next_id = next_id.wrapping_add(1);
                    cursors.insert(id, Cursor { stmt, rest: None });
                    (id, schema)
                }));
            }
            Request::NextBatch(id, reply) => {
                let batch = match cursors.get_mut(&id) {
                    None => Err(SqlError::permanent(format!("cursor {id} is closed"))),
                    Some(cursor) => next_batch(cursor),
                };
                let _ = reply.send(batch);
            }
            Request::NextRows(id, max_rows, reply) => {
                let rows = match cursors.get_mut(&id) {
                    None => Err(SqlError::permanent(format!("cursor {id} is closed"))),
                    Some(cursor) => next_rows(cursor, max_rows),
                };
                let _ = reply.send(rows);
            }
            Request::CloseCursor(id) => {
                cursors.remove(&id);
            }
            Request::QueryJson(sql, max_rows, reply) => {
                let _ = reply.send(query_json(conn, &sql, max_rows));
            }
            Request::Stream(sql, tx) => stream(conn, &sql, &tx),
            Request::Append {
                create,
                table,
                batches,
                reply,
            } => {
                let _ = reply.send(append(conn, &create, &table, &batches));
            }
        }
    }
}

fn stream(conn: &Connection, sql: &str, tx: &mpsc::SyncSender<Result<RecordBatch, SqlError>>) {
    let mut stmt = match conn.prepare(sql) {
        Ok(stmt) => stmt,
        Err(e) => {
            let _ = tx.send(Err(e.into()));
            return;
        }
    };
    match stmt.stream_arrow([]) {
        Ok(batches) => {
            for batch in batches {
                let failed = batch.is_err();
                if tx.send(batch.map_err(SqlError::from)).is_err() || failed {
                    return;
                }
            }
        }
        Err(e) => {
            let _ = tx.send(Err(e.into()));
        }
    }
}

fn append(
    conn: &Connection,
    create: &str,
    table: &str,
    batches: &mpsc::Receiver<RecordBatch>,
) -> Result<u64, SqlError> {
    conn.execute_batch(create)?;
    let mut appender = conn.appender(table)?;
    let mut rows = 0u64;
    while let Ok(batch) = batches.recv() {
        rows += batch.num_rows() as u64;
        appender.append_record_batch(batch)?;
    }
    appender.flush()?;
    Ok(rows)
}

/// Runs one statement without keeping a query's rows: its result is streamed
/// and each chunk dropped as it comes, so a large `SELECT` costs the host one
/// chunk, not its whole result. Returns the rows changed, which DuckDB reports
/// as the one `Count` (BIGINT) value of an INSERT, UPDATE, DELETE, MERGE, COPY
/// or CREATE TABLE AS; for a query that is 0, as when its result was
/// materialized (a query whose whole result is one BIGINT named `Count` reads
/// as that count).
fn execute(conn: &Connection, sql: &str) -> Result<u64, SqlError> {
    let mut stmt = conn.prepare(sql)?;
    let mut batches = stmt.stream_arrow([])?;
    let Some(first) = batches.next().transpose()? else {
        return Ok(0);
    };
    let count = changed_rows(&first);
    drop(first);
    let mut more = false;
    for batch in batches {
        drop(batch?);
        more = true;
    }
    Ok(match count {
        Some(count) if !more => count,
        _ => 0,
    })
}

/// The count in a result shaped like DuckDB's report of changed rows.
fn changed_rows(batch: &RecordBatch) -> Option<u64> {
    let schema = batch.schema();
    let [field] = schema.fields().as_ref() else {
        return None;
    };
    if batch.num_rows() != 1 || field.name() != "Count" {
        return None;
    }
    let counts = batch
        .column(0)
        .as_any()
        .downcast_ref::<duckdb::arrow::array::Int64Array>()?;
    if duckdb::arrow::array::Array::is_null(counts, 0) {
        return None;
    }
    u64::try_from(counts.value(0)).ok()
}

fn open_cursor<'c>(conn: &'c Connection, sql: &str) -> Result<(Statement<'c>, Vec<u8>), SqlError> {
    let mut stmt = conn.prepare(sql)?;
    let schema = {
        let stream = stmt.stream_arrow([])?;
        stream.get_schema()
    };
    let bytes = ipc_stream(&schema, None)?;
    Ok((stmt, bytes))
}

/// An open query, and what is left of DuckDB's last chunk with the rows per
/// batch it is sent in.
struct Cursor<'c> {
    stmt: Statement<'c>,
    rest: Option<(RecordBatch, usize)>,
}

fn next_batch(cursor: &mut Cursor<'_>) -> Result<Option<Vec<u8>>, SqlError> {
    match next_slice(cursor, usize::MAX)? {
        None => Ok(None),
        Some(batch) => Ok(Some(ipc_stream(&batch.schema(), Some(&batch))?)),
    }
}

/// The next at most `max_rows` rows (at most one batch) as a JSON array.
fn next_rows(cursor: &mut Cursor<'_>, max_rows: u32) -> Result<Option<String>, SqlError> {
    let max_rows = usize::try_from(max_rows.max(1)).unwrap_or(usize::MAX);
    let Some(batch) = next_slice(cursor, max_rows)? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    {
        let mut writer = duckdb::arrow::json::ArrayWriter::new(&mut out);
        writer.write(&batch)?;
        writer.finish()?;
    }
    let json =
        String::from_utf8(out).map_err(|e| SqlError::retryable(format!("JSON encoding: {e}")))?;
    // arrow-json writes nothing at all for a batch without rows.
    Ok(Some(if json.is_empty() { "[]".into() } else { json }))
}

/// The next slice of the result: at most one batch of about
/// [`MAX_BATCH_BYTES`], and at most `max_rows` rows; the rest is kept.
fn next_slice(cursor: &mut Cursor<'_>, max_rows: usize) -> Result<Option<RecordBatch>, SqlError> {
    let (batch, rows_per_batch) = match cursor.rest.take() {
        Some(rest) => rest,
        None => match cursor.stmt.step()? {
            None => return Ok(None),
            Some(array) => {
                let batch = RecordBatch::from(&array);
                let rows = batch.num_rows().max(1);
                let per_row = batch.get_array_memory_size().div_ceil(rows).max(1);
                let fit = (MAX_BATCH_BYTES / per_row).clamp(1, rows);
                (batch, fit)
            }
        },
    };
    let take = rows_per_batch.min(max_rows);
    let head = if batch.num_rows() > take {
        let rest = batch.slice(take, batch.num_rows() - take);
        cursor.rest = Some((rest, rows_per_batch));
        batch.slice(0, take)
    } else {
        batch
    };
    Ok(Some(head))
}

/// Encodes a self-contained Arrow IPC stream: the schema and at most one batch.
fn ipc_stream(schema: &Schema, batch: Option<&RecordBatch>) -> Result<Vec<u8>, SqlError> {
    let mut buf = Vec::new();
    {
        let mut writer = duckdb::arrow::ipc::writer::StreamWriter::try_new(&mut buf, schema)?;
        if let Some(batch) = batch {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    Ok(buf)
}

/// Largest JSON text `query-json` builds in the host for one call, checked as
/// it is written. The call is for small results read whole: the guest copies
/// the text into its linear memory and parses it into values (a few times its
/// size again), and a large result belongs in a cursor, whose batches are
/// bounded. 16 MiB is thousands of rows of any usual width, and small next to
/// `duckdb_memory` and the guest's default memory (512 MiB).
pub const MAX_QUERY_JSON_BYTES: usize = 16 << 20;

/// JSON text being built, refused past its cap.
struct CappedJson {
    bytes: Vec<u8>,
    over: bool,
}

impl std::io::Write for CappedJson {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + data.len() > MAX_QUERY_JSON_BYTES {
            self.over = true;
            return Err(std::io::Error::other("the query-json cap is reached"));
        }
        self.bytes.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn query_json(conn: &Connection, sql: &str, max_rows: u32) -> Result<String, SqlError> {
    let mut stmt = conn.prepare(sql)?;
    let mut out = CappedJson {
        bytes: Vec::new(),
        over: false,
    };
    let written = write_json(&mut stmt, max_rows, &mut out);
    if out.over {
        return Err(SqlError::permanent(format!(
            "the query-json result is over its cap of {MAX_QUERY_JSON_BYTES} bytes; use `query` (a cursor) for large results"
        )));
    }
    written?;
    let json = String::from_utf8(out.bytes)
        .map_err(|e| SqlError::retryable(format!("JSON encoding: {e}")))?;
    // arrow-json writes nothing at all for an empty result.
    Ok(if json.is_empty() { "[]".into() } else { json })
}

/// Writes at most `max_rows` rows of the query as a JSON array into `out`,
/// which arrow-json fills a few KiB at a time (a single row at once).
fn write_json(
    stmt: &mut Statement<'_>,
    max_rows: u32,
    out: &mut CappedJson,
) -> Result<(), SqlError> {
    let mut remaining = max_rows as usize;
    let mut writer = duckdb::arrow::json::ArrayWriter::new(out);
    for batch in stmt.stream_arrow([])? {
        if remaining == 0 {
            break;
        }
        let batch = batch?;
        let take = remaining.min(batch.num_rows());
        writer.write(&batch.slice(0, take))?;
        remaining -= take;
    }
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod handler_tests {
    use super::*;

    /// An on-demand pool opens nothing until warmed, then exactly one
    /// database ahead, which the next session takes; later ones open their own.
    #[test]
    fn a_warmed_on_demand_pool_opens_one_database_ahead() {
        let pool = SqlPool::on_demand();
        assert!(pool.lock().ready.is_none(), "opened before it was warmed");
        pool.warm();
        assert!(pool.lock().ready.is_some(), "warm did not start an opener");
        let ahead = pool.take().expect("the database opened ahead");
        assert!(
            pool.lock().ready.is_none(),
            "a second database is on its way"
        );
        let fresh = pool.take().expect("a database opened on demand");
        for conn in [ahead, fresh] {
            let one: i64 = conn
                .query_row("SELECT 1", [], |row| row.get(0))
                .expect("query");
            assert_eq!(one, 1);
        }
        // Warmed again, it opens one more; dropping the pool untaken joins it.
        pool.warm();
        drop(pool);
    }

    /// A refilling pool warmed before any session has its refills started.
    #[test]
    fn a_warmed_refilling_pool_starts_its_refills() {
        let pool = SqlPool::new(1);
        pool.warm();
        assert!(pool.lock().opener.is_some());
        pool.take().expect("a database");
    }

    /// Every kind of statement, run on two fresh databases: through `execute`
    /// (streaming) and through DuckDB's materialized execute, as before.
    #[test]
    fn execute_reports_changed_rows_as_a_materialized_execute_did() {
        let dir = tempfile::tempdir().expect("temp dir");
        let csv = dir.path().join("out.csv");
        let statements = [
            "CREATE TABLE t AS SELECT range AS i FROM range(5000)".to_owned(),
            "CREATE TABLE u (i BIGINT)".to_owned(),
            "INSERT INTO u VALUES (1), (2), (3)".to_owned(),
            "INSERT INTO u SELECT i FROM t".to_owned(),
            "UPDATE u SET i = i + 1 WHERE i < 100".to_owned(),
            "DELETE FROM u WHERE i % 2 = 0".to_owned(),
            "INSERT INTO u VALUES (7) RETURNING i".to_owned(),
            format!("COPY t TO '{}' (HEADER)", csv.display()),
            "SELECT 42".to_owned(),
            "SELECT i FROM t".to_owned(),
            "SELECT count(*) FROM t".to_owned(),
            "SET threads = 1".to_owned(),
            "PRAGMA table_info('t')".to_owned(),
            "EXPLAIN SELECT 1".to_owned(),
            "CREATE VIEW v AS SELECT 1".to_owned(),
            "DROP VIEW v".to_owned(),
        ];
        let streamed = Connection::open_in_memory().expect("db");
        let materialized = Connection::open_in_memory().expect("db");
        for sql in &statements {
            let new = execute(&streamed, sql).expect(sql);
            let old = materialized
                .prepare(sql)
                .and_then(|mut stmt| stmt.execute([]))
                .expect(sql) as u64;
            assert_eq!(new, old, "{sql}");
        }
        assert_eq!(
            execute(&streamed, "SELECT count(*) FROM u").expect("count"),
            0
        );
    }

    #[test]
    fn execute_of_a_query_does_not_keep_its_rows_and_stops_when_interrupted() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch("SET memory_limit = '64MiB'")
            .expect("limit");
        // 200 MB of rows through a database with 64 MiB: streamed and dropped.
        let rows = execute(&conn, "SELECT repeat('x', 1000) FROM range(200000)").expect("run");
        assert_eq!(rows, 0);
        let interrupt = conn.interrupt_handle();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            interrupt.interrupt();
        });
        let error = execute(
            &conn,
            "SELECT count(*) FROM range(1000000000000) a WHERE a.range % 7 = 3",
        )
        .expect_err("interrupted");
        assert!(error.message.contains("nterrupt"), "{error}");
        assert_eq!(error.kind, ErrorKind::Retryable, "{error}");
        stopper.join().expect("stopper");
    }

    /// Real DuckDB errors of each family, through the session's `execute`:
    /// errors of the statement are permanent, the rest retryable.
    #[test]
    fn duckdb_errors_are_permanent_only_when_the_statement_itself_is_wrong() {
        use ErrorKind::{Permanent, Retryable};
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch(
            "SET memory_limit = '32MiB'; CREATE TABLE t (i INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)",
        )
        .expect("table");
        let locked = Connection::open_in_memory().expect("db");
        locked
            .execute_batch("SET enable_external_access = false")
            .expect("lock");
        let cases = [
            (&conn, "SELEC 1", "Parser Error: ", Permanent),
            (&conn, "SELECT nope FROM t", "Binder Error: ", Permanent),
            (&conn, "SELECT * FROM missing", "Catalog Error: ", Permanent),
            (&conn, "SELECT $1", "Wrong number of parameters", Permanent),
            (
                &conn,
                "SELECT 'abc'::INTEGER",
                "Conversion Error: ",
                Retryable,
            ),
            (
                &conn,
                "INSERT INTO t VALUES (1)",
                "Constraint Error: ",
                Retryable,
            ),
            (
                &conn,
                "SELECT * FROM read_csv('/nonexistent/sluice.csv')",
                "IO Error: ",
                Retryable,
            ),
            (
                &conn,
                "SELECT len(list(range)) FROM range(50000000)",
                "Out of Memory Error: ",
                Retryable,
            ),
            (
                &locked,
                "SELECT * FROM read_csv('/etc/hostname')",
                "Permission Error: ",
                Permanent,
            ),
        ];
        for (db, sql, prefix, kind) in cases {
            let error = execute(db, sql).expect_err(sql);
            assert!(error.message.starts_with(prefix), "{sql}: {error}");
            assert_eq!(error.kind, kind, "{sql}: {error}");
        }
    }

    #[test]
    fn query_json_is_refused_past_its_cap_and_exact_below_it() {
        let conn = Connection::open_in_memory().expect("db");
        let json = query_json(&conn, "SELECT range AS i FROM range(3)", 10).expect("small");
        assert_eq!(json, r#"[{"i":0},{"i":1},{"i":2}]"#);
        assert_eq!(
            query_json(&conn, "SELECT 1 WHERE false", 10).expect("empty"),
            "[]"
        );
        // 40 MB of JSON in rows of 1 KB, and in one value of 40 MB.
        for sql in [
            "SELECT repeat('x', 1000) AS s FROM range(40000)",
            "SELECT repeat('x', 40000000) AS s",
        ] {
            let error = query_json(&conn, sql, u32::MAX).expect_err(sql);
            assert_eq!(error.kind, ErrorKind::Permanent, "{error}");
            assert_eq!(
                error.message,
                format!(
                    "the query-json result is over its cap of {MAX_QUERY_JSON_BYTES} bytes; use `query` (a cursor) for large results"
                )
            );
        }
        // Under the cap by rows: fine.
        let json = query_json(
            &conn,
            "SELECT repeat('x', 1000) AS s FROM range(40000)",
            100,
        )
        .expect("capped by rows");
        assert!(json.len() < 200_000);
    }

    #[test]
    fn next_rows_returns_each_row_once_in_pieces_of_at_most_max_rows() {
        let conn = Connection::open_in_memory().expect("db");
        let sql = "SELECT range AS i, 'r' || range AS s FROM range(5000)";
        let (stmt, _schema) = open_cursor(&conn, sql).expect("cursor");
        let mut cursor = Cursor { stmt, rest: None };
        let mut seen = Vec::new();
        while let Some(json) = next_rows(&mut cursor, 3000).expect("rows") {
            let rows: Vec<serde_json::Value> = serde_json::from_str(&json).expect("JSON");
            assert!(!rows.is_empty() && rows.len() <= 3000, "{}", rows.len());
            seen.extend(rows);
        }
        assert_eq!(seen.len(), 5000);
        for (n, row) in seen.iter().enumerate() {
            assert_eq!(row["i"], n);
            assert_eq!(row["s"], format!("r{n}"));
        }
        // Mixed with Arrow batches, nothing is returned twice.
        let (stmt, _schema) =
            open_cursor(&conn, "SELECT range AS i FROM range(10)").expect("cursor");
        let mut cursor = Cursor { stmt, rest: None };
        let first = next_rows(&mut cursor, 4).expect("rows").expect("some");
        assert_eq!(first, r#"[{"i":0},{"i":1},{"i":2},{"i":3}]"#);
        assert!(next_batch(&mut cursor).expect("batch").is_some());
        assert_eq!(next_rows(&mut cursor, 4).expect("end"), None);
    }
}
