//! The Sluice home directory: metadatabase, blobs, compile cache, staging.

use std::path::{Path, PathBuf};

/// Paths inside a Sluice home (`SLUICE_HOME`, default: the user's data dir).
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// Opens (creating if needed) the home at `root`.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        for dir in [
            "blobs/sha256",
            "cache/compiled",
            "cache/functions",
            "staging",
        ] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        // Canonical, so that the staging paths given to the guest and to DuckDB
        // (which resolves symlinks before its allow-list check) are the real ones.
        let root = root.canonicalize()?;
        restrict_to_owner(&root)?;
        Ok(Self { root })
    }

    /// `$SLUICE_HOME`, else `<data dir>/sluice`.
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("SLUICE_HOME") {
            return PathBuf::from(dir);
        }
        directories::ProjectDirs::from("", "", "sluice")
            .map_or_else(|| PathBuf::from(".sluice"), |d| d.data_dir().to_path_buf())
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite metadatabase.
    pub fn database(&self) -> PathBuf {
        self.root.join("sluice.db")
    }

    /// Where component `digest` is stored.
    pub fn blob(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(digest)
    }

    /// The compiled-code cache.
    pub fn compile_cache(&self) -> PathBuf {
        self.root.join("cache/compiled")
    }

    /// Cranelift's cache of compiled functions, shared by every component.
    pub fn function_cache(&self) -> PathBuf {
        self.root.join("cache/functions")
    }

    /// The staging directory of run `run_id`.
    pub fn staging(&self, run_id: &str) -> PathBuf {
        self.root.join("staging").join(run_id)
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader
/// never sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// A 32-byte key written as 64 hex digits (surrounding whitespace allowed), as
/// the key files in the home hold them; `None` if `text` is anything else.
pub fn decode_key(text: &str) -> Option<[u8; 32]> {
    hex::decode(text.trim()).ok()?.try_into().ok()
}

#[cfg(unix)]
fn restrict_to_owner(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn restrict_to_owner(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}
