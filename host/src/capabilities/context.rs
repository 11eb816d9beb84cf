//! The `context` interface: facts about the task instance.

use crate::bindings::sluice::task::context::Host;

use super::TaskHost;

/// The values served to the guest; fixed for the try.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// DAG id.
    pub dag_id: String,
    /// Run id.
    pub run_id: String,
    /// Task id.
    pub task_id: String,
    /// Try number, from 1.
    pub try_number: u32,
    /// Logical date.
    pub logical_date: chrono::DateTime<chrono::Utc>,
    /// Start of the data interval, RFC 3339.
    pub data_interval_start: String,
    /// End of the data interval, RFC 3339.
    pub data_interval_end: String,
    /// Merged params as a JSON object.
    pub params: String,
    /// Staging directory (same path on host and guest).
    pub staging_dir: String,
}

impl Host for TaskHost {
    fn dag_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.context.dag_id.clone())
    }

    fn run_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.context.run_id.clone())
    }

    fn task_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.context.task_id.clone())
    }

    fn try_number(&mut self) -> wasmtime::Result<u32> {
        Ok(self.context.try_number)
    }

    fn logical_date(&mut self) -> wasmtime::Result<String> {
        Ok(self
            .context
            .logical_date
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }

    fn data_interval_start(&mut self) -> wasmtime::Result<String> {
        Ok(self.context.data_interval_start.clone())
    }

    fn data_interval_end(&mut self) -> wasmtime::Result<String> {
        Ok(self.context.data_interval_end.clone())
    }

    fn ds(&mut self) -> wasmtime::Result<String> {
        Ok(crate::schedule::ds(self.context.logical_date).0)
    }

    fn ds_nodash(&mut self) -> wasmtime::Result<String> {
        Ok(crate::schedule::ds(self.context.logical_date).1)
    }

    fn params(&mut self) -> wasmtime::Result<String> {
        Ok(self.context.params.clone())
    }

    fn staging_dir(&mut self) -> wasmtime::Result<String> {
        Ok(self.context.staging_dir.clone())
    }
}
