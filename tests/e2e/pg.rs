//! A real PostgreSQL server for the tests: a fresh cluster (initdb) on a free
//! loopback port, password authentication over TCP (plain or TLS, with a
//! certificate from a CA made for the run), started once per test process and
//! stopped when it exits. As root, it runs as the `postgres` user.
//!
//! The tests' connections log in as [`TASK_ROLE`], a least-privilege role made
//! as SECURITY.md shows (LOGIN, rights on schemas and tables, nothing else): a
//! superuser connection is refused to a task that does not opt in.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::support::{CHILD_DEADLINE, Spawned, output_within};

/// The server programs the fixture runs, all from one directory.
const PROGRAMS: [&str; 4] = ["initdb", "postgres", "pg_isready", "psql"];
/// The password of [`TASK_ROLE`]: what the tests search for in everything stored.
pub const PASSWORD: &str = "pg-Secret-4c1d9e77";
/// The least-privilege role the tests' connections use.
pub const TASK_ROLE: &str = "sluice_task";
/// The superuser `postgres`'s password.
pub const SUPERUSER_PASSWORD: &str = "pg-Super-51b0e2a8";

pub struct PgServer {
    pub port: u16,
    pub dir: PathBuf,
    /// The PEM file of the CA that signed the server's certificate (for 127.0.0.1).
    pub ca: PathBuf,
    /// The server (via runuser when root); stopped at exit by `stop_postmaster`.
    _process: std::process::Child,
}

impl PgServer {
    /// The Airflow-style URI of database `postgres` as [`TASK_ROLE`].
    pub fn uri(&self) -> String {
        format!(
            "postgresql://{TASK_ROLE}:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The Airflow-style URI of database `postgres` as superuser `postgres`.
    pub fn superuser_uri(&self) -> String {
        format!(
            "postgresql://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// Runs SQL through `psql` (trusted local socket), returning its output.
    pub fn psql(&self, sql: &str) -> String {
        let out = output_within(
            as_postgres(&bin("psql"))
                .args([
                    "-h",
                    &self.dir.display().to_string(),
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .args(["-d", "postgres", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]),
            CHILD_DEADLINE,
        );
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

static POSTMASTER: AtomicI32 = AtomicI32::new(0);
/// The cluster's directory, removed at exit (a test run leaves gigabytes of tables).
static CLUSTER_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Whether process `pid` is gone (or reaped now, if it was our child).
fn gone(pid: i32) -> bool {
    // SAFETY: waitpid with WNOHANG and a null status pointer only reaps a
    // finished child of ours; kill with signal 0 only checks existence.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) == pid || libc::kill(pid, 0) != 0
    }
}

extern "C" fn stop_postmaster() {
    let pid = POSTMASTER.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: signalling the server process this test process started.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
        for _ in 0..100 {
            if gone(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if let Some(dir) = CLUSTER_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Removes clusters left by test processes that no longer run (killed ones).
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("sluice-pg-"))
            .and_then(|n| n.parse::<i32>().ok());
        if pid.is_some_and(gone) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn as_postgres(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn give_to_postgres(path: &Path) {
    if is_root() {
        let out = output_within(
            Command::new("chown").args(["-R", "postgres"]).arg(path),
            CHILD_DEADLINE,
        );
        assert!(
            out.status.success(),
            "chown: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The path of the server program `program`.
fn bin(program: &str) -> String {
    bin_dir().join(program).display().to_string()
}

/// The directory holding the PostgreSQL server programs: `pg_config --bindir`,
/// else the usual install places, newest version first, else where `initdb` on
/// `PATH` really lives. Panics naming every place it looked if none has them all.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut looked = Vec::new();
        for (source, dir) in bin_dir_candidates() {
            let dir = match dir {
                Ok(dir) => dir,
                Err(nothing) => {
                    looked.push(format!("{source}: {nothing}"));
                    continue;
                }
            };
            let missing: Vec<&str> = PROGRAMS
                .into_iter()
                .filter(|p| !dir.join(p).is_file())
                .collect();
            if missing.is_empty() {
                return dir;
            }
            looked.push(format!(
                "{} ({source}): no {}",
                dir.display(),
                missing.join(", ")
            ));
        }
        panic!(
            "no PostgreSQL server binaries ({}) found. Looked in:\n  {}\n\
             Install a server, e.g. `apt-get install postgresql` (.ci/run does)",
            PROGRAMS.join(", "),
            looked.join("\n  ")
        )
    })
}

/// Directories that may hold the server programs, most wanted first, each with
/// how it was found (or why a place gave none).
fn bin_dir_candidates() -> Vec<(&'static str, Result<PathBuf, String>)> {
    let mut dirs = Vec::new();
    let pg_config = Spawned::try_new(
        Command::new("pg_config")
            .arg("--bindir")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null()),
    );
    match pg_config {
        Ok(pg_config) => {
            let out = pg_config.output_within(Duration::from_secs(30));
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && !dir.is_empty() {
                dirs.push(("pg_config --bindir", Ok(PathBuf::from(dir))));
            } else {
                dirs.push(("pg_config --bindir", Err(format!("{}", out.status))));
            }
        }
        // Not installed is not an error: the other places are searched.
        Err(e) => dirs.push((
            "pg_config --bindir",
            Err(format!("cannot run pg_config ({e})")),
        )),
    }
    // Debian and Ubuntu (/usr/lib/postgresql/<version>/bin), the PGDG packages
    // for RHEL (/usr/pgsql-<version>/bin): newest version first.
    for (parent, prefix, source) in [
        ("/usr/lib/postgresql", "", "/usr/lib/postgresql/*/bin"),
        ("/usr", "pgsql-", "/usr/pgsql-*/bin"),
    ] {
        let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(parent)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let version = name
                    .strip_prefix(prefix)?
                    .split('.')
                    .map(|n| n.parse::<u32>().ok())
                    .collect::<Option<Vec<u32>>>()?;
                Some((version, entry.path().join("bin")))
            })
            .collect();
        if versions.is_empty() {
            dirs.push((source, Err("none".to_owned())));
        }
        versions.sort_by(|a, b| b.0.cmp(&a.0));
        dirs.extend(versions.into_iter().map(|(_, dir)| (source, Ok(dir))));
    }
    dirs.push(("source builds", Ok(PathBuf::from("/usr/local/pgsql/bin"))));
    // `initdb` on PATH, through any symlink to the directory it comes from.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let before = dirs.len();
    for dir in std::env::split_paths(&path) {
        if let Ok(initdb) = dir.join("initdb").canonicalize()
            && let Some(real) = initdb.parent()
        {
            dirs.push(("initdb on PATH", Ok(real.to_path_buf())));
        }
    }
    if dirs.len() == before {
        dirs.push(("initdb on PATH", Err("none".to_owned())));
    }
    dirs
}

/// The shared server, started on first use.
pub fn server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        remove_stale_clusters();
        let dir = std::env::temp_dir().join(format!("sluice-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pg dir");
        let _ = CLUSTER_DIR.set(dir.clone());
        std::fs::write(dir.join("pwfile"), SUPERUSER_PASSWORD).expect("pwfile");
        give_to_postgres(&dir);
        let data = dir.join("data");
        let out = output_within(
            as_postgres(&bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", dir.join("pwfile").display())),
            CHILD_DEADLINE,
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ca = make_certificates(&dir);
        let port = free_port();
        let log = std::fs::File::create(dir.join("server.log")).expect("log");
        give_to_postgres(&dir.join("server.log"));
        let child = as_postgres(&bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k", &dir.display().to_string()])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "ssl=on",
            ])
            .arg("-c")
            .arg(format!(
                "ssl_cert_file={}",
                dir.join("server.crt").display()
            ))
            .arg("-c")
            .arg(format!("ssl_key_file={}", dir.join("server.key").display()))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = output_within(
                Command::new(bin("pg_isready")).args(["-h", "127.0.0.1", "-p", &port.to_string()]),
                Duration::from_secs(30),
            )
            .status
            .success();
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let pid: i32 = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
            .unwrap_or(child.id() as i32);
        POSTMASTER.store(pid, Ordering::SeqCst);
        let server = PgServer {
            port,
            dir: dir.clone(),
            ca,
            _process: child,
        };
        // SAFETY: registering a plain extern "C" function to run at process exit.
        unsafe { libc::atexit(stop_postmaster) };
        // The least-privilege role of SECURITY.md; default privileges give it
        // what the tests create as `postgres` (schemas, tables, sequences).
        server.psql(&format!(
            "CREATE ROLE {TASK_ROLE} LOGIN PASSWORD '{PASSWORD}'; \
             GRANT USAGE, CREATE ON SCHEMA public TO {TASK_ROLE}; \
             ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT USAGE, CREATE ON SCHEMAS TO {TASK_ROLE}; \
             ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON TABLES TO {TASK_ROLE}; \
             ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON SEQUENCES TO {TASK_ROLE}"
        ));
        server
    })
}

/// [`certificates_for_localhost`] in `dir`, readable by the server; returns the CA's PEM file.
fn make_certificates(dir: &Path) -> PathBuf {
    let ca = certificates_for_localhost(dir);
    give_to_postgres(&dir.join("server.key"));
    give_to_postgres(&dir.join("server.crt"));
    ca
}

/// A CA (`ca.pem`) and a server certificate (`server.crt`, key `server.key`, mode 0600) for
/// 127.0.0.1 only (not `localhost`) signed by it (P-256, with `openssl`), in `dir`; returns the
/// CA's PEM file.
pub fn certificates_for_localhost(dir: &Path) -> PathBuf {
    let openssl = |args: &[&str]| {
        let out = Spawned::try_new(
            Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped()),
        )
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): install it (.ci/run does)"))
        .output_within(CHILD_DEADLINE);
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=sluice test CA"],
            &[
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .expect("extensions");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    std::fs::set_permissions(
        dir.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("key mode");
    dir.join("ca.pem")
}
