//! [`AppError`]: why an application-layer operation failed. Errors of the
//! library pass through unchanged (their message and their cause); the
//! variants of its own say what the application refused and why.

use std::path::PathBuf;
use std::time::Duration;

use super::connections::ConnectionInputError;

/// Why an operation of the application layer failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A worker could not serve its try.
    #[error(transparent)]
    Worker(#[from] crate::executor::worker::WorkerError),
    /// A Kubernetes pod's worker could not serve its try.
    #[error(transparent)]
    PodWorker(#[from] crate::executor::kubernetes::pod_worker::PodWorkerError),
    /// The Sluice home could not be opened.
    #[error(transparent)]
    Open(#[from] crate::runtime::OpenError),
    /// Tasks cannot be confined and the operator did not allow running them unconfined.
    #[error(transparent)]
    Sandbox(#[from] crate::confine::ConfineError),
    /// The manifest is wrong.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// Building the plugins workspace failed.
    #[error(transparent)]
    Build(#[from] crate::plugins::BuildError),
    /// Deploying failed.
    #[error(transparent)]
    Deploy(#[from] crate::registry::DeployError),
    /// The metadatabase failed, or holds no such record.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A key, a signature or the signature policy refused.
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    /// A run could not be carried out, resumed or cleared.
    #[error(transparent)]
    Run(#[from] crate::scheduler::RunError),
    /// A stored connection could not be added or read.
    #[error(transparent)]
    Connection(#[from] crate::connections::ConnectionError),
    /// The definition of a new connection is incomplete or contradictory.
    #[error(transparent)]
    ConnectionInput(#[from] ConnectionInputError),
    /// The vault refused.
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    /// The staging sweep failed.
    #[error(transparent)]
    Staging(#[from] crate::staging::StagingError),
    /// A date given for a backfill does not parse in the DAG's time zone.
    #[error("{source}")]
    InvalidDate {
        /// The date as given.
        text: String,
        /// What is wrong with it.
        source: crate::schedule::ScheduleError,
    },
    /// A DAG id that has no deployed version.
    #[error("DAG `{0}` has not been deployed")]
    NotDeployed(String),
    /// A task id that is not in the run.
    #[error("run `{run_id}` has no task `{task_id}`")]
    NoSuchTask {
        /// Run id.
        run_id: String,
        /// Task id.
        task_id: String,
    },
    /// A version that `dag_id` does not have (or a prefix matching several).
    #[error("DAG `{dag_id}` has {} version `{version}`", if *.ambiguous { "more than one" } else { "no" })]
    NoSuchVersion {
        /// DAG id.
        dag_id: String,
        /// The digest (or prefix) asked for.
        version: String,
        /// Whether the prefix matched several versions.
        ambiguous: bool,
    },
    /// A request a front end parsed is out of range or contradictory.
    #[error("{field}: {reason}")]
    InvalidInput {
        /// The field (parameter, body field) that is wrong.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Revoking a token that does not exist.
    #[error("no API token `{0}`")]
    NoSuchToken(String),
    /// The system's random number source failed.
    #[error("cannot read random bytes from the system: {0}")]
    Random(String),
    /// Removing a key that is not trusted.
    #[error("`{0}` is not trusted")]
    NotTrusted(String),
    /// Building first was asked for a deployed DAG id, not a manifest.
    #[error("--build needs a manifest path; `{0}` is not one")]
    BuildNeedsManifest(String),
    /// The manifest's plugin directory has no Cargo workspace next to it.
    #[error("no plugins workspace (Cargo.toml) next to {}", .plugin_dir.display())]
    NoPluginsWorkspace {
        /// The manifest's plugin directory.
        plugin_dir: PathBuf,
    },
    /// A thread of the blocking pool doing part of an operation failed.
    #[error("{what}: the worker thread failed: {reason}")]
    WorkerThread {
        /// What it was doing.
        what: &'static str,
        /// How it failed (panicked, cancelled).
        reason: String,
    },
    /// The staging TTL reaches past the dates this host can represent.
    #[error("the staging TTL {} is too long", humantime::format_duration(*.ttl))]
    TtlTooLong {
        /// The TTL given.
        ttl: Duration,
    },
}

/// What kind of refusal an [`AppError`] is, for a front end to map (the HTTP
/// API to a status code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Something named does not exist (a DAG, version, run, task, connection, key).
    NotFound,
    /// The input is malformed or out of range.
    Invalid,
    /// The input is well-formed but the current state forbids it (a running
    /// run cannot be cleared, a signature policy refuses).
    Conflict,
    /// The host cannot do it at all (tasks cannot be confined).
    Unavailable,
    /// The host failed (the metadatabase, the file system).
    Internal,
}

impl AppError {
    /// What kind of refusal this is.
    pub fn kind(&self) -> ErrorKind {
        use crate::connections::ConnectionError;
        use crate::scheduler::RunError;
        use crate::store::StoreError;
        match self {
            Self::NotDeployed(_)
            | Self::NoSuchTask { .. }
            | Self::NoSuchVersion { .. }
            | Self::NotTrusted(_)
            | Self::NoSuchToken(_)
            | Self::Store(StoreError::NotFound(_))
            | Self::Run(RunError::Store(StoreError::NotFound(_)))
            | Self::Connection(ConnectionError::NotFound(_)) => ErrorKind::NotFound,
            Self::InvalidInput { .. }
            | Self::InvalidDate { .. }
            | Self::ConnectionInput(_)
            | Self::Manifest(_)
            | Self::BuildNeedsManifest(_)
            | Self::Connection(ConnectionError::Invalid { .. }) => ErrorKind::Invalid,
            Self::Run(RunError::Invalid(_) | RunError::Clear { .. } | RunError::Trust(_))
            | Self::Trust(_)
            | Self::Connection(ConnectionError::Exists(_)) => ErrorKind::Conflict,
            Self::Sandbox(_) | Self::Run(RunError::Executor(_)) => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }
}
