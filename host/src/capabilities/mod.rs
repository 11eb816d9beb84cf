//! What a task may do, as host calls: its context, SQL in its DuckDB session,
//! logging; plus WASI with no network, no environment and one preopened
//! directory. [`TaskHost`] is the wasmtime store data of one task instance.

pub mod bucket;
pub mod context;
pub mod failure;
pub mod limits;
pub mod log;
pub mod postgres;
pub mod sql;
pub mod sql_host;
pub mod wasi;

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use context::TaskContext;
pub use limits::{Deadline, MemoryLimiter};
pub use log::LogSink;
pub use postgres::{Grants, Redactor};
pub use sql::{SharedHandles, SqlHandles, SqlPool, SqlSession};

/// Everything a running task instance can reach. Owned by its wasmtime store.
pub struct TaskHost {
    /// Run facts served by the `context` interface.
    pub context: TaskContext,
    /// The task's DuckDB session.
    pub sql: SqlSession,
    /// Where log lines and progress go.
    pub log: LogSink,
    /// The wall-clock deadline of this try.
    pub deadline: Arc<Deadline>,
    /// Linear-memory and table limits.
    pub limiter: MemoryLimiter,
    /// Connections the task may open.
    pub grants: Grants,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl TaskHost {
    /// Assembles the host state; `wasi` comes from [`wasi::sandbox_ctx`].
    pub fn new(
        context: TaskContext,
        sql: SqlSession,
        log: LogSink,
        deadline: Arc<Deadline>,
        limiter: MemoryLimiter,
        grants: Grants,
        wasi: WasiCtx,
    ) -> Self {
        Self {
            context,
            sql,
            log,
            deadline,
            limiter,
            grants,
            wasi,
            table: ResourceTable::new(),
        }
    }

    /// Fails the host call (trapping the guest) once the deadline has passed.
    pub fn check_deadline(&self) -> wasmtime::Result<()> {
        if self.deadline.expired() {
            return Err(wasmtime::Error::new(self.deadline.error()));
        }
        Ok(())
    }
}

impl WasiView for TaskHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl crate::bindings::sluice::task::types::Host for TaskHost {}
