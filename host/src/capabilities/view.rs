//! What the host calls of every connection capability reach: the grants,
//! the try's resource table, its deadline, the task's SQL session (the other
//! end of transfers) and the task instance. A connection capability
//! implements its WIT interface's `Host` traits on [`ConnectionView`] and
//! registers them with [`ConnectionCapability`].

use wasmtime::component::{HasData, ResourceTable};

use super::context::TaskContext;
use super::grants::Grants;
use super::limits::Deadline;
use super::sql::SqlSession;

/// The state a connection call may use, lent by the store data for the call.
pub struct ConnectionView<'a> {
    /// The try's grants.
    pub grants: &'a Grants,
    /// The try's resource table (where each capability keeps its handles).
    pub table: &'a mut ResourceTable,
    /// The try's deadline.
    pub deadline: &'a Deadline,
    /// The task's DuckDB session.
    pub sql: &'a mut SqlSession,
    /// The task instance.
    pub task: &'a TaskContext,
}

/// The connection capabilities, for `Linker` registration: their interfaces
/// are served from a [`ConnectionView`].
pub struct ConnectionCapability;

impl HasData for ConnectionCapability {
    type Data<'a> = ConnectionView<'a>;
}
