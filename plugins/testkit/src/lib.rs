//! A test-only task. The `mode` param picks one behaviour for the host's tests
//! to observe: limits, sandbox escapes, retries, output handling.

use serde::Deserialize;
use serde_json::{Value, json};
use sluice_sdk::{Context, Error, ErrorKind, Input, Result, sql_literal};

#[derive(Deserialize)]
struct Params {
    mode: String,
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    bytes: usize,
    #[serde(default)]
    n: u64,
    #[serde(default = "two")]
    succeed_on: u32,
    #[serde(default)]
    permanent: bool,
    #[serde(default)]
    sql: String,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

fn two() -> u32 {
    2
}

fn run(ctx: &Context, input: Input<Params>) -> Result<Value> {
    let p = &input.params;
    match p.mode.as_str() {
        "echo" => Ok(echo(ctx, &input)),
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_millis(p.ms));
            Ok(echo(ctx, &input))
        }
        "sleep-first" => {
            // A long first try (to be killed mid-way), then quick success.
            if ctx.try_number() == 1 {
                std::thread::sleep(std::time::Duration::from_millis(p.ms));
            }
            Ok(echo(ctx, &input))
        }
        "spin" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "sql" => {
            let rows = ctx.sql().execute(&p.sql)?;
            Ok(json!({ "rows": rows }))
        }
        "query" => {
            let rows: Vec<Value> = ctx.sql().query_rows(&p.sql, 1000)?;
            Ok(json!({ "rows": rows }))
        }
        "query-json" => query_json_rows(ctx, p),
        "hold-deleted" => hold_deleted(ctx, p),
        "cursor" => {
            let mut cursor = ctx.sql().query(&p.sql)?;
            let (mut batches, mut bytes) = (0u64, 0u64);
            while let Some(batch) = cursor.next_batch()? {
                batches += 1;
                bytes += batch.len() as u64;
            }
            Ok(
                json!({ "batches": batches, "bytes": bytes, "schema_bytes": cursor.schema_ipc().len() }),
            )
        }
        "flaky" => {
            if ctx.try_number() < p.succeed_on {
                Err(Error::retryable(format!(
                    "flaky failure on try {}",
                    ctx.try_number()
                )))
            } else {
                Ok(json!({ "try": ctx.try_number() }))
            }
        }
        "fail" if p.permanent => Err(Error::permanent("told to fail permanently")),
        "fail" => Err(Error::retryable("told to fail")),
        "big-output" => Ok(Value::String("x".repeat(p.bytes))),
        "stdout" => {
            println!("hello from stdout");
            eprintln!("hello from stderr");
            Ok(json!({}))
        }
        "panic" => panic!("testkit was told to panic"),
        "progress" => {
            for done in 0..=10 {
                ctx.progress(done, 10);
            }
            ctx.info("progress reported");
            Ok(json!({}))
        }
        "escape" => Ok(escape(ctx, p)),
        "links" => Ok(make_links(ctx)),
        "probe-later" => {
            // Waits until the test tells it (through a file in its own staging)
            // where another, still running, run's staging is; then tries it.
            let told = ctx.staging_path("target.txt");
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(p.ms);
            let target = loop {
                if let Ok(t) = std::fs::read_to_string(&told) {
                    break t.trim().to_owned();
                }
                if std::time::Instant::now() > deadline {
                    return Err(Error::permanent("never told where the other run is"));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            };
            let secret = format!("{target}/secret.txt");
            let wasi = std::fs::read_to_string(&secret).map_err(|e| e.to_string());
            let sql = ctx
                .sql()
                .query_rows::<Value>(
                    &format!("SELECT content FROM read_text({})", sql_literal(&secret)),
                    1,
                )
                .map_err(|e| e.to_string());
            Ok(
                json!({ "target": target, "wasi": attempt("wasi", wasi), "sql": attempt("sql", sql.map(|v| format!("{v:?}"))) }),
            )
        }
        "log-and-wait" => {
            // `n` lines, then a wait until the test writes `go.txt` in the
            // run's staging (at most `ms`), then `n` more: a tail started in
            // the wait finds lines the run loop has not flushed in a batch.
            for i in 0..p.n {
                ctx.info(format!("line {i}"));
            }
            let go = ctx.staging_path("go.txt");
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(p.ms);
            while std::fs::metadata(&go).is_err() {
                if std::time::Instant::now() > deadline {
                    return Err(Error::permanent("never told to go on"));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            for i in p.n..2 * p.n {
                ctx.info(format!("line {i}"));
            }
            Ok(json!({ "logged": 2 * p.n }))
        }
        "log-flood" => {
            for i in 0..p.n {
                ctx.info(format!("line {i}"));
            }
            if p.rest.get("then").and_then(Value::as_str) == Some("panic") {
                panic!("panicked after a log flood");
            }
            Ok(json!({ "logged": p.n }))
        }
        "cursors" => {
            let mut open = Vec::new();
            for i in 0..p.n {
                match ctx.sql().query("SELECT 1") {
                    Ok(cursor) => open.push(cursor),
                    Err(e) => return Ok(json!({ "opened": i, "error": e.message() })),
                }
            }
            Ok(json!({ "opened": open.len() }))
        }
        "recurse" => Ok(json!({ "depth": recurse(std::hint::black_box(0)) })),
        "steps" => steps(ctx, p),
        "hostcalls" => Ok(host_calls(ctx, p.n.max(1))),
        other => Err(Error::permanent(format!("unknown testkit mode `{other}`"))),
    }
}

/// Times `n` trivial host calls (a context read) against `n` calls of a local
/// function, inside the guest: nanoseconds per call of each.
fn host_calls(ctx: &Context, n: u64) -> Value {
    #[inline(never)]
    fn local(x: u32) -> u32 {
        std::hint::black_box(x).wrapping_add(1)
    }
    let start = std::time::Instant::now();
    let mut acc = 0u32;
    for _ in 0..n {
        acc = acc.wrapping_add(ctx.try_number());
    }
    let host = start.elapsed();
    let start = std::time::Instant::now();
    for i in 0..n {
        acc = acc.wrapping_add(local(i as u32));
    }
    let local_time = start.elapsed();
    json!({
        "calls": n,
        "host_ns_per_call": host.as_nanos() as f64 / n as f64,
        "local_ns_per_call": local_time.as_nanos() as f64 / n as f64,
        "checksum": acc,
    })
}

/// Runs the `steps` param in order: `{"pg": "execute"|"copy_in"|"extract", ...}`
/// on connection `conn`, or `{"duck": sql}` / `{"rows": sql}` in DuckDB. Each
/// step's result or error (with whether it is permanent) is reported; with
/// `stop_on_error`, the first error fails the task (after logging it).
fn steps(ctx: &Context, p: &Params) -> Result<Value> {
    let conn = p.rest.get("conn").and_then(Value::as_str).unwrap_or("pg");
    let stop = p
        .rest
        .get("stop_on_error")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let list = p
        .rest
        .get("steps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut results = Vec::new();
    let mut pg = None;
    let staging = ctx.staging_dir();
    for step in &list {
        // `{staging}` in a step stands for the run's staging directory.
        let step: Value = serde_json::from_str(&step.to_string().replace("{staging}", &staging))?;
        let step = &step;
        let text = |k: &str| {
            step.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let outcome: Result<Value> = if let Some(sql) = step.get("duck").and_then(Value::as_str) {
            ctx.sql().execute(sql).map(|n| json!(n)).map_err(Into::into)
        } else if let Some(op) = step.get("s3").and_then(Value::as_str) {
            let bucket_id = p
                .rest
                .get("bucket")
                .and_then(Value::as_str)
                .unwrap_or("lake");
            ctx.bucket(bucket_id).and_then(|b| match op {
                "put" => b.put(&text("file"), &text("key")).map(|n| json!(n)),
                "get" => b.get(&text("key"), &text("file")).map(|n| json!(n)),
                "list" => b.list(&text("prefix")).map(|keys| json!(keys)),
                other => Err(Error::permanent(format!("unknown s3 step `{other}`"))),
            })
        } else if let Some(sql) = step.get("rows").and_then(Value::as_str) {
            ctx.sql()
                .query_rows::<Value>(sql, 1000)
                .map(Value::Array)
                .map_err(Into::into)
        } else {
            let client = match pg.take() {
                Some(client) => Ok(client),
                None => ctx.postgres(conn),
            };
            client.and_then(|client| {
                let done = match text("pg").as_str() {
                    "execute" => client.execute(&text("sql")),
                    "copy_in" => client.copy_in(&text("table"), &text("query")),
                    "extract" => client.extract(&text("query"), &text("table")),
                    other => Err(Error::permanent(format!("unknown pg step `{other}`"))),
                };
                pg = Some(client);
                done.map(|n| json!(n))
            })
        };
        match outcome {
            Ok(v) => results.push(json!({ "ok": v })),
            Err(e) => {
                ctx.error(format!("step failed: {e}"));
                if stop {
                    return Err(e);
                }
                results.push(json!({
                    "error": e.message(),
                    "permanent": e.kind() == ErrorKind::Permanent,
                }));
            }
        }
    }
    Ok(json!({ "results": results }))
}

/// `query-json` of `sql` with at most `n` rows; reports how many came back
/// (decoded without keeping them).
fn query_json_rows(ctx: &Context, p: &Params) -> Result<Value> {
    let max_rows = u32::try_from(p.n).unwrap_or(u32::MAX);
    let rows = ctx
        .sql()
        .query_rows::<serde::de::IgnoredAny>(&p.sql, max_rows)?;
    Ok(json!({ "rows": rows.len() }))
}

/// Opens a staging file, deletes it, writes `bytes` into it while it is still
/// open (so it takes disk but has no name), then holds it for `ms`.
fn hold_deleted(ctx: &Context, p: &Params) -> Result<Value> {
    use std::io::Write;
    let path = ctx.staging_path("hidden.bin");
    let mut file = std::fs::File::create(&path)?;
    std::fs::remove_file(&path)?;
    let chunk = vec![7u8; 1 << 20];
    let mut written = 0usize;
    while written < p.bytes {
        file.write_all(&chunk)?;
        written += chunk.len();
    }
    file.sync_all()?;
    std::thread::sleep(std::time::Duration::from_millis(p.ms));
    Ok(json!({ "written": written }))
}

/// Recursion without end: the guest's stack overflows.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    recurse(frame[3] + 1) + frame[7]
}

fn echo(ctx: &Context, input: &Input<Params>) -> Value {
    json!({
        "dag": ctx.dag_id(),
        "run": ctx.run_id(),
        "task": ctx.task_id(),
        "try": ctx.try_number(),
        "logical_date": ctx.logical_date(),
        "interval": [ctx.data_interval_start(), ctx.data_interval_end()],
        "ds": ctx.ds(),
        "ds_nodash": ctx.ds_nodash(),
        "staging": ctx.staging_dir(),
        "upstream": input.upstream_ids().collect::<Vec<_>>(),
        "rest": input.params.rest,
    })
}

/// One attempt to reach outside the sandbox, and what happened.
fn attempt(name: &str, result: std::result::Result<String, String>) -> Value {
    match result {
        Ok(what) => json!({ "attempt": name, "allowed": true, "detail": what }),
        Err(why) => json!({ "attempt": name, "allowed": false, "detail": why }),
    }
}

/// Tries every kind of link WASI can make in staging; reports what each call
/// returned and whether anything is at the link's path afterwards.
#[allow(deprecated)] // `soft_link`: std has no other symlink call on wasip2
fn make_links(ctx: &Context) -> Value {
    let staging = ctx.staging_dir();
    let at = |name: &str| format!("{staging}/{name}");
    let _ = std::fs::write(at("file.txt"), "inside");
    let _ = std::fs::create_dir(at("dir"));
    let tries: Vec<(&str, String, std::io::Result<()>)> = vec![
        (
            "symlink to a file in staging",
            at("to-file"),
            std::fs::soft_link("file.txt", at("to-file")),
        ),
        (
            "dangling relative symlink",
            at("dangling"),
            std::fs::soft_link("../../../sluice-planted", at("dangling")),
        ),
        (
            "symlink to the parent directory",
            at("up"),
            std::fs::soft_link("..", at("up")),
        ),
        (
            "symlink in a subdirectory to /proc",
            at("dir/proc"),
            std::fs::soft_link("../../../../../../../proc/self/fd/1", at("dir/proc")),
        ),
        (
            "hard link to a file in staging",
            at("hard"),
            std::fs::hard_link(at("file.txt"), at("hard")),
        ),
    ];
    let results: Vec<Value> = tries
        .into_iter()
        .map(|(name, path, made)| {
            json!({
                "name": name,
                "made": made.is_ok(),
                "error": made.err().map(|e| e.to_string()),
                "exists": std::fs::symlink_metadata(&path).is_ok(),
            })
        })
        .collect();
    json!({ "links": results })
}

fn escape(ctx: &Context, p: &Params) -> Value {
    let staging = ctx.staging_dir();
    let sql = ctx.sql();
    let io = |r: std::io::Result<String>| r.map_err(|e| e.to_string());
    let run_sql = |s: &str| {
        sql.execute(s)
            .map(|n| format!("{n} rows"))
            .map_err(|e| e.to_string())
    };
    let lit = |s: &str| sql_literal(s);
    let read_rows = |s: &str| match sql.query_rows::<Value>(s, 10) {
        Ok(rows) if rows.is_empty() => Err("read nothing".to_owned()),
        Ok(rows) => Ok(format!("{rows:?}")),
        Err(e) => Err(e.to_string()),
    };
    let other = p
        .rest
        .get("other_staging")
        .and_then(Value::as_str)
        .unwrap_or("/nonexistent");

    // Controls: the same operations inside staging must work, or the denials prove nothing.
    let controls = vec![
        attempt(
            "wasi write inside staging",
            io(std::fs::write(format!("{staging}/probe.txt"), "ok").map(|_| "written".into())),
        ),
        attempt(
            "sql read inside staging",
            run_sql(&format!(
                "CREATE TABLE probe AS SELECT * FROM read_text({})",
                lit(&format!("{staging}/probe.txt"))
            )),
        ),
        attempt(
            "sql copy inside staging",
            run_sql(&format!(
                "COPY (SELECT 1 AS x) TO {}",
                lit(&format!("{staging}/probe.csv"))
            )),
        ),
    ];

    let attempts = vec![
        attempt(
            "wasi read /etc/passwd",
            io(std::fs::read_to_string("/etc/passwd")),
        ),
        attempt(
            "wasi read via ..",
            io(std::fs::read_to_string(format!(
                "{staging}/../../../../../../etc/passwd"
            ))),
        ),
        attempt(
            "wasi write /tmp",
            io(std::fs::write("/tmp/sluice-escape.txt", "x").map(|_| "written".into())),
        ),
        attempt(
            "wasi list /",
            io(std::fs::read_dir("/").map(|d| format!("{} entries", d.count()))),
        ),
        attempt(
            "wasi list staging parent",
            io(std::fs::read_dir(format!("{staging}/.."))
                .map(|d| format!("{} entries", d.count()))),
        ),
        attempt(
            "wasi read other run",
            io(std::fs::read_to_string(format!("{other}/secret.txt"))),
        ),
        attempt("wasi env vars", {
            let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
            if vars.is_empty() {
                Err("no environment".into())
            } else {
                Ok(vars.join(","))
            }
        }),
        attempt(
            "wasi tcp connect",
            std::net::TcpStream::connect("127.0.0.1:5432")
                .map(|_| "connected".into())
                .map_err(|e| e.to_string()),
        ),
        attempt(
            "sql read_text /etc/passwd",
            run_sql("SELECT * FROM read_text('/etc/passwd')"),
        ),
        attempt(
            "sql read_csv /etc/passwd",
            run_sql("SELECT * FROM read_csv('/etc/passwd')"),
        ),
        attempt(
            "sql read_text via ..",
            run_sql(&format!(
                "SELECT * FROM read_text({})",
                lit(&format!("{staging}/../../../../../../etc/passwd"))
            )),
        ),
        attempt(
            "sql read other run",
            run_sql(&format!(
                "SELECT * FROM read_text({})",
                lit(&format!("{other}/secret.txt"))
            )),
        ),
        attempt("sql glob /etc", run_sql("SELECT * FROM glob('/etc/*')")),
        attempt(
            "sql copy to /tmp",
            run_sql("COPY (SELECT 1) TO '/tmp/sluice-escape.csv'"),
        ),
        attempt(
            "sql copy to staging parent",
            run_sql(&format!(
                "COPY (SELECT 1) TO {}",
                lit(&format!("{staging}/../sibling.csv"))
            )),
        ),
        attempt(
            "sql attach /tmp",
            run_sql("ATTACH '/tmp/sluice-escape.db' AS x"),
        ),
        attempt("sql install extension", run_sql("INSTALL httpfs")),
        attempt("sql load extension", run_sql("LOAD httpfs")),
        attempt(
            "sql enable external access",
            run_sql("SET enable_external_access = true"),
        ),
        attempt(
            "sql widen allowed directories",
            run_sql("SET allowed_directories = ['/']"),
        ),
        attempt(
            "sql unlock configuration",
            run_sql("SET lock_configuration = false"),
        ),
        attempt(
            "sql move temp directory",
            run_sql("SET temp_directory = '/tmp'"),
        ),
        attempt(
            "sql raise memory limit",
            run_sql("SET memory_limit = '100GB'"),
        ),
        attempt(
            "sql reset a locked option",
            run_sql("RESET enable_external_access"),
        ),
        attempt(
            "sql export database",
            run_sql("EXPORT DATABASE '/tmp/sluice-export'"),
        ),
        attempt(
            "sql read_json outside",
            run_sql("SELECT * FROM read_json('/etc/os-release')"),
        ),
        attempt(
            "sql read_parquet outside",
            run_sql("SELECT * FROM read_parquet('/tmp/*.parquet')"),
        ),
        attempt(
            "sql read_blob device",
            run_sql("SELECT * FROM read_blob('/dev/zero')"),
        ),
        attempt(
            "sql persistent secret",
            run_sql("CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')"),
        ),
        attempt(
            "sql allow persistent secrets",
            run_sql("SET allow_persistent_secrets = true"),
        ),
        attempt(
            "sql move the secret directory",
            run_sql("SET secret_directory = '/tmp/sluice-secrets'"),
        ),
        attempt(
            "sql move the home directory",
            run_sql("SET home_directory = '/'"),
        ),
        attempt(
            "sql read via the home directory",
            run_sql("SELECT * FROM read_text('~/../../../../../../etc/passwd')"),
        ),
        attempt("sql settings show a host path", {
            // Settings may show staging paths (the task's own), nothing else.
            let query = format!(
                "SELECT name || '=' || value AS s FROM duckdb_settings() \
                 WHERE (value LIKE '%/%' OR value LIKE '%~%') AND NOT contains(value, {})",
                lit(&staging)
            );
            match sql.query_rows::<Value>(&query, 10) {
                Ok(rows) if rows.is_empty() => Err("no setting shows a host path".into()),
                Ok(rows) => Ok(Value::Array(rows).to_string()),
                Err(e) => Err(e.to_string()),
            }
        }),
        attempt(
            "wasi read device",
            io(std::fs::read("/dev/zero").map(|b| format!("{} bytes", b.len()))),
        ),
        attempt(
            "wasi very long path",
            io(
                std::fs::write(format!("{staging}/{}", "a/".repeat(3000) + "x"), "x")
                    .map(|_| "written".into()),
            ),
        ),
        attempt(
            "wasi hard link to outside",
            io(std::fs::hard_link("/etc/passwd", format!("{staging}/hard"))
                .map(|_| "linked".into())),
        ),
        attempt("wasi absolute symlink then read", {
            #[allow(deprecated)]
            let made = std::fs::soft_link("/etc/passwd", format!("{staging}/abs-link"));
            io(made.and_then(|()| std::fs::read_to_string(format!("{staging}/abs-link"))))
        }),
        attempt("wasi relative symlink then read", {
            #[allow(deprecated)]
            let made = std::fs::soft_link(
                "../../../../../../../../etc/passwd",
                format!("{staging}/rel-link"),
            );
            io(made.and_then(|()| std::fs::read_to_string(format!("{staging}/rel-link"))))
        }),
        // Whether or not WASI let the link be made, SQL must not follow it
        // out: reading nothing (no link, so no file) is a denial too.
        attempt(
            "sql through a guest-made symlink",
            read_rows(&format!(
                "SELECT content FROM read_text({})",
                lit(&format!("{staging}/rel-link"))
            )),
        ),
        attempt("sql through a guest-made dir symlink", {
            #[allow(deprecated)]
            let _ =
                std::fs::soft_link("../../../../../../../../etc", format!("{staging}/etc-link"));
            read_rows(&format!(
                "SELECT content FROM read_text({})",
                lit(&format!("{staging}/etc-link/passwd"))
            ))
        }),
    ];
    json!({ "controls": controls, "attempts": attempts })
}

sluice_sdk::task!(run);
