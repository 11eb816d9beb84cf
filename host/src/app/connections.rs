//! Managed connections: add (from a URI or from an S3 store's fields), list,
//! show, delete, test, rotate the master key, import Airflow's variables.
//! Secrets go in and are sealed; none comes out, except a new master key.

use std::path::PathBuf;

use serde::Serialize;

use super::{App, AppError};
use crate::connections::{self, Connection, ConnectionConfig};
use crate::vault::{self, Vault};

/// Where the secret key of an S3 connection comes from.
pub enum S3Secret {
    /// This environment variable (kept out of shell history).
    Env(String),
    /// This value.
    Value(String),
}

impl std::fmt::Debug for S3Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(var) => f.debug_tuple("Env").field(var).finish(),
            Self::Value(_) => f.debug_tuple("Value").field(&"***").finish(),
        }
    }
}

/// The fields of an S3-compatible store, given one by one.
#[derive(Debug)]
pub struct S3Fields {
    /// Endpoint URL (none: AWS).
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Bucket.
    pub bucket: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// The secret access key.
    pub secret: S3Secret,
    /// Path-style addressing.
    pub path_style: bool,
}

/// A new connection as a front end gives it: an Airflow-style URI, or a type
/// (`s3`) and its fields.
#[derive(Debug)]
pub struct ConnectionInput {
    /// Connection id (what a DAG grants to a task).
    pub id: String,
    /// `postgresql://...` or `s3://...`.
    pub uri: Option<String>,
    /// `s3` to take the store from `s3`.
    pub kind: Option<String>,
    /// The store's fields, with `kind` `s3`.
    pub s3: S3Fields,
}

/// Why a new connection's definition cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionInputError {
    /// Both a URI and a type were given.
    #[error("connection `{id}`: give --uri or --type, not both")]
    UriAndType {
        /// Connection id.
        id: String,
    },
    /// Neither a URI nor a type was given.
    #[error("give --uri or --type s3")]
    Missing {
        /// Connection id.
        id: String,
    },
    /// A type other than `s3`.
    #[error("unsupported --type `{kind}`: use --uri for postgres, --type s3 for S3")]
    UnsupportedType {
        /// Connection id.
        id: String,
        /// The type given.
        kind: String,
    },
    /// An S3 field the store cannot do without.
    #[error("connection `{id}`: an S3 connection needs {field}")]
    MissingField {
        /// Connection id.
        id: String,
        /// `a bucket` or `an access key id`.
        field: &'static str,
    },
    /// The environment variable meant to hold the secret key is not set.
    #[error("set the S3 secret key in ${var}")]
    SecretNotSet {
        /// The variable.
        var: String,
        /// Why it could not be read.
        #[source]
        source: std::env::VarError,
    },
}

/// A connection without its secret.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionSummary {
    /// Connection id.
    pub id: String,
    /// `postgres` or `s3`.
    pub kind: &'static str,
    /// One line, without the secret.
    pub description: String,
}

impl ConnectionSummary {
    fn of(id: String, config: &ConnectionConfig) -> Self {
        Self {
            id,
            kind: config.kind(),
            description: config.describe(),
        }
    }
}

/// One connection's public part.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionDetails {
    /// Connection id.
    pub id: String,
    /// Its configuration.
    pub config: ConnectionConfig,
    /// Whether a password or secret key is stored (never shown).
    pub has_secret: bool,
}

/// What opening a connection found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CheckResult {
    /// The server answered.
    Reachable {
        /// What it is (server version, endpoint, role; or the bucket).
        summary: String,
        /// For a Postgres role holding powers a task must opt in to: which, and how to opt in.
        privilege_warning: Option<String>,
    },
    /// It could not be opened, and why (secrets redacted).
    Unreachable {
        /// Why.
        reason: String,
    },
}

/// A connection just added.
#[derive(Debug, Clone, Serialize)]
pub struct Added {
    /// The connection.
    pub connection: ConnectionSummary,
    /// For Postgres, what a first connection found (the role's privileges).
    pub check: Option<CheckResult>,
}

/// Where the master key is after a rotation. Holds a secret: not serializable.
pub enum NewMasterKey {
    /// The key came from this environment variable: set it to `key`.
    Environment {
        /// The variable.
        var: &'static str,
        /// The new key (hex).
        key: String,
    },
    /// The key file in the home holds it.
    File {
        /// The key file.
        path: PathBuf,
    },
}

impl std::fmt::Debug for NewMasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Environment { var, .. } => {
                f.debug_struct("Environment").field("var", var).finish()
            }
            Self::File { path } => f.debug_struct("File").field("path", path).finish(),
        }
    }
}

/// The connection `input` defines, secret included.
pub fn connection_from_input(input: ConnectionInput) -> Result<Connection, AppError> {
    let ConnectionInput { id, uri, kind, s3 } = input;
    match (uri, kind) {
        (Some(_), Some(_)) => Err(ConnectionInputError::UriAndType { id }.into()),
        (Some(uri), None) => Ok(connections::from_uri(&id, &uri)?),
        (None, Some(kind)) if kind == "s3" => s3_connection(id, s3),
        (None, Some(kind)) => Err(ConnectionInputError::UnsupportedType { id, kind }.into()),
        (None, None) => Err(ConnectionInputError::Missing { id }.into()),
    }
}

fn s3_connection(id: String, s3: S3Fields) -> Result<Connection, AppError> {
    let required = |value: Option<String>, field| {
        value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ConnectionInputError::MissingField {
                id: id.clone(),
                field,
            })
    };
    let bucket = required(s3.bucket, "a bucket")?;
    let access_key_id = required(s3.access_key_id, "an access key id")?;
    let secret = match s3.secret {
        S3Secret::Value(secret) => secret,
        S3Secret::Env(var) => std::env::var(&var)
            .map_err(|source| ConnectionInputError::SecretNotSet { var, source })?,
    };
    Ok(Connection {
        config: ConnectionConfig::S3 {
            endpoint: s3.endpoint,
            region: s3.region,
            bucket,
            access_key_id,
            path_style: s3.path_style,
        },
        id,
        secret,
        allow_privileged: false,
    })
}

/// Opens `connection` the way its type is opened, and says what answered.
async fn check(connection: &Connection) -> CheckResult {
    let checked = match connection.config {
        ConnectionConfig::Postgres { .. } => {
            crate::capabilities::postgres::test_connection(connection)
                .await
                .map(|report| {
                    (
                        report.to_string(),
                        privilege_warning(&connection.id, &report),
                    )
                })
        }
        ConnectionConfig::S3 { .. } => crate::capabilities::bucket::test_connection(connection)
            .await
            .map(|summary| (summary, None)),
    };
    match checked {
        Ok((summary, privilege_warning)) => CheckResult::Reachable {
            summary,
            privilege_warning,
        },
        Err(reason) => CheckResult::Unreachable {
            reason: reason.to_string(),
        },
    }
}

fn privilege_warning(
    id: &str,
    report: &crate::capabilities::postgres::PostgresReport,
) -> Option<String> {
    let privileges = &report.privileges;
    privileges.is_privileged().then(|| {
        format!(
            "{}; {}",
            privileges.describe(),
            crate::capabilities::postgres::privileged_opt_in_hint(id)
        )
    })
}

impl App {
    fn vault(&self) -> Result<Vault, AppError> {
        Ok(Vault::open(&self.sluice.store, self.sluice.home.root())?)
    }

    /// Stores the connection `input` defines (overwriting one with its id only
    /// with `replace`). A Postgres connection is then opened once, so that a
    /// privileged role is reported now rather than at a task's first open.
    pub async fn add_connection(
        &self,
        input: ConnectionInput,
        replace: bool,
    ) -> Result<Added, AppError> {
        let connection = connection_from_input(input)?;
        connections::add(&self.sluice.store, &self.vault()?, &connection, replace)?;
        let check = match connection.config {
            ConnectionConfig::Postgres { .. } => Some(check(&connection).await),
            ConnectionConfig::S3 { .. } => None,
        };
        Ok(Added {
            connection: ConnectionSummary::of(connection.id.clone(), &connection.config),
            check,
        })
    }

    /// Every connection, without secrets (none is decrypted).
    pub fn list_connections(&self) -> Result<Vec<ConnectionSummary>, AppError> {
        Ok(connections::list(&self.sluice.store)?
            .into_iter()
            .map(|(id, config)| ConnectionSummary::of(id, &config))
            .collect())
    }

    /// Connection `id` without its secret.
    pub fn show_connection(&self, id: &str) -> Result<ConnectionDetails, AppError> {
        let connection = connections::get(&self.sluice.store, &self.vault()?, id)?;
        Ok(ConnectionDetails {
            has_secret: !connection.secret.is_empty(),
            id: connection.id.clone(),
            config: connection.config.clone(),
        })
    }

    /// Deletes connection `id`.
    pub fn delete_connection(&self, id: &str) -> Result<(), AppError> {
        if !self.sluice.store.delete_connection(id)? {
            return Err(connections::ConnectionError::NotFound(id.to_owned()).into());
        }
        Ok(())
    }

    /// Opens connection `id` and says what answered, or why nothing did.
    pub async fn test_connection(&self, id: &str) -> Result<CheckResult, AppError> {
        let connection = connections::get(&self.sluice.store, &self.vault()?, id)?;
        Ok(check(&connection).await)
    }

    /// Re-encrypts every secret under a new master key.
    pub fn rotate_master_key(&self) -> Result<NewMasterKey, AppError> {
        let from_env = std::env::var_os(vault::KEY_ENV).is_some();
        let root = self.sluice.home.root();
        let key = self.vault()?.rotate(&self.sluice.store, root)?;
        Ok(if from_env {
            NewMasterKey::Environment {
                var: vault::KEY_ENV,
                key,
            }
        } else {
            NewMasterKey::File {
                path: root.join(vault::KEY_FILE),
            }
        })
    }

    /// Stores the connections `AIRFLOW_CONN_<ID>` variables among `vars`
    /// define (URI or JSON form), in id order; one that cannot be stored is
    /// reported in its place and the others are still stored.
    pub fn import_airflow(
        &self,
        vars: impl Iterator<Item = (String, String)>,
        replace: bool,
    ) -> Result<Vec<Result<ConnectionSummary, AppError>>, AppError> {
        let vault = self.vault()?;
        Ok(connections::from_airflow_env(vars)
            .into_iter()
            .map(|found| {
                let connection = found?;
                connections::add(&self.sluice.store, &vault, &connection, replace)?;
                Ok(ConnectionSummary::of(connection.id, &connection.config))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_input(kind: Option<&str>, secret: S3Secret) -> ConnectionInput {
        ConnectionInput {
            id: "lake".into(),
            uri: None,
            kind: kind.map(str::to_owned),
            s3: S3Fields {
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: "eu-west-1".into(),
                bucket: Some("bucket-a".into()),
                access_key_id: Some("KEY".into()),
                secret,
                path_style: true,
            },
        }
    }

    /// A variable no test or CI sets.
    const UNSET: &str = "SLUICE_TEST_APP_CONNECTIONS_NEVER_SET_7f3a";

    #[test]
    fn an_s3_connection_is_assembled_from_its_fields() {
        let c = connection_from_input(s3_input(Some("s3"), S3Secret::Value("SECRET".into())))
            .expect("valid");
        assert_eq!(c.id, "lake");
        assert_eq!(c.secret, "SECRET");
        assert!(!c.allow_privileged);
        assert_eq!(
            c.config,
            ConnectionConfig::S3 {
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: "eu-west-1".into(),
                bucket: "bucket-a".into(),
                access_key_id: "KEY".into(),
                path_style: true,
            }
        );
    }

    #[test]
    fn the_s3_secret_is_read_from_its_variable_and_an_unset_one_is_named() {
        let err = connection_from_input(s3_input(Some("s3"), S3Secret::Env(UNSET.into())))
            .expect_err("unset");
        assert!(
            matches!(
                &err,
                AppError::ConnectionInput(ConnectionInputError::SecretNotSet { var, source: std::env::VarError::NotPresent }) if var == UNSET
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("set the S3 secret key in ${UNSET}")
        );
        let cause = std::error::Error::source(&err).expect("the cause is kept");
        assert_eq!(
            cause.to_string(),
            std::env::VarError::NotPresent.to_string()
        );
        // A set variable is read (PATH is set wherever tests run).
        let path = std::env::var("PATH").expect("PATH");
        let c =
            connection_from_input(s3_input(Some("s3"), S3Secret::Env("PATH".into()))).expect("set");
        assert_eq!(c.secret, path);
    }

    #[test]
    fn a_missing_or_empty_bucket_or_key_id_is_refused_not_defaulted() {
        let mut input = s3_input(Some("s3"), S3Secret::Value("s".into()));
        input.s3.bucket = None;
        let err = connection_from_input(input).expect_err("no bucket");
        assert_eq!(
            err.to_string(),
            "connection `lake`: an S3 connection needs a bucket"
        );
        let mut input = s3_input(Some("s3"), S3Secret::Value("s".into()));
        input.s3.access_key_id = Some(String::new());
        let err = connection_from_input(input).expect_err("empty key id");
        assert_eq!(
            err.to_string(),
            "connection `lake`: an S3 connection needs an access key id"
        );
    }

    #[test]
    fn the_secret_variable_is_read_only_for_an_s3_definition() {
        // A URI carries its own secret: the (unset) variable is not consulted.
        let mut input = s3_input(None, S3Secret::Env(UNSET.into()));
        input.uri = Some("postgresql://u:pw@h:5432/db".into());
        let c = connection_from_input(input).expect("uri");
        assert_eq!((c.config.kind(), c.secret.as_str()), ("postgres", "pw"));
    }

    #[test]
    fn a_definition_needs_exactly_one_of_uri_and_type_and_a_known_type() {
        let err = connection_from_input(s3_input(None, S3Secret::Value("s".into())))
            .expect_err("neither");
        assert!(matches!(
            err,
            AppError::ConnectionInput(ConnectionInputError::Missing { .. })
        ));
        assert_eq!(err.to_string(), "give --uri or --type s3");
        let err = connection_from_input(s3_input(Some("gcs"), S3Secret::Value("s".into())))
            .expect_err("unknown type");
        assert_eq!(
            err.to_string(),
            "unsupported --type `gcs`: use --uri for postgres, --type s3 for S3"
        );
        let mut both = s3_input(Some("s3"), S3Secret::Value("s".into()));
        both.uri = Some("s3://K:S@b".into());
        let err = connection_from_input(both).expect_err("both");
        assert!(matches!(
            err,
            AppError::ConnectionInput(ConnectionInputError::UriAndType { .. })
        ));
        let mut bad = s3_input(None, S3Secret::Value("s".into()));
        bad.uri = Some("mysql://u:p@h/db".into());
        let err = connection_from_input(bad).expect_err("bad uri");
        assert!(matches!(err, AppError::Connection(_)), "{err:?}");
    }

    #[test]
    fn debug_never_shows_a_given_secret() {
        let input = s3_input(Some("s3"), S3Secret::Value("hunter2-secret".into()));
        assert!(!format!("{input:?}").contains("hunter2"));
        let key = NewMasterKey::Environment {
            var: vault::KEY_ENV,
            key: "abcdef0123".into(),
        };
        assert!(!format!("{key:?}").contains("abcdef0123"));
    }
}
