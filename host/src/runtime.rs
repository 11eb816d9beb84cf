//! [`Sluice`]: one handle on a Sluice home (metadatabase, blobs, engine).

use std::path::Path;
use std::sync::Arc;

use crate::capabilities::SqlPool;
use crate::confine::Sandbox;
use crate::engine::{Engine, EngineError};
use crate::home::Home;
use crate::store::{Store, StoreError};

/// Why a Sluice home could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory could not be created or read.
    #[error("Sluice home {path}: {source}")]
    Home {
        /// The home.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The metadatabase could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A Sluice home opened for use.
pub struct Sluice {
    /// Paths.
    pub home: Home,
    /// The metadatabase.
    pub store: Arc<Store>,
    /// The wasmtime engine.
    pub engine: Arc<Engine>,
    /// How the host threads working for tasks are confined (see [`crate::confine`]);
    /// a front end applies the operator's `--allow-unconfined` to it.
    pub sandbox: Sandbox,
    /// Fresh DuckDB databases for the next task instances.
    pub sql_pool: Arc<SqlPool>,
}

impl Sluice {
    /// Opens (creating if needed) the home at `root`.
    pub fn open(root: &Path) -> Result<Self, OpenError> {
        let home = Home::open(root).map_err(|source| OpenError::Home {
            path: root.display().to_string(),
            source,
        })?;
        let store = Arc::new(Store::open(&home.database())?);
        let engine = Arc::new(Engine::new(&home)?);
        Ok(Self {
            sandbox: Sandbox::detect(),
            sql_pool: Arc::new(SqlPool::new(2)),
            home,
            store,
            engine,
        })
    }
}
