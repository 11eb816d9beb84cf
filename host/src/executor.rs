//! Runs one try of a task instance: opens its DuckDB session, builds its
//! sandbox, calls `run`, and enforces the deadline (epoch interruption for guest
//! code, DuckDB interruption for SQL). The local executor runs tries as tokio
//! blocking tasks in this process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use crate::bindings::TaskPre;
use crate::bindings::sluice::task::types::ErrorKind;
use crate::capabilities::limits::{MemoryExceeded, Stopped};
use crate::capabilities::sql::SqlConfig;
use crate::capabilities::wasi::{CapturedOutput, sandbox_ctx};
use crate::capabilities::{
    Deadline, Grants, LogSink, MemoryLimiter, SharedHandles, SqlHandles, SqlPool, SqlSession,
    TaskContext, TaskHost,
};
use crate::confine::Sandbox;
use crate::dag::TaskPolicy;
use crate::engine::Engine;
use crate::events::{RunEvent, TaskKey};

/// Largest output a task may return.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// How often a running task's SQL progress is sampled for the live display.
const PROGRESS_POLL: Duration = Duration::from_millis(250);

/// Everything needed to run one try.
#[derive(Debug, Clone)]
pub struct TryRequest {
    /// Which try.
    pub key: TaskKey,
    /// DAG id.
    pub dag_id: String,
    /// The run's logical date.
    pub logical_date: DateTime<Utc>,
    /// The run's data interval.
    pub interval: crate::schedule::Interval,
    /// Merged params (JSON object).
    pub params: Value,
    /// Outputs of upstream tasks, by task id.
    pub upstream: serde_json::Map<String, Value>,
    /// The run's staging directory (canonical).
    pub staging_dir: PathBuf,
    /// Limits.
    pub policy: TaskPolicy,
    /// Connections granted to the task, secrets included (host memory only).
    pub connections: Vec<crate::connections::Connection>,
}

/// Threads closing the DuckDB databases of finished tries. Join them before
/// deleting the run's staging directory; nothing else waits for them.
pub type Closing = Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>;

/// How a try ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TryOutcome {
    /// `run` returned this JSON output.
    Success {
        /// The output.
        output: String,
    },
    /// The try failed.
    Failed {
        /// Why, in one line.
        error: String,
        /// Whether another try may help.
        retryable: bool,
    },
}

/// Runs one try to its end. Never panics on guest behaviour.
pub async fn run_try(
    engine: Arc<Engine>,
    sql_pool: Arc<SqlPool>,
    sandbox: Sandbox,
    pre: TaskPre<TaskHost>,
    request: TryRequest,
    events: UnboundedSender<RunEvent>,
    closing: Closing,
) -> TryOutcome {
    // No task runs where its host threads cannot be confined, unless the
    // operator said so (`Sandbox::allow_unconfined`).
    if let Err(e) = sandbox.check() {
        return TryOutcome::Failed {
            error: e.to_string(),
            retryable: false,
        };
    }
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
        tokio::task::spawn_blocking(move || run_blocking(&engine, &pre, sql, request, watch))
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

fn lock(handles: &SharedHandles) -> std::sync::MutexGuard<'_, Option<SqlHandles>> {
    handles
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    pre: &TaskPre<TaskHost>,
    sql: SqlSession,
    request: TryRequest,
    watch: Watch,
) -> TryOutcome {
    let Watch {
        deadline,
        events,
        closing,
        runtime,
        sandbox,
    } = watch;
    let grants = Grants::new(request.connections.clone(), runtime, sandbox);
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
    let host = TaskHost::new(
        context,
        sql,
        log,
        deadline.clone(),
        MemoryLimiter::new(request.policy.memory),
        grants,
        wasi,
    );
    let mut store = engine.store(host);
    let result = pre
        .instantiate(&mut store)
        .and_then(|task| task.call_run(&mut store, &input));
    let host = store.into_data();
    let mut log = host.log;
    if let Some(thread) = host.sql.close() {
        closing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
