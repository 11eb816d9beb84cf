//! What a task may do, as host calls: each capability is a unit that owns its
//! slice of the `sluice:task` bindings (its `Host` trait impls, on a view of
//! the state it needs), its per-try state, its linker registration and, for
//! connections, its grant check through [`grants`]:
//!
//! | capability | interface | per-try state | registration |
//! |---|---|---|---|
//! | [`context`] | `context` | [`TaskContext`] | [`context::add_to_linker`] |
//! | [`sql_host`] (over [`sql`]) | `sql` | [`SqlSession`], cursors | [`sql_host::add_to_linker`] |
//! | [`log`] | `log` | [`LogSink`] | [`log::add_to_linker`] |
//! | [`postgres`] | `connections` | its clients | through [`connections`] |
//! | [`bucket`] | `connections` | its buckets | through [`connections`] |
//! | [`python_code`] | `python-code` | [`PythonCode`] | [`python_code::add_to_linker`] |
//!
//! Every connection capability is served from one [`view::ConnectionView`].
//! | [`wasi`] | WASI p2 | `WasiCtx` | [`wasi::add_to_linker`] |
//!
//! [`TaskHost`] is the wasmtime store data of one task instance: it only holds
//! each unit's state and lends each unit its view; [`add_to_linker`] is the one
//! list of registrations. The units depend on [`grants`], [`redact`],
//! [`failure`], [`handles`], [`limits`] and [`view`], never on each other
//! nor on this module; [`connections`] depends on the two it dispatches to.

pub mod bucket;
pub mod connections;
pub mod context;
pub mod failure;
pub mod grants;
pub mod handles;
pub mod limits;
pub mod log;
pub mod postgres;
pub mod python_code;
pub mod redact;
pub mod sql;
pub mod sql_host;
pub mod view;
pub mod wasi;

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::sluice::task::types;

pub use context::TaskContext;
pub use grants::Grants;
pub use limits::{Deadline, MemoryLimiter};
pub use log::LogSink;
pub use python_code::PythonCode;
pub use redact::Redactor;
pub use sql::{SharedHandles, SqlHandles, SqlPool, SqlSession};

use log::LogView;
use sql_host::SqlView;
use view::ConnectionView;

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
    /// A Python task's code, for the runtime component that runs it.
    pub python_code: PythonCode,
    wasi: WasiCtx,
    /// Every guest handle of the try: WASI's, cursors, connections.
    table: ResourceTable,
}

/// Registers every capability's interfaces for a task: WASI, then the
/// `sluice:task` interfaces, each served from its unit's view of [`TaskHost`].
pub fn add_to_linker(linker: &mut Linker<TaskHost>) -> wasmtime::Result<()> {
    wasi::add_to_linker(linker, |host| &mut host.log)?;
    types::add_to_linker::<TaskHost, HasSelf<TaskHost>>(linker, |host| host)?;
    context::add_to_linker(linker, |host| &mut host.context)?;
    sql_host::add_to_linker(linker, TaskHost::sql_view)?;
    log::add_to_linker(linker, TaskHost::log_view)?;
    connections::add_to_linker(linker, TaskHost::connection_view)?;
    python_code::add_to_linker(linker, |host| &mut host.python_code)?;
    Ok(())
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
            python_code: PythonCode::default(),
            wasi,
            table: ResourceTable::new(),
        }
    }

    fn sql_view(&mut self) -> SqlView<'_> {
        SqlView {
            session: &mut self.sql,
            table: &mut self.table,
            deadline: &self.deadline,
        }
    }

    fn log_view(&mut self) -> LogView<'_> {
        LogView {
            sink: &mut self.log,
            deadline: &self.deadline,
        }
    }

    fn connection_view(&mut self) -> ConnectionView<'_> {
        ConnectionView {
            grants: &self.grants,
            table: &mut self.table,
            deadline: &self.deadline,
            sql: &mut self.sql,
            task: &self.context,
        }
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

/// The `types` interface declares types only.
impl types::Host for TaskHost {}
