//! Object stores through the host, against a real S3-compatible server (moto's
//! standalone server, started once per test process on a free loopback port):
//! put/get/list with multipart, staging confinement, grants, and the
//! Postgres-to-bucket snapshot example.

use std::io::{Read, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{CHILD_DEADLINE, TestHome, output_within, text};

const BUCKET: &str = "sluice-test";
const SECRET_KEY: &str = "s3-Secret-90ab12cd";

static MOTO: AtomicI32 = AtomicI32::new(0);

extern "C" fn stop_moto() {
    let pid = MOTO.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: signalling the server process this test process started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

fn http(port: u16, request: &str) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The endpoint of the shared S3 server, with bucket `sluice-test` created.
fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto_server ({e}): pip install 'moto[server]' (.ci/run does)"));
        MOTO.store(child.id() as i32, Ordering::SeqCst);
        // SAFETY: registering a plain extern "C" function to run at process exit.
        unsafe { libc::atexit(stop_moto) };
        std::mem::forget(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let create = format!("PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        loop {
            match http(port, &create) {
                Ok(response) if response.starts_with("HTTP/1.1 200") => break,
                _ => {
                    assert!(Instant::now() < deadline, "moto_server did not come up on port {port}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        format!("http://127.0.0.1:{port}")
    })
}

fn home_with_bucket() -> TestHome {
    let home = TestHome::new();
    let out = output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "connections",
                "add",
                "lake",
                "--type",
                "s3",
                "--endpoint",
                endpoint(),
                "--bucket",
                BUCKET,
            ])
            .args([
                "--access-key-id",
                "AKIDTEST",
                "--path-style",
                "--region",
                "us-east-1",
            ])
            .env("SLUICE_HOME", home.home_path())
            .env("SLUICE_S3_SECRET_KEY", SECRET_KEY),
        CHILD_DEADLINE,
    );
    assert!(out.status.success(), "{:?}", text(&out));
    home
}

fn steps(grant: bool, steps: &str) -> String {
    let grant = if grant {
        "connections = [\"lake\"]\n"
    } else {
        ""
    };
    format!(
        "[tasks.t]\nplugin = \"testkit\"\n{grant}params = {{ mode = \"steps\", bucket = \"lake\", stop_on_error = false, steps = {steps} }}\n"
    )
}

fn results(home: &TestHome, run_id: &str) -> Vec<Value> {
    home.output(run_id, "t")["results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_through_the_bucket_with_multipart() {
    let home = home_with_bucket();
    let prefix = format!("rt{}", std::process::id());
    let body = steps(
        true,
        &format!(
            "[{{ duck = \"COPY (SELECT range AS id, md5(range::VARCHAR) AS h FROM range(300000)) TO '{{staging}}/big.csv'\" }}, \
              {{ s3 = \"put\", file = \"big.csv\", key = \"{prefix}/big.csv\" }}, \
              {{ s3 = \"get\", key = \"{prefix}/big.csv\", file = \"sub/back.csv\" }}, \
              {{ s3 = \"list\", prefix = \"{prefix}\" }}, \
              {{ rows = \"SELECT (SELECT count(*) FROM (SELECT * FROM read_csv('{{staging}}/big.csv') EXCEPT SELECT * FROM read_csv('{{staging}}/sub/back.csv'))) AS diff, (SELECT count(*) FROM read_csv('{{staging}}/sub/back.csv')) AS n\" }}]"
        ),
    );
    let run = home.run("s3rt", &body, json!({})).await;
    let r = results(&home, &run.run_id);
    let sent = r[1]["ok"].as_u64().unwrap_or(0);
    assert!(
        sent > 9 << 20,
        "a file over the 8 MiB part size, so multipart: {r:?}"
    );
    assert_eq!(r[2]["ok"].as_u64(), Some(sent), "{r:?}");
    assert_eq!(r[3]["ok"], json!([format!("{prefix}/big.csv")]), "{r:?}");
    assert_eq!(r[4]["ok"], json!([{ "diff": 0, "n": 300000 }]), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_paths_are_confined_and_grants_are_required() {
    let home = home_with_bucket();
    let body = steps(
        true,
        "[{ s3 = \"put\", file = \"../../sluice.db\", key = \"x\" }, \
          { s3 = \"put\", file = \"/etc/passwd\", key = \"x\" }, \
          { s3 = \"get\", key = \"x\", file = \"../escape.txt\" }]",
    );
    let run = home.run("confined", &body, json!({})).await;
    let r = results(&home, &run.run_id);
    let errors: Vec<&str> = r
        .iter()
        .map(|v| v["error"].as_str().unwrap_or("ALLOWED"))
        .collect();
    assert!(errors[0].contains("`..` is not allowed"), "{errors:?}");
    assert!(
        errors[1].contains("outside the run's staging directory"),
        "{errors:?}"
    );
    assert!(errors[2].contains("`..` is not allowed"), "{errors:?}");

    let (tested, _) = text(&home.cli(&["connections", "test", "lake"]));
    assert!(
        tested.starts_with(&format!("ok: lake: s3://{BUCKET}")) && tested.contains("reachable"),
        "{tested}"
    );

    let run = home
        .run(
            "nogrant",
            &steps(false, "[{ s3 = \"list\", prefix = \"\" }]"),
            json!({}),
        )
        .await;
    let r = results(&home, &run.run_id);
    assert!(
        r[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("connection `lake` is not granted"),
        "{r:?}"
    );
    let stored = home.stored_bytes();
    assert!(
        !stored
            .windows(SECRET_KEY.len())
            .any(|w| w == SECRET_KEY.as_bytes()),
        "the S3 secret is stored in the clear"
    );
}

#[test]
fn the_snapshot_example_writes_one_parquet_per_table_per_day() {
    let server = crate::pg::server();
    let schema = format!("snap_{}", std::process::id());
    server.psql(&format!(
        "CREATE SCHEMA {schema}; \
         CREATE TABLE {schema}.customers AS SELECT g AS id, 'c' || g AS name FROM generate_series(1, 120) g; \
         CREATE TABLE {schema}.orders AS SELECT g AS id, g % 120 + 1 AS customer, (g * 1.5)::numeric(10,2) AS total FROM generate_series(1, 3000) g"
    ));
    let home = TestHome::new();
    let add = |args: &[&str]| {
        let out = output_within(
            std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(args)
                .env("SLUICE_HOME", home.home_path())
                .env("SLUICE_S3_SECRET_KEY", SECRET_KEY),
            CHILD_DEADLINE,
        );
        assert!(out.status.success(), "{:?}", text(&out));
    };
    add(&[
        "connections",
        "add",
        "snapshot_source",
        "--uri",
        &server.uri(),
    ]);
    add(&[
        "connections",
        "add",
        "snapshot_bucket",
        "--type",
        "s3",
        "--endpoint",
        endpoint(),
        "--bucket",
        BUCKET,
        "--access-key-id",
        "AKIDTEST",
        "--path-style",
    ]);
    for _ in 0..2 {
        let out = home.cli(&[
            "run",
            "examples/pg_snapshot",
            "--param",
            &format!("schema={schema}"),
            "--logical-date",
            "2026-02-01T00:00:00Z",
            "--no-progress",
        ]);
        assert!(out.status.success(), "{:?}", text(&out));
    }
    let run = home
        .sluice
        .store
        .runs(Some("pg_snapshot"), 1)
        .expect("runs")
        .remove(0);
    let output = home.output(&run.run_id, "snapshot");
    assert_eq!(output["ds"], "2026-02-01");
    assert_eq!(output["tables"], json!(["customers", "orders"]));
    assert_eq!(output["rows"], 3120);

    // What the bucket holds: the two keys once (the second run overwrote them), readable as Parquet.
    let listing = http(
        endpoint().trim_start_matches("http://127.0.0.1:").parse().expect("port"),
        &format!("GET /{BUCKET}?prefix=snapshots/2026-02-01/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
    .expect("list");
    assert_eq!(listing.matches("<Key>").count(), 2, "{listing}");
    assert!(
        listing.contains("snapshots/2026-02-01/customers.parquet")
            && listing.contains("snapshots/2026-02-01/orders.parquet")
    );
}
