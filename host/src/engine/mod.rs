//! The wasmtime engine: validates and compiles components once, caches machine
//! code by component digest and engine compatibility hash, and instantiates a
//! task from a pre-instantiated linker with its limits in place.
//!
//! A compile-cache entry is native code that the host maps and runs, so a file
//! in `cache/compiled/` is never trusted for its name: each entry carries an
//! HMAC-SHA256 tag under the host's [`CacheKey`] over the component digest,
//! the engine compatibility hash and the serialized code. An entry whose tag
//! does not verify (planted, copied from another component's name, truncated)
//! is not deserialized: the component is compiled again from its verified blob
//! and the entry rewritten, with a warning naming the file. Verified code is
//! kept in a [`SealedCode`] memfd, which worker processes map as it is.
//!
//! A Python task is not a component but a [`PythonPackage`] (its sources
//! and its runtime's key, see [`crate::python_package`]): preparing it
//! looks up the runtime component the home recorded for the key and
//! prepares it, compiled once and shared by every Python task, and keeps
//! the sources for each instance.

mod epoch;
mod function_cache;
mod sealed;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Store, UpdateDeadline};

use crate::bindings::TaskPre;
use crate::capabilities::TaskHost;
use crate::home::Home;
use crate::python_package::{self, PackageError, PythonPackage, StoredPackageError};
use epoch::EpochTicker;
pub use epoch::Ticking;
use function_cache::FunctionCache;
pub use sealed::SealedCode;
use sealed::Unsealed;

/// How often the engine's epoch advances; the timeout granularity for guest code.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why a component cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The thread that advances the epoch (what stops a try at its deadline)
    /// could not be started: without it no wasm deadline would fire.
    #[error("cannot start the thread that enforces task deadlines: {0}")]
    Ticker(#[source] std::io::Error),
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
    #[error("wasmtime: cannot {what}: {source}")]
    Wasmtime {
        /// What the host was doing.
        what: &'static str,
        /// wasmtime's error, with its chain.
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The compile cache's key file cannot be read or created.
    #[error("compile cache key {path}: {source}")]
    CacheKey {
        /// The key file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The compile cache's key file does not hold a key.
    #[error("compile cache key {path}: malformed: expected 64 hex digits")]
    CacheKeyMalformed {
        /// The key file.
        path: String,
    },
    /// A Python task package that cannot be read.
    #[error("{path}: {source}")]
    Package {
        /// The blob.
        path: String,
        /// What is wrong with it.
        source: PackageError,
    },
    /// The runtime component of a Python task does not load.
    #[error("the Python runtime {key} of this task (component {component}): {source}")]
    PythonRuntime {
        /// The runtime's key.
        key: String,
        /// The component the home runs for it.
        component: String,
        /// Why.
        source: Box<EngineError>,
    },
    /// The home has no runtime component for a Python task's runtime key.
    #[error("the Python runtime {key} of this task: {message}")]
    PythonRuntimeRecord {
        /// The runtime's key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl EngineError {
    /// An error of wasmtime while the host was doing `what`.
    fn wasmtime(what: &'static str) -> impl FnOnce(wasmtime::Error) -> Self {
        move |e| Self::Wasmtime {
            what,
            source: e.into(),
        }
    }
}

/// Why a compile cache entry is not used.
#[derive(Debug, thiserror::Error)]
enum Rejected {
    #[error("it does not start with a Sluice cache header")]
    NoHeader,
    #[error("its integrity tag is truncated")]
    TruncatedTag,
    #[error("its integrity tag does not verify under the host's cache key")]
    BadTag,
}

/// A task ready to instantiate.
#[derive(Clone)]
pub struct Prepared {
    /// The pre-instantiated component (a Python task's: its runtime).
    pub pre: TaskPre<TaskHost>,
    /// A Python task's code, which its runtime asks for (`python-code`).
    pub python: Option<Arc<PythonPackage>>,
    /// Whether this call compiled a component (false: memory or disk cache).
    pub compiled: bool,
    /// Whether the component imports `sql`, so that its tries will open a
    /// DuckDB database (a Python task's runtime always does).
    pub uses_sql: bool,
}

/// The file name of the compile cache's key in the Sluice home.
pub const CACHE_KEY_FILE: &str = "cache.key";
/// What a compile-cache entry starts with; the HMAC tag follows, then the code.
const ENTRY_MAGIC: &[u8; 16] = b"sluice-cwasm-v1\n";
/// Length of an HMAC-SHA256 tag.
pub(crate) const TAG_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The host secret that authenticates compile-cache entries: 32 random bytes
/// in `<home>/cache.key` (mode 0600, created on first use).
///
/// It is a key of its own rather than one derived from the vault's master key:
/// every process that loads code needs it (deploy, run, bench), while the
/// master key may live only in `SLUICE_MASTER_KEY`, is created only once
/// connections are used, and is rotated with `connections rotate-key`. Kept
/// apart, loading code never puts the key to the credentials in memory, and
/// losing or rotating either key costs nothing but a recompile. Like the master
/// key it lives in the Sluice home, outside every staging directory.
#[derive(Clone)]
pub struct CacheKey([u8; 32]);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(***)")
    }
}

impl CacheKey {
    /// Reads the key at `path`, creating it (exclusively, mode 0600) if absent.
    pub fn load_or_create(path: &Path) -> Result<Self, EngineError> {
        let failed = |source: std::io::Error| EngineError::CacheKey {
            path: path.display().to_string(),
            source,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::create(path).map_err(failed)?;
                std::fs::read_to_string(path).map_err(failed)?
            }
            Err(e) => return Err(failed(e)),
        };
        crate::home::decode_key(&text)
            .map(Self)
            .ok_or_else(|| EngineError::CacheKeyMalformed {
                path: path.display().to_string(),
            })
    }

    /// Writes a fresh key beside `path` and links it into place, so that of two
    /// processes creating it at once both end up using the one that won.
    fn create(path: &Path) -> std::io::Result<()> {
        use chacha20poly1305::aead::rand_core::RngCore;
        use std::io::Write;
        let mut key = [0u8; 32];
        chacha20poly1305::aead::OsRng
            .try_fill_bytes(&mut key)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        #[cfg(unix)]
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        tmp.write_all(hex::encode(key).as_bytes())?;
        tmp.as_file().sync_all()?;
        match tmp.persist_noclobber(path) {
            Ok(_) => Ok(()),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e.error),
        }
    }

    fn mac(&self, digest: &str, compat: &str) -> HmacSha256 {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        // The entry's identity is authenticated with its bytes: a valid entry
        // copied under another component's name does not verify.
        mac.update(ENTRY_MAGIC);
        mac.update(digest.as_bytes());
        mac.update(b"\0");
        mac.update(compat.as_bytes());
        mac.update(b"\0");
        mac
    }

    /// HMAC-SHA256 under this key of `domain`, then each of `parts` with its
    /// length (so no two different lists of parts give the same message).
    pub(crate) fn tag(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(domain);
        for part in parts {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// The cache entry (magic, tag, code) of `code` compiled from `digest`.
    fn seal(&self, digest: &str, compat: &str, code: &[u8]) -> Vec<u8> {
        let mut mac = self.mac(digest, compat);
        mac.update(code);
        let tag = mac.finalize().into_bytes();
        let mut entry = Vec::with_capacity(ENTRY_MAGIC.len() + TAG_LEN + code.len());
        entry.extend_from_slice(ENTRY_MAGIC);
        entry.extend_from_slice(&tag);
        entry.extend_from_slice(code);
        entry
    }
}

/// The engine shared by every task of a process.
pub struct Engine {
    engine: wasmtime::Engine,
    linker: Linker<TaskHost>,
    home: Home,
    cache_dir: PathBuf,
    cache_key: CacheKey,
    compat: String,
    loaded: Mutex<HashMap<String, Prepared>>,
    sealed: Mutex<HashMap<String, Arc<SealedCode>>>,
    /// The runtime component's digest of each Python task prepared, by the
    /// task's digest.
    runtimes: Mutex<HashMap<String, String>>,
    ticker: EpochTicker,
}

impl Engine {
    /// An engine caching compiled code in `home`'s compile cache, under its
    /// [`CacheKey`] (created on first use).
    pub fn new(home: &Home) -> Result<Self, EngineError> {
        let cache_key = CacheKey::load_or_create(&home.root().join(CACHE_KEY_FILE))?;
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(1 << 20);
        // Functions compiled for one component are reused by the next: the
        // interpreter inside every Python task is compiled once.
        config
            .enable_incremental_compilation(Arc::new(FunctionCache::new(
                home.function_cache(),
                cache_key.clone(),
            )))
            .map_err(EngineError::wasmtime("enable the function cache"))?;
        let engine =
            wasmtime::Engine::new(&config).map_err(EngineError::wasmtime("create the engine"))?;
        let mut linker = Linker::<TaskHost>::new(&engine);
        crate::capabilities::add_to_linker(&mut linker)
            .map_err(EngineError::wasmtime("link the host calls"))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat = format!("{:016x}", hasher.finish());
        let ticking = engine.clone();
        let ticker = EpochTicker::start(EPOCH_TICK, move || ticking.increment_epoch())
            .map_err(EngineError::Ticker)?;
        Ok(Self {
            engine,
            linker,
            home: home.clone(),
            cache_dir: home.compile_cache(),
            cache_key,
            compat,
            loaded: Mutex::new(HashMap::new()),
            sealed: Mutex::new(HashMap::new()),
            runtimes: Mutex::new(HashMap::new()),
            ticker,
        })
    }

    /// Loads task `digest` stored at `blob`: from memory, else from the
    /// compile cache, else compiled (and cached). Validates the world. A
    /// Python task's runtime is loaded the same way, from the blob store.
    pub fn prepare(&self, digest: &str, blob: &Path) -> Result<Prepared, EngineError> {
        if let Some(prepared) = self.lock_loaded().get(digest) {
            return Ok(Prepared {
                compiled: false,
                ..prepared.clone()
            });
        }
        if let Some(package) = read_package(digest, blob)? {
            return self.prepare_python(digest, package);
        }
        let cached = self
            .cache_dir
            .join(format!("{digest}-{}.cwasm", self.compat));
        let ((component, code), compiled) = match self.load_cached(digest, &cached) {
            Some(loaded) => (loaded, false),
            None => (self.compile(digest, blob, &cached)?, true),
        };
        let pre = self.pre_instantiate(&component, blob)?;
        let prepared = Prepared {
            pre,
            python: None,
            compiled,
            uses_sql: crate::bindings::imports_sql(&component, &self.engine),
        };
        self.lock_loaded()
            .insert(digest.to_owned(), prepared.clone());
        lock(&self.sealed).insert(digest.to_owned(), Arc::new(code));
        Ok(prepared)
    }

    /// Prepares Python task `digest`: its runtime (from memory after the
    /// first Python task), with `package`'s sources for its instances.
    fn prepare_python(
        &self,
        digest: &str,
        package: PythonPackage,
    ) -> Result<Prepared, EngineError> {
        let key = &package.runtime_key;
        let record = |message: String| EngineError::PythonRuntimeRecord {
            key: key.clone(),
            message,
        };
        let runtime = self
            .home
            .python_runtime(key)
            .map_err(|e| record(e.to_string()))?
            .ok_or_else(|| record("this home has none recorded; deploy the task".into()))?;
        let failed = |source| EngineError::PythonRuntime {
            key: key.clone(),
            component: runtime.clone(),
            source: Box::new(source),
        };
        let prepared = self
            .prepare(&runtime, &self.home.blob(&runtime))
            .map_err(failed)?;
        if prepared.python.is_some() {
            return Err(failed(EngineError::NotAComponent {
                path: self.home.blob(&runtime).display().to_string(),
                message: "is a Python task package, not a runtime component".into(),
            }));
        }
        lock(&self.runtimes).insert(digest.to_owned(), runtime.clone());
        let prepared = Prepared {
            python: Some(Arc::new(package)),
            ..prepared
        };
        self.lock_loaded().insert(
            digest.to_owned(),
            Prepared {
                compiled: false,
                ..prepared.clone()
            },
        );
        Ok(prepared)
    }

    /// Whether task `digest`, once prepared, imports `sql` (false if this
    /// engine has not prepared it).
    pub fn uses_sql(&self, digest: &str) -> bool {
        self.lock_loaded().get(digest).is_some_and(|p| p.uses_sql)
    }

    /// The sealed compiled code of task `digest` (a Python task's: its
    /// runtime's) and the digest of the component it is, if this engine has
    /// prepared it: what a worker process is handed (see [`Engine::adopt`]).
    pub fn sealed_code(&self, digest: &str) -> Option<(String, Arc<SealedCode>)> {
        let component = lock(&self.runtimes)
            .get(digest)
            .cloned()
            .unwrap_or_else(|| digest.to_owned());
        let code = lock(&self.sealed).get(&component).cloned()?;
        Some((component, code))
    }

    /// Prepares component `digest` (stored at `blob`) from `code`, the sealed
    /// compiled code the parent process verified and handed over, without
    /// reading or verifying the compile cache again.
    pub fn adopt(&self, digest: &str, code: SealedCode, blob: &Path) -> Result<(), EngineError> {
        // SAFETY: the parent (the host that spawned this worker) verified these
        // bytes under the cache key before sealing them (`load_cached`,
        // `compile`); the seals keep them so.
        let component = unsafe { code.deserialize(&self.engine) }
            .map_err(EngineError::wasmtime("load the compiled code handed over"))?;
        let pre = self.pre_instantiate(&component, blob)?;
        let prepared = Prepared {
            pre,
            python: None,
            compiled: false,
            uses_sql: crate::bindings::imports_sql(&component, &self.engine),
        };
        self.lock_loaded().insert(digest.to_owned(), prepared);
        lock(&self.sealed).insert(digest.to_owned(), Arc::new(code));
        Ok(())
    }

    /// The verified cache entry of `digest`, deserialized, and its sealed
    /// code; `None` (after a warning, unless there is no entry) when it must
    /// be compiled again.
    fn load_cached(&self, digest: &str, cached: &Path) -> Option<(Component, SealedCode)> {
        let mut file = match std::fs::File::open(cached) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(
                    "compile cache entry {}: cannot read it ({e}); compiling component {digest} again",
                    cached.display()
                );
                return None;
            }
        };
        let code = match self.copy_verified(digest, &mut file) {
            Ok(Ok(code)) => code,
            Ok(Err(why)) => {
                tracing::warn!(
                    "compile cache entry {} is not used: {why}; compiling component {digest} again and replacing it",
                    cached.display()
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(
                    "compile cache entry {}: cannot load it ({e}); compiling component {digest} again",
                    cached.display()
                );
                return None;
            }
        };
        // SAFETY: `code` is exactly what `Component::serialize` of an engine with
        // this compatibility hash produced for `digest` in a host holding the
        // cache key: its HMAC tag over the digest, the hash and these bytes
        // verified as they were copied, and the seals keep them so.
        match unsafe { code.deserialize(&self.engine) } {
            Ok(component) => Some((component, code)),
            Err(e) => {
                tracing::warn!(
                    "compile cache entry {} does not load ({e}); compiling component {digest} again",
                    cached.display()
                );
                None
            }
        }
    }

    /// Copies the code of the cache entry in `file` into a memfd, verifying
    /// its tag on the way, and seals it: nothing can swap the bytes between
    /// the check and the load.
    fn copy_verified(
        &self,
        digest: &str,
        file: &mut std::fs::File,
    ) -> std::io::Result<Result<SealedCode, Rejected>> {
        let mut header = Vec::with_capacity(ENTRY_MAGIC.len() + TAG_LEN);
        file.by_ref()
            .take((ENTRY_MAGIC.len() + TAG_LEN) as u64)
            .read_to_end(&mut header)?;
        let Some(tag) = header.strip_prefix(ENTRY_MAGIC.as_slice()) else {
            return Ok(Err(Rejected::NoHeader));
        };
        if tag.len() < TAG_LEN {
            return Ok(Err(Rejected::TruncatedTag));
        }
        let in_memfd = |e: std::io::Error| std::io::Error::new(e.kind(), format!("memfd: {e}"));
        let mut mac = self.cache_key.mac(digest, &self.compat);
        let mut code = Unsealed::new(digest).map_err(in_memfd)?;
        let mut chunk = vec![0; 1 << 20];
        loop {
            let n = file.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            mac.update(&chunk[..n]);
            code.write_all(&chunk[..n]).map_err(in_memfd)?;
        }
        if mac.verify_slice(tag).is_err() {
            return Ok(Err(Rejected::BadTag));
        }
        Ok(Ok(code.seal().map_err(in_memfd)?))
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, HashMap<String, Prepared>> {
        lock(&self.loaded)
    }

    fn compile(
        &self,
        digest: &str,
        blob: &Path,
        cached: &Path,
    ) -> Result<(Component, SealedCode), EngineError> {
        let path = blob.display().to_string();
        let bytes = std::fs::read(blob).map_err(|source| EngineError::Io {
            path: path.clone(),
            source,
        })?;
        if crate::digest::sha256_hex(&bytes) != digest {
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
            .map_err(EngineError::wasmtime("serialize compiled code"))?;
        let entry = self.cache_key.seal(digest, &self.compat, &serialized);
        crate::home::write_atomically(cached, &entry).map_err(|source| EngineError::Io {
            path: cached.display().to_string(),
            source,
        })?;
        let sealed = Unsealed::new(digest)
            .and_then(|mut code| {
                code.write_all(&serialized)?;
                code.seal()
            })
            .map_err(|source| EngineError::Io {
                path: format!("memfd for the compiled code of {digest}"),
                source,
            })?;
        Ok((component, sealed))
    }

    fn pre_instantiate(
        &self,
        component: &Component,
        blob: &Path,
    ) -> Result<TaskPre<TaskHost>, EngineError> {
        let wrong_world = |e: wasmtime::Error| EngineError::WrongWorld {
            path: blob.display().to_string(),
            message: match crate::bindings::foreign_contract(component, &self.engine) {
                Some(version) => format!(
                    "it was built against sluice:task@{version} and this host implements sluice:task@{}; rebuild it with the current sluice-sdk ({e:#})",
                    crate::bindings::CONTRACT_VERSION
                ),
                None => format!("{e:#}"),
            },
        };
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(wrong_world)?;
        TaskPre::new(instance_pre).map_err(wrong_world)
    }

    /// A store for one try, with its memory limit and deadline armed, and
    /// the guard that keeps the epoch (and so the deadline) advancing: keep
    /// it while the store runs guest code.
    pub fn store(&self, host: TaskHost) -> (Store<TaskHost>, Ticking) {
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
        (store, self.ticker.hold())
    }
}

/// The map behind `mutex` (a panic elsewhere leaves it consistent: every
/// update is one insert).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const WASM_MAGIC: &[u8] = b"\0asm";

/// The Python task package stored at `blob` under `digest`, if it is one
/// (`None`: a component, or no blob, which only a compile would need).
fn read_package(digest: &str, blob: &Path) -> Result<Option<PythonPackage>, EngineError> {
    let path = blob.display().to_string();
    python_package::read_stored(blob, digest).map_err(|e| match e {
        StoredPackageError::Io(source) => EngineError::Io { path, source },
        StoredPackageError::Tampered => EngineError::Tampered {
            path,
            digest: digest.to_owned(),
        },
        StoredPackageError::Package(source) => EngineError::Package { path, source },
    })
}

/// A component binary starts with the wasm magic and layer 1 (version 0x0d).
fn is_component(bytes: &[u8]) -> bool {
    bytes.starts_with(WASM_MAGIC) && bytes.get(4..8) == Some(&[0x0d, 0x00, 0x01, 0x00])
}
