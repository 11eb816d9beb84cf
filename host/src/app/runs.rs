//! Runs: trigger one, resume one, clear task instances, and read what runs
//! did (their list, one run in detail, its result, a task's log).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedSender;
use utoipa::ToSchema;

use super::{App, AppError, as_text, elapsed};
use crate::dag::DagSpec;
use crate::events::RunEvent;
use crate::scheduler::{ClearScope, RunOptions, RunSummary, carry_out, resume_run, run_dag};
use crate::state::{RunState, TaskState};
use crate::store::{RunRecord, TaskRecord, VersionRecord};

/// Where a run's events (state changes, progress, log lines) go, if anywhere.
pub type Observer = Option<UnboundedSender<RunEvent>>;

/// What a new run is asked for.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// Run params; they override DAG and task params.
    pub params: Map<String, Value>,
    /// The logical date (default: now).
    pub logical_date: Option<DateTime<Utc>>,
    /// Keep the staging directory for the TTL even if the run succeeds.
    pub keep_staging: bool,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FinishedRun {
    /// Run id.
    pub run_id: String,
    /// Final state.
    #[serde(serialize_with = "as_text")]
    #[schema(value_type = String)]
    pub state: RunState,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl From<RunSummary> for FinishedRun {
    fn from(s: RunSummary) -> Self {
        Self {
            run_id: s.run_id,
            state: s.state,
            error: s.error,
        }
    }
}

/// A run as recorded.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunInfo {
    /// Run id.
    pub run_id: String,
    /// DAG id.
    pub dag_id: String,
    /// The DAG version digest it runs.
    pub version: String,
    /// Run state.
    #[serde(serialize_with = "as_text")]
    #[schema(value_type = String)]
    pub state: RunState,
    /// `manual`, `scheduled` or `backfill`.
    pub run_type: String,
    /// Logical date.
    pub logical_date: DateTime<Utc>,
    /// Start of the data interval.
    pub interval_start: DateTime<Utc>,
    /// End of the data interval.
    pub interval_end: DateTime<Utc>,
    /// Run params (a JSON object).
    pub params: String,
    /// Staging directory.
    pub staging_dir: String,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// From start to end, once ended.
    #[schema(value_type = Option<Object>)]
    pub duration: Option<Duration>,
    /// Why it failed.
    pub error: Option<String>,
}

impl From<RunRecord> for RunInfo {
    fn from(r: RunRecord) -> Self {
        let duration = match (r.started_at, r.ended_at) {
            (Some(start), Some(end)) => Some(elapsed(start, end)),
            _ => None,
        };
        Self {
            run_id: r.run_id,
            dag_id: r.dag_id,
            version: r.version,
            state: r.state,
            run_type: r.run_type.to_string(),
            logical_date: r.logical_date,
            interval_start: r.interval_start,
            interval_end: r.interval_end,
            params: r.params,
            staging_dir: r.staging_dir,
            started_at: r.started_at,
            ended_at: r.ended_at,
            duration,
            error: r.error,
        }
    }
}

/// A task instance of a run.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TaskInfo {
    /// Task id.
    pub task_id: String,
    /// State.
    #[serde(serialize_with = "as_text")]
    #[schema(value_type = String)]
    pub state: TaskState,
    /// Current (or last) try; 0 before the first.
    pub try_number: u32,
    /// Tries allowed.
    pub max_tries: u32,
    /// Component digest.
    pub component: String,
    /// Duration of the last try.
    #[schema(value_type = Option<Object>)]
    pub duration: Option<Duration>,
    /// Output JSON, on success.
    pub output: Option<String>,
    /// Error of the last failed try.
    pub error: Option<String>,
}

impl From<TaskRecord> for TaskInfo {
    fn from(t: TaskRecord) -> Self {
        Self {
            task_id: t.task_id,
            state: t.state,
            try_number: t.try_number,
            max_tries: t.max_tries,
            component: t.component,
            duration: t.duration,
            output: t.output,
            error: t.error,
        }
    }
}

/// One run in detail.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunDetail {
    /// The run.
    pub run: RunInfo,
    /// The label of the version it runs.
    pub version_label: String,
    /// How its tries were confined (one entry per distinct sandbox).
    pub sandboxes: Vec<String>,
    /// Its task instances.
    pub tasks: Vec<TaskInfo>,
}

/// What became of a run's staging directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StagingStatus {
    /// Deleted, for this reason.
    Deleted {
        /// `run_succeeded`, `ttl_expired` or `orphaned`.
        reason: Option<String>,
    },
    /// Kept until this time (none: until the run ends).
    Kept {
        /// When it may be reclaimed.
        until: Option<DateTime<Utc>>,
    },
    /// The metadatabase has no record of it.
    Unrecorded,
}

/// What a run produced: its state, staging, and the tasks nothing depends on.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunResult {
    /// The run.
    pub run: RunInfo,
    /// Its staging directory.
    pub staging: StagingStatus,
    /// The task instances no other task depends on (their outputs are the run's).
    pub leaves: Vec<TaskInfo>,
}

/// Which runs a page of [`App::runs_page`] holds.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs of this DAG.
    pub dag_id: Option<String>,
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// At most this many (1 to [`MAX_PAGE`]).
    pub limit: u32,
    /// After skipping this many.
    pub offset: u32,
}

/// The most rows one page of runs or log lines may hold.
pub const MAX_PAGE: u32 = 1000;

/// A page of runs, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunPage {
    /// The runs.
    pub runs: Vec<RunInfo>,
    /// The offset of the next page, if there may be one.
    pub next_offset: Option<u32>,
}

/// One try of a task instance.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TryInfo {
    /// Try number (from 1).
    pub try_number: u32,
    /// The DAG version digest the try ran.
    pub version: String,
    /// The component digest the try ran.
    pub component: String,
    /// How it ended (`running` while it runs).
    #[schema(value_type = String)]
    pub state: TaskState,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End.
    pub ended_at: Option<DateTime<Utc>>,
    /// From start to end, once ended.
    #[schema(value_type = Option<Object>)]
    pub duration: Option<Duration>,
    /// Error, if it failed.
    pub error: Option<String>,
}

/// A task instance and its tries.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskDetail {
    /// Run id.
    pub run_id: String,
    /// DAG id.
    pub dag_id: String,
    /// The task instance.
    pub task: TaskInfo,
    /// Its tries, in order.
    pub tries: Vec<TryInfo>,
}

/// A page of a task's log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LogPage {
    /// The lines, in order.
    pub lines: Vec<LogLine>,
    /// The id to ask for the lines after these (`after`); the same as asked
    /// when there were none.
    pub next_after: i64,
}

/// One line of a task's log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LogLine {
    /// The line's id (increasing).
    pub id: i64,
    /// Try number.
    pub try_number: u32,
    /// When.
    pub ts: DateTime<Utc>,
    /// Level name.
    pub level: String,
    /// Message.
    pub message: String,
}

/// The task instances of `tasks` that no task of `spec` runs after, in the given order.
pub fn leaf_tasks(spec: &DagSpec, tasks: Vec<TaskInfo>) -> Vec<TaskInfo> {
    let upstream: HashSet<&str> = spec
        .tasks
        .iter()
        .flat_map(|t| t.after.iter().map(String::as_str))
        .collect();
    tasks
        .into_iter()
        .filter(|t| !upstream.contains(t.task_id.as_str()))
        .collect()
}

impl App {
    /// Creates a run of `version` and carries it to its end.
    pub async fn trigger_run(
        &self,
        version: &VersionRecord,
        request: RunRequest,
        observer: Observer,
    ) -> Result<FinishedRun, AppError> {
        self.check_sandbox()?;
        let options = RunOptions {
            params: request.params,
            logical_date: request.logical_date,
            staging: self.staging_policy(request.keep_staging),
            ..RunOptions::default()
        };
        Ok(run_dag(&self.sluice, version, options, observer)
            .await?
            .into())
    }

    /// Carries run `run_id` to its end: one whose host died (tries left
    /// running count as failed) or one with cleared tasks.
    pub async fn resume_run(
        &self,
        run_id: &str,
        keep_staging: bool,
        observer: Observer,
    ) -> Result<FinishedRun, AppError> {
        self.check_sandbox()?;
        let policy = self.staging_policy(keep_staging);
        Ok(resume_run(&self.sluice, run_id, policy, observer)
            .await?
            .into())
    }

    /// Resets `task_id` (and its `scope`) in run `run_id` for another try,
    /// re-binding the run to its DAG's current version; with `dry_run`,
    /// changes nothing. Returns the task ids cleared (or that would be).
    pub fn clear(
        &self,
        run_id: &str,
        task_id: &str,
        scope: ClearScope,
        dry_run: bool,
    ) -> Result<Vec<String>, AppError> {
        Ok(crate::scheduler::clear(
            &self.sluice,
            run_id,
            task_id,
            scope,
            dry_run,
        )?)
    }

    /// Clears as [`App::clear`] does and, unless `dry_run`, carries the run
    /// on in the background on the current tokio runtime (its events reach
    /// [`App::watch`]ers). Must be called within the runtime.
    pub fn clear_and_resume(
        &self,
        run_id: &str,
        task_id: &str,
        scope: ClearScope,
        dry_run: bool,
    ) -> Result<Vec<String>, AppError> {
        if !dry_run {
            self.check_sandbox()?;
        }
        let cleared = self.clear(run_id, task_id, scope, dry_run)?;
        if !dry_run {
            let sluice = self.sluice.clone();
            let policy = self.staging_policy(false);
            let run_id = run_id.to_owned();
            tokio::runtime::Handle::current().spawn(async move {
                if let Err(e) = resume_run(&sluice, &run_id, policy, None).await {
                    tracing::error!("run `{run_id}` stopped: {e}");
                }
            });
        }
        Ok(cleared)
    }

    /// The DAG version run `run_id` is bound to.
    pub fn run_version(&self, run_id: &str) -> Result<VersionRecord, AppError> {
        let run = self.sluice.store.run(run_id)?;
        Ok(self.sluice.store.version(&run.dag_id, &run.version)?)
    }

    /// What run `run_id` produced.
    pub fn run_result(&self, run_id: &str) -> Result<RunResult, AppError> {
        let store = &self.sluice.store;
        let run = store.run(run_id)?;
        let version = store.version(&run.dag_id, &run.version)?;
        let staging = match store.volume(run_id)? {
            Some(v) if v.deleted_at.is_some() => StagingStatus::Deleted {
                reason: v.delete_reason,
            },
            Some(v) => StagingStatus::Kept {
                until: v.released_at.map(|t| self.kept_until(t)).transpose()?,
            },
            None => StagingStatus::Unrecorded,
        };
        let tasks = store
            .tasks(run_id)?
            .into_iter()
            .map(TaskInfo::from)
            .collect();
        Ok(RunResult {
            leaves: leaf_tasks(&version.spec, tasks),
            run: run.into(),
            staging,
        })
    }

    /// Creates a run of `dag_id`'s current version and carries it out in the
    /// background on the current tokio runtime; returns the run as created.
    /// Its events reach [`App::watch`]ers. Must be called within the runtime.
    pub fn start_run(&self, dag_id: &str, request: RunRequest) -> Result<RunInfo, AppError> {
        self.check_sandbox()?;
        let version = self.current_version(dag_id)?;
        let options = RunOptions {
            params: request.params,
            logical_date: request.logical_date,
            staging: self.staging_policy(request.keep_staging),
            ..RunOptions::default()
        };
        let record = crate::scheduler::create_run(&self.sluice, &version, &options)?;
        let info = RunInfo::from(record.clone());
        let sluice = self.sluice.clone();
        tokio::runtime::Handle::current().spawn(async move {
            let run_id = record.run_id.clone();
            if let Err(e) = carry_out(&sluice, &version, record, options, None).await {
                tracing::error!("run `{run_id}` stopped: {e}");
            }
        });
        Ok(info)
    }

    /// A page of runs, newest first.
    pub fn runs_page(&self, filter: &RunFilter) -> Result<RunPage, AppError> {
        if !(1..=MAX_PAGE).contains(&filter.limit) {
            return Err(AppError::InvalidInput {
                field: "limit".into(),
                reason: format!("must be 1 to {MAX_PAGE}, not {}", filter.limit),
            });
        }
        let runs: Vec<RunInfo> = self
            .sluice
            .store
            .runs_page(
                filter.dag_id.as_deref(),
                filter.state,
                filter.limit,
                filter.offset,
            )?
            .into_iter()
            .map(RunInfo::from)
            .collect();
        let next_offset = (runs.len() == filter.limit as usize)
            .then(|| filter.offset.checked_add(filter.limit))
            .flatten();
        Ok(RunPage { runs, next_offset })
    }

    /// Task instance `task_id` of run `run_id` and its tries.
    pub fn task_detail(&self, run_id: &str, task_id: &str) -> Result<TaskDetail, AppError> {
        let store = &self.sluice.store;
        let run = store.run(run_id)?;
        let task = store
            .tasks(run_id)?
            .into_iter()
            .find(|t| t.task_id == task_id)
            .ok_or_else(|| AppError::NoSuchTask {
                run_id: run_id.to_owned(),
                task_id: task_id.to_owned(),
            })?;
        let tries = store
            .tries(run_id, task_id)?
            .into_iter()
            .map(|t| TryInfo {
                duration: t.ended_at.map(|end| elapsed(t.started_at, end)),
                try_number: t.try_number,
                version: t.version,
                component: t.component,
                state: t.state,
                started_at: t.started_at,
                ended_at: t.ended_at,
                error: t.error,
            })
            .collect();
        Ok(TaskDetail {
            run_id: run.run_id,
            dag_id: run.dag_id,
            task: task.into(),
            tries,
        })
    }

    /// At most `limit` lines of the log of `task_id` in run `run_id` (one
    /// try or all) after line `after` (0: from the start).
    pub fn logs_page(
        &self,
        run_id: &str,
        task_id: &str,
        try_number: Option<u32>,
        after: i64,
        limit: u32,
    ) -> Result<LogPage, AppError> {
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(AppError::InvalidInput {
                field: "limit".into(),
                reason: format!("must be 1 to {MAX_PAGE}, not {limit}"),
            });
        }
        self.task_detail(run_id, task_id)?;
        let lines: Vec<LogLine> = self
            .sluice
            .store
            .logs_page(run_id, task_id, try_number, after, limit)?
            .into_iter()
            .map(|l| LogLine {
                id: l.id,
                try_number: l.try_number,
                ts: l.ts,
                level: l.level,
                message: l.message,
            })
            .collect();
        let next_after = lines.last().map_or(after, |l| l.id);
        Ok(LogPage { lines, next_after })
    }

    /// Recent runs, newest first, of one DAG or all; at most `limit`.
    pub fn list_runs(&self, dag_id: Option<&str>, limit: u32) -> Result<Vec<RunInfo>, AppError> {
        Ok(self
            .sluice
            .store
            .runs(dag_id, limit)?
            .into_iter()
            .map(RunInfo::from)
            .collect())
    }

    /// Run `run_id`, its version and its task instances.
    pub fn show_run(&self, run_id: &str) -> Result<RunDetail, AppError> {
        let store = &self.sluice.store;
        let run = store.run(run_id)?;
        let version = store.version(&run.dag_id, &run.version)?;
        Ok(RunDetail {
            version_label: version.label,
            sandboxes: store.run_sandboxes(run_id)?,
            tasks: store
                .tasks(run_id)?
                .into_iter()
                .map(TaskInfo::from)
                .collect(),
            run: run.into(),
        })
    }

    /// The log of task `task_id` in run `run_id`, of one try or all.
    pub fn logs(
        &self,
        run_id: &str,
        task_id: &str,
        try_number: Option<u32>,
    ) -> Result<Vec<LogLine>, AppError> {
        let store = &self.sluice.store;
        let run = store.run(run_id)?;
        if !store
            .tasks(&run.run_id)?
            .iter()
            .any(|t| t.task_id == task_id)
        {
            return Err(AppError::NoSuchTask {
                run_id: run_id.to_owned(),
                task_id: task_id.to_owned(),
            });
        }
        Ok(store
            .logs(run_id, task_id, try_number)?
            .into_iter()
            .map(|l| LogLine {
                id: l.id,
                try_number: l.try_number,
                ts: l.ts,
                level: l.level,
                message: l.message,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::{TaskPolicy, TaskSpec};

    fn spec(edges: &[(&str, &[&str])]) -> DagSpec {
        DagSpec {
            id: "d".into(),
            description: String::new(),
            params: Map::new(),
            max_active_tasks: 1,
            schedule: None,
            tasks: edges
                .iter()
                .map(|(id, after)| TaskSpec {
                    id: (*id).into(),
                    plugin: "p".into(),
                    component: String::new(),
                    after: after.iter().map(|a| (*a).to_owned()).collect(),
                    params: Map::new(),
                    connections: Vec::new(),
                    privileged_connections: Vec::new(),
                    policy: TaskPolicy::default(),
                })
                .collect(),
        }
    }

    fn task(id: &str, state: TaskState) -> TaskInfo {
        TaskInfo {
            task_id: id.into(),
            state,
            try_number: 1,
            max_tries: 1,
            component: String::new(),
            duration: None,
            output: None,
            error: None,
        }
    }

    fn ids(tasks: &[TaskInfo]) -> Vec<&str> {
        tasks.iter().map(|t| t.task_id.as_str()).collect()
    }

    #[test]
    fn leaves_are_the_tasks_nothing_runs_after_in_record_order() {
        // a -> b -> d, a -> c: c and d are the leaves; records come d-first.
        let spec = spec(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b"])]);
        let tasks = ["d", "a", "c", "b"]
            .iter()
            .map(|id| task(id, TaskState::Success))
            .collect();
        assert_eq!(ids(&leaf_tasks(&spec, tasks)), ["d", "c"]);
    }

    #[test]
    fn a_failed_leaf_or_an_upstream_failed_one_is_still_a_leaf() {
        let spec = spec(&[("extract", &[]), ("load", &["extract"])]);
        let tasks = vec![
            task("extract", TaskState::Failed),
            task("load", TaskState::UpstreamFailed),
        ];
        let leaves = leaf_tasks(&spec, tasks);
        assert_eq!(ids(&leaves), ["load"]);
        assert_eq!(leaves[0].state, TaskState::UpstreamFailed);
    }

    #[test]
    fn every_task_of_a_dag_without_edges_is_a_leaf() {
        let spec = spec(&[("x", &[]), ("y", &[])]);
        let tasks = vec![task("x", TaskState::Success), task("y", TaskState::Failed)];
        assert_eq!(ids(&leaf_tasks(&spec, tasks)), ["x", "y"]);
    }

    #[test]
    fn a_run_serializes_its_states_by_name() {
        let finished = FinishedRun {
            run_id: "manual__1".into(),
            state: RunState::Failed,
            error: None,
        };
        let json = serde_json::to_value(&finished).expect("serialize");
        assert_eq!(json["state"], "failed");
        let json = serde_json::to_value(task("t", TaskState::UpForRetry)).expect("serialize");
        assert_eq!(json["state"], "up_for_retry");
    }
}
