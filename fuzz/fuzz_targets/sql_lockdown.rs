//! Arbitrary SQL in a task's locked-down DuckDB session (a fresh one per input):
//! it never crashes the process, never changes the locked settings, and never
//! creates anything in a directory next to staging.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sluice::fuzz::locked_sql_session;

struct Fixture {
    _root: tempfile::TempDir,
    base: PathBuf,
    outside: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = tempfile::tempdir().expect("temp dir");
        let base = root.path().canonicalize().expect("canonical");
        let outside = base.join("outside");
        std::fs::create_dir_all(&outside).expect("outside");
        Fixture {
            _root: root,
            base,
            outside,
        }
    })
}

fn setting(conn: &duckdb::Connection, name: &str) -> String {
    conn.query_row(
        &format!("SELECT current_setting('{name}')::VARCHAR"),
        [],
        |r| r.get::<_, String>(0),
    )
    .unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

fuzz_target!(|sql: &str| {
    let f = fixture();
    // A fresh staging directory per input: what one input writes (a COPY of a
    // large range runs for up to 500 ms) must not pile up on the disk.
    let staging = tempfile::tempdir_in(&f.base).expect("staging");
    let staging = staging.path();
    std::fs::write(staging.join("t.csv"), "a,b\n1,x\n").expect("file");
    let conn = locked_sql_session(staging).expect("session");
    let expected: Vec<(&str, String)> = [
        "enable_external_access",
        "lock_configuration",
        "allowed_directories",
        "temp_directory",
        "memory_limit",
    ]
    .into_iter()
    .map(|name| (name, setting(&conn, name)))
    .collect();

    // A statement that runs long is interrupted, as the executor's watchdog would.
    let interrupt = conn.interrupt_handle();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_millis(500)).is_err() {
            interrupt.interrupt();
        }
    });
    let _ = conn.execute_batch(sql);
    let _ = done.send(());
    let _ = watchdog.join();

    for (name, value) in &expected {
        assert_eq!(&setting(&conn, name), value, "{sql:?} changed {name}");
    }
    let created: Vec<_> = std::fs::read_dir(&f.outside)
        .expect("outside")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(created.is_empty(), "{sql:?} created {created:?}");
});
