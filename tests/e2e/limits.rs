//! Timeouts and memory limits stop a task, fail the run with the reason, and
//! leave the host serving.

use serde_json::json;

use crate::support::{TestHome, text};

fn body(mode_params: &str, limits: &str) -> String {
    format!("[tasks.t]\nplugin = \"testkit\"\nparams = {{ {mode_params} }}\n{limits}\n")
}

async fn failed_with(home: &TestHome, name: &str, body: &str, reason: &str) {
    let run = home.run(name, body, json!({})).await;
    assert_eq!(run.state.as_str(), "failed", "{name} did not fail");
    let task = home.task(&run.run_id, "t");
    assert_eq!(task.state.as_str(), "failed");
    let error = task.error.unwrap_or_default();
    assert!(
        error.contains(reason),
        "{name}: expected `{reason}` in `{error}`"
    );
    let out = home.cli(&["runs", "show", &run.run_id]);
    let (show, _) = text(&out);
    assert!(
        show.contains("failed") && show.contains(reason),
        "{name}: runs show lacks the reason:\n{show}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_tasks_stop_at_their_limits_and_the_host_keeps_running() {
    let home = TestHome::new();
    failed_with(
        &home,
        "spin",
        &body("mode = \"spin\"", "timeout = \"1s\""),
        "timed out after 1s",
    )
    .await;
    failed_with(
        &home,
        "alloc",
        &body("mode = \"alloc\"", "memory = \"64MiB\""),
        "memory limit exceeded",
    )
    .await;
    failed_with(
        &home,
        "slow_sql",
        &body(
            "mode = \"sql\", sql = \"SELECT count(*) FROM range(10000000000000) a WHERE a.range % 7 = 3\"",
            "timeout = \"1s\"",
        ),
        "timed out after 1s",
    )
    .await;
    // The same process runs the next DAG normally.
    let ok = home
        .run("after", &body("mode = \"echo\"", ""), json!({}))
        .await;
    assert_eq!(ok.state.as_str(), "success", "{:?}", ok.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_timeout_interrupts_duckdb() {
    let home = TestHome::new();
    let sql = "mode = \"sql\", sql = \"SELECT count(*) FROM range(10000000000000) a WHERE a.range % 7 = 3\"";
    // A guard against hanging, not a speed check: uninterrupted, this query runs for hours.
    let run = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        home.run("interrupt", &body(sql, "timeout = \"1s\""), json!({})),
    )
    .await
    .expect("the running DuckDB statement was not interrupted at the task's timeout");
    assert_eq!(run.state.as_str(), "failed");
    let logs = home.log_text(&run.run_id, "t");
    assert!(logs.contains("timed out after 1s"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_cursors_and_the_stack_are_bounded() {
    let home = TestHome::new();
    // A log flood: a burst of 1,000 lines is kept, the rest is over the rate
    // (100 lines/s) and dropped, and the markers account for every line.
    let run = home
        .run(
            "flood",
            &body("mode = \"log-flood\", n = 20000", ""),
            json!({}),
        )
        .await;
    assert_eq!(run.state.as_str(), "success");
    let lines = home
        .sluice
        .store
        .logs(&run.run_id, "t", None)
        .expect("logs");
    let kept = lines
        .iter()
        .filter(|l| l.message.starts_with("line "))
        .count();
    let dropped: usize = lines
        .iter()
        .filter_map(|l| {
            let rest = l.message.strip_prefix("[sluice] ")?;
            let (n, why) = rest.split_once(" lines dropped: over the log rate")?;
            assert_eq!(why, " of 100 lines/s (bursts of 1000)");
            n.parse::<usize>().ok()
        })
        .sum();
    // The burst and whatever the rate refilled meanwhile; without the rate
    // limit the line cap would keep exactly 10,000.
    assert!((1_000..10_000).contains(&kept), "{kept} lines kept");
    assert_eq!(kept + dropped, 20_000, "every line is kept or counted");

    // A trap after a flood is still logged: host lines are never dropped.
    let run = home
        .run(
            "flood-then-panic",
            &body("mode = \"log-flood\", n = 5000, then = \"panic\"", ""),
            json!({}),
        )
        .await;
    assert_eq!(run.state.as_str(), "failed");
    assert!(
        run.error
            .as_deref()
            .is_some_and(|e| e.contains("panicked after a log flood")),
        "{:?}",
        run.error
    );
    let logs = home.log_text(&run.run_id, "t");
    assert!(logs.contains("[sluice] the task trapped"), "{logs}");

    // One live cursor per session: a second query while it is open is an error
    // the task sees (DuckDB's), not host memory growth.
    let run = home
        .run(
            "cursors",
            &body("mode = \"cursors\", n = 100", ""),
            json!({}),
        )
        .await;
    let out = home.output(&run.run_id, "t");
    assert_eq!(out["opened"], 1, "{out}");
    assert!(
        out["error"]
            .as_str()
            .unwrap_or_default()
            .contains("open result"),
        "{out}"
    );

    // Unbounded recursion overflows the guest's stack: a trap, not a host crash.
    let run = home
        .run("recurse", &body("mode = \"recurse\"", ""), json!({}))
        .await;
    let task = home.task(&run.run_id, "t");
    assert_eq!(task.state.as_str(), "failed");
    assert!(
        task.error.unwrap_or_default().contains("trapped"),
        "{:?}",
        home.log_text(&run.run_id, "t")
    );
    assert!(
        home.log_text(&run.run_id, "t").contains("wasm backtrace")
            || home.log_text(&run.run_id, "t").contains("stack")
    );
    let ok = home
        .run("after", &body("mode = \"echo\"", ""), json!({}))
        .await;
    assert_eq!(ok.state.as_str(), "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_result_reaches_a_small_guest_in_slices() {
    let home = TestHome::new();
    // 200 MB of rows (DuckDB chunks of ~100 MB) through a guest with 32 MiB of memory.
    let run = home
        .run(
            "wide",
            &body(
                "mode = \"cursor\", sql = \"SELECT repeat('x', 50000) AS s FROM range(4096)\"",
                "memory = \"32MiB\"",
            ),
            json!({}),
        )
        .await;
    assert_eq!(run.state.as_str(), "success", "{:?}", run.error);
    let out = home.output(&run.run_id, "t");
    assert!(out["bytes"].as_u64().unwrap_or(0) > 4096 * 50_000, "{out}");
    assert!(out["batches"].as_u64().unwrap_or(0) >= 50, "{out}");

    // One value larger than the guest's memory: the try fails on the memory
    // limit, and the host runs the next DAG.
    let run = home
        .run(
            "huge-value",
            &body(
                "mode = \"cursor\", sql = \"SELECT repeat('x', 64000000) AS s\"",
                "memory = \"32MiB\"",
            ),
            json!({}),
        )
        .await;
    assert_eq!(run.state.as_str(), "failed");
    let error = home.task(&run.run_id, "t").error.unwrap_or_default();
    assert!(error.contains("memory"), "{error}");
    let ok = home
        .run("after", &body("mode = \"echo\"", ""), json!({}))
        .await;
    assert_eq!(ok.state.as_str(), "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_filling_staging_is_stopped_at_its_staging_limit() {
    let home = TestHome::new();
    // About 100 GB of CSV if nothing stopped it (`~` is staging in SQL).
    let sql =
        "COPY (SELECT range AS i, repeat('x', 100) AS pad FROM range(1000000000)) TO '~/big.csv'";
    let body = body(
        &format!("mode = \"sql\", sql = \"{sql}\""),
        "staging_limit = \"10MiB\"",
    );
    // Guards against a hang only.
    let run = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        home.run("fill", &body, json!({})),
    )
    .await
    .expect("the task was not stopped at its staging limit");
    assert_eq!(run.state.as_str(), "failed");
    let error = home.task(&run.run_id, "t").error.unwrap_or_default();
    assert!(
        error.contains("over the task's staging_limit of 10485760 bytes"),
        "{error}"
    );
    // It stopped soon after the limit, far from the 100 GB it asked for.
    let held: u64 = std::fs::read_dir(&run.staging_dir)
        .expect("kept for the TTL")
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    assert!(held < 2 << 30, "{held} bytes in staging");
}
