//! The layers under WASI: a task cannot make links in staging (layer 1), and
//! when a link is there anyway (made some other way, or swapped in mid-statement)
//! the kernel stops DuckDB from following it out (layer 3, Landlock). The
//! kernel-layer tests plant the links themselves, as if layer 1 had failed,
//! and run each attack both confined and not: without the kernel layer some
//! must get out (else they prove nothing), with it none may.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::capabilities::sql::{SqlConfig, SqlPool, SqlSession};
use sluice::confine::Sandbox;

use crate::support::{TestHome, text};

const SECRET: &str = "outside-secret";

/// Held while a session runs without the kernel layer, and while threads are
/// checked for it, so the check never sees the unconfined session's thread.
static UNCONFINED: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cannot_make_links_in_staging() {
    let home = TestHome::new();
    let run = home
        .run(
            "links",
            "[tasks.a]\nplugin = \"testkit\"\nparams = { mode = \"links\" }\n",
            json!({}),
        )
        .await;
    assert_eq!(run.state.as_str(), "success", "{:?}", run.error);
    let report = home.output(&run.run_id, "a");
    let links = report["links"].as_array().expect("links");
    assert_eq!(links.len(), 5);
    for link in links {
        assert_eq!(link["made"], false, "a link was made: {link}");
        assert_eq!(
            link["exists"], false,
            "something is at the link's path: {link}"
        );
        let error = link["error"].as_str().unwrap_or_default();
        assert!(error.contains("not permitted"), "{link}");
    }
    assert!(!home.dir.path().join("sluice-planted").exists());
    let log = home.log_text(&run.run_id, "a");
    assert!(
        log.contains("[sluice] refused: symbolic link `")
            && log.contains("[sluice] refused: hard link `"),
        "{log}"
    );

    // The run says how its tries were confined.
    let sandboxes = home
        .sluice
        .store
        .run_sandboxes(&run.run_id)
        .expect("sandbox");
    assert_eq!(sandboxes, vec![home.sluice.sandbox().label()]);
    assert!(sandboxes[0].starts_with("landlock-v"), "{sandboxes:?}");
    let (stdout, stderr) = text(&home.cli(&["runs", "show", &run.run_id]));
    assert!(
        stdout.contains(&format!("sandbox  {}", sandboxes[0])),
        "{stdout}{stderr}"
    );
    // A command that runs tasks says how they are confined when it starts.
    let manifest = home.dir.path().join("dags/links/dag.toml");
    let ran = home.cli(&["run", &manifest.display().to_string(), "--no-progress"]);
    let (stdout, stderr) = text(&ran);
    assert!(ran.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("sandbox: WASI capabilities + DuckDB lockdown + Landlock (kernel ABI"),
        "{stderr}"
    );
}

/// A run's staging directory beside an `outside` directory holding a secret,
/// under a private temporary root.
struct Layout {
    _root: tempfile::TempDir,
    staging: PathBuf,
    outside: PathBuf,
}

impl Layout {
    fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let root_path = root.path().canonicalize().expect("canonical");
        let staging = root_path.join("staging").join("run");
        let outside = root_path.join("outside");
        std::fs::create_dir_all(&staging).expect("staging");
        std::fs::create_dir_all(outside.join("export")).expect("outside");
        std::fs::write(outside.join("secret.txt"), SECRET).expect("secret");
        Self {
            _root: root,
            staging,
            outside,
        }
    }

    /// A link in staging named `name` pointing at `target` (relative to staging).
    fn plant(&self, name: &str, target: &str) {
        std::os::unix::fs::symlink(target, self.staging.join(name)).expect("plant link");
    }

    fn path(&self, name: &str) -> String {
        self.staging.join(name).display().to_string()
    }

    fn session(&self, sandbox: Sandbox) -> SqlSession {
        SqlSession::new(
            std::sync::Arc::new(SqlPool::on_demand()),
            SqlConfig {
                staging_dir: self.staging.clone(),
                memory_limit: 512 << 20,
                threads: 2,
                spill_limit: 512 << 20,
                sandbox,
            },
        )
    }
}

fn landlock() -> Sandbox {
    let sandbox = Sandbox::detect();
    assert!(
        matches!(sandbox, Sandbox::Landlock { .. }),
        "these tests need a kernel with Landlock (ABI 1+): {sandbox:?}"
    );
    sandbox
}

fn unconfined() -> Sandbox {
    Sandbox::Unconfined {
        reason: "test: DuckDB's own lockdown alone".into(),
    }
}

/// Tells from a statement's result (or from what it left outside) whether it got out.
type GotOut = Box<dyn Fn(&Result<String, String>) -> bool>;

/// An attack on one planted link and how to tell that it got out.
struct Attack {
    name: &'static str,
    sql: String,
    /// True when the attack reached outside staging.
    got_out: GotOut,
}

fn wrote(path: PathBuf) -> GotOut {
    Box::new(move |_| path.exists())
}

fn leaked() -> GotOut {
    Box::new(|result| result.as_ref().is_ok_and(|rows| rows.contains(SECRET)))
}

/// Plants the links and returns the attacks on them: every DuckDB writer
/// through a dangling link, readers through links to a file, a directory and
/// `/proc`, and `glob` through a linked directory.
fn attacks(layout: &Layout, open_fd: i32) -> Vec<Attack> {
    let out = &layout.outside;
    for name in ["csv", "parquet", "json", "blob", "db"] {
        layout.plant(&format!("w-{name}"), &format!("../../outside/w-{name}"));
    }
    layout.plant("d-export", "../../outside/export");
    layout.plant("r-secret", "../../outside/secret.txt");
    layout.plant("d-out", "../../outside");
    layout.plant("p-maps", "/proc/self/maps");
    layout.plant("p-environ", "../../../../../../../../proc/self/environ");
    layout.plant("p-fd", &format!("/proc/self/fd/{open_fd}"));
    let s = |name: &str| layout.path(name);
    let copy = |name: &str, format: &str| {
        format!(
            "COPY (SELECT '{SECRET}' AS x) TO '{}' (FORMAT {format})",
            s(&format!("w-{name}"))
        )
    };
    vec![
        Attack {
            name: "COPY csv through a dangling link",
            sql: copy("csv", "csv"),
            got_out: wrote(out.join("w-csv")),
        },
        Attack {
            name: "COPY parquet through a dangling link",
            sql: copy("parquet", "parquet"),
            got_out: wrote(out.join("w-parquet")),
        },
        Attack {
            name: "COPY json through a dangling link",
            sql: copy("json", "json"),
            got_out: wrote(out.join("w-json")),
        },
        Attack {
            name: "COPY blob through a dangling link",
            sql: format!(
                "COPY (SELECT '{SECRET}'::BLOB AS x) TO '{}' (FORMAT blob)",
                s("w-blob")
            ),
            got_out: wrote(out.join("w-blob")),
        },
        Attack {
            name: "ATTACH a new database through a dangling link",
            sql: format!(
                "ATTACH '{}' AS planted; CREATE TABLE planted.t AS SELECT 1 AS x;",
                s("w-db")
            ),
            got_out: wrote(out.join("w-db")),
        },
        Attack {
            name: "EXPORT DATABASE into a linked directory",
            sql: format!("EXPORT DATABASE '{}'", s("d-export")),
            got_out: wrote(out.join("export").join("schema.sql")),
        },
        Attack {
            name: "read_text through a link to a file",
            sql: format!("SELECT content FROM read_text('{}')", s("r-secret")),
            got_out: leaked(),
        },
        Attack {
            name: "read_text through a linked directory",
            sql: format!("SELECT content FROM read_text('{}/secret.txt')", s("d-out")),
            got_out: leaked(),
        },
        Attack {
            name: "glob through a linked directory",
            sql: format!(
                "SELECT file FROM glob('{}/d-*/*')",
                layout.staging.display()
            ),
            got_out: Box::new(|result| {
                result
                    .as_ref()
                    .is_ok_and(|rows| rows.contains("secret.txt"))
            }),
        },
        Attack {
            name: "read_text of /proc/self/maps through a link",
            sql: format!("SELECT content FROM read_text('{}')", s("p-maps")),
            got_out: Box::new(|result| result.as_ref().is_ok_and(|rows| rows.contains("r-xp"))),
        },
        Attack {
            name: "read_text of /proc/self/environ through a link",
            sql: format!(
                "SELECT length(content) AS n FROM read_blob('{}')",
                s("p-environ")
            ),
            got_out: Box::new(|result| result.is_ok()),
        },
        Attack {
            name: "read_text of /proc/self/fd/N (a file outside) through a link",
            sql: format!("SELECT content FROM read_text('{}')", s("p-fd")),
            got_out: leaked(),
        },
    ]
}

/// Runs every attack in a fresh layout under `sandbox`; the names of those that got out.
fn escapes(sandbox: Sandbox) -> Vec<String> {
    let layout = Layout::new();
    let held = std::fs::File::open(layout.outside.join("secret.txt")).expect("open secret");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&held);
    let attacks = attacks(&layout, fd);
    let mut session = layout.session(sandbox);
    let mut out = Vec::new();
    for attack in &attacks {
        let result = if attack.sql.starts_with("SELECT") {
            session.query_json(&attack.sql, 100).map_err(|e| e.message)
        } else {
            attack
                .sql
                .split_inclusive(';')
                .map(|statement| session.execute(statement).map_err(|e| e.message))
                .collect::<Result<Vec<u64>, String>>()
                .map(|rows| format!("{rows:?}"))
        };
        if (attack.got_out)(&result) {
            out.push(format!("{}: {result:?}", attack.name));
        }
    }
    out
}

#[test]
fn planted_links_lead_duckdb_nowhere_under_the_kernel_layer() {
    let confined = escapes(landlock());
    assert!(
        confined.is_empty(),
        "attacks that got out under Landlock: {confined:#?}"
    );
    // The same attacks with DuckDB's own checks alone: some get out, so the
    // attacks are real and the kernel layer is what held above.
    let bare = {
        let _alone = UNCONFINED.lock().unwrap_or_else(|p| p.into_inner());
        escapes(unconfined())
    };
    assert!(
        !bare.is_empty(),
        "no attack got out even without the kernel layer: the attacks prove nothing"
    );
}

#[test]
fn confined_duckdb_works_in_staging_and_its_threads_are_confined() {
    let layout = Layout::new();
    let mut session = layout.session(landlock());
    let s = |name: &str| layout.path(name);
    for sql in [
        format!(
            "COPY (SELECT range AS x FROM range(3000000)) TO '{}' (FORMAT parquet, ROW_GROUP_SIZE 100000)",
            s("a.parquet")
        ),
        format!("COPY (SELECT 'x' AS x) TO '{}' (FORMAT csv)", s("a.csv")),
        format!("COPY (SELECT 'x' AS x) TO '{}' (FORMAT json)", s("a.json")),
        format!(
            "COPY (SELECT 'x'::BLOB AS x) TO '{}' (FORMAT blob)",
            s("a.blob")
        ),
        format!("ATTACH '{}' AS db", s("a.duckdb")),
        "CREATE TABLE db.t AS SELECT 1 AS x".to_owned(),
        "DETACH db".to_owned(),
        format!("EXPORT DATABASE '{}'", s("export")),
    ] {
        session
            .execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let sum = session
        .query_json(
            &format!("SELECT sum(x) AS s FROM read_parquet('{}')", s("a.parquet")),
            1,
        )
        .expect("parallel parquet read");
    assert!(sum.contains("4499998500000"), "{sum}");
    let listed = session
        .query_json(
            &format!("SELECT file FROM glob('{}/a.*')", layout.staging.display()),
            10,
        )
        .expect("glob");
    assert!(
        listed.contains("a.csv") && listed.contains("a.duckdb"),
        "{listed}"
    );
    assert!(layout.staging.join("export").join("schema.sql").is_file());

    // DuckDB's worker threads were started by the confined session thread
    // (they carry its name): each has no_new_privs, which confining sets.
    let _alone = UNCONFINED.lock().unwrap_or_else(|p| p.into_inner());
    let mut workers = 0;
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let path = task.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if name.trim() != "sluice-sql" {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(path.join("status")) else {
            continue;
        };
        workers += 1;
        assert!(
            status.contains("NoNewPrivs:\t1"),
            "an unconfined DuckDB thread: {status}"
        );
    }
    assert!(
        workers >= 2,
        "expected the session thread and a worker, saw {workers}"
    );
}

/// Makes a link to `target` appear at `name` in staging and disappear again,
/// until `stop`: a writer that checks the path (nothing there, or a dangling
/// fallback) and then creates the file follows the link if it won the race.
fn flicker(staging: PathBuf, name: &'static str, target: &'static str, stop: Instant) {
    let (path, link) = (staging.join(name), staging.join(format!(".{name}.swap")));
    while Instant::now() < stop {
        let _ = std::os::unix::fs::symlink(target, &link);
        let _ = std::fs::rename(&link, &path);
        let _ = std::fs::remove_file(&path);
    }
}

/// Swaps `name` in staging between a regular file and a link to `target` as
/// fast as the kernel allows (`renameat2` with `RENAME_EXCHANGE`) until `stop`.
fn swapper(staging: PathBuf, name: &'static str, target: &'static str, stop: Instant) {
    use std::os::unix::ffi::OsStrExt;
    let path = staging.join(name);
    let link = staging.join(format!(".{name}.swap"));
    std::fs::write(&path, "inside").expect("victim");
    std::os::unix::fs::symlink(target, &link).expect("swap link");
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).expect("no NUL");
    let (a, b) = (c(&path), c(&link));
    while Instant::now() < stop {
        for _ in 0..1000 {
            // SAFETY: two valid NUL-terminated paths; the call touches no other memory.
            let swapped = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    libc::RENAME_EXCHANGE,
                )
            };
            assert_eq!(swapped, 0, "renameat2: {}", std::io::Error::last_os_error());
        }
    }
}

#[test]
fn swapping_a_file_for_a_link_mid_statement_gets_nothing_outside() {
    let layout = Layout::new();
    std::fs::write(layout.outside.join("target.csv"), "original").expect("target");
    let stop = Instant::now() + Duration::from_secs(3);
    let reader = {
        let staging = layout.staging.clone();
        std::thread::spawn(move || swapper(staging, "victim", "../../outside/secret.txt", stop))
    };
    let writer = {
        let staging = layout.staging.clone();
        std::thread::spawn(move || flicker(staging, "victim.bin", "../../outside/target.csv", stop))
    };
    let mut session = layout.session(landlock());
    let (mut reads, mut writes) = (0u32, 0u32);
    let read = format!("SELECT content FROM read_text('{}')", layout.path("victim"));
    // DuckDB writes a temporary file and renames it over a target that exists
    // (which replaces a link rather than following it), so the write race is
    // on a target that is not there when checked.
    let write = format!(
        "COPY (SELECT '{SECRET}'::BLOB AS x) TO '{}' (FORMAT blob)",
        layout.path("victim.bin")
    );
    while Instant::now() < stop {
        if let Ok(rows) = session.query_json(&read, 1) {
            assert!(
                !rows.contains(SECRET),
                "read outside through a swapped link: {rows}"
            );
            reads += u32::from(rows.contains("inside"));
        }
        writes += u32::from(session.execute(&write).is_ok());
    }
    reader.join().expect("reader swapper");
    writer.join().expect("writer swapper");
    let target = std::fs::read_to_string(layout.outside.join("target.csv")).expect("target");
    assert_eq!(target, "original", "written outside through a swapped link");
    // The race was really run: statements went through in both directions.
    assert!(reads > 0 && writes > 0, "reads {reads}, writes {writes}");
    assert_eq!(
        std::fs::read_dir(&layout.outside).expect("outside").count(),
        3,
        "something new outside staging"
    );
}
