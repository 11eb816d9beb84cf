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
use crate::executor::{TryOutcome, TryRequest, run_try};
use crate::runtime::Sluice;
use crate::state::{RunState, TaskState};
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

/// A new run id: `manual__<UTC timestamp>_<random hex>`.
pub fn new_run_id(now: DateTime<Utc>) -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(now.timestamp_nanos_opt().unwrap_or_default() as u128);
    hasher.write_u32(std::process::id());
    format!(
        "manual__{}_{:06x}",
        now.format("%Y%m%dT%H%M%S"),
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
    let now = Utc::now();
    let run_id = new_run_id(now);
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
        logical_date: options.logical_date.unwrap_or(now),
        params: Value::Object(options.params.clone()).to_string(),
        staging_dir: staging.display().to_string(),
        created_at: now,
        started_at: None,
        ended_at: None,
        error: None,
    };
    sluice.store.create_run(&record, &version.spec)?;
    let mut run = RunLoop::new(sluice, &version.spec, record, options.params, observer);
    run.drive().await
}

struct TaskSlot {
    state: TaskState,
    try_number: u32,
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
    slots: HashMap<String, TaskSlot>,
    running: JoinSet<Completion>,
    active: usize,
    events_tx: UnboundedSender<RunEvent>,
    events_rx: UnboundedReceiver<RunEvent>,
    observer: Option<UnboundedSender<RunEvent>>,
    logs: Vec<NewLog>,
}

impl<'a> RunLoop<'a> {
    fn new(
        sluice: &'a Sluice,
        spec: &'a DagSpec,
        run: RunRecord,
        run_params: Map<String, Value>,
        observer: Option<UnboundedSender<RunEvent>>,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let slots = spec
            .tasks
            .iter()
            .map(|t| {
                (
                    t.id.clone(),
                    TaskSlot {
                        state: TaskState::Scheduled,
                        try_number: 0,
                        output: None,
                        error: None,
                    },
                )
            })
            .collect();
        Self {
            sluice,
            spec,
            run,
            run_params,
            slots,
            running: JoinSet::new(),
            active: 0,
            events_tx,
            events_rx,
            observer,
            logs: Vec::new(),
        }
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
        self.sluice
            .store
            .start_try(&self.run.run_id, &task.id, try_number, started)?;
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
            params: Value::Object(params),
            upstream,
            staging_dir: PathBuf::from(&self.run.staging_dir),
            policy: task.policy,
        };
        let engine = self.sluice.engine.clone();
        let sql_pool = self.sluice.sql_pool.clone();
        let events = self.events_tx.clone();
        let task_id = task.id.clone();
        self.active += 1;
        self.running.spawn(async move {
            let clock = Instant::now();
            let outcome = run_try(engine, sql_pool, pre, request, events).await;
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
                        let retry = retryable && try_number < task.policy.max_tries();
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
        self.notify(RunEvent::RunFinished { state });
        Ok(RunSummary {
            run_id: self.run.run_id.clone(),
            state,
            staging_dir: PathBuf::from(&self.run.staging_dir),
            error,
        })
    }
}
