//! Case 7, the metadatabase: fills a metadatabase with runs of several task
//! instances each (through SQL, as many runs would have written it), then
//! times the store reads behind `sluice runs list --limit 50`, `sluice runs
//! show`, a scheduler pass over due intervals and the staging sweep.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::params;

use sluice::dag::{DagSpec, TaskPolicy, TaskSpec};
use sluice::schedule::{Schedule, ScheduleSpec};
use sluice::state::{RunState, RunType, TaskState, VolumeState};
use sluice::store::Store;

use crate::cases::BenchResult;

/// A timestamp as the metadatabase stores it (RFC 3339, microseconds, UTC).
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// How big a metadatabase to fill.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Runs in all, spread evenly over the DAGs.
    pub runs: u32,
    /// Task instances (each with one try) per run.
    pub tasks_per_run: u32,
    /// Scheduled DAGs (hourly, catchup).
    pub dags: u32,
    /// Timed repetitions of each case; the median is reported.
    pub samples: usize,
}

impl Default for Shape {
    /// 100,000 runs of 10 task instances over 10 DAGs, 21 samples.
    fn default() -> Self {
        Self {
            runs: 100_000,
            tasks_per_run: 10,
            dags: 10,
            samples: 21,
        }
    }
}

/// The median time of each case.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// The shape measured.
    pub shape: Shape,
    /// Filling the metadatabase (one transaction), measured once.
    pub fill: Duration,
    /// `runs list --limit 50`: the 50 newest runs.
    pub runs_list: Duration,
    /// `runs show`: one run, its version, task instances, tries and sandboxes.
    pub runs_show: Duration,
    /// A scheduler pass: each scheduled DAG's current version, its interval
    /// runs' lookup and the due intervals after the latest one.
    pub scheduler_pass: Duration,
    /// The staging sweep's reads: the expired retained volumes, then the
    /// volume or run claiming each of 100 staging directories.
    pub staging_sweep: Duration,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(
            f,
            "metadatabase: {} runs x {} task instances over {} DAGs (filled in {:.1} s); median of {}",
            self.shape.runs,
            self.shape.tasks_per_run,
            self.shape.dags,
            self.fill.as_secs_f64(),
            self.shape.samples
        )?;
        writeln!(f, "  runs list --limit 50  {:>9.3} ms", ms(self.runs_list))?;
        writeln!(f, "  runs show             {:>9.3} ms", ms(self.runs_show))?;
        writeln!(
            f,
            "  scheduler pass        {:>9.3} ms",
            ms(self.scheduler_pass)
        )?;
        write!(
            f,
            "  staging sweep reads   {:>9.3} ms",
            ms(self.staging_sweep)
        )
    }
}

/// Fills a new metadatabase in `dir` (which must not hold one) to `shape` and
/// times each case. `store` reads it as `sluice` does; the filling writes
/// through a connection of its own, in one transaction.
pub fn metadb(dir: &Path, shape: Shape) -> BenchResult<Figures> {
    let path = dir.join("metadb-bench.sqlite");
    let Filled {
        store,
        run_ids,
        base,
        fill,
    } = create(&path, shape)?;

    let runs_list = median(shape.samples, || {
        store.runs(None, 50)?;
        Ok(())
    })?;
    let show = &run_ids[run_ids.len() / 2];
    let runs_show = median(shape.samples, || {
        let run = store.run(show)?;
        store.version(&run.dag_id, &run.version)?;
        for task in store.tasks(show)? {
            store.tries(show, &task.task_id)?;
        }
        store.run_sandboxes(show)?;
        Ok(())
    })?;
    let now = base + chrono::Duration::hours(3);
    let scheduler_pass = median(shape.samples, || {
        for dag_id in store.dag_ids()? {
            let version = store.current_version(&dag_id)?;
            let Some(spec) = &version.spec.schedule else {
                continue;
            };
            let existing = store.interval_runs(&dag_id)?;
            let from = existing
                .latest_start
                .map_or(spec.start_date, |l| l + chrono::Duration::seconds(1));
            let schedule = Schedule::of(spec)?;
            std::hint::black_box(schedule.complete_since(from.max(spec.start_date), now));
        }
        Ok(())
    })?;
    let entries: Vec<&String> = run_ids.iter().rev().take(100).collect();
    let staging_sweep = median(shape.samples, || {
        store.retained_volumes(base - chrono::Duration::hours(24))?;
        for name in &entries {
            if store.volume(name)?.is_none() {
                store.run(name)?;
            }
        }
        Ok(())
    })?;
    Ok(Figures {
        shape,
        fill,
        runs_list,
        runs_show,
        scheduler_pass,
        staging_sweep,
    })
}

/// A metadatabase filled by [`create`].
pub struct Filled {
    /// The store over it.
    pub store: Store,
    /// The run ids, oldest first.
    pub run_ids: Vec<String>,
    /// The end of the newest interval.
    pub base: DateTime<Utc>,
    /// How long filling took.
    pub fill: Duration,
}

/// Creates the metadatabase `path` (which must not exist) and fills it to
/// `shape` (see [`fill`]).
pub fn create(path: &Path, shape: Shape) -> BenchResult<Filled> {
    if path.exists() {
        return Err(format!(
            "{} exists; the benchmark fills a new metadatabase",
            path.display()
        )
        .into());
    }
    let store = Store::open(path)?;
    let base = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .ok_or("midnight of 2026-01-01 is not one instant in UTC")?;
    let started = Instant::now();
    let run_ids = fill(&store, path, shape, base)?;
    Ok(Filled {
        store,
        run_ids,
        base,
        fill: started.elapsed(),
    })
}

fn median(samples: usize, mut case: impl FnMut() -> BenchResult<()>) -> BenchResult<Duration> {
    let mut times = Vec::with_capacity(samples.max(1));
    for _ in 0..samples.max(1) {
        let started = Instant::now();
        case()?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// Writes `shape.runs` runs ending at `base`, one an hour per DAG, in one
/// transaction: the newest of each DAG running, one in 20 failed (its volume
/// retained for a day, then deleted), the rest succeeded; one in 10 manual.
/// Returns the run ids, oldest first.
fn fill(store: &Store, path: &Path, shape: Shape, base: DateTime<Utc>) -> BenchResult<Vec<String>> {
    let dags = shape.dags.max(1);
    let per_dag = shape.runs / dags;
    let start_date = base - chrono::Duration::hours(i64::from(per_dag) + 1);
    let task = |t: u32| TaskSpec {
        id: format!("task{t}"),
        plugin: "bench".into(),
        component: format!("{t:064x}"),
        after: if t == 0 {
            Vec::new()
        } else {
            vec![format!("task{}", t - 1)]
        },
        params: serde_json::Map::new(),
        connections: Vec::new(),
        privileged_connections: Vec::new(),
        policy: TaskPolicy::default(),
    };
    for d in 0..dags {
        let spec = DagSpec {
            id: format!("dag{d}"),
            description: String::new(),
            params: serde_json::Map::new(),
            max_active_tasks: 4,
            schedule: Some(ScheduleSpec {
                cron: "@hourly".into(),
                timezone: "UTC".into(),
                start_date,
                catchup: true,
                max_active_runs: 2,
            }),
            tasks: (0..shape.tasks_per_run).map(task).collect(),
        };
        store.record_version("v1", "bench", &spec, "bench")?;
    }
    let mut ids = Vec::with_capacity(shape.runs as usize);
    let mut db = rusqlite::Connection::open(path)?;
    {
        let tx = db.transaction()?;
        {
            let mut run = tx.prepare(
                "INSERT INTO dag_runs (run_id, dag_id, version, state, logical_date, run_type,
                     interval_start, interval_end, params, staging_dir, created_at, started_at, ended_at)
                 VALUES (?1, ?2, 'v1', ?3, ?4, ?5, ?4, ?6, '{}', ?7, ?8, ?8, ?9)",
            )?;
            let mut instance = tx.prepare(
                "INSERT INTO task_instances (run_id, task_id, state, try_number, max_tries, component,
                     started_at, ended_at, duration_ms)
                 VALUES (?1, ?2, ?3, 1, 1, ?4, ?5, ?6, 1000)",
            )?;
            let mut tried = tx.prepare(
                "INSERT INTO task_tries (run_id, task_id, try_number, version, component, state,
                     started_at, sandbox, ended_at, duration_ms)
                 VALUES (?1, ?2, 1, 'v1', ?4, ?3, ?5, 'landlock', ?6, 1000)",
            )?;
            let mut volume = tx.prepare(
                "INSERT INTO staging_volumes (run_id, path, state, created_at, released_at,
                     deleted_at, delete_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for i in 0..per_dag * dags {
                let (d, k) = (i % dags, i / dags);
                let age = per_dag - k;
                let interval = base - chrono::Duration::hours(i64::from(age));
                let created =
                    interval + chrono::Duration::hours(1) + chrono::Duration::seconds(i64::from(d));
                let ended = created + chrono::Duration::minutes(1);
                let running = age == 1;
                let failed = !running && i % 20 == 0;
                let state = match (running, failed) {
                    (true, _) => RunState::Running,
                    (false, true) => RunState::Failed,
                    (false, false) => RunState::Success,
                };
                let (volume_state, reason) = match state {
                    RunState::Running | RunState::Queued => (VolumeState::Active, None),
                    RunState::Failed if age < 24 => (VolumeState::Retained, None),
                    RunState::Failed => (VolumeState::Deleted, Some("ttl_expired")),
                    RunState::Success => (VolumeState::Deleted, Some("run_succeeded")),
                };
                let run_type = if k % 10 == 3 {
                    RunType::Manual
                } else {
                    RunType::Scheduled
                };
                let run_id = format!(
                    "{run_type}__{}_{:06x}",
                    interval.format("%Y%m%dT%H%M%S"),
                    i & 0xff_ffff
                );
                let staging = format!("/staging/{run_id}");
                let end = (!running).then(|| ts(ended));
                run.execute(params![
                    run_id,
                    format!("dag{d}"),
                    state,
                    ts(interval),
                    run_type,
                    ts(interval + chrono::Duration::hours(1)),
                    staging,
                    ts(created),
                    end
                ])?;
                for t in 0..shape.tasks_per_run {
                    let task_state = match state {
                        RunState::Running | RunState::Queued => TaskState::Running,
                        RunState::Failed if t == 0 => TaskState::Failed,
                        RunState::Failed => TaskState::UpstreamFailed,
                        RunState::Success => TaskState::Success,
                    };
                    let args = params![
                        run_id,
                        format!("task{t}"),
                        task_state,
                        format!("{t:064x}"),
                        ts(created),
                        end
                    ];
                    instance.execute(args)?;
                    tried.execute(args)?;
                }
                let released = (volume_state != VolumeState::Active).then(|| ts(ended));
                let deleted = (volume_state == VolumeState::Deleted).then(|| ts(ended));
                volume.execute(params![
                    run_id,
                    staging,
                    volume_state,
                    ts(created),
                    released,
                    deleted,
                    reason
                ])?;
                ids.push(run_id);
            }
        }
        tx.commit()?;
    }
    Ok(ids)
}
