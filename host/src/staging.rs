//! The lifecycle of run staging directories: deleted when the run succeeds,
//! kept for a TTL when it fails (so a cleared task can reuse upstream data),
//! then reclaimed by a GC sweep that records when and why. The sweep never
//! touches the directory of an active run or one younger than the TTL.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::home::Home;
use crate::store::{Store, StoreError};

/// How long a failed run's staging directory is kept by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why a staging directory was deleted.
pub mod reason {
    /// The run succeeded: nothing will read the data again.
    pub const RUN_SUCCEEDED: &str = "run_succeeded";
    /// Kept for its TTL after the run ended, and the TTL passed.
    pub const TTL_EXPIRED: &str = "ttl_expired";
    /// No run record claims it, and it is older than the TTL.
    pub const ORPHANED: &str = "orphaned";
}

/// A staging error.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// The metadatabase failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The filesystem failed.
    #[error("staging directory {path}: {source}")]
    Io {
        /// The directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// One deletion a sweep made (or would make, on a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// The run the directory belonged to (its directory name, for an orphan).
    pub run_id: String,
    /// The directory.
    pub path: String,
    /// [`reason::TTL_EXPIRED`] or [`reason::ORPHANED`].
    pub reason: &'static str,
}

fn remove(path: &Path) -> Result<(), StagingError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StagingError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Ends a run's hold on its staging directory: deleted now if the run
/// succeeded (unless `keep`), otherwise kept for the TTL from `now`.
pub fn release(
    store: &Store,
    run_id: &str,
    path: &Path,
    succeeded: bool,
    keep: bool,
    now: DateTime<Utc>,
) -> Result<(), StagingError> {
    if succeeded && !keep {
        remove(path)?;
        store.delete_volume(
            run_id,
            &path.display().to_string(),
            now,
            reason::RUN_SUCCEEDED,
        )?;
    } else {
        store.retain_volume(run_id, now)?;
    }
    Ok(())
}

/// Reclaims expired and orphaned staging directories as of `now`. With
/// `dry_run`, reports what it would reclaim and changes nothing.
pub fn sweep(
    home: &Home,
    store: &Store,
    ttl: Duration,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Vec<Reclaimed>, StagingError> {
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    let mut reclaimed = Vec::new();
    let volumes = store.volumes()?;
    for v in &volumes {
        if v.state == "retained" && v.released_at.is_some_and(|at| at + ttl <= now) {
            reclaimed.push(Reclaimed {
                run_id: v.run_id.clone(),
                path: v.path.clone(),
                reason: reason::TTL_EXPIRED,
            });
        }
    }
    let staging_root = home.root().join("staging");
    let entries = std::fs::read_dir(&staging_root).map_err(|source| StagingError::Io {
        path: staging_root.display().to_string(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let claimed = volumes.iter().any(|v| v.run_id == name) || store.run(&name).is_ok();
        if claimed {
            continue;
        }
        let modified: Option<DateTime<Utc>> = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .map(Into::into);
        if modified.is_some_and(|m| m + ttl <= now) {
            reclaimed.push(Reclaimed {
                run_id: name,
                path: entry.path().display().to_string(),
                reason: reason::ORPHANED,
            });
        }
    }
    if !dry_run {
        for r in &reclaimed {
            remove(Path::new(&r.path))?;
            store.delete_volume(&r.run_id, &r.path, now, r.reason)?;
        }
    }
    Ok(reclaimed)
}
