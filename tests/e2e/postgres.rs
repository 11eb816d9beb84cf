//! Postgres through the host: exact round trips of every supported type (NULLs
//! included), millions of rows both ways, grants, and no secret anywhere.

use serde_json::{Value, json};

use crate::pg::{self, PASSWORD};
use crate::support::{CHILD_DEADLINE, TestHome, output_within, text};

/// A home with connection `pg` to the test server.
fn home_with_pg() -> (TestHome, &'static pg::PgServer) {
    let server = pg::server();
    let home = TestHome::new();
    let vault =
        sluice::vault::Vault::open(&home.sluice.store, home.sluice.home.root()).expect("vault");
    let connection = sluice::capabilities::connections::CONNECTION_TYPES
        .parse_uri("pg", &server.uri())
        .expect("uri");
    sluice::connections::add(&home.sluice.store, &vault, &connection, false).expect("add");
    (home, server)
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    )
}

fn steps_task(grant: bool, steps: Value) -> String {
    let grant = if grant {
        "connections = [\"pg\"]\n"
    } else {
        ""
    };
    format!(
        "[tasks.t]\nplugin = \"testkit\"\n{grant}params = {{ mode = \"steps\", conn = \"pg\", stop_on_error = false, steps = {} }}\n",
        toml_value(&steps)
    )
}

/// JSON → TOML inline value (arrays and inline tables).
fn toml_value(v: &Value) -> String {
    match v {
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{ {} }}",
            map.iter()
                .map(|(k, v)| format!("{k} = {}", toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

fn results(home: &TestHome, run_id: &str) -> Vec<Value> {
    home.output(run_id, "t")["results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_type_round_trips_exactly_with_nulls() {
    let (home, server) = home_with_pg();
    let table = unique("rt");
    server.psql(&format!(
        "CREATE TABLE {table} (b boolean, i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision, \
         n numeric(18,4), w numeric(38,10), t text, v varchar(20), d date, ts timestamp, tstz timestamptz)"
    ));
    let source = "CREATE TABLE src AS SELECT * FROM (VALUES \
        (true, (-32768)::SMALLINT, (-2147483648)::INTEGER, (-9223372036854775808)::BIGINT, 1.5::REAL, -0.000123::DOUBLE, \
         12345.6789::DECIMAL(18,4), 1234567890123456789012345678.0123456789::DECIMAL(38,10), 'héllo ✓ \"quoted\"', 'v1', DATE '1999-12-31', TIMESTAMP '2026-03-29 01:30:00.123456', \
         TIMESTAMPTZ '2026-01-31 23:59:59.5+00'), \
        (false, 32767::SMALLINT, 2147483647::INTEGER, 9223372036854775807::BIGINT, -3.25::REAL, 1e300::DOUBLE, \
         -0.0001::DECIMAL(18,4), -0.0000000001::DECIMAL(38,10), '', 'v2', DATE '2038-01-19', TIMESTAMP '1970-01-01 00:00:00', TIMESTAMPTZ '2000-02-29 12:00:00+00'), \
        (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)) \
        AS s(b, i2, i4, i8, f4, f8, n, w, t, v, d, ts, tstz)";
    let steps = json!([
        { "duck": source },
        { "pg": "copy_in", "table": table, "query": "SELECT * FROM src" },
        { "pg": "extract", "query": format!("SELECT * FROM {table}"), "table": "back" },
        { "rows": "SELECT (SELECT count(*) FROM (SELECT * FROM src EXCEPT ALL SELECT * FROM back)) + \
                          (SELECT count(*) FROM (SELECT * FROM back EXCEPT ALL SELECT * FROM src)) AS diff, \
                          (SELECT count(*) FROM back) AS n" },
    ]);
    let run = home
        .run("roundtrip", &steps_task(true, steps), json!({}))
        .await;
    assert_eq!(run.state.as_str(), "success", "{:?}", run.error);
    let r = results(&home, &run.run_id);
    assert_eq!(r[1], json!({ "ok": 3 }), "{r:?}");
    assert_eq!(r[2], json!({ "ok": 3 }), "{r:?}");
    assert_eq!(
        r[3]["ok"],
        json!([{ "diff": 0, "n": 3 }]),
        "every value came back equal: {r:?}"
    );
    // And Postgres holds the exact values.
    let stored = server.psql(&format!(
        "SELECT n::text, w::text, i8::text, t, tstz AT TIME ZONE 'UTC' FROM {table} WHERE b"
    ));
    assert_eq!(
        stored,
        "12345.6789|1234567890123456789012345678.0123456789|-9223372036854775808|héllo ✓ \"quoted\"|2026-01-31 23:59:59.5"
    );
    assert_eq!(
        server.psql(&format!("SELECT w::text FROM {table} WHERE NOT b")),
        "-0.0000000001"
    );
    assert_eq!(
        server.psql(&format!(
            "SELECT count(*) FROM {table} WHERE t IS NULL AND d IS NULL AND n IS NULL"
        )),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extract_keeps_wide_numerics_exact_and_refuses_nan() {
    let (home, server) = home_with_pg();
    let table = unique("wide");
    server.psql(&format!(
        "CREATE TABLE {table} (k int, n numeric); INSERT INTO {table} VALUES \
         (1, 1234567890123456789012345678.0123456789), (2, -0.00000000005), (3, 0.000000000049), \
         (4, 12345678901234567890.5), (5, NULL)"
    ));
    let steps = json!([
        { "pg": "extract", "query": format!("SELECT * FROM {table}"), "table": "back" },
        { "rows": "SELECT k, n::VARCHAR AS n FROM back ORDER BY k" },
    ]);
    let run = home.run("wide", &steps_task(true, steps), json!({})).await;
    assert_eq!(run.state.as_str(), "success", "{:?}", run.error);
    let r = results(&home, &run.run_id);
    assert_eq!(
        r[1]["ok"],
        json!([
            { "k": 1, "n": "1234567890123456789012345678.0123456789" },
            { "k": 2, "n": "-0.0000000001" },
            { "k": 3, "n": "0.0000000000" },
            { "k": 4, "n": "12345678901234567890.5000000000" },
            { "k": 5 },
        ]),
        "28 integer digits, rounding half away from zero past 10 decimals: {r:?}"
    );

    server.psql(&format!("INSERT INTO {table} VALUES (6, 'NaN')"));
    let steps = json!([
        { "pg": "extract", "query": format!("SELECT * FROM {table}"), "table": "back" },
    ]);
    let run = home.run("nan", &steps_task(true, steps), json!({})).await;
    let r = results(&home, &run.run_id);
    assert!(
        r[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("numeric NaN does not fit DECIMAL(38,10)")),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_dates_and_timestamps_go_both_ways() {
    // Found by the copy_decoder fuzz target: `infinity` is the type's MAX in
    // Postgres, and moving it by the epoch difference overflowed.
    let (home, server) = home_with_pg();
    let (from, to) = (unique("inf_from"), unique("inf_to"));
    server.psql(&format!(
        "CREATE TABLE {from} (k int, d date, ts timestamp, tstz timestamptz); \
         CREATE TABLE {to} (k int, d date, ts timestamp, tstz timestamptz); \
         INSERT INTO {from} VALUES (1, 'infinity', 'infinity', 'infinity'), \
         (2, '-infinity', '-infinity', '-infinity'), (3, '2026-03-29', '2026-03-29 01:30', '2026-03-29 01:30+00')"
    ));
    let steps = json!([
        { "pg": "extract", "query": format!("SELECT * FROM {from}"), "table": "back" },
        { "rows": "SELECT k, d::VARCHAR AS d, ts::VARCHAR AS ts, isinf(tstz) AS tstz_inf FROM back ORDER BY k" },
        { "pg": "copy_in", "table": to, "query": "SELECT * FROM back" },
    ]);
    let run = home
        .run("infinity", &steps_task(true, steps), json!({}))
        .await;
    assert_eq!(run.state.as_str(), "success", "{:?}", run.error);
    let r = results(&home, &run.run_id);
    assert_eq!(
        r[1]["ok"],
        json!([
            { "k": 1, "d": "infinity", "ts": "infinity", "tstz_inf": true },
            { "k": 2, "d": "-infinity", "ts": "-infinity", "tstz_inf": true },
            { "k": 3, "d": "2026-03-29", "ts": "2026-03-29 01:30:00", "tstz_inf": false },
        ]),
        "{r:?}"
    );
    assert_eq!(r[2]["ok"], 3, "{r:?}");
    assert_eq!(
        server.psql(&format!(
            "SELECT count(*) FROM (SELECT * FROM {from} EXCEPT SELECT * FROM {to}) AS diff"
        )),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_ends_fails_this_call_and_the_next_clearly() {
    let (home, _server) = home_with_pg();
    let steps = json!([
        { "pg": "execute", "sql": "SELECT pg_terminate_backend(pg_backend_pid())" },
        { "pg": "execute", "sql": "SELECT 1" },
    ]);
    let run = home.run("ended", &steps_task(true, steps), json!({})).await;
    let r = results(&home, &run.run_id);
    let first = r[0]["error"].as_str().unwrap_or_default();
    assert!(
        first.starts_with("connection `pg`: FATAL: terminating connection"),
        "{r:?}"
    );
    let second = r[1]["error"].as_str().unwrap_or_default();
    assert!(
        second.starts_with("connection `pg`: ")
            && (second.contains("closed") || second.contains("communicating with the server")),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_running_past_the_timeout_is_cancelled_on_the_server() {
    let (home, server) = home_with_pg();
    let marker = unique("sleep");
    let steps = json!([
        { "pg": "execute", "sql": format!("SELECT pg_sleep(600) AS {marker}") },
    ]);
    let body = format!("{}timeout = \"2s\"\n", steps_task(true, steps));
    // Guards against a hang only; the try's own timeout is 2 s.
    let run = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        home.run("pg-timeout", &body, json!({})),
    )
    .await
    .expect("the Postgres call was not stopped at the task's timeout");
    assert_eq!(run.state.as_str(), "failed");
    let error = home.task(&run.run_id, "t").error.unwrap_or_default();
    assert!(error.contains("timed out after 2s"), "{error}");
    // The server stops the statement too (the cancel request is asynchronous;
    // allow a loaded machine 30 s).
    let running = || {
        server.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND state = 'active' AND pid <> pg_backend_pid()"
        ))
    };
    for _ in 0..300 {
        if running() == "0" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(running(), "0", "the statement still runs on the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_verify_the_server_certificate() {
    let server = pg::server();
    let home = TestHome::new();
    let ca = server.ca.display().to_string();
    let add = |uri: String| {
        let out = home.cli(&["connections", "add", "pg", "--uri", &uri, "--replace"]);
        assert!(out.status.success(), "{:?}", text(&out));
    };

    // verify-full against the run's CA: the session is encrypted.
    add(format!(
        "{}?sslmode=verify-full&sslrootcert={ca}",
        server.uri()
    ));
    let (ok, err) = text(&home.cli(&["connections", "test", "pg"]));
    assert!(ok.starts_with("ok: pg: PostgreSQL 15"), "{ok}{err}");
    let steps = json!([
        { "pg": "extract", "query": "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()", "table": "tls" },
        { "rows": "SELECT ssl, version FROM tls" },
    ]);
    let run = home.run("tls", &steps_task(true, steps), json!({})).await;
    assert_eq!(run.state.as_str(), "success", "{:?}", run.error);
    let r = results(&home, &run.run_id);
    assert_eq!(r[1]["ok"][0]["ssl"], true, "{r:?}");
    assert!(
        r[1]["ok"][0]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "{r:?}"
    );

    // require without the CA: the certificate is not trusted, so no connection.
    add(format!("{}?sslmode=require", server.uri()));
    let failed = home.cli(&["connections", "test", "pg"]);
    let (out, err) = text(&failed);
    assert!(!failed.status.success());
    assert!(err.contains("certificate"), "{out}{err}");
    assert!(!err.contains(pg::PASSWORD) && !out.contains(pg::PASSWORD));

    // The same server by a name its certificate does not carry: refused.
    add(format!(
        "postgresql://{}:{}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
        pg::TASK_ROLE,
        pg::PASSWORD,
        server.port
    ));
    let (_, err) = text(&home.cli(&["connections", "test", "pg"]));
    assert!(
        err.contains("certificate not valid for name \"localhost\""),
        "{err}"
    );

    add(format!("{}?sslmode=sometimes", server.uri()));
    let (_, err) = text(&home.cli(&["connections", "test", "pg"]));
    assert!(err.contains("unknown sslmode `sometimes`"), "{err}");
}

#[test]
fn a_gigabyte_each_way_streams_in_bounded_memory() {
    let (home, server) = home_with_pg();
    let table = unique("mem");
    server.psql(&format!("CREATE TABLE {table} (id bigint, pad text)"));
    // 3M rows of ~410 bytes: 1.2 GB of text out of DuckDB and back into it.
    let steps = json!([
        { "pg": "copy_in", "table": table, "query": "SELECT i AS id, repeat('x', 400) || i AS pad FROM range(3000000) t(i)" },
        { "pg": "extract", "query": format!("SELECT * FROM {table}"), "table": "back" },
        { "rows": "SELECT count(*) AS n, sum(length(pad)) AS bytes FROM back" },
    ]);
    let body = format!(
        "{}duckdb_memory = \"128MiB\"\nthreads = 1\n",
        steps_task(true, steps)
    );
    let dag = home.manifest("bounded", &body);
    let cost = crate::support::run_measured(
        &home,
        &dag.display().to_string(),
        std::time::Duration::from_secs(600),
    );
    assert!(cost.succeeded, "{}", cost.stderr);
    let run = home
        .sluice
        .store
        .runs(Some("bounded"), 1)
        .expect("runs")
        .remove(0);
    let r = results(&home, &run.run_id);
    assert_eq!(r[0]["ok"], 3_000_000, "{r:?}");
    assert_eq!(r[1]["ok"], 3_000_000, "{r:?}");
    let bytes = r[2]["ok"][0]["bytes"].as_u64().expect("bytes");
    assert!(bytes > 1_200_000_000, "{r:?}");
    // Neither direction holds the data: the whole process peaks under half of it
    // (about 0.34 GB here, DuckDB's copy of the table included).
    assert!(
        cost.peak_rss < bytes / 2,
        "peak RSS {} MiB for {} MiB moved each way",
        cost.peak_rss >> 20,
        bytes >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_million_rows_go_both_ways() {
    let (home, server) = home_with_pg();
    let table = unique("big");
    server.psql(&format!(
        "CREATE TABLE {table} (id bigint, category text, amount numeric(10,2))"
    ));
    let rows: i64 = 2_000_000;
    let steps = json!([
        { "pg": "copy_in", "table": table, "query": format!(
            "SELECT i AS id, 'cat_' || (i % 50) AS category, ((i % 100000) / 100.0)::DECIMAL(10,2) AS amount FROM range({rows}) t(i)") },
        { "pg": "extract", "query": format!("SELECT id, category, amount FROM {table}"), "table": "back" },
        { "rows": "SELECT count(*) AS n, sum(id) AS ids, sum(amount)::VARCHAR AS total, count(DISTINCT category) AS cats FROM back" },
    ]);
    let run = home.run("big", &steps_task(true, steps), json!({})).await;
    assert_eq!(run.state.as_str(), "success", "{:?}", run.error);
    let r = results(&home, &run.run_id);
    assert_eq!(r[0], json!({ "ok": rows }), "{r:?}");
    assert_eq!(r[1], json!({ "ok": rows }), "{r:?}");
    let total = server.psql(&format!("SELECT sum(amount) FROM {table}"));
    let back = &r[2]["ok"][0];
    assert_eq!(back["n"], rows);
    assert_eq!(back["cats"], 50);
    assert_eq!(back["ids"], json!((rows - 1) * rows / 2));
    assert!(
        back["total"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&total),
        "{back} vs {total}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_without_the_grant_cannot_open_the_connection() {
    let (home, _) = home_with_pg();
    let run = home
        .run(
            "nogrant",
            &steps_task(false, json!([{ "pg": "execute", "sql": "SELECT 1" }])),
            json!({}),
        )
        .await;
    let r = results(&home, &run.run_id);
    let error = r[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("connection `pg` is not granted to task `t`"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_log_error_or_output_ever_holds_the_password() {
    let (home, _) = home_with_pg();
    // The guest never holds the password whole: it joins two halves in SQL so
    // that a Postgres error echoes it back through the host.
    let (left, right) = PASSWORD.split_at(7);
    let steps = json!([
        { "pg": "execute", "sql": format!("SELECT ('{left}' || '{right}')::int") },
        { "pg": "execute", "sql": "SELECT * FROM no_such_table" },
        { "pg": "copy_in", "table": "no_such_table", "query": "SELECT 1 AS x" },
    ]);
    let run = home
        .run("secrets", &steps_task(true, steps), json!({}))
        .await;
    let r = results(&home, &run.run_id);
    let echoed = r[0]["error"].as_str().unwrap_or_default();
    assert!(
        echoed.contains("invalid input syntax") && echoed.contains("***"),
        "the echo was redacted: {r:?}"
    );
    assert!(
        r[1]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no_such_table"),
        "{r:?}"
    );

    // A connection that cannot log in fails with a reason, not the password.
    let vault =
        sluice::vault::Vault::open(&home.sluice.store, home.sluice.home.root()).expect("vault");
    let wrong = sluice::capabilities::connections::CONNECTION_TYPES
        .parse_uri(
            "pg",
            &pg::server()
                .uri()
                .replace(PASSWORD, &format!("{PASSWORD}x")),
        )
        .expect("uri");
    sluice::connections::add(&home.sluice.store, &vault, &wrong, true).expect("replace");
    let failed = home
        .run(
            "badlogin",
            &steps_task(true, json!([{ "pg": "execute", "sql": "SELECT 1" }])),
            json!({}),
        )
        .await;
    let r = results(&home, &failed.run_id);
    assert!(
        r[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("password authentication failed"),
        "{r:?}"
    );

    let mut everything: Vec<u8> = Vec::new();
    for run_id in [&run.run_id, &failed.run_id] {
        for args in [
            vec!["runs", "show", run_id.as_str()],
            vec!["logs", run_id.as_str(), "t"],
        ] {
            let (stdout, stderr) = text(&home.cli(&args));
            everything.extend(stdout.bytes().chain(stderr.bytes()));
        }
    }
    everything.extend(home.stored_bytes());
    let found = everything
        .windows(PASSWORD.len())
        .any(|w| w == PASSWORD.as_bytes());
    assert!(!found, "the password is stored or printed somewhere");
}

#[test]
fn the_etl_example_loads_into_postgres_and_connections_test_reports() {
    let server = pg::server();
    let home = TestHome::new();
    let add = home.cli(&["connections", "add", "etl_target", "--uri", &server.uri()]);
    assert!(add.status.success(), "{:?}", text(&add));
    let (ok, _) = text(&home.cli(&["connections", "test", "etl_target"]));
    assert!(ok.starts_with("ok: etl_target: PostgreSQL 15"), "{ok}");

    let out = home.cli(&[
        "run",
        "examples/etl_duckdb",
        "--param",
        "rows=100000",
        "--no-progress",
        "--keep-staging",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        server.psql("SELECT count(*), sum(n) FROM category_revenue"),
        "50|100000"
    );
    // The revenue loaded equals the raw rows' total, computed by DuckDB directly.
    let run = home
        .sluice
        .store
        .runs(Some("etl_duckdb"), 1)
        .expect("runs")
        .remove(0);
    let raw = std::path::Path::new(&run.staging_dir).join("raw.parquet");
    let expected: String = duckdb::Connection::open_in_memory()
        .expect("duckdb")
        .query_row(
            &format!(
                "SELECT sum(amount)::VARCHAR FROM read_parquet('{}')",
                raw.display()
            ),
            [],
            |r| r.get(0),
        )
        .expect("total");
    assert_eq!(
        server.psql("SELECT sum(revenue) FROM category_revenue"),
        expected
    );
    // Running it again replaces the rows instead of duplicating them.
    let again = home.cli(&[
        "run",
        "examples/etl_duckdb",
        "--param",
        "rows=1000",
        "--no-progress",
    ]);
    assert!(again.status.success());
    assert_eq!(
        server.psql("SELECT count(*), sum(n) FROM category_revenue"),
        "50|1000"
    );

    // A wrong password: `test` fails with the server's reason, never the password.
    let wrong = server.uri().replace(PASSWORD, "not-the-password");
    assert!(
        home.cli(&[
            "connections",
            "add",
            "etl_target",
            "--uri",
            &wrong,
            "--replace"
        ])
        .status
        .success()
    );
    let failed = home.cli(&["connections", "test", "etl_target"]);
    let (stdout, stderr) = text(&failed);
    assert!(!failed.status.success());
    assert!(
        stderr.contains("password authentication failed"),
        "{stdout}{stderr}"
    );
    assert!(!stderr.contains("not-the-password") && !stdout.contains("not-the-password"));
}

/// A task granted connection `conn` (opting in to its privileges when
/// `opt_in`) that runs `steps` and fails at the first error.
fn task_on(conn: &str, opt_in: bool, steps: Value) -> String {
    let opt_in = if opt_in {
        format!("privileged_connections = [\"{conn}\"]\n")
    } else {
        String::new()
    };
    format!(
        "[tasks.t]\nplugin = \"testkit\"\nconnections = [\"{conn}\"]\n{opt_in}params = {{ mode = \"steps\", conn = \"{conn}\", steps = {} }}\n",
        toml_value(&steps)
    )
}

/// `sluice connections <args>` in `home`, with the environment `env`.
fn connections_cli(home: &TestHome, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("connections")
            .args(args)
            .env("SLUICE_HOME", home.home_path())
            .envs(env.iter().copied()),
        CHILD_DEADLINE,
    );
    let (stdout, stderr) = text(&out);
    (out.status.success(), stdout, stderr)
}

/// Issue 10: a superuser connection let a task run programs on the database
/// host. `add` and `test` name the role's powers; a task may open such a
/// connection only with `privileged_connections`; a plain role needs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privileged_role_is_named_and_refused_to_a_task_without_the_opt_in() {
    let (home, server) = home_with_pg();
    let admin = server.superuser_uri();
    let (ok, stdout, stderr) = connections_cli(&home, &["add", "admin", "--uri", &admin], &[]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stderr.contains("warning: connection `admin`: role `postgres` is a superuser")
            && stderr.contains("privileged_connections = [\"admin\"]"),
        "{stdout}{stderr}"
    );
    let (ok, stdout, stderr) = connections_cli(&home, &["test", "admin"], &[]);
    assert!(
        ok && stdout.starts_with("ok: admin: PostgreSQL 15"),
        "{stdout}{stderr}"
    );
    assert!(stderr.contains("is a superuser"), "{stderr}");

    // The plain role of every other test: no warning, and its tasks need no opt-in.
    let (ok, stdout, stderr) = connections_cli(&home, &["test", "pg"], &[]);
    assert!(
        ok && stdout.contains(&format!("as role `{}`", pg::TASK_ROLE))
            && !stderr.contains("warning"),
        "{stdout}{stderr}"
    );
    let plain = home
        .run(
            "plain",
            &task_on("pg", false, json!([{ "pg": "execute", "sql": "SELECT 1" }])),
            json!({}),
        )
        .await;
    assert_eq!(plain.state.as_str(), "success", "{:?}", plain.error);

    // Without the opt-in: refused at open, before any statement reaches the server.
    // The statement runs a program on the database host that leaves a mark.
    let mark = std::env::temp_dir().join(unique("sluice-program-ran"));
    let program = json!([{ "pg": "execute", "sql": format!("COPY (SELECT 1) TO PROGRAM 'cat > {}'", mark.display()) }]);
    let refused = home
        .run(
            "refused",
            &task_on("admin", false, program.clone()),
            json!({}),
        )
        .await;
    assert_eq!(refused.state.as_str(), "failed");
    let error = home.task(&refused.run_id, "t").error.unwrap_or_default();
    assert!(
        error.contains("connection `admin`: refused to task `t` of DAG `refused`: role `postgres` is a superuser")
            && error.contains("privileged_connections = [\"admin\"]"),
        "{error}"
    );
    assert!(!mark.exists(), "the program ran on the database host");
    // With it, the task runs (here: a program on the database host).
    let allowed = home
        .run("allowed", &task_on("admin", true, program), json!({}))
        .await;
    assert_eq!(allowed.state.as_str(), "success", "{:?}", allowed.error);
    assert!(mark.exists(), "the opted-in task ran the program");
    std::fs::remove_file(&mark).expect("remove the mark");

    // Not a superuser, but able to `SET ROLE` to one that runs programs (NOINHERIT:
    // its own rights do not show it, its memberships do).
    server.psql(&format!(
        "CREATE ROLE sluice_prog LOGIN NOINHERIT PASSWORD '{}'; GRANT pg_execute_server_program TO sluice_prog; \
         CREATE ROLE sluice_maker LOGIN CREATEROLE PASSWORD '{}'",
        pg::PASSWORD,
        pg::PASSWORD
    ));
    for (id, role, power) in [
        (
            "prog",
            "sluice_prog",
            "is a member of pg_execute_server_program",
        ),
        ("maker", "sluice_maker", "has CREATEROLE"),
    ] {
        let uri = server.uri().replace(pg::TASK_ROLE, role);
        let (ok, stdout, stderr) = connections_cli(&home, &["add", id, "--uri", &uri], &[]);
        assert!(ok && stderr.contains(power), "{stdout}{stderr}");
        let run = home
            .run(
                id,
                &task_on(id, false, json!([{ "pg": "execute", "sql": "SELECT 1" }])),
                json!({}),
            )
            .await;
        let error = home.task(&run.run_id, "t").error.unwrap_or_default();
        assert!(
            error.contains(&format!("connection `{id}`: refused to task `t`"))
                && error.contains(power),
            "{error}"
        );
    }
}

/// Issue 10: `import-airflow` read `+` in a URI password as a space. libpq and
/// Airflow decode percent-escapes only; the imported connection authenticates.
#[test]
fn an_airflow_uri_password_with_plus_signs_and_escapes_authenticates() {
    let server = pg::server();
    let home = TestHome::new();
    let password = "p+ss w+rd+";
    server.psql(&format!(
        "CREATE ROLE sluice_plus LOGIN PASSWORD '{password}'; GRANT CONNECT ON DATABASE postgres TO sluice_plus"
    ));
    // `+` as is, `%2B` for another `+`, `%20` for the space.
    let uri = format!(
        "postgresql://sluice_plus:p+ss%20w%2Brd+@127.0.0.1:{}/postgres",
        server.port
    );
    let (ok, stdout, stderr) = connections_cli(
        &home,
        &["import-airflow"],
        &[("AIRFLOW_CONN_PLUS_PG", &uri)],
    );
    assert!(
        ok && stdout.contains("imported plus_pg"),
        "{stdout}{stderr}"
    );
    let (ok, stdout, stderr) = connections_cli(&home, &["test", "plus_pg"], &[]);
    assert!(
        ok && stdout.starts_with("ok: plus_pg: PostgreSQL 15"),
        "{stdout}{stderr}"
    );
    assert!(!stdout.contains(password) && !stderr.contains(password));
}
