//! The task's view of its run: ids, parameters, staging directory, logging.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::bindings::sluice::task::{context, log};
use crate::error::{Error, Result};
use crate::sql::Sql;

/// What a task receives: its parameters and the outputs of its upstream tasks.
#[derive(Debug)]
pub struct Input<P> {
    /// The task's parameters: DAG params, overlaid with the task's own, overlaid
    /// with the params given when the run was started.
    pub params: P,
    upstream: Map<String, Value>,
}

#[derive(Deserialize)]
struct RawInput {
    #[serde(default)]
    params: Value,
    #[serde(default)]
    upstream: Map<String, Value>,
}

impl<P: DeserializeOwned> Input<P> {
    pub(crate) fn decode(json: &str) -> Result<Self> {
        let raw: RawInput = serde_json::from_str(json)?;
        let params = serde_json::from_value(raw.params)
            .map_err(|e| Error::permanent(format!("invalid task params: {e}")))?;
        Ok(Self {
            params,
            upstream: raw.upstream,
        })
    }
}

impl<P> Input<P> {
    /// The output of upstream task `task_id`, decoded as `T`.
    pub fn upstream<T: DeserializeOwned>(&self, task_id: &str) -> Result<T> {
        let value = self
            .upstream
            .get(task_id)
            .ok_or_else(|| Error::permanent(format!("no output from upstream task `{task_id}`")))?;
        T::deserialize(value).map_err(|e| {
            Error::permanent(format!(
                "output of upstream task `{task_id}` does not decode: {e}"
            ))
        })
    }

    /// Ids of the upstream tasks whose outputs are present.
    pub fn upstream_ids(&self) -> impl Iterator<Item = &str> {
        self.upstream.keys().map(String::as_str)
    }
}

/// Handle to the host: run facts, SQL, logging. Cheap; one is passed to the task.
#[derive(Debug, Default)]
pub struct Context {
    _private: (),
}

impl Context {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }

    /// The DAG id.
    pub fn dag_id(&self) -> String {
        context::dag_id()
    }

    /// The run id.
    pub fn run_id(&self) -> String {
        context::run_id()
    }

    /// This task's id.
    pub fn task_id(&self) -> String {
        context::task_id()
    }

    /// 1 on the first try, 2 on the first retry, ...
    pub fn try_number(&self) -> u32 {
        context::try_number()
    }

    /// The run's logical date (RFC 3339, UTC).
    pub fn logical_date(&self) -> String {
        context::logical_date()
    }

    /// Start of the run's data interval (RFC 3339, UTC).
    pub fn data_interval_start(&self) -> String {
        context::data_interval_start()
    }

    /// End of the run's data interval (RFC 3339, UTC).
    pub fn data_interval_end(&self) -> String {
        context::data_interval_end()
    }

    /// The logical date as `YYYY-MM-DD`.
    pub fn ds(&self) -> String {
        context::ds()
    }

    /// The logical date as `YYYYMMDD`.
    pub fn ds_nodash(&self) -> String {
        context::ds_nodash()
    }

    /// Absolute path of the run's staging directory, valid in the task and in SQL.
    pub fn staging_dir(&self) -> String {
        context::staging_dir()
    }

    /// `staging_dir()/name`: a path for files handed between tasks.
    pub fn staging_path(&self, name: &str) -> String {
        format!("{}/{}", self.staging_dir().trim_end_matches('/'), name)
    }

    /// Opens the Postgres connection `id` granted to this task.
    pub fn postgres(&self, id: &str) -> Result<crate::Postgres> {
        crate::Postgres::open(id)
    }

    /// Opens the object-store connection `id` granted to this task.
    pub fn bucket(&self, id: &str) -> Result<crate::Bucket> {
        crate::Bucket::open(id)
    }

    /// The task's DuckDB session.
    pub fn sql(&self) -> Sql {
        Sql::new()
    }

    /// Logs at trace level.
    pub fn trace(&self, message: impl AsRef<str>) {
        log::log(log::Level::Trace, message.as_ref());
    }

    /// Logs at debug level.
    pub fn debug(&self, message: impl AsRef<str>) {
        log::log(log::Level::Debug, message.as_ref());
    }

    /// Logs at info level.
    pub fn info(&self, message: impl AsRef<str>) {
        log::log(log::Level::Info, message.as_ref());
    }

    /// Logs at warn level.
    pub fn warn(&self, message: impl AsRef<str>) {
        log::log(log::Level::Warn, message.as_ref());
    }

    /// Logs at error level.
    pub fn error(&self, message: impl AsRef<str>) {
        log::log(log::Level::Error, message.as_ref());
    }

    /// Reports progress: `done` out of `total` units (`total` 0 when unknown).
    pub fn progress(&self, done: u64, total: u64) {
        log::progress(done, total);
    }
}
