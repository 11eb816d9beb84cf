//! The local executor: runs each try in this process, as a tokio blocking
//! task. It opens the try's DuckDB session, resolves its connections from the
//! vault, builds its sandbox, calls `run`, and enforces the deadline (epoch
//! interruption for guest code, DuckDB interruption for SQL).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::{Executor, ExecutorError, TryFuture, TryOutcome, TryRequest};
use crate::bindings::sluice::task::types::ErrorKind;
use crate::capabilities::limits::{MemoryExceeded, Stopped};
use crate::capabilities::sql::SqlConfig;
use crate::capabilities::wasi::{CapturedOutput, sandbox_ctx};
use crate::capabilities::{
    Deadline, Grants, LogSink, MemoryLimiter, PythonCode, SharedHandles, SqlPool, SqlSession,
    TaskContext, TaskHost,
};
use crate::confine::Sandbox;
use crate::connections::Connection;
use crate::engine::{Engine, Prepared};
use crate::events::RunEvent;
use crate::home::Home;
use crate::store::Store;

/// Largest output a task may return.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// How often a running task's SQL progress is sampled for the live display.
const PROGRESS_POLL: Duration = Duration::from_millis(250);

/// Threads closing the DuckDB databases of finished tries, by run id.
type Closing = Arc<Mutex<HashMap<String, Vec<std::thread::JoinHandle<()>>>>>;

/// Runs tries with wasmtime and DuckDB in this process.
pub struct LocalExecutor {
    home: Home,
    store: Arc<Store>,
    engine: Arc<Engine>,
    sql_pool: Arc<SqlPool>,
    sandbox: Sandbox,
    /// Tasks loaded for runs, by digest.
    prepared: Mutex<HashMap<String, Prepared>>,
    closing: Closing,
}

impl LocalExecutor {
    /// An executor over a Sluice home's blobs, vault and engine, confining the
    /// host threads of each try as `sandbox` says.
    pub fn new(
        home: Home,
        store: Arc<Store>,
        engine: Arc<Engine>,
        sql_pool: Arc<SqlPool>,
        sandbox: Sandbox,
    ) -> Self {
        Self {
            home,
            store,
            engine,
            sql_pool,
            sandbox,
            prepared: Mutex::default(),
            closing: Closing::default(),
        }
    }

    /// The sealed compiled code of task `component` (a Python task's: its
    /// runtime's) and the digest of the component it is, once
    /// [`Executor::prepare`] has loaded it, for a worker process to map.
    pub fn sealed_code(&self, component: &str) -> Option<(String, Arc<crate::engine::SealedCode>)> {
        self.engine.sealed_code(component)
    }

    /// Whether task `component` imports `sql`, once [`Executor::prepare`] has
    /// loaded it: its worker process can open its database ahead.
    pub fn uses_sql(&self, component: &str) -> bool {
        self.engine.uses_sql(component)
    }

    fn load(&self, component: &str) -> Result<Prepared, crate::engine::EngineError> {
        if let Some(prepared) = lock(&self.prepared).get(component) {
            return Ok(prepared.clone());
        }
        let prepared = self.engine.prepare(component, &self.home.blob(component))?;
        lock(&self.prepared).insert(component.to_owned(), prepared.clone());
        Ok(prepared)
    }

    /// The connections granted to the try, decrypted: read at the start of the
    /// try, inside the executor, so the run loop never holds a secret.
    pub(crate) fn resolve_connections(
        &self,
        request: &TryRequest,
    ) -> Result<Vec<Connection>, String> {
        if request.connections.is_empty() {
            return Ok(Vec::new());
        }
        let vault = crate::vault::Vault::open(&self.store, self.home.root())
            .map_err(|e| format!("cannot open the connection vault: {e}"))?;
        request
            .connections
            .iter()
            .map(|id| {
                let mut connection =
                    crate::connections::get(&self.store, &vault, id).map_err(|e| e.to_string())?;
                connection.allow_privileged = request.privileged_connections.contains(id);
                Ok(connection)
            })
            .collect()
    }
}

/// A lock that survives a panicked holder (what it guards stays consistent:
/// whole entries are inserted or taken).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Executor for LocalExecutor {
    fn sandbox_label(&self) -> String {
        self.sandbox.label()
    }

    fn prepare(&self, components: &[(String, String)]) -> Result<(), ExecutorError> {
        for (task_id, component) in components {
            self.load(component)
                .map_err(|source| ExecutorError::Component {
                    task_id: task_id.clone(),
                    component: component.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    fn run(&self, request: TryRequest, events: UnboundedSender<RunEvent>) -> TryFuture {
        match self.resolve_connections(&request) {
            Ok(connections) => self.run_granted(request, connections, events),
            Err(error) => Box::pin(async move {
                TryOutcome::Failed {
                    error,
                    retryable: false,
                }
            }),
        }
    }

    fn release(&self, run_id: &str) {
        let threads = lock(&self.closing).remove(run_id).unwrap_or_default();
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a thread closing a DuckDB database of run {run_id} panicked");
            }
        }
    }
}

impl LocalExecutor {
    /// Starts a try with its granted connections already resolved (by the
    /// caller: a Kubernetes worker receives them from the host).
    pub fn run_granted(
        &self,
        request: TryRequest,
        connections: Vec<Connection>,
        events: UnboundedSender<RunEvent>,
    ) -> TryFuture {
        let env = TryEnv {
            engine: self.engine.clone(),
            sql_pool: self.sql_pool.clone(),
            sandbox: self.sandbox.clone(),
            closing: self.closing.clone(),
        };
        // Each of these fails the try at once; retrying cannot fix it. No task
        // runs where its host threads cannot be confined, unless the operator
        // said so (`Sandbox::allow_unconfined`).
        let ready = self
            .sandbox
            .check()
            .map_err(|e| e.to_string())
            .and_then(|()| {
                self.load(&request.component)
                    .map_err(|e| format!("cannot load component {}: {e}", request.component))
            });
        Box::pin(async move {
            match ready {
                Ok(prepared) => run_try(env, prepared, request, connections, events).await,
                Err(error) => TryOutcome::Failed {
                    error,
                    retryable: false,
                },
            }
        })
    }
}

/// What a try shares with the executor.
struct TryEnv {
    engine: Arc<Engine>,
    sql_pool: Arc<SqlPool>,
    sandbox: Sandbox,
    closing: Closing,
}

/// Runs one try to its end. Never panics on guest behaviour.
async fn run_try(
    env: TryEnv,
    prepared: Prepared,
    request: TryRequest,
    connections: Vec<Connection>,
    events: UnboundedSender<RunEvent>,
) -> TryOutcome {
    let TryEnv {
        engine,
        sql_pool,
        sandbox,
        closing,
    } = env;
    let deadline = Arc::new(Deadline::after(request.policy.timeout));
    let sql = SqlSession::new(
        sql_pool,
        SqlConfig {
            staging_dir: request.staging_dir.clone(),
            memory_limit: request.policy.duckdb_memory,
            threads: request.policy.threads,
            spill_limit: request.policy.spill_limit,
            sandbox: sandbox.clone(),
        },
    );
    let handles = sql.handles();
    let runtime = tokio::runtime::Handle::current();
    let key = request.key.clone();
    let (staging_dir, staging_limit) = (request.staging_dir.clone(), request.policy.staging_limit);
    let worker = {
        let deadline = deadline.clone();
        let events = events.clone();
        let watch = Watch {
            deadline,
            events,
            closing,
            runtime,
            sandbox,
        };
        tokio::task::spawn_blocking(move || {
            run_blocking(&engine, &prepared, sql, request, connections, watch)
        })
    };
    tokio::pin!(worker);

    // Watch the try: sample SQL progress and the staging directory's size; from
    // the deadline (or the staging limit) on, interrupt DuckDB at every tick
    // (a statement may start after the first interrupt).
    let mut ticker = tokio::time::interval(PROGRESS_POLL);
    let deadline_at = tokio::time::Instant::from_std(deadline.at());
    let mut stopping = false;
    loop {
        tokio::select! {
            joined = &mut worker => {
                return joined.unwrap_or_else(|e| TryOutcome::Failed {
                    error: format!("the host thread running the task failed: {e}"),
                    retryable: true,
                });
            }
            () = tokio::time::sleep_until(deadline_at), if !stopping => {
                stopping = true;
                deadline.expired();
                interrupt(&handles);
            }
            _ = ticker.tick() => {
                if stopping {
                    interrupt(&handles);
                    continue;
                }
                if let Err(e) = crate::staging_usage::within_limit(&staging_dir, staging_limit) {
                    deadline.stop(e.to_string());
                    stopping = true;
                    interrupt(&handles);
                    continue;
                }
                let percent = lock(&handles).as_ref().and_then(|h| h.progress.query_progress().percentage());
                if let Some(percent) = percent {
                    let _ = events.send(RunEvent::SqlProgress { key: key.clone(), percent });
                }
            }
        }
    }
}

fn interrupt(handles: &SharedHandles) {
    if let Some(h) = lock(handles).as_ref() {
        h.interrupt.interrupt();
    }
}

/// What a try reports to and is supervised by.
struct Watch {
    deadline: Arc<Deadline>,
    events: UnboundedSender<RunEvent>,
    closing: Closing,
    runtime: tokio::runtime::Handle,
    sandbox: Sandbox,
}

fn run_blocking(
    engine: &Engine,
    prepared: &Prepared,
    sql: SqlSession,
    request: TryRequest,
    connections: Vec<Connection>,
    watch: Watch,
) -> TryOutcome {
    let Watch {
        deadline,
        events,
        closing,
        runtime,
        sandbox,
    } = watch;
    let grants = Grants::new(connections, runtime, sandbox);
    let redactor = grants.redactor.clone();
    let log = LogSink::new(request.key.clone(), events).redacting(redactor.clone());
    let failed = |error: String| TryOutcome::Failed {
        error,
        retryable: true,
    };
    let staging = match request.staging_dir.to_str() {
        Some(s) => s.to_owned(),
        None => {
            return failed(format!(
                "staging path {} is not UTF-8",
                request.staging_dir.display()
            ));
        }
    };
    let (wasi, captured) = match sandbox_ctx(&request.staging_dir) {
        Ok(ctx) => ctx,
        Err(e) => return failed(format!("cannot build the task's sandbox: {e:#}")),
    };
    let input =
        serde_json::json!({ "params": request.params, "upstream": request.upstream }).to_string();
    let context = TaskContext {
        dag_id: request.dag_id,
        run_id: request.key.run_id.clone(),
        task_id: request.key.task_id.clone(),
        try_number: request.key.try_number,
        data_interval_start: request
            .interval
            .start
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        data_interval_end: request
            .interval
            .end
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        logical_date: request.logical_date,
        params: request.params.to_string(),
        staging_dir: staging,
    };
    let mut host = TaskHost::new(
        context,
        sql,
        log,
        deadline.clone(),
        MemoryLimiter::new(request.policy.memory),
        grants,
        wasi,
    );
    host.python_code = PythonCode(prepared.python.clone());
    let (mut store, ticking) = engine.store(host);
    let result = prepared
        .pre
        .instantiate(&mut store)
        .and_then(|task| task.call_run(&mut store, &input));
    // No guest code runs from here on.
    drop(ticking);
    let host = store.into_data();
    let mut log = host.log;
    if let Some(thread) = host.sql.close() {
        lock(&closing)
            .entry(request.key.run_id.clone())
            .or_default()
            .push(thread);
    }
    let panic_message = drain_output(&captured, &mut log);

    let outcome = match result {
        _ if deadline.expired() => {
            let error = deadline.error().to_string();
            log.host_line("error", &format!("[sluice] {error}"));
            failed(error)
        }
        Ok(Ok(output)) if output.len() > MAX_OUTPUT_BYTES => TryOutcome::Failed {
            error: format!(
                "output is {} bytes; the limit is {MAX_OUTPUT_BYTES} bytes (hand large data over as files in staging)",
                output.len()
            ),
            retryable: false,
        },
        Ok(Ok(output)) => TryOutcome::Success {
            output: redactor.redact(&output),
        },
        Ok(Err(task_error)) => TryOutcome::Failed {
            error: redactor.redact(&task_error.message),
            retryable: task_error.kind == ErrorKind::Retryable,
        },
        Err(trap) => {
            log.host_line("error", &format!("[sluice] the task trapped: {trap:?}"));
            let error = if let Some(e) = trap.downcast_ref::<MemoryExceeded>() {
                e.to_string()
            } else if let Some(e) = trap.downcast_ref::<Stopped>() {
                e.to_string()
            } else if let Some(panic) = panic_message {
                format!("panicked: {panic}")
            } else {
                format!("trapped: {}", trap.root_cause())
            };
            failed(redactor.redact(&error))
        }
    };
    log.finish();
    outcome
}

/// Moves captured stdout/stderr into the log; returns a Rust panic message seen on stderr.
fn drain_output(captured: &CapturedOutput, log: &mut LogSink) -> Option<String> {
    let stdout = captured.stdout.contents();
    for line in String::from_utf8_lossy(&stdout).lines() {
        log.line("info", &format!("[stdout] {line}"));
    }
    let stderr = captured.stderr.contents();
    let stderr = String::from_utf8_lossy(&stderr);
    let mut panic = None;
    let mut lines = stderr.lines();
    while let Some(line) = lines.next() {
        log.line("warn", &format!("[stderr] {line}"));
        if panic.is_none() && line.contains("panicked at") {
            panic = lines.next().map(|msg| {
                log.line("warn", &format!("[stderr] {msg}"));
                msg.trim().to_owned()
            });
        }
    }
    panic
}
