//! The `s3` connection type: an S3-compatible object store, its stored
//! configuration, how a URI, Airflow's JSON or named fields define one, the
//! object store it gives, and how `connections test` opens one.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use serde::{Deserialize, Serialize};

use crate::connections::{
    AirflowJson, CheckFuture, CheckResult, Connection, ConnectionConfig, ConnectionError,
    ConnectionType, FieldReader, UriParts, invalid,
};

use crate::capabilities::redact::{Redacted, Redactor};

/// The type's name, stored with each of its connections.
const NAME: &str = "s3";
/// The region when none is given.
const DEFAULT_REGION: &str = "us-east-1";

/// An S3-compatible object store, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Config {
    /// Endpoint URL (none: AWS).
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Bucket.
    pub bucket: String,
    /// Access key id (not secret).
    pub access_key_id: String,
    /// Path-style addressing (most S3-compatible servers need it).
    pub path_style: bool,
}

impl S3Config {
    /// The configuration of connection `id`, which must be an S3 one.
    pub fn of(id: &str, config: &ConnectionConfig) -> Result<Self, ConnectionError> {
        config.typed(NAME, id)
    }

    fn stored(self, id: &str) -> Result<ConnectionConfig, ConnectionError> {
        ConnectionConfig::of_type(NAME, id, &self)
    }

    /// `s3://bucket (region r, endpoint e)`.
    pub fn describe(&self) -> String {
        format!(
            "s3://{} (region {}, endpoint {})",
            self.bucket,
            self.region,
            self.endpoint.as_deref().unwrap_or("AWS")
        )
    }
}

/// Why a stored S3 connection gives no object store: the same at every try
/// (a permanent failure when a task opens it).
#[derive(Debug, thiserror::Error)]
pub enum StoreConfigError {
    /// The stored configuration is not an S3 one, or does not fit (why).
    #[error("{0}")]
    Config(String),
    /// `object_store` refuses the configuration.
    #[error(transparent)]
    Build(object_store::Error),
}

/// The object store of an S3 connection.
pub(super) fn store_for(connection: &Connection) -> Result<Arc<dyn ObjectStore>, StoreConfigError> {
    let S3Config {
        endpoint,
        region,
        bucket,
        access_key_id,
        path_style,
    } = S3Config::of(&connection.id, &connection.config).map_err(|e| match e {
        ConnectionError::Invalid { message, .. } => StoreConfigError::Config(message),
        other => StoreConfigError::Config(other.to_string()),
    })?;
    let mut builder = AmazonS3Builder::new()
        .with_region(&region)
        .with_bucket_name(&bucket)
        .with_access_key_id(&access_key_id)
        .with_secret_access_key(&connection.secret)
        .with_virtual_hosted_style_request(!path_style);
    if let Some(endpoint) = endpoint {
        builder = builder
            .with_endpoint(&endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    Ok(Arc::new(builder.build().map_err(StoreConfigError::Build)?))
}

/// Lists one key of the bucket: what `sluice connections test` reports. Errors are redacted.
pub async fn test_connection(connection: &Connection) -> Result<String, Redacted> {
    let redactor = Redactor::for_connections(std::slice::from_ref(connection));
    let config =
        S3Config::of(&connection.id, &connection.config).map_err(|e| redactor.redacted(&e))?;
    let store = store_for(connection).map_err(|e| redactor.redacted(&e))?;
    let mut listing = store.list(None);
    match listing.next().await {
        Some(Err(e)) => Err(redactor.redacted(&e)),
        Some(Ok(_)) => Ok(format!("{} is reachable and not empty", config.describe())),
        None => Ok(format!("{} is reachable and empty", config.describe())),
    }
}

/// The `s3` connection type.
pub struct S3Type;

/// Fields [`S3Type::read_fields`] reads.
const FIELDS: &[&str] = &[
    "endpoint",
    "region",
    "bucket",
    "access_key_id",
    "path_style",
];

impl ConnectionType for S3Type {
    fn name(&self) -> &'static str {
        NAME
    }

    fn secret_name(&self) -> &'static str {
        "secret key"
    }

    fn uri_schemes(&self) -> &'static [&'static str] {
        &["s3", "aws"]
    }

    fn airflow_types(&self) -> &'static [&'static str] {
        &["aws", "s3"]
    }

    fn read_uri(&self, uri: &UriParts) -> Result<ConnectionConfig, ConnectionError> {
        let q = |k: &str| uri.query.get(k).cloned();
        let bucket = q("bucket")
            .or_else(|| uri.host().map(str::to_owned))
            .ok_or_else(|| {
                invalid(
                    &uri.id,
                    "no bucket: give it as the host (s3://bucket) or ?bucket=",
                )
            })?;
        S3Config {
            endpoint: q("endpoint_url").or_else(|| q("endpoint")),
            region: q("region_name")
                .or_else(|| q("region"))
                .unwrap_or_else(|| DEFAULT_REGION.into()),
            bucket,
            access_key_id: Some(uri.user.clone())
                .filter(|k| !k.is_empty())
                .ok_or_else(|| invalid(&uri.id, "no access key id: give it as the URI's user"))?,
            path_style: flag(&uri.id, uri.query.get("path_style"))?,
        }
        .stored(&uri.id)
    }

    fn read_airflow(&self, json: &AirflowJson) -> Result<ConnectionConfig, ConnectionError> {
        let extra = |k: &str| json.extra.get(k).cloned();
        S3Config {
            endpoint: extra("endpoint_url"),
            region: extra("region_name").unwrap_or_else(|| DEFAULT_REGION.into()),
            bucket: extra("bucket")
                .or_else(|| json.text("schema"))
                .ok_or_else(|| invalid(&json.id, "no bucket in `extra`"))?,
            access_key_id: json
                .text("login")
                .filter(|k| !k.is_empty())
                .ok_or_else(|| invalid(&json.id, "no `login` (the access key id)"))?,
            path_style: flag(&json.id, json.extra.get("path_style"))?,
        }
        .stored(&json.id)
    }

    fn read_fields(
        &self,
        id: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<ConnectionConfig, ConnectionError> {
        let read = FieldReader::new(id, NAME, fields, FIELDS)?;
        S3Config {
            endpoint: read.optional("endpoint"),
            region: read
                .optional("region")
                .unwrap_or_else(|| DEFAULT_REGION.into()),
            bucket: read.required("bucket", "a bucket")?,
            access_key_id: read.required("access_key_id", "an access key id")?,
            path_style: read.flag("path_style")?,
        }
        .stored(id)
    }

    fn describe(&self, id: &str, config: &ConnectionConfig) -> Result<String, ConnectionError> {
        Ok(S3Config::of(id, config)?.describe())
    }

    fn details(
        &self,
        id: &str,
        config: &ConnectionConfig,
        has_secret: bool,
    ) -> Result<Vec<(&'static str, String)>, ConnectionError> {
        let c = S3Config::of(id, config)?;
        let secret = if has_secret { "***" } else { "(none)" };
        Ok(vec![
            ("type", NAME.to_owned()),
            ("endpoint", c.endpoint.unwrap_or_else(|| "AWS".into())),
            ("region", c.region),
            ("bucket", c.bucket),
            ("key id", c.access_key_id),
            ("secret", secret.to_owned()),
            ("path", c.path_style.to_string()),
        ])
    }

    fn check<'a>(&'a self, connection: &'a Connection) -> CheckFuture<'a> {
        Box::pin(async move {
            match test_connection(connection).await {
                Ok(summary) => CheckResult::Reachable {
                    summary,
                    privilege_warning: None,
                },
                Err(reason) => CheckResult::Unreachable {
                    reason: reason.to_string(),
                },
            }
        })
    }
}

/// `path_style` in a query string or Airflow's `extra`: `true`/`1` or
/// `false`/`0`, false when absent.
fn flag(id: &str, value: Option<&String>) -> Result<bool, ConnectionError> {
    match value.map(String::as_str) {
        None | Some("false" | "0" | "") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(invalid(
            id,
            format!("`path_style` is `{other}`, not true or false"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::connections::CONNECTION_TYPES;

    fn lake() -> S3Config {
        S3Config {
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: "eu-west-1".into(),
            bucket: "bucket-a".into(),
            access_key_id: "KEY".into(),
            path_style: true,
        }
    }

    #[test]
    fn an_s3_uri_and_its_airflow_json_and_env_forms() {
        let c = CONNECTION_TYPES.parse_uri("lake", "s3://KEY:SECRET@bucket-a?endpoint_url=http%3A%2F%2F127.0.0.1%3A9000&region_name=eu-west-1&path_style=true").expect("uri");
        assert_eq!(c.secret, "SECRET");
        assert_eq!(S3Config::of("lake", &c.config).expect("s3"), lake());
        let j = r#"{"conn_type": "aws", "login": "KEY", "password": "SECRET", "extra": {"bucket": "bucket-a", "endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1", "path_style": true}}"#;
        let c = CONNECTION_TYPES
            .parse_airflow_json("lake", j)
            .expect("json");
        assert_eq!(S3Config::of("lake", &c.config).expect("s3"), lake());
        let vars = vec![
            (
                "AIRFLOW_CONN_MY_PG".to_owned(),
                "postgresql://u:p@h:5432/db".to_owned(),
            ),
            ("AIRFLOW_CONN_JSON_LAKE".to_owned(), j.to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let found: Vec<(String, String)> = CONNECTION_TYPES
            .parse_airflow_env(vars.into_iter())
            .into_iter()
            .map(|c| {
                let c = c.expect("valid");
                (c.id, c.config.kind().to_owned())
            })
            .collect();
        assert_eq!(
            found,
            [
                ("json_lake".to_owned(), "s3".to_owned()),
                ("my_pg".to_owned(), "postgres".to_owned())
            ]
        );
        let err = CONNECTION_TYPES
            .parse_uri("bad", "mysql://u:p@h/db")
            .expect_err("mysql");
        assert_eq!(
            err.to_string(),
            "connection `bad`: unsupported connection type `mysql` (URI schemes: postgresql, postgres, s3, aws)"
        );
        let err = CONNECTION_TYPES
            .parse_uri("lake", "s3://K:S@b?path_style=yes")
            .expect_err("path_style");
        assert!(err.to_string().contains("`path_style` is `yes`"), "{err}");
    }

    #[test]
    fn fields_define_an_s3_connection_and_what_is_missing_is_named() {
        let fields = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let all = fields(&[
            ("endpoint", "http://127.0.0.1:9000"),
            ("region", "eu-west-1"),
            ("bucket", "bucket-a"),
            ("access_key_id", "KEY"),
            ("path_style", "true"),
        ]);
        let c = CONNECTION_TYPES
            .with_fields("lake", "s3", &all, "SECRET".into())
            .expect("fields");
        assert_eq!(S3Config::of("lake", &c.config).expect("s3"), lake());
        assert!(!c.allow_privileged);
        let err = CONNECTION_TYPES
            .with_fields("lake", "s3", &fields(&[("access_key_id", "K")]), "s".into())
            .expect_err("no bucket");
        assert_eq!(
            err.to_string(),
            "connection `lake`: needs a bucket (type s3)"
        );
        let err = CONNECTION_TYPES
            .with_fields(
                "lake",
                "s3",
                &fields(&[("bucket", "b"), ("access_key_id", "")]),
                "s".into(),
            )
            .expect_err("empty key id");
        assert_eq!(
            err.to_string(),
            "connection `lake`: needs an access key id (type s3)"
        );
        let err = CONNECTION_TYPES
            .with_fields("lake", "gcs", &all, "s".into())
            .expect_err("unknown type");
        assert_eq!(
            err.to_string(),
            "connection `lake`: unsupported type `gcs` (types: postgres, s3)"
        );
    }

    #[test]
    fn details_show_no_secret() {
        let config = lake().stored("lake").expect("config");
        let lines = S3Type.details("lake", &config, true).expect("details");
        assert!(lines.contains(&("secret", "***".to_owned())));
        assert!(!lines.iter().any(|(_, v)| v.contains("SECRET")));
        let pg = CONNECTION_TYPES
            .parse_uri("pg", "postgres://u:p@h/db")
            .expect("uri");
        let err = S3Type.describe("pg", &pg.config).expect_err("not s3");
        assert_eq!(
            err.to_string(),
            "connection `pg`: is a postgres connection, not s3"
        );
    }
}
