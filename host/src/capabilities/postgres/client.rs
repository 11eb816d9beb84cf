//! The PostgreSQL client: its configuration and TLS from a stored
//! connection, what a server error means for a retry, what the connected role
//! may do, and the check `sluice connections test` runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::bindings::sluice::task::types::ErrorKind;
use crate::capabilities::failure::Failure;
use crate::capabilities::redact::{Redacted, Redactor};
use crate::connections::{Connection, ConnectionConfig, ConnectionError};

/// Why a stored Postgres connection gives no client configuration: the same
/// at every try (a permanent failure when a task opens it).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The stored configuration is not a Postgres one, or does not fit (why).
    #[error("{0}")]
    Stored(String),
    /// `sslmode` is none of libpq's names.
    #[error("unknown sslmode `{0}` (use disable, prefer, require, verify-ca or verify-full)")]
    SslMode(String),
    /// `sslrootcert` cannot be read as PEM certificates.
    #[error("sslrootcert `{path}`: {source}")]
    RootCertFile {
        /// The file.
        path: String,
        /// Why it cannot be read.
        source: rustls::pki_types::pem::Error,
    },
    /// `sslrootcert` holds no certificate.
    #[error("sslrootcert `{0}` holds no certificate")]
    NoRootCert(String),
    /// A certificate of `sslrootcert` is not a usable trust anchor.
    #[error("sslrootcert `{path}`: {source}")]
    RootCert {
        /// The file.
        path: String,
        /// Why the certificate is refused.
        source: rustls::Error,
    },
    /// The TLS configuration cannot be built.
    #[error(transparent)]
    Tls(rustls::Error),
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
pub(super) fn pg_failure(e: &tokio_postgres::Error) -> Failure {
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

/// The type's name, stored with each of its connections.
pub(super) const NAME: &str = "postgres";

/// A PostgreSQL server, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresConfig {
    /// Host name or address.
    pub host: String,
    /// Port (5432 by default).
    pub port: u16,
    /// Database.
    pub database: String,
    /// User.
    pub user: String,
    /// Query-string extras (`sslmode`, `sslrootcert`, ...).
    pub extras: BTreeMap<String, String>,
}

impl PostgresConfig {
    /// The configuration of connection `id`, which must be a Postgres one.
    pub fn of(id: &str, config: &ConnectionConfig) -> Result<Self, ConnectionError> {
        config.typed(NAME, id)
    }

    pub(super) fn stored(self, id: &str) -> Result<ConnectionConfig, ConnectionError> {
        ConnectionConfig::of_type(NAME, id, &self)
    }
}

/// The client configuration of a Postgres connection and its TLS connector.
///
/// `sslmode` (libpq's names): absent, `disable` or `allow` connect in plain
/// text; `prefer` uses TLS when the server offers it; `require`, `verify-ca`
/// and `verify-full` insist on it. Whenever TLS is used the server's
/// certificate is verified against the system's roots and `sslrootcert` (a PEM
/// file), host name included: unlike libpq's `require`, Sluice never accepts
/// an unverified certificate.
pub(super) fn client_config(
    connection: &Connection,
    application: &str,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), ConfigError> {
    let PostgresConfig {
        host,
        port,
        database,
        user,
        extras,
    } = PostgresConfig::of(&connection.id, &connection.config).map_err(|e| match e {
        ConnectionError::Invalid { message, .. } => ConfigError::Stored(message),
        other => ConfigError::Stored(other.to_string()),
    })?;
    let ssl_mode = match extras.get("sslmode").map(String::as_str) {
        None | Some("disable" | "allow") => SslMode::Disable,
        Some("prefer") => SslMode::Prefer,
        Some("require" | "verify-ca" | "verify-full") => SslMode::Require,
        Some(other) => {
            return Err(ConfigError::SslMode(other.to_owned()));
        }
    };
    let roots = if ssl_mode == SslMode::Disable {
        rustls::RootCertStore::empty()
    } else {
        trusted_roots(extras.get("sslrootcert"))?
    };
    let mut config = tokio_postgres::Config::new();
    config
        .host(&host)
        .port(port)
        .dbname(&database)
        .user(&user)
        .password(connection.secret.as_bytes())
        .application_name(application)
        .ssl_mode(ssl_mode)
        .connect_timeout(std::time::Duration::from_secs(10));
    Ok((config, MakeRustlsConnect::new(tls_config(roots)?)))
}

/// The system's root certificates, plus those of the PEM file `sslrootcert`.
fn trusted_roots(sslrootcert: Option<&String>) -> Result<rustls::RootCertStore, ConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = sslrootcert {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|source| ConfigError::RootCertFile {
                path: path.clone(),
                source,
            })?;
        if certs.is_empty() {
            return Err(ConfigError::NoRootCert(path.clone()));
        }
        for cert in certs {
            roots.add(cert).map_err(|source| ConfigError::RootCert {
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(roots)
}

/// A TLS client configuration on aws-lc-rs (the provider `object_store` uses too).
fn tls_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, ConfigError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ConfigError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `host:port` of a Postgres connection, for messages.
pub(super) fn endpoint(connection: &Connection) -> String {
    match PostgresConfig::of(&connection.id, &connection.config) {
        Ok(c) => format!("{}:{}", c.host, c.port),
        Err(_) => format!("connection `{}`", connection.id),
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
pub(super) async fn role_privileges(client: &Client) -> Result<RolePrivileges, Failure> {
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
    let unreadable = |e: tokio_postgres::Error| {
        Failure::retryable(format!("cannot read the role's privileges: {e}"))
    };
    let column = |i: usize| -> Result<Vec<String>, Failure> { row.try_get(i).map_err(unreadable) };
    let role: String = row.try_get(0).map_err(unreadable)?;
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
pub async fn test_connection(connection: &Connection) -> Result<PostgresReport, Redacted> {
    let redactor = Redactor::for_connections(std::slice::from_ref(connection));
    let (config, tls) =
        client_config(connection, "sluice connections test").map_err(|e| redactor.redacted(&e))?;
    let (client, driver) = config.connect(tls).await.map_err(|e| {
        redactor.redacted(&format_args!(
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
        .map_err(|e| redactor.redacted(&db_message(&e)))?;
    let privileges = role_privileges(&client)
        .await
        .map_err(|f| redactor.redacted(&f))?;
    drop(client);
    let _ = driver.await;
    Ok(PostgresReport {
        version,
        endpoint: endpoint(connection),
        privileges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
