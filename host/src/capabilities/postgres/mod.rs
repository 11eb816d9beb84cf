//! The `postgres` capability: the host opens the client with the password
//! from the vault and moves data between the task's DuckDB session and the
//! server (binary COPY both ways), batch by batch in bounded memory. The task
//! sees ids, tables and queries, never a credential; every message that comes
//! back has the granted connections' secrets replaced by `***`.
//!
//! Its guest handles are entries of the try's resource table; its calls are
//! served from a [`ConnectionView`]: `open-postgres` by [`open`] (dispatched
//! by the `connections` module), the `postgres` resource's methods by
//! [`HostPostgres`] here.

mod client;
pub(crate) mod copy;
pub mod kind;

use std::sync::Arc;

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;
use wasmtime::component::Resource;

use crate::bindings::sluice::task::connections::{ConnectionError, HostPostgres, Postgres};
use crate::connections::Connection;

pub use client::{
    ConfigError, PostgresConfig, PostgresReport, RolePrivileges, privileged_opt_in_hint,
    test_connection,
};
use client::{client_config, endpoint, pg_failure, role_privileges};
pub use copy::{CodecError, UnsupportedType};
use copy::{arrow_schema, duckdb_type, quote_ident};
pub use kind::PostgresType;

use super::context::TaskContext;
use super::failure::Failure;
use super::handles;
use super::sql::SqlError;
use super::view::ConnectionView;

/// Batches in flight between DuckDB and Postgres: the memory bound of a transfer.
const BATCHES_IN_FLIGHT: usize = 4;

/// The I/O half of a client: polled by whoever waits on the client.
type PgConnection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// An open Postgres client held for the guest. Its connection is driven by the
/// thread that makes the host call, inside the call, rather than by a runtime
/// worker: the bytes read are then parsed and decoded on one core (sharing
/// them across threads cost a quarter of `extract`'s time in refcount traffic).
struct PostgresHandle {
    id: String,
    client: Client,
    /// `None` once the connection has ended.
    connection: Option<PgConnection>,
    /// Asks the server to stop the running statement (at the try's deadline).
    cancel: tokio_postgres::CancelToken,
    tls: MakeRustlsConnect,
    runtime: tokio::runtime::Handle,
}

impl PostgresHandle {
    /// The connection to drive, how to stop at `at`, and the client, borrowed apart.
    fn split(
        &mut self,
        at: std::time::Instant,
    ) -> (&mut Option<PgConnection>, Stop<'_>, &mut Client) {
        let stop = Stop {
            at,
            cancel: &self.cancel,
            tls: &self.tls,
        };
        (&mut self.connection, stop, &mut self.client)
    }
}

impl Drop for PostgresHandle {
    /// Lets the connection say goodbye to the server in the background.
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.runtime.spawn(connection);
        }
    }
}

/// When a call on a connection must stop, and how to stop the server's side.
struct Stop<'a> {
    at: std::time::Instant,
    cancel: &'a tokio_postgres::CancelToken,
    tls: &'a MakeRustlsConnect,
}

/// Runs `op` while driving `connection` on this thread; fails if the connection
/// ends first. At `stop.at` (the try's deadline) the server is asked to cancel
/// the statement, the connection is closed and the call fails.
async fn drive<T>(
    connection: &mut Option<PgConnection>,
    stop: Stop<'_>,
    op: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    let Some(live) = connection.as_mut() else {
        return Err(Failure::retryable(
            "the connection to the server was closed",
        ));
    };
    let mut op = std::pin::pin!(op);
    let ended = tokio::select! {
        biased;
        result = &mut op => return result,
        ended = live => Some(ended),
        () = tokio::time::sleep_until(stop.at.into()) => None,
    };
    *connection = None;
    let Some(ended) = ended else {
        let _ = stop.cancel.cancel_query(stop.tls.clone()).await;
        return Err(Failure::retryable(
            "the task's timeout passed during the call; the statement was cancelled",
        ));
    };
    // The server's last message (why it closed) may have reached the call.
    if let Some(result) = futures_util::FutureExt::now_or_never(op) {
        return result;
    }
    Err(match ended {
        Ok(()) => Failure::retryable("the server closed the connection"),
        Err(e) => pg_failure(&e),
    })
}

/// Whether `task` may use `connection`, whose role holds `privileges`: a role
/// with powers past its table grants needs the manifest's opt-in. A refusal
/// is permanent: the opt-in and the role do not change between tries.
pub fn admit(
    connection: &Connection,
    privileges: &RolePrivileges,
    task: &TaskContext,
) -> Result<(), Failure> {
    if privileges.is_privileged() && !connection.allow_privileged {
        return Err(Failure::permanent(format!(
            "refused to task `{}` of DAG `{}`: {}; {}",
            task.task_id,
            task.dag_id,
            privileges.describe(),
            privileged_opt_in_hint(&connection.id)
        )));
    }
    Ok(())
}

/// The guest's error for a failure of the task's DuckDB side of a transfer.
fn duckdb_error(what: &str, e: &SqlError) -> ConnectionError {
    ConnectionError {
        kind: e.kind,
        message: format!("{what}: {e}"),
    }
}

/// `open-postgres`: opens connection `id` if it is granted and its role
/// is admitted (see [`admit`]).
pub fn open(
    view: &mut ConnectionView<'_>,
    id: String,
) -> wasmtime::Result<Result<Resource<Postgres>, ConnectionError>> {
    view.deadline.check()?;
    let connection = match view.grants.connection(&id, &view.task.task_id) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e.into())),
    };
    let runtime = match view.grants.runtime() {
        Ok(r) => r,
        Err(e) => return Ok(Err(e.into())),
    };
    let app = format!("sluice {}/{}", view.task.dag_id, view.task.task_id);
    // The connection's stored configuration is wrong: the same at every try.
    let (config, tls) = match client_config(connection, &app) {
        Ok(config) => config,
        Err(e) => {
            let failure = Failure::permanent(e.to_string());
            return Ok(Err(view.grants.guest_error(&id, failure)));
        }
    };
    let (client, driver) = match runtime.block_on(config.connect(tls.clone())) {
        Ok(connected) => connected,
        Err(e) => {
            let failure =
                pg_failure(&e).context(format!("cannot connect to {}", endpoint(connection)));
            return Ok(Err(view.grants.guest_error(&id, failure)));
        }
    };
    // What the role may do is learnt from the server at every open (a
    // role's powers can change after `connections add`), before the task
    // can send a statement.
    let cancel = client.cancel_token();
    let mut driver = Some(driver);
    let stop = Stop {
        at: view.deadline.at(),
        cancel: &cancel,
        tls: &tls,
    };
    let privileges = runtime.block_on(drive(&mut driver, stop, role_privileges(&client)));
    let admitted = privileges.and_then(|p| admit(connection, &p, view.task));
    if let Err(failure) = admitted {
        // Let the connection close cleanly in the background.
        drop(client);
        if let Some(driver) = driver {
            runtime.spawn(driver);
        }
        view.deadline.check()?;
        return Ok(Err(view.grants.guest_error(&id, failure)));
    }
    view.deadline.check()?;
    Ok(Ok(handles::push(
        view.table,
        PostgresHandle {
            id,
            cancel,
            client,
            connection: driver,
            tls,
            runtime,
        },
    )?))
}

impl HostPostgres for ConnectionView<'_> {
    /// `postgres.execute`: runs one statement on the server.
    fn execute(
        &mut self,
        pg: Resource<Postgres>,
        statement: String,
    ) -> wasmtime::Result<Result<u64, ConnectionError>> {
        self.deadline.check()?;
        let runtime = match self.grants.runtime() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e.into())),
        };
        let stop_at = self.deadline.at();
        let handle: &mut PostgresHandle = handles::get_mut(self.table, &pg)?;
        let id = handle.id.clone();
        let (connection, stop, client) = handle.split(stop_at);
        let execute =
            async { (client.execute(statement.as_str(), &[]).await).map_err(|e| pg_failure(&e)) };
        let result = runtime.block_on(drive(connection, stop, execute));
        self.deadline.check()?;
        Ok(result.map_err(|m| self.grants.guest_error(&id, m)))
    }

    /// `postgres.copy-in`: streams a DuckDB query's result into `table`.
    fn copy_in(
        &mut self,
        pg: Resource<Postgres>,
        table: String,
        query: String,
    ) -> wasmtime::Result<Result<u64, ConnectionError>> {
        self.deadline.check()?;
        let runtime = match self.grants.runtime() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e.into())),
        };
        let batches = match self.sql.stream(&query, BATCHES_IN_FLIGHT) {
            Ok(rx) => rx,
            Err(e) => return Ok(Err(duckdb_error("DuckDB query", &e))),
        };
        let stop_at = self.deadline.at();
        let handle: &mut PostgresHandle = handles::get_mut(self.table, &pg)?;
        let id = handle.id.clone();
        let (connection, stop, client) = handle.split(stop_at);
        let result = runtime.block_on(drive(
            connection,
            stop,
            copy::copy_in(client, &table, &batches),
        ));
        self.deadline.check()?;
        Ok(result.map_err(|m| self.grants.guest_error(&id, m)))
    }

    /// `postgres.extract`: streams a server query's result into a new DuckDB table.
    fn extract(
        &mut self,
        pg: Resource<Postgres>,
        query: String,
        table: String,
    ) -> wasmtime::Result<Result<u64, ConnectionError>> {
        self.deadline.check()?;
        let runtime = match self.grants.runtime() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e.into())),
        };
        let stop_at = self.deadline.at();
        let handle: &mut PostgresHandle = handles::get_mut(self.table, &pg)?;
        let id = handle.id.clone();
        let (connection, stop, client) = handle.split(stop_at);
        let prepare = async {
            let statement = client.prepare(&query).await.map_err(|e| pg_failure(&e))?;
            Ok(statement
                .columns()
                .iter()
                .map(|c| (c.name().to_owned(), c.type_().clone()))
                .collect::<Vec<_>>())
        };
        let columns = match runtime.block_on(drive(connection, stop, prepare)) {
            Ok(columns) => columns,
            Err(m) => return Ok(Err(self.grants.guest_error(&id, m))),
        };
        // Only a type `extract` does not support: the same at every try.
        let schema = match arrow_schema(&columns) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                let failure = Failure::permanent(e.to_string());
                return Ok(Err(self.grants.guest_error(&id, failure)));
            }
        };
        let create = format!(
            "CREATE OR REPLACE TABLE {} ({})",
            quote_ident(&table),
            columns
                .iter()
                .zip(schema.fields())
                .map(|((name, _), f)| format!(
                    "{} {}",
                    quote_ident(name),
                    duckdb_type(f.data_type())
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let duckdb_table = format!("DuckDB table `{table}`");
        let (batches, done) = match self.sql.append(&create, &table, BATCHES_IN_FLIGHT) {
            Ok(channels) => channels,
            Err(e) => return Ok(Err(duckdb_error(&duckdb_table, &e))),
        };
        let (connection, stop, client) =
            handles::get_mut::<PostgresHandle, _>(self.table, &pg)?.split(stop_at);
        let streamed = runtime.block_on(drive(
            connection,
            stop,
            copy::extract(client, &query, &schema, batches),
        ));
        let appended = done
            .recv()
            .unwrap_or_else(|_| Err(SqlError::retryable("the SQL session stopped")));
        self.deadline.check()?;
        Ok(match (streamed, appended) {
            (Err(failure), _) => Err(self.grants.guest_error(&id, failure)),
            (Ok(_), Err(e)) => Err(duckdb_error(&duckdb_table, &e)),
            (Ok(rows), Ok(_)) => Ok(rows),
        })
    }

    /// The guest dropped its handle: the client closes in the background.
    fn drop(&mut self, pg: Resource<Postgres>) -> wasmtime::Result<()> {
        handles::delete::<PostgresHandle, _>(self.table, pg)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::sluice::task::types::ErrorKind;
    use crate::capabilities::grants::Grants;
    use crate::capabilities::grants::tests::postgres;

    fn task() -> TaskContext {
        TaskContext {
            dag_id: "sales".into(),
            run_id: "r".into(),
            task_id: "load".into(),
            try_number: 1,
            logical_date: chrono::DateTime::UNIX_EPOCH,
            data_interval_start: String::new(),
            data_interval_end: String::new(),
            params: "{}".into(),
            staging_dir: "/staging".into(),
        }
    }

    fn superuser() -> RolePrivileges {
        RolePrivileges {
            role: "etl".into(),
            powers: vec!["is a superuser: may run programs on the database host".into()],
        }
    }

    #[test]
    fn a_privileged_role_is_refused_without_the_manifest_opt_in() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let grants = Grants::new(
            vec![postgres("warehouse", "pw", false)],
            runtime.handle().clone(),
            crate::confine::Sandbox::Unconfined {
                reason: "a unit test".into(),
            },
        );
        let connection = grants.connection("warehouse", "load").expect("granted");
        let refused = admit(connection, &superuser(), &task()).expect_err("refused");
        assert_eq!(refused.kind, ErrorKind::Permanent);
        assert!(
            refused
                .message
                .starts_with("refused to task `load` of DAG `sales`: role `etl` is a superuser"),
            "{}",
            refused.message
        );
        assert!(
            refused
                .message
                .contains("privileged_connections = [\"warehouse\"]"),
            "{}",
            refused.message
        );
        let least = RolePrivileges {
            role: "etl".into(),
            powers: Vec::new(),
        };
        assert_eq!(admit(connection, &least, &task()), Ok(()));
    }

    #[test]
    fn the_manifest_opt_in_admits_a_privileged_role() {
        let opted_in = postgres("warehouse", "pw", true);
        assert_eq!(admit(&opted_in, &superuser(), &task()), Ok(()));
    }
}
