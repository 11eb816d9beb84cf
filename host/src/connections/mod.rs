//! Managed connections: what a DAG's tasks may reach through the host, stored
//! with their secrets sealed by the [`vault`](crate::vault). This module knows
//! no type of connection: a configuration is a type name and its fields, read
//! by the type's [`ConnectionType`] (the seam in [`types`]), which also reads
//! Airflow's URI form (`postgresql://user:pw@host:5432/db?sslmode=require`,
//! `s3://KEY:SECRET@bucket`) and its JSON form.

mod types;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use types::{AirflowJson, CheckFuture, ConnectionType, ConnectionTypes, FieldReader, UriParts};

use crate::dag::is_valid_id;
use crate::store::Store;
use crate::vault::{Vault, VaultError};

/// A connection's public part: its type and that type's fields. The password
/// or secret key is kept apart. Stored as one JSON object, `{"type": ..., ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionConfig {
    #[serde(rename = "type")]
    kind: String,
    #[serde(flatten)]
    fields: Map<String, Value>,
}

impl ConnectionConfig {
    /// The configuration of type `kind` whose fields are `typed`'s, as serde
    /// writes them (a type's own configuration struct).
    pub fn new<T: Serialize>(kind: &str, typed: &T) -> Result<Self, serde_json::Error> {
        let fields = match serde_json::to_value(typed)? {
            Value::Object(fields) => fields,
            other => {
                return Err(serde::ser::Error::custom(format!(
                    "a connection's fields must serialize as an object, not {other}"
                )));
            }
        };
        Ok(Self {
            kind: kind.to_owned(),
            fields,
        })
    }

    /// The type's name (`postgres`, `s3`).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The fields, as stored.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// The fields read as type `T` of the type named `kind`, for connection
    /// `id`: a configuration of another type, or a stored one that does not
    /// fit, is an error naming the connection.
    pub fn typed<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<T, ConnectionError> {
        if self.kind != kind {
            return Err(invalid(
                id,
                format!("is a {} connection, not {kind}", self.kind),
            ));
        }
        serde_json::from_value(Value::Object(self.fields.clone())).map_err(|e| {
            invalid(
                id,
                format!("its stored {} configuration does not fit: {e}", self.kind),
            )
        })
    }

    /// [`Self::new`] for connection `id`, its error naming the connection.
    pub fn of_type<T: Serialize>(kind: &str, id: &str, typed: &T) -> Result<Self, ConnectionError> {
        Self::new(kind, typed).map_err(|e| invalid(id, e.to_string()))
    }
}

/// A connection with its secret in the clear (host memory only).
#[derive(Clone, PartialEq, Eq)]
pub struct Connection {
    /// Connection id.
    pub id: String,
    /// Public part.
    pub config: ConnectionConfig,
    /// Password (Postgres) or secret access key (S3).
    pub secret: String,
    /// Whether the task it is granted to may open it although its role is
    /// privileged (the task lists it in `privileged_connections`). Never
    /// stored: false except in a grant.
    pub allow_privileged: bool,
}

impl Connection {
    /// Connection `id`, not opted in to privileged roles.
    pub fn new(id: &str, config: ConnectionConfig, secret: String) -> Self {
        Self {
            id: id.to_owned(),
            config,
            secret,
            allow_privileged: false,
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("config", &self.config)
            .field("secret", &"***")
            .field("allow_privileged", &self.allow_privileged)
            .finish()
    }
}

/// What opening a connection found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

/// Why a connection cannot be added or read.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The vault refused.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The metadatabase failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A definition (URI, JSON, fields) or a stored configuration that cannot
    /// be used, with why.
    #[error("connection `{id}`: {message}")]
    Invalid {
        /// Connection id.
        id: String,
        /// What is wrong (never the secret).
        message: String,
    },
    /// No such connection.
    #[error("no connection `{0}`")]
    NotFound(String),
    /// Adding would overwrite.
    #[error("connection `{0}` exists; pass --replace to overwrite it")]
    Exists(String),
}

/// The error that connection `id`'s definition or configuration is unusable.
pub fn invalid(id: &str, message: impl Into<String>) -> ConnectionError {
    ConnectionError::Invalid {
        id: id.to_owned(),
        message: message.into(),
    }
}

/// Stores `connection`, sealing its secret bound to its id.
pub fn add(
    store: &Store,
    vault: &Vault,
    connection: &Connection,
    replace: bool,
) -> Result<(), ConnectionError> {
    if !is_valid_id(&connection.id) {
        return Err(invalid(
            &connection.id,
            "invalid id: use letters, digits, `_` and `-`",
        ));
    }
    let config = serde_json::to_string(&connection.config)
        .map_err(|e| invalid(&connection.id, e.to_string()))?;
    let sealed = vault.seal(connection.secret.as_bytes(), connection.id.as_bytes())?;
    if !store.put_connection(
        &connection.id,
        connection.config.kind(),
        &config,
        &sealed,
        replace,
    )? {
        return Err(ConnectionError::Exists(connection.id.clone()));
    }
    Ok(())
}

/// The public part of every connection (no secret is decrypted).
pub fn list(store: &Store) -> Result<Vec<(String, ConnectionConfig)>, ConnectionError> {
    store
        .connections()?
        .into_iter()
        .map(|c| {
            let config = serde_json::from_str(&c.config)
                .map_err(|e| invalid(&c.id, format!("stored config: {e}")))?;
            Ok((c.id, config))
        })
        .collect()
}

/// Connection `id` with its secret decrypted (host side only).
pub fn get(store: &Store, vault: &Vault, id: &str) -> Result<Connection, ConnectionError> {
    let stored = store
        .connection(id)?
        .ok_or_else(|| ConnectionError::NotFound(id.to_owned()))?;
    let config = serde_json::from_str(&stored.config)
        .map_err(|e| invalid(id, format!("stored config: {e}")))?;
    Ok(Connection {
        id: id.to_owned(),
        config,
        secret: vault.unseal(&stored.secret, id)?,
        allow_privileged: false,
    })
}
