//! Managed connections: what a DAG's tasks may reach through the host, stored
//! with their secrets sealed by the [`vault`](crate::vault). Accepts Airflow's
//! URI form (`postgresql://user:pw@host:5432/db?sslmode=require`, also
//! `postgres://`; `s3://` / `aws://` for object stores) and its JSON form.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dag::is_valid_id;
use crate::store::Store;
use crate::vault::{Vault, VaultError};

/// A connection's public part. The password or secret key is kept apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ConnectionConfig {
    /// A PostgreSQL server.
    Postgres {
        /// Host name or address.
        host: String,
        /// Port (5432 by default).
        port: u16,
        /// Database.
        database: String,
        /// User.
        user: String,
        /// Query-string extras (`sslmode`, ...).
        extras: BTreeMap<String, String>,
    },
    /// An S3-compatible object store.
    S3 {
        /// Endpoint URL (none: AWS).
        endpoint: Option<String>,
        /// Region.
        region: String,
        /// Bucket.
        bucket: String,
        /// Access key id (not secret).
        access_key_id: String,
        /// Path-style addressing (most S3-compatible servers need it).
        path_style: bool,
    },
}

impl ConnectionConfig {
    /// `postgres` or `s3`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Postgres { .. } => "postgres",
            Self::S3 { .. } => "s3",
        }
    }

    /// A one-line description without the secret.
    pub fn describe(&self) -> String {
        match self {
            Self::Postgres {
                host,
                port,
                database,
                user,
                ..
            } => format!("postgres://{user}:***@{host}:{port}/{database}"),
            Self::S3 {
                endpoint,
                bucket,
                region,
                ..
            } => {
                format!(
                    "s3://{bucket} (region {region}, endpoint {})",
                    endpoint.as_deref().unwrap_or("AWS")
                )
            }
        }
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

/// Why a connection cannot be added or read.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The vault refused.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The metadatabase failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A URI or JSON definition that cannot be used, with why.
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

fn invalid(id: &str, message: impl Into<String>) -> ConnectionError {
    ConnectionError::Invalid {
        id: id.to_owned(),
        message: message.into(),
    }
}

/// `part` of a URI (`what` names it in errors) with its percent-escapes
/// decoded, and nothing else: a `+` stays a `+`, as libpq and Airflow read a
/// URI's user, password and path (only a query string means space by `+`).
fn percent_decoded(id: &str, what: &str, part: &str) -> Result<String, ConnectionError> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| invalid(id, format!("the URI's {what} is not UTF-8 once decoded")))
}

/// Parses an Airflow-style URI.
pub fn from_uri(id: &str, uri: &str) -> Result<Connection, ConnectionError> {
    let url = url::Url::parse(uri).map_err(|e| invalid(id, format!("not a URI ({e})")))?;
    let extras: BTreeMap<String, String> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let user = percent_decoded(id, "user", url.username())?;
    let secret = match url.password() {
        Some(password) => percent_decoded(id, "password", password)?,
        None => String::new(),
    };
    match url.scheme() {
        "postgresql" | "postgres" => {
            let host = url
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| invalid(id, "the URI has no host"))?;
            let database = url.path().trim_start_matches('/');
            Ok(Connection {
                id: id.to_owned(),
                config: ConnectionConfig::Postgres {
                    host: host.to_owned(),
                    port: url.port().unwrap_or(5432),
                    database: if database.is_empty() {
                        user.clone()
                    } else {
                        percent_decoded(id, "database", database)?
                    },
                    user,
                    extras,
                },
                secret,
                allow_privileged: false,
            })
        }
        "s3" | "aws" => {
            let bucket = extras
                .get("bucket")
                .cloned()
                .or_else(|| url.host_str().filter(|h| !h.is_empty()).map(str::to_owned))
                .ok_or_else(|| {
                    invalid(
                        id,
                        "no bucket: give it as the host (s3://bucket) or ?bucket=",
                    )
                })?;
            Ok(Connection {
                id: id.to_owned(),
                config: ConnectionConfig::S3 {
                    endpoint: extras
                        .get("endpoint_url")
                        .or_else(|| extras.get("endpoint"))
                        .cloned(),
                    region: extras
                        .get("region_name")
                        .or_else(|| extras.get("region"))
                        .cloned()
                        .unwrap_or_else(|| "us-east-1".into()),
                    bucket,
                    access_key_id: user,
                    path_style: extras
                        .get("path_style")
                        .is_some_and(|v| v == "true" || v == "1"),
                },
                secret,
                allow_privileged: false,
            })
        }
        other => Err(invalid(
            id,
            format!("unsupported connection type `{other}` (postgres, s3)"),
        )),
    }
}

/// Parses Airflow's JSON connection form (`conn_type`, `host`, `login`,
/// `password`, `schema`, `port`, `extra`).
pub fn from_airflow_json(id: &str, json: &str) -> Result<Connection, ConnectionError> {
    let v: Value =
        serde_json::from_str(json).map_err(|e| invalid(id, format!("not JSON ({e})")))?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let extra: BTreeMap<String, String> = match v.get("extra") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect(),
        Some(Value::String(s)) => serde_json::from_str::<BTreeMap<String, Value>>(s)
            .map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                    .collect()
            })
            .unwrap_or_default(),
        _ => BTreeMap::new(),
    };
    let secret = text("password").unwrap_or_default();
    match text("conn_type").as_deref() {
        Some("postgres" | "postgresql") => Ok(Connection {
            id: id.to_owned(),
            config: ConnectionConfig::Postgres {
                host: text("host").ok_or_else(|| invalid(id, "no `host`"))?,
                port: v
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(5432),
                database: text("schema").unwrap_or_default(),
                user: text("login").unwrap_or_default(),
                extras: extra,
            },
            secret,
            allow_privileged: false,
        }),
        Some("aws" | "s3") => Ok(Connection {
            id: id.to_owned(),
            config: ConnectionConfig::S3 {
                endpoint: extra.get("endpoint_url").cloned(),
                region: extra
                    .get("region_name")
                    .cloned()
                    .unwrap_or_else(|| "us-east-1".into()),
                bucket: extra
                    .get("bucket")
                    .cloned()
                    .or_else(|| text("schema"))
                    .ok_or_else(|| invalid(id, "no bucket in `extra`"))?,
                access_key_id: text("login").unwrap_or_default(),
                path_style: extra.get("path_style").is_some_and(|v| v == "true"),
            },
            secret,
            allow_privileged: false,
        }),
        Some(other) => Err(invalid(
            id,
            format!("unsupported conn_type `{other}` (postgres, aws)"),
        )),
        None => Err(invalid(id, "no `conn_type`")),
    }
}

/// Connections defined by `AIRFLOW_CONN_<ID>` variables among `vars` (URI or
/// JSON); the id is the suffix in lower case.
pub fn from_airflow_env(
    vars: impl Iterator<Item = (String, String)>,
) -> Vec<Result<Connection, ConnectionError>> {
    let mut found: Vec<(String, String)> = vars
        .filter_map(|(k, v)| {
            k.strip_prefix("AIRFLOW_CONN_")
                .map(|id| (id.to_lowercase(), v))
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .map(|(id, value)| {
            if value.trim_start().starts_with('{') {
                from_airflow_json(&id, &value)
            } else {
                from_uri(&id, &value)
            }
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_uris_in_both_spellings_with_extras_and_escapes() {
        let c = from_uri(
            "pg",
            "postgresql://etl%40corp:p%40ss%2Fw0rd@db.internal:6543/warehouse?sslmode=require",
        )
        .expect("uri");
        assert_eq!(c.secret, "p@ss/w0rd");
        match &c.config {
            ConnectionConfig::Postgres {
                host,
                port,
                database,
                user,
                extras,
            } => {
                assert_eq!(
                    (host.as_str(), *port, database.as_str(), user.as_str()),
                    ("db.internal", 6543, "warehouse", "etl@corp")
                );
                assert_eq!(extras.get("sslmode").map(String::as_str), Some("require"));
            }
            other => panic!("{other:?}"),
        }
        let c = from_uri("pg", "postgres://u:p@h/db").expect("uri");
        assert!(matches!(
            c.config,
            ConnectionConfig::Postgres { port: 5432, .. }
        ));
        assert!(
            !format!("{c:?}").contains("\"p\""),
            "Debug never shows the secret"
        );
    }

    #[test]
    fn a_plus_in_a_uri_password_is_a_plus_and_only_escapes_are_decoded() {
        let c = from_uri("pg", "postgresql://etl+1:a+b%2Bc%20d+@h:5432/my+db").expect("uri");
        assert_eq!(c.secret, "a+b+c d+");
        match &c.config {
            ConnectionConfig::Postgres { user, database, .. } => {
                assert_eq!((user.as_str(), database.as_str()), ("etl+1", "my+db"));
            }
            other => panic!("{other:?}"),
        }
        // The query string is form-encoded, as in Airflow: `+` is a space there.
        let c = from_uri("pg", "postgresql://u:p@h/db?application_name=a+b").expect("uri");
        assert!(matches!(
            &c.config,
            ConnectionConfig::Postgres { extras, .. } if extras.get("application_name").map(String::as_str) == Some("a b")
        ));
        let bad = from_uri("pg", "postgresql://u:%FF@h/db").expect_err("not UTF-8");
        assert!(
            bad.to_string()
                .contains("connection `pg`: the URI's password"),
            "{bad}"
        );
    }

    #[test]
    fn s3_and_airflow_json_and_env() {
        let c = from_uri("lake", "s3://KEY:SECRET@bucket-a?endpoint_url=http%3A%2F%2F127.0.0.1%3A9000&region_name=eu-west-1&path_style=true").expect("uri");
        assert_eq!(c.secret, "SECRET");
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
        let j = r#"{"conn_type": "postgres", "host": "h", "login": "u", "password": "pw", "schema": "db", "port": 5433, "extra": {"sslmode": "disable"}}"#;
        let c = from_airflow_json("x", j).expect("json");
        assert_eq!(c.secret, "pw");
        assert!(matches!(
            c.config,
            ConnectionConfig::Postgres { port: 5433, .. }
        ));
        let vars = vec![
            (
                "AIRFLOW_CONN_MY_PG".to_owned(),
                "postgresql://u:p@h:5432/db".to_owned(),
            ),
            ("AIRFLOW_CONN_JSON_PG".to_owned(), j.to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let ids: Vec<String> = from_airflow_env(vars.into_iter())
            .into_iter()
            .map(|c| c.expect("valid").id)
            .collect();
        assert_eq!(ids, ["json_pg", "my_pg"]);
        assert!(from_uri("bad", "mysql://u:p@h/db").is_err());
    }
}
