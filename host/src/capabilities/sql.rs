//! The `sql` capability: one DuckDB database per task instance, locked to the
//! run's staging directory before the guest can say anything.
//!
//! DuckDB statements borrow their connection and are not `Send`, while wasmtime
//! store data must be; so the session lives on its own thread and host calls
//! reach it over a channel. The thread owns the connection and the open cursors.
//! The database is opened at the session's first SQL call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use duckdb::arrow::array::RecordBatch;
use duckdb::arrow::datatypes::Schema;
use duckdb::{Config, Connection, InterruptHandle, Statement};

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
}

/// An error from the session: DuckDB's message, or why the session is gone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SqlError(pub String);

impl From<duckdb::Error> for SqlError {
    fn from(e: duckdb::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<duckdb::arrow::error::ArrowError> for SqlError {
    fn from(e: duckdb::arrow::error::ArrowError) -> Self {
        Self(format!("Arrow encoding: {e}"))
    }
}

type Reply<T> = mpsc::SyncSender<Result<T, SqlError>>;

enum Request {
    Execute(String, Reply<u64>),
    Query(String, Reply<(u32, Vec<u8>)>),
    NextBatch(u32, Reply<Option<Vec<u8>>>),
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
    /// A session that will open a fresh database from `pool` with `config`.
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

    /// Opens the database on its own thread, if not yet done.
    fn requests(&mut self) -> Result<&mpsc::Sender<Request>, SqlError> {
        if self.requests.is_none() {
            let fresh = self.pool.take();
            let config = self.config.clone();
            let (requests, inbox) = mpsc::channel::<Request>();
            let (ready_tx, ready_rx) = mpsc::sync_channel(1);
            let thread = std::thread::Builder::new()
                .name("sluice-sql".into())
                .spawn(move || {
                    let conn = match fresh.and_then(|conn| lock_down(conn, &config)) {
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
                .map_err(|e| SqlError(format!("cannot start the SQL thread: {e}")))?;
            let handles = ready_rx
                .recv()
                .map_err(|_| SqlError("the SQL thread stopped while opening DuckDB".into()))??;
            *self
                .handles
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handles);
            self.requests = Some(requests);
            self.thread = Some(thread);
        }
        self.requests
            .as_ref()
            .ok_or_else(|| SqlError("the SQL session is closed".into()))
    }

    fn call<T>(&mut self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, SqlError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.requests()?
            .send(make(tx))
            .map_err(|_| SqlError("the SQL session is closed".into()))?;
        rx.recv()
            .map_err(|_| SqlError("the SQL session stopped".into()))?
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
            .map_err(|_| SqlError("the SQL session is closed".into()))?;
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
            .map_err(|_| SqlError("the SQL session is closed".into()))?;
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
/// secrets. It has run nothing yet.
pub(crate) fn open_fresh() -> Result<Connection, SqlError> {
    let config = Config::default()
        .enable_autoload_extension(false)?
        .with("autoinstall_known_extensions", "false")?
        .with("allow_community_extensions", "false")?
        .with("allow_persistent_secrets", "false")?;
    Ok(Connection::open_in_memory_with_flags(config)?)
}

/// Applies the task's limits and confines file access to staging, then locks
/// the configuration. Options set after the lock fail.
pub(crate) fn lock_down(conn: Connection, config: &SqlConfig) -> Result<Connection, SqlError> {
    conn.set_query_progress_tracking(true)?;
    let staging = dir_with_slash(&config.staging_dir)?;
    let temp = config.staging_dir.join(".duckdb_tmp");
    let temp = temp
        .to_str()
        .ok_or_else(|| SqlError("staging path is not UTF-8".into()))?;
    // `~` means staging, and the (unused) secret directory is there too: no
    // setting shows the host user's home.
    let secrets = config.staging_dir.join(".duckdb_secrets");
    let secrets = secrets
        .to_str()
        .ok_or_else(|| SqlError("staging path is not UTF-8".into()))?;
    conn.execute_batch(&format!(
        "SET memory_limit = '{memory}B';
         SET threads = {threads};
         SET max_temp_directory_size = '{spill}B';
         SET allowed_directories = [{staging}];
         SET temp_directory = {temp};
         SET home_directory = {home};
         SET secret_directory = {secrets};
         SET enable_external_access = false;
         SET lock_configuration = true;",
        memory = config.memory_limit,
        threads = config.threads,
        spill = config.spill_limit,
        staging = literal(&staging),
        temp = literal(temp),
        home = literal(staging.trim_end_matches('/')),
        secrets = literal(secrets),
    ))?;
    Ok(conn)
}

/// Fresh DuckDB databases opened ahead of time (opening one costs ~8 ms, the
/// lockdown under 1 ms). Each database serves exactly one task instance and is
/// never reused; the pool only moves the opening off the critical path. The
/// refill thread starts with the first session and is joined when the pool is
/// dropped, so a process never exits while DuckDB is opening a database.
pub struct SqlPool {
    depth: usize,
    state: std::sync::Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    ready: Option<mpsc::Receiver<Result<Connection, SqlError>>>,
    refill: Option<std::thread::JoinHandle<()>>,
}

impl SqlPool {
    /// Keeps up to `depth` fresh databases ready once sessions start.
    pub fn new(depth: usize) -> Self {
        Self {
            depth,
            state: std::sync::Mutex::new(PoolState::default()),
        }
    }

    /// A pool that opens every database on demand (for comparison).
    pub fn on_demand() -> Self {
        Self::new(0)
    }

    /// A fresh database: a ready one, or one opened now.
    fn take(&self) -> Result<Connection, SqlError> {
        if self.depth == 0 {
            return open_fresh();
        }
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.ready.is_none() {
            let (tx, rx) = mpsc::sync_channel(self.depth);
            state.refill = std::thread::Builder::new()
                .name("sluice-sql-pool".into())
                // Ends when the pool is dropped (send fails).
                .spawn(move || while tx.send(open_fresh()).is_ok() {})
                .ok();
            state.ready = Some(rx);
        }
        let ready = state.ready.as_ref().and_then(|rx| rx.try_recv().ok());
        drop(state);
        ready.unwrap_or_else(open_fresh)
    }
}

impl Drop for SqlPool {
    fn drop(&mut self) {
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.ready.take();
        if let Some(refill) = state.refill.take() {
            let _ = refill.join();
        }
    }
}

/// The directory as a string with a trailing slash, so that `/staging/run1` does
/// not also allow `/staging/run10`.
fn dir_with_slash(dir: &Path) -> Result<String, SqlError> {
    let s = dir
        .to_str()
        .ok_or_else(|| SqlError("staging path is not UTF-8".into()))?;
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
                    Err(SqlError(format!(
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
                    None => Err(SqlError(format!("cursor {id} is closed"))),
                    Some(cursor) => next_batch(cursor),
                };
                let _ = reply.send(batch);
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

fn execute(conn: &Connection, sql: &str) -> Result<u64, SqlError> {
    let mut stmt = conn.prepare(sql)?;
    Ok(stmt.execute([])? as u64)
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
    let head = if batch.num_rows() > rows_per_batch {
        let rest = batch.slice(rows_per_batch, batch.num_rows() - rows_per_batch);
        cursor.rest = Some((rest, rows_per_batch));
        batch.slice(0, rows_per_batch)
    } else {
        batch
    };
    Ok(Some(ipc_stream(&head.schema(), Some(&head))?))
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

fn query_json(conn: &Connection, sql: &str, max_rows: u32) -> Result<String, SqlError> {
    let mut stmt = conn.prepare(sql)?;
    let mut remaining = max_rows as usize;
    let mut buf = Vec::new();
    {
        let mut writer = duckdb::arrow::json::ArrayWriter::new(&mut buf);
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
    }
    let json = String::from_utf8(buf).map_err(|e| SqlError(format!("JSON encoding: {e}")))?;
    // arrow-json writes nothing at all for an empty result.
    Ok(if json.is_empty() { "[]".into() } else { json })
}
