//! Unit tests of the metadatabase: stored names, corrupt values, index use and
//! migrations of older homes.

use std::cell::RefCell;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, ToSql, params};

use super::*;
use crate::dag::{DagSpec, TaskPolicy, TaskSpec};

/// A query (whitespace folded) and the steps of its plan.
type Plan = (String, Vec<String>);

thread_local! {
    /// While recording: each query run on this thread, with its plan.
    static PLANS: RefCell<Option<Vec<Plan>>> = const { RefCell::new(None) };
}

/// Records the query plan of `sql` if this thread is recording.
pub(super) fn record_plan(c: &Connection, sql: &str, params: &[&dyn ToSql]) -> Result<()> {
    if PLANS.with_borrow(Option::is_none) {
        return Ok(());
    }
    let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let steps = stmt
        .query_map(params, |r| r.get::<_, String>(3))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    PLANS.with_borrow_mut(|plans| {
        if let Some(plans) = plans {
            plans.push((sql.split_whitespace().collect::<Vec<_>>().join(" "), steps));
        }
    });
    Ok(())
}

/// The queries `f` runs, each with its plan.
fn plans(f: impl FnOnce()) -> Vec<Plan> {
    PLANS.set(Some(Vec::new()));
    f();
    PLANS.take().expect("recording")
}

/// Checks that every query `f` runs reads its table through one of
/// `indexes` (an index name, or `PRIMARY KEY` for a rowid lookup) and never
/// scans a table; returns what is wrong.
fn index_use(indexes: &[&str], f: impl FnOnce()) -> std::result::Result<(), String> {
    let plans = plans(f);
    if plans.is_empty() {
        return Err("no query ran".into());
    }
    for (sql, steps) in &plans {
        for step in steps
            .iter()
            .filter(|s| s.starts_with("SCAN") || s.starts_with("SEARCH"))
        {
            let through = indexes.iter().any(|index| {
                step.contains(&format!("INDEX {index} "))
                    || step.ends_with(&format!("INDEX {index}"))
            });
            if !through {
                return Err(format!("`{sql}` reads `{step}`, not through {indexes:?}"));
            }
        }
    }
    Ok(())
}

fn at(hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, hour, 0, 0)
        .single()
        .expect("a date")
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("sluice.db")).expect("store");
    (dir, store)
}

fn spec(dag_id: &str) -> DagSpec {
    DagSpec {
        id: dag_id.into(),
        description: String::new(),
        params: serde_json::Map::new(),
        max_active_tasks: 1,
        schedule: None,
        tasks: vec![TaskSpec {
            id: "only".into(),
            plugin: "p".into(),
            component: "c".into(),
            after: Vec::new(),
            params: serde_json::Map::new(),
            connections: Vec::new(),
            privileged_connections: Vec::new(),
            policy: TaskPolicy::default(),
        }],
    }
}

fn run(run_id: &str, dag_id: &str, run_type: RunType, state: RunState, hour: u32) -> RunRecord {
    RunRecord {
        run_id: run_id.into(),
        dag_id: dag_id.into(),
        version: "v1".into(),
        state,
        logical_date: at(hour),
        run_type,
        interval_start: at(hour),
        interval_end: at(hour + 1),
        params: "{}".into(),
        staging_dir: format!("/staging/{run_id}"),
        created_at: at(hour + 1),
        started_at: None,
        ended_at: None,
        error: None,
    }
}

fn add(store: &Store, record: &RunRecord) {
    store
        .create_run(record, &spec(&record.dag_id))
        .expect("run");
}

fn raw(dir: &tempfile::TempDir) -> Connection {
    Connection::open(dir.path().join("sluice.db")).expect("sqlite")
}

/// Every value of every stored enum is written by its name and read back.
#[test]
fn stored_names_round_trip() {
    let (_dir, store) = store();
    store
        .with(|c| {
            for &v in RunState::ALL {
                let (back, text): (RunState, String) =
                    c.query_row("SELECT ?1, ?1", [v], |r| Ok((r.get(0)?, r.get(1)?)))?;
                assert_eq!((back, text.as_str()), (v, v.as_str()));
            }
            for &v in TaskState::ALL {
                let (back, text): (TaskState, String) =
                    c.query_row("SELECT ?1, ?1", [v], |r| Ok((r.get(0)?, r.get(1)?)))?;
                assert_eq!((back, text.as_str()), (v, v.as_str()));
            }
            for &v in RunType::ALL {
                let (back, text): (RunType, String) =
                    c.query_row("SELECT ?1, ?1", [v], |r| Ok((r.get(0)?, r.get(1)?)))?;
                assert_eq!((back, text.as_str()), (v, v.as_str()));
            }
            for &v in VolumeState::ALL {
                let (back, text): (VolumeState, String) =
                    c.query_row("SELECT ?1, ?1", [v], |r| Ok((r.get(0)?, r.get(1)?)))?;
                assert_eq!((back, text.as_str()), (v, v.as_str()));
            }
            Ok(())
        })
        .expect("round trips");
}

/// Run types, run and task states and volume states come back as stored
/// through the store's own calls.
#[test]
fn records_keep_their_states() {
    let (_dir, store) = store();
    for (i, &run_type) in RunType::ALL.iter().enumerate() {
        let id = format!("r{i}");
        add(&store, &run(&id, "d", run_type, RunState::Queued, 0));
        assert_eq!(store.run(&id).expect("run").run_type, run_type);
    }
    for &state in RunState::ALL {
        store.set_run_state("r0", state, None).expect("state");
        let back = store.run("r0").expect("run");
        assert_eq!(back.state, state);
        assert_eq!(
            back.ended_at.is_some(),
            matches!(state, RunState::Success | RunState::Failed)
        );
    }
    for &state in TaskState::ALL {
        store
            .set_task_state("r0", "only", state, None)
            .expect("state");
        assert_eq!(store.tasks("r0").expect("tasks")[0].state, state);
    }
    store
        .add_volume("r0", "/staging/r0", at(1))
        .expect("volume");
    let state = |store: &Store| store.volume("r0").expect("volume").expect("recorded").state;
    assert_eq!(state(&store), VolumeState::Active);
    store.retain_volume("r0", at(2)).expect("retain");
    assert_eq!(state(&store), VolumeState::Retained);
    store.activate_volume("r0").expect("activate");
    assert_eq!(state(&store), VolumeState::Active);
    store
        .delete_volume("r0", "/staging/r0", at(3), "run_succeeded")
        .expect("delete");
    assert_eq!(state(&store), VolumeState::Deleted);
    store.activate_volume("r0").expect("activate");
    assert_eq!(
        state(&store),
        VolumeState::Deleted,
        "a deleted volume stays deleted"
    );
}

/// A stored value that names no state is an error naming the table, the
/// row and the value, from every call that reads it.
#[test]
fn a_corrupt_value_is_an_error_naming_table_row_and_value() {
    let (dir, store) = store();
    add(
        &store,
        &run("r1", "d", RunType::Scheduled, RunState::Queued, 0),
    );
    store
        .start_try("r1", "only", 1, "v1", "c", "landlock", at(1))
        .expect("try");
    store
        .add_volume("r1", "/staging/r1", at(1))
        .expect("volume");
    let db = raw(&dir);
    let corrupt = |sql: &str| {
        db.execute(sql, []).expect("corrupt");
    };
    let expect = |error: StoreError, table: &str, row: &str, value: &str| {
        let text = error.to_string();
        assert!(
            matches!(&error, StoreError::Corrupt { table: t, .. } if *t == table),
            "{text}"
        );
        assert!(text.contains(row) && text.contains(value), "{text}");
    };

    corrupt("UPDATE dag_runs SET state = 'no-such-state'");
    expect(
        store.run("r1").expect_err("corrupt"),
        "dag_runs",
        "`r1`",
        "`no-such-state`",
    );
    expect(
        store.runs(None, 10).expect_err("corrupt"),
        "dag_runs",
        "`r1`",
        "`no-such-state`",
    );
    corrupt("UPDATE dag_runs SET state = 'queued', run_type = 'cron'");
    expect(
        store.run("r1").expect_err("corrupt"),
        "dag_runs",
        "`r1`",
        "`cron` is not a run type",
    );
    corrupt("UPDATE dag_runs SET run_type = 'manual', created_at = 'yesterday'");
    expect(
        store.run("r1").expect_err("corrupt"),
        "dag_runs",
        "`r1`",
        "`yesterday`",
    );
    corrupt("UPDATE task_instances SET state = 'done'");
    expect(
        store.tasks("r1").expect_err("corrupt"),
        "task_instances",
        "`r1/only`",
        "`done`",
    );
    corrupt("UPDATE task_instances SET state = 'running', duration_ms = -5");
    expect(
        store.tasks("r1").expect_err("corrupt"),
        "task_instances",
        "`r1/only`",
        "duration_ms",
    );
    corrupt("UPDATE task_tries SET state = 'Running'");
    expect(
        store.tries("r1", "only").expect_err("corrupt"),
        "task_tries",
        "`r1/only/1`",
        "`Running`",
    );
    corrupt("UPDATE staging_volumes SET state = 'kept'");
    expect(
        store.volume("r1").expect_err("corrupt"),
        "staging_volumes",
        "`r1`",
        "`kept`",
    );
    expect(
        store.volumes().expect_err("corrupt"),
        "staging_volumes",
        "`r1`",
        "`kept`",
    );
    corrupt("INSERT INTO settings (name, value) VALUES ('require_signatures', 'yes')");
    expect(
        store.require_signatures().expect_err("corrupt"),
        "settings",
        "`require_signatures`",
        "`yes`",
    );
}

/// The lookups that used to read every row go through an index, and the
/// check itself fails when the index is gone.
#[test]
fn lookups_use_indexes() {
    let (dir, store) = store();
    for i in 0..20u32 {
        let run_type = if i % 3 == 0 {
            RunType::Manual
        } else {
            RunType::Scheduled
        };
        add(
            &store,
            &run(
                &format!("r{i}"),
                &format!("d{}", i % 2),
                run_type,
                RunState::Success,
                i,
            ),
        );
        store
            .add_volume(&format!("r{i}"), "/staging", at(i))
            .expect("volume");
    }
    let sealed = Sealed {
        nonce: vec![1],
        ciphertext: vec![2],
    };
    store
        .put_connection("pg", "postgres", "{}", &sealed, false)
        .expect("connection");

    let check = |indexes: &[&str], f: &dyn Fn()| {
        if let Err(e) = index_use(indexes, f) {
            panic!("{e}");
        }
    };
    check(&["dag_runs_by_state_created"], &|| {
        store.runs_in_state(RunState::Running, None).expect("runs");
        store
            .runs_in_state(RunState::Running, Some("d0"))
            .expect("runs");
        store
            .runs_page(None, Some(RunState::Success), 50, 0)
            .expect("runs");
    });
    check(&["dag_runs_by_created"], &|| {
        store.runs(None, 50).expect("runs");
    });
    check(&["dag_runs_by_dag"], &|| {
        store.runs(Some("d1"), 50).expect("runs");
    });
    check(&["dag_runs_by_state", "dag_runs_by_interval"], &|| {
        store.interval_runs("d0").expect("lookup");
    });
    check(&["dag_runs_by_interval"], &|| {
        store
            .interval_runs_between("d0", at(0), at(10))
            .expect("lookup");
    });
    check(&["sqlite_autoindex_dag_runs_1"], &|| {
        store.run("r1").expect("run");
    });
    check(&["sqlite_autoindex_staging_volumes_1"], &|| {
        store.volume("r1").expect("volume");
    });
    check(&["staging_volumes_by_state"], &|| {
        store.retained_volumes(at(5)).expect("volumes");
    });
    check(&["sqlite_autoindex_connections_1"], &|| {
        store.connection("pg").expect("connection");
    });
    // Each query in `interval_runs` is held to its own index.
    assert!(
        index_use(&["dag_runs_by_interval"], || {
            store.interval_runs("d0").expect("lookup");
        })
        .is_err()
    );

    // Without its index, the same call is caught reading through another
    // (sorting every run in the state, or scanning them all).
    raw(&dir)
        .execute_batch("DROP INDEX dag_runs_by_state_created")
        .expect("drop");
    // A query (not an EXPLAIN) makes the store's connection reload the schema.
    store.runs_in_state(RunState::Running, None).expect("runs");
    let error = index_use(&["dag_runs_by_state_created"], || {
        store.runs_in_state(RunState::Running, None).expect("runs");
    })
    .expect_err("another index or a scan");
    assert!(
        error.contains("dag_runs_by_state ") || error.contains("dag_runs_by_created"),
        "{error}"
    );
}

/// The scheduler's lookups see only scheduled and backfill runs: how many
/// are active, the latest interval, and the runs of a range of intervals.
#[test]
fn interval_lookups_leave_manual_runs_out() {
    let (_dir, store) = store();
    assert_eq!(
        store.interval_runs("d").expect("lookup"),
        IntervalRuns {
            active: 0,
            latest_start: None
        }
    );
    add(
        &store,
        &run("s1", "d", RunType::Scheduled, RunState::Success, 1),
    );
    add(
        &store,
        &run("s2", "d", RunType::Scheduled, RunState::Running, 2),
    );
    add(
        &store,
        &run("b3", "d", RunType::Backfill, RunState::Queued, 3),
    );
    add(
        &store,
        &run("b4", "d", RunType::Backfill, RunState::Failed, 4),
    );
    add(
        &store,
        &run("m9", "d", RunType::Manual, RunState::Running, 9),
    );
    add(
        &store,
        &run("o8", "other", RunType::Scheduled, RunState::Running, 8),
    );
    assert_eq!(
        store.interval_runs("d").expect("lookup"),
        IntervalRuns {
            active: 2,
            latest_start: Some(at(4))
        }
    );
    let ids = |runs: Vec<RunRecord>| runs.into_iter().map(|r| r.run_id).collect::<Vec<_>>();
    assert_eq!(
        ids(store
            .interval_runs_between("d", at(2), at(4))
            .expect("lookup")),
        ["s2", "b3", "b4"]
    );
    assert_eq!(
        ids(store
            .interval_runs_between("d", at(5), at(9))
            .expect("lookup")),
        Vec::<String>::new()
    );
    let running = store.runs_in_state(RunState::Running, None).expect("runs");
    assert_eq!(ids(running), ["s2", "o8", "m9"], "oldest first");
    assert_eq!(
        ids(store
            .runs_in_state(RunState::Running, Some("d"))
            .expect("runs")),
        ["s2", "m9"]
    );
    assert_eq!(
        ids(store.runs(None, 2).expect("runs")),
        ["m9", "o8"],
        "newest first"
    );
}

/// Only retained volumes released at or before the cutoff are expired.
#[test]
fn retained_volumes_stop_at_the_cutoff() {
    let (_dir, store) = store();
    for (id, released) in [("a", 1), ("b", 2), ("c", 3)] {
        store.add_volume(id, "/staging", at(0)).expect("volume");
        store.retain_volume(id, at(released)).expect("retain");
    }
    store
        .add_volume("active", "/staging", at(0))
        .expect("volume");
    store
        .delete_volume("b", "/staging", at(4), "ttl_expired")
        .expect("delete");
    let ids: Vec<String> = store
        .retained_volumes(at(3))
        .expect("volumes")
        .into_iter()
        .map(|v| v.run_id)
        .collect();
    assert_eq!(ids, ["a", "c"]);
    assert!(store.retained_volumes(at(0)).expect("volumes").is_empty());
}

/// The tables as schema version 2 made them (the last version before the
/// store was split): no index for runs by state, time or interval.
const V2_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS dag_versions (
    dag_id      TEXT NOT NULL,
    digest      TEXT NOT NULL,
    label       TEXT NOT NULL,
    spec        TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (dag_id, digest)
);
CREATE TABLE IF NOT EXISTS dags (
    dag_id          TEXT PRIMARY KEY,
    current_version TEXT NOT NULL,
    deployed_at     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dag_runs (
    run_id        TEXT PRIMARY KEY,
    dag_id        TEXT NOT NULL,
    version       TEXT NOT NULL,
    state         TEXT NOT NULL,
    logical_date  TEXT NOT NULL,
    run_type      TEXT NOT NULL,
    interval_start TEXT NOT NULL,
    interval_end  TEXT NOT NULL,
    params        TEXT NOT NULL,
    staging_dir   TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    started_at    TEXT,
    ended_at      TEXT,
    error         TEXT
);
CREATE INDEX IF NOT EXISTS dag_runs_by_dag ON dag_runs (dag_id, created_at);
CREATE TABLE IF NOT EXISTS task_instances (
    run_id      TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    state       TEXT NOT NULL,
    try_number  INTEGER NOT NULL,
    max_tries   INTEGER NOT NULL,
    component   TEXT NOT NULL,
    started_at  TEXT,
    ended_at    TEXT,
    duration_ms INTEGER,
    output      TEXT,
    error       TEXT,
    PRIMARY KEY (run_id, task_id)
);
CREATE TABLE IF NOT EXISTS task_tries (
    run_id      TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    try_number  INTEGER NOT NULL,
    version     TEXT NOT NULL,
    component   TEXT NOT NULL,
    state       TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    sandbox     TEXT,
    ended_at    TEXT,
    duration_ms INTEGER,
    error       TEXT,
    PRIMARY KEY (run_id, task_id, try_number)
);
CREATE TABLE IF NOT EXISTS task_logs (
    id          INTEGER PRIMARY KEY,
    run_id      TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    try_number  INTEGER NOT NULL,
    ts          TEXT NOT NULL,
    level       TEXT NOT NULL,
    message     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS staging_volumes (
    run_id        TEXT PRIMARY KEY,
    path          TEXT NOT NULL,
    state         TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    released_at   TEXT,
    deleted_at    TEXT,
    delete_reason TEXT
);
CREATE TABLE IF NOT EXISTS connections (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    config      TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    secret      BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vault (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    nonce       BLOB NOT NULL,
    check_value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS signatures (
    dag_id      TEXT NOT NULL,
    version     TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    signature   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (dag_id, version, public_key)
);
CREATE TABLE IF NOT EXISTS trusted_keys (
    public_key  TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    added_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS task_logs_by_task ON task_logs (run_id, task_id, try_number, id);
"#;

/// Makes a metadatabase as sluice made it at schema version `version` (1 or 2),
/// with a row in most tables.
fn old_home(dir: &tempfile::TempDir, version: u32) {
    let db = raw(dir);
    let schema = if version == 1 {
        V2_SCHEMA.replace("    sandbox     TEXT,\n", "")
    } else {
        V2_SCHEMA.to_owned()
    };
    db.execute_batch(&schema).expect("old schema");
    let spec = serde_json::to_string(&spec("d")).expect("spec");
    let stamp = "2026-01-01T01:00:00.000000Z";
    db.execute(
        "INSERT INTO dag_versions VALUES ('d', 'v1', 'label', ?1, 'dag.toml', ?2)",
        params![spec, stamp],
    )
    .expect("version");
    db.execute("INSERT INTO dags VALUES ('d', 'v1', ?1)", [stamp])
        .expect("dag");
    db.execute(
        "INSERT INTO dag_runs (run_id, dag_id, version, state, logical_date, run_type, interval_start,
             interval_end, params, staging_dir, created_at, started_at, ended_at, error)
         VALUES ('old', 'd', 'v1', 'failed', ?1, 'backfill', ?1, ?1, '{\"x\":1}', '/staging/old',
             ?1, ?1, ?1, 'boom')",
        [stamp],
    )
    .expect("run");
    db.execute(
        "INSERT INTO task_instances (run_id, task_id, state, try_number, max_tries, component,
             started_at, ended_at, duration_ms, error)
         VALUES ('old', 'only', 'failed', 1, 1, 'c', ?1, ?1, 1500, 'boom')",
        [stamp],
    )
    .expect("task");
    db.execute(
        "INSERT INTO task_tries (run_id, task_id, try_number, version, component, state, started_at,
             ended_at, duration_ms, error)
         VALUES ('old', 'only', 1, 'v1', 'c', 'failed', ?1, ?1, 1500, 'boom')",
        [stamp],
    )
    .expect("try");
    db.execute(
        "INSERT INTO task_logs (run_id, task_id, try_number, ts, level, message)
         VALUES ('old', 'only', 1, ?1, 'info', 'hello')",
        [stamp],
    )
    .expect("log");
    db.execute(
        "INSERT INTO staging_volumes (run_id, path, state, created_at, released_at)
         VALUES ('old', '/staging/old', 'retained', ?1, ?1)",
        [stamp],
    )
    .expect("volume");
    db.execute(
        "INSERT INTO connections VALUES ('pg', 'postgres', '{}', x'01', x'02', ?1, ?1)",
        [stamp],
    )
    .expect("connection");
    db.pragma_update(None, "user_version", version)
        .expect("version");
}

/// A home made at schema version 1 or 2 is upgraded in place to the current
/// version: its rows are all still there and its new indexes exist.
#[test]
fn older_homes_upgrade_in_place_keeping_their_rows() {
    for version in [1, 2] {
        let dir = tempfile::tempdir().expect("temp dir");
        old_home(&dir, version);
        let store = Store::open(&dir.path().join("sluice.db")).expect("upgrade");
        let db = raw(&dir);
        let now: u32 = db
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(now, SCHEMA_VERSION);
        for index in [
            "dag_runs_by_created",
            "dag_runs_by_state",
            "dag_runs_by_interval",
            "dag_runs_by_state_created",
            "staging_volumes_by_state",
            "api_sessions_by_expiry",
        ] {
            let found: bool = db
                .query_row(
                    "SELECT count(*) = 1 FROM sqlite_master WHERE type = 'index' AND name = ?1",
                    [index],
                    |r| r.get(0),
                )
                .expect("index");
            assert!(found, "v{version}: index {index} missing");
        }

        assert_eq!(store.current_version("d").expect("version").digest, "v1");
        let run = store.run("old").expect("run");
        assert_eq!(
            (
                run.state,
                run.run_type,
                run.params.as_str(),
                run.error.as_deref()
            ),
            (
                RunState::Failed,
                RunType::Backfill,
                "{\"x\":1}",
                Some("boom")
            )
        );
        let task = &store.tasks("old").expect("tasks")[0];
        assert_eq!(
            (task.state, task.duration),
            (
                TaskState::Failed,
                Some(std::time::Duration::from_millis(1500))
            )
        );
        assert_eq!(
            store.tries("old", "only").expect("tries")[0].state,
            TaskState::Failed
        );
        assert_eq!(
            store.run_sandboxes("old").expect("sandboxes"),
            ["unrecorded"]
        );
        assert_eq!(
            store.logs("old", "only", None).expect("logs")[0].message,
            "hello"
        );
        let volume = store.volume("old").expect("volume").expect("recorded");
        assert_eq!(volume.state, VolumeState::Retained);
        assert_eq!(store.retained_volumes(at(2)).expect("volumes").len(), 1);
        assert_eq!(
            store
                .connection("pg")
                .expect("connection")
                .expect("stored")
                .kind,
            "postgres"
        );
        assert_eq!(
            store.interval_runs("d").expect("lookup").latest_start,
            Some(at(1))
        );
        drop(store);
        // Opening again changes nothing.
        let again = Store::open(&dir.path().join("sluice.db")).expect("reopen");
        assert_eq!(again.run("old").expect("run").state, RunState::Failed);
    }
}

/// A metadatabase from a newer sluice is refused, not rewritten.
#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    old_home(&dir, 2);
    raw(&dir)
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("version");
    let error = Store::open(&dir.path().join("sluice.db"))
        .err()
        .expect("refused");
    assert!(matches!(error, StoreError::Incompatible(_)), "{error}");
}

/// Opening an up-to-date metadatabase writes nothing, so a process opening it
/// (a worker, a CLI reader) does not wait on, or fail beside, a writer.
#[test]
fn an_up_to_date_metadatabase_opens_while_another_connection_writes() {
    let (dir, store) = store();
    drop(store);
    let writer = raw(&dir);
    writer
        .execute_batch(
            "BEGIN IMMEDIATE; \
             INSERT INTO dags (dag_id, current_version, deployed_at) VALUES ('held', 'x', 'y');",
        )
        .expect("hold the write lock");
    // Before: the schema statements waited for the lock (10 s), then failed.
    let opened = Store::open(&dir.path().join("sluice.db")).expect("opens beside the writer");
    assert!(opened.dag_ids().expect("reads").is_empty());
    writer.execute_batch("COMMIT").expect("commit");
}

/// A session is found by the hash of its cookie until it ends, and is gone
/// once deleted, once ended (swept by the next login) or once its token is.
#[test]
fn sessions_last_until_they_end_and_go_with_their_token() {
    let (_dir, store) = store();
    let t0 = Utc
        .with_ymd_and_hms(2026, 5, 1, 12, 0, 0)
        .single()
        .expect("t0");
    let token = tokens::TokenRecord {
        token_id: "abcd".into(),
        role: "operator".into(),
        name: "ui".into(),
        created_at: t0,
    };
    store.add_token(&token, "token-hash").expect("token");
    let session = |hours: i64| tokens::SessionRecord {
        token_id: "abcd".into(),
        role: "operator".into(),
        csrf: "csrf".into(),
        expires_at: t0 + chrono::Duration::hours(hours),
    };
    store.add_session("s1", &session(1), t0).expect("s1");
    store.add_session("s2", &session(12), t0).expect("s2");
    let found = store
        .session_by_hash("s1", t0)
        .expect("read")
        .expect("s1 is live");
    assert_eq!(
        (found.role.as_str(), found.csrf.as_str()),
        ("operator", "csrf")
    );
    assert!(store.session_by_hash("nope", t0).expect("read").is_none());
    let later = t0 + chrono::Duration::hours(2);
    assert!(
        store.session_by_hash("s1", later).expect("read").is_none(),
        "s1 ended"
    );
    assert!(store.session_by_hash("s2", later).expect("read").is_some());
    // A login after s1 ended sweeps it.
    store.add_session("s3", &session(12), later).expect("s3");
    let rows: i64 = store
        .with(|c| Ok(c.query_row("SELECT count(*) FROM api_sessions", [], |r| r.get(0))?))
        .expect("count");
    assert_eq!(rows, 2, "s2 and s3 left");
    store.delete_session("s2").expect("logout");
    assert!(store.session_by_hash("s2", later).expect("read").is_none());
    assert!(store.delete_token("abcd").expect("revoke"));
    assert!(
        store.session_by_hash("s3", later).expect("read").is_none(),
        "revoking the token ended its session"
    );
}
