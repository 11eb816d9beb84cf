//! The wasmtime engine: validates and compiles components once, caches machine
//! code by component digest and engine compatibility hash, and instantiates a
//! task from a pre-instantiated linker with its limits in place.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Store, UpdateDeadline};

use crate::bindings::{Task, TaskPre};
use crate::capabilities::TaskHost;

/// How often the engine's epoch advances; the timeout granularity for guest code.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why a component cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Not a component (e.g. a core module or garbage).
    #[error("{path}: {message}")]
    NotAComponent {
        /// The file.
        path: String,
        /// What it is instead.
        message: String,
    },
    /// A component that does not implement the `sluice:task/task` world.
    #[error("{path}: does not implement the sluice:task/task world: {message}")]
    WrongWorld {
        /// The file.
        path: String,
        /// What is missing or mismatched.
        message: String,
    },
    /// A stored component whose bytes no longer hash to its digest.
    #[error(
        "{path}: the stored component does not match its digest {digest} (it was modified after deploy); redeploy it"
    )]
    Tampered {
        /// The blob.
        path: String,
        /// The digest it is stored under.
        digest: String,
    },
    /// I/O on the blob or the cache.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// wasmtime itself failed.
    #[error("wasmtime: {0}")]
    Wasmtime(String),
}

/// A component ready to instantiate.
#[derive(Clone)]
pub struct Prepared {
    /// The pre-instantiated component.
    pub pre: TaskPre<TaskHost>,
    /// Whether this call compiled it (false: memory or disk cache).
    pub compiled: bool,
}

/// The engine shared by every task of a process.
pub struct Engine {
    engine: wasmtime::Engine,
    linker: Linker<TaskHost>,
    cache_dir: PathBuf,
    compat: String,
    loaded: Mutex<HashMap<String, TaskPre<TaskHost>>>,
    _ticker: EpochTicker,
}

impl Engine {
    /// An engine caching compiled code under `cache_dir`.
    pub fn new(cache_dir: &Path) -> Result<Self, EngineError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(1 << 20);
        let engine =
            wasmtime::Engine::new(&config).map_err(|e| EngineError::Wasmtime(e.to_string()))?;
        let mut linker = Linker::<TaskHost>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| EngineError::Wasmtime(e.to_string()))?;
        Task::add_to_linker::<TaskHost, HasSelf<TaskHost>>(&mut linker, |host| host)
            .map_err(|e| EngineError::Wasmtime(e.to_string()))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat = format!("{:016x}", hasher.finish());
        let ticker = EpochTicker::start(engine.clone());
        Ok(Self {
            engine,
            linker,
            cache_dir: cache_dir.to_path_buf(),
            compat,
            loaded: Mutex::new(HashMap::new()),
            _ticker: ticker,
        })
    }

    /// Loads component `digest` stored at `blob`: from memory, else from the
    /// compile cache, else compiled (and cached). Validates the world.
    pub fn prepare(&self, digest: &str, blob: &Path) -> Result<Prepared, EngineError> {
        if let Some(pre) = self.lock_loaded().get(digest) {
            return Ok(Prepared {
                pre: pre.clone(),
                compiled: false,
            });
        }
        let cached = self
            .cache_dir
            .join(format!("{digest}-{}.cwasm", self.compat));
        let (component, compiled) = if cached.exists() {
            // SAFETY: files in the compile cache are written only by `Component::serialize`
            // of this engine configuration (the file name carries its compatibility hash),
            // inside the Sluice home, which is private to its owner.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(component) => (component, false),
                Err(_) => (self.compile(digest, blob, &cached)?, true),
            }
        } else {
            (self.compile(digest, blob, &cached)?, true)
        };
        let pre = self.pre_instantiate(&component, blob)?;
        self.lock_loaded().insert(digest.to_owned(), pre.clone());
        Ok(Prepared { pre, compiled })
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, HashMap<String, TaskPre<TaskHost>>> {
        self.loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn compile(&self, digest: &str, blob: &Path, cached: &Path) -> Result<Component, EngineError> {
        let path = blob.display().to_string();
        let bytes = std::fs::read(blob).map_err(|source| EngineError::Io {
            path: path.clone(),
            source,
        })?;
        if crate::registry::sha256_hex(&bytes) != digest {
            return Err(EngineError::Tampered {
                path,
                digest: digest.to_owned(),
            });
        }
        if !is_component(&bytes) {
            let message = if bytes.starts_with(WASM_MAGIC) {
                "is a core WebAssembly module, not a component; build tasks for wasm32-wasip2"
                    .to_owned()
            } else {
                "is not a WebAssembly component".to_owned()
            };
            return Err(EngineError::NotAComponent { path, message });
        }
        let component =
            Component::new(&self.engine, &bytes).map_err(|e| EngineError::NotAComponent {
                path: path.clone(),
                message: format!("{e:#}"),
            })?;
        let serialized = component
            .serialize()
            .map_err(|e| EngineError::Wasmtime(e.to_string()))?;
        crate::home::write_atomically(cached, &serialized).map_err(|source| EngineError::Io {
            path: cached.display().to_string(),
            source,
        })?;
        Ok(component)
    }

    fn pre_instantiate(
        &self,
        component: &Component,
        blob: &Path,
    ) -> Result<TaskPre<TaskHost>, EngineError> {
        let wrong_world = |e: wasmtime::Error| EngineError::WrongWorld {
            path: blob.display().to_string(),
            message: format!("{e:#}"),
        };
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(wrong_world)?;
        TaskPre::new(instance_pre).map_err(wrong_world)
    }

    /// A store for one try, with its memory limit and deadline armed.
    pub fn store(&self, host: TaskHost) -> Store<TaskHost> {
        let deadline = host.deadline.clone();
        let mut store = Store::new(&self.engine, host);
        store.limiter(|host| &mut host.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if deadline.expired() {
                Err(wasmtime::Error::new(deadline.error()))
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        store
    }
}

const WASM_MAGIC: &[u8] = b"\0asm";

/// A component binary starts with the wasm magic and layer 1 (version 0x0d).
fn is_component(bytes: &[u8]) -> bool {
    bytes.starts_with(WASM_MAGIC) && bytes.get(4..8) == Some(&[0x0d, 0x00, 0x01, 0x00])
}

/// Advances the engine epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: wasmtime::Engine) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        Self { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
