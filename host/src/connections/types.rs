//! The connection-type seam: what a type of connection (Postgres, S3, ...)
//! tells the host about itself, and the registry that routes a definition (an
//! Airflow-style URI, Airflow's JSON form, or a type and its fields) to the
//! type that reads it. The types themselves live with their capabilities
//! (`capabilities::postgres::kind`, `capabilities::bucket::kind`) and are
//! listed once, in `capabilities::connections::CONNECTION_TYPES`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use super::{CheckResult, Connection, ConnectionConfig, ConnectionError, invalid};

/// What [`ConnectionType::check`] returns.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = CheckResult> + Send + 'a>>;

/// One type of connection. Every method that reads a stored configuration
/// gets the connection's id, so that its errors can name it.
pub trait ConnectionType: Sync {
    /// The type's name, stored with each connection (`postgres`).
    fn name(&self) -> &'static str;
    /// What its secret is called in messages (`password`, `secret key`).
    fn secret_name(&self) -> &'static str;
    /// URI schemes it reads (`postgresql`, `postgres`).
    fn uri_schemes(&self) -> &'static [&'static str];
    /// Airflow `conn_type`s it reads (`postgres`).
    fn airflow_types(&self) -> &'static [&'static str];
    /// The configuration an Airflow-style URI defines.
    fn read_uri(&self, uri: &UriParts) -> Result<ConnectionConfig, ConnectionError>;
    /// The configuration Airflow's JSON form defines.
    fn read_airflow(&self, json: &AirflowJson) -> Result<ConnectionConfig, ConnectionError>;
    /// The configuration named fields define (a form, the CLI's flags).
    fn read_fields(
        &self,
        id: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<ConnectionConfig, ConnectionError>;
    /// One line without the secret (`postgres://u:***@h:5432/db`).
    fn describe(&self, id: &str, config: &ConnectionConfig) -> Result<String, ConnectionError>;
    /// Labelled lines for `connections show`, the secret shown as `***` (or
    /// `(none)`) under its own label.
    fn details(
        &self,
        id: &str,
        config: &ConnectionConfig,
        has_secret: bool,
    ) -> Result<Vec<(&'static str, String)>, ConnectionError>;
    /// Whether adding a connection opens it once (Postgres does, to report a
    /// privileged role at once rather than at a task's first open).
    fn checked_when_added(&self) -> bool {
        false
    }
    /// Opens `connection` and says what answered, or why nothing did (secrets
    /// redacted).
    fn check<'a>(&'a self, connection: &'a Connection) -> CheckFuture<'a>;
}

/// A URI taken apart, for [`ConnectionType::read_uri`].
pub struct UriParts {
    /// The connection id.
    pub id: String,
    /// The parsed URI.
    pub url: url::Url,
    /// The user, percent-decoded.
    pub user: String,
    /// The query string's pairs (form-decoded: `+` is a space, as in Airflow).
    pub query: BTreeMap<String, String>,
}

impl UriParts {
    /// `part` of the URI (`what` names it in errors) with its percent-escapes
    /// decoded, and nothing else: a `+` stays a `+`, as libpq and Airflow read
    /// a URI's user, password and path.
    pub fn decoded(&self, what: &str, part: &str) -> Result<String, ConnectionError> {
        percent_decoded(&self.id, what, part)
    }

    /// The host, if the URI names one.
    pub fn host(&self) -> Option<&str> {
        self.url.host_str().filter(|h| !h.is_empty())
    }
}

fn percent_decoded(id: &str, what: &str, part: &str) -> Result<String, ConnectionError> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| invalid(id, format!("the URI's {what} is not UTF-8 once decoded")))
}

/// Airflow's JSON connection form (`conn_type`, `host`, `login`, `password`,
/// `schema`, `port`, `extra`), for [`ConnectionType::read_airflow`].
pub struct AirflowJson {
    /// The connection id.
    pub id: String,
    value: Value,
    /// `extra`, as strings (an object, or a string holding one).
    pub extra: BTreeMap<String, String>,
}

impl AirflowJson {
    /// Field `key` if it is a string.
    pub fn text(&self, key: &str) -> Option<String> {
        self.value
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// `port`: a number or a numeric string, if given.
    pub fn port(&self) -> Result<Option<u16>, ConnectionError> {
        let bad = |shown: &dyn std::fmt::Display| {
            invalid(
                &self.id,
                format!("`port` {shown} is not a port number (1-65535)"),
            )
        };
        match self.value.get("port") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .map(Some)
                .ok_or_else(|| bad(n)),
            Some(Value::String(s)) => s
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .map(Some)
                .ok_or_else(|| bad(&format_args!("`{s}`"))),
            Some(other) => Err(bad(other)),
        }
    }
}

/// The connection types a build knows, in the order they are offered.
#[derive(Clone, Copy)]
pub struct ConnectionTypes(pub &'static [&'static dyn ConnectionType]);

impl ConnectionTypes {
    /// The type named `name`.
    pub fn get(&self, name: &str) -> Option<&'static dyn ConnectionType> {
        self.0.iter().copied().find(|t| t.name() == name)
    }

    /// The type of a stored `config`; a type this build does not know is an error.
    pub fn of(
        &self,
        id: &str,
        config: &ConnectionConfig,
    ) -> Result<&'static dyn ConnectionType, ConnectionError> {
        self.get(config.kind()).ok_or_else(|| {
            invalid(
                id,
                format!(
                    "its type `{}` is not one this build knows ({})",
                    config.kind(),
                    self.names()
                ),
            )
        })
    }

    /// `postgres, s3`: the names, for messages.
    pub fn names(&self) -> String {
        self.0
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Parses an Airflow-style URI (`postgresql://user:pw@host:5432/db`,
    /// `s3://KEY:SECRET@bucket?endpoint_url=...`).
    pub fn parse_uri(&self, id: &str, uri: &str) -> Result<Connection, ConnectionError> {
        let url = url::Url::parse(uri).map_err(|e| invalid(id, format!("not a URI ({e})")))?;
        let kind = self
            .0
            .iter()
            .find(|t| t.uri_schemes().contains(&url.scheme()))
            .ok_or_else(|| {
                let schemes: Vec<&str> = self
                    .0
                    .iter()
                    .flat_map(|t| t.uri_schemes())
                    .copied()
                    .collect();
                invalid(
                    id,
                    format!(
                        "unsupported connection type `{}` (URI schemes: {})",
                        url.scheme(),
                        schemes.join(", ")
                    ),
                )
            })?;
        let secret = match url.password() {
            Some(password) => percent_decoded(id, "password", password)?,
            None => String::new(),
        };
        let parts = UriParts {
            id: id.to_owned(),
            user: percent_decoded(id, "user", url.username())?,
            query: url
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            url,
        };
        Ok(Connection::new(id, kind.read_uri(&parts)?, secret))
    }

    /// Parses Airflow's JSON connection form.
    pub fn parse_airflow_json(&self, id: &str, json: &str) -> Result<Connection, ConnectionError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| invalid(id, format!("not JSON ({e})")))?;
        let as_text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        let extra = match value.get("extra") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), as_text(v))).collect(),
            Some(Value::String(s)) if s.trim().is_empty() => BTreeMap::new(),
            Some(Value::String(s)) => serde_json::from_str::<BTreeMap<String, Value>>(s)
                .map_err(|e| invalid(id, format!("`extra` is not a JSON object ({e})")))?
                .iter()
                .map(|(k, v)| (k.clone(), as_text(v)))
                .collect(),
            Some(other) => {
                return Err(invalid(
                    id,
                    format!("`extra` must be an object or a string holding one, not {other}"),
                ));
            }
        };
        let json = AirflowJson {
            id: id.to_owned(),
            value,
            extra,
        };
        let conn_type = json
            .text("conn_type")
            .ok_or_else(|| invalid(id, "no `conn_type`"))?;
        let kind = self
            .0
            .iter()
            .find(|t| t.airflow_types().contains(&conn_type.as_str()))
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .0
                    .iter()
                    .flat_map(|t| t.airflow_types())
                    .copied()
                    .collect();
                invalid(
                    id,
                    format!("unsupported conn_type `{conn_type}` ({})", known.join(", ")),
                )
            })?;
        // No `password` is a connection without one, as in Airflow.
        let secret = json.text("password").unwrap_or_default();
        Ok(Connection::new(id, kind.read_airflow(&json)?, secret))
    }

    /// Connections defined by `AIRFLOW_CONN_<ID>` variables among `vars` (URI
    /// or JSON), in id order; the id is the suffix in lower case.
    pub fn parse_airflow_env(
        &self,
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
                    self.parse_airflow_json(&id, &value)
                } else {
                    self.parse_uri(&id, &value)
                }
            })
            .collect()
    }

    /// A connection of type `kind` from its named fields and its secret.
    pub fn with_fields(
        &self,
        id: &str,
        kind: &str,
        fields: &BTreeMap<String, String>,
        secret: String,
    ) -> Result<Connection, ConnectionError> {
        let Some(kind) = self.get(kind) else {
            return Err(invalid(
                id,
                format!("unsupported type `{kind}` (types: {})", self.names()),
            ));
        };
        Ok(Connection::new(id, kind.read_fields(id, fields)?, secret))
    }

    /// One line describing connection `id` without its secret.
    pub fn describe(&self, id: &str, config: &ConnectionConfig) -> Result<String, ConnectionError> {
        self.of(id, config)?.describe(id, config)
    }

    /// Opens `connection` the way its type is opened, and says what answered.
    pub async fn check(&self, connection: &Connection) -> CheckResult {
        match self.of(&connection.id, &connection.config) {
            Ok(kind) => kind.check(connection).await,
            Err(e) => CheckResult::Unreachable {
                reason: e.to_string(),
            },
        }
    }
}

/// Reads field `key` of `fields` for a type: required or not, and that no
/// other field than `known` was given.
pub struct FieldReader<'a> {
    id: &'a str,
    kind: &'static str,
    fields: &'a BTreeMap<String, String>,
}

impl<'a> FieldReader<'a> {
    /// Reads the fields of connection `id` of type `kind`; a field outside
    /// `known` is refused by name.
    pub fn new(
        id: &'a str,
        kind: &'static str,
        fields: &'a BTreeMap<String, String>,
        known: &[&str],
    ) -> Result<Self, ConnectionError> {
        if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(invalid(
                id,
                format!(
                    "type {kind} has no field `{unknown}` (fields: {})",
                    known.join(", ")
                ),
            ));
        }
        Ok(Self { id, kind, fields })
    }

    /// Field `key`, if given and not empty.
    pub fn optional(&self, key: &str) -> Option<String> {
        self.fields.get(key).filter(|v| !v.is_empty()).cloned()
    }

    /// Field `key`, which must be given (`what` names it: `a bucket`).
    pub fn required(&self, key: &str, what: &str) -> Result<String, ConnectionError> {
        self.optional(key)
            .ok_or_else(|| invalid(self.id, format!("needs {what} (type {})", self.kind)))
    }

    /// Field `key` as a boolean (`true`/`false`/`1`/`0`), false when absent.
    pub fn flag(&self, key: &str) -> Result<bool, ConnectionError> {
        match self.optional(key).as_deref() {
            None | Some("false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => Err(invalid(
                self.id,
                format!("field `{key}` is `{other}`, not true or false"),
            )),
        }
    }
}
