//! How much disk a run's staging directory holds, for the task's `staging_limit`.
//!
//! The measure is the disk actually allocated (`st_blocks`), not file lengths: a
//! sparse file counts for the blocks it has, a directory for its own blocks.
//! The tree is walked relative to directory descriptors (`openat`, `fstatat`,
//! links never followed), so no path length limit applies, and files a process
//! still holds open after they were deleted are added from `/proc/self/fd`:
//! their blocks stay allocated until the last descriptor closes. A file with
//! several hard links under staging counts once.

use std::collections::HashSet;
use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

/// Deepest nesting measured below the staging directory. The walk holds one
/// descriptor per level, so a deeper tree is refused (the try is stopped)
/// rather than measured; no task has a use for 256 nested directories.
pub const MAX_DEPTH: usize = 256;

/// Bytes in a `st_blocks` unit (always 512 on Linux, whatever the block size).
const BLOCK_UNIT: u64 = 512;

/// Why the staging directory could not be measured. The executor stops the
/// try with it: a limit that cannot be checked is not kept.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The staging directory itself could not be opened.
    #[error("cannot open the run's staging directory {path}: {source}")]
    Root {
        /// The staging directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// An entry under it could not be read.
    #[error("cannot measure `{name}`, {depth} levels under the run's staging directory: {source}")]
    Entry {
        /// The entry's name (within its directory).
        name: String,
        /// How many directories below staging it is.
        depth: usize,
        /// The error.
        source: std::io::Error,
    },
    /// The tree is deeper than [`MAX_DEPTH`].
    #[error(
        "the run's staging directory is nested deeper than {max} directories (at `{name}`); deeper trees are refused",
        max = MAX_DEPTH
    )]
    TooDeep {
        /// The first directory past the limit.
        name: String,
    },
    /// This process's open descriptors could not be listed.
    #[error("cannot list this process's open files in /proc/self/fd: {0}")]
    OpenFiles(std::io::Error),
}

/// Why a try is stopped by its `staging_limit`.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The directory holds more than the limit.
    #[error(
        "the run's staging directory holds {held} bytes, over the task's staging_limit of {limit} bytes"
    )]
    Over {
        /// Bytes held.
        held: u64,
        /// The limit.
        limit: u64,
    },
    /// It could not be measured.
    #[error("the task's staging_limit cannot be checked: {0}")]
    Unmeasured(#[from] UsageError),
}

/// Checks that `dir` holds at most `limit` bytes; returns what it holds.
pub fn within_limit(dir: &Path, limit: u64) -> Result<u64, LimitError> {
    let held = bytes_held(dir)?;
    if held > limit {
        return Err(LimitError::Over { held, limit });
    }
    Ok(held)
}

/// Bytes of disk held by `dir`: the blocks allocated to everything under it
/// (itself included), plus those of files under it that were deleted while
/// this process still holds them open.
pub fn bytes_held(dir: &Path) -> Result<u64, UsageError> {
    let mut seen = HashSet::new();
    let tree = tree_bytes(dir, &mut seen)?;
    let deleted = deleted_open_bytes(dir, &mut seen)?;
    Ok(tree + deleted)
}

fn blocks(stat: &Stat) -> u64 {
    u64::try_from(stat.st_blocks).map_or(0, |b| b.saturating_mul(BLOCK_UNIT))
}

/// Whether an error means the entry changed under the walk (removed, or
/// swapped for something else): skipped, as if the walk had come a moment later.
fn vanished(e: Errno) -> bool {
    matches!(e, Errno::NOENT | Errno::NOTDIR | Errno::LOOP)
}

fn name_of(name: &CStr) -> String {
    name.to_string_lossy().into_owned()
}

fn open_dir(at: impl AsFd, name: impl rustix::path::Arg) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The blocks of the tree under `dir`, walked through directory descriptors.
fn tree_bytes(dir: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<u64, UsageError> {
    let root_error = |e: Errno| UsageError::Root {
        path: dir.display().to_string(),
        source: e.into(),
    };
    let root = rustix::fs::openat(
        rustix::fs::CWD,
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(root_error)?;
    let mut total = blocks(&rustix::fs::fstat(&root).map_err(root_error)?);
    let mut stack = vec![Dir::new(root).map_err(root_error)?];
    loop {
        let depth = stack.len();
        let Some(current) = stack.last_mut() else {
            break;
        };
        let entry_error = |name: &CStr, e: Errno| UsageError::Entry {
            name: name_of(name),
            depth,
            source: e.into(),
        };
        let entry = match current.read() {
            None => {
                stack.pop();
                continue;
            }
            Some(Err(e)) if vanished(e) => {
                stack.pop();
                continue;
            }
            Some(Err(e)) => return Err(entry_error(c".", e)),
            Some(Ok(entry)) => entry,
        };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let at = current.fd().map_err(|e| entry_error(name, e))?;
        let stat = match rustix::fs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(e) if vanished(e) => continue,
            Err(e) => return Err(entry_error(name, e)),
        };
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            // A file with several links counts once.
            if stat.st_nlink > 1 && !seen.insert((stat.st_dev, stat.st_ino)) {
                continue;
            }
            total += blocks(&stat);
            continue;
        }
        if depth >= MAX_DEPTH {
            return Err(UsageError::TooDeep {
                name: name_of(name),
            });
        }
        let child = match open_dir(at, name) {
            Ok(fd) => fd,
            Err(e) if vanished(e) => continue,
            Err(e) => return Err(entry_error(name, e)),
        };
        // Count the directory that was opened, not the one stat saw.
        total += blocks(&rustix::fs::fstat(&child).map_err(|e| entry_error(name, e))?);
        stack.push(Dir::new(child).map_err(|e| entry_error(name, e))?);
    }
    Ok(total)
}

/// The blocks of files this process holds open that were deleted from under
/// `dir` (link count 0). The kernel names an open file by its last path, with
/// " (deleted)" appended; each candidate is reopened through its `/proc` link
/// and its path read again from the new descriptor, so a descriptor number
/// reused meanwhile cannot be misread.
fn deleted_open_bytes(dir: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<u64, UsageError> {
    let mut prefix = dir.as_os_str().as_bytes().to_vec();
    if !prefix.ends_with(b"/") {
        prefix.push(b'/');
    }
    let under = |target: &[u8]| target.starts_with(&prefix) && target.ends_with(b" (deleted)");
    let listing_error = |e: Errno| UsageError::OpenFiles(e.into());
    let fds = open_dir(rustix::fs::CWD, "/proc/self/fd").map_err(listing_error)?;
    let mut listing = Dir::new(fds).map_err(listing_error)?;
    let mut total = 0;
    while let Some(entry) = listing.read() {
        let entry = entry.map_err(listing_error)?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let fds = listing.fd().map_err(listing_error)?;
        match rustix::fs::readlinkat(fds, name, Vec::new()) {
            Ok(target) if under(target.as_bytes()) => {}
            Ok(_) => continue,
            // Closed meanwhile; or a path longer than the kernel can name,
            // which cannot be told apart from another run's (see SECURITY.md).
            Err(Errno::NOENT | Errno::NAMETOOLONG) => continue,
            Err(e) => return Err(open_file_error(name, e)),
        }
        let file =
            match rustix::fs::openat(fds, name, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()) {
                Ok(file) => file,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(open_file_error(name, e)),
            };
        let again = format!("/proc/self/fd/{}", file.as_raw_fd());
        match rustix::fs::readlink(again.as_str(), Vec::new()) {
            Ok(target) if under(target.as_bytes()) => {}
            // The descriptor number was reused for another file meanwhile.
            Ok(_) | Err(Errno::NAMETOOLONG) => continue,
            Err(e) => return Err(open_file_error(name, e)),
        }
        let stat = rustix::fs::fstat(&file).map_err(|e| open_file_error(name, e))?;
        if stat.st_nlink == 0
            && FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
            && seen.insert((stat.st_dev, stat.st_ino))
        {
            total += blocks(&stat);
        }
    }
    Ok(total)
}

fn open_file_error(fd: &CStr, e: Errno) -> UsageError {
    UsageError::OpenFiles(std::io::Error::other(format!(
        "descriptor {}: {}",
        name_of(fd),
        std::io::Error::from(e)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: u64 = 1 << 20;

    fn new_staging() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let staging = dir.path().join("run");
        std::fs::create_dir(&staging).expect("mkdir staging");
        let staging = staging.canonicalize().expect("canonical");
        (dir, staging)
    }

    /// Writes `bytes` of non-zero data (so blocks are allocated) and syncs.
    fn fill(file: &mut std::fs::File, bytes: u64) {
        let chunk = vec![7u8; MIB as usize];
        for _ in 0..bytes / MIB {
            file.write_all(&chunk).expect("write");
        }
        file.sync_all().expect("sync");
    }

    #[test]
    fn counts_files_under_a_path_longer_than_path_max() {
        let (_dir, staging) = new_staging();
        // 30 levels of 200-byte names: the file's path is over 6,000 bytes.
        let name = "d".repeat(200);
        let mut at = open_dir(rustix::fs::CWD, staging.as_path()).expect("open staging");
        for _ in 0..30 {
            rustix::fs::mkdirat(&at, name.as_str(), Mode::from_bits_truncate(0o755))
                .expect("mkdirat");
            at = rustix::fs::openat(&at, name.as_str(), OFlags::DIRECTORY, Mode::empty())
                .expect("openat");
        }
        let fd = rustix::fs::openat(
            &at,
            "deep.bin",
            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .expect("create the deep file");
        let mut file = std::fs::File::from(fd);
        fill(&mut file, 8 * MIB);
        let deep = staging.join(
            std::iter::repeat_n(name.as_str(), 30)
                .collect::<Vec<_>>()
                .join("/"),
        );
        assert!(deep.as_os_str().len() > 4096);
        assert!(
            std::fs::metadata(deep.join("deep.bin")).is_err(),
            "the path is expected to be too long for path-based calls"
        );
        let held = bytes_held(&staging).expect("measured");
        assert!(held >= 8 * MIB, "{held} bytes seen under a deep path");
    }

    #[test]
    fn counts_a_deleted_file_still_open() {
        let (_dir, staging) = new_staging();
        let path = staging.join("gone.bin");
        let mut file = std::fs::File::create(&path).expect("create");
        fill(&mut file, 8 * MIB);
        std::fs::remove_file(&path).expect("unlink while open");
        let held = bytes_held(&staging).expect("measured");
        assert!(
            held >= 8 * MIB,
            "{held} bytes seen with a deleted open file"
        );
        drop(file);
        let held = bytes_held(&staging).expect("measured");
        assert!(held < MIB, "{held} bytes seen after the file was closed");
    }

    #[test]
    fn deleted_open_files_count_for_their_own_directory_only() {
        let (_dir, staging) = new_staging();
        let (_other_dir, other) = new_staging();
        let path = other.join("theirs.bin");
        let mut file = std::fs::File::create(&path).expect("create");
        fill(&mut file, 4 * MIB);
        std::fs::remove_file(&path).expect("unlink");
        let held = bytes_held(&staging).expect("measured");
        assert!(
            held < MIB,
            "another directory's deleted file counted: {held}"
        );
        assert!(bytes_held(&other).expect("measured") >= 4 * MIB);
    }

    #[test]
    fn links_are_not_followed() {
        let (dir, staging) = new_staging();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir outside");
        let mut big = std::fs::File::create(outside.join("big.bin")).expect("create");
        fill(&mut big, 8 * MIB);
        std::os::unix::fs::symlink(&outside, staging.join("dir-link")).expect("dir link");
        std::os::unix::fs::symlink(outside.join("big.bin"), staging.join("file-link"))
            .expect("file link");
        let held = bytes_held(&staging).expect("measured");
        assert!(held < MIB, "a link was followed: {held} bytes");
    }

    #[test]
    fn sparse_files_count_their_allocated_blocks() {
        let (_dir, staging) = new_staging();
        let file = std::fs::File::create(staging.join("sparse.bin")).expect("create");
        file.set_len(1 << 30).expect("sparse length");
        let held = bytes_held(&staging).expect("measured");
        assert!(held < MIB, "{held} bytes for a sparse file with no blocks");
    }

    #[test]
    fn hard_links_count_once() {
        let (_dir, staging) = new_staging();
        let mut file = std::fs::File::create(staging.join("a.bin")).expect("create");
        fill(&mut file, 4 * MIB);
        std::fs::hard_link(staging.join("a.bin"), staging.join("b.bin")).expect("hard link");
        let held = bytes_held(&staging).expect("measured");
        assert!((4 * MIB..6 * MIB).contains(&held), "{held} bytes");
    }

    #[test]
    fn a_tree_deeper_than_the_limit_is_refused() {
        let (_dir, staging) = new_staging();
        let mut at = open_dir(rustix::fs::CWD, staging.as_path()).expect("open staging");
        for _ in 0..=MAX_DEPTH {
            rustix::fs::mkdirat(&at, "d", Mode::from_bits_truncate(0o755)).expect("mkdirat");
            at = rustix::fs::openat(&at, "d", OFlags::DIRECTORY, Mode::empty()).expect("openat");
        }
        let error = bytes_held(&staging).expect_err("too deep");
        assert!(matches!(error, UsageError::TooDeep { .. }), "{error}");
        let limit = within_limit(&staging, u64::MAX).expect_err("unmeasured");
        assert!(
            limit
                .to_string()
                .contains("staging_limit cannot be checked"),
            "{limit}"
        );
    }

    #[test]
    fn the_limit_error_names_both_figures() {
        let (_dir, staging) = new_staging();
        let mut file = std::fs::File::create(staging.join("a.bin")).expect("create");
        fill(&mut file, 2 * MIB);
        let error = within_limit(&staging, MIB).expect_err("over");
        assert!(
            error
                .to_string()
                .ends_with(&format!("over the task's staging_limit of {MIB} bytes")),
            "{error}"
        );
        assert!(within_limit(&staging, 64 * MIB).is_ok());
    }
}
