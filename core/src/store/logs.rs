//! Task log lines (`task_logs`).

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{Fields, Result, Store, query_all, ts};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS task_logs (
    id          INTEGER PRIMARY KEY,
    run_id      TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    try_number  INTEGER NOT NULL,
    ts          TEXT NOT NULL,
    level       TEXT NOT NULL,
    message     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS task_logs_by_task ON task_logs (run_id, task_id, try_number, id);
"#;

/// One stored log line.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// The line's id: increasing in the order lines were stored.
    pub id: i64,
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

impl Store {
    /// Appends log lines in one transaction; their ids, in order.
    pub fn append_logs(&self, logs: &[NewLog]) -> Result<Vec<i64>> {
        if logs.is_empty() {
            return Ok(Vec::new());
        }
        self.with(|c| {
            let tx = c.transaction()?;
            let mut ids = Vec::with_capacity(logs.len());
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO task_logs (run_id, task_id, try_number, ts, level, message)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for l in logs {
                    ids.push(stmt.insert(params![
                        l.run_id,
                        l.task_id,
                        l.try_number,
                        ts(l.ts),
                        l.level,
                        l.message
                    ])?);
                }
            }
            tx.commit()?;
            Ok(ids)
        })
    }

    /// Log lines of a task instance, of one try or all.
    pub fn logs(
        &self,
        run_id: &str,
        task_id: &str,
        try_number: Option<u32>,
    ) -> Result<Vec<LogRecord>> {
        self.with(|c| {
            query_all(
                c,
                "SELECT try_number, ts, level, message, id FROM task_logs
                 WHERE run_id = ?1 AND task_id = ?2 AND (?3 IS NULL OR try_number = ?3) ORDER BY id",
                params![run_id, task_id, try_number],
                |r| {
                    let f = Fields::new(r, "task_logs", &[4])?;
                    Ok(LogRecord {
                        id: f.get(4)?,
                        try_number: f.get(0)?,
                        ts: f.ts(1)?,
                        level: f.get(2)?,
                        message: f.get(3)?,
                    })
                },
            )
        })
    }

    /// At most `limit` log lines of a task instance (one try or all) stored
    /// after line `after` (an id; 0 for the first page), in order.
    pub fn logs_page(
        &self,
        run_id: &str,
        task_id: &str,
        try_number: Option<u32>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogRecord>> {
        self.with(|c| {
            query_all(
                c,
                "SELECT try_number, ts, level, message, id FROM task_logs
                 WHERE run_id = ?1 AND task_id = ?2 AND (?3 IS NULL OR try_number = ?3) AND id > ?4
                 ORDER BY id LIMIT ?5",
                params![run_id, task_id, try_number, after, limit],
                |r| {
                    let f = Fields::new(r, "task_logs", &[4])?;
                    Ok(LogRecord {
                        id: f.get(4)?,
                        try_number: f.get(0)?,
                        ts: f.ts(1)?,
                        level: f.get(2)?,
                        message: f.get(3)?,
                    })
                },
            )
        })
    }
}
