//! A real PostgreSQL server for the tests: a fresh cluster (initdb) on a free
//! loopback port, password authentication over TCP, started once per test
//! process and stopped when it exits. As root, it runs as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/lib/postgresql/15/bin";
/// The superuser's password: what the tests search for in everything stored.
pub const PASSWORD: &str = "pg-Secret-4c1d9e77";

pub struct PgServer {
    pub port: u16,
    pub dir: PathBuf,
    /// The server (via runuser when root); stopped at exit by `stop_postmaster`.
    _process: std::process::Child,
}

impl PgServer {
    /// The Airflow-style URI of database `postgres` as superuser `postgres`.
    pub fn uri(&self) -> String {
        format!(
            "postgresql://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// Runs SQL through `psql` (trusted local socket), returning its output.
    pub fn psql(&self, sql: &str) -> String {
        let out = as_postgres(&format!("{BIN}/psql"))
            .args([
                "-h",
                &self.dir.display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", "postgres", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

static POSTMASTER: AtomicI32 = AtomicI32::new(0);

extern "C" fn stop_postmaster() {
    let pid = POSTMASTER.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: signalling the server process this test process started.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
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
        let status = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(path)
            .status()
            .expect("chown");
        assert!(status.success());
    }
}

/// The shared server, started on first use.
pub fn server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        assert!(
            Path::new(BIN).join("initdb").exists(),
            "PostgreSQL 15 server binaries not found in {BIN}: install postgresql-15 (.ci/run does)"
        );
        let dir = std::env::temp_dir().join(format!("sluice-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pg dir");
        std::fs::write(dir.join("pwfile"), PASSWORD).expect("pwfile");
        give_to_postgres(&dir);
        let data = dir.join("data");
        let out = as_postgres(&format!("{BIN}/initdb"))
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
            .arg(format!("--pwfile={}", dir.join("pwfile").display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.join("server.log")).expect("log");
        give_to_postgres(&dir.join("server.log"));
        let child = as_postgres(&format!("{BIN}/postgres"))
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
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(format!("{BIN}/pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .output()
                .is_ok_and(|o| o.status.success());
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
            _process: child,
        };
        // SAFETY: registering a plain extern "C" function to run at process exit.
        unsafe { libc::atexit(stop_postmaster) };
        server
    })
}
