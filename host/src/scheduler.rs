//! Runs a DAG version to its end: task instances start when their upstream
//! tasks succeeded, independent ones in parallel (up to `max_active_tasks`);
//! failed tries are retried after their delay; downstream of a failure becomes
//! `upstream_failed`. The scheduler is the only writer of run records.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;

use crate::bindings::TaskPre;
use crate::capabilities::TaskHost;
use crate::dag::{DagSpec, TaskSpec};
use crate::events::{RunEvent, TaskKey};
use crate::executor::{Closing, TryOutcome, TryRequest, run_try};
use crate::runtime::Sluice;
use crate::schedule::Interval;
use crate::staging;
use crate::state::{RunState, TaskState, VolumeState};
use crate::store::{NewLog, RunRecord, StoreError, VersionRecord};

/// Log lines buffered before a metadatabase write.
const LOG_BATCH: usize = 256;

/// Why a run could not be carried out (task failures are not errors: they end
/// the run `failed`).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The metadatabase failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The signature policy refused the version.
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    /// The staging lifecycle failed.
    #[error(transparent)]
    Lifecycle(#[from] staging::StagingError),
    /// What was asked cannot be done (unknown task, run still running, ...).
    #[error("{0}")]
    Invalid(String),
    /// The staging directory could not be created.
    #[error("cannot create staging directory {path}: {source}")]
    Staging {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Options of a new run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Params given for this run; they override DAG and task params.
    pub params: Map<String, Value>,
    /// The logical date (default: now).
    pub logical_date: Option<DateTime<Utc>>,
    /// What happens to the staging directory when the run ends.
    pub staging: StagingPolicy,
    /// Why the run exists.
    pub run_type: RunType,
    /// The data interval (scheduled and backfill runs); its start is the logical date.
    pub interval: Option<Interval>,
}

pub use crate::state::RunType;

/// What happens to a run's staging directory when the run ends.
#[derive(Debug, Clone, Copy)]
pub struct StagingPolicy {
    /// Keep it for `ttl` even if the run succeeds.
    pub keep: bool,
    /// How long a failed (or kept) run's directory is kept.
    pub ttl: std::time::Duration,
}

impl Default for StagingPolicy {
    fn default() -> Self {
        Self {
            keep: false,
            ttl: staging::DEFAULT_TTL,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// Final state.
    pub state: RunState,
    /// The run's staging directory.
    pub staging_dir: PathBuf,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// A new run id: `<type>__<timestamp>_<random hex>`; the timestamp is the
/// logical date for scheduled and backfill runs, the creation time otherwise.
pub fn new_run_id(run_type: RunType, when: DateTime<Utc>) -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128);
    hasher.write_u32(std::process::id());
    format!(
        "{}__{}_{:06x}",
        run_type.as_str(),
        when.format("%Y%m%dT%H%M%S"),
        hasher.finish() & 0xff_ffff
    )
}

/// Creates a run of `version` and carries it to its end. Events go to `observer`.
pub async fn run_dag(
    sluice: &Sluice,
    version: &VersionRecord,
    options: RunOptions,
    observer: Option<UnboundedSender<RunEvent>>,
) -> Result<RunSummary, RunError> {
    let record = create_run(sluice, version, &options)?;
    let mut run = RunLoop::load(
        sluice,
        &version.spec,
        record,
        options.params,
        options.staging,
        observer,
    )?;
    run.drive().await
}

/// Records a new run of `version` (task instances `scheduled`) and creates its
/// staging directory, without running anything. Refuses a version the
/// signature policy does not allow.
pub fn create_run(
    sluice: &Sluice,
    version: &VersionRecord,
    options: &RunOptions,
) -> Result<RunRecord, RunError> {
    // Refused before anything is recorded.
    crate::trust::check(&sluice.store, &version.dag_id, &version.digest)?;
    let now = Utc::now();
    let interval = options.interval.unwrap_or_else(|| {
        let logical = options.logical_date.unwrap_or(now);
        Interval {
            start: logical,
            end: logical,
        }
    });
    let when = if options.interval.is_some() {
        interval.start
    } else {
        now
    };
    let run_id = new_run_id(options.run_type, when);
    let staging = sluice.home.staging(&run_id);
    let staging = std::fs::create_dir_all(&staging)
        .and_then(|()| staging.canonicalize())
        .map_err(|source| RunError::Staging {
            path: staging.clone(),
            source,
        })?;
    let record = RunRecord {
        run_id: run_id.clone(),
        dag_id: version.dag_id.clone(),
        version: version.digest.clone(),
        state: RunState::Queued,
        logical_date: interval.start,
        run_type: options.run_type,
        interval_start: interval.start,
        interval_end: interval.end,
        params: Value::Object(options.params.clone()).to_string(),
        staging_dir: staging.display().to_string(),
        created_at: now,
        started_at: None,
        ended_at: None,
        error: None,
    };
    sluice.store.create_run(&record, &version.spec)?;
    sluice.store.add_volume(&run_id, &record.staging_dir, now)?;
    // The automatic sweep: reclaim what expired while nothing was running.
    if let Err(e) = staging::sweep(&sluice.home, &sluice.store, options.staging.ttl, now, false) {
        tracing::warn!("staging sweep failed: {e}");
    }
    Ok(record)
}

/// Carries an existing run to its end: a run whose host process died (tries
/// left `running` count as failed tries), or one with cleared tasks. Tasks that
/// succeeded are not run again; their staged files and outputs are reused.
pub async fn resume_run(
    sluice: &Sluice,
    run_id: &str,
    policy: StagingPolicy,
    observer: Option<UnboundedSender<RunEvent>>,
) -> Result<RunSummary, RunError> {
    let record = sluice.store.run(run_id)?;
    let version = sluice.store.version(&record.dag_id, &record.version)?;
    crate::trust::check(&sluice.store, &record.dag_id, &record.version)?;
    let params: Map<String, Value> = serde_json::from_str(&record.params).unwrap_or_default();
    let mut run = RunLoop::load(sluice, &version.spec, record, params, policy, observer)?;
    run.recover_interrupted()?;
    if let Some(why) = run.staging_gone()? {
        run.fail_pending(&why)?;
        return run.finish();
    }
    sluice.store.activate_volume(run_id)?;
    run.drive().await
}

/// Which task instances a clear resets.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClearScope {
    /// Also everything downstream of the task.
    pub downstream: bool,
    /// Also everything upstream of the task.
    pub upstream: bool,
}

/// Resets `task_id` (and its scope) in `run_id` for another try, re-binding the
/// run to its DAG's current version. With `dry_run`, only reports the tasks.
/// Tasks downstream of a cleared task that were `upstream_failed` are reset
/// too, since the failure that blocked them is being retried.
pub fn clear(
    sluice: &Sluice,
    run_id: &str,
    task_id: &str,
    scope: ClearScope,
    dry_run: bool,
) -> Result<Vec<String>, RunError> {
    let run = sluice.store.run(run_id)?;
    if run.state == RunState::Running {
        return Err(RunError::Invalid(format!(
            "run `{run_id}` is running; clear it once it has ended"
        )));
    }
    let current = sluice.store.current_version(&run.dag_id)?;
    let spec = &current.spec;
    if spec.task(task_id).is_none() {
        return Err(RunError::Invalid(format!(
            "task `{task_id}` is not in the current version {} of DAG `{}`",
            &current.digest[..12],
            run.dag_id
        )));
    }
    let existing = sluice.store.tasks(run_id)?;
    let missing: Vec<&str> = spec
        .tasks
        .iter()
        .map(|t| t.id.as_str())
        .filter(|id| !existing.iter().any(|e| e.task_id == *id))
        .collect();
    if !missing.is_empty() {
        return Err(RunError::Invalid(format!(
            "the current version of `{}` has tasks this run never had ({}); start a new run",
            run.dag_id,
            missing.join(", ")
        )));
    }
    let mut selected: Vec<String> = vec![task_id.to_owned()];
    if scope.upstream {
        selected.extend(related(spec, task_id, Direction::Upstream));
    }
    if scope.downstream {
        selected.extend(related(spec, task_id, Direction::Downstream));
    } else {
        let blocked = related(spec, task_id, Direction::Downstream);
        selected.extend(blocked.into_iter().filter(|t| {
            existing
                .iter()
                .any(|e| &e.task_id == t && e.state == TaskState::UpstreamFailed)
        }));
    }
    let mut ordered: Vec<String> = spec
        .tasks
        .iter()
        .map(|t| t.id.clone())
        .filter(|t| selected.contains(t))
        .collect();
    ordered.dedup();
    if !dry_run {
        let tries: Vec<(String, u32)> = ordered
            .iter()
            .filter_map(|t| spec.task(t).map(|s| (t.clone(), s.policy.max_tries())))
            .collect();
        sluice.store.rebind_run(run_id, &current.digest)?;
        sluice.store.reset_tasks(run_id, &tries)?;
    }
    Ok(ordered)
}

#[derive(Clone, Copy)]
enum Direction {
    Upstream,
    Downstream,
}

/// Tasks transitively upstream or downstream of `task_id`.
fn related(spec: &DagSpec, task_id: &str, direction: Direction) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut frontier = vec![task_id.to_owned()];
    while let Some(current) = frontier.pop() {
        let next: Vec<String> = match direction {
            Direction::Upstream => spec
                .task(&current)
                .map(|t| t.after.clone())
                .unwrap_or_default(),
            Direction::Downstream => spec
                .tasks
                .iter()
                .filter(|t| t.after.contains(&current))
                .map(|t| t.id.clone())
                .collect(),
        };
        for t in next {
            if !found.contains(&t) {
                found.push(t.clone());
                frontier.push(t);
            }
        }
    }
    found
}

struct TaskSlot {
    state: TaskState,
    try_number: u32,
    /// Tries allowed, as stored (a clear extends it).
    max_tries: u32,
    output: Option<Value>,
    error: Option<String>,
}

enum Completion {
    TryDone {
        task_id: String,
        try_number: u32,
        started: DateTime<Utc>,
        elapsed: std::time::Duration,
        outcome: TryOutcome,
    },
    RetryDue {
        task_id: String,
    },
}

struct RunLoop<'a> {
    sluice: &'a Sluice,
    spec: &'a DagSpec,
    run: RunRecord,
    run_params: Map<String, Value>,
    staging: StagingPolicy,
    slots: HashMap<String, TaskSlot>,
    running: JoinSet<Completion>,
    active: usize,
    events_tx: UnboundedSender<RunEvent>,
    events_rx: UnboundedReceiver<RunEvent>,
    closing: Closing,
    vault: Option<Result<crate::vault::Vault, String>>,
    observer: Option<UnboundedSender<RunEvent>>,
    logs: Vec<NewLog>,
}

impl<'a> RunLoop<'a> {
    /// A loop over `run`, with task states as stored.
    fn load(
        sluice: &'a Sluice,
        spec: &'a DagSpec,
        run: RunRecord,
        run_params: Map<String, Value>,
        staging: StagingPolicy,
        observer: Option<UnboundedSender<RunEvent>>,
    ) -> Result<Self, RunError> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let slots = sluice
            .store
            .tasks(&run.run_id)?
            .into_iter()
            .map(|t| {
                let output = t
                    .output
                    .as_deref()
                    .map(|o| serde_json::from_str(o).unwrap_or(Value::String(o.to_owned())));
                (
                    t.task_id,
                    TaskSlot {
                        state: t.state,
                        try_number: t.try_number,
                        max_tries: t.max_tries,
                        output,
                        error: t.error,
                    },
                )
            })
            .collect();
        Ok(Self {
            sluice,
            spec,
            run,
            run_params,
            staging,
            slots,
            running: JoinSet::new(),
            active: 0,
            events_tx,
            events_rx,
            closing: Closing::default(),
            vault: None,
            observer,
            logs: Vec::new(),
        })
    }

    /// Tries left `running` (or waiting) by a host process that died: a running
    /// try counts as failed and is retried if tries remain.
    fn recover_interrupted(&mut self) -> Result<(), RunError> {
        let now = Utc::now();
        for task in &self.spec.tasks {
            let Some(slot) = self.slots.get(&task.id) else {
                continue;
            };
            let (state, try_number, max_tries) = (slot.state, slot.try_number, slot.max_tries);
            match state {
                TaskState::Running => {
                    let error = format!("the host process stopped during try {try_number}");
                    let retry = try_number < max_tries;
                    let next = if retry {
                        TaskState::UpForRetry
                    } else {
                        TaskState::Failed
                    };
                    let started = self
                        .sluice
                        .store
                        .tries(&self.run.run_id, &task.id)?
                        .last()
                        .map_or(now, |t| t.started_at);
                    let elapsed = (now - started).to_std().unwrap_or_default();
                    self.sluice.store.end_try(
                        &self.run.run_id,
                        &task.id,
                        try_number,
                        next,
                        now,
                        elapsed,
                        None,
                        Some(&error),
                    )?;
                    self.set_state(
                        &task.id,
                        if retry {
                            TaskState::Scheduled
                        } else {
                            TaskState::Failed
                        },
                        Some(error),
                    )?;
                    if !retry {
                        self.fail_downstream(&task.id)?;
                    }
                }
                TaskState::Queued | TaskState::UpForRetry => {
                    self.set_state(&task.id, TaskState::Scheduled, None)?
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Why the run's staging directory can no longer be used, if it cannot.
    fn staging_gone(&self) -> Result<Option<String>, RunError> {
        let volume = self.sluice.store.volume(&self.run.run_id)?;
        if let Some(v) = volume.filter(|v| v.state == VolumeState::Deleted) {
            return Ok(Some(format!(
                "the run's staging directory {} was reclaimed ({}, at {}); the upstream data this task needs is gone, start a new run",
                v.path,
                v.delete_reason.as_deref().unwrap_or("unknown reason"),
                v.deleted_at.map(|t| t.to_rfc3339()).unwrap_or_default()
            )));
        }
        if !std::path::Path::new(&self.run.staging_dir).is_dir() {
            return Ok(Some(format!(
                "the run's staging directory {} no longer exists; the upstream data this task needs is gone, start a new run",
                self.run.staging_dir
            )));
        }
        Ok(None)
    }

    /// Fails every task that would still run, with `why`.
    fn fail_pending(&mut self, why: &str) -> Result<(), RunError> {
        for task in &self.spec.tasks {
            if self
                .slots
                .get(&task.id)
                .is_some_and(|s| !s.state.is_finished())
            {
                self.set_state(&task.id, TaskState::Failed, Some(why.to_owned()))?;
            }
        }
        Ok(())
    }

    async fn drive(&mut self) -> Result<RunSummary, RunError> {
        self.sluice
            .store
            .set_run_state(&self.run.run_id, RunState::Running, None)?;
        let components = self.prepare_components();
        if let Err(error) = &components {
            for task in &self.spec.tasks {
                self.set_state(&task.id, TaskState::Failed, Some(error.clone()))?;
            }
        }
        let components = components.unwrap_or_default();

        loop {
            self.start_ready(&components)?;
            if self.running.is_empty() {
                break;
            }
            tokio::select! {
                Some(joined) = self.running.join_next() => {
                    self.drain_events()?;
                    match joined {
                        Ok(completion) => self.complete(completion)?,
                        Err(e) => tracing::error!("a task supervisor failed: {e}"),
                    }
                }
                Some(event) = self.events_rx.recv() => self.on_event(event)?,
            }
        }
        self.drain_events()?;
        self.flush_logs()?;
        self.finish()
    }

    /// Loads every component of the DAG, so a broken blob fails the run before any task starts.
    fn prepare_components(&self) -> Result<HashMap<String, TaskPre<TaskHost>>, String> {
        let mut out = HashMap::new();
        for task in &self.spec.tasks {
            let blob = self.sluice.home.blob(&task.component);
            let prepared = self
                .sluice
                .engine
                .prepare(&task.component, &blob)
                .map_err(|e| {
                    format!(
                        "task `{}`: cannot load component {}: {e}",
                        task.id, task.component
                    )
                })?;
            out.insert(task.id.clone(), prepared.pre);
        }
        Ok(out)
    }

    fn start_ready(
        &mut self,
        components: &HashMap<String, TaskPre<TaskHost>>,
    ) -> Result<(), RunError> {
        for task in &self.spec.tasks {
            let Some(slot) = self.slots.get(&task.id) else {
                continue;
            };
            if slot.state != TaskState::Scheduled && slot.state != TaskState::Queued {
                continue;
            }
            let upstream: Vec<TaskState> = task
                .after
                .iter()
                .filter_map(|d| self.slots.get(d))
                .map(|s| s.state)
                .collect();
            if !upstream.iter().all(|s| *s == TaskState::Success) {
                continue;
            }
            if self.active >= self.spec.max_active_tasks as usize {
                if slot.state == TaskState::Scheduled {
                    self.set_state(&task.id, TaskState::Queued, None)?;
                }
                continue;
            }
            let Some(pre) = components.get(&task.id) else {
                continue;
            };
            self.start_try(task, pre.clone())?;
        }
        Ok(())
    }

    fn start_try(&mut self, task: &TaskSpec, pre: TaskPre<TaskHost>) -> Result<(), RunError> {
        let try_number = self.slots.get(&task.id).map_or(0, |s| s.try_number) + 1;
        let started = Utc::now();
        self.sluice.store.start_try(
            &self.run.run_id,
            &task.id,
            try_number,
            &self.run.version,
            &task.component,
            &self.sluice.sandbox.label(),
            started,
        )?;
        if let Some(slot) = self.slots.get_mut(&task.id) {
            slot.state = TaskState::Running;
            slot.try_number = try_number;
        }
        self.notify(RunEvent::TaskState {
            task_id: task.id.clone(),
            state: TaskState::Running,
            try_number,
            error: None,
        });

        let connections = match self.resolve_connections(task) {
            Ok(connections) => connections,
            Err(error) => {
                // A grant that cannot be honoured fails the try at once; retrying cannot fix it.
                let task_id = task.id.clone();
                self.active += 1;
                self.running.spawn(async move {
                    let outcome = TryOutcome::Failed {
                        error,
                        retryable: false,
                    };
                    Completion::TryDone {
                        task_id,
                        try_number,
                        started,
                        elapsed: Default::default(),
                        outcome,
                    }
                });
                return Ok(());
            }
        };
        let mut params = self.spec.params.clone();
        params.extend(task.params.clone());
        params.extend(self.run_params.clone());
        let upstream = task
            .after
            .iter()
            .filter_map(|d| Some((d.clone(), self.slots.get(d)?.output.clone()?)))
            .collect();
        let request = TryRequest {
            key: TaskKey {
                run_id: self.run.run_id.clone(),
                task_id: task.id.clone(),
                try_number,
            },
            dag_id: self.spec.id.clone(),
            logical_date: self.run.logical_date,
            interval: Interval {
                start: self.run.interval_start,
                end: self.run.interval_end,
            },
            params: Value::Object(params),
            upstream,
            staging_dir: PathBuf::from(&self.run.staging_dir),
            policy: task.policy,
            connections,
        };
        let engine = self.sluice.engine.clone();
        let sql_pool = self.sluice.sql_pool.clone();
        let sandbox = self.sluice.sandbox.clone();
        let closing = self.closing.clone();
        let events = self.events_tx.clone();
        let task_id = task.id.clone();
        self.active += 1;
        self.running.spawn(async move {
            let clock = Instant::now();
            let outcome = run_try(engine, sql_pool, sandbox, pre, request, events, closing).await;
            Completion::TryDone {
                task_id,
                try_number,
                started,
                elapsed: clock.elapsed(),
                outcome,
            }
        });
        Ok(())
    }

    fn complete(&mut self, completion: Completion) -> Result<(), RunError> {
        match completion {
            Completion::RetryDue { task_id } => {
                self.set_state(&task_id, TaskState::Scheduled, None)?;
            }
            Completion::TryDone {
                task_id,
                try_number,
                started,
                elapsed,
                outcome,
            } => {
                self.active = self.active.saturating_sub(1);
                self.flush_logs()?;
                let ended = started + chrono::Duration::from_std(elapsed).unwrap_or_default();
                let Some(task) = self.spec.task(&task_id) else {
                    return Ok(());
                };
                match outcome {
                    TryOutcome::Success { output } => {
                        let value =
                            serde_json::from_str(&output).unwrap_or(Value::String(output.clone()));
                        self.sluice.store.end_try(
                            &self.run.run_id,
                            &task_id,
                            try_number,
                            TaskState::Success,
                            ended,
                            elapsed,
                            Some(&output),
                            None,
                        )?;
                        if let Some(slot) = self.slots.get_mut(&task_id) {
                            slot.state = TaskState::Success;
                            slot.output = Some(value);
                        }
                        self.notify(RunEvent::TaskState {
                            task_id,
                            state: TaskState::Success,
                            try_number,
                            error: None,
                        });
                    }
                    TryOutcome::Failed { error, retryable } => {
                        // The stored allowance, which a clear extends past the policy's.
                        let allowed = self
                            .slots
                            .get(&task_id)
                            .map_or(task.policy.max_tries(), |s| s.max_tries);
                        let retry = retryable && try_number < allowed;
                        let state = if retry {
                            TaskState::UpForRetry
                        } else {
                            TaskState::Failed
                        };
                        self.sluice.store.end_try(
                            &self.run.run_id,
                            &task_id,
                            try_number,
                            state,
                            ended,
                            elapsed,
                            None,
                            Some(&error),
                        )?;
                        if let Some(slot) = self.slots.get_mut(&task_id) {
                            slot.state = state;
                            slot.error = Some(error.clone());
                        }
                        self.notify(RunEvent::TaskState {
                            task_id: task_id.clone(),
                            state,
                            try_number,
                            error: Some(error),
                        });
                        if retry {
                            let delay = task.policy.delay_before(try_number + 1);
                            self.running.spawn(async move {
                                tokio::time::sleep(delay).await;
                                Completion::RetryDue { task_id }
                            });
                        } else {
                            self.fail_downstream(&task_id)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The connections granted to `task`, decrypted for the host.
    fn resolve_connections(
        &mut self,
        task: &TaskSpec,
    ) -> Result<Vec<crate::connections::Connection>, String> {
        if task.connections.is_empty() {
            return Ok(Vec::new());
        }
        let vault = self.vault.get_or_insert_with(|| {
            crate::vault::Vault::open(&self.sluice.store, self.sluice.home.root())
                .map_err(|e| e.to_string())
        });
        let vault = vault
            .as_ref()
            .map_err(|e| format!("cannot open the connection vault: {e}"))?;
        task.connections
            .iter()
            .map(|id| {
                let mut connection = crate::connections::get(&self.sluice.store, vault, id)
                    .map_err(|e| e.to_string())?;
                connection.allow_privileged = task.privileged_connections.contains(id);
                Ok(connection)
            })
            .collect()
    }

    /// Marks every task downstream of `failed` (transitively) `upstream_failed`.
    fn fail_downstream(&mut self, failed: &str) -> Result<(), RunError> {
        let mut doomed: HashSet<String> = HashSet::from([failed.to_owned()]);
        for task in &self.spec.tasks {
            if task.after.iter().any(|d| doomed.contains(d)) {
                doomed.insert(task.id.clone());
                let pending = self
                    .slots
                    .get(&task.id)
                    .is_some_and(|s| !s.state.is_finished() && s.state != TaskState::Running);
                if pending {
                    self.set_state(
                        &task.id,
                        TaskState::UpstreamFailed,
                        Some(format!("upstream task `{failed}` failed")),
                    )?;
                }
            }
        }
        Ok(())
    }

    fn set_state(
        &mut self,
        task_id: &str,
        state: TaskState,
        error: Option<String>,
    ) -> Result<(), RunError> {
        self.sluice
            .store
            .set_task_state(&self.run.run_id, task_id, state, error.as_deref())?;
        let try_number = match self.slots.get_mut(task_id) {
            Some(slot) => {
                slot.state = state;
                if error.is_some() {
                    slot.error.clone_from(&error);
                }
                slot.try_number
            }
            None => 0,
        };
        self.notify(RunEvent::TaskState {
            task_id: task_id.to_owned(),
            state,
            try_number,
            error,
        });
        Ok(())
    }

    fn on_event(&mut self, event: RunEvent) -> Result<(), RunError> {
        if let RunEvent::Log {
            key,
            ts,
            level,
            message,
        } = &event
        {
            self.logs.push(NewLog {
                run_id: key.run_id.clone(),
                task_id: key.task_id.clone(),
                try_number: key.try_number,
                ts: *ts,
                level,
                message: message.clone(),
            });
            if self.logs.len() >= LOG_BATCH {
                self.flush_logs()?;
            }
        }
        self.notify(event);
        Ok(())
    }

    fn drain_events(&mut self) -> Result<(), RunError> {
        while let Ok(event) = self.events_rx.try_recv() {
            self.on_event(event)?;
        }
        Ok(())
    }

    fn flush_logs(&mut self) -> Result<(), RunError> {
        self.sluice.store.append_logs(&self.logs)?;
        self.logs.clear();
        Ok(())
    }

    fn notify(&self, event: RunEvent) {
        if let Some(observer) = &self.observer {
            let _ = observer.send(event);
        }
    }

    fn finish(&mut self) -> Result<RunSummary, RunError> {
        let failed: Vec<(&String, &TaskSlot)> = self
            .spec
            .tasks
            .iter()
            .filter_map(|t| self.slots.get_key_value(&t.id))
            .filter(|(_, s)| s.state == TaskState::Failed)
            .collect();
        let (state, error) = if failed.is_empty() {
            (RunState::Success, None)
        } else {
            let reasons: Vec<String> = failed
                .iter()
                .map(|(id, s)| {
                    format!(
                        "task `{id}` failed: {}",
                        s.error.as_deref().unwrap_or("unknown error")
                    )
                })
                .collect();
            (RunState::Failed, Some(reasons.join("; ")))
        };
        self.sluice
            .store
            .set_run_state(&self.run.run_id, state, error.as_deref())?;
        // Every database must be closed before its files may be deleted.
        let closing = std::mem::take(
            &mut *self
                .closing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for thread in closing {
            let _ = thread.join();
        }
        if self.staging_gone()?.is_none() {
            staging::release(
                &self.sluice.store,
                &self.run.run_id,
                std::path::Path::new(&self.run.staging_dir),
                state == RunState::Success,
                self.staging.keep,
                Utc::now(),
            )?;
        }
        self.notify(RunEvent::RunFinished { state });
        Ok(RunSummary {
            run_id: self.run.run_id.clone(),
            state,
            staging_dir: PathBuf::from(&self.run.staging_dir),
            error,
        })
    }
}
