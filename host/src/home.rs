//! The Sluice home directory: metadatabase, blobs, the Python runtimes'
//! records, compile cache, staging.

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
            PYTHON_RUNTIMES,
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

    /// The digest of the runtime component this home runs for Python
    /// runtime key `key` (a sha256, see `python_package`), if one is recorded.
    pub fn python_runtime(&self, key: &str) -> std::io::Result<Option<String>> {
        let path = self.python_runtime_record(key);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let digest = text.trim();
        if !crate::digest::is_sha256_hex(digest) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} does not hold a sha256 digest", path.display()),
            ));
        }
        Ok(Some(digest.to_owned()))
    }

    /// Records component `digest` as the runtime for key `key`, unless one
    /// is recorded already: the first record stands for good, so every run
    /// of a package naming `key` runs the same bytes. Returns the digest
    /// recorded.
    pub fn record_python_runtime(&self, key: &str, digest: &str) -> std::io::Result<String> {
        let path = self.python_runtime_record(key);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, format!("{digest}\n"))?;
        // A hard link, unlike a rename, never replaces a record another
        // deployment made in the meantime.
        let linked = std::fs::hard_link(&tmp, &path);
        std::fs::remove_file(&tmp)?;
        match linked {
            Ok(()) => Ok(digest.to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.python_runtime(key)?.ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    fn python_runtime_record(&self, key: &str) -> PathBuf {
        self.root.join(PYTHON_RUNTIMES).join(key)
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

/// The directory of the Python runtimes' records: a file per runtime key,
/// holding the digest of the component the home runs for it.
const PYTHON_RUNTIMES: &str = "python-runtimes";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_runtime_recorded_for_a_key_stands() {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = Home::open(dir.path()).expect("home");
        let (key, first, second) = ("0a".repeat(32), "1b".repeat(32), "2c".repeat(32));
        assert_eq!(home.python_runtime(&key).expect("read"), None);
        assert_eq!(
            home.record_python_runtime(&key, &first).expect("recorded"),
            first
        );
        assert_eq!(
            home.record_python_runtime(&key, &second).expect("kept"),
            first
        );
        assert_eq!(home.python_runtime(&key).expect("read"), Some(first));

        std::fs::write(home.python_runtime_record(&key), "spoiled").expect("spoil");
        let error = home.python_runtime(&key).expect_err("refused").to_string();
        assert!(error.contains("does not hold a sha256 digest"), "{error}");
    }
}
