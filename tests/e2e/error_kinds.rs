//! Error kinds across the contract (issue 11): an error that no retry can fix
//! (a connection not granted, SQL that does not parse or bind, a request past
//! a cap, a statement the server rejects, a privileged role) fails its task on
//! the first try though the task has retries left; an error of the network,
//! the machine or the data gets its retries.

use std::time::Duration;

use serde_json::json;
use sluice::scheduler::RunSummary;

use crate::pg;
use crate::support::TestHome;

/// Longest a run of these tests may take; each try is also bounded by its timeout.
const RUN_DEADLINE: Duration = Duration::from_secs(180);

/// Testkit task `id` with inline TOML `params` (and `extra` manifest lines),
/// two retries and a short delay.
fn retried(id: &str, params: &str, extra: &str) -> String {
    format!(
        "[tasks.{id}]\nplugin = \"testkit\"\nparams = {params}\n{extra}retries = 2\nretry_delay = \"10ms\"\ntimeout = \"60s\"\n\n"
    )
}

/// Deploys and runs `body`, failing the test past [`RUN_DEADLINE`].
async fn run(home: &TestHome, name: &str, body: &str) -> RunSummary {
    tokio::time::timeout(RUN_DEADLINE, home.run(name, body, json!({})))
        .await
        .unwrap_or_else(|_| panic!("run `{name}` did not end within {RUN_DEADLINE:?}"))
}

/// Asserts task `id` failed after exactly `tries` of its three, with an
/// error containing `says`.
fn failed_after(home: &TestHome, run: &RunSummary, id: &str, tries: u32, says: &str) {
    let t = home.task(&run.run_id, id);
    let error = t.error.clone().unwrap_or_default();
    assert_eq!(
        (t.state.as_str(), t.try_number, t.max_tries),
        ("failed", tries, 3),
        "task `{id}`: {error}"
    );
    assert!(error.contains(says), "task `{id}`: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_not_granted_fails_on_the_first_try() {
    let home = TestHome::new();
    let body = [
        retried(
            "pg",
            r#"{ mode = "steps", conn = "warehouse", steps = [{ pg = "execute", sql = "SELECT 1" }] }"#,
            "",
        ),
        retried(
            "s3",
            r#"{ mode = "steps", bucket = "lake", steps = [{ s3 = "list", prefix = "" }] }"#,
            "",
        ),
    ]
    .concat();
    let run = run(&home, "ungranted", &body).await;
    assert_eq!(run.state.as_str(), "failed");
    failed_after(
        &home,
        &run,
        "pg",
        1,
        "connection `warehouse` is not granted to task `pg`",
    );
    failed_after(
        &home,
        &run,
        "s3",
        1,
        "connection `lake` is not granted to task `s3`",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_that_cannot_succeed_fails_on_the_first_try_and_data_errors_are_retried() {
    let home = TestHome::new();
    let sql = |sql: &str| format!("{{ mode = \"sql\", sql = \"{sql}\" }}");
    let body = [
        retried("parse", &sql("SELEC 1"), ""),
        retried("catalog", &sql("SELECT * FROM no_such_table"), ""),
        retried("binder", &sql("SELECT nope FROM range(3)"), ""),
        retried(
            "sandbox",
            &sql("SELECT * FROM read_csv('/etc/hostname')"),
            "",
        ),
        retried(
            "cap",
            r#"{ mode = "query-json", sql = "SELECT repeat('x', 1000) AS s FROM range(40000)", n = 100000 }"#,
            "",
        ),
        retried("conversion", &sql("SELECT 'abc'::INTEGER"), ""),
        retried(
            "memory",
            &sql("SELECT len(list(range)) FROM range(50000000)"),
            "duckdb_memory = \"32MiB\"\nthreads = 1\n",
        ),
    ]
    .concat();
    let run = run(&home, "sql_kinds", &body).await;
    assert_eq!(run.state.as_str(), "failed");
    failed_after(&home, &run, "parse", 1, "SQL error: Parser Error: ");
    failed_after(&home, &run, "catalog", 1, "SQL error: Catalog Error: ");
    failed_after(&home, &run, "binder", 1, "SQL error: Binder Error: ");
    failed_after(&home, &run, "sandbox", 1, "SQL error: Permission Error: ");
    failed_after(&home, &run, "cap", 1, "over its cap of 16777216 bytes");
    failed_after(
        &home,
        &run,
        "conversion",
        3,
        "SQL error: Conversion Error: ",
    );
    failed_after(&home, &run, "memory", 3, "SQL error: Out of Memory Error: ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_the_connection_gets_every_retry() {
    let home = TestHome::new();
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let vault =
        sluice::vault::Vault::open(&home.sluice.store, home.sluice.home.root()).expect("vault");
    let uri = format!("postgresql://etl:pw@127.0.0.1:{port}/warehouse");
    let connection = sluice::capabilities::connections::CONNECTION_TYPES
        .parse_uri("down", &uri)
        .expect("uri");
    sluice::connections::add(&home.sluice.store, &vault, &connection, false).expect("add");
    let body = retried(
        "t",
        r#"{ mode = "steps", conn = "down", steps = [{ pg = "execute", sql = "SELECT 1" }] }"#,
        "connections = [\"down\"]\n",
    );
    let run = run(&home, "refused", &body).await;
    assert_eq!(run.state.as_str(), "failed");
    failed_after(
        &home,
        &run,
        "t",
        3,
        &format!("connection `down`: cannot connect to 127.0.0.1:{port}"),
    );
}

/// Against a real server: a statement it rejects and a privileged role
/// refused to the task are permanent; a connection it ends is retryable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_errors_carry_their_kind() {
    let server = pg::server();
    let home = TestHome::new();
    let vault =
        sluice::vault::Vault::open(&home.sluice.store, home.sluice.home.root()).expect("vault");
    for (id, uri) in [("pg", server.uri()), ("admin", server.superuser_uri())] {
        let connection = sluice::capabilities::connections::CONNECTION_TYPES
            .parse_uri(id, &uri)
            .expect("uri");
        sluice::connections::add(&home.sluice.store, &vault, &connection, false).expect("add");
    }
    let body = [
        retried(
            "syntax",
            r#"{ mode = "steps", conn = "pg", steps = [{ pg = "execute", sql = "SELEC 1" }] }"#,
            "connections = [\"pg\"]\n",
        ),
        retried(
            "privileged",
            r#"{ mode = "steps", conn = "admin", steps = [{ pg = "execute", sql = "SELECT 1" }] }"#,
            "connections = [\"admin\"]\n",
        ),
        retried(
            "kinds",
            r#"{ mode = "steps", conn = "pg", stop_on_error = false, steps = [{ pg = "execute", sql = "SELECT * FROM no_such_table" }, { pg = "execute", sql = "SELECT pg_terminate_backend(pg_backend_pid())" }] }"#,
            "connections = [\"pg\"]\n",
        ),
    ]
    .concat();
    let run = run(&home, "pg_kinds", &body).await;
    failed_after(
        &home,
        &run,
        "syntax",
        1,
        "connection `pg`: ERROR: syntax error",
    );
    failed_after(
        &home,
        &run,
        "privileged",
        1,
        "connection `admin`: refused to task `privileged`",
    );
    let results = home.output(&run.run_id, "kinds")["results"].clone();
    let kinds: Vec<(bool, bool)> = results
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["error"].as_str().is_some(),
                r["permanent"].as_bool() == Some(true),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [(true, true), (true, false)],
        "undefined table permanent, terminated connection retryable: {results}"
    );
    assert!(
        results[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no_such_table")),
        "{results}"
    );
}
