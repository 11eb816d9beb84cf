//! The connection types this build knows, and the `connections` interface:
//! the one WIT interface that `open-postgres` and `open-bucket` (and their
//! resources) share. This module lists the types ([`CONNECTION_TYPES`]) and
//! dispatches the two opens to the [`postgres`](super::postgres) and
//! [`bucket`](super::bucket) capabilities, which own their configuration,
//! their handles, their clients, their errors and their resources' `Host`
//! traits; the grant check is [`Grants`](super::grants::Grants)'.

use wasmtime::component::{Linker, Resource};

use crate::bindings::sluice::task::connections::{self, Bucket, ConnectionError, Host, Postgres};

use crate::connections::ConnectionTypes;

use super::view::{ConnectionCapability, ConnectionView};
use super::{bucket, postgres};

/// Every connection type, one line each: what `connections add`, `show`,
/// `test` and Airflow imports consult.
pub const CONNECTION_TYPES: ConnectionTypes =
    ConnectionTypes(&[&postgres::PostgresType, &bucket::S3Type]);

/// Registers the `connections` interface, served from the
/// [`ConnectionView`] `get` returns.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> ConnectionView<'_>,
) -> wasmtime::Result<()> {
    connections::add_to_linker::<T, ConnectionCapability>(linker, get)
}

impl Host for ConnectionView<'_> {
    fn open_postgres(
        &mut self,
        id: String,
    ) -> wasmtime::Result<Result<Resource<Postgres>, ConnectionError>> {
        postgres::open(self, id)
    }

    fn open_bucket(
        &mut self,
        id: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, ConnectionError>> {
        bucket::open(self, id)
    }
}
