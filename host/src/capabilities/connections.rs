//! The `connections` interface: the one WIT interface that `open-postgres`
//! and `open-bucket` (and their resources) share. This module only dispatches:
//! each call goes to the [`postgres`](super::postgres) or
//! [`bucket`](super::bucket) capability, which own their handles, their
//! clients and their errors; the grant check is [`Grants`]'.

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::bindings::sluice::task::connections::{
    self, Bucket, ConnectionError, Host, HostBucket, HostPostgres, Postgres,
};

use super::bucket::BucketView;
use super::context::TaskContext;
use super::grants::Grants;
use super::limits::Deadline;
use super::postgres::PostgresView;
use super::sql::SqlSession;

/// What a `connections` call reaches: the union of what its connection
/// types need, lent to each as its own view.
pub struct ConnectionsView<'a> {
    /// The try's grants.
    pub grants: &'a Grants,
    /// The try's resource table.
    pub table: &'a mut ResourceTable,
    /// The try's deadline.
    pub deadline: &'a Deadline,
    /// The task's DuckDB session.
    pub sql: &'a mut SqlSession,
    /// The task instance.
    pub task: &'a TaskContext,
}

impl ConnectionsView<'_> {
    fn postgres(&mut self) -> PostgresView<'_> {
        PostgresView {
            grants: self.grants,
            table: self.table,
            deadline: self.deadline,
            sql: self.sql,
            task: self.task,
        }
    }

    fn bucket(&mut self) -> BucketView<'_> {
        BucketView {
            grants: self.grants,
            table: self.table,
            deadline: self.deadline,
            task: self.task,
        }
    }
}

/// The `connections` interface, for [`Linker`] registration.
struct ConnectionsCapability;

impl HasData for ConnectionsCapability {
    type Data<'a> = ConnectionsView<'a>;
}

/// Registers the `connections` interface, served from the
/// [`ConnectionsView`] `get` returns.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> ConnectionsView<'_>,
) -> wasmtime::Result<()> {
    connections::add_to_linker::<T, ConnectionsCapability>(linker, get)
}

impl Host for ConnectionsView<'_> {
    fn open_postgres(
        &mut self,
        id: String,
    ) -> wasmtime::Result<Result<Resource<Postgres>, ConnectionError>> {
        self.postgres().open(id)
    }

    fn open_bucket(
        &mut self,
        id: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, ConnectionError>> {
        self.bucket().open(id)
    }
}

impl HostPostgres for ConnectionsView<'_> {
    fn execute(
        &mut self,
        pg: Resource<Postgres>,
        statement: String,
    ) -> wasmtime::Result<Result<u64, ConnectionError>> {
        self.postgres().execute(pg, statement)
    }

    fn copy_in(
        &mut self,
        pg: Resource<Postgres>,
        table: String,
        query: String,
    ) -> wasmtime::Result<Result<u64, ConnectionError>> {
        self.postgres().copy_in(pg, table, query)
    }

    fn extract(
        &mut self,
        pg: Resource<Postgres>,
        query: String,
        table: String,
    ) -> wasmtime::Result<Result<u64, ConnectionError>> {
        self.postgres().extract(pg, query, table)
    }

    fn drop(&mut self, pg: Resource<Postgres>) -> wasmtime::Result<()> {
        self.postgres().drop(pg)
    }
}

impl HostBucket for ConnectionsView<'_> {
    fn put(
        &mut self,
        bucket: Resource<Bucket>,
        staging_file: String,
        key: String,
    ) -> wasmtime::Result<Result<u64, ConnectionError>> {
        self.bucket().put(bucket, staging_file, key)
    }

    fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        staging_file: String,
    ) -> wasmtime::Result<Result<u64, ConnectionError>> {
        self.bucket().get(bucket, key, staging_file)
    }

    fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        prefix: String,
    ) -> wasmtime::Result<Result<Vec<String>, ConnectionError>> {
        self.bucket().list_keys(bucket, prefix)
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.bucket().drop(bucket)
    }
}
