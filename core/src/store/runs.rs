//! Runs (`dag_runs`), their task instances (`task_instances`) and tries
//! (`task_tries`), and the scheduler's lookups of the runs it made for
//! intervals of a DAG's schedule.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{Fields, Result, Store, StoreError, query_all, ts};
use crate::dag::DagSpec;
use crate::state::{RunState, RunType, TaskState};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS dag_runs (
    run_id        TEXT PRIMARY KEY,
    dag_id        TEXT NOT NULL,
    version       TEXT NOT NULL,
    state         TEXT NOT NULL,
    logical_date  TEXT NOT NULL,
    run_type      TEXT NOT NULL,
    interval_start TEXT NOT NULL,
    interval_end  TEXT NOT NULL,
    params        TEXT NOT NULL,
    staging_dir   TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    started_at    TEXT,
    ended_at      TEXT,
    error         TEXT
);
CREATE INDEX IF NOT EXISTS dag_runs_by_dag ON dag_runs (dag_id, created_at);
CREATE TABLE IF NOT EXISTS task_instances (
    run_id      TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    state       TEXT NOT NULL,
    try_number  INTEGER NOT NULL,
    max_tries   INTEGER NOT NULL,
    component   TEXT NOT NULL,
    started_at  TEXT,
    ended_at    TEXT,
    duration_ms INTEGER,
    output      TEXT,
    error       TEXT,
    PRIMARY KEY (run_id, task_id)
);
CREATE TABLE IF NOT EXISTS task_tries (
    run_id      TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    try_number  INTEGER NOT NULL,
    version     TEXT NOT NULL,
    component   TEXT NOT NULL,
    state       TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    sandbox     TEXT,
    ended_at    TEXT,
    duration_ms INTEGER,
    error       TEXT,
    PRIMARY KEY (run_id, task_id, try_number)
);
"#;

/// Schema version 3: runs newest first (all DAGs), by state (resuming runs,
/// counting active ones) and by interval (the scheduler, backfills).
pub(super) const INDEXES_V3: &str = "
CREATE INDEX IF NOT EXISTS dag_runs_by_created ON dag_runs (created_at);
CREATE INDEX IF NOT EXISTS dag_runs_by_state ON dag_runs (state, dag_id, run_type);
CREATE INDEX IF NOT EXISTS dag_runs_by_interval ON dag_runs (dag_id, run_type, interval_start);
";

/// Schema version 6: runs in one state, newest first (the runs list
/// filtered by state; without it SQLite sorted every run in that state).
pub(super) const INDEXES_V6: &str = "
CREATE INDEX IF NOT EXISTS dag_runs_by_state_created ON dag_runs (state, created_at);
";

/// A run as stored.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// Run id.
    pub run_id: String,
    /// DAG id.
    pub dag_id: String,
    /// The DAG version digest it runs.
    pub version: String,
    /// Run state.
    pub state: RunState,
    /// Logical date.
    pub logical_date: DateTime<Utc>,
    /// Why the run exists.
    pub run_type: RunType,
    /// Start of the data interval.
    pub interval_start: DateTime<Utc>,
    /// End of the data interval.
    pub interval_end: DateTime<Utc>,
    /// Run params (JSON object).
    pub params: String,
    /// Staging directory.
    pub staging_dir: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A task instance as stored.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    /// Task id.
    pub task_id: String,
    /// State.
    pub state: TaskState,
    /// Current (or last) try number; 0 before the first try.
    pub try_number: u32,
    /// Tries allowed.
    pub max_tries: u32,
    /// Component digest.
    pub component: String,
    /// Start of the last try.
    pub started_at: Option<DateTime<Utc>>,
    /// End of the last try.
    pub ended_at: Option<DateTime<Utc>>,
    /// Duration of the last try.
    pub duration: Option<Duration>,
    /// Output JSON, on success.
    pub output: Option<String>,
    /// Error of the last failed try.
    pub error: Option<String>,
}

/// One try of a task instance.
#[derive(Debug, Clone)]
pub struct TryRecord {
    /// Try number.
    pub try_number: u32,
    /// The DAG version the try ran.
    pub version: String,
    /// The component digest the try ran.
    pub component: String,
    /// How it ended (or `running`).
    pub state: TaskState,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End.
    pub ended_at: Option<DateTime<Utc>>,
    /// Error, if it failed.
    pub error: Option<String>,
}

/// What a scheduler pass needs to know of a DAG's interval runs (the runs of
/// the types that [have an interval](RunType::has_interval)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntervalRuns {
    /// How many are queued or running.
    pub active: u32,
    /// The latest interval start any of them has.
    pub latest_start: Option<DateTime<Utc>>,
}

/// The columns [`decode_run`] reads, in its order.
const RUN_COLUMNS: &str = "run_id, dag_id, version, state, logical_date, run_type, interval_start,
    interval_end, params, staging_dir, created_at, started_at, ended_at, error";

fn decode_run(r: &rusqlite::Row<'_>) -> Result<RunRecord> {
    let f = Fields::new(r, "dag_runs", &[0])?;
    Ok(RunRecord {
        run_id: f.get(0)?,
        dag_id: f.get(1)?,
        version: f.get(2)?,
        state: f.get(3)?,
        logical_date: f.ts(4)?,
        run_type: f.get(5)?,
        interval_start: f.ts(6)?,
        interval_end: f.ts(7)?,
        params: f.get(8)?,
        staging_dir: f.get(9)?,
        created_at: f.ts(10)?,
        started_at: f.opt_ts(11)?,
        ended_at: f.opt_ts(12)?,
        error: f.get(13)?,
    })
}

/// The run types whose runs are made for intervals of a schedule.
fn interval_types() -> impl Iterator<Item = RunType> {
    RunType::ALL.iter().copied().filter(|t| t.has_interval())
}

impl Store {
    /// Creates a run and its task instances (state `scheduled`, try 0).
    pub fn create_run(&self, run: &RunRecord, spec: &DagSpec) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                &format!(
                    "INSERT INTO dag_runs ({RUN_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
                ),
                params![
                    run.run_id,
                    run.dag_id,
                    run.version,
                    run.state,
                    ts(run.logical_date),
                    run.run_type,
                    ts(run.interval_start),
                    ts(run.interval_end),
                    run.params,
                    run.staging_dir,
                    ts(run.created_at),
                    run.started_at.map(ts),
                    run.ended_at.map(ts),
                    run.error,
                ],
            )?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO task_instances (run_id, task_id, state, try_number, max_tries, component)
                     VALUES (?1, ?2, ?3, 0, ?4, ?5)",
                )?;
                for task in &spec.tasks {
                    insert.execute(params![
                        run.run_id,
                        task.id,
                        TaskState::Scheduled,
                        task.policy.max_tries(),
                        task.component
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Sets a run's state; stamps `started_at` when it starts and `ended_at` when it ends.
    pub fn set_run_state(&self, run_id: &str, state: RunState, error: Option<&str>) -> Result<()> {
        let now = ts(Utc::now());
        let starts = state == RunState::Running;
        let ends = matches!(state, RunState::Success | RunState::Failed);
        self.with(|c| {
            c.execute(
                "UPDATE dag_runs SET state = ?2, error = ?3,
                     started_at = CASE WHEN ?5 AND started_at IS NULL THEN ?4 ELSE started_at END,
                     ended_at = CASE WHEN ?6 THEN ?4 ELSE NULL END
                 WHERE run_id = ?1",
                params![run_id, state, error, now, starts, ends],
            )?;
            Ok(())
        })
    }

    /// A run by id.
    pub fn run(&self, run_id: &str) -> Result<RunRecord> {
        self.with(|c| {
            query_all(
                c,
                &format!("SELECT {RUN_COLUMNS} FROM dag_runs WHERE run_id = ?1"),
                params![run_id],
                decode_run,
            )
        })?
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::NotFound(format!("no run `{run_id}`")))
    }

    /// Runs, newest first, optionally of one DAG.
    pub fn runs(&self, dag_id: Option<&str>, limit: u32) -> Result<Vec<RunRecord>> {
        self.with(|c| match dag_id {
            Some(dag_id) => query_all(
                c,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM dag_runs WHERE dag_id = ?1
                     ORDER BY created_at DESC, rowid DESC LIMIT ?2"
                ),
                params![dag_id, limit],
                decode_run,
            ),
            None => query_all(
                c,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM dag_runs
                     ORDER BY created_at DESC, rowid DESC LIMIT ?1"
                ),
                params![limit],
                decode_run,
            ),
        })
    }

    /// A page of runs, newest first: at most `limit` after skipping
    /// `offset`, optionally only of one DAG and in one state.
    pub fn runs_page(
        &self,
        dag_id: Option<&str>,
        state: Option<RunState>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<RunRecord>> {
        // One statement per filter combination, so each can use its index.
        let (filter, params): (&str, Vec<&dyn rusqlite::ToSql>) = match (&dag_id, &state) {
            (Some(d), Some(s)) => ("WHERE dag_id = ?3 AND state = ?4", vec![d, s]),
            (Some(d), None) => ("WHERE dag_id = ?3", vec![d]),
            (None, Some(s)) => ("WHERE state = ?3", vec![s]),
            (None, None) => ("", vec![]),
        };
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM dag_runs {filter}
             ORDER BY created_at DESC, rowid DESC LIMIT ?1 OFFSET ?2"
        );
        let mut all: Vec<&dyn rusqlite::ToSql> = vec![&limit, &offset];
        all.extend(params);
        self.with(|c| query_all(c, &sql, &all, decode_run))
    }

    /// Runs in state `state`, oldest first, optionally of one DAG.
    pub fn runs_in_state(&self, state: RunState, dag_id: Option<&str>) -> Result<Vec<RunRecord>> {
        self.with(|c| {
            query_all(
                c,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM dag_runs
                     WHERE state = ?1 AND (?2 IS NULL OR dag_id = ?2)
                     ORDER BY created_at, rowid"
                ),
                params![state, dag_id],
                decode_run,
            )
        })
    }

    /// How many of `dag_id`'s interval runs are active, and the latest
    /// interval they cover: what a scheduler pass reads of each DAG.
    pub fn interval_runs(&self, dag_id: &str) -> Result<IntervalRuns> {
        self.with(|c| {
            let mut active = 0;
            let mut latest_start = None;
            for run_type in interval_types() {
                active += query_all(
                    c,
                    "SELECT count(*) FROM dag_runs
                     WHERE state IN (?1, ?2) AND dag_id = ?3 AND run_type = ?4",
                    params![RunState::Queued, RunState::Running, dag_id, run_type],
                    |r| Ok(r.get::<_, u32>(0)?),
                )?
                .into_iter()
                .sum::<u32>();
                let latest = query_all(
                    c,
                    "SELECT interval_start, run_id FROM dag_runs WHERE dag_id = ?1 AND run_type = ?2
                     ORDER BY interval_start DESC LIMIT 1",
                    params![dag_id, run_type],
                    |r| Fields::new(r, "dag_runs", &[1])?.ts(0),
                )?;
                latest_start = latest_start.max(latest.into_iter().next());
            }
            Ok(IntervalRuns {
                active,
                latest_start,
            })
        })
    }

    /// `dag_id`'s interval runs whose interval starts in `[from, to]`, by
    /// interval start.
    pub fn interval_runs_between(
        &self,
        dag_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RunRecord>> {
        let mut runs = Vec::new();
        for run_type in interval_types() {
            runs.extend(self.with(|c| {
                query_all(
                    c,
                    &format!(
                        "SELECT {RUN_COLUMNS} FROM dag_runs
                         WHERE dag_id = ?1 AND run_type = ?2 AND interval_start BETWEEN ?3 AND ?4"
                    ),
                    params![dag_id, run_type, ts(from), ts(to)],
                    decode_run,
                )
            })?);
        }
        runs.sort_by_key(|r| r.interval_start);
        Ok(runs)
    }

    /// Re-binds a run to DAG version `version` (after a clear) and marks it running.
    pub fn rebind_run(&self, run_id: &str, version: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE dag_runs SET version = ?2, state = ?3, ended_at = NULL, error = NULL WHERE run_id = ?1",
                params![run_id, version, RunState::Running],
            )?;
            Ok(())
        })
    }

    /// Sets the state of a task instance without starting a try.
    pub fn set_task_state(
        &self,
        run_id: &str,
        task_id: &str,
        state: TaskState,
        error: Option<&str>,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE task_instances SET state = ?3, error = COALESCE(?4, error)
                 WHERE run_id = ?1 AND task_id = ?2",
                params![run_id, task_id, state, error],
            )?;
            Ok(())
        })
    }

    /// Starts try `try_number` of a task instance with `component` of DAG
    /// `version`: state `running`.
    #[allow(clippy::too_many_arguments)]
    pub fn start_try(
        &self,
        run_id: &str,
        task_id: &str,
        try_number: u32,
        version: &str,
        component: &str,
        sandbox: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let at = ts(at);
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE task_instances SET state = ?6, try_number = ?3, started_at = ?4,
                     ended_at = NULL, duration_ms = NULL, error = NULL, output = NULL, component = ?5
                 WHERE run_id = ?1 AND task_id = ?2",
                params![run_id, task_id, try_number, at, component, TaskState::Running],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO task_tries
                     (run_id, task_id, try_number, version, component, state, started_at, sandbox)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?8, ?6, ?7)",
                params![
                    run_id,
                    task_id,
                    try_number,
                    version,
                    component,
                    at,
                    sandbox,
                    TaskState::Running
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Ends the current try of a task instance with `state`.
    #[allow(clippy::too_many_arguments)]
    pub fn end_try(
        &self,
        run_id: &str,
        task_id: &str,
        try_number: u32,
        state: TaskState,
        ended: DateTime<Utc>,
        duration: Duration,
        output: Option<&str>,
        error: Option<&str>,
    ) -> Result<()> {
        let ended = ts(ended);
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE task_instances SET state = ?3, ended_at = ?4, duration_ms = ?5, output = ?6, error = ?7
                 WHERE run_id = ?1 AND task_id = ?2",
                params![run_id, task_id, state, ended, ms, output, error],
            )?;
            tx.execute(
                "UPDATE task_tries SET state = ?4, ended_at = ?5, duration_ms = ?6, error = ?7
                 WHERE run_id = ?1 AND task_id = ?2 AND try_number = ?3",
                params![run_id, task_id, try_number, state, ended, ms, error],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The task instances of a run, in DAG order of insertion.
    pub fn tasks(&self, run_id: &str) -> Result<Vec<TaskRecord>> {
        self.with(|c| {
            query_all(
                c,
                "SELECT task_id, state, try_number, max_tries, component, started_at, ended_at,
                        duration_ms, output, error, run_id
                 FROM task_instances WHERE run_id = ?1 ORDER BY rowid",
                params![run_id],
                |r| {
                    let f = Fields::new(r, "task_instances", &[10, 0])?;
                    Ok(TaskRecord {
                        task_id: f.get(0)?,
                        state: f.get(1)?,
                        try_number: f.get(2)?,
                        max_tries: f.get(3)?,
                        component: f.get(4)?,
                        started_at: f.opt_ts(5)?,
                        ended_at: f.opt_ts(6)?,
                        duration: f.get::<Option<u64>>(7)?.map(Duration::from_millis),
                        output: f.get(8)?,
                        error: f.get(9)?,
                    })
                },
            )
        })
    }

    /// Resets task instances to `scheduled`, each `(task, tries)` allowed `tries`
    /// more tries; try numbers go on counting.
    pub fn reset_tasks(&self, run_id: &str, tasks: &[(String, u32)]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut reset = tx.prepare_cached(
                    "UPDATE task_instances SET state = ?4, output = NULL, error = NULL,
                         ended_at = NULL, duration_ms = NULL, max_tries = try_number + ?3
                     WHERE run_id = ?1 AND task_id = ?2",
                )?;
                for (task_id, extra) in tasks {
                    reset.execute(params![run_id, task_id, extra, TaskState::Scheduled])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// How the tries of a run were confined (the host's `Sandbox::label`),
    /// each label once; `unrecorded` for tries from before it was recorded.
    pub fn run_sandboxes(&self, run_id: &str) -> Result<Vec<String>> {
        self.with(|c| {
            query_all(
                c,
                "SELECT DISTINCT coalesce(sandbox, 'unrecorded') FROM task_tries
                 WHERE run_id = ?1 ORDER BY 1",
                params![run_id],
                |r| Ok(r.get(0)?),
            )
        })
    }

    /// The tries of a task instance, in order.
    pub fn tries(&self, run_id: &str, task_id: &str) -> Result<Vec<TryRecord>> {
        self.with(|c| {
            query_all(
                c,
                "SELECT try_number, version, component, state, started_at, ended_at, error,
                        run_id, task_id
                 FROM task_tries WHERE run_id = ?1 AND task_id = ?2 ORDER BY try_number",
                params![run_id, task_id],
                |r| {
                    let f = Fields::new(r, "task_tries", &[7, 8, 0])?;
                    Ok(TryRecord {
                        try_number: f.get(0)?,
                        version: f.get(1)?,
                        component: f.get(2)?,
                        state: f.get(3)?,
                        started_at: f.ts(4)?,
                        ended_at: f.opt_ts(5)?,
                        error: f.get(6)?,
                    })
                },
            )
        })
    }
}
