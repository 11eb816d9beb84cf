//! Staging directories: their audit trail and the GC sweep.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{App, AppError};

/// A staging directory and what happened to it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StagingDir {
    /// The run it belongs to.
    pub run_id: String,
    /// `active`, `retained` or `deleted`.
    pub state: String,
    /// Created (or first seen, for an orphan).
    pub created_at: DateTime<Utc>,
    /// When it may be reclaimed, once its run released it.
    pub kept_until: Option<DateTime<Utc>>,
    /// When it was deleted.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Why it was deleted.
    pub delete_reason: Option<String>,
    /// The directory.
    pub path: String,
}

/// A directory a sweep reclaimed (or would reclaim, on a dry run).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReclaimedDir {
    /// The run it belonged to (its directory name, for an orphan).
    pub run_id: String,
    /// `ttl_expired` or `orphaned`.
    pub reason: &'static str,
    /// The directory.
    pub path: String,
}

impl App {
    /// Every staging directory ever recorded, newest first.
    pub fn staging_dirs(&self) -> Result<Vec<StagingDir>, AppError> {
        self.sluice
            .store
            .volumes()?
            .into_iter()
            .map(|v| {
                Ok(StagingDir {
                    kept_until: v.released_at.map(|t| self.kept_until(t)).transpose()?,
                    run_id: v.run_id,
                    state: v.state.to_string(),
                    created_at: v.created_at,
                    deleted_at: v.deleted_at,
                    delete_reason: v.delete_reason,
                    path: v.path,
                })
            })
            .collect()
    }

    /// Reclaims staging directories past their TTL, and orphans, then the
    /// executor's volumes of the same (Kubernetes: the runs' claims); with
    /// `dry_run`, only says which.
    pub async fn gc(&self, dry_run: bool) -> Result<Vec<ReclaimedDir>, AppError> {
        let s = &self.sluice;
        let mut reclaimed =
            crate::staging::sweep(&s.home, &s.store, self.staging_ttl, Utc::now(), dry_run)?;
        let volumes = s
            .executor
            .sweep_volumes(self.staging_ttl, dry_run)
            .await
            .map_err(crate::scheduler::RunError::Executor)?;
        reclaimed.extend(volumes);
        Ok(reclaimed
            .into_iter()
            .map(|r| ReclaimedDir {
                run_id: r.run_id,
                reason: r.reason,
                path: r.path,
            })
            .collect())
    }
}
