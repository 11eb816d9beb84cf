//! The lifecycle of run staging directories: deleted when the run succeeds,
//! kept for a TTL when it fails (so a cleared task can reuse upstream data),
//! then reclaimed by a GC sweep that records when and why. The sweep never
//! touches the directory of an active run or one younger than the TTL, and it
//! skips, with a warning, whatever in the staging root it did not make: a
//! file, a symbolic link (never followed), a name that is not a run id.

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

/// What a sweep finds at a path it might reclaim, links not followed.
enum Found {
    /// A real directory.
    Directory(std::fs::Metadata),
    /// Nothing (already gone).
    Missing,
    /// Something Sluice did not make there, described.
    Unexpected(&'static str),
}

fn inspect(path: &Path) -> Result<Found, StagingError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Ok(Found::Directory(m)),
        Ok(m) if m.file_type().is_symlink() => Ok(Found::Unexpected("a symbolic link")),
        Ok(_) => Ok(Found::Unexpected("not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Found::Missing),
        Err(source) => Err(StagingError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Reclaims expired and orphaned staging directories as of `now`. With
/// `dry_run`, reports what it would reclaim and changes nothing. Entries of
/// the staging root that are not run directories (files, links, other names)
/// are skipped with a warning, never deleted; a metadatabase error fails it.
pub fn sweep(
    home: &Home,
    store: &Store,
    ttl: Duration,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Vec<Reclaimed>, StagingError> {
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    let mut reclaimed = Vec::new();
    // What is from `cutoff` or earlier has outlived the TTL; nothing has if
    // `now - ttl` underflows.
    let cutoff = now.checked_sub_signed(ttl);
    let expired_volumes = match cutoff {
        Some(cutoff) => store.retained_volumes(cutoff)?,
        None => Vec::new(),
    };
    for v in expired_volumes {
        if let Found::Unexpected(what) = inspect(Path::new(&v.path))? {
            tracing::warn!(
                "staging sweep: skipping {} of run {}: it is {what}, not the directory the run was given",
                v.path,
                v.run_id
            );
            continue;
        }
        reclaimed.push(Reclaimed {
            run_id: v.run_id,
            path: v.path,
            reason: reason::TTL_EXPIRED,
        });
    }
    let staging_root = home.root().join("staging");
    let entries = std::fs::read_dir(&staging_root).map_err(|source| StagingError::Io {
        path: staging_root.display().to_string(),
        source,
    })?;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| StagingError::Io { path, source }
    };
    for entry in entries {
        let entry = entry.map_err(io(&staging_root))?;
        let path = entry.path();
        let metadata = match inspect(&path)? {
            Found::Directory(metadata) => metadata,
            Found::Missing => continue,
            Found::Unexpected(what) => {
                tracing::warn!(
                    "staging sweep: skipping {}: it is {what}, which no run is given",
                    path.display()
                );
                continue;
            }
        };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(
                "staging sweep: skipping {}: its name is not UTF-8, so it is no run's",
                path.display()
            );
            continue;
        };
        if store.volume(&name)?.is_some() {
            continue;
        }
        match store.run(&name) {
            Ok(_) => continue,
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if !crate::run_id::is_run_id(&name) {
            tracing::warn!(
                "staging sweep: skipping {}: `{name}` is not a run id, so Sluice did not make it",
                path.display()
            );
            continue;
        }
        let modified: DateTime<Utc> = metadata.modified().map_err(io(&path))?.into();
        if cutoff.is_some_and(|cutoff| modified <= cutoff) {
            reclaimed.push(Reclaimed {
                run_id: name,
                path: path.display().to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3600);

    fn home() -> (tempfile::TempDir, Home, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = Home::open(dir.path().join("home")).expect("home");
        let store = Store::open(&home.database()).expect("store");
        (dir, home, store)
    }

    /// A file, a link to a directory outside, and a directory with a name that
    /// is no run id, all planted in the staging root and all older than the
    /// TTL: the sweep skips them, leaves the link's target alone, and still
    /// reclaims the real expired and orphaned run directories.
    #[test]
    fn planted_entries_are_skipped_and_real_ones_still_reclaimed() {
        let (dir, home, store) = home();
        let root = home.root().join("staging");
        let planted_file = root.join("planted-file");
        std::fs::write(&planted_file, b"not a directory").expect("file");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::write(outside.join("precious"), b"keep me").expect("precious");
        // Named like a run, so only its type keeps it from being reclaimed.
        let planted_link = root.join("manual__20000101T000000_000001");
        std::os::unix::fs::symlink(&outside, &planted_link).expect("link");
        let odd = root.join("not-a-run");
        std::fs::create_dir_all(odd.join("inside")).expect("odd dir");

        let orphan = home.staging("manual__20000101T000000_0000aa");
        std::fs::create_dir_all(orphan.join("data")).expect("orphan");
        let expired_run = "backfill__20000101T000000_0000bb";
        let expired = home.staging(expired_run);
        std::fs::create_dir_all(&expired).expect("expired");
        let now = Utc::now();
        store
            .add_volume(expired_run, &expired.display().to_string(), now)
            .expect("volume");
        store.retain_volume(expired_run, now).expect("retain");
        // A retained run whose directory was swapped for a link: not followed either.
        let swapped_run = "manual__20000101T000000_0000cc";
        let swapped = home.staging(swapped_run);
        std::os::unix::fs::symlink(&outside, &swapped).expect("swap");
        store
            .add_volume(swapped_run, &swapped.display().to_string(), now)
            .expect("volume");
        store.retain_volume(swapped_run, now).expect("retain");

        let later = now + chrono::Duration::hours(2);
        let dry = sweep(&home, &store, TTL, later, true).expect("dry run");
        assert_eq!(dry.len(), 2, "{dry:?}");
        let mut done = sweep(&home, &store, TTL, later, false).expect("sweep");
        done.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        let got: Vec<(&str, &str)> = done.iter().map(|r| (r.run_id.as_str(), r.reason)).collect();
        assert_eq!(
            got,
            [
                (expired_run, reason::TTL_EXPIRED),
                ("manual__20000101T000000_0000aa", reason::ORPHANED)
            ]
        );
        assert!(!orphan.exists() && !expired.exists());
        assert!(planted_file.is_file());
        assert!(
            planted_link
                .symlink_metadata()
                .expect("link")
                .file_type()
                .is_symlink()
        );
        assert!(
            swapped
                .symlink_metadata()
                .expect("link")
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read(outside.join("precious")).expect("the link target survives"),
            b"keep me"
        );
        assert!(odd.join("inside").is_dir());
        // And again: nothing left to do, and still no failure.
        assert!(
            sweep(&home, &store, TTL, later, false)
                .expect("sweep")
                .is_empty()
        );
    }

    /// A run record the store cannot read is an error of the sweep, not a
    /// licence to delete that run's directory as an orphan.
    #[test]
    fn a_store_error_fails_the_sweep_and_deletes_nothing() {
        let (_dir, home, store) = home();
        let run_id = "manual__20000101T000000_0000dd";
        let staging = home.staging(run_id);
        std::fs::create_dir_all(&staging).expect("staging");
        let db = rusqlite::Connection::open(home.database()).expect("sqlite");
        db.execute(
            "INSERT INTO dag_runs (run_id, dag_id, version, state, logical_date, run_type, \
             interval_start, interval_end, params, staging_dir, created_at) \
             VALUES (?1, 'd', 'v', 'no-such-state', 'x', 'manual', 'x', 'x', '{}', ?2, 'x')",
            rusqlite::params![run_id, staging.display().to_string()],
        )
        .expect("insert");
        let later = Utc::now() + chrono::Duration::hours(2);
        let error = sweep(&home, &store, TTL, later, false).expect_err("a store error");
        assert!(matches!(error, StagingError::Store(_)), "{error}");
        assert!(staging.is_dir());
    }
}
