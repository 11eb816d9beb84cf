//! The `context` capability: facts about the task instance, fixed for the try.
//! Its state is the [`TaskContext`] itself.

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::sluice::task::context::{self, Host};

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

/// Registers the `context` interface, served from the [`TaskContext`] `get` returns.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut TaskContext,
) -> wasmtime::Result<()> {
    context::add_to_linker::<T, HasSelf<TaskContext>>(linker, get)
}

impl Host for TaskContext {
    fn dag_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.dag_id.clone())
    }

    fn run_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.run_id.clone())
    }

    fn task_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.task_id.clone())
    }

    fn try_number(&mut self) -> wasmtime::Result<u32> {
        Ok(self.try_number)
    }

    fn logical_date(&mut self) -> wasmtime::Result<String> {
        Ok(self
            .logical_date
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }

    fn data_interval_start(&mut self) -> wasmtime::Result<String> {
        Ok(self.data_interval_start.clone())
    }

    fn data_interval_end(&mut self) -> wasmtime::Result<String> {
        Ok(self.data_interval_end.clone())
    }

    fn ds(&mut self) -> wasmtime::Result<String> {
        Ok(crate::schedule::ds(self.logical_date).0)
    }

    fn ds_nodash(&mut self) -> wasmtime::Result<String> {
        Ok(crate::schedule::ds(self.logical_date).1)
    }

    fn params(&mut self) -> wasmtime::Result<String> {
        Ok(self.params.clone())
    }

    fn staging_dir(&mut self) -> wasmtime::Result<String> {
        Ok(self.staging_dir.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_serves_its_own_facts_with_no_host_around_it() {
        let mut context = TaskContext {
            dag_id: "sales".into(),
            run_id: "r1".into(),
            task_id: "load".into(),
            try_number: 2,
            logical_date: chrono::DateTime::parse_from_rfc3339("2024-03-05T00:00:00Z")
                .expect("date")
                .to_utc(),
            data_interval_start: "2024-03-05T00:00:00Z".into(),
            data_interval_end: "2024-03-06T00:00:00Z".into(),
            params: "{}".into(),
            staging_dir: "/staging/r1".into(),
        };
        assert_eq!(context.task_id().ok().as_deref(), Some("load"));
        assert_eq!(context.try_number().ok(), Some(2));
        assert_eq!(
            context.logical_date().ok().as_deref(),
            Some("2024-03-05T00:00:00Z")
        );
        assert_eq!(context.ds().ok().as_deref(), Some("2024-03-05"));
        assert_eq!(context.ds_nodash().ok().as_deref(), Some("20240305"));
    }
}
