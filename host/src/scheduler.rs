//! Runs a DAG version to its end: task instances start when their upstream
//! tasks succeeded, independent ones in parallel (up to `max_active_tasks`);
//! failed tries are retried after their delay; downstream of a failure becomes
//! `upstream_failed`. The scheduler is the only writer of run records.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;

use crate::dag::DagSpec;
use crate::events::{RunEvent, RunNotice, TaskKey};
use crate::executor::{Executor, TryFuture, TryOutcome, TryRequest};
use crate::runtime::Sluice;
use crate::schedule::Interval;
use crate::staging;
use crate::state::{RunState, TaskState, VolumeState};
use crate::store::{NewLog, RunRecord, StoreError, VersionRecord};
pub use sluice_core::run::ClearScope;
use sluice_core::run::{ClearError, Effect, Event, RunMachine, Slot, plan_clear};
pub use sluice_core::run_id::new_run_id;

/// The most log lines held before a metadatabase write (the loop also
/// writes whatever it holds each time it has taken every queued event).
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
    /// A stored schedule is not valid.
    #[error(transparent)]
    Schedule(#[from] crate::schedule::ScheduleError),
    /// The run's stored params are not a JSON object.
    #[error("run `{run_id}`: its stored params do not parse: {source}")]
    Params {
        /// Run id.
        run_id: String,
        /// The error.
        source: serde_json::Error,
    },
    /// A clear cannot be done.
    #[error("{source} (current version {version})")]
    Clear {
        /// The current version (short digest).
        version: String,
        /// Why.
        source: ClearError,
    },
    /// The executor cannot carry out runs (e.g. another scheduler holds the
    /// Kubernetes executor's lease).
    #[error("{0}")]
    Executor(String),
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

/// Creates a run of `version` and carries it to its end. Events go to `observer`.
pub async fn run_dag(
    sluice: &Sluice,
    version: &VersionRecord,
    options: RunOptions,
    observer: Option<UnboundedSender<RunEvent>>,
) -> Result<RunSummary, RunError> {
    sluice.executor.start().await.map_err(RunError::Executor)?;
    let record = create_run(sluice, version, &options)?;
    carry_out(sluice, version, record, options, observer).await
}

/// Carries `record`, a run of `version` just made by [`create_run`] with
/// `options`, to its end. Events go to `observer`.
pub async fn carry_out(
    sluice: &Sluice,
    version: &VersionRecord,
    record: RunRecord,
    options: RunOptions,
    observer: Option<UnboundedSender<RunEvent>>,
) -> Result<RunSummary, RunError> {
    sluice.executor.start().await.map_err(RunError::Executor)?;
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
    sluice.executor.start().await.map_err(RunError::Executor)?;
    let record = sluice.store.run(run_id)?;
    let version = sluice.store.version(&record.dag_id, &record.version)?;
    crate::trust::check(&sluice.store, &record.dag_id, &record.version)?;
    let params: Map<String, Value> =
        serde_json::from_str(&record.params).map_err(|source| RunError::Params {
            run_id: run_id.to_owned(),
            source,
        })?;
    let mut run = RunLoop::load(sluice, &version.spec, record, params, policy, observer)?;
    run.handle(Event::HostRestarted {
        adopt: sluice.executor.adopts(),
    })?;
    if let Some(reason) = run.staging_gone()? {
        run.handle(Event::Abort { reason })?;
        return run.finish();
    }
    sluice.store.activate_volume(run_id)?;
    run.drive().await
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
    let states: HashMap<String, TaskState> = sluice
        .store
        .tasks(run_id)?
        .into_iter()
        .map(|t| (t.task_id, t.state))
        .collect();
    let ordered = plan_clear(spec, &states, task_id, scope).map_err(|source| RunError::Clear {
        version: current.digest[..12].to_owned(),
        source,
    })?;
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

/// What the loop waits for besides events.
enum Completion {
    /// The executor finished a try.
    TryDone {
        task_id: String,
        try_number: u32,
        outcome: TryOutcome,
    },
    /// A retry's delay is over.
    RetryDue { task_id: String },
}

/// Drives one run: feeds the [`RunMachine`] what happens and carries out its
/// effects (metadatabase writes, tries handed to the executor, timers).
struct RunLoop<'a> {
    sluice: &'a Sluice,
    executor: Arc<dyn Executor>,
    run: RunRecord,
    run_params: Map<String, Value>,
    staging: StagingPolicy,
    machine: RunMachine,
    running: JoinSet<Completion>,
    /// When each try this loop started began (wall clock, monotonic).
    started: HashMap<(String, u32), (DateTime<Utc>, Instant)>,
    events_tx: UnboundedSender<RunEvent>,
    events_rx: UnboundedReceiver<RunEvent>,
    observer: Option<UnboundedSender<RunEvent>>,
    logs: Vec<NewLog>,
}

impl<'a> RunLoop<'a> {
    /// A loop over `run`, with task states as stored.
    fn load(
        sluice: &'a Sluice,
        spec: &DagSpec,
        run: RunRecord,
        run_params: Map<String, Value>,
        staging: StagingPolicy,
        observer: Option<UnboundedSender<RunEvent>>,
    ) -> Result<Self, RunError> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let slots: Vec<(String, Slot)> = sluice
            .store
            .tasks(&run.run_id)?
            .into_iter()
            .map(|t| {
                // Outputs are JSON when the task returned JSON, else kept as text.
                let output = t
                    .output
                    .as_deref()
                    .map(|o| serde_json::from_str(o).unwrap_or(Value::String(o.to_owned())));
                let slot = Slot {
                    state: t.state,
                    try_number: t.try_number,
                    max_tries: t.max_tries,
                    output,
                    error: t.error,
                };
                (t.task_id, slot)
            })
            .collect();
        Ok(Self {
            sluice,
            executor: sluice.executor.clone(),
            run,
            run_params,
            staging,
            machine: RunMachine::new(spec.clone(), slots),
            running: JoinSet::new(),
            started: HashMap::new(),
            events_tx,
            events_rx,
            observer,
            logs: Vec::new(),
        })
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

    async fn drive(&mut self) -> Result<RunSummary, RunError> {
        self.sluice
            .store
            .set_run_state(&self.run.run_id, RunState::Running, None)?;
        let components: Vec<(String, String)> = self
            .machine
            .spec()
            .tasks
            .iter()
            .map(|t| (t.id.clone(), t.component.clone()))
            .collect();
        if let Err(e) = self.executor.prepare(&components) {
            self.handle(Event::Abort {
                reason: e.to_string(),
            })?;
        }
        // Whether tries started or ended since the executor last heard what
        // may come next.
        let mut moved = true;
        loop {
            let effects = self.machine.start_ready();
            moved |= effects.iter().any(|e| matches!(e, Effect::StartTry { .. }));
            self.apply(effects)?;
            if self.running.is_empty() {
                break;
            }
            if std::mem::take(&mut moved) {
                self.anticipate();
            }
            tokio::select! {
                Some(joined) = self.running.join_next() => {
                    self.drain_events()?;
                    match joined {
                        Ok(Completion::TryDone { task_id, try_number, outcome }) => {
                            moved = true;
                            self.handle(Event::TryFinished { task_id, try_number, outcome })?;
                        }
                        Ok(Completion::RetryDue { task_id }) => {
                            self.handle(Event::RetryDue { task_id })?;
                        }
                        Err(e) => tracing::error!("a task supervisor failed: {e}"),
                    }
                }
                Some(event) = self.events_rx.recv() => {
                    self.on_event(event)?;
                    self.drain_events()?;
                }
            }
        }
        self.drain_events()?;
        self.finish()
    }

    /// Feeds `event` to the machine and carries out what it says.
    fn handle(&mut self, event: Event) -> Result<(), RunError> {
        let effects = self.machine.handle(event);
        self.apply(effects)
    }

    fn apply(&mut self, effects: Vec<Effect>) -> Result<(), RunError> {
        for effect in effects {
            match effect {
                Effect::SetState {
                    task_id,
                    state,
                    error,
                } => {
                    self.sluice.store.set_task_state(
                        &self.run.run_id,
                        &task_id,
                        state,
                        error.as_deref(),
                    )?;
                    let try_number = self.machine.slot(&task_id).map_or(0, |s| s.try_number);
                    self.notify(RunEvent::TaskState {
                        task_id,
                        state,
                        try_number,
                        error,
                    });
                }
                Effect::StartTry {
                    task_id,
                    try_number,
                } => self.start_try(task_id, try_number)?,
                Effect::AdoptTry {
                    task_id,
                    try_number,
                } => self.adopt_try(task_id, try_number)?,
                Effect::EndTry {
                    task_id,
                    try_number,
                    state,
                    output,
                    error,
                } => {
                    let (ended, elapsed) = self.try_times(&task_id, try_number)?;
                    self.sluice.store.end_try(
                        &self.run.run_id,
                        &task_id,
                        try_number,
                        state,
                        ended,
                        elapsed,
                        output.as_deref(),
                        error.as_deref(),
                    )?;
                    self.notify(RunEvent::TaskState {
                        task_id,
                        state,
                        try_number,
                        error,
                    });
                }
                Effect::ScheduleRetry { task_id, delay } => {
                    self.running.spawn(async move {
                        tokio::time::sleep(delay).await;
                        Completion::RetryDue { task_id }
                    });
                }
            }
        }
        Ok(())
    }

    /// When a try ended and how long it ran: measured for tries this loop
    /// started, from the stored start for one a dead host left running.
    fn try_times(
        &mut self,
        task_id: &str,
        try_number: u32,
    ) -> Result<(DateTime<Utc>, std::time::Duration), RunError> {
        if let Some((started, clock)) = self.started.remove(&(task_id.to_owned(), try_number)) {
            let elapsed = clock.elapsed();
            let ended = started + chrono::Duration::from_std(elapsed).unwrap_or_default();
            return Ok((ended, elapsed));
        }
        let now = Utc::now();
        let started = self
            .sluice
            .store
            .tries(&self.run.run_id, task_id)?
            .into_iter()
            .find(|t| t.try_number == try_number)
            .map_or(now, |t| t.started_at);
        // A clock that went back since counts as no time.
        Ok((now, (now - started).to_std().unwrap_or_default()))
    }

    /// The request of try `try_number` of `task_id`, as the executor gets it.
    fn try_request(&self, task_id: &str, try_number: u32) -> Result<TryRequest, RunError> {
        let spec = self.machine.spec();
        let Some(task) = spec.task(task_id) else {
            return Err(RunError::Invalid(format!(
                "task `{task_id}` is not in DAG `{}`",
                spec.id
            )));
        };
        let mut params = spec.params.clone();
        params.extend(task.params.clone());
        params.extend(self.run_params.clone());
        Ok(TryRequest {
            key: TaskKey {
                run_id: self.run.run_id.clone(),
                task_id: task_id.to_owned(),
                try_number,
            },
            dag_id: spec.id.clone(),
            component: task.component.clone(),
            logical_date: self.run.logical_date,
            interval: Interval {
                start: self.run.interval_start,
                end: self.run.interval_end,
            },
            params: Value::Object(params),
            upstream: self.machine.upstream_outputs(task_id),
            staging_dir: PathBuf::from(&self.run.staging_dir),
            policy: task.policy,
            connections: task.connections.clone(),
            privileged_connections: task.privileged_connections.clone(),
        })
    }

    fn start_try(&mut self, task_id: String, try_number: u32) -> Result<(), RunError> {
        let request = self.try_request(&task_id, try_number)?;
        let started = Utc::now();
        // Recorded before the executor hears of it: a host that stops after
        // this finds the try (and adopts or fails it), never a try it did not record.
        self.sluice.store.start_try(
            &self.run.run_id,
            &task_id,
            try_number,
            &self.run.version,
            &request.component,
            &self.executor.sandbox_label(),
            started,
        )?;
        self.started
            .insert((task_id.clone(), try_number), (started, Instant::now()));
        self.notify(RunEvent::TaskState {
            task_id: task_id.clone(),
            state: TaskState::Running,
            try_number,
            error: None,
        });
        let try_run = self.executor.run(request, self.events_tx.clone());
        self.follow(task_id, try_number, try_run);
        Ok(())
    }

    /// Tells the executor which tries may start next: those the success of
    /// a running try would start. It may get ready for them meanwhile.
    fn anticipate(&self) {
        let spec = self.machine.spec();
        let running = spec.tasks.iter().filter(|t| {
            self.machine
                .slot(&t.id)
                .is_some_and(|s| s.state == TaskState::Running)
        });
        for task in running {
            for next in self.machine.next_on_success(&task.id) {
                if let Some(next) = spec.task(next) {
                    self.executor
                        .anticipate(&self.run.run_id, &next.id, &next.component);
                }
            }
        }
    }

    /// Follows a try a stopped host recorded and left running.
    fn adopt_try(&mut self, task_id: String, try_number: u32) -> Result<(), RunError> {
        let request = self.try_request(&task_id, try_number)?;
        tracing::info!(
            "adopting try {try_number} of task `{task_id}` of run {}",
            self.run.run_id
        );
        let try_run = self.executor.adopt(request, self.events_tx.clone());
        self.follow(task_id, try_number, try_run);
        Ok(())
    }

    /// Waits for `try_run` among the running tries; its outcome comes back as
    /// a [`Completion::TryDone`].
    fn follow(&mut self, task_id: String, try_number: u32, try_run: TryFuture) {
        self.running.spawn(async move {
            Completion::TryDone {
                task_id,
                try_number,
                outcome: try_run.await,
            }
        });
    }

    /// A log line is held in the batch (and shown to the observer) and
    /// broadcast once stored; every other event is passed on at once.
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
            self.observe(event);
            if self.logs.len() >= LOG_BATCH {
                self.flush_logs()?;
            }
            return Ok(());
        }
        self.notify(event);
        Ok(())
    }

    /// Takes every event already queued, then stores (and broadcasts) the
    /// log lines among them: the loop never waits holding a line.
    fn drain_events(&mut self) -> Result<(), RunError> {
        while let Ok(event) = self.events_rx.try_recv() {
            self.on_event(event)?;
        }
        self.flush_logs()
    }

    /// Stores the held log lines, then broadcasts each with its id.
    fn flush_logs(&mut self) -> Result<(), RunError> {
        let ids = self.sluice.store.append_logs(&self.logs)?;
        for (log, id) in std::mem::take(&mut self.logs).into_iter().zip(ids) {
            let event = RunEvent::Log {
                key: TaskKey {
                    run_id: log.run_id,
                    task_id: log.task_id,
                    try_number: log.try_number,
                },
                ts: log.ts,
                level: log.level,
                message: log.message,
            };
            self.broadcast(event, Some(id));
        }
        Ok(())
    }

    /// Tells the host's watchers and this run's observer.
    fn notify(&self, event: RunEvent) {
        self.broadcast(event.clone(), None);
        self.observe(event);
    }

    /// Tells the host's watchers (the HTTP API) about `event`, if it is a
    /// state change, a stored log line or the end: progress is for the
    /// command's own display.
    fn broadcast(&self, event: RunEvent, log_id: Option<i64>) {
        if !matches!(
            event,
            RunEvent::Progress { .. } | RunEvent::SqlProgress { .. }
        ) {
            self.sluice.notify(RunNotice {
                run_id: self.run.run_id.clone(),
                dag_id: self.run.dag_id.clone(),
                event,
                log_id,
            });
        }
    }

    /// Tells this run's observer (the command's display), if any.
    fn observe(&self, event: RunEvent) {
        if let Some(observer) = &self.observer {
            // A watcher that went away does not stop the run.
            let _ = observer.send(event);
        }
    }

    fn finish(&mut self) -> Result<RunSummary, RunError> {
        let (state, error) = self.machine.outcome();
        self.sluice
            .store
            .set_run_state(&self.run.run_id, state, error.as_deref())?;
        // Every database must be closed before its files may be deleted.
        self.executor.release(&self.run.run_id);
        if state == RunState::Success && !self.staging.keep {
            self.executor.discard_staging(&self.run.run_id);
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
