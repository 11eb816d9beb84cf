//! Run staging directories (`staging_volumes`) and what became of them.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{Fields, Result, Store, query_all, ts};
use crate::state::VolumeState;

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS staging_volumes (
    run_id        TEXT PRIMARY KEY,
    path          TEXT NOT NULL,
    state         TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    released_at   TEXT,
    deleted_at    TEXT,
    delete_reason TEXT
);
"#;

/// Schema version 3: volumes by state and release time, for the sweep.
pub(super) const INDEXES_V3: &str = "
CREATE INDEX IF NOT EXISTS staging_volumes_by_state ON staging_volumes (state, released_at);
";

/// A run's staging directory and what happened to it.
#[derive(Debug, Clone)]
pub struct VolumeRecord {
    /// The run.
    pub run_id: String,
    /// The directory.
    pub path: String,
    /// Active, retained or deleted.
    pub state: VolumeState,
    /// Created (or first seen, for an orphan).
    pub created_at: DateTime<Utc>,
    /// When its run ended and released it (retained); kept until this plus the TTL.
    pub released_at: Option<DateTime<Utc>>,
    /// Deleted at.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Why it was deleted: `run_succeeded`, `ttl_expired` or `orphaned`.
    pub delete_reason: Option<String>,
}

const VOLUME_COLUMNS: &str =
    "run_id, path, state, created_at, released_at, deleted_at, delete_reason";

fn decode_volume(r: &rusqlite::Row<'_>) -> Result<VolumeRecord> {
    let f = Fields::new(r, "staging_volumes", &[0])?;
    Ok(VolumeRecord {
        run_id: f.get(0)?,
        path: f.get(1)?,
        state: f.get(2)?,
        created_at: f.ts(3)?,
        released_at: f.opt_ts(4)?,
        deleted_at: f.opt_ts(5)?,
        delete_reason: f.get(6)?,
    })
}

impl Store {
    /// Records the staging directory of a new run (active).
    pub fn add_volume(&self, run_id: &str, path: &str, at: DateTime<Utc>) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO staging_volumes (run_id, path, state, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![run_id, path, VolumeState::Active, ts(at)],
            )?;
            Ok(())
        })
    }

    /// Marks a volume active again (a cleared or resumed run uses it), unless deleted.
    pub fn activate_volume(&self, run_id: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE staging_volumes SET state = ?2, released_at = NULL WHERE run_id = ?1 AND state <> ?3",
                params![run_id, VolumeState::Active, VolumeState::Deleted],
            )?;
            Ok(())
        })
    }

    /// Keeps a volume, released by its run at `at`, for the TTL in force (its
    /// run failed, or was told to keep it).
    pub fn retain_volume(&self, run_id: &str, at: DateTime<Utc>) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE staging_volumes SET state = ?3, released_at = ?2 WHERE run_id = ?1",
                params![run_id, ts(at), VolumeState::Retained],
            )?;
            Ok(())
        })
    }

    /// Records that a volume was deleted, when and why (inserting a row for an orphan).
    pub fn delete_volume(
        &self,
        run_id: &str,
        path: &str,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO staging_volumes (run_id, path, state, created_at, deleted_at, delete_reason)
                 VALUES (?1, ?2, ?5, ?3, ?3, ?4)
                 ON CONFLICT (run_id) DO UPDATE SET state = ?5, deleted_at = ?3, delete_reason = ?4,
                     released_at = NULL",
                params![run_id, path, ts(at), reason, VolumeState::Deleted],
            )?;
            Ok(())
        })
    }

    /// Every volume ever recorded, newest first.
    pub fn volumes(&self) -> Result<Vec<VolumeRecord>> {
        self.with(|c| {
            query_all(
                c,
                &format!(
                    "SELECT {VOLUME_COLUMNS} FROM staging_volumes ORDER BY created_at DESC, rowid DESC"
                ),
                params![],
                decode_volume,
            )
        })
    }

    /// The volume of `run_id`, if recorded.
    pub fn volume(&self, run_id: &str) -> Result<Option<VolumeRecord>> {
        Ok(self
            .with(|c| {
                query_all(
                    c,
                    &format!("SELECT {VOLUME_COLUMNS} FROM staging_volumes WHERE run_id = ?1"),
                    params![run_id],
                    decode_volume,
                )
            })?
            .into_iter()
            .next())
    }

    /// Retained volumes released at or before `cutoff` (those whose TTL has
    /// run out, for a cutoff of now minus the TTL), oldest release first.
    pub fn retained_volumes(&self, cutoff: DateTime<Utc>) -> Result<Vec<VolumeRecord>> {
        self.with(|c| {
            query_all(
                c,
                &format!(
                    "SELECT {VOLUME_COLUMNS} FROM staging_volumes
                     WHERE state = ?1 AND released_at <= ?2 ORDER BY released_at, rowid"
                ),
                params![VolumeState::Retained, ts(cutoff)],
                decode_volume,
            )
        })
    }
}
