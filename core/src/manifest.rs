//! DAG manifests (`dag.toml`): parsing and validation. Every error names the
//! file, the line and, where there is one, the task.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use toml::Spanned;

use crate::dag::{DagSpec, TaskPolicy, TaskSpec, is_valid_id};

/// A manifest file that parsed and validated.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest file.
    pub path: PathBuf,
    /// Where the plugin components are looked up.
    pub plugin_dir: PathBuf,
    /// The validated DAG (component digests not yet filled in).
    pub spec: DagSpec,
    lines: HashMap<String, usize>,
}

/// A manifest that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The manifest file.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The task concerned, when there is one.
    pub task: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(task) = &self.task {
            write!(f, ": task `{task}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The file name looked for when a directory is given.
pub const MANIFEST_FILE: &str = "dag.toml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    dag: RawDag,
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default)]
    defaults: Option<Spanned<RawTask>>,
    #[serde(default)]
    tasks: IndexMap<Spanned<String>, Spanned<RawTask>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDag {
    id: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    plugin_dir: Option<String>,
    #[serde(default)]
    max_active_tasks: Option<u32>,
    #[serde(default)]
    schedule: Option<Spanned<String>>,
    #[serde(default)]
    timezone: Option<Spanned<String>>,
    #[serde(default)]
    start_date: Option<Spanned<toml::Value>>,
    #[serde(default)]
    catchup: Option<bool>,
    #[serde(default)]
    max_active_runs: Option<u32>,
}

/// A task table; also the shape of `[defaults]` (where only policy fields are allowed).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTask {
    plugin: Option<Spanned<String>>,
    #[serde(default)]
    after: Vec<Spanned<String>>,
    #[serde(default)]
    params: Option<Map<String, Value>>,
    #[serde(default)]
    connections: Vec<Spanned<String>>,
    #[serde(default)]
    privileged_connections: Vec<Spanned<String>>,
    retries: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    retry_delay: Option<Duration>,
    retry_exponential_backoff: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    max_retry_delay: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "byte_size")]
    memory: Option<u64>,
    #[serde(default, deserialize_with = "byte_size")]
    duckdb_memory: Option<u64>,
    threads: Option<u32>,
    #[serde(default, deserialize_with = "byte_size")]
    spill_limit: Option<u64>,
    #[serde(default, deserialize_with = "byte_size")]
    staging_limit: Option<u64>,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration `{text}` ({e}); write e.g. \"30s\", \"5m\", \"1h\""
        ))
    })
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse::<bytesize::ByteSize>()
        .map(|b| Some(b.as_u64()))
        .map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid size `{text}` ({e}); write e.g. \"512MiB\", \"4GiB\""
            ))
        })
}

impl RawTask {
    /// Applies this table's policy fields over `base`.
    fn policy_over(&self, base: TaskPolicy) -> TaskPolicy {
        TaskPolicy {
            retries: self.retries.unwrap_or(base.retries),
            retry_delay: self.retry_delay.unwrap_or(base.retry_delay),
            retry_exponential_backoff: self
                .retry_exponential_backoff
                .unwrap_or(base.retry_exponential_backoff),
            max_retry_delay: self.max_retry_delay.unwrap_or(base.max_retry_delay),
            timeout: self.timeout.unwrap_or(base.timeout),
            memory: self.memory.unwrap_or(base.memory),
            duckdb_memory: self.duckdb_memory.unwrap_or(base.duckdb_memory),
            threads: self.threads.unwrap_or(base.threads),
            spill_limit: self.spill_limit.unwrap_or(base.spill_limit),
            staging_limit: self.staging_limit.unwrap_or(base.staging_limit),
        }
    }
}

impl Manifest {
    /// Reads and validates the manifest at `path` (a file, or a directory holding `dag.toml`).
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let path = if path.is_dir() {
            path.join(MANIFEST_FILE)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ManifestError {
            path: path.clone(),
            line: None,
            task: None,
            message: format!("cannot read the manifest: {e}"),
        })?;
        Self::parse(&path, &text)
    }

    /// Validates manifest `text` read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ManifestError> {
        let at = |span: Option<std::ops::Range<usize>>, task: Option<&str>, message: String| {
            ManifestError {
                path: path.to_path_buf(),
                line: span.map(|s| line_of(text, s.start)),
                task: task.map(str::to_owned),
                message,
            }
        };
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| at(e.span(), None, e.message().to_owned()))?;

        let dag_id = raw.dag.id.get_ref();
        if !is_valid_id(dag_id) {
            return Err(at(
                Some(raw.dag.id.span()),
                None,
                format!("invalid DAG id `{dag_id}`: use letters, digits, `_` and `-`"),
            ));
        }

        let mut defaults = TaskPolicy::default();
        if let Some(d) = &raw.defaults {
            let table = d.get_ref();
            if table.plugin.is_some()
                || !table.after.is_empty()
                || table.params.is_some()
                || !table.connections.is_empty()
                || !table.privileged_connections.is_empty()
            {
                return Err(at(
                    Some(d.span()),
                    None,
                    "[defaults] holds policy fields only (retries, timeout, memory, ...); \
                     `plugin`, `after`, `params` and connections belong to a task"
                        .into(),
                ));
            }
            defaults = table.policy_over(defaults);
        }

        if raw.tasks.is_empty() {
            return Err(at(
                None,
                None,
                "the DAG has no tasks: add a [tasks.<id>] table".into(),
            ));
        }
        let mut lines = HashMap::new();
        let mut tasks = Vec::new();
        for (key, table) in &raw.tasks {
            let id = key.get_ref();
            let span = Some(key.span());
            if !is_valid_id(id) {
                return Err(at(
                    span,
                    Some(id),
                    "invalid task id: use letters, digits, `_` and `-`".into(),
                ));
            }
            let table_ref = table.get_ref();
            let Some(plugin) = &table_ref.plugin else {
                return Err(at(
                    span,
                    Some(id),
                    "missing `plugin`: the component that runs this task".into(),
                ));
            };
            let policy = table_ref.policy_over(defaults);
            validate_policy(&policy).map_err(|m| at(span.clone(), Some(id), m.to_owned()))?;
            let mut after = Vec::new();
            for dep in &table_ref.after {
                let dep_id = dep.get_ref();
                if !raw.tasks.contains_key(dep_id.as_str()) {
                    return Err(at(
                        Some(dep.span()),
                        Some(id),
                        format!("unknown dependency `{dep_id}` in `after`"),
                    ));
                }
                if dep_id == id {
                    return Err(at(
                        Some(dep.span()),
                        Some(id),
                        "a task cannot depend on itself".into(),
                    ));
                }
                if !after.contains(dep_id) {
                    after.push(dep_id.clone());
                }
            }
            for grant in &table_ref.connections {
                if !is_valid_id(grant.get_ref()) {
                    return Err(at(
                        Some(grant.span()),
                        Some(id),
                        format!("invalid connection id `{}`", grant.get_ref()),
                    ));
                }
            }
            for opt_in in &table_ref.privileged_connections {
                let name = opt_in.get_ref();
                if !table_ref.connections.iter().any(|c| c.get_ref() == name) {
                    return Err(at(
                        Some(opt_in.span()),
                        Some(id),
                        format!(
                            "`privileged_connections` names `{name}`, which is not in the task's `connections`"
                        ),
                    ));
                }
            }
            lines.insert(id.clone(), line_of(text, key.span().start));
            tasks.push(TaskSpec {
                id: id.clone(),
                plugin: plugin.get_ref().clone(),
                component: String::new(),
                after,
                params: table_ref.params.clone().unwrap_or_default(),
                connections: table_ref
                    .connections
                    .iter()
                    .map(|c| c.get_ref().clone())
                    .collect(),
                privileged_connections: table_ref
                    .privileged_connections
                    .iter()
                    .map(|c| c.get_ref().clone())
                    .collect(),
                policy,
            });
        }

        let tasks = topological_order(tasks).map_err(|cycle| {
            let first = cycle.first().cloned().unwrap_or_default();
            ManifestError {
                path: path.to_path_buf(),
                line: lines.get(&first).copied(),
                task: Some(first),
                message: format!("dependency cycle: {}", cycle.join(" -> ")),
            }
        })?;

        let schedule = match &raw.dag.schedule {
            None => None,
            Some(cron) => {
                let timezone = raw
                    .dag
                    .timezone
                    .as_ref()
                    .map_or_else(|| "UTC".to_owned(), |t| t.get_ref().clone());
                crate::schedule::Schedule::parse(cron.get_ref(), &timezone).map_err(|m| {
                    let span = raw
                        .dag
                        .timezone
                        .as_ref()
                        .filter(|_| matches!(m, crate::schedule::ScheduleError::UnknownTimeZone(_)))
                        .map_or(cron.span(), |t| t.span());
                    at(Some(span), None, m.to_string())
                })?;
                let Some(start) = &raw.dag.start_date else {
                    return Err(at(
                        Some(cron.span()),
                        None,
                        "a `schedule` needs a `start_date`".into(),
                    ));
                };
                let text = match start.get_ref() {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Datetime(d) => d.to_string(),
                    other => other.to_string(),
                };
                let start_date = crate::schedule::parse_start_date(&text, &timezone)
                    .map_err(|m| at(Some(start.span()), None, m.to_string()))?;
                Some(crate::schedule::ScheduleSpec {
                    cron: cron.get_ref().clone(),
                    timezone,
                    start_date,
                    catchup: raw.dag.catchup.unwrap_or(false),
                    max_active_runs: raw.dag.max_active_runs.unwrap_or(16).max(1),
                })
            }
        };

        let manifest_dir = path.parent().unwrap_or(Path::new("."));
        let plugin_dir = manifest_dir.join(raw.dag.plugin_dir.as_deref().unwrap_or("plugins"));
        Ok(Self {
            path: path.to_path_buf(),
            plugin_dir,
            spec: DagSpec {
                id: dag_id.clone(),
                description: raw.dag.description,
                params: raw.params,
                max_active_tasks: raw.dag.max_active_tasks.unwrap_or(16).max(1),
                schedule,
                tasks,
            },
            lines,
        })
    }

    /// An error about task `task`, located at its table in this manifest.
    pub fn task_error(&self, task: &str, message: impl Into<String>) -> ManifestError {
        ManifestError {
            path: self.path.clone(),
            line: self.lines.get(task).copied(),
            task: Some(task.to_owned()),
            message: message.into(),
        }
    }
}

/// The first rule `policy` breaks, if any.
fn validate_policy(policy: &TaskPolicy) -> Result<(), &'static str> {
    if policy.timeout.is_zero() {
        return Err("`timeout` must be more than zero");
    }
    if policy.memory < (1 << 20) {
        return Err("`memory` must be at least 1MiB");
    }
    if policy.threads == 0 {
        return Err("`threads` must be at least 1");
    }
    Ok(())
}

/// Orders tasks upstream first (stable: manifest order among ready tasks), or
/// returns one dependency cycle as a list of task ids ending where it starts.
fn topological_order(tasks: Vec<TaskSpec>) -> Result<Vec<TaskSpec>, Vec<String>> {
    let mut done: HashSet<String> = HashSet::new();
    let mut remaining = tasks;
    let mut ordered = Vec::with_capacity(remaining.len());
    loop {
        let before = remaining.len();
        let (ready, blocked): (Vec<_>, Vec<_>) = remaining
            .into_iter()
            .partition(|t| t.after.iter().all(|d| done.contains(d)));
        for t in &ready {
            done.insert(t.id.clone());
        }
        ordered.extend(ready);
        remaining = blocked;
        if remaining.is_empty() {
            return Ok(ordered);
        }
        if remaining.len() == before {
            return Err(find_cycle(&remaining));
        }
    }
}

/// Walks `after` edges among tasks that could not be ordered until a task repeats.
fn find_cycle(blocked: &[TaskSpec]) -> Vec<String> {
    let by_id: HashMap<&str, &TaskSpec> = blocked.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut path: Vec<String> = Vec::new();
    let mut current = blocked.first().map(|t| t.id.as_str());
    while let Some(id) = current {
        if let Some(pos) = path.iter().position(|p| p == id) {
            let mut cycle = path.split_off(pos);
            cycle.push(id.to_owned());
            return cycle;
        }
        path.push(id.to_owned());
        current = by_id
            .get(id)
            .and_then(|t| t.after.iter().find(|d| by_id.contains_key(d.as_str())))
            .map(String::as_str);
    }
    path
}

/// 1-based line number of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |head| head.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("dag.toml"), text)
    }

    const GOOD: &str = r#"
[dag]
id = "demo"

[defaults]
retries = 2
timeout = "30s"

[tasks.b]
plugin = "p"
after = ["a"]
memory = "64MiB"

[tasks.a]
plugin = "p"
params = { rows = 10 }
"#;

    #[test]
    fn good_manifest_orders_tasks_and_applies_defaults() {
        let m = parse(GOOD).expect("valid manifest");
        let ids: Vec<&str> = m.spec.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let b = m.spec.task("b").expect("task b");
        assert_eq!(b.policy.retries, 2);
        assert_eq!(b.policy.timeout, Duration::from_secs(30));
        assert_eq!(b.policy.memory, 64 << 20);
        assert_eq!(m.spec.task("a").expect("task a").params["rows"], 10);
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("must be rejected").to_string()
    }

    #[test]
    fn unknown_dependency_names_line_and_task() {
        let e = error("[dag]\nid = \"d\"\n[tasks.a]\nplugin = \"p\"\nafter = [\"nope\"]\n");
        assert_eq!(
            e,
            "dag.toml:5: task `a`: unknown dependency `nope` in `after`"
        );
    }

    #[test]
    fn cycle_is_named() {
        let e = error(
            "[dag]\nid = \"d\"\n[tasks.a]\nplugin = \"p\"\nafter = [\"b\"]\n[tasks.b]\nplugin = \"p\"\nafter = [\"a\"]\n",
        );
        assert!(
            e.starts_with("dag.toml:3: task `a`: dependency cycle: a -> b -> a"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_task_is_rejected_with_line() {
        let e = error("[dag]\nid = \"d\"\n[tasks.a]\nplugin = \"p\"\n[tasks.a]\nplugin = \"q\"\n");
        assert!(e.starts_with("dag.toml:5:"), "{e}");
        assert!(e.contains("duplicate") || e.contains("defined"), "{e}");
    }

    #[test]
    fn wrong_type_names_line() {
        let e = error("[dag]\nid = \"d\"\n[tasks.a]\nplugin = \"p\"\nretries = \"three\"\n");
        assert!(e.starts_with("dag.toml:5:"), "{e}");
    }

    #[test]
    fn bad_duration_names_line() {
        let e = error("[dag]\nid = \"d\"\n[tasks.a]\nplugin = \"p\"\ntimeout = \"soon\"\n");
        assert!(
            e.starts_with("dag.toml:5:") && e.contains("invalid duration `soon`"),
            "{e}"
        );
    }

    #[test]
    fn schedule_errors_name_their_line() {
        let e = error("[dag]\nid = \"d\"\nschedule = \"@daily\"\n[tasks.a]\nplugin = \"p\"\n");
        assert_eq!(e, "dag.toml:3: a `schedule` needs a `start_date`");
        let e = error(
            "[dag]\nid = \"d\"\nschedule = \"99 * * * *\"\nstart_date = 2026-01-01\n[tasks.a]\nplugin = \"p\"\n",
        );
        assert!(
            e.starts_with("dag.toml:3: invalid schedule `99 * * * *`"),
            "{e}"
        );
        let e = error(
            "[dag]\nid = \"d\"\nschedule = \"@daily\"\ntimezone = \"Mars/Base\"\nstart_date = 2026-01-01\n[tasks.a]\nplugin = \"p\"\n",
        );
        assert_eq!(e, "dag.toml:4: unknown time zone `Mars/Base`");
    }

    #[test]
    fn a_schedule_is_part_of_the_spec() {
        let m = parse("[dag]\nid = \"d\"\nschedule = \"30 1 * * *\"\ntimezone = \"Europe/Paris\"\nstart_date = 2026-03-01\ncatchup = true\n[tasks.a]\nplugin = \"p\"\n")
            .expect("valid");
        let s = m.spec.schedule.expect("schedule");
        assert_eq!(
            (
                s.cron.as_str(),
                s.timezone.as_str(),
                s.catchup,
                s.max_active_runs
            ),
            ("30 1 * * *", "Europe/Paris", true, 16)
        );
        assert_eq!(s.start_date.to_rfc3339(), "2026-02-28T23:00:00+00:00");
    }

    #[test]
    fn privileged_connections_opt_in_only_to_granted_ones() {
        let m = parse(
            "[dag]\nid = \"d\"\n[tasks.a]\nplugin = \"p\"\nconnections = [\"pg\", \"lake\"]\nprivileged_connections = [\"pg\"]\n",
        )
        .expect("valid");
        assert_eq!(m.spec.tasks[0].privileged_connections, ["pg"]);
        let e = error(
            "[dag]\nid = \"d\"\n[tasks.a]\nplugin = \"p\"\nconnections = [\"lake\"]\nprivileged_connections = [\"pg\"]\n",
        );
        assert_eq!(
            e,
            "dag.toml:6: task `a`: `privileged_connections` names `pg`, which is not in the task's `connections`"
        );
        let e = error(
            "[dag]\nid = \"d\"\n[defaults]\nprivileged_connections = [\"pg\"]\n[tasks.a]\nplugin = \"p\"\n",
        );
        assert!(e.contains("[defaults] holds policy fields only"), "{e}");
        // Without the opt-in the canonical JSON (the version digest) is what it was.
        let plain = parse("[dag]\nid = \"d\"\n[tasks.a]\nplugin = \"p\"\nconnections = [\"pg\"]\n")
            .expect("valid");
        assert!(
            !plain
                .spec
                .canonical_json()
                .expect("a spec serializes")
                .contains("privileged_connections")
        );
    }

    #[test]
    fn missing_plugin_and_unknown_field() {
        let e = error("[dag]\nid = \"d\"\n[tasks.a]\nafter = []\n");
        assert_eq!(
            e,
            "dag.toml:3: task `a`: missing `plugin`: the component that runs this task"
        );
        let e = error("[dag]\nid = \"d\"\n[tasks.a]\nplugin = \"p\"\nretry = 3\n");
        assert!(e.starts_with("dag.toml:5:") && e.contains("retry"), "{e}");
    }
}
