//! The `sql` capability's bindings: the `sql` interface, served from the
//! task's [`SqlSession`]; its cursors are entries of the try's resource table.

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::bindings::sluice::task::sql::{self, Cursor, Host, HostCursor, SqlError};

use super::handles;
use super::limits::Deadline;
use super::sql::SqlSession;

/// The host's entry behind the guest's handle to an open cursor.
#[derive(Debug)]
struct CursorHandle {
    id: u32,
    schema: Vec<u8>,
}

/// What a `sql` call reaches: the session, the resource table holding the
/// open cursors, and the try's deadline.
pub struct SqlView<'a> {
    /// The task's DuckDB session.
    pub session: &'a mut SqlSession,
    /// The try's resource table.
    pub table: &'a mut ResourceTable,
    /// The try's deadline.
    pub deadline: &'a Deadline,
}

/// The `sql` capability, for [`Linker`] registration.
struct SqlCapability;

impl HasData for SqlCapability {
    type Data<'a> = SqlView<'a>;
}

/// Registers the `sql` interface, served from the [`SqlView`] `get` returns.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> SqlView<'_>,
) -> wasmtime::Result<()> {
    sql::add_to_linker::<T, SqlCapability>(linker, get)
}

fn guest_error(e: super::sql::SqlError) -> SqlError {
    SqlError {
        kind: e.kind,
        message: e.message,
    }
}

impl Host for SqlView<'_> {
    fn execute(&mut self, statement: String) -> wasmtime::Result<Result<u64, SqlError>> {
        self.deadline.check()?;
        let result = self.session.execute(&statement).map_err(guest_error);
        self.deadline.check()?;
        Ok(result)
    }

    fn query(&mut self, statement: String) -> wasmtime::Result<Result<Resource<Cursor>, SqlError>> {
        self.deadline.check()?;
        match self.session.query(&statement) {
            Ok((id, schema)) => match handles::push(self.table, CursorHandle { id, schema }) {
                Ok(handle) => Ok(Ok(handle)),
                Err(e) => {
                    self.session.close_cursor(id);
                    Err(e.into())
                }
            },
            Err(e) => Ok(Err(guest_error(e))),
        }
    }

    fn query_json(
        &mut self,
        statement: String,
        max_rows: u32,
    ) -> wasmtime::Result<Result<String, SqlError>> {
        self.deadline.check()?;
        let result = self
            .session
            .query_json(&statement, max_rows)
            .map_err(guest_error);
        self.deadline.check()?;
        Ok(result)
    }
}

impl HostCursor for SqlView<'_> {
    fn schema(&mut self, cursor: Resource<Cursor>) -> wasmtime::Result<Vec<u8>> {
        Ok(handles::get::<CursorHandle, _>(self.table, &cursor)?
            .schema
            .clone())
    }

    fn next_batch(
        &mut self,
        cursor: Resource<Cursor>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, SqlError>> {
        self.deadline.check()?;
        let id = handles::get::<CursorHandle, _>(self.table, &cursor)?.id;
        Ok(self.session.next_batch(id).map_err(guest_error))
    }

    fn next_rows(
        &mut self,
        cursor: Resource<Cursor>,
        max_rows: u32,
    ) -> wasmtime::Result<Result<Option<String>, SqlError>> {
        self.deadline.check()?;
        let id = handles::get::<CursorHandle, _>(self.table, &cursor)?.id;
        Ok(self.session.next_rows(id, max_rows).map_err(guest_error))
    }

    fn drop(&mut self, cursor: Resource<Cursor>) -> wasmtime::Result<()> {
        let handle: CursorHandle = handles::delete(self.table, cursor)?;
        self.session.close_cursor(handle.id);
        Ok(())
    }
}
