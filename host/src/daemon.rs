//! `sluice scheduler` and `sluice backfill`: runs created from DAG schedules.
//!
//! A pass looks at every deployed DAG with a schedule and creates a run for
//! each complete data interval not yet scheduled (only the latest one unless
//! `catchup`), within `max_active_runs`. On start, runs left `running` by a
//! host that died are resumed. On shutdown no new run starts and the running
//! ones finish.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;

use crate::Sluice;
use crate::schedule::{Interval, Schedule};
use crate::scheduler::{
    RunError, RunOptions, RunSummary, RunType, StagingPolicy, create_run, resume_run,
};
use crate::state::RunState;
use crate::store::VersionRecord;

/// The longest the scheduler sleeps between passes.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// A run a pass decided to create.
#[derive(Debug, Clone)]
pub struct DueRun {
    /// The DAG version it will run.
    pub version: VersionRecord,
    /// Its data interval.
    pub interval: Interval,
}

fn is_active(state: RunState) -> bool {
    matches!(state, RunState::Queued | RunState::Running)
}

/// The runs due at `now` across every scheduled DAG.
pub fn due_runs(sluice: &Sluice, now: DateTime<Utc>) -> Result<Vec<DueRun>, RunError> {
    let mut due = Vec::new();
    for dag_id in sluice.store.dag_ids()? {
        let version = sluice.store.current_version(&dag_id)?;
        let Some(spec) = version.spec.schedule.clone() else {
            continue;
        };
        let schedule = Schedule::of(&spec)?;
        let existing = sluice.store.interval_runs(&dag_id)?;
        // Only intervals after the latest one: from a second past its start
        // (cron ticks are whole seconds), none if that overflows.
        let from = match existing.latest_start {
            None => Some(spec.start_date),
            Some(l) => l
                .checked_add_signed(chrono::Duration::seconds(1))
                .map(|t| t.max(spec.start_date)),
        };
        let complete = from
            .map(|from| schedule.complete_since(from, now))
            .unwrap_or_default();
        let intervals = crate::schedule::due_intervals(
            &spec,
            complete,
            existing.latest_start,
            existing.active as usize,
        );
        due.extend(intervals.into_iter().map(|interval| DueRun {
            version: version.clone(),
            interval,
        }));
    }
    Ok(due)
}

/// When the next interval of any scheduled DAG becomes due, after `now`.
fn next_wakeup(sluice: &Sluice, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, RunError> {
    let mut next: Option<DateTime<Utc>> = None;
    for dag_id in sluice.store.dag_ids()? {
        let version = sluice.store.current_version(&dag_id)?;
        if let Some(spec) = &version.spec.schedule {
            let schedule = Schedule::of(spec)?;
            if let Some(due) = schedule.next_due(now.max(spec.start_date)) {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
    }
    Ok(next)
}

/// Runs the scheduler until `shutdown` resolves (or, with `once`, one pass and
/// the runs it started). Returns the runs it carried out.
pub async fn serve(
    sluice: Arc<Sluice>,
    staging: StagingPolicy,
    once: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<Vec<RunSummary>, RunError> {
    // Refused here, before anything runs, if another scheduler holds the executor.
    sluice.executor.start().await.map_err(RunError::Executor)?;
    let mut running: JoinSet<Result<RunSummary, RunError>> = JoinSet::new();
    for run in sluice.store.runs_in_state(RunState::Running, None)? {
        tracing::info!("resuming run {} left running by a stopped host", run.run_id);
        let sluice = sluice.clone();
        running.spawn(async move { resume_run(&sluice, &run.run_id, staging, None).await });
    }
    tokio::pin!(shutdown);
    let mut done = Vec::new();
    loop {
        let now = Utc::now();
        if let Err(e) = crate::staging::sweep(&sluice.home, &sluice.store, staging.ttl, now, false)
        {
            tracing::warn!("staging sweep failed: {e}");
        }
        if let Err(e) = sluice.executor.sweep_volumes(staging.ttl, false).await {
            tracing::warn!("the sweep of the executor's volumes failed: {e}");
        }
        for due in due_runs(&sluice, now)? {
            if let Err(e) =
                crate::trust::check(&sluice.store, &due.version.dag_id, &due.version.digest)
            {
                tracing::warn!("not scheduling {}: {e}", due.version.dag_id);
                continue;
            }
            let options = RunOptions {
                run_type: RunType::Scheduled,
                interval: Some(due.interval),
                staging,
                ..RunOptions::default()
            };
            let record = create_run(&sluice, &due.version, &options)?;
            tracing::info!("scheduled run {} for {}", record.run_id, due.interval.start);
            let sluice = sluice.clone();
            running.spawn(async move { resume_run(&sluice, &record.run_id, staging, None).await });
        }
        if once {
            break;
        }
        let wake = next_wakeup(&sluice, now)?
            .and_then(|t| (t - now).to_std().ok())
            .map_or(MAX_IDLE, |d| d.min(MAX_IDLE));
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(wake) => {}
            Some(finished) = running.join_next() => collect(finished, &mut done)?,
        }
    }
    while let Some(finished) = running.join_next().await {
        collect(finished, &mut done)?;
    }
    Ok(done)
}

fn collect(
    finished: Result<Result<RunSummary, RunError>, tokio::task::JoinError>,
    done: &mut Vec<RunSummary>,
) -> Result<(), RunError> {
    match finished {
        Ok(summary) => done.push(summary?),
        Err(e) => tracing::error!("a run's supervisor failed: {e}"),
    }
    Ok(())
}

/// Creates and carries out runs of `dag_id` for every interval starting in
/// `[from, to]`, skipping intervals that already have a successful or active
/// run over the same interval; at most `max_active_runs` at a time.
pub async fn backfill(
    sluice: Arc<Sluice>,
    dag_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    staging: StagingPolicy,
) -> Result<Vec<RunSummary>, RunError> {
    sluice.executor.start().await.map_err(RunError::Executor)?;
    let version = sluice.store.current_version(dag_id)?;
    let spec =
        version.spec.schedule.clone().ok_or_else(|| {
            RunError::Invalid(format!("DAG `{dag_id}` has no schedule to backfill"))
        })?;
    let schedule = Schedule::of(&spec)?;
    // A run covers an interval only with the same start and end: a run made
    // before issue 16's fix may end early, at a spring DST change.
    let covered: HashSet<(DateTime<Utc>, DateTime<Utc>)> = sluice
        .store
        .interval_runs_between(dag_id, from, to)?
        .into_iter()
        .filter(|r| r.state == RunState::Success || is_active(r.state))
        .map(|r| (r.interval_start, r.interval_end))
        .collect();
    let todo: Vec<Interval> = schedule
        .intervals_between(from, to)
        .into_iter()
        .filter(|i| !covered.contains(&(i.start, i.end)))
        .collect();
    let mut done = Vec::new();
    let mut running: JoinSet<Result<RunSummary, RunError>> = JoinSet::new();
    for interval in todo {
        if running.len() >= spec.max_active_runs as usize
            && let Some(finished) = running.join_next().await
        {
            collect(finished, &mut done)?;
        }
        let options = RunOptions {
            run_type: RunType::Backfill,
            interval: Some(interval),
            staging,
            ..RunOptions::default()
        };
        let record = create_run(&sluice, &version, &options)?;
        let sluice = sluice.clone();
        running.spawn(async move { resume_run(&sluice, &record.run_id, staging, None).await });
    }
    while let Some(finished) = running.join_next().await {
        collect(finished, &mut done)?;
    }
    done.sort_by_key(|s| s.run_id.clone());
    Ok(done)
}
