//! The executor seam: the run loop hands each try to an [`Executor`] and gets
//! back its events (log lines, progress) and its [`TryOutcome`].
//!
//! A [`TryRequest`] names what the try needs (ids, the component digest, the
//! connection ids granted, the staging location) and carries no secret: an
//! executor resolves connections itself, at the moment of use. [`LocalExecutor`]
//! runs tries with wasmtime and DuckDB in this process; it is the only code that
//! touches either; [`ProcessExecutor`] runs the same code in a child process per
//! try, so a try that will not stop can be killed.

pub mod kubernetes;
mod local;
mod process;
pub mod worker;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedSender;

use crate::dag::TaskPolicy;
use crate::events::{RunEvent, TaskKey};
use crate::schedule::Interval;

pub use kubernetes::KubernetesExecutor;
pub use local::{LocalExecutor, MAX_OUTPUT_BYTES};
pub use process::{
    KILL_GRACE, ProcessExecutor, WORKER_CODE_ENV, WORKER_CODE_FD, WORKER_SQL_OPTION, WorkerMessage,
    adopt_handed_code,
};
pub use sluice_core::run::TryOutcome;

/// One try, by name.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TryRequest {
    /// Which try.
    pub key: TaskKey,
    /// DAG id.
    pub dag_id: String,
    /// The task's component (sha256 of its bytes, as deployed).
    pub component: String,
    /// The run's logical date.
    pub logical_date: DateTime<Utc>,
    /// The run's data interval.
    pub interval: Interval,
    /// Merged params (JSON object).
    pub params: Value,
    /// Outputs of upstream tasks, by task id.
    pub upstream: Map<String, Value>,
    /// The run's staging directory (canonical).
    pub staging_dir: PathBuf,
    /// Limits.
    pub policy: TaskPolicy,
    /// Ids of the connections granted to the task.
    pub connections: Vec<String>,
    /// Those of `connections` the task may open although their role is privileged.
    pub privileged_connections: Vec<String>,
}

#[cfg(test)]
impl TryRequest {
    /// Try 1 of task `task_id` of run `run_id`, of `component`, with no
    /// params, upstream outputs or connections and the default policy.
    pub(crate) fn for_tests(run_id: &str, task_id: &str, component: &str) -> Self {
        Self {
            key: TaskKey {
                run_id: run_id.into(),
                task_id: task_id.into(),
                try_number: 1,
            },
            dag_id: "d".into(),
            component: component.into(),
            logical_date: DateTime::UNIX_EPOCH,
            interval: Interval {
                start: DateTime::UNIX_EPOCH,
                end: DateTime::UNIX_EPOCH,
            },
            params: Value::Object(Map::new()),
            upstream: Map::new(),
            staging_dir: "/nonexistent".into(),
            policy: TaskPolicy::default(),
            connections: Vec::new(),
            privileged_connections: Vec::new(),
        }
    }
}

/// A try under way; resolves to how it ended.
pub type TryFuture = Pin<Box<dyn Future<Output = TryOutcome> + Send + 'static>>;

/// Work an executor does for the host besides tries (start, sweeps).
pub type HostFuture<T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'static>>;

/// Why an executor cannot run a run's tasks.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// A task's component cannot be loaded.
    #[error("task `{task_id}`: cannot load component {component}: {source}")]
    Component {
        /// Task id.
        task_id: String,
        /// Component digest.
        component: String,
        /// Why.
        #[source]
        source: crate::engine::EngineError,
    },
}

/// Runs tries. Implementations: [`LocalExecutor`] (this process) and
/// [`ProcessExecutor`] (a `sluice worker` child process per try).
pub trait Executor: Send + Sync {
    /// How this executor confines tries, as recorded with each try
    /// (e.g. `landlock-v7`).
    fn sandbox_label(&self) -> String;

    /// Loads the components of a run's tasks (`(task id, digest)`), so a broken
    /// one fails the run before any task starts.
    fn prepare(&self, components: &[(String, String)]) -> Result<(), ExecutorError>;

    /// Starts a try. Its log lines and progress go to `events`; the future
    /// resolves when it has ended. It never panics on what the task does.
    fn run(&self, request: TryRequest, events: UnboundedSender<RunEvent>) -> TryFuture;

    /// A try of `task_id` (component `component`) in run `run_id` is likely
    /// to start soon: a running try's success would start it. An executor
    /// may get ready for it ([`ProcessExecutor`] starts its worker ahead);
    /// what the run has not used by its end is dropped at
    /// [`Executor::release`]. Called again for a task already anticipated.
    fn anticipate(&self, _run_id: &str, _task_id: &str, _component: &str) {}

    /// Waits until nothing left by the run's tries holds files in its staging
    /// directory; called before the directory may be deleted.
    fn release(&self, run_id: &str);

    /// The run's staging is being deleted (the run succeeded): an executor
    /// that keeps staging elsewhere (a Kubernetes volume) deletes it too.
    fn discard_staging(&self, _run_id: &str) {}

    /// Readies the executor for a process that carries out runs, before its
    /// first try: one that runs tries elsewhere connects, takes what it must
    /// hold alone (the Kubernetes executor's single-scheduler lease) and
    /// deletes what an earlier host left that no try claims. Idempotent.
    fn start(&self) -> HostFuture<()> {
        Box::pin(async { Ok(()) })
    }

    /// Whether tries a stopped host left running go on without it (so a
    /// restarted host [adopts](Executor::adopt) them instead of failing them).
    fn adopts(&self) -> bool {
        false
    }

    /// Follows a try that a stopped host started, to its end; called only
    /// when [`Executor::adopts`]. By default the try is lost (retryable).
    fn adopt(&self, request: TryRequest, _events: UnboundedSender<RunEvent>) -> TryFuture {
        let error = format!(
            "the host process stopped during try {} and {} cannot follow it",
            request.key.try_number,
            self.sandbox_label()
        );
        Box::pin(async move {
            TryOutcome::Failed {
                error,
                retryable: true,
            }
        })
    }

    /// Reclaims the staging an executor keeps elsewhere (Kubernetes volumes),
    /// after the sweep of local staging directories: that of runs whose
    /// staging the sweep deleted, and orphans (no run record claims them)
    /// older than `ttl`, recorded in `staging_volumes`. With `dry_run`,
    /// only says which.
    fn sweep_volumes(
        &self,
        _ttl: std::time::Duration,
        _dry_run: bool,
    ) -> HostFuture<Vec<crate::staging::Reclaimed>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
