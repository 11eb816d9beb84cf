//! Content-addressed deployment: components stored as `blobs/sha256/<hex>`, DAG
//! versions identified by the sha256 of their canonical spec.
//!
//! A Python task (`<name>.pytask`, a [`PythonPackage`]) is stored the same
//! way; its package's digest is what the version records. The runtime
//! component it names by key (`<plugin_dir>/python-runtime/<key>.wasm`) is
//! stored and recorded for that key the first time the home sees the key;
//! later builds for the same key are not stored (see `python_package`).

use std::path::{Path, PathBuf};

use crate::engine::{Engine, EngineError};
use crate::home::{Home, write_atomically};
use crate::manifest::{Manifest, ManifestError};
use crate::python_package::{self, PythonPackage};
use crate::store::{Store, StoreError};

/// Re-exported where deployment names what it stores.
pub use crate::digest::sha256_hex;

/// Why a deployment failed. Nothing is recorded when it does.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The manifest or one of its tasks is wrong.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The metadatabase failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing a blob failed.
    #[error("cannot store component {path}: {source}")]
    Blob {
        /// The blob path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The DAG's canonical JSON (what its version digest covers) could not be made.
    #[error("cannot serialize DAG `{dag_id}` for its version digest: {source}")]
    Canonical {
        /// DAG id.
        dag_id: String,
        /// The error.
        source: serde_json::Error,
    },
}

/// The result of a deployment.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// DAG id.
    pub dag_id: String,
    /// Version digest (sha256 hex).
    pub version: String,
    /// Version label.
    pub label: String,
    /// Whether this created a new version (false: identical to an existing one).
    pub new_version: bool,
    /// Task ids whose component was compiled by this deployment.
    pub compiled: Vec<String>,
}

/// Deploys `manifest`: stores its components, compiles what is not cached, and
/// records the DAG version (making it current).
pub fn deploy(
    home: &Home,
    store: &Store,
    engine: &Engine,
    manifest: &Manifest,
) -> Result<Deployment, DeployError> {
    let mut spec = manifest.spec.clone();
    let mut compiled = Vec::new();
    for task in &mut spec.tasks {
        let source = find_plugin(&manifest.plugin_dir, &task.plugin)
            .map_err(|e| manifest.task_error(&task.id, e.to_string()))?;
        let bytes = std::fs::read(&source).map_err(|e| {
            manifest.task_error(&task.id, format!("cannot read {}: {e}", source.display()))
        })?;
        // A Python task's first deployment in a home compiles its runtime.
        let runtime_compiled = if PythonPackage::is_package(&bytes) {
            store_runtime(home, engine, &manifest.plugin_dir, &bytes)
                .map_err(|e| manifest.task_error(&task.id, format!("{}: {e}", source.display())))?
        } else {
            false
        };
        let digest = sha256_hex(&bytes);
        let blob = home.blob(&digest);
        store_blob(&blob, &bytes)?;
        let plugin = format!("plugin `{}` ({})", task.plugin, source.display());
        let prepared = engine.prepare(&digest, &blob).map_err(|e| match e {
            EngineError::NotAComponent { message, .. } => {
                manifest.task_error(&task.id, format!("{plugin} {message}"))
            }
            EngineError::WrongWorld { message, .. } => manifest.task_error(
                &task.id,
                format!("{plugin} does not implement the sluice:task/task world: {message}"),
            ),
            other => manifest.task_error(&task.id, other.to_string()),
        })?;
        if prepared.compiled || runtime_compiled {
            compiled.push(task.id.clone());
        }
        task.component = digest;
    }
    let canonical = spec
        .canonical_json()
        .map_err(|source| DeployError::Canonical {
            dag_id: spec.id.clone(),
            source,
        })?;
    let version = sha256_hex(canonical.as_bytes());
    let label = version_label(&manifest.path);
    let source = manifest.path.display().to_string();
    let new_version = store.record_version(&version, &label, &spec, &source)?;
    Ok(Deployment {
        dag_id: spec.id,
        version,
        label,
        new_version,
        compiled,
    })
}

/// Writes `bytes` to `blob` unless it is there (its name is its digest).
fn store_blob(blob: &Path, bytes: &[u8]) -> Result<(), DeployError> {
    if blob.exists() {
        return Ok(());
    }
    write_atomically(blob, bytes).map_err(|source| DeployError::Blob {
        path: blob.to_owned(),
        source,
    })
}

/// Makes sure the home has a runtime for the key Python task `package`
/// names: if none is recorded, stores
/// `<plugin_dir>/python-runtime/<key>.wasm` and, once `engine` has
/// prepared it (a record stands for good), records it for the key. Returns
/// whether preparing it compiled it.
fn store_runtime(
    home: &Home,
    engine: &Engine,
    plugin_dir: &Path,
    package: &[u8],
) -> Result<bool, String> {
    let package = PythonPackage::parse(package).map_err(|e| e.to_string())?;
    let key = &package.runtime_key;
    let recorded = home
        .python_runtime(key)
        .map_err(|e| format!("cannot read the home's record of Python runtime {key}: {e}"))?;
    if let Some(digest) = recorded {
        let blob = home.blob(&digest);
        return if blob.is_file() {
            Ok(false)
        } else {
            Err(format!(
                "the home runs component {digest} for Python runtime {key}, and {} is missing",
                blob.display()
            ))
        };
    }
    let path = plugin_dir
        .join(python_package::RUNTIME_DIR)
        .join(format!("{key}.wasm"));
    let bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "cannot read its Python runtime {} ({e}); `sluice build` builds it",
            path.display()
        )
    })?;
    let digest = sha256_hex(&bytes);
    let blob = home.blob(&digest);
    store_blob(&blob, &bytes).map_err(|e| e.to_string())?;
    let prepared = engine
        .prepare(&digest, &blob)
        .map_err(|e| format!("its Python runtime {}: {e}", path.display()))?;
    if prepared.python.is_some() {
        return Err(format!(
            "its Python runtime {} is a Python task package, not a runtime component",
            path.display()
        ));
    }
    home.record_python_runtime(key, &digest)
        .map_err(|e| format!("cannot record Python runtime {key}: {e}"))?;
    Ok(prepared.compiled)
}

/// A plugin a manifest names that is not built.
#[derive(Debug, thiserror::Error)]
#[error(
    "plugin `{name}` not found: no {} (available: {available}); `sluice build` builds plugins/",
    path.display()
)]
struct PluginNotFound {
    name: String,
    path: PathBuf,
    /// The plugins that are there, or `none`.
    available: String,
}

/// `<dir>/<name>.pytask` (a Python task), else `<dir>/<name>.wasm`, also
/// trying `-` as `_` (cargo's file names).
fn find_plugin(dir: &Path, name: &str) -> Result<PathBuf, PluginNotFound> {
    let candidates = [
        format!("{name}.{}", python_package::EXTENSION),
        format!("{name}.wasm"),
        format!("{}.wasm", name.replace('-', "_")),
    ];
    if let Some(found) = candidates.iter().map(|c| dir.join(c)).find(|p| p.is_file()) {
        return Ok(found);
    }
    let mut available: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let (stem, extension) = name.rsplit_once('.')?;
            ["wasm", python_package::EXTENSION]
                .contains(&extension)
                .then(|| stem.to_owned())
        })
        .collect();
    available.sort();
    let available = if available.is_empty() {
        "none".to_owned()
    } else {
        available.join(", ")
    };
    Err(PluginNotFound {
        name: name.to_owned(),
        path: dir.join(&candidates[1]),
        available,
    })
}

/// `git describe --always --dirty` of the manifest's directory, else `dev-<timestamp>`.
fn version_label(manifest: &Path) -> String {
    let dir = manifest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--tags"])
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("dev-{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ")))
}
