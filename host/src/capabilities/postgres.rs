//! The `connections` interface for PostgreSQL: the host opens the client with
//! the password from the vault and moves data between the task's DuckDB session
//! and the server (binary COPY both ways), batch by batch in bounded memory. The
//! task sees ids, tables and queries, never a credential; every message that
//! comes back has the granted connections' secrets replaced by `***`.

use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use duckdb::arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Date32Array, Date32Builder, Decimal128Array,
    Float32Array, Float32Builder, Float64Array, Float64Builder, Int16Array, Int16Builder,
    Int32Array, Int32Builder, Int64Array, Int64Builder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use duckdb::arrow::compute::cast;
use duckdb::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use futures_util::{SinkExt, StreamExt, pin_mut};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;
use wasmtime::component::Resource;

use crate::bindings::sluice::task::connections::{ConnectionError, Host, HostPostgres};
use crate::bindings::sluice::task::types::ErrorKind;
use crate::connections::{Connection, ConnectionConfig};

use super::TaskHost;
use super::failure::Failure;

/// Batches in flight between DuckDB and Postgres: the memory bound of a transfer.
const BATCHES_IN_FLIGHT: usize = 4;
/// Rows per batch when extracting from Postgres.
const EXTRACT_BATCH_ROWS: usize = 8192;
/// Bytes of COPY data per batch when extracting from Postgres: wide rows make
/// smaller batches, so the host holds about `BATCHES_IN_FLIGHT + 2` of these
/// (plus one row) whatever the row width.
const EXTRACT_BATCH_BYTES: usize = 16 << 20;

/// Replaces every secret of the granted connections with `***`.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// A redactor for the secrets of `connections` (and their URL-encoded forms).
    pub fn for_connections(connections: &[Connection]) -> Self {
        let mut secrets: Vec<String> = Vec::new();
        for c in connections.iter().filter(|c| !c.secret.is_empty()) {
            secrets.push(c.secret.clone());
            let encoded: String =
                url::form_urlencoded::byte_serialize(c.secret.as_bytes()).collect();
            if encoded != c.secret {
                secrets.push(encoded);
            }
        }
        // Longest first, so that a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets }
    }

    /// `text` with every secret replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

/// The connections a try may open, the runtime their clients run on, and
/// how the threads that open staging files for transfers are confined.
#[derive(Debug, Clone)]
pub struct Grants {
    /// Granted connections, secrets included (host memory only).
    pub connections: Vec<Connection>,
    /// The async runtime driving the clients.
    pub runtime: Option<tokio::runtime::Handle>,
    /// Redacts the secrets of `connections`.
    pub redactor: Arc<Redactor>,
    /// Confines the threads that open staging files for transfers.
    pub sandbox: crate::confine::Sandbox,
}

impl Grants {
    /// Grants `connections`, with clients driven by `runtime`.
    pub fn new(
        connections: Vec<Connection>,
        runtime: tokio::runtime::Handle,
        sandbox: crate::confine::Sandbox,
    ) -> Self {
        let redactor = Arc::new(Redactor::for_connections(&connections));
        Self {
            connections,
            runtime: Some(runtime),
            redactor,
            sandbox,
        }
    }

    /// No connections at all.
    pub fn none(sandbox: crate::confine::Sandbox) -> Self {
        Self {
            connections: Vec::new(),
            runtime: None,
            redactor: Arc::default(),
            sandbox,
        }
    }
}

/// The I/O half of a client: polled by whoever waits on the client.
type PgConnection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// An open Postgres client held for the guest. Its connection is driven by the
/// thread that makes the host call, inside the call, rather than by a runtime
/// worker: the bytes read are then parsed and decoded on one core (sharing
/// them across threads cost a quarter of `extract`'s time in refcount traffic).
pub struct PostgresHandle {
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

impl TaskHost {
    /// The guest's error for `failure` on connection `id`: its kind kept,
    /// its message redacted.
    pub(super) fn connection_error(&self, id: &str, failure: Failure) -> ConnectionError {
        ConnectionError {
            kind: failure.kind,
            message: format!(
                "connection `{id}`: {}",
                self.grants.redactor.redact(&failure.message)
            ),
        }
    }

    /// The granted connection `id`, or why the task may not open it: a
    /// permanent error, since the grants of a task are fixed for its run.
    pub(super) fn granted(&self, id: &str) -> Result<Connection, ConnectionError> {
        self.grants.connections.iter().find(|c| c.id == id).cloned().ok_or_else(|| ConnectionError {
            kind: ErrorKind::Permanent,
            message: format!(
                "connection `{id}` is not granted to task `{}`: list it in the task's `connections` in the manifest",
                self.context.task_id
            ),
        })
    }

    /// The runtime driving the clients; without one (a host that grants no
    /// connections) no try can open any: permanent.
    pub(super) fn runtime(&self) -> Result<tokio::runtime::Handle, ConnectionError> {
        self.grants.runtime.clone().ok_or_else(|| ConnectionError {
            kind: ErrorKind::Permanent,
            message: "connections are not available in this context".into(),
        })
    }
}

/// SQLSTATE classes of server errors that no later try can fix: the request
/// is not supported (`0A`), the role does not authenticate (`28`), the
/// database or schema does not exist (`3D`, `3F`), the statement does not
/// parse, names what does not exist or lacks a privilege (`42`), or passes a
/// program limit (`54`). Every other class is retryable: connection
/// exceptions (`08`), resources (`53`), operator intervention (`57`),
/// serialization failures and deadlocks (`40`), data and constraint errors
/// (`22`, `23`), whose data may differ at a later try.
const PERMANENT_SQLSTATE_CLASSES: [&str; 6] = ["0A", "28", "3D", "3F", "42", "54"];

/// The kind of a server error from its SQLSTATE (see [`PERMANENT_SQLSTATE_CLASSES`]).
fn sqlstate_kind(code: &str) -> ErrorKind {
    if PERMANENT_SQLSTATE_CLASSES
        .iter()
        .any(|class| code.starts_with(class))
    {
        ErrorKind::Permanent
    } else {
        ErrorKind::Retryable
    }
}

/// A client error as a failure: a server error by its SQLSTATE; anything
/// without one (I/O, a refused or dropped connection, TLS, a timeout) retryable.
fn pg_failure(e: &tokio_postgres::Error) -> Failure {
    Failure {
        kind: e
            .code()
            .map_or(ErrorKind::Retryable, |code| sqlstate_kind(code.code())),
        message: db_message(e),
    }
}

fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.severity(), db.message()),
            None => format!("{}: {}", db.severity(), db.message()),
        },
        None => {
            // The cause says what went wrong ("invalid peer certificate: UnknownIssuer").
            let mut message = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            message
        }
    }
}

/// `a.b` → `"a"."b"`, each part quoted.
pub(crate) fn quote_path(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

fn quote_ident(part: &str) -> String {
    format!("\"{}\"", part.replace('"', "\"\""))
}

/// The client configuration of a Postgres connection and its TLS connector.
///
/// `sslmode` (libpq's names): absent, `disable` or `allow` connect in plain
/// text; `prefer` uses TLS when the server offers it; `require`, `verify-ca`
/// and `verify-full` insist on it. Whenever TLS is used the server's
/// certificate is verified against the system's roots and `sslrootcert` (a PEM
/// file), host name included: unlike libpq's `require`, Sluice never accepts
/// an unverified certificate.
fn client_config(
    connection: &Connection,
    application: &str,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), String> {
    let ConnectionConfig::Postgres {
        host,
        port,
        database,
        user,
        extras,
    } = &connection.config
    else {
        return Err(format!(
            "is a {} connection, not postgres",
            connection.config.kind()
        ));
    };
    let ssl_mode = match extras.get("sslmode").map(String::as_str) {
        None | Some("disable" | "allow") => SslMode::Disable,
        Some("prefer") => SslMode::Prefer,
        Some("require" | "verify-ca" | "verify-full") => SslMode::Require,
        Some(other) => {
            return Err(format!(
                "unknown sslmode `{other}` (use disable, prefer, require, verify-ca or verify-full)"
            ));
        }
    };
    let roots = if ssl_mode == SslMode::Disable {
        rustls::RootCertStore::empty()
    } else {
        trusted_roots(extras.get("sslrootcert"))?
    };
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(*port)
        .dbname(database)
        .user(user)
        .password(connection.secret.as_bytes())
        .application_name(application)
        .ssl_mode(ssl_mode)
        .connect_timeout(std::time::Duration::from_secs(10));
    Ok((config, MakeRustlsConnect::new(tls_config(roots)?)))
}

/// The system's root certificates, plus those of the PEM file `sslrootcert`.
fn trusted_roots(sslrootcert: Option<&String>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = sslrootcert {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("sslrootcert `{path}`: {e}"))?;
        if certs.is_empty() {
            return Err(format!("sslrootcert `{path}` holds no certificate"));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("sslrootcert `{path}`: {e}"))?;
        }
    }
    Ok(roots)
}

/// A TLS client configuration on aws-lc-rs (the provider `object_store` uses too).
fn tls_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn endpoint(connection: &Connection) -> String {
    match &connection.config {
        ConnectionConfig::Postgres { host, port, .. } => format!("{host}:{port}"),
        other => other.describe(),
    }
}

/// The powers of a Postgres role that reach past the grants on its tables: to
/// the database server's host, to other roles, to data no grant gives. A task
/// may open a connection whose role has any of them only when its manifest
/// opts in (`privileged_connections`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePrivileges {
    /// The role the connection logs in as.
    pub role: String,
    /// Each power, described; empty for a least-privilege role.
    pub powers: Vec<String>,
}

impl RolePrivileges {
    /// Whether the role holds any power that needs an opt-in.
    pub fn is_privileged(&self) -> bool {
        !self.powers.is_empty()
    }

    /// The role and each of its powers, for messages.
    pub fn describe(&self) -> String {
        format!("role `{}` {}", self.role, self.powers.join("; "))
    }
}

/// Roles that each hold a power of the server's operating-system account.
const SERVER_ROLES: [(&str, &str); 3] = [
    (
        "pg_read_server_files",
        "may read files on the database host",
    ),
    (
        "pg_write_server_files",
        "may write files on the database host",
    ),
    (
        "pg_execute_server_program",
        "may run programs on the database host (COPY ... PROGRAM)",
    ),
];

/// Asks the server what the connected role may do (see [`RolePrivileges`]).
/// A role counts as holding what any role it is a member of holds, inherited
/// or not, since `SET ROLE` takes it there. CREATEROLE counts because such a
/// role can grant roles (before PostgreSQL 16: any role but superuser, the
/// three above included); REPLICATION because logical decoding reads every
/// change in the database past table grants.
async fn role_privileges(client: &Client) -> Result<RolePrivileges, Failure> {
    let server_roles: Vec<&str> = SERVER_ROLES.iter().map(|(name, _)| *name).collect();
    let row = client
        .query_one(
            "SELECT current_user::text, \
               ARRAY(SELECT rolname::text FROM pg_roles WHERE rolsuper \
                     AND pg_has_role(current_user, oid, 'MEMBER') ORDER BY 1), \
               ARRAY(SELECT rolname::text FROM pg_roles WHERE rolname::text = ANY($1::text[]) \
                     AND pg_has_role(current_user, oid, 'MEMBER') ORDER BY 1), \
               ARRAY(SELECT rolname::text FROM pg_roles WHERE rolcreaterole \
                     AND pg_has_role(current_user, oid, 'MEMBER') ORDER BY 1), \
               ARRAY(SELECT rolname::text FROM pg_roles WHERE rolreplication \
                     AND pg_has_role(current_user, oid, 'MEMBER') ORDER BY 1)",
            &[&server_roles],
        )
        .await
        .map_err(|e| pg_failure(&e).context("cannot read the role's privileges"))?;
    let column = |i: usize| -> Result<Vec<String>, String> {
        row.try_get(i)
            .map_err(|e| format!("cannot read the role's privileges: {e}"))
    };
    let role: String = row
        .try_get(0)
        .map_err(|e| format!("cannot read the role's privileges: {e}"))?;
    let (supers, server, createrole, replication) =
        (column(1)?, column(2)?, column(3)?, column(4)?);
    let through = |holders: &[String]| -> String {
        let others: Vec<String> = holders
            .iter()
            .filter(|h| **h != role)
            .map(|h| format!("`{h}`"))
            .collect();
        if holders.contains(&role) || others.is_empty() {
            String::new()
        } else {
            format!(" (through role {})", others.join(", "))
        }
    };
    let mut powers = Vec::new();
    if supers.is_empty() {
        for (name, what) in SERVER_ROLES {
            if server.iter().any(|s| s == name) {
                powers.push(format!("is a member of {name}: {what}"));
            }
        }
        if !createrole.is_empty() {
            powers.push(format!(
                "has CREATEROLE{}: may create roles and grant role memberships",
                through(&createrole)
            ));
        }
        if !replication.is_empty() {
            powers.push(format!(
                "has REPLICATION{}: may read every change in the database through logical decoding",
                through(&replication)
            ));
        }
    } else {
        // A superuser holds every other power too.
        powers.push(format!(
            "is a superuser{}: may read and write files and run programs on the database host, and read every role's password verifier",
            through(&supers)
        ));
    }
    Ok(RolePrivileges { role, powers })
}

/// What `sluice connections test` (and `add`) learn from a Postgres server.
#[derive(Debug, Clone)]
pub struct PostgresReport {
    /// `server_version`.
    pub version: String,
    /// `host:port`.
    pub endpoint: String,
    /// What the connection's role may do.
    pub privileges: RolePrivileges,
}

impl std::fmt::Display for PostgresReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PostgreSQL {} at {} as role `{}`",
            self.version, self.endpoint, self.privileges.role
        )
    }
}

/// How a task opts in to connection `id` whose role is privileged.
pub fn privileged_opt_in_hint(id: &str) -> String {
    format!(
        "a task may open it only if its manifest entry says `privileged_connections = [\"{id}\"]`; \
         better, give the connection a role without these powers (see SECURITY.md)"
    )
}

/// Connects to `connection` and asks the server its version and what the
/// role may do: what `sluice connections test` and `add` report. Errors are
/// redacted.
pub async fn test_connection(connection: &Connection) -> Result<PostgresReport, String> {
    let redactor = Redactor::for_connections(std::slice::from_ref(connection));
    let (config, tls) =
        client_config(connection, "sluice connections test").map_err(|m| redactor.redact(&m))?;
    let (client, driver) = config.connect(tls).await.map_err(|e| {
        redactor.redact(&format!(
            "cannot connect to {}: {}",
            endpoint(connection),
            db_message(&e)
        ))
    })?;
    let driver = tokio::spawn(driver);
    let version: String = client
        .query_one("SHOW server_version", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| redactor.redact(&db_message(&e)))?;
    let privileges = role_privileges(&client)
        .await
        .map_err(|f| redactor.redact(&f.message))?;
    drop(client);
    let _ = driver.await;
    Ok(PostgresReport {
        version,
        endpoint: endpoint(connection),
        privileges,
    })
}

impl Host for TaskHost {
    fn open_postgres(
        &mut self,
        id: String,
    ) -> wasmtime::Result<Result<Resource<PostgresHandle>, ConnectionError>> {
        self.check_deadline()?;
        let connection = match self.granted(&id) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let runtime = match self.runtime() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let app = format!("sluice {}/{}", self.context.dag_id, self.context.task_id);
        // The connection's stored configuration is wrong: the same at every try.
        let (config, tls) = match client_config(&connection, &app) {
            Ok(config) => config,
            Err(m) => return Ok(Err(self.connection_error(&id, Failure::permanent(m)))),
        };
        let (client, driver) = match runtime.block_on(config.connect(tls.clone())) {
            Ok(connected) => connected,
            Err(e) => {
                let failure =
                    pg_failure(&e).context(format!("cannot connect to {}", endpoint(&connection)));
                return Ok(Err(self.connection_error(&id, failure)));
            }
        };
        // What the role may do is learnt from the server at every open (a
        // role's powers can change after `connections add`), before the task
        // can send a statement.
        let cancel = client.cancel_token();
        let mut driver = Some(driver);
        let stop = Stop {
            at: self.deadline.at(),
            cancel: &cancel,
            tls: &tls,
        };
        let privileges = runtime.block_on(drive(&mut driver, stop, role_privileges(&client)));
        let refusal = match privileges {
            // The manifest's opt-in and the role's powers do not change between tries.
            Ok(p) if p.is_privileged() && !connection.allow_privileged => {
                Some(Failure::permanent(format!(
                    "refused to task `{}` of DAG `{}`: {}; {}",
                    self.context.task_id,
                    self.context.dag_id,
                    p.describe(),
                    privileged_opt_in_hint(&id)
                )))
            }
            Ok(_) => None,
            Err(failure) => Some(failure),
        };
        if let Some(failure) = refusal {
            // Let the connection close cleanly in the background.
            drop(client);
            if let Some(driver) = driver {
                runtime.spawn(driver);
            }
            self.check_deadline()?;
            return Ok(Err(self.connection_error(&id, failure)));
        }
        self.check_deadline()?;
        Ok(Ok(self.table_mut().push(PostgresHandle {
            id,
            cancel,
            client,
            connection: driver,
            tls,
            runtime,
        })?))
    }

    fn open_bucket(
        &mut self,
        id: String,
    ) -> wasmtime::Result<Result<Resource<super::bucket::BucketHandle>, ConnectionError>> {
        self.open_bucket_impl(id)
    }
}

impl HostPostgres for TaskHost {
    fn execute(
        &mut self,
        pg: Resource<PostgresHandle>,
        statement: String,
    ) -> wasmtime::Result<Result<u64, ConnectionError>> {
        self.check_deadline()?;
        let runtime = match self.runtime() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let stop_at = self.deadline.at();
        let handle = self.table_mut().get_mut(&pg)?;
        let id = handle.id.clone();
        let (connection, stop, client) = handle.split(stop_at);
        let execute =
            async { (client.execute(statement.as_str(), &[]).await).map_err(|e| pg_failure(&e)) };
        let result = runtime.block_on(drive(connection, stop, execute));
        self.check_deadline()?;
        Ok(result.map_err(|m| self.connection_error(&id, m)))
    }

    fn copy_in(
        &mut self,
        pg: Resource<PostgresHandle>,
        table: String,
        query: String,
    ) -> wasmtime::Result<Result<u64, ConnectionError>> {
        self.check_deadline()?;
        let runtime = match self.runtime() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let batches = match self.sql.stream(&query, BATCHES_IN_FLIGHT) {
            Ok(rx) => rx,
            Err(e) => {
                return Ok(Err(ConnectionError {
                    kind: e.kind,
                    message: format!("DuckDB query: {e}"),
                }));
            }
        };
        let stop_at = self.deadline.at();
        let handle = self.table_mut().get_mut(&pg)?;
        let id = handle.id.clone();
        let (connection, stop, client) = handle.split(stop_at);
        let result = runtime.block_on(drive(connection, stop, copy_in(client, &table, &batches)));
        self.check_deadline()?;
        Ok(result.map_err(|m| self.connection_error(&id, m)))
    }

    fn extract(
        &mut self,
        pg: Resource<PostgresHandle>,
        query: String,
        table: String,
    ) -> wasmtime::Result<Result<u64, ConnectionError>> {
        self.check_deadline()?;
        let runtime = match self.runtime() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let stop_at = self.deadline.at();
        let handle = self.table_mut().get_mut(&pg)?;
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
            Err(m) => return Ok(Err(self.connection_error(&id, m))),
        };
        // Only a type `extract` does not support: the same at every try.
        let schema = match arrow_schema(&columns) {
            Ok(s) => Arc::new(s),
            Err(m) => return Ok(Err(self.connection_error(&id, Failure::permanent(m)))),
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
        // Re-borrow after the table borrow ends: the SQL session is a separate field.
        let (batches, done) = match self.sql.append(&create, &table, BATCHES_IN_FLIGHT) {
            Ok(channels) => channels,
            Err(e) => {
                return Ok(Err(ConnectionError {
                    kind: e.kind,
                    message: format!("DuckDB table `{table}`: {e}"),
                }));
            }
        };
        let (connection, stop, client) = self.table_mut().get_mut(&pg)?.split(stop_at);
        let streamed = runtime.block_on(drive(
            connection,
            stop,
            extract(client, &query, &schema, batches),
        ));
        let appended = done
            .recv()
            .unwrap_or_else(|_| Err(super::sql::SqlError::retryable("the SQL session stopped")));
        self.check_deadline()?;
        Ok(match (streamed, appended) {
            (Err(failure), _) => Err(self.connection_error(&id, failure)),
            (Ok(_), Err(e)) => Err(ConnectionError {
                kind: e.kind,
                message: format!("DuckDB table `{table}`: {e}"),
            }),
            (Ok(rows), Ok(_)) => Ok(rows),
        })
    }

    fn drop(&mut self, pg: Resource<PostgresHandle>) -> wasmtime::Result<()> {
        self.table_mut().delete(pg)?;
        Ok(())
    }
}

/// One column of a batch, converted to the Rust type the target column takes.
enum Column {
    Bool(BooleanArray),
    I16(Int16Array),
    I32(Int32Array),
    I64(Int64Array),
    F32(Float32Array),
    F64(Float64Array),
    Text(StringArray),
    Date(Date32Array),
    Timestamp(TimestampMicrosecondArray),
    TimestampTz(TimestampMicrosecondArray),
    /// Values and their decimal scale.
    Numeric(Decimal128Array, u16),
}

impl Column {
    /// Converts `array` for a column of PostgreSQL type `ty`.
    fn convert(name: &str, array: &ArrayRef, ty: &Type) -> Result<Self, Failure> {
        let to = |data_type: DataType| {
            cast(array, &data_type).map_err(|e| {
                format!(
                    "column `{name}`: cannot convert {} to {ty}: {e}",
                    array.data_type()
                )
            })
        };
        macro_rules! typed {
            ($variant:ident, $arrow:expr, $array:ty) => {{
                let converted = to($arrow)?;
                let typed = converted
                    .as_any()
                    .downcast_ref::<$array>()
                    .ok_or_else(|| format!("column `{name}`: conversion to {ty} failed"))?
                    .clone();
                Ok(Column::$variant(typed))
            }};
        }
        match *ty {
            Type::BOOL => typed!(Bool, DataType::Boolean, BooleanArray),
            Type::INT2 => typed!(I16, DataType::Int16, Int16Array),
            Type::INT4 => typed!(I32, DataType::Int32, Int32Array),
            Type::INT8 => typed!(I64, DataType::Int64, Int64Array),
            Type::FLOAT4 => typed!(F32, DataType::Float32, Float32Array),
            Type::FLOAT8 => typed!(F64, DataType::Float64, Float64Array),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                typed!(Text, DataType::Utf8, StringArray)
            }
            Type::DATE => typed!(Date, DataType::Date32, Date32Array),
            Type::TIMESTAMP => typed!(
                Timestamp,
                DataType::Timestamp(TimeUnit::Microsecond, None),
                TimestampMicrosecondArray
            ),
            Type::TIMESTAMPTZ => {
                typed!(
                    TimestampTz,
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    TimestampMicrosecondArray
                )
            }
            Type::NUMERIC => {
                let (precision, scale) = match array.data_type() {
                    DataType::Decimal128(p, s) => (*p, *s),
                    _ => (38, 10),
                };
                let converted = to(DataType::Decimal128(precision, scale))?;
                let decimals = converted
                    .as_any()
                    .downcast_ref::<Decimal128Array>()
                    .ok_or_else(|| format!("column `{name}`: conversion to numeric failed"))?
                    .clone();
                let scale = u16::try_from(scale)
                    .map_err(|_| format!("column `{name}`: negative decimal scale"))?;
                Ok(Column::Numeric(decimals, scale))
            }
            _ => Err(Failure::permanent(format!(
                "column `{name}`: PostgreSQL type `{ty}` is not supported \
                 (supported: boolean, smallint, integer, bigint, real, double precision, numeric, text, varchar, date, timestamp, timestamptz)"
            ))),
        }
    }

    /// Appends the binary COPY field of `row`: its length, then its bytes (-1: NULL).
    fn encode(&self, row: usize, buf: &mut BytesMut) -> Result<(), String> {
        fn put<const N: usize>(buf: &mut BytesMut, bytes: [u8; N]) {
            buf.put_i32(N as i32);
            buf.put_slice(&bytes);
        }
        let null = |a: &dyn Array| a.is_null(row);
        match self {
            Self::Bool(a) if !null(a) => put(buf, [u8::from(a.value(row))]),
            Self::I16(a) if !null(a) => put(buf, a.value(row).to_be_bytes()),
            Self::I32(a) if !null(a) => put(buf, a.value(row).to_be_bytes()),
            Self::I64(a) if !null(a) => put(buf, a.value(row).to_be_bytes()),
            Self::F32(a) if !null(a) => put(buf, a.value(row).to_be_bytes()),
            Self::F64(a) if !null(a) => put(buf, a.value(row).to_be_bytes()),
            Self::Text(a) if !null(a) => {
                let text = a.value(row).as_bytes();
                buf.put_i32(
                    i32::try_from(text.len()).map_err(|_| "a text value over 2 GiB".to_owned())?,
                );
                buf.put_slice(text);
            }
            Self::Date(a) if !null(a) => put(buf, date_to_pg(a.value(row))?.to_be_bytes()),
            Self::Timestamp(a) | Self::TimestampTz(a) if !null(a) => put(
                buf,
                TIMESTAMP_EPOCH.postgres_value(a.value(row))?.to_be_bytes(),
            ),
            Self::Numeric(a, scale) if !null(a) => put_numeric(a.value(row), *scale, buf),
            _ => buf.put_i32(-1),
        }
        Ok(())
    }
}

/// Appends `mantissa × 10^-scale` as a binary `numeric` field (length first):
/// base-10000 digits, integer part right-aligned and fraction left-aligned,
/// without leading or trailing zero digits. Exact for every Decimal128.
pub(crate) fn put_numeric(mantissa: i128, scale: u16, buf: &mut BytesMut) {
    // Decimal128 holds at most 38 digits: 10 base-10000 digits on each side.
    let mut digits = [0u16; 20];
    let (integer, fraction) = match 10u128.checked_pow(u32::from(scale)) {
        Some(unit) => (
            mantissa.unsigned_abs() / unit,
            mantissa.unsigned_abs() % unit,
        ),
        None => (0, mantissa.unsigned_abs()),
    };
    // The fraction, from its last digit: a partial group first, padded with zeros.
    let mut n_fraction = 0;
    let mut rest = fraction;
    let partial = u32::from(scale % 4);
    if partial != 0 {
        let unit = 10u128.pow(partial);
        digits[10 + n_fraction] = ((rest % unit) * 10u128.pow(4 - partial)) as u16;
        rest /= unit;
        n_fraction += 1;
    }
    for _ in 0..(scale / 4).min(10) {
        digits[10 + n_fraction] = (rest % 10_000) as u16;
        rest /= 10_000;
        n_fraction += 1;
    }
    digits[10..10 + n_fraction].reverse();
    // The integer part, least significant group last.
    let mut n_integer = 0;
    let mut rest = integer;
    while rest > 0 && n_integer < 10 {
        digits[9 - n_integer] = (rest % 10_000) as u16;
        rest /= 10_000;
        n_integer += 1;
    }
    let mut used = &digits[10 - n_integer..10 + n_fraction];
    let mut weight = n_integer as i16 - 1;
    while let [0, tail @ ..] = used {
        used = tail;
        weight -= 1;
    }
    while let [head @ .., 0] = used {
        used = head;
    }
    if used.is_empty() {
        weight = 0;
    }
    let sign: u16 = if mantissa < 0 && !used.is_empty() {
        0x4000
    } else {
        0
    };
    buf.put_i32(8 + 2 * used.len() as i32);
    buf.put_u16(used.len() as u16);
    buf.put_i16(weight);
    buf.put_u16(sign);
    buf.put_u16(scale);
    for digit in used {
        buf.put_u16(*digit);
    }
}

/// How a date or timestamp column moves between DuckDB's epoch (1970-01-01)
/// and PostgreSQL's (2000-01-01). Infinities: PostgreSQL stores `infinity` /
/// `-infinity` as the type's MAX / MIN, DuckDB as MAX / -MAX.
struct Epoch {
    /// Days or microseconds from the Unix epoch to PostgreSQL's.
    shift: i64,
    /// The MAX of the stored type (i32 for dates, i64 for timestamps).
    max: i64,
    /// What the value counts, for errors.
    unit: &'static str,
}

const DATE_EPOCH: Epoch = Epoch {
    shift: 10_957,
    max: i32::MAX as i64,
    unit: "days",
};
const TIMESTAMP_EPOCH: Epoch = Epoch {
    shift: 946_684_800_000_000,
    max: i64::MAX,
    unit: "µs",
};

impl Epoch {
    /// A DuckDB value as PostgreSQL's.
    fn postgres_value(&self, value: i64) -> Result<i64, String> {
        let min = -self.max - 1;
        match value {
            v if v == self.max => Ok(self.max),
            v if v == -self.max => Ok(min),
            v => v
                .checked_sub(self.shift)
                .filter(|v| *v >= min)
                .ok_or_else(|| format!("{v} {} out of PostgreSQL's range", self.unit)),
        }
    }

    /// A PostgreSQL value as DuckDB's.
    fn duckdb_value(&self, value: i64) -> Result<i64, String> {
        match value {
            v if v == self.max => Ok(self.max),
            v if v == -self.max - 1 => Ok(-self.max),
            v => v
                .checked_add(self.shift)
                .filter(|v| *v < self.max)
                .ok_or_else(|| format!("{v} {} after 2000-01-01 out of DuckDB's range", self.unit)),
        }
    }
}

/// A date in DuckDB's days and back; both ends are i32 by construction.
fn date_to_pg(days: i32) -> Result<i32, String> {
    DATE_EPOCH.postgres_value(days.into()).map(|d| d as i32)
}

fn date_from_pg(days: i32) -> Result<i32, String> {
    DATE_EPOCH.duckdb_value(days.into()).map(|d| d as i32)
}

/// The binary COPY signature, flags and header-extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Bytes buffered before a chunk goes to the server.
const COPY_CHUNK: usize = 1 << 20;

/// Binary COPY of the batches into `table`, in one transaction. Rows are
/// encoded column-typed straight from the Arrow arrays into 1 MiB chunks.
async fn copy_in(
    client: &mut Client,
    table: &str,
    batches: &std::sync::mpsc::Receiver<Result<RecordBatch, super::sql::SqlError>>,
) -> Result<u64, Failure> {
    let next = || match batches.recv() {
        Ok(Ok(batch)) => Ok(Some(batch)),
        Ok(Err(e)) => Err(Failure::from(e).context("DuckDB query")),
        Err(_) => Ok(None),
    };
    let Some(first) = next()? else { return Ok(0) };
    let names: Vec<String> = first
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let columns = names
        .iter()
        .map(|n| quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ");
    let tx = client.transaction().await.map_err(|e| pg_failure(&e))?;
    let target = tx
        .prepare(&format!(
            "SELECT {columns} FROM {} LIMIT 0",
            quote_path(table)
        ))
        .await
        .map_err(|e| pg_failure(&e).context(format!("table `{table}`")))?;
    let types: Vec<Type> = target.columns().iter().map(|c| c.type_().clone()).collect();
    let field_count =
        i16::try_from(types.len()).map_err(|_| Failure::permanent("too many columns"))?;
    let sink = tx
        .copy_in::<_, bytes::Bytes>(&format!(
            "COPY {} ({columns}) FROM STDIN (FORMAT binary)",
            quote_path(table)
        ))
        .await
        .map_err(|e| pg_failure(&e))?;
    pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(COPY_CHUNK + (64 << 10));
    buf.put_slice(COPY_HEADER);
    let mut batch = Some(first);
    let mut rows = 0u64;
    while let Some(b) = batch {
        let converted = b
            .columns()
            .iter()
            .zip(&names)
            .zip(&types)
            .map(|((array, name), ty)| Column::convert(name, array, ty))
            .collect::<Result<Vec<_>, Failure>>()?;
        for row in 0..b.num_rows() {
            buf.put_i16(field_count);
            for column in &converted {
                column.encode(row, &mut buf)?;
            }
            if buf.len() >= COPY_CHUNK {
                sink.send(buf.split().freeze())
                    .await
                    .map_err(|e| pg_failure(&e))?;
            }
        }
        rows += b.num_rows() as u64;
        batch = next()?;
    }
    buf.put_i16(-1);
    sink.send(buf.split().freeze())
        .await
        .map_err(|e| pg_failure(&e))?;
    let copied = sink.finish().await.map_err(|e| pg_failure(&e))?;
    if copied != rows {
        return Err(Failure::retryable(format!(
            "the server copied {copied} rows of {rows}"
        )));
    }
    tx.commit().await.map_err(|e| pg_failure(&e))?;
    Ok(rows)
}

/// The Arrow schema a Postgres result becomes in DuckDB.
fn arrow_schema(columns: &[(String, Type)]) -> Result<Schema, String> {
    let fields = columns
        .iter()
        .map(|(name, ty)| {
            let data_type = match *ty {
                Type::BOOL => DataType::Boolean,
                Type::INT2 => DataType::Int16,
                Type::INT4 => DataType::Int32,
                Type::INT8 => DataType::Int64,
                Type::FLOAT4 => DataType::Float32,
                Type::FLOAT8 => DataType::Float64,
                // numeric has no fixed scale; 28 integer and 10 fraction digits.
                Type::NUMERIC => DataType::Decimal128(38, 10),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
                Type::DATE => DataType::Date32,
                Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
                Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                _ => {
                    return Err(format!(
                        "column `{name}`: PostgreSQL type `{ty}` is not supported by extract"
                    ));
                }
            };
            Ok(Field::new(name, data_type, true))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Schema::new(fields))
}

fn duckdb_type(data_type: &DataType) -> &'static str {
    match data_type {
        DataType::Boolean => "BOOLEAN",
        DataType::Int16 => "SMALLINT",
        DataType::Int32 => "INTEGER",
        DataType::Int64 => "BIGINT",
        DataType::Float32 => "REAL",
        DataType::Float64 => "DOUBLE",
        DataType::Decimal128(_, _) => "DECIMAL(38,10)",
        DataType::Date32 => "DATE",
        DataType::Timestamp(_, Some(_)) => "TIMESTAMPTZ",
        DataType::Timestamp(_, None) => "TIMESTAMP",
        _ => "VARCHAR",
    }
}

/// Builders for one batch of extracted rows.
pub(crate) enum Builder {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Numeric(Vec<Option<i128>>),
    Text(StringBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder, bool),
}

/// Decodes a binary `numeric` field (base-10000 digits) to the mantissa of a
/// `DECIMAL(38, 10)`: rounded half away from zero past 10 fractional digits; an
/// error for NaN, infinities and values of more than 28 integer digits.
pub(crate) fn numeric_mantissa(field: &[u8]) -> Result<i128, String> {
    let word = |at: usize| {
        field
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let (Some(ndigits), Some(weight), Some(sign), Some(dscale)) =
        (word(0), word(2), word(4), word(6))
    else {
        return Err(format!("a numeric field of {} bytes", field.len()));
    };
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Err("numeric NaN does not fit DECIMAL(38,10)".into()),
        0xD000 | 0xF000 => return Err("numeric infinity does not fit DECIMAL(38,10)".into()),
        other => return Err(format!("a numeric field with sign word {other:#06x}")),
    };
    let digits = field.get(8..).unwrap_or_default();
    if digits.len() != 2 * usize::from(ndigits) {
        return Err(format!(
            "a numeric field of {} bytes for {ndigits} digits",
            field.len()
        ));
    }
    let out_of_range = || "numeric value out of DECIMAL(38,10) range".to_owned();
    // Accumulate at scale 8 (two base-10000 digits after the point); the third
    // digit after the point gives the last two decimals and the rounding.
    let first_exponent = i32::from(weight as i16) + 2;
    let (mut acc, mut last_exponent, mut third) = (0i128, 0i32, 0u16);
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let digit = u16::from_be_bytes([pair[0], pair[1]]);
        if digit >= 10_000 {
            return Err(format!("a numeric digit of {digit}"));
        }
        let exponent = first_exponent - i as i32;
        if exponent < 0 {
            if exponent == -1 {
                third = digit;
            }
            // Past scale 12: only checked (found by the numeric fuzz target).
            continue;
        }
        acc = acc
            .checked_mul(10_000)
            .and_then(|a| a.checked_add(i128::from(digit)))
            .ok_or_else(out_of_range)?;
        last_exponent = exponent;
    }
    // Digits past the display scale are dropped first, as PostgreSQL's own
    // numeric_recv does (its output never has any; found by the numeric fuzz target).
    if dscale < 12 {
        let kept = u32::from(dscale.saturating_sub(8));
        third -= third % 10u16.pow(4 - kept);
    }
    let mantissa = u32::try_from(last_exponent)
        .ok()
        .and_then(|e| 10_000i128.checked_pow(e))
        .and_then(|scale_up| acc.checked_mul(scale_up))
        .map(
            |a| match 10i128.checked_pow(8u32.saturating_sub(u32::from(dscale))) {
                Some(unit) => a - a % unit,
                None => 0,
            },
        )
        .and_then(|a| a.checked_mul(100))
        .and_then(|a| a.checked_add(i128::from(third / 100 + u16::from(third % 100 >= 50))))
        .filter(|m| *m < 10i128.pow(38))
        .ok_or_else(out_of_range)?;
    Ok(if negative { -mantissa } else { mantissa })
}

fn be<const N: usize>(field: &[u8]) -> Result<[u8; N], String> {
    field.try_into().map_err(|_| {
        format!(
            "a binary COPY field of {} bytes where {N} were expected",
            field.len()
        )
    })
}

impl Builder {
    pub(crate) fn for_type(data_type: &DataType) -> Self {
        match data_type {
            DataType::Boolean => Self::Bool(BooleanBuilder::new()),
            DataType::Int16 => Self::I16(Int16Builder::new()),
            DataType::Int32 => Self::I32(Int32Builder::new()),
            DataType::Int64 => Self::I64(Int64Builder::new()),
            DataType::Float32 => Self::F32(Float32Builder::new()),
            DataType::Float64 => Self::F64(Float64Builder::new()),
            DataType::Decimal128(_, _) => Self::Numeric(Vec::new()),
            DataType::Date32 => Self::Date(Date32Builder::new()),
            DataType::Timestamp(_, tz) => {
                Self::Timestamp(TimestampMicrosecondBuilder::new(), tz.is_some())
            }
            _ => Self::Text(StringBuilder::new()),
        }
    }

    /// Appends one binary COPY field (`None`: NULL).
    fn push(&mut self, field: Option<&[u8]>) -> Result<(), String> {
        let Some(f) = field else {
            match self {
                Self::Bool(b) => b.append_null(),
                Self::I16(b) => b.append_null(),
                Self::I32(b) => b.append_null(),
                Self::I64(b) => b.append_null(),
                Self::F32(b) => b.append_null(),
                Self::F64(b) => b.append_null(),
                Self::Numeric(v) => v.push(None),
                Self::Text(b) => b.append_null(),
                Self::Date(b) => b.append_null(),
                Self::Timestamp(b, _) => b.append_null(),
            }
            return Ok(());
        };
        match self {
            Self::Bool(b) => b.append_value(f.first().is_some_and(|v| *v != 0)),
            Self::I16(b) => b.append_value(i16::from_be_bytes(be(f)?)),
            Self::I32(b) => b.append_value(i32::from_be_bytes(be(f)?)),
            Self::I64(b) => b.append_value(i64::from_be_bytes(be(f)?)),
            Self::F32(b) => b.append_value(f32::from_be_bytes(be(f)?)),
            Self::F64(b) => b.append_value(f64::from_be_bytes(be(f)?)),
            Self::Numeric(v) => v.push(Some(numeric_mantissa(f)?)),
            Self::Text(b) => {
                b.append_value(std::str::from_utf8(f).map_err(|e| format!("text: {e}"))?)
            }
            Self::Date(b) => b.append_value(date_from_pg(i32::from_be_bytes(be(f)?))?),
            Self::Timestamp(b, _) => {
                b.append_value(TIMESTAMP_EPOCH.duckdb_value(i64::from_be_bytes(be(f)?))?)
            }
        }
        Ok(())
    }

    pub(crate) fn finish(&mut self, data_type: &DataType) -> Result<ArrayRef, String> {
        Ok(match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::I16(b) => Arc::new(b.finish()),
            Self::I32(b) => Arc::new(b.finish()),
            Self::I64(b) => Arc::new(b.finish()),
            Self::F32(b) => Arc::new(b.finish()),
            Self::F64(b) => Arc::new(b.finish()),
            Self::Numeric(v) => {
                Arc::new(Decimal128Array::from(std::mem::take(v)).with_data_type(data_type.clone()))
            }
            Self::Text(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Timestamp(b, tz) => {
                let a = b.finish();
                if *tz {
                    Arc::new(a.with_timezone("UTC"))
                } else {
                    Arc::new(a)
                }
            }
        })
    }
}

/// Parses binary COPY tuples from `data` (header already consumed), appending
/// each complete tuple to `builders`; returns the bytes consumed and the rows
/// read, and whether the trailer was seen.
pub(crate) fn parse_tuples(
    data: &[u8],
    builders: &mut [Builder],
    max_rows: usize,
    fields: &mut Vec<Option<std::ops::Range<usize>>>,
) -> Result<(usize, usize, bool), String> {
    let (mut at, mut rows) = (0usize, 0usize);
    while rows < max_rows {
        let Some(count) = data.get(at..at + 2) else {
            break;
        };
        let count = i16::from_be_bytes(be(count)?);
        if count == -1 {
            return Ok((at + 2, rows, true));
        }
        if usize::try_from(count).ok() != Some(builders.len()) {
            return Err(format!(
                "a tuple of {count} fields where {} were expected",
                builders.len()
            ));
        }
        // Find the tuple's end before appending anything, so a partial tuple waits for more data.
        let mut end = at + 2;
        fields.clear();
        for _ in 0..builders.len() {
            let Some(len) = data.get(end..end + 4) else {
                return Ok((at, rows, false));
            };
            let len = i32::from_be_bytes(be(len)?);
            end += 4;
            if len < 0 {
                fields.push(None);
            } else {
                let len = len as usize;
                if data.len() < end + len {
                    return Ok((at, rows, false));
                }
                fields.push(Some(end..end + len));
                end += len;
            }
        }
        for (builder, field) in builders.iter_mut().zip(fields.drain(..)) {
            builder.push(field.map(|r| &data[r]))?;
        }
        at = end;
        rows += 1;
    }
    Ok((at, rows, false))
}

/// Binary COPY out of `query`, decoded straight into Arrow batches of
/// [`EXTRACT_BATCH_ROWS`] and sent to DuckDB.
async fn extract(
    client: &Client,
    query: &str,
    schema: &Arc<Schema>,
    batches: std::sync::mpsc::SyncSender<RecordBatch>,
) -> Result<u64, Failure> {
    let stream = client
        .copy_out(&format!("COPY ({query}) TO STDOUT (FORMAT binary)"))
        .await
        .map_err(|e| pg_failure(&e))?;
    pin_mut!(stream);
    let mut builders: Vec<Builder> = schema
        .fields()
        .iter()
        .map(|f| Builder::for_type(f.data_type()))
        .collect();
    let flush = |builders: &mut Vec<Builder>| -> Result<RecordBatch, String> {
        let arrays = builders
            .iter_mut()
            .zip(schema.fields())
            .map(|(b, f)| b.finish(f.data_type()))
            .collect::<Result<Vec<_>, String>>()?;
        RecordBatch::try_new(schema.clone(), arrays).map_err(|e| e.to_string())
    };
    let mut pending = BytesMut::new();
    let mut fields = Vec::with_capacity(builders.len());
    let (mut header_done, mut in_batch, mut total, mut finished) = (false, 0usize, 0u64, false);
    let mut batch_bytes = 0usize;
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk.map_err(|e| pg_failure(&e))?);
        if !header_done {
            if pending.len() < COPY_HEADER.len() {
                continue;
            }
            if pending[..11] != COPY_HEADER[..11] {
                return Err(Failure::retryable(
                    "the server did not send a binary COPY header",
                ));
            }
            let extension = u32::from_be_bytes(be(&pending[15..19])?) as usize;
            let skip = COPY_HEADER.len() + extension;
            if pending.len() < skip {
                continue;
            }
            pending.advance(skip);
            header_done = true;
        }
        loop {
            let (used, rows, trailer) = parse_tuples(
                &pending,
                &mut builders,
                EXTRACT_BATCH_ROWS - in_batch,
                &mut fields,
            )?;
            pending.advance(used);
            in_batch += rows;
            batch_bytes += used;
            if in_batch == EXTRACT_BATCH_ROWS
                || (in_batch > 0 && batch_bytes >= EXTRACT_BATCH_BYTES)
            {
                batches
                    .send(flush(&mut builders)?)
                    .map_err(|_| "the DuckDB side stopped".to_owned())?;
                total += in_batch as u64;
                in_batch = 0;
                batch_bytes = 0;
                continue;
            }
            finished |= trailer;
            break;
        }
    }
    if !finished {
        return Err(Failure::retryable(
            "the binary COPY stream ended without its trailer",
        ));
    }
    if in_batch > 0 {
        batches
            .send(flush(&mut builders)?)
            .map_err(|_| "the DuckDB side stopped".to_owned())?;
        total += in_batch as u64;
    }
    drop(batches);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary `numeric` field from its base-10000 digits.
    fn numeric(digits: &[u16], weight: i16, negative: bool, dscale: u16) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(digits.len() as u16).to_be_bytes());
        out.extend_from_slice(&weight.to_be_bytes());
        out.extend_from_slice(&(if negative { 0x4000u16 } else { 0 }).to_be_bytes());
        out.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out
    }

    /// The field body `put_numeric` writes (without its length).
    fn encoded(mantissa: i128, scale: u16) -> Vec<u8> {
        let mut buf = BytesMut::new();
        put_numeric(mantissa, scale, &mut buf);
        let len = i32::from_be_bytes(buf[..4].try_into().expect("length")) as usize;
        assert_eq!(len, buf.len() - 4);
        buf[4..].to_vec()
    }

    #[test]
    fn numerics_encode_to_postgres_base_10000_digits() {
        // 12345.6789: digits 1|2345|6789, weight 1, dscale 4.
        assert_eq!(
            encoded(123_456_789, 4),
            numeric(&[1, 2345, 6789], 1, false, 4)
        );
        // 0.5: one fraction digit 5000, weight -1.
        assert_eq!(encoded(5, 1), numeric(&[5000], -1, false, 1));
        // 0.00000001: the leading zero group is dropped, weight -2.
        assert_eq!(encoded(1, 8), numeric(&[1], -2, false, 8));
        // -100000000: trailing zero groups dropped.
        assert_eq!(encoded(-100_000_000, 0), numeric(&[1], 2, true, 0));
        // Zero has no digits and no sign.
        assert_eq!(encoded(0, 2), numeric(&[], 0, false, 2));
        assert_eq!(encoded(-0, 38), numeric(&[], 0, false, 38));
        // The widest: 38 nines at scale 0 and at scale 38.
        let nines = 10i128.pow(38) - 1;
        assert_eq!(
            encoded(nines, 0),
            numeric(
                &[99, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999],
                9,
                false,
                0
            )
        );
        assert_eq!(
            encoded(-nines, 38),
            numeric(
                &[9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9900],
                -1,
                true,
                38
            )
        );
    }

    #[test]
    fn numerics_round_trip_through_both_directions() {
        let widest = 10i128.pow(38) - 1;
        for m in [
            0,
            1,
            -1,
            5,
            49,
            50,
            123_456_789,
            -987_654_321_012,
            widest,
            -widest,
        ] {
            assert_eq!(numeric_mantissa(&encoded(m, 10)), Ok(m), "{m}");
        }
        // Other scales come back at scale 10.
        assert_eq!(numeric_mantissa(&encoded(12_345, 2)), Ok(1_234_500_000_000));
        // Past 10 fraction digits: rounded half away from zero.
        assert_eq!(numeric_mantissa(&encoded(15, 11)), Ok(2));
        assert_eq!(numeric_mantissa(&encoded(-15, 11)), Ok(-2));
        assert_eq!(numeric_mantissa(&encoded(14, 11)), Ok(1));
        assert_eq!(numeric_mantissa(&encoded(1, 20)), Ok(0));
    }

    #[test]
    fn numerics_decode_to_the_edge_of_decimal_38_10_and_no_further() {
        // 10^27: one digit 1000 at weight 6.
        let big = numeric(&[1000], 6, false, 0);
        assert_eq!(numeric_mantissa(&big), Ok(10i128.pow(37)));
        let nines = [9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9900];
        let big = numeric(&nines, 6, true, 10);
        assert_eq!(
            numeric_mantissa(&big),
            Ok(-(10i128.pow(38) - 1)),
            "28 nines and 10 nines after the point"
        );
        // 10^28 does not fit DECIMAL(38,10).
        let too_big = numeric(&[1], 7, false, 0);
        assert!(
            numeric_mantissa(&too_big).is_err_and(|e| e.contains("out of DECIMAL(38,10) range"))
        );
        let nan = [0u8, 0, 0, 0, 0xC0, 0, 0, 0];
        assert!(numeric_mantissa(&nan).is_err_and(|e| e.contains("NaN")));
        assert!(numeric_mantissa(&[0, 1, 0]).is_err());
        // Digits past the display scale (never sent by PostgreSQL) are dropped.
        assert_eq!(
            numeric_mantissa(&numeric(&[1, 2345, 6789], 0, false, 2)),
            Ok(12_300_000_000)
        );
        assert_eq!(
            numeric_mantissa(&numeric(&[0, 0, 0, 50], 0, false, 10)),
            Ok(0)
        );
        assert_eq!(
            numeric_mantissa(&numeric(&[0, 0, 0, 50], 0, false, 11)),
            Ok(1)
        );
        assert!(numeric_mantissa(&numeric(&[10_000], 0, false, 0)).is_err());
        // A malformed digit is refused wherever it is, even past scale 12.
        assert!(numeric_mantissa(&numeric(&[1, 0, 0, 0, 0, 65_535], 0, false, 20)).is_err());
    }

    #[test]
    fn redaction_covers_plain_and_url_encoded_secrets() {
        let c = Connection {
            id: "pg".into(),
            config: ConnectionConfig::Postgres {
                host: "h".into(),
                port: 5432,
                database: "d".into(),
                user: "u".into(),
                extras: Default::default(),
            },
            secret: "p@ss word".into(),
            allow_privileged: false,
        };
        let r = Redactor::for_connections(&[c]);
        assert_eq!(
            r.redact("pw=p@ss word uri=postgres://u:p%40ss+word@h"),
            "pw=*** uri=postgres://u:***@h"
        );
    }

    #[test]
    fn server_errors_are_permanent_by_sqlstate_class() {
        // syntax, undefined table, no privilege, password, no database, no
        // schema, not supported, statement too complex.
        for code in [
            "42601", "42P01", "42501", "28P01", "3D000", "3F000", "0A000", "54001",
        ] {
            assert_eq!(sqlstate_kind(code), ErrorKind::Permanent, "{code}");
        }
        // connection failure, admin shutdown, cannot connect now, too many
        // connections, serialization failure, deadlock, unique violation,
        // invalid text, division by zero, internal error.
        for code in [
            "08006", "57P01", "57P03", "53300", "40001", "40P01", "23505", "22P02", "22012",
            "XX000",
        ] {
            assert_eq!(sqlstate_kind(code), ErrorKind::Retryable, "{code}");
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(
            quote_path("public.category_revenue"),
            "\"public\".\"category_revenue\""
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
