//! The `sql` capability: one DuckDB database per task instance, locked to the
//! run's staging directory before the guest can say anything.
//!
//! DuckDB statements borrow their connection and are not `Send`, while wasmtime
//! store data must be; so the session lives on its own thread and host calls
//! reach it over a channel. The thread owns the connection and the open cursors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use duckdb::arrow::array::RecordBatch;
use duckdb::arrow::datatypes::Schema;
use duckdb::{Config, Connection, InterruptHandle, Statement};

/// Open cursors per session; more is a guest error, not host memory growth.
pub const MAX_OPEN_CURSORS: usize = 64;

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
    /// Runs a closure with the connection (host-side operations such as loads).
    WithConnection(Box<dyn FnOnce(&Connection) + Send>),
}

/// A handle to a task instance's DuckDB session. Dropping it closes the database.
pub struct SqlSession {
    requests: Option<mpsc::Sender<Request>>,
    interrupt: Arc<InterruptHandle>,
    progress: duckdb::ProgressHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SqlSession {
    /// Opens an in-memory database locked down to `config.staging_dir`.
    pub fn open(config: SqlConfig) -> Result<Self, SqlError> {
        let (requests, inbox) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("sluice-sql".into())
            .spawn(move || {
                let conn = match open_locked(&config) {
                    Ok(conn) => conn,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok((conn.interrupt_handle(), conn.progress_handle())));
                serve(&conn, &inbox);
            })
            .map_err(|e| SqlError(format!("cannot start the SQL thread: {e}")))?;
        let (interrupt, progress) = ready_rx
            .recv()
            .map_err(|_| SqlError("the SQL thread stopped while opening DuckDB".into()))??;
        Ok(Self {
            requests: Some(requests),
            interrupt,
            progress,
            thread: Some(thread),
        })
    }

    /// Interrupts the statement running now, if any (callable from any thread).
    pub fn interrupt_handle(&self) -> Arc<InterruptHandle> {
        self.interrupt.clone()
    }

    /// Reads the progress of the statement running now (callable from any thread).
    pub fn progress_handle(&self) -> duckdb::ProgressHandle {
        self.progress.clone()
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, SqlError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.requests
            .as_ref()
            .ok_or_else(|| SqlError("the SQL session is closed".into()))?
            .send(make(tx))
            .map_err(|_| SqlError("the SQL session is closed".into()))?;
        rx.recv()
            .map_err(|_| SqlError("the SQL session stopped".into()))?
    }

    /// Runs one statement; returns the rows it changed.
    pub fn execute(&self, sql: &str) -> Result<u64, SqlError> {
        self.call(|r| Request::Execute(sql.to_owned(), r))
    }

    /// Starts a streaming query; returns the cursor id and the schema as Arrow IPC.
    pub fn query(&self, sql: &str) -> Result<(u32, Vec<u8>), SqlError> {
        self.call(|r| Request::Query(sql.to_owned(), r))
    }

    /// The next batch of a cursor as an Arrow IPC stream, or `None` at the end.
    pub fn next_batch(&self, cursor: u32) -> Result<Option<Vec<u8>>, SqlError> {
        self.call(|r| Request::NextBatch(cursor, r))
    }

    /// Releases a cursor.
    pub fn close_cursor(&self, cursor: u32) {
        if let Some(requests) = &self.requests {
            let _ = requests.send(Request::CloseCursor(cursor));
        }
    }

    /// Runs a query and returns at most `max_rows` rows as a JSON array of objects.
    pub fn query_json(&self, sql: &str, max_rows: u32) -> Result<String, SqlError> {
        self.call(|r| Request::QueryJson(sql.to_owned(), max_rows, r))
    }

    /// Runs `f` with the session's connection on the session thread.
    pub fn with_connection<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> T + Send + 'static,
    ) -> Result<T, SqlError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job = Box::new(move |conn: &Connection| {
            let _ = tx.send(f(conn));
        });
        self.requests
            .as_ref()
            .ok_or_else(|| SqlError("the SQL session is closed".into()))?
            .send(Request::WithConnection(job))
            .map_err(|_| SqlError("the SQL session is closed".into()))?;
        rx.recv()
            .map_err(|_| SqlError("the SQL session stopped".into()))
    }
}

impl Drop for SqlSession {
    fn drop(&mut self) {
        self.interrupt.interrupt();
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Opens the database and applies the lockdown. Order matters: options that are
/// `SET` after opening must come before `lock_configuration`.
fn open_locked(config: &SqlConfig) -> Result<Connection, SqlError> {
    let db_config = Config::default()
        .enable_autoload_extension(false)?
        .with("autoinstall_known_extensions", "false")?
        .with("allow_community_extensions", "false")?
        .with("allow_persistent_secrets", "false")?
        .max_memory(&format!("{}B", config.memory_limit))?
        .threads(i64::from(config.threads))?
        .with(
            "max_temp_directory_size",
            format!("{}B", config.spill_limit),
        )?;
    let conn = Connection::open_in_memory_with_flags(db_config)?;
    conn.set_query_progress_tracking(true)?;
    let staging = dir_with_slash(&config.staging_dir)?;
    let temp = config.staging_dir.join(".duckdb_tmp");
    let temp = temp
        .to_str()
        .ok_or_else(|| SqlError("staging path is not UTF-8".into()))?;
    conn.execute_batch(&format!(
        "SET allowed_directories = [{staging}];
         SET temp_directory = {temp};
         SET enable_external_access = false;
         SET lock_configuration = true;",
        staging = literal(&staging),
        temp = literal(temp),
    ))?;
    Ok(conn)
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
    let mut cursors: HashMap<u32, Statement<'_>> = HashMap::new();
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
                    cursors.insert(id, stmt);
                    (id, schema)
                }));
            }
            Request::NextBatch(id, reply) => {
                let batch = match cursors.get(&id) {
                    None => Err(SqlError(format!("cursor {id} is closed"))),
                    Some(stmt) => next_batch(stmt),
                };
                let _ = reply.send(batch);
            }
            Request::CloseCursor(id) => {
                cursors.remove(&id);
            }
            Request::QueryJson(sql, max_rows, reply) => {
                let _ = reply.send(query_json(conn, &sql, max_rows));
            }
            Request::WithConnection(job) => job(conn),
        }
    }
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

fn next_batch(stmt: &Statement<'_>) -> Result<Option<Vec<u8>>, SqlError> {
    match stmt.step()? {
        None => Ok(None),
        Some(array) => {
            let batch = RecordBatch::from(&array);
            Ok(Some(ipc_stream(&batch.schema(), Some(&batch))?))
        }
    }
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
