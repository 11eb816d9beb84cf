//! The process executor: each try runs in a `sluice worker` child process
//! (the same code as [`LocalExecutor`], in a process of its own). What it
//! adds is a hard stop: a try still running a second after its deadline (a
//! DuckDB scalar function over a huge value does not look at interrupts) is
//! killed with its process, DuckDB threads included.
//!
//! The worker gets the [`TryRequest`] (names only) as one JSON line on stdin
//! and opens the same Sluice home, so it resolves connections from the vault
//! itself: no secret crosses the pipe. It answers with [`WorkerMessage`] JSON
//! lines on stdout, the last one the outcome. The try's compiled component
//! (a Python task's runtime), verified by the host, is handed over as a
//! sealed memfd on descriptor [`WORKER_CODE_FD`] (named by
//! `$SLUICE_WORKER_CODE`), which the worker maps
//! instead of reading and verifying the compile cache again.
//!
//! A worker sets itself up (maps that code, opens its DuckDB database) before
//! it reads its request, so a worker for a try the scheduler expects
//! ([`Executor::anticipate`]) is started ahead, while the try before it runs, and
//! the try finds it ready. Each try still gets a process of its own.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc::UnboundedSender;

use super::local::lock;
use super::{Executor, ExecutorError, LocalExecutor, TryFuture, TryOutcome, TryRequest};
use crate::engine::{Engine, SealedCode};
use crate::events::{RunEvent, TaskKey};
use crate::home::Home;

/// How long after its deadline a worker is killed if it has not reported.
pub const KILL_GRACE: Duration = Duration::from_secs(1);

/// How many of a worker's last stderr lines a failure quotes.
const DIAGNOSTIC_LINES: usize = 5;

/// How long a worker that reported may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// How many workers started ahead of their tries may wait at once. Each holds
/// a process and, when its task uses SQL, an open DuckDB database; a fan-out
/// wider than this starts the rest of its workers when their tries start.
const MAX_SPARES: usize = 2;

/// How long a worker started ahead keeps its place when all places are taken
/// and another try is anticipated. One whose run ended without releasing it
/// (its run loop failed) would otherwise hold its place for the host's life.
const SPARE_IDLE_LIMIT: Duration = Duration::from_secs(600);

/// The descriptor on which a worker finds its try's sealed compiled code.
pub const WORKER_CODE_FD: std::os::fd::RawFd = 3;

/// The environment variable naming the component whose code is on
/// [`WORKER_CODE_FD`].
pub const WORKER_CODE_ENV: &str = "SLUICE_WORKER_CODE";

/// The `sluice worker` option (hidden) by which the host says that the try's
/// task imports `sql`: the worker opens its DuckDB database while it sets the
/// try up, instead of at the task's first SQL call.
pub const WORKER_SQL_OPTION: &str = "open-database-ahead";

/// In a worker: prepares the component the host handed over (see
/// [`WORKER_CODE_FD`]), if it did. A handover that cannot be used is
/// reported and the worker loads the component from the compile cache.
pub fn adopt_handed_code(engine: &Engine, home: &Home) {
    let Some(digest) = std::env::var_os(WORKER_CODE_ENV) else {
        return;
    };
    let Some(digest) = digest.to_str().filter(|d| crate::digest::is_sha256_hex(d)) else {
        tracing::warn!("${WORKER_CODE_ENV} is not a component digest: {digest:?}; ignored");
        return;
    };
    // SAFETY: the host put the memfd on this descriptor for this process
    // (`ProcessExecutor::run`) and nothing else here uses the number;
    // `SealedCode::adopt` checks what it is before anything maps it.
    let fd = unsafe { OwnedFd::from_raw_fd(WORKER_CODE_FD) };
    let adopted = SealedCode::adopt(fd)
        .map_err(|e| e.to_string())
        .and_then(|code| {
            engine
                .adopt(digest, code, &home.blob(digest))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = adopted {
        tracing::warn!(
            "the compiled code of component {digest} handed over on fd {WORKER_CODE_FD} is not used ({e}); loading it from the compile cache"
        );
    }
}

/// One line a worker writes on stdout.
#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerMessage {
    /// A log line of the try.
    Log {
        /// When.
        ts: DateTime<Utc>,
        /// Level name.
        level: String,
        /// Message (already redacted and capped by the worker).
        message: String,
    },
    /// Progress reported by the task.
    Progress {
        /// Units done.
        done: u64,
        /// Units in all.
        total: u64,
    },
    /// DuckDB's estimate for the running statement.
    SqlProgress {
        /// 0–100.
        percent: f64,
    },
    /// How the try ended; the last line.
    Outcome(TryOutcome),
}

impl WorkerMessage {
    /// The wire form of a try's event, if it is one a worker sends.
    pub fn from_event(event: RunEvent) -> Option<Self> {
        match event {
            RunEvent::Log {
                ts, level, message, ..
            } => Some(Self::Log {
                ts,
                level: level.to_owned(),
                message,
            }),
            RunEvent::Progress { done, total, .. } => Some(Self::Progress { done, total }),
            RunEvent::SqlProgress { percent, .. } => Some(Self::SqlProgress { percent }),
            RunEvent::TaskState { .. } | RunEvent::RunFinished { .. } => None,
        }
    }

    /// The event this line reports for try `key`, or the outcome.
    pub(crate) fn into_event(self, key: &TaskKey) -> Result<RunEvent, TryOutcome> {
        Ok(match self {
            Self::Log { ts, level, message } => RunEvent::Log {
                key: key.clone(),
                ts,
                level: static_level(&level),
                message,
            },
            Self::Progress { done, total } => RunEvent::Progress {
                key: key.clone(),
                done,
                total,
            },
            Self::SqlProgress { percent } => RunEvent::SqlProgress {
                key: key.clone(),
                percent,
            },
            Self::Outcome(outcome) => return Err(outcome),
        })
    }
}

/// The level names the log sink uses; anything else is shown as `info`.
fn static_level(level: &str) -> &'static str {
    ["trace", "debug", "info", "warn", "error"]
        .into_iter()
        .find(|l| *l == level)
        .unwrap_or("info")
}

/// Runs each try in a `sluice worker` child process.
pub struct ProcessExecutor {
    /// Loads components ahead (so the worker finds them compiled) and names
    /// the confinement; the tries themselves run in workers.
    local: Arc<LocalExecutor>,
    /// The `sluice` binary.
    exe: PathBuf,
    /// The Sluice home the workers open.
    home: PathBuf,
    allow_unconfined: bool,
    /// Workers started ahead of the tries the scheduler expects.
    spares: Mutex<Vec<Spare>>,
}

/// A worker started for a try that has not started yet, waiting (set up) for
/// its request. Killed when dropped.
struct Spare {
    run_id: String,
    task_id: String,
    component: String,
    child: tokio::process::Child,
    started: Instant,
}

impl ProcessExecutor {
    /// Workers started from `exe` (a `sluice` binary) on the home at `home`.
    pub fn new(
        local: Arc<LocalExecutor>,
        exe: PathBuf,
        home: PathBuf,
        allow_unconfined: bool,
    ) -> Self {
        Self {
            local,
            exe,
            home,
            allow_unconfined,
            spares: Mutex::new(Vec::new()),
        }
    }

    /// Starts a worker for a try of `component`, handing it the component's
    /// sealed code; it sets itself up and waits for its request on stdin.
    /// Must be called on the host's runtime.
    fn start_worker(&self, component: &str) -> std::io::Result<tokio::process::Child> {
        let mut command = tokio::process::Command::new(&self.exe);
        command.arg("--home").arg(&self.home);
        if self.allow_unconfined {
            command.arg("--allow-unconfined");
        }
        command.arg("worker");
        if self.local.uses_sql(component) {
            command.arg(format!("--{WORKER_SQL_OPTION}"));
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        die_with_host(&mut command);
        // A Python task's is its runtime's code: the worker reads the task's
        // sources from the blob store, verifying their digest.
        let code = self.local.sealed_code(component);
        if let Some((component, code)) = &code {
            hand_over(&mut command, code, component);
        }
        // The worker holds its own descriptor once started.
        command.spawn()
    }

    /// The worker started ahead for a try of `component` in `run_id`, if
    /// one waits and is still alive.
    fn take_spare(&self, run_id: &str, component: &str) -> Option<tokio::process::Child> {
        let mut spare = {
            let mut spares = lock(&self.spares);
            let i = spares
                .iter()
                .position(|s| s.run_id == run_id && s.component == component)?;
            spares.swap_remove(i)
        };
        match spare.child.try_wait() {
            Ok(None) => Some(spare.child),
            Ok(Some(status)) => {
                tracing::warn!(
                    "the worker started ahead for component {component} of run {run_id} ended ({status}) before its try; starting another"
                );
                None
            }
            Err(e) => {
                tracing::warn!(
                    "cannot tell whether the worker started ahead for component {component} of run {run_id} is alive ({e}); starting another"
                );
                None
            }
        }
    }
}

impl Executor for ProcessExecutor {
    fn sandbox_label(&self) -> String {
        format!("{}+process", self.local.sandbox_label())
    }

    fn prepare(&self, components: &[(String, String)]) -> Result<(), ExecutorError> {
        self.local.prepare(components)
    }

    fn run(&self, request: TryRequest, events: UnboundedSender<RunEvent>) -> TryFuture {
        let worker = match self.take_spare(&request.key.run_id, &request.component) {
            Some(child) => {
                tracing::debug!(
                    "try {} of task `{}` runs in a worker started ahead (pid {:?})",
                    request.key.try_number,
                    request.key.task_id,
                    child.id()
                );
                Ok(child)
            }
            None => self
                .start_worker(&request.component)
                .map_err(|e| format!("cannot start a worker ({}): {e}", self.exe.display())),
        };
        Box::pin(async move {
            let failed = |error: String| TryOutcome::Failed {
                error,
                retryable: true,
            };
            let line = match serde_json::to_string(&request) {
                Ok(line) => line,
                Err(e) => return failed(format!("cannot encode the try for its worker: {e}")),
            };
            let mut child = match worker {
                Ok(child) => child,
                Err(error) => return failed(error),
            };
            let timeout = request.policy.timeout;
            let outcome = supervise(&mut child, &line, &request.key, &events, timeout).await;
            // A worker reports its outcome only once it holds no file of the
            // run, and then exits; the try need not wait for that. One that
            // does not exit is killed (so is one that never reported).
            let key = request.key;
            tokio::spawn(async move {
                match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("waiting for a worker of {key:?}: {e}"),
                    Err(_) => {
                        if let Err(e) = child.kill().await {
                            tracing::warn!("killing a worker of {key:?}: {e}");
                        }
                    }
                }
            });
            outcome
        })
    }

    fn anticipate(&self, run_id: &str, task_id: &str, component: &str) {
        let mut spares = lock(&self.spares);
        // A task anticipated again still has its worker.
        if spares
            .iter()
            .any(|s| s.run_id == run_id && s.task_id == task_id)
        {
            return;
        }
        if spares.len() >= MAX_SPARES {
            spares.retain(|s| s.started.elapsed() < SPARE_IDLE_LIMIT);
            if spares.len() >= MAX_SPARES {
                return;
            }
        }
        match self.start_worker(component) {
            Ok(child) => spares.push(Spare {
                run_id: run_id.to_owned(),
                task_id: task_id.to_owned(),
                component: component.to_owned(),
                child,
                started: Instant::now(),
            }),
            // The try will start its worker when it starts, and say why
            // if it cannot.
            Err(e) => tracing::warn!(
                "cannot start a worker ahead for task `{task_id}` of run {run_id}: {e}"
            ),
        }
    }

    fn release(&self, run_id: &str) {
        // A worker reports its outcome after closing its databases, and one
        // that ended otherwise was killed (`supervise`): none holds a file
        // of the run by now. Workers started ahead and not used never saw
        // the run; dropping them kills them.
        lock(&self.spares).retain(|s| s.run_id != run_id);
    }
}

/// Has the worker started by `command` killed by the kernel when the
/// thread that starts it ends, however the host ends: a worker left behind
/// would run on past its deadline, which only the host enforces. Workers are
/// started by the run loop, so from a thread that lives as long as the host:
/// one of its runtime's workers, or the main thread of `sluice run`.
fn die_with_host(command: &mut tokio::process::Command) {
    let host = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only `prctl` and `getppid`, which are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // A host that ended before the line above sent no signal.
            if u32::try_from(libc::getppid()).ok() != Some(host) {
                return Err(std::io::Error::other("the host process has ended"));
            }
            Ok(())
        });
    }
}

/// Has the worker started by `command` find `code`, the compiled code of
/// `component`, on [`WORKER_CODE_FD`]. `code` must stay open until the spawn.
fn hand_over(command: &mut tokio::process::Command, code: &SealedCode, component: &str) {
    let fd = code.fd().as_raw_fd();
    command.env(WORKER_CODE_ENV, component);
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only `dup2` and `fcntl`, which are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            // `dup2` onto another number leaves the copy open across exec;
            // onto itself it changes nothing, so clear close-on-exec then.
            let result = if fd == WORKER_CODE_FD {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, WORKER_CODE_FD)
            };
            if result == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Hands `request_line` to the worker and relays what it says until its
/// outcome, killing it at `deadline`.
async fn supervise(
    child: &mut tokio::process::Child,
    request_line: &str,
    key: &TaskKey,
    events: &UnboundedSender<RunEvent>,
    timeout: Duration,
) -> TryOutcome {
    let deadline = tokio::time::Instant::now() + timeout + KILL_GRACE;
    let failed = |error: String| TryOutcome::Failed {
        error,
        retryable: true,
    };
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        stop(child, key).await;
        return failed("a worker was started without its pipes".into());
    };
    if let Err(e) = async {
        stdin.write_all(request_line.as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        stdin.shutdown().await
    }
    .await
    {
        stop(child, key).await;
        return failed(format!("cannot hand the try to its worker: {e}"));
    }
    drop(stdin);
    // The worker's own diagnostics go to the host's log, not the task's; the
    // last few explain a worker that ends without reporting.
    let worker_key = key.clone();
    let diagnostics = tokio::spawn(async move {
        let mut last: Vec<String> = Vec::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::warn!("worker of {worker_key:?}: {line}");
            if last.len() == DIAGNOSTIC_LINES {
                last.remove(0);
            }
            last.push(line.chars().take(512).collect());
        }
        last
    });
    let mut lines = BufReader::new(stdout).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => match serde_json::from_str::<WorkerMessage>(&line) {
                    Ok(message) => match message.into_event(key) {
                        Ok(event) => {
                            // A watcher that went away does not stop the try.
                            let _ = events.send(event);
                        }
                        Err(outcome) => return outcome,
                    },
                    Err(e) => {
                        stop(child, key).await;
                        return failed(format!("the worker sent a line that is not a report ({e})"));
                    }
                },
                Ok(None) => {
                    let status = child.wait().await;
                    let how = match status {
                        Ok(status) => status.to_string(),
                        Err(e) => format!("an unknown status ({e})"),
                    };
                    let said = match tokio::time::timeout(EXIT_GRACE, diagnostics).await {
                        Ok(Ok(lines)) if !lines.is_empty() => format!(": {}", lines.join(" / ")),
                        _ => String::new(),
                    };
                    return failed(format!("the worker process ended ({how}) without reporting how the try ended{said}"));
                }
                Err(e) => {
                    stop(child, key).await;
                    return failed(format!("cannot read the worker's report: {e}"));
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                stop(child, key).await;
                return failed(format!(
                    "timed out after {}: the try was still running {} later and its worker process was killed",
                    humantime::format_duration(timeout),
                    humantime::format_duration(KILL_GRACE)
                ));
            }
        }
    }
}

/// Kills a worker that will not report (and waits for it to be gone): it
/// holds no file of the run after this.
async fn stop(child: &mut tokio::process::Child, key: &TaskKey) {
    if let Err(e) = child.kill().await {
        tracing::warn!("killing the worker of {key:?}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;

    /// A stand-in for `sluice worker` (called as `exe --home HOME worker`):
    /// notes its pid in HOME/started, waits for its request, notes its pid in
    /// HOME/served and reports success.
    fn fake_worker(dir: &Path) -> PathBuf {
        let outcome = WorkerMessage::Outcome(TryOutcome::Success {
            output: "{}".into(),
        });
        let line = serde_json::to_string(&outcome).expect("an outcome encodes");
        let script = format!(
            "#!/bin/sh\necho $$ >> \"$2/started\"\nIFS= read -r request || exit 3\necho $$ >> \"$2/served\"\necho '{line}'\n"
        );
        let path = dir.join("worker.sh");
        std::fs::write(&path, script).expect("write the fake worker");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("make the fake worker executable");
        path
    }

    fn pids(home: &Path, file: &str) -> Vec<i32> {
        match std::fs::read_to_string(home.join(file)) {
            Ok(text) => text
                .lines()
                .map(|l| l.parse().expect("a pid per line"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("read {file}: {e}"),
        }
    }

    /// Waits (up to 10 s) until `count` workers have noted their pid.
    async fn started(home: &Path, count: usize) -> Vec<i32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let started = pids(home, "started");
            if started.len() >= count || Instant::now() > deadline {
                return started;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether process `pid` has ended (gone, or a zombie not yet reaped).
    fn ended(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
            Err(_) => true,
        }
    }

    fn request(run_id: &str, component: &str) -> TryRequest {
        let mut request = TryRequest::for_tests(run_id, "t", component);
        request.policy.timeout = Duration::from_secs(10);
        request
    }

    #[tokio::test]
    async fn a_worker_started_ahead_serves_its_try_and_one_not_needed_is_killed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let sluice = crate::Sluice::open(&home).expect("open a home");
        let executor = ProcessExecutor::new(
            sluice.local_executor(),
            fake_worker(dir.path()),
            home.clone(),
            false,
        );
        let (events, _received) = tokio::sync::mpsc::unbounded_channel();

        // Expected: started at once, and it waits for its request.
        executor.anticipate("r1", "t", "c1");
        executor.anticipate("r1", "t", "c1");
        let ahead = started(&home, 1).await;
        assert_eq!(ahead.len(), 1, "the expected try's worker starts ahead");
        assert_eq!(
            lock(&executor.spares).len(),
            1,
            "once for a task expected twice"
        );
        assert!(pids(&home, "served").is_empty());

        // The try of that run and component takes it.
        let outcome = executor.run(request("r1", "c1"), events.clone()).await;
        assert!(matches!(outcome, TryOutcome::Success { .. }), "{outcome:?}");
        assert_eq!(
            pids(&home, "served"),
            ahead,
            "the try ran in the worker started ahead"
        );

        // Another try finds none waiting and gets a process of its own; so
        // does one of another run.
        executor.anticipate("r2", "t", "c1");
        let outcome = executor.run(request("r1", "c1"), events.clone()).await;
        assert!(matches!(outcome, TryOutcome::Success { .. }), "{outcome:?}");
        let all = started(&home, 3).await;
        assert_eq!(all.len(), 3);
        let served = pids(&home, "served");
        assert_eq!(served.len(), 2);
        assert_eq!(served[0], ahead[0]);
        assert_ne!(served[1], ahead[0], "a worker serves one try");

        // No more than MAX_SPARES wait at once, and the end of their run
        // kills them unused.
        executor.anticipate("r2", "u", "c2");
        executor.anticipate("r2", "v", "c3");
        assert_eq!(lock(&executor.spares).len(), MAX_SPARES);
        let waiting: Vec<i32> = started(&home, 4)
            .await
            .into_iter()
            .filter(|pid| !served.contains(pid))
            .collect();
        assert_eq!(waiting.len(), MAX_SPARES);
        executor.release("r2");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !waiting.iter().all(|&pid| ended(pid)) {
            assert!(
                Instant::now() < deadline,
                "unused workers outlive their run's release"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(lock(&executor.spares).is_empty());
        assert_eq!(pids(&home, "served").len(), 2);
    }
}
