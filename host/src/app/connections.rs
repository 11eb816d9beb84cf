//! Managed connections: add (from a URI, or from a type and its fields),
//! list, show, delete, test, rotate the master key, import Airflow's
//! variables. Secrets go in and are sealed; none comes out, except a new
//! master key. Which types exist, and how each is read, described and
//! tested, is the connection types' business
//! ([`CONNECTION_TYPES`](crate::capabilities::connections::CONNECTION_TYPES)).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::{App, AppError};
use crate::capabilities::connections::CONNECTION_TYPES;
use crate::connections::{self, Connection, ConnectionConfig};
use crate::vault::{self, Vault};

pub use crate::connections::CheckResult;

/// Where the secret of a connection defined by its fields comes from.
pub enum SecretInput {
    /// This environment variable (kept out of shell history).
    Env(String),
    /// This value.
    Value(String),
    /// None (a connection without a password).
    None,
}

impl std::fmt::Debug for SecretInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(var) => f.debug_tuple("Env").field(var).finish(),
            Self::Value(_) => f.debug_tuple("Value").field(&"***").finish(),
            Self::None => f.write_str("None"),
        }
    }
}

/// A new connection as a front end gives it.
#[derive(Debug)]
pub enum ConnectionInput {
    /// An Airflow-style URI (`postgresql://...`, `s3://...`), secret included.
    Uri {
        /// Connection id (what a DAG grants to a task).
        id: String,
        /// The URI.
        uri: String,
    },
    /// A type (`postgres`, `s3`) and its named fields, the secret apart.
    Fields {
        /// Connection id (what a DAG grants to a task).
        id: String,
        /// The type.
        kind: String,
        /// Its fields (the type says which it reads).
        fields: BTreeMap<String, String>,
        /// The password or secret key.
        secret: SecretInput,
    },
}

/// Why a new connection's definition cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionInputError {
    /// The environment variable meant to hold the secret is not set.
    #[error("connection `{id}`: set its {secret_name} in ${var}")]
    SecretNotSet {
        /// Connection id.
        id: String,
        /// What the secret is (`password`, `secret key`).
        secret_name: &'static str,
        /// The variable.
        var: String,
        /// Why it could not be read.
        #[source]
        source: std::env::VarError,
    },
}

/// A connection without its secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConnectionSummary {
    /// Connection id.
    pub id: String,
    /// Its type (`postgres`, `s3`).
    pub kind: String,
    /// One line, without the secret.
    pub description: String,
}

impl ConnectionSummary {
    fn of(id: String, config: &ConnectionConfig) -> Result<Self, AppError> {
        Ok(Self {
            description: CONNECTION_TYPES.describe(&id, config)?,
            kind: config.kind().to_owned(),
            id,
        })
    }
}

/// One connection's public part.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConnectionDetails {
    /// Connection id.
    pub id: String,
    /// Its configuration: `{"type": "postgres", "host": ..., ...}`, the
    /// type's fields beside its name (no secret).
    #[schema(value_type = Object)]
    pub config: ConnectionConfig,
    /// Whether a password or secret key is stored (never shown).
    pub has_secret: bool,
    /// Labelled lines as its type shows them, each `[label, value]`, the
    /// secret as `***`.
    #[schema(value_type = Vec<Vec<String>>)]
    pub details: Vec<(&'static str, String)>,
}

/// A connection just added.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    match input {
        ConnectionInput::Uri { id, uri } => Ok(CONNECTION_TYPES.parse_uri(&id, &uri)?),
        ConnectionInput::Fields {
            id,
            kind,
            fields,
            secret,
        } => {
            let secret = match secret {
                SecretInput::Value(secret) => secret,
                SecretInput::None => String::new(),
                SecretInput::Env(var) => {
                    std::env::var(&var).map_err(|source| ConnectionInputError::SecretNotSet {
                        secret_name: CONNECTION_TYPES
                            .get(&kind)
                            .map_or("secret", |t| t.secret_name()),
                        id: id.clone(),
                        var,
                        source,
                    })?
                }
            };
            Ok(CONNECTION_TYPES.with_fields(&id, &kind, &fields, secret)?)
        }
    }
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
        let kind = CONNECTION_TYPES.of(&connection.id, &connection.config)?;
        connections::add(&self.sluice.store, &self.vault()?, &connection, replace)?;
        let check = if kind.checked_when_added() {
            Some(kind.check(&connection).await)
        } else {
            None
        };
        Ok(Added {
            connection: ConnectionSummary::of(connection.id.clone(), &connection.config)?,
            check,
        })
    }

    /// Every connection, without secrets (none is decrypted).
    pub fn list_connections(&self) -> Result<Vec<ConnectionSummary>, AppError> {
        connections::list(&self.sluice.store)?
            .into_iter()
            .map(|(id, config)| ConnectionSummary::of(id, &config))
            .collect()
    }

    /// Connection `id` without its secret.
    pub fn show_connection(&self, id: &str) -> Result<ConnectionDetails, AppError> {
        let connection = connections::get(&self.sluice.store, &self.vault()?, id)?;
        let has_secret = !connection.secret.is_empty();
        Ok(ConnectionDetails {
            details: CONNECTION_TYPES.of(id, &connection.config)?.details(
                id,
                &connection.config,
                has_secret,
            )?,
            has_secret,
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
        Ok(CONNECTION_TYPES.check(&connection).await)
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
        Ok(CONNECTION_TYPES
            .parse_airflow_env(vars)
            .into_iter()
            .map(|found| {
                let connection = found?;
                connections::add(&self.sluice.store, &vault, &connection, replace)?;
                ConnectionSummary::of(connection.id, &connection.config)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_input(secret: SecretInput) -> ConnectionInput {
        ConnectionInput::Fields {
            id: "lake".into(),
            kind: "s3".into(),
            fields: [("bucket", "bucket-a"), ("access_key_id", "KEY")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            secret,
        }
    }

    /// A variable no test or CI sets.
    const UNSET: &str = "SLUICE_TEST_APP_CONNECTIONS_NEVER_SET_7f3a";

    #[test]
    fn the_secret_is_read_from_its_variable_and_an_unset_one_is_named() {
        let err =
            connection_from_input(s3_input(SecretInput::Env(UNSET.into()))).expect_err("unset");
        assert!(
            matches!(
                &err,
                AppError::ConnectionInput(ConnectionInputError::SecretNotSet { var, source: std::env::VarError::NotPresent, .. }) if var == UNSET
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("connection `lake`: set its secret key in ${UNSET}")
        );
        let cause = std::error::Error::source(&err).expect("the cause is kept");
        assert_eq!(
            cause.to_string(),
            std::env::VarError::NotPresent.to_string()
        );
        // A set variable is read (PATH is set wherever tests run).
        let path = std::env::var("PATH").expect("PATH");
        let c = connection_from_input(s3_input(SecretInput::Env("PATH".into()))).expect("set");
        assert_eq!((c.id.as_str(), c.secret.as_str()), ("lake", path.as_str()));
        let c = connection_from_input(s3_input(SecretInput::None)).expect("none");
        assert_eq!(c.secret, "");
    }

    #[test]
    fn a_uri_carries_its_own_secret_and_a_bad_one_is_a_connection_error() {
        let c = connection_from_input(ConnectionInput::Uri {
            id: "pg".into(),
            uri: "postgresql://u:pw@h:5432/db".into(),
        })
        .expect("uri");
        assert_eq!((c.config.kind(), c.secret.as_str()), ("postgres", "pw"));
        let err = connection_from_input(ConnectionInput::Uri {
            id: "pg".into(),
            uri: "mysql://u:p@h/db".into(),
        })
        .expect_err("bad uri");
        assert!(matches!(err, AppError::Connection(_)), "{err:?}");
    }

    #[test]
    fn debug_never_shows_a_given_secret() {
        let input = s3_input(SecretInput::Value("hunter2-secret".into()));
        assert!(!format!("{input:?}").contains("hunter2"));
        let key = NewMasterKey::Environment {
            var: vault::KEY_ENV,
            key: "abcdef0123".into(),
        };
        assert!(!format!("{key:?}").contains("abcdef0123"));
    }
}
