//! A DAG run as a state machine: the driver (the host's run loop) feeds it
//! [`Event`]s and carries out the [`Effect`]s it returns. Nothing here does
//! I/O or reads a clock, so every rule of a run (readiness, `max_active_tasks`,
//! retries and their delays, permanent failures, `upstream_failed`, recovery
//! after a host death, clear) is tested in milliseconds.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::dag::DagSpec;
use crate::state::{RunState, TaskState};

/// How a try ended, as the executor reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
        /// Whether another try may help (false: no retry is spent).
        retryable: bool,
    },
}

/// A task instance as stored: where the machine starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// Current state.
    pub state: TaskState,
    /// Tries started so far.
    pub try_number: u32,
    /// Tries allowed, as stored (a clear extends it past the policy's).
    pub max_tries: u32,
    /// The output of its successful try.
    pub output: Option<Value>,
    /// The last error.
    pub error: Option<String>,
}

impl Slot {
    /// A task instance that has not run: `scheduled`, with `max_tries` tries.
    pub fn new(max_tries: u32) -> Self {
        Self {
            state: TaskState::Scheduled,
            try_number: 0,
            max_tries,
            output: None,
            error: None,
        }
    }
}

/// Something that happened to a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A try ended.
    TryFinished {
        /// Task id.
        task_id: String,
        /// Which try.
        try_number: u32,
        /// How it ended.
        outcome: TryOutcome,
    },
    /// A retry's delay is over.
    RetryDue {
        /// Task id.
        task_id: String,
    },
    /// The host process that ran this run died: waiting instances are
    /// scheduled again, and the tries it left running failed, unless `adopt`
    /// (the executor runs tries outside the host, e.g. as Kubernetes Jobs):
    /// then each is followed again ([`Effect::AdoptTry`]).
    HostRestarted {
        /// Whether the executor can follow tries a stopped host started.
        adopt: bool,
    },
    /// The run cannot go on (its components do not load, its staging is gone):
    /// every instance that would still run fails with `reason`.
    Abort {
        /// Why.
        reason: String,
    },
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Record (and announce) a task instance's new state.
    SetState {
        /// Task id.
        task_id: String,
        /// New state.
        state: TaskState,
        /// Its error, for failures.
        error: Option<String>,
    },
    /// Record try `try_number` as started and hand it to the executor; its
    /// end comes back as [`Event::TryFinished`].
    StartTry {
        /// Task id.
        task_id: String,
        /// Which try (from 1).
        try_number: u32,
    },
    /// Record how a try ended; the instance's state is `state`.
    EndTry {
        /// Task id.
        task_id: String,
        /// Which try.
        try_number: u32,
        /// The instance's state after it.
        state: TaskState,
        /// The output, for a success.
        output: Option<String>,
        /// The error, for a failure.
        error: Option<String>,
    },
    /// Follow try `try_number`, already recorded as started by a host that
    /// stopped, to its end; its end comes back as [`Event::TryFinished`].
    AdoptTry {
        /// Task id.
        task_id: String,
        /// Which try.
        try_number: u32,
    },
    /// Send [`Event::RetryDue`] for the task after `delay`.
    ScheduleRetry {
        /// Task id.
        task_id: String,
        /// How long to wait.
        delay: Duration,
    },
}

/// One run's task instances and the rules that move them.
#[derive(Debug, Clone)]
pub struct RunMachine {
    spec: DagSpec,
    /// Slots of the tasks of `spec` that the run has, by task id.
    slots: HashMap<String, Slot>,
    /// Tries handed to the executor and not finished.
    active: usize,
    /// Retries whose delay is running.
    waiting: usize,
}

impl RunMachine {
    /// A machine over `spec` with the stored instances `slots`; tasks of the
    /// spec without a slot are not part of the run.
    pub fn new(spec: DagSpec, slots: impl IntoIterator<Item = (String, Slot)>) -> Self {
        Self {
            spec,
            slots: slots.into_iter().collect(),
            active: 0,
            waiting: 0,
        }
    }

    /// The DAG version this run follows.
    pub fn spec(&self) -> &DagSpec {
        &self.spec
    }

    /// The instance of `task_id`.
    pub fn slot(&self, task_id: &str) -> Option<&Slot> {
        self.slots.get(task_id)
    }

    /// Outputs of the upstream tasks of `task_id` that have one.
    pub fn upstream_outputs(&self, task_id: &str) -> Map<String, Value> {
        let Some(task) = self.spec.task(task_id) else {
            return Map::new();
        };
        task.after
            .iter()
            .filter_map(|d| Some((d.clone(), self.slots.get(d)?.output.clone()?)))
            .collect()
    }

    /// The tasks that become ready if the running `task_id` succeeds: waiting
    /// ones every other upstream task of which has succeeded, in DAG order. An
    /// executor may get ready for them while `task_id` runs.
    pub fn next_on_success(&self, task_id: &str) -> Vec<&str> {
        self.spec
            .tasks
            .iter()
            .filter(|t| t.after.iter().any(|d| d == task_id))
            .filter(|t| {
                matches!(
                    self.state(&t.id),
                    Some(TaskState::Scheduled | TaskState::Queued)
                ) && t
                    .after
                    .iter()
                    .all(|d| d == task_id || self.state(d).is_none_or(|s| s == TaskState::Success))
            })
            .map(|t| t.id.as_str())
            .collect()
    }

    /// Whether nothing is running, waiting, or could start: the run has ended.
    pub fn is_done(&self) -> bool {
        self.active == 0 && self.waiting == 0 && !self.spec.tasks.iter().any(|t| self.ready(&t.id))
    }

    /// The run's final state, and why it failed (each failed task, in DAG order).
    pub fn outcome(&self) -> (RunState, Option<String>) {
        let reasons: Vec<String> = self
            .spec
            .tasks
            .iter()
            .filter_map(|t| Some((&t.id, self.slots.get(&t.id)?)))
            .filter(|(_, s)| s.state == TaskState::Failed)
            .map(|(id, s)| {
                format!(
                    "task `{id}` failed: {}",
                    s.error.as_deref().unwrap_or("no error was recorded")
                )
            })
            .collect();
        if reasons.is_empty() {
            (RunState::Success, None)
        } else {
            (RunState::Failed, Some(reasons.join("; ")))
        }
    }

    /// Starts every ready instance while `max_active_tasks` allows, in DAG
    /// order; ready ones beyond it become `queued`.
    pub fn start_ready(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        let ids: Vec<String> = self.spec.tasks.iter().map(|t| t.id.clone()).collect();
        for id in ids {
            if !self.ready(&id) {
                continue;
            }
            if self.active >= self.spec.max_active_tasks as usize {
                if self.state(&id) == Some(TaskState::Scheduled) {
                    self.set(&id, TaskState::Queued, None, &mut effects);
                }
                continue;
            }
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.try_number += 1;
                slot.state = TaskState::Running;
                self.active += 1;
                effects.push(Effect::StartTry {
                    task_id: id,
                    try_number: slot.try_number,
                });
            }
        }
        effects
    }

    /// Applies `event`; call [`Self::start_ready`] after it.
    pub fn handle(&mut self, event: Event) -> Vec<Effect> {
        let mut effects = Vec::new();
        match event {
            Event::TryFinished {
                task_id,
                try_number,
                outcome,
            } => self.try_finished(task_id, try_number, outcome, &mut effects),
            Event::RetryDue { task_id } => {
                self.waiting = self.waiting.saturating_sub(1);
                if self.state(&task_id) == Some(TaskState::UpForRetry) {
                    self.set(&task_id, TaskState::Scheduled, None, &mut effects);
                }
            }
            Event::HostRestarted { adopt } => self.recover(adopt, &mut effects),
            Event::Abort { reason } => {
                let pending: Vec<String> = self
                    .spec
                    .tasks
                    .iter()
                    .filter(|t| self.state(&t.id).is_some_and(|s| !s.is_finished()))
                    .map(|t| t.id.clone())
                    .collect();
                for id in pending {
                    self.set(&id, TaskState::Failed, Some(reason.clone()), &mut effects);
                }
            }
        }
        effects
    }

    fn try_finished(
        &mut self,
        task_id: String,
        try_number: u32,
        outcome: TryOutcome,
        effects: &mut Vec<Effect>,
    ) {
        let Some(slot) = self.slots.get_mut(&task_id) else {
            return;
        };
        // Only the try the machine started counts (a late report is ignored).
        if slot.state != TaskState::Running || slot.try_number != try_number {
            return;
        }
        self.active = self.active.saturating_sub(1);
        match outcome {
            TryOutcome::Success { output } => {
                slot.state = TaskState::Success;
                slot.output = Some(
                    serde_json::from_str(&output).unwrap_or_else(|_| Value::String(output.clone())),
                );
                effects.push(Effect::EndTry {
                    task_id,
                    try_number,
                    state: TaskState::Success,
                    output: Some(output),
                    error: None,
                });
            }
            TryOutcome::Failed { error, retryable } => {
                let retry = retryable && try_number < slot.max_tries;
                let state = if retry {
                    TaskState::UpForRetry
                } else {
                    TaskState::Failed
                };
                slot.state = state;
                slot.error = Some(error.clone());
                effects.push(Effect::EndTry {
                    task_id: task_id.clone(),
                    try_number,
                    state,
                    output: None,
                    error: Some(error),
                });
                if retry {
                    let delay = self
                        .spec
                        .task(&task_id)
                        .map_or(Duration::ZERO, |t| t.policy.delay_before(try_number + 1));
                    self.waiting += 1;
                    effects.push(Effect::ScheduleRetry { task_id, delay });
                } else {
                    self.fail_downstream(&task_id, effects);
                }
            }
        }
    }

    fn recover(&mut self, adopt: bool, effects: &mut Vec<Effect>) {
        let ids: Vec<String> = self.spec.tasks.iter().map(|t| t.id.clone()).collect();
        for id in ids {
            let Some(slot) = self.slots.get(&id) else {
                continue;
            };
            let (try_number, max_tries) = (slot.try_number, slot.max_tries);
            match slot.state {
                TaskState::Running if adopt => {
                    self.active += 1;
                    effects.push(Effect::AdoptTry {
                        task_id: id.clone(),
                        try_number,
                    });
                }
                TaskState::Running => {
                    let error = format!("the host process stopped during try {try_number}");
                    let retry = try_number < max_tries;
                    effects.push(Effect::EndTry {
                        task_id: id.clone(),
                        try_number,
                        state: if retry {
                            TaskState::UpForRetry
                        } else {
                            TaskState::Failed
                        },
                        output: None,
                        error: Some(error.clone()),
                    });
                    if retry {
                        self.set(&id, TaskState::Scheduled, Some(error), effects);
                    } else {
                        self.set(&id, TaskState::Failed, Some(error), effects);
                        self.fail_downstream(&id, effects);
                    }
                }
                TaskState::Queued | TaskState::UpForRetry => {
                    self.set(&id, TaskState::Scheduled, None, effects);
                }
                _ => {}
            }
        }
    }

    /// Marks every instance downstream of `failed` (transitively) that would
    /// still run `upstream_failed`.
    fn fail_downstream(&mut self, failed: &str, effects: &mut Vec<Effect>) {
        let mut doomed = vec![failed.to_owned()];
        let tasks: Vec<(String, Vec<String>)> = self
            .spec
            .tasks
            .iter()
            .map(|t| (t.id.clone(), t.after.clone()))
            .collect();
        for (id, after) in tasks {
            if !after.iter().any(|d| doomed.contains(d)) {
                continue;
            }
            doomed.push(id.clone());
            let pending = self
                .state(&id)
                .is_some_and(|s| !s.is_finished() && s != TaskState::Running);
            if pending {
                let why = format!("upstream task `{failed}` failed");
                self.set(&id, TaskState::UpstreamFailed, Some(why), effects);
            }
        }
    }

    fn state(&self, task_id: &str) -> Option<TaskState> {
        self.slots.get(task_id).map(|s| s.state)
    }

    /// Whether `task_id` waits to start and every upstream task succeeded.
    fn ready(&self, task_id: &str) -> bool {
        let waiting = matches!(
            self.state(task_id),
            Some(TaskState::Scheduled | TaskState::Queued)
        );
        waiting
            && self.spec.task(task_id).is_some_and(|t| {
                t.after
                    .iter()
                    .all(|d| self.state(d).is_none_or(|s| s == TaskState::Success))
            })
    }

    fn set(
        &mut self,
        task_id: &str,
        state: TaskState,
        error: Option<String>,
        effects: &mut Vec<Effect>,
    ) {
        if let Some(slot) = self.slots.get_mut(task_id) {
            slot.state = state;
            if error.is_some() {
                slot.error.clone_from(&error);
            }
        }
        effects.push(Effect::SetState {
            task_id: task_id.to_owned(),
            state,
            error,
        });
    }
}

/// Which task instances a clear resets besides the task itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClearScope {
    /// Also everything downstream of the task.
    pub downstream: bool,
    /// Also everything upstream of the task.
    pub upstream: bool,
}

/// Why a clear cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClearError {
    /// The task is not in the DAG version the run would be re-bound to.
    #[error("task `{task_id}` is not in the current version of DAG `{dag_id}`")]
    UnknownTask {
        /// DAG id.
        dag_id: String,
        /// Task id.
        task_id: String,
    },
    /// The version has tasks the run never had.
    #[error(
        "the current version of `{dag_id}` has tasks this run never had ({}); start a new run",
        missing.join(", ")
    )]
    NewTasks {
        /// DAG id.
        dag_id: String,
        /// The tasks.
        missing: Vec<String>,
    },
}

/// The task instances of a run that clearing `task_id` resets, in DAG order:
/// the task, its scope, and the `upstream_failed` tasks downstream of it (the
/// failure that blocked them is being retried). `states` are the run's.
pub fn plan_clear(
    spec: &DagSpec,
    states: &HashMap<String, TaskState>,
    task_id: &str,
    scope: ClearScope,
) -> Result<Vec<String>, ClearError> {
    if spec.task(task_id).is_none() {
        return Err(ClearError::UnknownTask {
            dag_id: spec.id.clone(),
            task_id: task_id.to_owned(),
        });
    }
    let missing: Vec<String> = spec
        .tasks
        .iter()
        .filter(|t| !states.contains_key(&t.id))
        .map(|t| t.id.clone())
        .collect();
    if !missing.is_empty() {
        return Err(ClearError::NewTasks {
            dag_id: spec.id.clone(),
            missing,
        });
    }
    let mut selected = vec![task_id.to_owned()];
    if scope.upstream {
        selected.extend(related(spec, task_id, Direction::Upstream));
    }
    let downstream = related(spec, task_id, Direction::Downstream);
    if scope.downstream {
        selected.extend(downstream);
    } else {
        selected.extend(
            downstream
                .into_iter()
                .filter(|t| states.get(t) == Some(&TaskState::UpstreamFailed)),
        );
    }
    Ok(spec
        .tasks
        .iter()
        .map(|t| t.id.clone())
        .filter(|t| selected.contains(t))
        .collect())
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

#[cfg(test)]
mod tests;
