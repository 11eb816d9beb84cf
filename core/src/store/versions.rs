//! Deployed DAG versions (`dag_versions`) and each DAG's current one (`dags`).

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{Fields, Result, Store, StoreError, query_all, ts};
use crate::dag::DagSpec;

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS dag_versions (
    dag_id      TEXT NOT NULL,
    digest      TEXT NOT NULL,
    label       TEXT NOT NULL,
    spec        TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (dag_id, digest)
);
CREATE TABLE IF NOT EXISTS dags (
    dag_id          TEXT PRIMARY KEY,
    current_version TEXT NOT NULL,
    deployed_at     TEXT NOT NULL
);
"#;

/// A stored DAG version.
#[derive(Debug, Clone)]
pub struct VersionRecord {
    /// DAG id.
    pub dag_id: String,
    /// sha256 of the canonical spec (hex).
    pub digest: String,
    /// Human label (`git describe` or `dev-<timestamp>`).
    pub label: String,
    /// The deployed spec.
    pub spec: DagSpec,
    /// The manifest it was deployed from.
    pub source: String,
    /// When first deployed.
    pub created_at: DateTime<Utc>,
    /// Whether it is the DAG's current version.
    pub current: bool,
}

impl Store {
    /// Records version `digest` of `spec` (if new) and makes it current.
    /// Returns whether the version was new.
    pub fn record_version(
        &self,
        digest: &str,
        label: &str,
        spec: &DagSpec,
        source: &str,
    ) -> Result<bool> {
        let spec_json = serde_json::to_string(spec).map_err(|source| StoreError::Encode {
            what: format!("version {digest} of DAG `{}`", spec.id),
            source,
        })?;
        let now = ts(Utc::now());
        self.with(|c| {
            let tx = c.transaction()?;
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO dag_versions (dag_id, digest, label, spec, source, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![spec.id, digest, label, spec_json, source, now],
            )?;
            tx.execute(
                "INSERT INTO dags (dag_id, current_version, deployed_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (dag_id) DO UPDATE SET current_version = excluded.current_version,
                     deployed_at = CASE WHEN dags.current_version = excluded.current_version
                                        THEN dags.deployed_at ELSE excluded.deployed_at END",
                params![spec.id, digest, now],
            )?;
            tx.commit()?;
            Ok(inserted == 1)
        })
    }

    /// Versions of `dag_id`, newest first.
    pub fn versions(&self, dag_id: &str) -> Result<Vec<VersionRecord>> {
        self.select_versions(dag_id, None, false)
    }

    /// Versions of `dag_id`, narrowed in SQL to one digest and/or the current one.
    fn select_versions(
        &self,
        dag_id: &str,
        digest: Option<&str>,
        current_only: bool,
    ) -> Result<Vec<VersionRecord>> {
        self.with(|c| {
            query_all(
                c,
                "SELECT v.dag_id, v.digest, v.label, v.spec, v.source, v.created_at,
                        COALESCE(d.current_version = v.digest, 0)
                 FROM dag_versions v LEFT JOIN dags d ON d.dag_id = v.dag_id
                 WHERE v.dag_id = ?1 AND (?2 IS NULL OR v.digest = ?2)
                   AND (?3 = 0 OR d.current_version = v.digest)
                 ORDER BY v.created_at DESC, v.rowid DESC",
                params![dag_id, digest, current_only],
                |r| {
                    let f = Fields::new(r, "dag_versions", &[0, 1])?;
                    Ok(VersionRecord {
                        dag_id: f.get(0)?,
                        digest: f.get(1)?,
                        label: f.get(2)?,
                        spec: f.json(3)?,
                        source: f.get(4)?,
                        created_at: f.ts(5)?,
                        current: f.get(6)?,
                    })
                },
            )
        })
    }

    /// Ids of every deployed DAG.
    pub fn dag_ids(&self) -> Result<Vec<String>> {
        self.with(|c| {
            query_all(
                c,
                "SELECT dag_id FROM dags ORDER BY dag_id",
                params![],
                |r| Ok(r.get(0)?),
            )
        })
    }

    /// The current version of `dag_id`.
    pub fn current_version(&self, dag_id: &str) -> Result<VersionRecord> {
        self.select_versions(dag_id, None, true)?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::NotFound(format!("DAG `{dag_id}` has not been deployed")))
    }

    /// Version `digest` of `dag_id`.
    pub fn version(&self, dag_id: &str, digest: &str) -> Result<VersionRecord> {
        self.select_versions(dag_id, Some(digest), false)?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::NotFound(format!("DAG `{dag_id}` has no version {digest}")))
    }
}
