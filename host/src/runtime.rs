//! [`Sluice`]: one handle on a Sluice home (metadatabase, blobs, engine).

use std::path::Path;
use std::sync::Arc;

use crate::capabilities::SqlPool;
use crate::confine::Sandbox;
use crate::engine::{Engine, EngineError};
use crate::executor::{Executor, LocalExecutor};
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
    /// a front end applies the operator's `--allow-unconfined` with
    /// [`Sluice::allow_unconfined`], which also reaches the executor.
    sandbox: Sandbox,
    /// Fresh DuckDB databases for the next task instances.
    pub sql_pool: Arc<SqlPool>,
    /// Where tries run.
    pub executor: Arc<dyn Executor>,
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
        let sandbox = Sandbox::detect();
        let sql_pool = Arc::new(SqlPool::new(2));
        let executor = local_executor(&home, &store, &engine, &sql_pool, &sandbox);
        Ok(Self {
            sandbox,
            sql_pool,
            executor,
            home,
            store,
            engine,
        })
    }

    /// How the host threads working for tasks are confined.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Lets tasks run without kernel confinement where the kernel has none
    /// (the operator's `--allow-unconfined`).
    pub fn allow_unconfined(&mut self, allow: bool) {
        self.sandbox = self.sandbox.clone().allow_unconfined(allow);
        self.executor = local_executor(
            &self.home,
            &self.store,
            &self.engine,
            &self.sql_pool,
            &self.sandbox,
        );
    }
}

fn local_executor(
    home: &Home,
    store: &Arc<Store>,
    engine: &Arc<Engine>,
    sql_pool: &Arc<SqlPool>,
    sandbox: &Sandbox,
) -> Arc<dyn Executor> {
    Arc::new(LocalExecutor::new(
        home.clone(),
        store.clone(),
        engine.clone(),
        sql_pool.clone(),
        sandbox.clone(),
    ))
}
