//! The `sql` interface, served from the task's [`SqlSession`](super::SqlSession).

use wasmtime::component::Resource;

use crate::bindings::sluice::task::sql::{Host, HostCursor, SqlError};

use super::TaskHost;

/// The guest's handle to an open cursor.
#[derive(Debug)]
pub struct CursorHandle {
    id: u32,
    schema: Vec<u8>,
}

fn guest_error(e: super::sql::SqlError) -> SqlError {
    SqlError {
        kind: e.kind,
        message: e.message,
    }
}

impl Host for TaskHost {
    fn execute(&mut self, statement: String) -> wasmtime::Result<Result<u64, SqlError>> {
        self.check_deadline()?;
        let result = self.sql.execute(&statement).map_err(guest_error);
        self.check_deadline()?;
        Ok(result)
    }

    fn query(
        &mut self,
        statement: String,
    ) -> wasmtime::Result<Result<Resource<CursorHandle>, SqlError>> {
        self.check_deadline()?;
        match self.sql.query(&statement) {
            Ok((id, schema)) => match self.table_mut().push(CursorHandle { id, schema }) {
                Ok(handle) => Ok(Ok(handle)),
                Err(e) => {
                    self.sql.close_cursor(id);
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
        self.check_deadline()?;
        let result = self
            .sql
            .query_json(&statement, max_rows)
            .map_err(guest_error);
        self.check_deadline()?;
        Ok(result)
    }
}

impl HostCursor for TaskHost {
    fn schema(&mut self, cursor: Resource<CursorHandle>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table_mut().get(&cursor)?.schema.clone())
    }

    fn next_batch(
        &mut self,
        cursor: Resource<CursorHandle>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, SqlError>> {
        self.check_deadline()?;
        let id = self.table_mut().get(&cursor)?.id;
        Ok(self.sql.next_batch(id).map_err(guest_error))
    }

    fn drop(&mut self, cursor: Resource<CursorHandle>) -> wasmtime::Result<()> {
        let handle = self.table_mut().delete(cursor)?;
        self.sql.close_cursor(handle.id);
        Ok(())
    }
}

impl TaskHost {
    pub(super) fn table_mut(&mut self) -> &mut wasmtime::component::ResourceTable {
        wasmtime_wasi::WasiView::ctx(self).table
    }
}
