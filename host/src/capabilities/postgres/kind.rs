//! The `postgres` connection type: its stored configuration, how a URI,
//! Airflow's JSON or named fields define one, and how `connections test`
//! opens one.

use std::collections::BTreeMap;

use crate::connections::{
    AirflowJson, CheckFuture, CheckResult, Connection, ConnectionConfig, ConnectionError,
    ConnectionType, FieldReader, UriParts, invalid,
};

use super::client::{
    NAME, PostgresConfig, PostgresReport, privileged_opt_in_hint, test_connection,
};

/// The `postgres` connection type.
pub struct PostgresType;

/// Fields [`PostgresType::read_fields`] reads besides extras' names.
const FIELDS: &[&str] = &["host", "port", "database", "user", "sslmode", "sslrootcert"];

impl ConnectionType for PostgresType {
    fn name(&self) -> &'static str {
        NAME
    }

    fn secret_name(&self) -> &'static str {
        "password"
    }

    fn uri_schemes(&self) -> &'static [&'static str] {
        &["postgresql", "postgres"]
    }

    fn airflow_types(&self) -> &'static [&'static str] {
        &["postgres", "postgresql"]
    }

    fn read_uri(&self, uri: &UriParts) -> Result<ConnectionConfig, ConnectionError> {
        let host = uri
            .host()
            .ok_or_else(|| invalid(&uri.id, "the URI has no host"))?;
        let database = uri.url.path().trim_start_matches('/');
        PostgresConfig {
            host: host.to_owned(),
            port: uri.url.port().unwrap_or(5432),
            database: if database.is_empty() {
                uri.user.clone()
            } else {
                uri.decoded("database", database)?
            },
            user: uri.user.clone(),
            extras: uri.query.clone(),
        }
        .stored(&uri.id)
    }

    fn read_airflow(&self, json: &AirflowJson) -> Result<ConnectionConfig, ConnectionError> {
        // No `login` leaves the user empty, as in Airflow (the server's default).
        let user = json.text("login").unwrap_or_default();
        PostgresConfig {
            host: json
                .text("host")
                .ok_or_else(|| invalid(&json.id, "no `host`"))?,
            port: json.port()?.unwrap_or(5432),
            // As in a URI, no database is the user's.
            database: json.text("schema").unwrap_or_else(|| user.clone()),
            user,
            extras: json.extra.clone(),
        }
        .stored(&json.id)
    }

    fn read_fields(
        &self,
        id: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<ConnectionConfig, ConnectionError> {
        let read = FieldReader::new(id, NAME, fields, FIELDS)?;
        let user = read.required("user", "a user")?;
        let port = match read.optional("port") {
            None => 5432,
            Some(port) => port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                invalid(id, format!("field `port` is `{port}`, not a port number"))
            })?,
        };
        PostgresConfig {
            host: read.required("host", "a host")?,
            port,
            database: read.optional("database").unwrap_or_else(|| user.clone()),
            user,
            extras: ["sslmode", "sslrootcert"]
                .into_iter()
                .filter_map(|k| read.optional(k).map(|v| (k.to_owned(), v)))
                .collect(),
        }
        .stored(id)
    }

    fn describe(&self, id: &str, config: &ConnectionConfig) -> Result<String, ConnectionError> {
        let c = PostgresConfig::of(id, config)?;
        Ok(format!(
            "postgres://{}:***@{}:{}/{}",
            c.user, c.host, c.port, c.database
        ))
    }

    fn details(
        &self,
        id: &str,
        config: &ConnectionConfig,
        has_secret: bool,
    ) -> Result<Vec<(&'static str, String)>, ConnectionError> {
        let c = PostgresConfig::of(id, config)?;
        let password = if has_secret { "***" } else { "(none)" };
        let mut lines = vec![
            ("type", NAME.to_owned()),
            ("host", c.host),
            ("port", c.port.to_string()),
            ("database", c.database),
            ("user", c.user),
            ("password", password.to_owned()),
        ];
        lines.extend(
            c.extras
                .into_iter()
                .map(|(k, v)| ("extra", format!("{k}={v}"))),
        );
        Ok(lines)
    }

    fn checked_when_added(&self) -> bool {
        true
    }

    fn check<'a>(&'a self, connection: &'a Connection) -> CheckFuture<'a> {
        Box::pin(async move {
            match test_connection(connection).await {
                Ok(report) => CheckResult::Reachable {
                    summary: report.to_string(),
                    privilege_warning: privilege_warning(&connection.id, &report),
                },
                Err(reason) => CheckResult::Unreachable {
                    reason: reason.to_string(),
                },
            }
        })
    }
}

/// For a role holding powers a task must opt in to: which, and how to opt in.
fn privilege_warning(id: &str, report: &PostgresReport) -> Option<String> {
    let privileges = &report.privileges;
    privileges
        .is_privileged()
        .then(|| format!("{}; {}", privileges.describe(), privileged_opt_in_hint(id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::connections::CONNECTION_TYPES;

    fn config(c: &Connection) -> PostgresConfig {
        PostgresConfig::of(&c.id, &c.config).expect("a postgres connection")
    }

    #[test]
    fn postgres_uris_in_both_spellings_with_extras_and_escapes() {
        let c = CONNECTION_TYPES
            .parse_uri(
                "pg",
                "postgresql://etl%40corp:p%40ss%2Fw0rd@db.internal:6543/warehouse?sslmode=require",
            )
            .expect("uri");
        assert_eq!(c.secret, "p@ss/w0rd");
        let pg = config(&c);
        assert_eq!(
            (
                pg.host.as_str(),
                pg.port,
                pg.database.as_str(),
                pg.user.as_str()
            ),
            ("db.internal", 6543, "warehouse", "etl@corp")
        );
        assert_eq!(
            pg.extras.get("sslmode").map(String::as_str),
            Some("require")
        );
        let c = CONNECTION_TYPES
            .parse_uri("pg", "postgres://u:p@h/db")
            .expect("uri");
        assert_eq!(config(&c).port, 5432);
        assert!(
            !format!("{c:?}").contains("\"p\""),
            "Debug never shows the secret"
        );
    }

    #[test]
    fn a_plus_in_a_uri_password_is_a_plus_and_only_escapes_are_decoded() {
        let c = CONNECTION_TYPES
            .parse_uri("pg", "postgresql://etl+1:a+b%2Bc%20d+@h:5432/my+db")
            .expect("uri");
        assert_eq!(c.secret, "a+b+c d+");
        let pg = config(&c);
        assert_eq!((pg.user.as_str(), pg.database.as_str()), ("etl+1", "my+db"));
        // The query string is form-encoded, as in Airflow: `+` is a space there.
        let c = CONNECTION_TYPES
            .parse_uri("pg", "postgresql://u:p@h/db?application_name=a+b")
            .expect("uri");
        assert_eq!(
            config(&c)
                .extras
                .get("application_name")
                .map(String::as_str),
            Some("a b")
        );
        let bad = CONNECTION_TYPES
            .parse_uri("pg", "postgresql://u:%FF@h/db")
            .expect_err("not UTF-8");
        assert!(
            bad.to_string()
                .contains("connection `pg`: the URI's password"),
            "{bad}"
        );
    }

    #[test]
    fn airflow_json_reads_ports_as_numbers_or_strings_and_refuses_bad_ones() {
        let json = |port: &str| {
            format!(
                r#"{{"conn_type": "postgres", "host": "h", "login": "u", "password": "pw", "port": {port}, "extra": "{{\"sslmode\": \"disable\"}}"}}"#
            )
        };
        let c = CONNECTION_TYPES
            .parse_airflow_json("x", &json("5433"))
            .expect("json");
        assert_eq!(c.secret, "pw");
        let pg = config(&c);
        assert_eq!((pg.port, pg.database.as_str()), (5433, "u"));
        assert_eq!(
            pg.extras.get("sslmode").map(String::as_str),
            Some("disable")
        );
        let c = CONNECTION_TYPES
            .parse_airflow_json("x", &json("\"6000\""))
            .expect("json");
        assert_eq!(config(&c).port, 6000);
        for bad in ["70000", "\"fifty\"", "0", "true"] {
            let err = CONNECTION_TYPES
                .parse_airflow_json("x", &json(bad))
                .expect_err(bad);
            assert!(
                err.to_string().starts_with("connection `x`: `port` "),
                "{bad}: {err}"
            );
        }
        let err = CONNECTION_TYPES
            .parse_airflow_json(
                "x",
                r#"{"conn_type": "postgres", "host": "h", "extra": "{not json"}"#,
            )
            .expect_err("bad extra");
        assert!(
            err.to_string().contains("`extra` is not a JSON object"),
            "{err}"
        );
    }

    #[test]
    fn fields_define_a_connection_and_unknown_or_missing_ones_are_named() {
        let fields: BTreeMap<String, String> = [
            ("host", "db"),
            ("user", "etl"),
            ("port", "6432"),
            ("sslmode", "require"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let c = CONNECTION_TYPES
            .with_fields("pg", "postgres", &fields, "pw".into())
            .expect("fields");
        assert_eq!(
            CONNECTION_TYPES
                .describe("pg", &c.config)
                .expect("describe"),
            "postgres://etl:***@db:6432/etl"
        );
        let mut unknown = fields.clone();
        unknown.insert("bucket".into(), "b".into());
        let err = CONNECTION_TYPES
            .with_fields("pg", "postgres", &unknown, String::new())
            .expect_err("unknown field");
        assert!(
            err.to_string()
                .starts_with("connection `pg`: type postgres has no field `bucket`"),
            "{err}"
        );
        let mut no_host = fields;
        no_host.remove("host");
        let err = CONNECTION_TYPES
            .with_fields("pg", "postgres", &no_host, String::new())
            .expect_err("no host");
        assert_eq!(
            err.to_string(),
            "connection `pg`: needs a host (type postgres)"
        );
    }

    #[test]
    fn stored_configurations_keep_their_json_shape() {
        // What earlier versions stored must still be read.
        let stored = r#"{"type":"postgres","host":"h","port":5432,"database":"d","user":"u","extras":{"sslmode":"require"}}"#;
        let config: ConnectionConfig = serde_json::from_str(stored).expect("stored");
        let pg = PostgresConfig::of("pg", &config).expect("postgres");
        assert_eq!((pg.host.as_str(), pg.port), ("h", 5432));
        assert_eq!(
            serde_json::to_value(&config).expect("json"),
            serde_json::from_str::<serde_json::Value>(stored).expect("json")
        );
        let broken: ConnectionConfig =
            serde_json::from_str(r#"{"type":"postgres","host":"h"}"#).expect("json");
        let err = PostgresConfig::of("pg", &broken).expect_err("no port");
        assert!(
            err.to_string()
                .starts_with("connection `pg`: its stored postgres configuration does not fit"),
            "{err}"
        );
    }
}
