//! Kernel confinement of the host threads that touch files for a task.
//!
//! A task shapes its staging directory through WASI, and the host then opens
//! files there with its own rights: DuckDB for the task's SQL, the object-store
//! transfers. Path checks in user space can be raced, and DuckDB falls back to a
//! path's text when `realpath` fails, so the kernel is the layer that holds:
//! every such thread runs under a Landlock domain that allows the run's staging
//! directory (no links, devices, pipes or sockets may be made there) and a few
//! read-only system files DuckDB reads when it opens, and no TCP. Landlock checks
//! the file actually opened, after links, and a domain is inherited by the
//! threads a confined thread starts, so DuckDB's worker threads are confined too.
//!
//! A domain cannot be lifted, so confinement is for threads that serve one
//! task instance and then end: the SQL session's thread, and a short-lived
//! thread per transfer that opens the file and hands back the descriptor.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};

/// The Landlock ABI whose rights are asked for; an older kernel enforces what it
/// knows (the status says how much).
const WANTED: ABI = ABI::V6;

/// Read-only files and trees DuckDB reads when a database opens (CPU count and
/// cgroup limits, time zone). Without them DuckDB aborts the process. Missing
/// ones are skipped: not every machine has every file.
const SYSTEM_READ: &[&str] = &[
    "/sys/fs/cgroup",
    "/sys/devices/system/cpu",
    "/etc/localtime",
    "/usr/share/zoneinfo",
];

/// Why a thread could not be confined.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The kernel cannot confine, and the operator did not allow running without it.
    #[error(
        "this host cannot confine tasks ({reason}); refusing to run a task without the kernel layer of the sandbox. \
         Use a kernel with Landlock (Linux 5.13+, `lsm=landlock` enabled), or pass --allow-unconfined to run tasks without it"
    )]
    Unavailable {
        /// What the kernel said.
        reason: String,
    },
    /// Building or applying the Landlock ruleset failed.
    #[error("cannot confine the thread to {path}: {message}")]
    Landlock {
        /// The staging directory.
        path: String,
        /// What failed.
        message: String,
    },
    /// The confined thread could not start or died.
    #[error("the confined thread for {path} failed: {message}")]
    Thread {
        /// The staging directory.
        path: String,
        /// What failed.
        message: String,
    },
}

/// How this process confines the host threads working for tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandbox {
    /// Landlock, with the kernel's ABI version.
    Landlock {
        /// `landlock_create_ruleset(.., LANDLOCK_CREATE_RULESET_VERSION)`.
        abi: i32,
    },
    /// The kernel has no Landlock: tasks are refused.
    Unavailable {
        /// Why (the kernel's answer).
        reason: String,
    },
    /// The kernel has no Landlock and the operator chose to run tasks anyway.
    Unconfined {
        /// Why the kernel layer is missing.
        reason: String,
    },
}

impl Sandbox {
    /// What this kernel offers.
    pub fn detect() -> Self {
        match landlock_abi() {
            Ok(abi) if abi >= 1 => Self::Landlock { abi },
            Ok(abi) => Self::Unavailable {
                reason: format!("Landlock reports ABI {abi}"),
            },
            Err(e) => Self::Unavailable {
                reason: match e.raw_os_error() {
                    Some(libc::ENOSYS) => "the kernel is built without Landlock".to_owned(),
                    Some(libc::EOPNOTSUPP) => {
                        "Landlock is built in but not enabled at boot (add it to `lsm=`)".to_owned()
                    }
                    _ => format!("Landlock: {e}"),
                },
            },
        }
    }

    /// The operator's explicit choice to run tasks without the kernel layer
    /// when the kernel has none; changes nothing where Landlock works.
    #[must_use]
    pub fn allow_unconfined(self, allow: bool) -> Self {
        match self {
            Self::Unavailable { reason } if allow => Self::Unconfined { reason },
            other => other,
        }
    }

    /// Fails when tasks must be refused (no Landlock, no opt-out).
    pub fn check(&self) -> Result<(), ConfineError> {
        match self {
            Self::Unavailable { reason } => Err(ConfineError::Unavailable {
                reason: reason.clone(),
            }),
            Self::Landlock { .. } | Self::Unconfined { .. } => Ok(()),
        }
    }

    /// One word and the version, as recorded with each try and shown by `runs show`.
    pub fn label(&self) -> String {
        match self {
            Self::Landlock { abi } => format!("landlock-v{abi}"),
            Self::Unavailable { .. } => "unavailable".to_owned(),
            Self::Unconfined { .. } => "unconfined".to_owned(),
        }
    }

    /// A line for the start of a command that runs tasks.
    pub fn describe(&self) -> String {
        match self {
            Self::Landlock { abi } => format!(
                "sandbox: WASI capabilities + DuckDB lockdown + Landlock (kernel ABI {abi}) on every host thread that opens files for a task"
            ),
            Self::Unavailable { reason } => {
                format!("sandbox: tasks refused: no kernel confinement ({reason})")
            }
            Self::Unconfined { reason } => format!(
                "sandbox: WARNING: running tasks WITHOUT kernel confinement ({reason}; --allow-unconfined): only WASI and DuckDB's own checks stand between a task and this host's files"
            ),
        }
    }

    /// Confines the calling thread, and every thread it starts from now on, to
    /// `staging`. Irreversible: call it only on a thread that serves this one
    /// staging directory and then ends.
    pub fn confine_current_thread(&self, staging: &Path) -> Result<(), ConfineError> {
        match self {
            Self::Landlock { .. } => restrict(staging),
            Self::Unconfined { .. } => Ok(()),
            Self::Unavailable { reason } => Err(ConfineError::Unavailable {
                reason: reason.clone(),
            }),
        }
    }

    /// Runs `f` on a new thread confined to `staging` and returns what it
    /// returned. Use it to open a file (the descriptor then works anywhere).
    pub fn run_confined<T: Send>(
        &self,
        staging: &Path,
        f: impl FnOnce() -> T + Send,
    ) -> Result<T, ConfineError> {
        let failed = |message: String| ConfineError::Thread {
            path: staging.display().to_string(),
            message,
        };
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("sluice-confined".into())
                .spawn_scoped(scope, || {
                    self.confine_current_thread(staging)?;
                    Ok(f())
                })
                .map_err(|e| failed(e.to_string()))?;
            thread
                .join()
                .map_err(|_| failed("it panicked".to_owned()))?
        })
    }
}

/// The kernel's Landlock ABI version.
fn landlock_abi() -> std::io::Result<i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag, the
    // call only returns the ABI version (or an error); it touches no memory.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if abi < 0 {
        return Err(std::io::Error::last_os_error());
    }
    i32::try_from(abi).map_err(|_| std::io::Error::other(format!("Landlock ABI {abi}")))
}

/// What a task's host threads may do beneath staging: read, write, make
/// directories and regular files, remove, rename and truncate; never make a
/// link, device, pipe or socket, execute, or send device ioctls.
fn staging_access() -> BitFlags<AccessFs> {
    AccessFs::from_all(WANTED)
        & !(AccessFs::MakeSym
            | AccessFs::MakeChar
            | AccessFs::MakeBlock
            | AccessFs::MakeFifo
            | AccessFs::MakeSock
            | AccessFs::Execute
            | AccessFs::IoctlDev)
}

fn restrict(staging: &Path) -> Result<(), ConfineError> {
    let failed = |message: String| ConfineError::Landlock {
        path: staging.display().to_string(),
        message,
    };
    let staging_fd = PathFd::new(staging).map_err(|e| failed(e.to_string()))?;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(WANTED))
        .and_then(|r| r.handle_access(AccessNet::from_all(WANTED)))
        .and_then(|r| r.scope(Scope::from_all(WANTED)))
        .and_then(Ruleset::create)
        .and_then(|r| r.add_rule(PathBeneath::new(staging_fd, staging_access())))
        .map_err(|e| failed(e.to_string()))?;
    for path in system_read_paths() {
        let Ok(fd) = PathFd::new(&path) else {
            continue;
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, AccessFs::ReadFile | AccessFs::ReadDir))
            .map_err(|e| failed(format!("{}: {e}", path.display())))?;
    }
    let status = ruleset.restrict_self().map_err(|e| failed(e.to_string()))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(failed("the kernel enforced none of the ruleset".to_owned()));
    }
    Ok(())
}

/// The system paths, with the time-zone file's link target as well (a rule on
/// `/etc/localtime` itself covers only the link, not the file it names).
fn system_read_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
    if let Ok(target) = std::fs::canonicalize("/etc/localtime") {
        paths.push(target);
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn landlock() -> Sandbox {
        let sandbox = Sandbox::detect();
        assert!(
            matches!(sandbox, Sandbox::Landlock { .. }),
            "these tests need a kernel with Landlock: {sandbox:?}"
        );
        sandbox
    }

    #[test]
    fn a_confined_thread_reaches_staging_and_nothing_else() {
        let sandbox = landlock();
        let root = tempfile::tempdir().expect("tempdir");
        let staging = root.path().join("run");
        std::fs::create_dir(&staging).expect("staging");
        std::fs::write(root.path().join("secret"), "secret").expect("secret");
        std::os::unix::fs::symlink("../secret", staging.join("link")).expect("link");
        std::os::unix::fs::symlink("../planted", staging.join("dangling")).expect("dangling");

        // A file outside, open in this process: its /proc/self/fd link leads to it.
        let held = std::fs::File::open(root.path().join("secret")).expect("open secret");
        let fd_link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&held));
        let seen = sandbox
            .run_confined(&staging, || {
                let inside = std::fs::write(staging.join("ok.txt"), "ok");
                let via_link = std::fs::read_to_string(staging.join("link"));
                let via_dangling = std::fs::write(staging.join("dangling"), "planted");
                let symlink = std::os::unix::fs::symlink("x", staging.join("new-link"));
                let passwd = std::fs::read_to_string("/etc/passwd");
                // (A pipe or memfd reached this way is not governed by
                // Landlock; no path a task names can lead there: SECURITY.md.)
                let proc = std::fs::read_to_string("/proc/self/maps")
                    .or_else(|_| std::fs::read_to_string(&fd_link));
                (inside, via_link, via_dangling, symlink, passwd, proc)
            })
            .expect("confined");
        let (inside, via_link, via_dangling, symlink, passwd, proc) = seen;
        assert!(inside.is_ok(), "{inside:?}");
        assert!(via_link.is_err(), "read through a link: {via_link:?}");
        assert!(via_dangling.is_err(), "wrote through a dangling link");
        assert!(!root.path().join("planted").exists());
        assert!(symlink.is_err(), "made a symlink");
        assert!(passwd.is_err(), "read /etc/passwd");
        assert!(
            proc.is_err(),
            "read /proc/self/maps or a file through /proc/self/fd"
        );
        // The calling thread is not confined.
        assert!(std::fs::read_to_string(staging.join("link")).is_ok());
    }

    #[test]
    fn threads_started_by_a_confined_thread_are_confined() {
        let sandbox = landlock();
        let staging = tempfile::tempdir().expect("tempdir");
        let read = sandbox
            .run_confined(staging.path(), || {
                std::thread::spawn(|| std::fs::read_to_string("/etc/passwd").is_ok())
                    .join()
                    .expect("join")
            })
            .expect("confined");
        assert!(!read, "a child of a confined thread read /etc/passwd");
    }

    #[test]
    fn no_landlock_refuses_unless_the_operator_allows_it() {
        let missing = Sandbox::Unavailable {
            reason: "test".into(),
        };
        let staging = tempfile::tempdir().expect("tempdir");
        assert!(missing.check().is_err());
        let refused = missing.run_confined(staging.path(), || ());
        assert!(
            matches!(refused, Err(ConfineError::Unavailable { .. })),
            "{refused:?}"
        );
        let allowed = missing.clone().allow_unconfined(true);
        assert!(allowed.check().is_ok());
        assert_eq!(allowed.label(), "unconfined");
        assert!(allowed.run_confined(staging.path(), || ()).is_ok());
        // The flag changes nothing where Landlock works.
        let landlock = Sandbox::Landlock { abi: 7 }.allow_unconfined(true);
        assert_eq!(landlock, Sandbox::Landlock { abi: 7 });
    }
}
