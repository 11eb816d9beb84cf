//! [`Sluice`]: one handle on a Sluice home (metadatabase, blobs, engine).

use std::path::Path;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::capabilities::SqlPool;
use crate::confine::Sandbox;
use crate::engine::{Engine, EngineError};
use crate::events::RunNotice;
use crate::executor::kubernetes::KubeSettings;
use crate::executor::{Executor, KubernetesExecutor, LocalExecutor, ProcessExecutor};
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
    /// The `sluice` binary tries run in, one worker process each (none: in
    /// this process).
    workers: Option<std::path::PathBuf>,
    /// Tries run as Kubernetes Jobs with these settings (overrides `workers`).
    kubernetes: Option<KubeSettings>,
    /// Every event of every run this process carries out, for live watchers
    /// (the HTTP API); a watcher that falls behind is told how much it missed.
    notices: broadcast::Sender<RunNotice>,
}

/// How many run events a slow watcher may fall behind before it misses some.
const NOTICE_BACKLOG: usize = 4096;

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
            workers: None,
            kubernetes: None,
            notices: broadcast::channel(NOTICE_BACKLOG).0,
            home,
            store,
            engine,
        })
    }

    /// Tells every watcher what happened in a run (nobody watching: nothing).
    pub fn notify(&self, notice: RunNotice) {
        // No receiver is not an error: nobody is watching.
        let _ = self.notices.send(notice);
    }

    /// Watches every run event of this process from now on.
    pub fn watch(&self) -> broadcast::Receiver<RunNotice> {
        self.notices.subscribe()
    }

    /// How the host threads working for tasks are confined.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Lets tasks run without kernel confinement where the kernel has none
    /// (the operator's `--allow-unconfined`).
    pub fn allow_unconfined(&mut self, allow: bool) {
        self.sandbox = self.sandbox.clone().allow_unconfined(allow);
        self.choose_executor();
    }

    /// Runs each try in a worker process started from `exe` (a `sluice`
    /// binary), so a try that overruns its deadline is killed
    /// ([`ProcessExecutor`]); by default tries run in this process.
    pub fn run_tries_in_workers(&mut self, exe: std::path::PathBuf) {
        self.workers = Some(exe);
        self.choose_executor();
    }

    /// Runs each try as a Kubernetes Job ([`KubernetesExecutor`]).
    pub fn run_tries_on_kubernetes(&mut self, settings: KubeSettings) {
        self.kubernetes = Some(settings);
        self.choose_executor();
    }

    /// An in-process executor on this home (what a worker runs its try with).
    pub fn local_executor(&self) -> Arc<LocalExecutor> {
        local_executor(
            &self.home,
            &self.store,
            &self.engine,
            &self.sql_pool,
            &self.sandbox,
        )
    }

    /// For a process that serves one try (`sluice worker`): databases are
    /// opened when asked for, since a pool's refills would only compete with
    /// the try for the CPU.
    pub fn serve_one_try(&mut self) {
        self.sql_pool = Arc::new(SqlPool::on_demand());
        self.workers = None;
        self.kubernetes = None;
        self.choose_executor();
    }

    fn choose_executor(&mut self) {
        let local = self.local_executor();
        // Workers need the operator's opt-out only where it took effect.
        let unconfined = matches!(self.sandbox, Sandbox::Unconfined { .. });
        if let Some(settings) = &self.kubernetes {
            let settings = KubeSettings {
                allow_unconfined: unconfined,
                ..settings.clone()
            };
            self.executor = Arc::new(KubernetesExecutor::new(
                local,
                self.home.clone(),
                self.store.clone(),
                settings,
            ));
            return;
        }
        self.executor = match &self.workers {
            None => local,
            Some(exe) => Arc::new(ProcessExecutor::new(
                local,
                exe.clone(),
                self.home.root().to_path_buf(),
                unconfined,
            )),
        };
    }
}

fn local_executor(
    home: &Home,
    store: &Arc<Store>,
    engine: &Arc<Engine>,
    sql_pool: &Arc<SqlPool>,
    sandbox: &Sandbox,
) -> Arc<LocalExecutor> {
    Arc::new(LocalExecutor::new(
        home.clone(),
        store.clone(),
        engine.clone(),
        sql_pool.clone(),
        sandbox.clone(),
    ))
}
