//! What a task hands back: output size cap, stdout capture, panics, context,
//! params precedence, Arrow streaming.

use serde_json::json;

use crate::support::TestHome;

fn one(mode: &str, extra: &str) -> String {
    format!("[tasks.t]\nplugin = \"testkit\"\nparams = {{ mode = \"{mode}\"{extra} }}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_over_64_kib_fails_with_a_clear_error() {
    let home = TestHome::new();
    let run = home
        .run("big", &one("big-output", ", bytes = 70000"), json!({}))
        .await;
    let t = home.task(&run.run_id, "t");
    assert_eq!(t.state.as_str(), "failed");
    let error = t.error.unwrap_or_default();
    assert!(error.contains("the limit is 65536 bytes"), "{error}");
    let ok = home
        .run("small", &one("big-output", ", bytes = 60000"), json!({}))
        .await;
    assert_eq!(ok.state.as_str(), "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_land_in_the_task_log() {
    let home = TestHome::new();
    let run = home.run("stdout", &one("stdout", ""), json!({})).await;
    assert_eq!(run.state.as_str(), "success");
    let logs = home.log_text(&run.run_id, "t");
    assert!(logs.contains("[stdout] hello from stdout"), "{logs}");
    assert!(logs.contains("[stderr] hello from stderr"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_fails_the_task_with_its_message() {
    let home = TestHome::new();
    let run = home.run("panic", &one("panic", ""), json!({})).await;
    let t = home.task(&run.run_id, "t");
    assert_eq!(t.state.as_str(), "failed");
    assert_eq!(
        t.error.as_deref(),
        Some("panicked: testkit was told to panic")
    );
    let logs = home.log_text(&run.run_id, "t");
    assert!(logs.contains("the task trapped"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_and_param_precedence() {
    let home = TestHome::new();
    let body = "[params]\nlevel = \"dag\"\nkeep = \"dag\"\n\n[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"echo\", level = \"task\", own = 1 }\n";
    let run = home.run("ctx", body, json!({ "level": "run" })).await;
    let out = home.output(&run.run_id, "t");
    assert_eq!(out["dag"], "ctx");
    assert_eq!(out["task"], "t");
    assert_eq!(out["run"], run.run_id.as_str());
    assert_eq!(out["try"], 1);
    assert_eq!(out["staging"], run.staging_dir.display().to_string());
    assert_eq!(
        out["rest"],
        json!({ "level": "run", "keep": "dag", "own": 1 })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_results_stream_to_the_guest_as_arrow_batches() {
    let home = TestHome::new();
    let sql = ", sql = \"SELECT range AS id, range::VARCHAR AS s FROM range(100000)\"";
    let run = home.run("cursor", &one("cursor", sql), json!({})).await;
    assert_eq!(run.state.as_str(), "success", "{:?}", run.error);
    let out = home.output(&run.run_id, "t");
    assert!(out["batches"].as_u64().unwrap_or(0) >= 2, "{out}");
    assert!(out["bytes"].as_u64().unwrap_or(0) > 100_000 * 8, "{out}");
    let run = home
        .run(
            "rows",
            &one("query", ", sql = \"SELECT 42 AS answer, 'x' AS s\""),
            json!({}),
        )
        .await;
    assert_eq!(
        home.output(&run.run_id, "t")["rows"],
        json!([{ "answer": 42, "s": "x" }])
    );
}
