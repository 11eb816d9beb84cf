//! Shared fixtures: plugins built once per test binary, a fresh Sluice home per
//! test, helpers to deploy and run DAGs in-process or through the CLI.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sluice::Sluice;
use sluice::manifest::Manifest;
use sluice::scheduler::{RunOptions, RunSummary, run_dag};
use sluice::store::TaskRecord;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `plugins/dist`, after building the plugins workspace (once per process).
pub fn plugins_dist() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        let plugins = repo_root().join("plugins");
        if let Err(e) = sluice::plugins::build_plugins(&plugins, true) {
            panic!("building the plugins failed: {e}");
        }
        plugins
            .join("dist")
            .canonicalize()
            .expect("plugins/dist exists after the build")
    })
}

/// A private Sluice home and a directory for manifests.
pub struct TestHome {
    pub dir: tempfile::TempDir,
    pub sluice: Sluice,
}

impl TestHome {
    pub fn new() -> Self {
        let dist = plugins_dist();
        assert!(dist.join("testkit.wasm").is_file());
        let dir = tempfile::tempdir().expect("temp dir");
        let sluice = Sluice::open(&dir.path().join("home")).expect("open Sluice home");
        Self { dir, sluice }
    }

    pub fn home_path(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Writes `body` as `<name>/dag.toml`, after a `[dag]` header naming the
    /// built plugins directory.
    pub fn manifest(&self, name: &str, body: &str) -> PathBuf {
        let dir = self.dir.path().join("dags").join(name);
        std::fs::create_dir_all(&dir).expect("dag dir");
        let text = format!(
            "[dag]\nid = \"{name}\"\nplugin_dir = \"{}\"\n{body}",
            plugins_dist().display()
        );
        let path = dir.join("dag.toml");
        std::fs::write(&path, text).expect("write manifest");
        path
    }

    /// Deploys the manifest at `path` (panics with the error if it fails).
    pub fn deploy(&self, path: &Path) -> sluice::registry::Deployment {
        let manifest = Manifest::load(path).unwrap_or_else(|e| panic!("{e}"));
        sluice::registry::deploy(
            &self.sluice.home,
            &self.sluice.store,
            &self.sluice.engine,
            &manifest,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Deploys and runs a DAG described by `body`, with run params.
    pub async fn run(&self, name: &str, body: &str, params: Value) -> RunSummary {
        let params: Map<String, Value> = params.as_object().cloned().unwrap_or_default();
        self.run_with(
            name,
            body,
            RunOptions {
                params,
                ..RunOptions::default()
            },
        )
        .await
    }

    /// Deploys and runs a DAG described by `body` with `options`.
    pub async fn run_with(&self, name: &str, body: &str, options: RunOptions) -> RunSummary {
        let path = self.manifest(name, body);
        let deployment = self.deploy(&path);
        let version = self
            .sluice
            .store
            .version(&deployment.dag_id, &deployment.version)
            .expect("version");
        within(RUN_DEADLINE, &format!("the run of `{name}`"), async {
            run_dag(&self.sluice, &version, options, None)
                .await
                .expect("run carried out")
        })
        .await
    }

    pub fn task(&self, run_id: &str, task_id: &str) -> TaskRecord {
        self.sluice
            .store
            .tasks(run_id)
            .expect("tasks")
            .into_iter()
            .find(|t| t.task_id == task_id)
            .unwrap_or_else(|| panic!("no task {task_id}"))
    }

    pub fn output(&self, run_id: &str, task_id: &str) -> Value {
        let record = self.task(run_id, task_id);
        let output = record
            .output
            .clone()
            .unwrap_or_else(|| panic!("task {task_id} has no output: {record:?}"));
        serde_json::from_str(&output).expect("output is JSON")
    }

    pub fn log_text(&self, run_id: &str, task_id: &str) -> String {
        self.sluice
            .store
            .logs(run_id, task_id, None)
            .expect("logs")
            .into_iter()
            .map(|l| format!("{} {}\n", l.level, l.message))
            .collect()
    }

    /// Every byte stored under the home: metadatabase, WAL, keys, blobs, staging.
    pub fn stored_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut stack = vec![self.home_path()];
        while let Some(dir) = stack.pop() {
            // A file that cannot be read would make "the secret is not stored" pass
            // without looking: every entry is read or the test fails.
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
            for entry in entries {
                let path = entry
                    .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                    .path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let content = std::fs::read(&path)
                        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                    bytes.extend(content);
                }
            }
        }
        bytes
    }

    /// Runs the real `sluice` binary against this home (at most [`CHILD_DEADLINE`]).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_env(args, &[])
    }

    /// [`TestHome::cli`] with more environment variables.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        output_within(
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(args)
                .env("SLUICE_HOME", self.home_path())
                .envs(env.iter().copied())
                .current_dir(repo_root()),
            CHILD_DEADLINE,
        )
    }
}

/// How long one CLI call or other child process may take before a test gives up
/// on it (a guard against a hang, far above what any call here needs).
pub const CHILD_DEADLINE: Duration = Duration::from_secs(600);

/// How long an in-process DAG run may take before a test gives up on it.
pub const RUN_DEADLINE: Duration = Duration::from_secs(600);

/// Awaits `future`, panicking with `what` if it has not finished within `limit`.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// Calls `probe` every 50 ms until it returns `Some`; panics naming `what` if
/// that has not happened within `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process that is killed and reaped when dropped, so that a failing
/// test does not leave it running.
pub struct Spawned {
    child: Option<Child>,
    what: String,
}

impl Spawned {
    /// Starts `command` (its stdio as the caller set it up).
    pub fn new(command: &mut Command) -> Self {
        Self::try_new(command).unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
    }

    /// Starts `command`, or says why it could not be started.
    pub fn try_new(command: &mut Command) -> std::io::Result<Self> {
        let what = format!("{command:?}");
        Ok(Self {
            child: Some(command.spawn()?),
            what,
        })
    }

    fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the child is held until consumed")
    }

    /// Its piped stdout, to read as it runs.
    pub fn take_stdout(&mut self) -> std::process::ChildStdout {
        self.child()
            .stdout
            .take()
            .expect("stdout was piped and not taken yet")
    }

    pub fn id(&mut self) -> u32 {
        self.child().id()
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(mut self) {
        let what = self.what.clone();
        let mut child = self.child.take().expect("the child is held until consumed");
        child
            .kill()
            .unwrap_or_else(|e| panic!("cannot kill {what}: {e}"));
        child
            .wait()
            .unwrap_or_else(|e| panic!("cannot reap {what}: {e}"));
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let what = self.what.clone();
        self.child()
            .try_wait()
            .unwrap_or_else(|e| panic!("cannot poll {what}: {e}"))
    }

    /// Waits for it to exit, collecting what it wrote to piped stdout and stderr;
    /// kills it and panics if it has not exited within `limit`.
    pub fn output_within(mut self, limit: Duration) -> Output {
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            pipe.map(|mut pipe| {
                std::thread::spawn(move || {
                    let mut bytes = Vec::new();
                    pipe.read_to_end(&mut bytes).map(|_| bytes)
                })
            })
        };
        let stdout = drain(
            self.child()
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            self.child()
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let what = self.what.clone();
        // On a panic here, dropping `self` kills the child.
        let status = wait_for(&format!("{what} to exit"), limit, || self.exited());
        let collect = |reader: Option<std::thread::JoinHandle<std::io::Result<Vec<u8>>>>| {
            reader.map_or_else(Vec::new, |reader| {
                reader
                    .join()
                    .expect("pipe reader")
                    .unwrap_or_else(|e| panic!("cannot read the output of {what}: {e}"))
            })
        };
        self.child = None;
        Output {
            status,
            stdout: collect(stdout),
            stderr: collect(stderr),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Best effort: it may have exited already.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `command` to its end with stdout and stderr captured (stdin empty);
/// kills it and panics if it has not ended within `limit`.
pub fn output_within(command: &mut Command, limit: Duration) -> Output {
    Spawned::new(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .output_within(limit)
}

/// stdout and stderr of a CLI call, for assertions and failure messages.
pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// How a `sluice run` in a child process ended, and its peak resident memory.
pub struct Measured {
    pub succeeded: bool,
    /// The process's stderr.
    pub stderr: String,
    /// The highest `VmHWM` read from `/proc/<pid>/status` while it ran, in bytes.
    pub peak_rss: u64,
}

/// `VmHWM` of a live process, in bytes (`None` once it has exited).
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs the deployed DAG `dag` through the real `sluice` binary and measures
/// the process that ran the task: its `VmHWM` (peak RSS since its `exec`) is
/// read every 10 ms until it exits. (`ru_maxrss` from `wait4` would not do: it
/// also counts the test process's memory at the `fork`.) Kills it and panics
/// after `within`.
pub fn run_measured(home: &TestHome, dag: &str, within: std::time::Duration) -> Measured {
    let stderr_path = home.dir.path().join(format!("{dag}.stderr"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", dag, "--no-progress"])
        .env("SLUICE_HOME", home.home_path())
        .current_dir(repo_root())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start sluice");
    let deadline = std::time::Instant::now() + within;
    let mut peak_rss = 0;
    loop {
        if let Some(hwm) = vm_hwm(child.id()) {
            peak_rss = peak_rss.max(hwm);
        }
        if let Some(status) = child.try_wait().expect("wait for sluice") {
            return Measured {
                succeeded: status.success(),
                stderr: std::fs::read_to_string(&stderr_path).expect("stderr"),
                peak_rss,
            };
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`sluice run {dag}` did not end within {within:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
