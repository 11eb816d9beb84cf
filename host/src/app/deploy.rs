//! Building plugins, deploying manifests (optionally building first) and the
//! versions of a DAG.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{App, AppError};
use crate::manifest::Manifest;
use crate::store::VersionRecord;

/// What a deployment did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployed {
    /// DAG id.
    pub dag_id: String,
    /// Version digest (sha256 hex).
    pub version: String,
    /// Version label (`git describe` or `dev-<time>`).
    pub label: String,
    /// Whether this created a new version (false: identical to an existing one).
    pub new_version: bool,
    /// Task ids whose component this deployment compiled.
    pub compiled: Vec<String>,
}

impl From<crate::registry::Deployment> for Deployed {
    fn from(d: crate::registry::Deployment) -> Self {
        Self {
            dag_id: d.dag_id,
            version: d.version,
            label: d.label,
            new_version: d.new_version,
            compiled: d.compiled,
        }
    }
}

/// A deployed version of a DAG.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionInfo {
    /// Version digest (sha256 hex).
    pub digest: String,
    /// Version label.
    pub label: String,
    /// When first deployed.
    pub created_at: DateTime<Utc>,
    /// Whether it is the DAG's current version.
    pub current: bool,
    /// How many tasks it has.
    pub tasks: usize,
    /// The manifest it was deployed from.
    pub source: String,
}

/// A step of [`App::version_to_run`], reported as it happens.
#[derive(Debug)]
pub enum DeployStep<'a> {
    /// This plugins workspace is about to be built.
    Building(&'a Path),
    /// The manifest was deployed.
    Deployed(&'a Deployed),
}

/// Compiles the plugins workspace at `plugins` to components in `<plugins>/dist`;
/// returns their paths.
pub fn build_plugins(plugins: &Path) -> Result<Vec<PathBuf>, AppError> {
    Ok(crate::plugins::build_plugins(plugins, false)?)
}

/// The plugins workspace a manifest's components are built from: the parent
/// of its plugin directory, when that holds a `Cargo.toml`.
pub fn plugins_workspace(plugin_dir: &Path) -> Result<&Path, AppError> {
    plugin_dir
        .parent()
        .filter(|p| p.join("Cargo.toml").is_file())
        .ok_or_else(|| AppError::NoPluginsWorkspace {
            plugin_dir: plugin_dir.to_owned(),
        })
}

impl App {
    /// Stores the components of the manifest at `path` (a file, or a directory
    /// holding `dag.toml`) and records the DAG version, making it current.
    pub fn deploy(&self, path: &Path) -> Result<Deployed, AppError> {
        self.deploy_manifest(&Manifest::load(path)?)
    }

    fn deploy_manifest(&self, manifest: &Manifest) -> Result<Deployed, AppError> {
        let s = &self.sluice;
        Ok(crate::registry::deploy(&s.home, &s.store, &s.engine, manifest)?.into())
    }

    /// The version a run of `target` runs: a manifest path is deployed first
    /// (with `build`, after building its plugins workspace); anything else is
    /// a deployed DAG id, whose current version it is. Steps go to `on_step`.
    pub fn version_to_run(
        &self,
        target: &str,
        build: bool,
        on_step: &mut dyn FnMut(DeployStep<'_>),
    ) -> Result<VersionRecord, AppError> {
        let path = Path::new(target);
        if !path.exists() {
            if build {
                return Err(AppError::BuildNeedsManifest(target.to_owned()));
            }
            return Ok(self.sluice.store.current_version(target)?);
        }
        let manifest = Manifest::load(path)?;
        if build {
            let workspace = plugins_workspace(&manifest.plugin_dir)?;
            on_step(DeployStep::Building(workspace));
            build_plugins(workspace)?;
        }
        let deployed = self.deploy_manifest(&manifest)?;
        on_step(DeployStep::Deployed(&deployed));
        Ok(self
            .sluice
            .store
            .version(&deployed.dag_id, &deployed.version)?)
    }

    /// Every deployed version of `dag_id`, newest first.
    pub fn versions(&self, dag_id: &str) -> Result<Vec<VersionInfo>, AppError> {
        let versions = self.sluice.store.versions(dag_id)?;
        if versions.is_empty() {
            return Err(AppError::NotDeployed(dag_id.to_owned()));
        }
        Ok(versions
            .into_iter()
            .map(|v| VersionInfo {
                tasks: v.spec.tasks.len(),
                digest: v.digest,
                label: v.label,
                created_at: v.created_at,
                current: v.current,
                source: v.source,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugins_workspace_is_the_plugin_dirs_parent_with_a_cargo_toml() {
        let root = tempfile::tempdir().expect("tempdir");
        let dist = root.path().join("plugins").join("dist");
        std::fs::create_dir_all(&dist).expect("mkdir");
        let missing = plugins_workspace(&dist).expect_err("no Cargo.toml yet");
        assert!(
            matches!(&missing, AppError::NoPluginsWorkspace { plugin_dir } if plugin_dir == &dist),
            "{missing:?}"
        );
        assert!(missing.to_string().contains("plugins/dist"), "{missing}");
        std::fs::write(root.path().join("plugins").join("Cargo.toml"), "").expect("write");
        assert_eq!(
            plugins_workspace(&dist).expect("workspace"),
            root.path().join("plugins")
        );
        assert!(
            plugins_workspace(Path::new("/")).is_err(),
            "the root has no parent"
        );
    }
}
