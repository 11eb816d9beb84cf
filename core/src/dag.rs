//! The validated model of a DAG: what a manifest says once defaults are applied,
//! and what a deployment stores (with each task's component digest).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A DAG ready to deploy or run. Tasks are in a topological order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagSpec {
    /// The DAG's id, unique in a Sluice home.
    pub id: String,
    /// Free text shown by `sluice versions`.
    pub description: String,
    /// DAG-level params, visible to every task (run params override them).
    pub params: Map<String, Value>,
    /// How many task instances of one run may run at the same time.
    pub max_active_tasks: u32,
    /// When runs are created by `sluice scheduler` (none: manual runs only).
    #[serde(default)]
    pub schedule: Option<crate::schedule::ScheduleSpec>,
    /// The tasks, upstream before downstream.
    pub tasks: Vec<TaskSpec>,
}

/// One task of a DAG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task id, unique in its DAG.
    pub id: String,
    /// The plugin name from the manifest.
    pub plugin: String,
    /// The sha256 of the component (hex); empty until deployed.
    pub component: String,
    /// Upstream task ids.
    pub after: Vec<String>,
    /// Task params (override DAG params).
    pub params: Map<String, Value>,
    /// Connection ids the task may open.
    #[serde(default)]
    pub connections: Vec<String>,
    /// Those of `connections` the task may open although their Postgres role is
    /// privileged (superuser, server files or programs, CREATEROLE, REPLICATION).
    /// Left out of the canonical JSON when empty, so versions made before it
    /// keep their digests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub privileged_connections: Vec<String>,
    /// Limits and retry policy.
    pub policy: TaskPolicy,
}

/// Limits and retry policy of a task instance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TaskPolicy {
    /// Retries after the first try (0: one try in all).
    pub retries: u32,
    /// Delay before the first retry.
    pub retry_delay: Duration,
    /// Double the delay on each further retry.
    pub retry_exponential_backoff: bool,
    /// Upper bound of the delay with backoff.
    pub max_retry_delay: Duration,
    /// Wall-clock limit of one try, SQL included.
    pub timeout: Duration,
    /// Maximum WebAssembly linear memory, in bytes.
    pub memory: u64,
    /// DuckDB `memory_limit`, in bytes.
    pub duckdb_memory: u64,
    /// DuckDB worker threads.
    pub threads: u32,
    /// DuckDB `max_temp_directory_size` (spill to staging), in bytes.
    pub spill_limit: u64,
    /// Most bytes the run's staging directory may hold while this task runs.
    #[serde(default = "default_staging_limit")]
    pub staging_limit: u64,
}

fn default_staging_limit() -> u64 {
    256 << 30
}

impl Default for TaskPolicy {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
        Self {
            retries: 0,
            retry_delay: Duration::from_secs(10),
            retry_exponential_backoff: false,
            max_retry_delay: Duration::from_secs(3600),
            timeout: Duration::from_secs(3600),
            memory: 512 << 20,
            duckdb_memory: 4 << 30,
            threads: cores,
            spill_limit: 64 << 30,
            staging_limit: default_staging_limit(),
        }
    }
}

impl TaskPolicy {
    /// Total tries allowed.
    pub fn max_tries(&self) -> u32 {
        self.retries.saturating_add(1)
    }

    /// Delay before try `next_try` (2 = first retry), with backoff when enabled.
    pub fn delay_before(&self, next_try: u32) -> Duration {
        if !self.retry_exponential_backoff {
            return self.retry_delay;
        }
        let doublings = next_try.saturating_sub(2).min(30);
        self.retry_delay
            .saturating_mul(1 << doublings)
            .min(self.max_retry_delay)
    }
}

impl DagSpec {
    /// The task with id `id`.
    pub fn task(&self, id: &str) -> Option<&TaskSpec> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// Canonical JSON: the bytes a DAG version digest is computed over. Keys
    /// are sorted at every level whatever map type `serde_json` was built with.
    pub fn canonical_json(&self) -> Result<String, serde_json::Error> {
        Ok(canonicalize(serde_json::to_value(self)?).to_string())
    }
}

/// Sorts object keys recursively so that equal specs serialize identically.
fn canonicalize(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonicalize(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonicalize).collect()),
        other => other,
    }
}

/// Whether `id` is a valid DAG or task id: ASCII letters, digits, `_` and `-`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = TaskPolicy {
            retry_delay: Duration::from_secs(1),
            retry_exponential_backoff: true,
            max_retry_delay: Duration::from_secs(5),
            ..TaskPolicy::default()
        };
        let delays: Vec<u64> = (2..=6).map(|t| policy.delay_before(t).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 5, 5]);
    }

    /// The bytes every deployed version's digest was computed over: a change
    /// here changes the identity of every deployment.
    #[test]
    fn canonical_json_is_sorted_and_stable() {
        let mut params = Map::new();
        params.insert("zeta".into(), Value::from(1));
        params.insert(
            "alpha".into(),
            serde_json::json!({"y": 1, "x": [2, {"b": 0, "a": 0}]}),
        );
        let spec = DagSpec {
            id: "d".into(),
            description: String::new(),
            params,
            max_active_tasks: 4,
            schedule: None,
            tasks: Vec::new(),
        };
        let json = spec.canonical_json().expect("a spec serializes");
        assert_eq!(
            json,
            r#"{"description":"","id":"d","max_active_tasks":4,"params":{"alpha":{"x":[2,{"a":0,"b":0}],"y":1},"zeta":1},"schedule":null,"tasks":[]}"#
        );
    }
}
