//! The metadatabase: DAG versions, runs, task instances and their tries, task
//! logs. SQLite in WAL mode, so CLI readers never block a running scheduler.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use crate::dag::DagSpec;
use crate::state::{RunState, TaskState};

/// An encrypted value as stored: nonce and ciphertext (the vault seals and opens it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// 24-byte XChaCha20 nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext with the Poly1305 tag.
    pub ciphertext: Vec<u8>,
}

/// A metadatabase error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("metadatabase: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored document does not decode.
    #[error("metadatabase holds an unreadable record: {0}")]
    Corrupt(String),
    /// The metadatabase was written by an incompatible version of sluice.
    #[error("metadatabase: {0}")]
    Incompatible(String),
    /// Something asked for does not exist.
    #[error("{0}")]
    NotFound(String),
}

type Result<T> = std::result::Result<T, StoreError>;

/// Statements that bring a metadatabase of version `i + 1` to version `i + 2`.
const MIGRATIONS: &[&str] = &[
    // 2: how the host threads of each try were confined.
    "ALTER TABLE task_tries ADD COLUMN sandbox TEXT;",
];

/// The version `SCHEMA` describes: the first, plus one per migration.
const SCHEMA_VERSION: u32 = 1 + MIGRATIONS.len() as u32;

const SCHEMA: &str = r#"
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

/// A stored DAG version.
#[derive(Debug, Clone)]
pub struct VersionRecord {
    /// DAG id.
    pub dag_id: String,
    /// sha256 of the canonical spec (hex).
    pub digest: String,
    /// Human label (`git describe` or `dev-<timestamp>`).
    pub label: String,
    /// The deployed spec.
    pub spec: DagSpec,
    /// The manifest it was deployed from.
    pub source: String,
    /// When first deployed.
    pub created_at: DateTime<Utc>,
    /// Whether it is the DAG's current version.
    pub current: bool,
}

/// A run as stored.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// Run id.
    pub run_id: String,
    /// DAG id.
    pub dag_id: String,
    /// The DAG version digest it runs.
    pub version: String,
    /// Run state.
    pub state: RunState,
    /// Logical date.
    pub logical_date: DateTime<Utc>,
    /// `manual`, `scheduled` or `backfill`.
    pub run_type: String,
    /// Start of the data interval.
    pub interval_start: DateTime<Utc>,
    /// End of the data interval.
    pub interval_end: DateTime<Utc>,
    /// Run params (JSON object).
    pub params: String,
    /// Staging directory.
    pub staging_dir: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A task instance as stored.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    /// Task id.
    pub task_id: String,
    /// State.
    pub state: TaskState,
    /// Current (or last) try number; 0 before the first try.
    pub try_number: u32,
    /// Tries allowed.
    pub max_tries: u32,
    /// Component digest.
    pub component: String,
    /// Start of the last try.
    pub started_at: Option<DateTime<Utc>>,
    /// End of the last try.
    pub ended_at: Option<DateTime<Utc>>,
    /// Duration of the last try.
    pub duration: Option<Duration>,
    /// Output JSON, on success.
    pub output: Option<String>,
    /// Error of the last failed try.
    pub error: Option<String>,
}

/// One try of a task instance.
#[derive(Debug, Clone)]
pub struct TryRecord {
    /// Try number.
    pub try_number: u32,
    /// The DAG version the try ran.
    pub version: String,
    /// The component digest the try ran.
    pub component: String,
    /// How it ended (or `running`).
    pub state: TaskState,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End.
    pub ended_at: Option<DateTime<Utc>>,
    /// Error, if it failed.
    pub error: Option<String>,
}

/// A run's staging directory and what happened to it.
#[derive(Debug, Clone)]
pub struct VolumeRecord {
    /// The run.
    pub run_id: String,
    /// The directory.
    pub path: String,
    /// `active`, `retained` or `deleted`.
    pub state: String,
    /// Created (or first seen, for an orphan).
    pub created_at: DateTime<Utc>,
    /// When its run ended and released it (`retained`); kept until this plus the TTL.
    pub released_at: Option<DateTime<Utc>>,
    /// Deleted at.
    pub deleted_at: Option<DateTime<Utc>>,
    /// `run_succeeded`, `ttl_expired` or `orphaned`.
    pub delete_reason: Option<String>,
}

/// A connection as stored: public configuration as JSON, secret sealed.
#[derive(Debug, Clone)]
pub struct StoredConnection {
    /// Connection id.
    pub id: String,
    /// `postgres` or `s3`.
    pub kind: String,
    /// Public configuration (JSON).
    pub config: String,
    /// The sealed secret.
    pub secret: Sealed,
}

/// One stored log line.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// Try number.
    pub try_number: u32,
    /// When.
    pub ts: DateTime<Utc>,
    /// Level name.
    pub level: String,
    /// Message.
    pub message: String,
}

/// A log line to store.
#[derive(Debug, Clone)]
pub struct NewLog {
    /// Run id.
    pub run_id: String,
    /// Task id.
    pub task_id: String,
    /// Try number.
    pub try_number: u32,
    /// When.
    pub ts: DateTime<Utc>,
    /// Level name.
    pub level: &'static str,
    /// Message.
    pub message: String,
}

/// The metadatabase handle. Cheap operations; one connection behind a mutex.
pub struct Store {
    conn: Mutex<Connection>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp `{s}`: {e}")))
}

fn parse_opt_ts(s: Option<String>) -> Result<Option<DateTime<Utc>>> {
    s.as_deref().map(parse_ts).transpose()
}

impl Store {
    /// Opens (creating if needed) the metadatabase at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let fresh: bool =
            conn.query_row("SELECT count(*) = 0 FROM sqlite_master", [], |r| r.get(0))?;
        if !fresh && (1..SCHEMA_VERSION).contains(&version) {
            let tx = conn.transaction()?;
            for migration in &MIGRATIONS[version as usize - 1..] {
                tx.execute_batch(migration)?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
        } else if !fresh && version != SCHEMA_VERSION {
            return Err(StoreError::Incompatible(format!(
                "{} has schema version {version}; this sluice uses version {SCHEMA_VERSION} \
                 (no migration exists yet: use a new SLUICE_HOME)",
                path.display()
            )));
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut conn)
    }

    // ---- versions -------------------------------------------------------

    /// Records version `digest` of `spec` (if new) and makes it current.
    /// Returns whether the version was new.
    pub fn record_version(
        &self,
        digest: &str,
        label: &str,
        spec: &DagSpec,
        source: &str,
    ) -> Result<bool> {
        let spec_json =
            serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let now = ts(Utc::now());
        self.with(|c| {
            let tx = c.transaction()?;
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO dag_versions (dag_id, digest, label, spec, source, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![spec.id, digest, label, spec_json, source, now],
            )?;
            tx.execute(
                "INSERT INTO dags (dag_id, current_version, deployed_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (dag_id) DO UPDATE SET current_version = excluded.current_version,
                     deployed_at = CASE WHEN dags.current_version = excluded.current_version
                                        THEN dags.deployed_at ELSE excluded.deployed_at END",
                params![spec.id, digest, now],
            )?;
            tx.commit()?;
            Ok(inserted == 1)
        })
    }

    /// Versions of `dag_id`, newest first.
    pub fn versions(&self, dag_id: &str) -> Result<Vec<VersionRecord>> {
        self.select_versions(dag_id, None, false)
    }

    /// Versions of `dag_id`, narrowed in SQL to one digest and/or the current one.
    fn select_versions(
        &self,
        dag_id: &str,
        digest: Option<&str>,
        current_only: bool,
    ) -> Result<Vec<VersionRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT v.dag_id, v.digest, v.label, v.spec, v.source, v.created_at,
                        COALESCE(d.current_version = v.digest, 0)
                 FROM dag_versions v LEFT JOIN dags d ON d.dag_id = v.dag_id
                 WHERE v.dag_id = ?1 AND (?2 IS NULL OR v.digest = ?2)
                   AND (?3 = 0 OR d.current_version = v.digest)
                 ORDER BY v.created_at DESC, v.rowid DESC",
            )?;
            let rows = stmt.query_map(params![dag_id, digest, current_only], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, bool>(6)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (dag_id, digest, label, spec, source, created, current) = row?;
                out.push(VersionRecord {
                    spec: serde_json::from_str(&spec)
                        .map_err(|e| StoreError::Corrupt(format!("version {digest}: {e}")))?,
                    created_at: parse_ts(&created)?,
                    dag_id,
                    digest,
                    label,
                    source,
                    current,
                });
            }
            Ok(out)
        })
    }

    /// Ids of every deployed DAG.
    pub fn dag_ids(&self) -> Result<Vec<String>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT dag_id FROM dags ORDER BY dag_id")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
    }

    /// The current version of `dag_id`.
    pub fn current_version(&self, dag_id: &str) -> Result<VersionRecord> {
        self.select_versions(dag_id, None, true)?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::NotFound(format!("DAG `{dag_id}` has not been deployed")))
    }

    /// Version `digest` of `dag_id`.
    pub fn version(&self, dag_id: &str, digest: &str) -> Result<VersionRecord> {
        self.select_versions(dag_id, Some(digest), false)?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::NotFound(format!("DAG `{dag_id}` has no version {digest}")))
    }

    // ---- runs -----------------------------------------------------------

    /// Creates a run and its task instances (state `scheduled`, try 0).
    pub fn create_run(&self, run: &RunRecord, spec: &DagSpec) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO dag_runs (run_id, dag_id, version, state, logical_date, run_type, interval_start,
                     interval_end, params, staging_dir, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    run.run_id,
                    run.dag_id,
                    run.version,
                    run.state.as_str(),
                    ts(run.logical_date),
                    run.run_type,
                    ts(run.interval_start),
                    ts(run.interval_end),
                    run.params,
                    run.staging_dir,
                    ts(run.created_at)
                ],
            )?;
            for task in &spec.tasks {
                tx.execute(
                    "INSERT INTO task_instances (run_id, task_id, state, try_number, max_tries, component)
                     VALUES (?1, ?2, ?3, 0, ?4, ?5)",
                    params![run.run_id, task.id, TaskState::Scheduled.as_str(), task.policy.max_tries(), task.component],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Sets a run's state; stamps `started_at` when it starts and `ended_at` when it ends.
    pub fn set_run_state(&self, run_id: &str, state: RunState, error: Option<&str>) -> Result<()> {
        let now = ts(Utc::now());
        self.with(|c| {
            c.execute(
                "UPDATE dag_runs SET state = ?2, error = ?3,
                     started_at = CASE WHEN ?2 = 'running' AND started_at IS NULL THEN ?4 ELSE started_at END,
                     ended_at = CASE WHEN ?2 IN ('success', 'failed') THEN ?4 ELSE NULL END
                 WHERE run_id = ?1",
                params![run_id, state.as_str(), error, now],
            )?;
            Ok(())
        })
    }

    /// A run by id.
    pub fn run(&self, run_id: &str) -> Result<RunRecord> {
        self.with(|c| {
            c.query_row(
                "SELECT run_id, dag_id, version, state, logical_date, params, staging_dir,
                        created_at, started_at, ended_at, error, run_type, interval_start, interval_end
                 FROM dag_runs WHERE run_id = ?1",
                [run_id],
                raw_run,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("no run `{run_id}`")))
        })
        .and_then(RawRun::decode)
    }

    /// Runs, newest first, optionally of one DAG.
    pub fn runs(&self, dag_id: Option<&str>, limit: u32) -> Result<Vec<RunRecord>> {
        let raws = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT run_id, dag_id, version, state, logical_date, params, staging_dir,
                        created_at, started_at, ended_at, error, run_type, interval_start, interval_end
                 FROM dag_runs WHERE ?1 IS NULL OR dag_id = ?1 ORDER BY created_at DESC, rowid DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![dag_id, limit], raw_run)?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })?;
        raws.into_iter().map(RawRun::decode).collect()
    }

    /// Runs in state `state`, oldest first, optionally of one DAG.
    pub fn runs_in_state(&self, state: RunState, dag_id: Option<&str>) -> Result<Vec<RunRecord>> {
        let mut runs: Vec<RunRecord> = self
            .runs(dag_id, u32::MAX)?
            .into_iter()
            .filter(|r| r.state == state)
            .collect();
        runs.reverse();
        Ok(runs)
    }

    // ---- task instances -------------------------------------------------

    /// Sets the state of a task instance without starting a try.
    pub fn set_task_state(
        &self,
        run_id: &str,
        task_id: &str,
        state: TaskState,
        error: Option<&str>,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE task_instances SET state = ?3, error = COALESCE(?4, error)
                 WHERE run_id = ?1 AND task_id = ?2",
                params![run_id, task_id, state.as_str(), error],
            )?;
            Ok(())
        })
    }

    /// Starts try `try_number` of a task instance with `component` of DAG
    /// `version`: state `running`.
    #[allow(clippy::too_many_arguments)]
    pub fn start_try(
        &self,
        run_id: &str,
        task_id: &str,
        try_number: u32,
        version: &str,
        component: &str,
        sandbox: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let at = ts(at);
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE task_instances SET state = 'running', try_number = ?3, started_at = ?4,
                     ended_at = NULL, duration_ms = NULL, error = NULL, output = NULL, component = ?5
                 WHERE run_id = ?1 AND task_id = ?2",
                params![run_id, task_id, try_number, at, component],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO task_tries
                     (run_id, task_id, try_number, version, component, state, started_at, sandbox)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7)",
                params![run_id, task_id, try_number, version, component, at, sandbox],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Ends the current try of a task instance with `state`.
    #[allow(clippy::too_many_arguments)]
    pub fn end_try(
        &self,
        run_id: &str,
        task_id: &str,
        try_number: u32,
        state: TaskState,
        ended: DateTime<Utc>,
        duration: Duration,
        output: Option<&str>,
        error: Option<&str>,
    ) -> Result<()> {
        let ended = ts(ended);
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE task_instances SET state = ?3, ended_at = ?4, duration_ms = ?5, output = ?6, error = ?7
                 WHERE run_id = ?1 AND task_id = ?2",
                params![run_id, task_id, state.as_str(), ended, ms, output, error],
            )?;
            tx.execute(
                "UPDATE task_tries SET state = ?4, ended_at = ?5, duration_ms = ?6, error = ?7
                 WHERE run_id = ?1 AND task_id = ?2 AND try_number = ?3",
                params![run_id, task_id, try_number, state.as_str(), ended, ms, error],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The task instances of a run, in DAG order of insertion.
    pub fn tasks(&self, run_id: &str) -> Result<Vec<TaskRecord>> {
        let raws = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT task_id, state, try_number, max_tries, component, started_at, ended_at,
                        duration_ms, output, error FROM task_instances WHERE run_id = ?1 ORDER BY rowid",
            )?;
            let rows = stmt.query_map([run_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, Option<String>>(9)?,
                ))
            })?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })?;
        raws.into_iter()
            .map(
                |(
                    task_id,
                    state,
                    try_number,
                    max_tries,
                    component,
                    started,
                    ended,
                    ms,
                    output,
                    error,
                )| {
                    Ok(TaskRecord {
                        state: TaskState::parse(&state)
                            .ok_or_else(|| StoreError::Corrupt(format!("task state `{state}`")))?,
                        started_at: parse_opt_ts(started)?,
                        ended_at: parse_opt_ts(ended)?,
                        duration: ms.map(|ms| Duration::from_millis(ms.max(0) as u64)),
                        task_id,
                        try_number,
                        max_tries,
                        component,
                        output,
                        error,
                    })
                },
            )
            .collect()
    }

    /// Re-binds a run to DAG version `version` (after a clear) and marks it running.
    pub fn rebind_run(&self, run_id: &str, version: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE dag_runs SET version = ?2, state = 'running', ended_at = NULL, error = NULL WHERE run_id = ?1",
                params![run_id, version],
            )?;
            Ok(())
        })
    }

    /// Resets task instances to `scheduled`, each `(task, tries)` allowed `tries`
    /// more tries; try numbers go on counting.
    pub fn reset_tasks(&self, run_id: &str, tasks: &[(String, u32)]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            for (task_id, extra) in tasks {
                tx.execute(
                    "UPDATE task_instances SET state = 'scheduled', output = NULL, error = NULL,
                         ended_at = NULL, duration_ms = NULL, max_tries = try_number + ?3
                     WHERE run_id = ?1 AND task_id = ?2",
                    params![run_id, task_id, extra],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// How the tries of a run were confined (the host's `Sandbox::label`),
    /// each label once; `unrecorded` for tries from before it was recorded.
    pub fn run_sandboxes(&self, run_id: &str) -> Result<Vec<String>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT DISTINCT coalesce(sandbox, 'unrecorded') FROM task_tries
                 WHERE run_id = ?1 ORDER BY 1",
            )?;
            let rows = stmt.query_map(params![run_id], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
    }

    /// The tries of a task instance: (try, version, component, state, error).
    pub fn tries(&self, run_id: &str, task_id: &str) -> Result<Vec<TryRecord>> {
        let raws = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT try_number, version, component, state, started_at, ended_at, error FROM task_tries
                 WHERE run_id = ?1 AND task_id = ?2 ORDER BY try_number",
            )?;
            let rows = stmt.query_map(params![run_id, task_id], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            })?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })?;
        raws.into_iter()
            .map(
                |(try_number, version, component, state, started, ended, error)| {
                    Ok(TryRecord {
                        try_number,
                        version,
                        component,
                        state: TaskState::parse(&state)
                            .ok_or_else(|| StoreError::Corrupt(format!("try state `{state}`")))?,
                        started_at: parse_ts(&started)?,
                        ended_at: parse_opt_ts(ended)?,
                        error,
                    })
                },
            )
            .collect()
    }

    // ---- staging volumes ------------------------------------------------

    /// Records the staging directory of a new run (state `active`).
    pub fn add_volume(&self, run_id: &str, path: &str, at: DateTime<Utc>) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO staging_volumes (run_id, path, state, created_at) VALUES (?1, ?2, 'active', ?3)",
                params![run_id, path, ts(at)],
            )?;
            Ok(())
        })
    }

    /// Marks a volume `active` again (a cleared or resumed run uses it).
    pub fn activate_volume(&self, run_id: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE staging_volumes SET state = 'active', released_at = NULL WHERE run_id = ?1 AND state <> 'deleted'",
                [run_id],
            )?;
            Ok(())
        })
    }

    /// Keeps a volume, released by its run at `at`, for the TTL in force (its
    /// run failed, or was told to keep it).
    pub fn retain_volume(&self, run_id: &str, at: DateTime<Utc>) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE staging_volumes SET state = 'retained', released_at = ?2 WHERE run_id = ?1",
                params![run_id, ts(at)],
            )?;
            Ok(())
        })
    }

    /// Records that a volume was deleted, when and why (inserting a row for an orphan).
    pub fn delete_volume(
        &self,
        run_id: &str,
        path: &str,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO staging_volumes (run_id, path, state, created_at, deleted_at, delete_reason)
                 VALUES (?1, ?2, 'deleted', ?3, ?3, ?4)
                 ON CONFLICT (run_id) DO UPDATE SET state = 'deleted', deleted_at = ?3, delete_reason = ?4,
                     released_at = NULL",
                params![run_id, path, ts(at), reason],
            )?;
            Ok(())
        })
    }

    /// Every volume ever recorded, newest first.
    pub fn volumes(&self) -> Result<Vec<VolumeRecord>> {
        self.select_volumes(None)
    }

    /// Volumes, all or of one run.
    fn select_volumes(&self, run_id: Option<&str>) -> Result<Vec<VolumeRecord>> {
        let raws = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT run_id, path, state, created_at, released_at, deleted_at, delete_reason
                 FROM staging_volumes WHERE ?1 IS NULL OR run_id = ?1 ORDER BY created_at DESC, rowid DESC",
            )?;
            let rows = stmt.query_map([run_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            })?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })?;
        raws.into_iter()
            .map(|(run_id, path, state, created, retain, deleted, reason)| {
                Ok(VolumeRecord {
                    run_id,
                    path,
                    state,
                    created_at: parse_ts(&created)?,
                    released_at: parse_opt_ts(retain)?,
                    deleted_at: parse_opt_ts(deleted)?,
                    delete_reason: reason,
                })
            })
            .collect()
    }

    /// The volume of `run_id`, if recorded.
    pub fn volume(&self, run_id: &str) -> Result<Option<VolumeRecord>> {
        Ok(self.select_volumes(Some(run_id))?.into_iter().next())
    }

    // ---- trust ----------------------------------------------------------

    /// Stores (or replaces) a signature of a DAG version by `public_key`.
    pub fn add_signature(
        &self,
        dag_id: &str,
        version: &str,
        public_key: &str,
        signature: &str,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO signatures (dag_id, version, public_key, signature, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![dag_id, version, public_key, signature, ts(Utc::now())],
            )?;
            Ok(())
        })
    }

    /// (public key, signature) pairs stored for a DAG version.
    pub fn signatures(&self, dag_id: &str, version: &str) -> Result<Vec<(String, String)>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT public_key, signature FROM signatures WHERE dag_id = ?1 AND version = ?2",
            )?;
            let rows = stmt.query_map(params![dag_id, version], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
    }

    /// Trusts a public key under `name`.
    pub fn trust_key(&self, public_key: &str, name: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO trusted_keys (public_key, name, added_at) VALUES (?1, ?2, ?3)",
                params![public_key, name, ts(Utc::now())],
            )?;
            Ok(())
        })
    }

    /// Stops trusting a public key; false if it was not trusted.
    pub fn distrust_key(&self, public_key: &str) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM trusted_keys WHERE public_key = ?1",
                [public_key],
            )? == 1)
        })
    }

    /// Trusted (public key, name) pairs.
    pub fn trusted_keys(&self) -> Result<Vec<(String, String)>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT public_key, name FROM trusted_keys ORDER BY name")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
    }

    /// Whether runs require a version signed by a trusted key.
    pub fn require_signatures(&self) -> Result<bool> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT value FROM settings WHERE name = 'require_signatures'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .is_some_and(|v| v == "true"))
        })
    }

    /// Sets whether runs require a trusted signature.
    pub fn set_require_signatures(&self, on: bool) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO settings (name, value) VALUES ('require_signatures', ?1)",
                [if on { "true" } else { "false" }],
            )?;
            Ok(())
        })
    }

    // ---- connections ----------------------------------------------------

    /// The vault's key check value, once the vault has been used.
    pub fn vault_check(&self) -> Result<Option<Sealed>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT nonce, check_value FROM vault WHERE id = 1",
                [],
                |r| {
                    Ok(Sealed {
                        nonce: r.get(0)?,
                        ciphertext: r.get(1)?,
                    })
                },
            )
            .optional()?)
        })
    }

    /// Stores the vault's key check value.
    pub fn set_vault_check(&self, check: &Sealed) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO vault (id, nonce, check_value) VALUES (1, ?1, ?2)",
                params![check.nonce, check.ciphertext],
            )?;
            Ok(())
        })
    }

    /// Adds (or, with `replace`, replaces) a connection; false if it exists and `replace` is off.
    pub fn put_connection(
        &self,
        id: &str,
        kind: &str,
        config: &str,
        secret: &Sealed,
        replace: bool,
    ) -> Result<bool> {
        let now = ts(Utc::now());
        self.with(|c| {
            let changed = if replace {
                c.execute(
                    "INSERT INTO connections (id, kind, config, nonce, secret, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                     ON CONFLICT (id) DO UPDATE SET kind = ?2, config = ?3, nonce = ?4, secret = ?5, updated_at = ?6",
                    params![id, kind, config, secret.nonce, secret.ciphertext, now],
                )?
            } else {
                c.execute(
                    "INSERT OR IGNORE INTO connections (id, kind, config, nonce, secret, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                    params![id, kind, config, secret.nonce, secret.ciphertext, now],
                )?
            };
            Ok(changed == 1)
        })
    }

    /// Every stored connection (secrets still sealed), by id.
    pub fn connections(&self) -> Result<Vec<StoredConnection>> {
        self.select_connections(None)
    }

    /// Connection `id` (secret still sealed), if stored.
    pub fn connection(&self, id: &str) -> Result<Option<StoredConnection>> {
        Ok(self.select_connections(Some(id))?.into_iter().next())
    }

    fn select_connections(&self, id: Option<&str>) -> Result<Vec<StoredConnection>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, kind, config, nonce, secret FROM connections WHERE ?1 IS NULL OR id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([id], |r| {
                Ok(StoredConnection {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    config: r.get(2)?,
                    secret: Sealed {
                        nonce: r.get(3)?,
                        ciphertext: r.get(4)?,
                    },
                })
            })?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
    }

    /// Deletes a connection; false if there was none.
    pub fn delete_connection(&self, id: &str) -> Result<bool> {
        self.with(|c| Ok(c.execute("DELETE FROM connections WHERE id = ?1", [id])? == 1))
    }

    /// Every connection's sealed secret, for key rotation.
    pub fn sealed_secrets(&self) -> Result<Vec<(String, Sealed)>> {
        Ok(self
            .connections()?
            .into_iter()
            .map(|c| (c.id, c.secret))
            .collect())
    }

    /// Replaces every sealed secret and the check value in one transaction.
    pub fn replace_sealed(&self, secrets: &[(String, Sealed)], check: &Sealed) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            for (id, sealed) in secrets {
                tx.execute(
                    "UPDATE connections SET nonce = ?2, secret = ?3 WHERE id = ?1",
                    params![id, sealed.nonce, sealed.ciphertext],
                )?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO vault (id, nonce, check_value) VALUES (1, ?1, ?2)",
                params![check.nonce, check.ciphertext],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    // ---- logs -----------------------------------------------------------

    /// Appends log lines in one transaction.
    pub fn append_logs(&self, logs: &[NewLog]) -> Result<()> {
        if logs.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO task_logs (run_id, task_id, try_number, ts, level, message)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for l in logs {
                    stmt.execute(params![
                        l.run_id,
                        l.task_id,
                        l.try_number,
                        ts(l.ts),
                        l.level,
                        l.message
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Log lines of a task instance, of one try or all.
    pub fn logs(
        &self,
        run_id: &str,
        task_id: &str,
        try_number: Option<u32>,
    ) -> Result<Vec<LogRecord>> {
        let raws = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT try_number, ts, level, message FROM task_logs
                 WHERE run_id = ?1 AND task_id = ?2 AND (?3 IS NULL OR try_number = ?3) ORDER BY id",
            )?;
            let rows = stmt.query_map(params![run_id, task_id, try_number], |r| {
                Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
            })?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })?;
        raws.into_iter()
            .map(|(try_number, t, level, message)| {
                Ok(LogRecord {
                    try_number,
                    ts: parse_ts(&t)?,
                    level,
                    message,
                })
            })
            .collect()
    }
}

type RawRun = (
    (
        String,
        String,
        String,
        String,
        String,
        String,
        String,
        String,
    ),
    (Option<String>, Option<String>, Option<String>),
    (String, String, String),
);

fn raw_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRun> {
    Ok((
        (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
        ),
        (r.get(8)?, r.get(9)?, r.get(10)?),
        (r.get(11)?, r.get(12)?, r.get(13)?),
    ))
}

trait DecodeRun {
    fn decode(self) -> Result<RunRecord>;
}

impl DecodeRun for RawRun {
    fn decode(self) -> Result<RunRecord> {
        let (
            (run_id, dag_id, version, state, logical, params, staging, created),
            (started, ended, error),
            (run_type, interval_start, interval_end),
        ) = self;
        Ok(RunRecord {
            state: RunState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("run state `{state}`")))?,
            logical_date: parse_ts(&logical)?,
            interval_start: parse_ts(&interval_start)?,
            interval_end: parse_ts(&interval_end)?,
            run_type,
            created_at: parse_ts(&created)?,
            started_at: parse_opt_ts(started)?,
            ended_at: parse_opt_ts(ended)?,
            run_id,
            dag_id,
            version,
            params,
            staging_dir: staging,
            error,
        })
    }
}
