//! Python tasks as data (a leaf: the build writes packages, the registry,
//! the engine and the workers read them). `sluice build` compiles one runtime component per
//! componentize-py version and Python SDK (the interpreter with the SDK
//! imported, exporting the task world and importing `python-code`,
//! `wit/python.wit`); a Python task is a [`PythonPackage`]: its module name,
//! its `.py` sources and the runtime's key ([`read_stored`] reads one from
//! the blob store).
//!
//! A runtime is named by its key, the sha256 of what it is built from
//! (componentize-py's version, the SDK, the WIT), not by its bytes:
//! componentize-py's builds of the same inputs differ (its snapshot holds
//! OS randomness), and naming the bytes would give every clean checkout new
//! package digests for unchanged sources. A home records the first runtime
//! component deployed for a key and runs that one for every package naming
//! it (`Home::python_runtime`), so a run still traces to exact bytes:
//! version, package, key, recorded component.
//!
//! The engine prepares a package by preparing its runtime (compiled once,
//! shared by every Python task of the process) and hands the sources to
//! each instance through `python-code`. A package is deterministic JSON
//! (sources sorted by path, nothing else varies), so its digest, which a DAG
//! version records, is the same wherever unchanged sources are built.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a package's bytes start with, whatever its format version: its
/// `format` field, first.
const MAGIC: &[u8] = b"{\"format\":\"sluice-python-task/";

/// The package format this host reads and writes. (Format 1 named its
/// runtime by the component's digest; its packages are refused with a
/// request to rebuild.)
pub const FORMAT: &str = "sluice-python-task/2";

/// The file extension of a Python task in `plugins/dist/` (`<name>.pytask`).
pub const EXTENSION: &str = "pytask";

/// The directory of `plugins/dist/` holding runtime components, by key
/// (`python-runtime/<key>.wasm`).
pub const RUNTIME_DIR: &str = "python-runtime";

/// A deployed Python task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonPackage {
    /// Always [`FORMAT`].
    pub format: String,
    /// The key of the runtime that runs it: sha256 of the runtime's build
    /// inputs (see the module documentation).
    pub runtime_key: String,
    /// The module holding the `@task` function.
    pub module: String,
    /// Its `.py` files, sorted by path.
    pub sources: Vec<SourceFile>,
}

/// One source file of a Python task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    /// Relative, `/`-separated (`pkg/util.py`).
    pub path: String,
    /// The file's text.
    pub text: String,
}

impl SourceFile {
    /// The file at `path` with `text`.
    pub fn new(path: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            text: text.into(),
        }
    }
}

/// Why bytes are not a Python package.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Not the JSON of a package.
    #[error("not a Python task package: {0}")]
    Json(#[from] serde_json::Error),
    /// A package whose fields are wrong.
    #[error("Python task package: {0}")]
    Invalid(String),
}

/// Why a package stored under its digest cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StoredPackageError {
    /// Reading the file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Its bytes are not those of its digest.
    #[error("the stored package does not match its digest")]
    Tampered,
    /// Its bytes are not a valid package.
    #[error(transparent)]
    Package(#[from] PackageError),
}

/// The package stored at `blob` under `digest`, if the file is one: `None`
/// for a component or no file, read no further than its start. A package's
/// bytes must match `digest`.
pub fn read_stored(blob: &Path, digest: &str) -> Result<Option<PythonPackage>, StoredPackageError> {
    let mut file = match std::fs::File::open(blob) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = Vec::with_capacity(MAGIC.len());
    file.by_ref()
        .take(MAGIC.len() as u64)
        .read_to_end(&mut bytes)?;
    if !PythonPackage::is_package(&bytes) {
        return Ok(None);
    }
    file.read_to_end(&mut bytes)?;
    if crate::digest::sha256_hex(&bytes) != digest {
        return Err(StoredPackageError::Tampered);
    }
    Ok(Some(PythonPackage::parse(&bytes)?))
}

impl PythonPackage {
    /// A package of `sources` (sorted here) run by the runtime of key
    /// `runtime_key`.
    pub fn new(runtime_key: &str, module: &str, mut sources: Vec<SourceFile>) -> Self {
        sources.sort_by(|a, b| a.path.cmp(&b.path));
        Self {
            format: FORMAT.to_owned(),
            runtime_key: runtime_key.to_owned(),
            module: module.to_owned(),
            sources,
        }
    }

    /// Whether `bytes` (the start of a file will do) are a package rather
    /// than a component.
    pub fn is_package(bytes: &[u8]) -> bool {
        bytes.starts_with(MAGIC)
    }

    /// The bytes of this package: the same for the same runtime, module and
    /// sources, whatever order they were listed in.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes =
            serde_json::to_vec(self).expect("a package is strings and lists of strings");
        bytes.push(b'\n');
        bytes
    }

    /// Reads and checks a package.
    pub fn parse(bytes: &[u8]) -> Result<Self, PackageError> {
        /// The format alone, read before the fields it decides.
        #[derive(Deserialize)]
        struct Format {
            format: String,
        }
        let invalid = |m: String| Err(PackageError::Invalid(m));
        let Format { format } = serde_json::from_slice(bytes)?;
        if format != FORMAT {
            return invalid(format!(
                "format {format:?}; this host reads {FORMAT:?}: build the task again with `sluice build` and deploy it"
            ));
        }
        let package: Self = serde_json::from_slice(bytes)?;
        if !crate::digest::is_sha256_hex(&package.runtime_key) {
            return invalid(format!(
                "runtime key {:?} is not a sha256 digest",
                package.runtime_key
            ));
        }
        if !package.sources.is_sorted_by(|a, b| a.path < b.path) {
            return invalid("its sources are not sorted by path, each once".into());
        }
        if let Some(bad) = package.sources.iter().find(|s| {
            !s.path.ends_with(".py")
                || s.path
                    .split('/')
                    .any(|part| part.is_empty() || part == "." || part == "..")
        }) {
            return invalid(format!(
                "source path {:?} is not a relative path of a .py file",
                bad.path
            ));
        }
        Ok(package)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_is_the_same_bytes_whatever_the_order_of_its_sources() {
        let runtime = "ab".repeat(32);
        let a = PythonPackage::new(
            &runtime,
            "main",
            vec![
                SourceFile::new("pkg/util.py", "X = 1\n"),
                SourceFile::new("main.py", "import pkg.util\n"),
            ],
        );
        let b = PythonPackage::new(
            &runtime,
            "main",
            vec![
                SourceFile::new("main.py", "import pkg.util\n"),
                SourceFile::new("pkg/util.py", "X = 1\n"),
            ],
        );
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert!(PythonPackage::is_package(&a.to_bytes()));
        assert!(!PythonPackage::is_package(b"\0asm\x0d\0\x01\0"));
        assert_eq!(PythonPackage::parse(&a.to_bytes()).expect("parses"), a);
    }

    #[test]
    fn a_stored_package_is_read_only_when_it_is_one_and_its_digest_holds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let package = PythonPackage::new(&"ab".repeat(32), "m", vec![SourceFile::new("m.py", "")]);
        let bytes = package.to_bytes();
        let digest = crate::digest::sha256_hex(&bytes);
        let blob = dir.path().join("blob");
        assert!(read_stored(&blob, &digest).expect("no file").is_none());
        std::fs::write(&blob, b"\0asm\x0d\0\x01\0 a component").expect("write");
        assert!(read_stored(&blob, &digest).expect("a component").is_none());
        std::fs::write(&blob, &bytes).expect("write");
        assert_eq!(read_stored(&blob, &digest).expect("read"), Some(package));
        let error = read_stored(&blob, &"cd".repeat(32)).expect_err("refused");
        assert!(matches!(error, StoredPackageError::Tampered), "{error}");
    }

    #[test]
    fn a_package_with_a_bad_runtime_or_path_is_refused() {
        let mut package =
            PythonPackage::new(&"cd".repeat(32), "m", vec![SourceFile::new("m.py", "")]);
        package.runtime_key = "not-a-digest".into();
        let error = PythonPackage::parse(&package.to_bytes()).expect_err("refused");
        assert!(error.to_string().contains("not a sha256 digest"), "{error}");

        let mut package = PythonPackage::new(&"cd".repeat(32), "m", vec![]);
        package.format = "sluice-python-task/1".into();
        let bytes = package.to_bytes();
        assert!(PythonPackage::is_package(&bytes));
        let error = PythonPackage::parse(&bytes).expect_err("refused");
        assert!(error.to_string().contains("`sluice build`"), "{error}");

        let package = PythonPackage::new(
            &"cd".repeat(32),
            "m",
            vec![SourceFile::new("../escape.py", "")],
        );
        let error = PythonPackage::parse(&package.to_bytes()).expect_err("refused");
        assert!(error.to_string().contains("\"../escape.py\""), "{error}");

        let mut package = PythonPackage::new(&"cd".repeat(32), "m", vec![]);
        package.sources = vec![SourceFile::new("b.py", ""), SourceFile::new("a.py", "")];
        let error = PythonPackage::parse(&package.to_bytes()).expect_err("refused");
        assert!(error.to_string().contains("not sorted"), "{error}");
    }
}
