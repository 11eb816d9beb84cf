//! Signatures of DAG versions (`signatures`), trusted keys (`trusted_keys`)
//! and the signature policy (`settings`).

use chrono::Utc;
use rusqlite::{OptionalExtension, params};

use super::{Result, Store, StoreError, query_all, ts};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS signatures (
    dag_id      TEXT NOT NULL,
    version     TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    signature   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (dag_id, version, public_key)
);
CREATE TABLE IF NOT EXISTS trusted_keys (
    public_key  TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    added_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
"#;

/// The `settings` row of the signature policy.
const REQUIRE_SIGNATURES: &str = "require_signatures";

impl Store {
    /// Stores (or replaces) a signature of a DAG version by `public_key`.
    pub fn add_signature(
        &self,
        dag_id: &str,
        version: &str,
        public_key: &str,
        signature: &str,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO signatures (dag_id, version, public_key, signature, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![dag_id, version, public_key, signature, ts(Utc::now())],
            )?;
            Ok(())
        })
    }

    /// (public key, signature) pairs stored for a DAG version.
    pub fn signatures(&self, dag_id: &str, version: &str) -> Result<Vec<(String, String)>> {
        self.with(|c| {
            query_all(
                c,
                "SELECT public_key, signature FROM signatures WHERE dag_id = ?1 AND version = ?2",
                params![dag_id, version],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }

    /// Trusts a public key under `name`.
    pub fn trust_key(&self, public_key: &str, name: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO trusted_keys (public_key, name, added_at) VALUES (?1, ?2, ?3)",
                params![public_key, name, ts(Utc::now())],
            )?;
            Ok(())
        })
    }

    /// Stops trusting a public key; false if it was not trusted.
    pub fn distrust_key(&self, public_key: &str) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM trusted_keys WHERE public_key = ?1",
                [public_key],
            )? == 1)
        })
    }

    /// Trusted (public key, name) pairs.
    pub fn trusted_keys(&self) -> Result<Vec<(String, String)>> {
        self.with(|c| {
            query_all(
                c,
                "SELECT public_key, name FROM trusted_keys ORDER BY name",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }

    /// Whether runs require a version signed by a trusted key.
    pub fn require_signatures(&self) -> Result<bool> {
        let value = self.with(|c| {
            Ok(c.query_row(
                "SELECT value FROM settings WHERE name = ?1",
                [REQUIRE_SIGNATURES],
                |r| r.get::<_, String>(0),
            )
            .optional()?)
        })?;
        match value.as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(StoreError::Corrupt {
                table: "settings",
                row: format!("`{REQUIRE_SIGNATURES}`"),
                detail: format!("column `value`: `{other}` is neither `true` nor `false`"),
            }),
        }
    }

    /// Sets whether runs require a trusted signature.
    pub fn set_require_signatures(&self, on: bool) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO settings (name, value) VALUES (?1, ?2)",
                params![REQUIRE_SIGNATURES, if on { "true" } else { "false" }],
            )?;
            Ok(())
        })
    }
}
