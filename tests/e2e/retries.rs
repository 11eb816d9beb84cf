//! Retries: a flaky task succeeds on try 2; a permanent failure skips retries;
//! downstream of a failure is `upstream_failed`; a cleared task gets its
//! retries again.

use serde_json::json;
use sluice::scheduler::{ClearScope, StagingPolicy, clear, resume_run};

use crate::support::TestHome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_fails_once_succeeds_on_try_two() {
    let home = TestHome::new();
    let body = "[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"flaky\", succeed_on = 2 }\nretries = 2\nretry_delay = \"100ms\"\n";
    let run = home.run("flaky", body, json!({})).await;
    assert_eq!(run.state.as_str(), "success", "{:?}", run.error);
    let task = home.task(&run.run_id, "t");
    assert_eq!(task.state.as_str(), "success");
    assert_eq!(task.try_number, 2);
    assert_eq!(task.max_tries, 3);
    assert_eq!(home.output(&run.run_id, "t")["try"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_out_and_downstream_is_upstream_failed() {
    let home = TestHome::new();
    let body = r#"
[tasks.t]
plugin = "testkit"
params = { mode = "fail" }
retries = 1
retry_delay = "10ms"

[tasks.down]
plugin = "testkit"
after = ["t"]
params = { mode = "echo" }

[tasks.further]
plugin = "testkit"
after = ["down"]
params = { mode = "echo" }
"#;
    let run = home.run("exhausted", body, json!({})).await;
    assert_eq!(run.state.as_str(), "failed");
    let t = home.task(&run.run_id, "t");
    assert_eq!((t.state.as_str(), t.try_number), ("failed", 2));
    assert_eq!(t.error.as_deref(), Some("told to fail"));
    assert_eq!(
        home.task(&run.run_id, "down").state.as_str(),
        "upstream_failed"
    );
    assert_eq!(
        home.task(&run.run_id, "further").state.as_str(),
        "upstream_failed"
    );
    assert_eq!(home.task(&run.run_id, "down").try_number, 0, "never ran");
    assert!(
        run.error
            .unwrap_or_default()
            .contains("task `t` failed: told to fail")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_skips_remaining_retries() {
    let home = TestHome::new();
    let body = "[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"fail\", permanent = true }\nretries = 3\nretry_delay = \"10ms\"\n";
    let run = home.run("permanent", body, json!({})).await;
    let t = home.task(&run.run_id, "t");
    assert_eq!((t.state.as_str(), t.try_number), ("failed", 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleared_task_gets_its_retries_again() {
    let home = TestHome::new();
    // Fails on tries 1-3, succeeds on 4; two tries allowed per clear.
    let body = "[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"flaky\", succeed_on = 4 }\nretries = 1\nretry_delay = \"10ms\"\n";
    let run = home.run("cleared", body, json!({})).await;
    let t = home.task(&run.run_id, "t");
    assert_eq!((t.state.as_str(), t.try_number), ("failed", 2));

    clear(&home.sluice, &run.run_id, "t", ClearScope::default(), false).expect("clear");
    assert_eq!(home.task(&run.run_id, "t").max_tries, 4);
    let rerun = resume_run(&home.sluice, &run.run_id, StagingPolicy::default(), None)
        .await
        .expect("re-run");
    // Try 3 fails retryably and, being within the cleared allowance, is retried.
    assert_eq!(rerun.state.as_str(), "success", "{:?}", rerun.error);
    let t = home.task(&run.run_id, "t");
    assert_eq!((t.state.as_str(), t.try_number), ("success", 4));
}
