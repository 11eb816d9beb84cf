//! Events flowing from running tasks to the scheduler, and from the scheduler
//! to whoever watches a run (the CLI's live display).

use chrono::{DateTime, Utc};

use crate::state::{RunState, TaskState};

/// Identifies one try of one task instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TaskKey {
    /// Run id.
    pub run_id: String,
    /// Task id.
    pub task_id: String,
    /// Try number.
    pub try_number: u32,
}

/// Something that happened in a run. Serialized with its kind in `kind`
/// (`task_state`, `log`, `progress`, `sql_progress`, `run_finished`).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunEvent {
    /// A task instance changed state.
    TaskState {
        /// Task id.
        task_id: String,
        /// New state.
        state: TaskState,
        /// Try number (0 before the first try).
        try_number: u32,
        /// Error text, for failures.
        error: Option<String>,
    },
    /// A log line of a try.
    Log {
        /// Which try.
        key: TaskKey,
        /// When.
        ts: DateTime<Utc>,
        /// Level name.
        level: &'static str,
        /// Message.
        message: String,
    },
    /// Progress reported by the task.
    Progress {
        /// Which try.
        key: TaskKey,
        /// Units done.
        done: u64,
        /// Units in all (0: unknown).
        total: u64,
    },
    /// DuckDB's estimate for the statement a task is running, in percent.
    SqlProgress {
        /// Which try.
        key: TaskKey,
        /// 0–100.
        percent: f64,
    },
    /// The run ended.
    RunFinished {
        /// Final state.
        state: RunState,
    },
}

/// A [`RunEvent`] and the run it happened in: what the run loop broadcasts
/// to every watcher of the host (the HTTP API's live views).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunNotice {
    /// Run id.
    pub run_id: String,
    /// DAG id.
    pub dag_id: String,
    /// What happened.
    pub event: RunEvent,
    /// For a log line: its id in the metadatabase. A line is broadcast only
    /// once stored, so a watcher that reads the stored lines after
    /// subscribing misses none and can drop the ones it read by id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_id: Option<i64>,
}
