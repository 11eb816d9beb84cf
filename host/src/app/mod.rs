//! The application layer: what a front end (the `sluice` CLI, the HTTP API)
//! asks of a Sluice home. Each operation takes typed inputs and returns plain
//! data (serializable where a front end shows it) or an [`AppError`]; none
//! prints. One module per concern: [`deploy`] (build, deploy, versions),
//! [`runs`] (trigger, resume, clear, inspect, logs), [`schedules`] (the
//! scheduler and backfills), [`connections`], [`staging`] and [`trust`]
//! (signing keys and the signature policy); [`dags`] and [`live`] (what the
//! web UI shows, and its live views); [`tokens`] (API tokens of `sluice serve`).

pub mod connections;
pub mod dags;
pub mod deploy;
mod error;
pub mod live;
pub mod runs;
pub mod schedules;
pub mod staging;
pub mod tokens;
pub mod trust;

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use error::{AppError, ErrorKind};

use crate::Sluice;
use crate::confine::Sandbox;
use crate::scheduler::StagingPolicy;

/// How a front end opens the application.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The Sluice home (metadatabase, components, compile cache, staging).
    pub home: PathBuf,
    /// How long a failed (or kept) run's staging directory is kept.
    pub staging_ttl: Duration,
    /// Run tasks even where the kernel cannot confine the host threads that
    /// open files for them.
    pub allow_unconfined: bool,
    /// Run each try in a worker process started from this `sluice` binary
    /// (none: in this process).
    pub workers: Option<PathBuf>,
    /// This process serves one try for a parent (`sluice worker`).
    pub worker: bool,
    /// Run each try as a Kubernetes Job (overrides `workers`).
    pub kubernetes: Option<crate::executor::kubernetes::KubeSettings>,
}

/// An opened Sluice home and the operator's settings; cheap to clone and
/// shareable between requests.
#[derive(Clone)]
pub struct App {
    sluice: Arc<Sluice>,
    staging_ttl: Duration,
}

impl App {
    /// Opens (creating if needed) the home of `config`.
    pub fn open(config: &AppConfig) -> Result<Self, AppError> {
        let mut sluice = Sluice::open(&config.home)?;
        sluice.allow_unconfined(config.allow_unconfined);
        if let Some(exe) = &config.workers {
            sluice.run_tries_in_workers(exe.clone());
        }
        if let Some(settings) = &config.kubernetes {
            sluice.run_tries_on_kubernetes(settings.clone());
        }
        if config.worker {
            sluice.serve_one_try();
        }
        Ok(Self {
            sluice: Arc::new(sluice),
            staging_ttl: config.staging_ttl,
        })
    }

    /// Watches every run event this process carries out from now on (runs
    /// started by other processes are not seen: read them from the store).
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<crate::events::RunNotice> {
        self.sluice.watch()
    }

    /// How tasks started by this application are confined, for a front end to show.
    pub fn sandbox(&self) -> &Sandbox {
        self.sluice.sandbox()
    }

    /// Serves one try for a parent's [`crate::executor::ProcessExecutor`]
    /// (`sluice worker`): the try on stdin, its reports on stdout.
    /// `open_database_ahead`: the host said the task imports `sql`, so its
    /// DuckDB database is opened while the try is set up.
    pub async fn serve_worker(&self, open_database_ahead: bool) -> Result<(), AppError> {
        if open_database_ahead {
            self.sluice.sql_pool.warm();
        }
        crate::executor::adopt_handed_code(&self.sluice.engine, &self.sluice.home);
        Ok(crate::executor::worker::serve(self.sluice.executor.as_ref()).await?)
    }

    /// Serves the try of this Kubernetes pod (`sluice worker --endpoint ...`):
    /// the try, its component and connections from the host endpoint.
    pub async fn serve_pod_worker(
        &self,
        pod: crate::executor::kubernetes::pod_worker::PodTry,
    ) -> Result<(), AppError> {
        let local = self.sluice.local_executor();
        Ok(crate::executor::kubernetes::pod_worker::serve(&local, &self.sluice.home, pod).await?)
    }

    /// Fails when tasks must be refused (no kernel confinement, no opt-out).
    /// Every operation that runs tasks checks it; a front end may check first.
    pub fn check_sandbox(&self) -> Result<(), AppError> {
        Ok(self.sluice.sandbox().check()?)
    }

    fn staging_policy(&self, keep: bool) -> StagingPolicy {
        StagingPolicy {
            keep,
            ttl: self.staging_ttl,
        }
    }

    /// When a staging directory released at `released` stops being kept.
    fn kept_until(&self, released: DateTime<Utc>) -> Result<DateTime<Utc>, AppError> {
        chrono::Duration::from_std(self.staging_ttl)
            .ok()
            .and_then(|ttl| released.checked_add_signed(ttl))
            .ok_or(AppError::TtlTooLong {
                ttl: self.staging_ttl,
            })
    }
}

/// The time from `start` to `end`; zero if the clock went backwards between them.
fn elapsed(start: DateTime<Utc>, end: DateTime<Utc>) -> Duration {
    (end - start).to_std().unwrap_or(Duration::ZERO)
}

/// Serializes a state (or anything else with a stored name) as its name.
fn as_text<S: serde::Serializer>(value: &impl Display, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::runs::StagingStatus;
    use super::*;
    use crate::dag::{DagSpec, TaskPolicy, TaskSpec};
    use crate::scheduler::{RunOptions, create_run};

    fn open(ttl: Duration) -> (tempfile::TempDir, App) {
        let home = tempfile::tempdir().expect("tempdir");
        let app = App::open(&AppConfig {
            home: home.path().to_owned(),
            staging_ttl: ttl,
            allow_unconfined: false,
            workers: None,
            worker: false,
            kubernetes: None,
        })
        .expect("open");
        (home, app)
    }

    /// Records a DAG `extract -> load` and creates a run of it (nothing runs).
    fn recorded_run(app: &App) -> String {
        let task = |id: &str, after: &[&str]| TaskSpec {
            id: id.into(),
            plugin: "p".into(),
            component: "c".repeat(64),
            after: after.iter().map(|a| (*a).to_owned()).collect(),
            params: Map::new(),
            connections: Vec::new(),
            privileged_connections: Vec::new(),
            policy: TaskPolicy::default(),
        };
        let spec = DagSpec {
            id: "etl".into(),
            description: String::new(),
            params: Map::new(),
            max_active_tasks: 1,
            schedule: None,
            tasks: vec![task("extract", &[]), task("load", &["extract"])],
        };
        let store = &app.sluice.store;
        let digest = "d".repeat(64);
        store
            .record_version(&digest, "dev", &spec, "dag.toml")
            .expect("record");
        let version = store.version("etl", &digest).expect("version");
        create_run(&app.sluice, &version, &RunOptions::default())
            .expect("create run")
            .run_id
    }

    #[test]
    fn unknown_dags_keys_and_connections_are_errors_that_name_them() {
        let (_home, app) = open(Duration::from_secs(60));
        let err = app.versions("nope").expect_err("never deployed");
        assert!(
            matches!(&err, AppError::NotDeployed(id) if id == "nope"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "DAG `nope` has not been deployed");
        let err = app.distrust_key(" abc ").expect_err("not trusted");
        assert_eq!(err.to_string(), "`abc` is not trusted");
        let err = app.trust_key("abc", "x").expect_err("not a key");
        assert!(matches!(err, AppError::Trust(_)), "{err:?}");
        assert!(
            app.trust_policy().expect("policy").keys.is_empty(),
            "nothing was trusted"
        );
        let err = app.delete_connection("db").expect_err("no such connection");
        assert_eq!(err.to_string(), "no connection `db`");
        assert!(app.run_result("manual__none").is_err());
    }

    #[test]
    fn a_run_reports_its_leaves_and_what_became_of_its_staging() {
        let ttl = Duration::from_secs(3600);
        let (_home, app) = open(ttl);
        let run_id = recorded_run(&app);
        let result = app.run_result(&run_id).expect("result");
        let leaves: Vec<&str> = result.leaves.iter().map(|t| t.task_id.as_str()).collect();
        assert_eq!(leaves, ["load"]);
        assert_eq!(
            result.staging,
            StagingStatus::Kept { until: None },
            "active"
        );

        let store = &app.sluice.store;
        // Whole seconds: the metadatabase keeps microseconds.
        let released = DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("now");
        store.retain_volume(&run_id, released).expect("retain");
        let result = app.run_result(&run_id).expect("result");
        let StagingStatus::Kept { until: Some(until) } = result.staging else {
            panic!("kept for the TTL: {:?}", result.staging);
        };
        assert_eq!(until - released, chrono::Duration::hours(1));
        let listed = app.staging_dirs().expect("list");
        assert_eq!(listed[0].kept_until, Some(until));

        store
            .delete_volume(&run_id, &result.run.staging_dir, Utc::now(), "ttl_expired")
            .expect("delete");
        let result = app.run_result(&run_id).expect("result");
        assert_eq!(
            result.staging,
            StagingStatus::Deleted {
                reason: Some("ttl_expired".into())
            }
        );
    }

    #[test]
    fn logs_of_a_task_not_in_the_run_are_refused() {
        let (_home, app) = open(Duration::from_secs(60));
        let run_id = recorded_run(&app);
        assert!(app.logs(&run_id, "extract", None).expect("logs").is_empty());
        let err = app
            .logs(&run_id, "transform", Some(1))
            .expect_err("no such task");
        assert_eq!(
            err.to_string(),
            format!("run `{run_id}` has no task `transform`")
        );
    }

    #[test]
    fn a_ttl_past_representable_dates_is_an_error_not_a_panic() {
        let (_home, app) = open(Duration::from_secs(u64::MAX));
        let run_id = recorded_run(&app);
        app.sluice
            .store
            .retain_volume(&run_id, Utc::now())
            .expect("retain");
        let err = app.run_result(&run_id).expect_err("too long");
        assert!(matches!(err, AppError::TtlTooLong { .. }), "{err:?}");
        assert!(err.to_string().starts_with("the staging TTL "), "{err}");
        assert!(matches!(
            app.staging_dirs(),
            Err(AppError::TtlTooLong { .. })
        ));
    }
}
