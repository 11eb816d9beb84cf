//! Deployed DAGs as a front end shows them: their list (schedule, next due
//! interval, last runs), a DAG's grid of runs × tasks, one version in detail
//! (component digests, signers) and what changed between two versions.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::runs::RunInfo;
use super::{App, AppError};
use crate::schedule::{Interval, Schedule};
use crate::state::{RunState, TaskState};
use crate::store::VersionRecord;

/// How many recent runs [`App::dags`] shows per DAG.
pub const RECENT_RUNS: u32 = 10;

/// A run in brief: enough to draw a coloured square.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunBrief {
    /// Run id.
    pub run_id: String,
    /// Run state.
    #[schema(value_type = String)]
    pub state: RunState,
    /// Logical date.
    pub logical_date: DateTime<Utc>,
}

/// A DAG's schedule and the next interval it will run for.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScheduleInfo {
    /// Cron expression.
    pub cron: String,
    /// Time zone the cron expression is read in.
    pub timezone: String,
    /// Whether missed intervals are caught up.
    pub catchup: bool,
    /// Start of the next interval the scheduler will create a run for.
    pub next_interval_start: Option<DateTime<Utc>>,
    /// When that run becomes due (the end of its interval).
    pub next_due: Option<DateTime<Utc>>,
}

/// A deployed DAG.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DagSummary {
    /// DAG id.
    pub dag_id: String,
    /// Description from the manifest.
    pub description: String,
    /// Current version digest.
    pub version: String,
    /// Current version label.
    pub label: String,
    /// Task ids, upstream before downstream.
    pub tasks: Vec<String>,
    /// DAG params (defaults a trigger may override).
    #[schema(value_type = Object)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// The schedule, if runs are created by the scheduler.
    pub schedule: Option<ScheduleInfo>,
    /// The latest runs, newest first (at most [`RECENT_RUNS`]).
    pub recent_runs: Vec<RunBrief>,
}

/// One row of a DAG's grid: a run and the state of each of its tasks.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GridRun {
    /// The run.
    pub run: RunInfo,
    /// Task id → state (tasks the run's version does not have are absent).
    #[schema(value_type = Object)]
    pub states: BTreeMap<String, TaskState>,
}

/// A DAG's latest runs × its tasks.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Grid {
    /// DAG id.
    pub dag_id: String,
    /// The current version's task ids, upstream before downstream.
    pub tasks: Vec<String>,
    /// The runs, newest first.
    pub runs: Vec<GridRun>,
}

/// A task of a version: its component and where it sits in the graph.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionTask {
    /// Task id.
    pub task_id: String,
    /// Plugin name.
    pub plugin: String,
    /// Component digest (sha256 hex).
    pub component: String,
    /// Upstream task ids.
    pub after: Vec<String>,
}

/// A key that signed a version.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Signer {
    /// The public key (hex).
    pub public_key: String,
    /// Its name, if it is trusted.
    pub trusted_as: Option<String>,
}

/// One version of a DAG in detail.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionDetail {
    /// DAG id.
    pub dag_id: String,
    /// Version digest.
    pub digest: String,
    /// Label.
    pub label: String,
    /// When first deployed.
    pub created_at: DateTime<Utc>,
    /// Whether it is current.
    pub current: bool,
    /// The manifest it was deployed from.
    pub source: String,
    /// Its tasks, upstream before downstream.
    pub tasks: Vec<VersionTask>,
    /// The keys that signed it.
    pub signers: Vec<Signer>,
}

/// A task whose component differs between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ComponentChange {
    /// Task id.
    pub task_id: String,
    /// Its component in the first version (none: the task is new).
    pub from: Option<String>,
    /// Its component in the second version (none: the task was removed).
    pub to: Option<String>,
}

/// What differs between two versions of a DAG.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionDiff {
    /// DAG id.
    pub dag_id: String,
    /// The first version's digest.
    pub from: String,
    /// The second version's digest.
    pub to: String,
    /// Tasks whose component changed, was added or removed, in the second
    /// version's order, then the removed ones.
    pub components: Vec<ComponentChange>,
    /// Whether anything else of the spec (params, policies, edges, schedule) differs.
    pub spec_differs: bool,
}

/// The component changes from `a` to `b`.
pub fn component_changes(a: &VersionRecord, b: &VersionRecord) -> Vec<ComponentChange> {
    let before: HashMap<&str, &str> = a
        .spec
        .tasks
        .iter()
        .map(|t| (t.id.as_str(), t.component.as_str()))
        .collect();
    let mut changes: Vec<ComponentChange> = b
        .spec
        .tasks
        .iter()
        .filter(|t| before.get(t.id.as_str()) != Some(&t.component.as_str()))
        .map(|t| ComponentChange {
            task_id: t.id.clone(),
            from: before.get(t.id.as_str()).map(|c| (*c).to_owned()),
            to: Some(t.component.clone()),
        })
        .collect();
    changes.extend(
        a.spec
            .tasks
            .iter()
            .filter(|t| b.spec.task(&t.id).is_none())
            .map(|t| ComponentChange {
                task_id: t.id.clone(),
                from: Some(t.component.clone()),
                to: None,
            }),
    );
    changes
}

impl App {
    /// Every deployed DAG, by id, with its schedule and latest runs.
    pub fn dags(&self) -> Result<Vec<DagSummary>, AppError> {
        let store = &self.sluice.store;
        let now = Utc::now();
        store
            .dag_ids()?
            .into_iter()
            .map(|dag_id| {
                let version = store.current_version(&dag_id)?;
                let schedule = match &version.spec.schedule {
                    None => None,
                    Some(spec) => {
                        let next = self.next_interval(&dag_id, spec, now)?;
                        Some(ScheduleInfo {
                            cron: spec.cron.clone(),
                            timezone: spec.timezone.clone(),
                            catchup: spec.catchup,
                            next_interval_start: next.map(|i| i.start),
                            next_due: next.map(|i| i.end),
                        })
                    }
                };
                let recent_runs = store
                    .runs(Some(&dag_id), RECENT_RUNS)?
                    .into_iter()
                    .map(|r| RunBrief {
                        run_id: r.run_id,
                        state: r.state,
                        logical_date: r.logical_date,
                    })
                    .collect();
                Ok(DagSummary {
                    tasks: version.spec.tasks.iter().map(|t| t.id.clone()).collect(),
                    description: version.spec.description.clone(),
                    params: version.spec.params.clone(),
                    version: version.digest,
                    label: version.label,
                    schedule,
                    recent_runs,
                    dag_id,
                })
            })
            .collect()
    }

    /// The next interval the scheduler will create a run of `dag_id` for:
    /// the first after the latest it made, not before the start date.
    fn next_interval(
        &self,
        dag_id: &str,
        spec: &crate::schedule::ScheduleSpec,
        now: DateTime<Utc>,
    ) -> Result<Option<Interval>, AppError> {
        let schedule = Schedule::of(spec).map_err(crate::scheduler::RunError::from)?;
        let latest = self.sluice.store.interval_runs(dag_id)?.latest_start;
        let from = match latest {
            None => spec.start_date,
            Some(l) => (l + chrono::Duration::seconds(1)).max(spec.start_date),
        };
        // Without catchup the scheduler starts from the latest complete interval.
        let from = if spec.catchup {
            from
        } else {
            from.max(
                schedule
                    .complete_since(from, now)
                    .last()
                    .map_or(from, |i| i.start),
            )
        };
        Ok(schedule.interval_at_or_after(from))
    }

    /// The latest `limit` runs of `dag_id` × the tasks of its current version.
    pub fn grid(&self, dag_id: &str, limit: u32) -> Result<Grid, AppError> {
        let store = &self.sluice.store;
        let version = self.current_version(dag_id)?;
        let runs = store
            .runs(Some(dag_id), limit)?
            .into_iter()
            .map(|run| {
                let states = store
                    .tasks(&run.run_id)?
                    .into_iter()
                    .map(|t| (t.task_id, t.state))
                    .collect();
                Ok(GridRun {
                    run: run.into(),
                    states,
                })
            })
            .collect::<Result<_, AppError>>()?;
        Ok(Grid {
            dag_id: dag_id.to_owned(),
            tasks: version.spec.tasks.iter().map(|t| t.id.clone()).collect(),
            runs,
        })
    }

    /// The current version of `dag_id`; [`AppError::NotDeployed`] if it has none.
    pub fn current_version(&self, dag_id: &str) -> Result<VersionRecord, AppError> {
        match self.sluice.store.current_version(dag_id) {
            Err(crate::store::StoreError::NotFound(_)) => {
                Err(AppError::NotDeployed(dag_id.to_owned()))
            }
            other => Ok(other?),
        }
    }

    /// Version `digest` of `dag_id` (a unique prefix of at least 8 hex digits will do).
    fn find_version(&self, dag_id: &str, digest: &str) -> Result<VersionRecord, AppError> {
        let versions = self.sluice.store.versions(dag_id)?;
        if versions.is_empty() {
            return Err(AppError::NotDeployed(dag_id.to_owned()));
        }
        let mut matching = versions
            .into_iter()
            .filter(|v| digest.len() >= 8 && v.digest.starts_with(digest));
        match (matching.next(), matching.next()) {
            (Some(v), None) => Ok(v),
            (first, _) => Err(AppError::NoSuchVersion {
                dag_id: dag_id.to_owned(),
                version: digest.to_owned(),
                ambiguous: first.is_some(),
            }),
        }
    }

    /// Version `digest` of `dag_id` in detail.
    pub fn version_detail(&self, dag_id: &str, digest: &str) -> Result<VersionDetail, AppError> {
        let store = &self.sluice.store;
        let v = self.find_version(dag_id, digest)?;
        let trusted: HashMap<String, String> = store.trusted_keys()?.into_iter().collect();
        let signers = store
            .signatures(dag_id, &v.digest)?
            .into_iter()
            .map(|(public_key, _)| Signer {
                trusted_as: trusted.get(&public_key).cloned(),
                public_key,
            })
            .collect();
        Ok(VersionDetail {
            tasks: v
                .spec
                .tasks
                .iter()
                .map(|t| VersionTask {
                    task_id: t.id.clone(),
                    plugin: t.plugin.clone(),
                    component: t.component.clone(),
                    after: t.after.clone(),
                })
                .collect(),
            dag_id: v.dag_id,
            digest: v.digest,
            label: v.label,
            created_at: v.created_at,
            current: v.current,
            source: v.source,
            signers,
        })
    }

    /// What differs from version `from` to version `to` of `dag_id`.
    pub fn version_diff(
        &self,
        dag_id: &str,
        from: &str,
        to: &str,
    ) -> Result<VersionDiff, AppError> {
        let a = self.find_version(dag_id, from)?;
        let b = self.find_version(dag_id, to)?;
        let components = component_changes(&a, &b);
        let mut a_spec = a.spec.clone();
        // Everything but the components: compare with b's components put in.
        for t in &mut a_spec.tasks {
            if let Some(bt) = b.spec.task(&t.id) {
                t.component.clone_from(&bt.component);
            }
        }
        Ok(VersionDiff {
            dag_id: dag_id.to_owned(),
            spec_differs: a_spec != b.spec,
            from: a.digest,
            to: b.digest,
            components,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::dag::{DagSpec, TaskPolicy, TaskSpec};

    fn version(tasks: &[(&str, &str)]) -> VersionRecord {
        VersionRecord {
            dag_id: "d".into(),
            digest: "0".repeat(64),
            label: "dev".into(),
            spec: DagSpec {
                id: "d".into(),
                description: String::new(),
                params: Map::new(),
                max_active_tasks: 1,
                schedule: None,
                tasks: tasks
                    .iter()
                    .map(|(id, component)| TaskSpec {
                        id: (*id).into(),
                        plugin: "p".into(),
                        component: (*component).into(),
                        after: Vec::new(),
                        params: Map::new(),
                        connections: Vec::new(),
                        privileged_connections: Vec::new(),
                        policy: TaskPolicy::default(),
                    })
                    .collect(),
            },
            source: String::new(),
            created_at: Utc::now(),
            current: true,
        }
    }

    #[test]
    fn changed_added_and_removed_components_are_listed_and_unchanged_ones_not() {
        let a = version(&[("extract", "e1"), ("transform", "t1"), ("old", "o1")]);
        let b = version(&[("extract", "e1"), ("transform", "t2"), ("new", "n1")]);
        let change = |task: &str, from: Option<&str>, to: Option<&str>| ComponentChange {
            task_id: task.into(),
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
        };
        assert_eq!(
            component_changes(&a, &b),
            [
                change("transform", Some("t1"), Some("t2")),
                change("new", None, Some("n1")),
                change("old", Some("o1"), None),
            ]
        );
        assert!(component_changes(&a, &a).is_empty());
    }
}
