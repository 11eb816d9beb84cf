//! Independent tasks run at the same time.

use serde_json::json;

use crate::support::{RUN_DEADLINE, TestHome, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_tasks_overlap_in_time() {
    let home = TestHome::new();
    let body = r#"
[tasks.left]
plugin = "testkit"
params = { mode = "sleep", ms = 1500 }

[tasks.right]
plugin = "testkit"
params = { mode = "sleep", ms = 1500 }

[tasks.join]
plugin = "testkit"
after = ["left", "right"]
params = { mode = "echo" }
"#;
    let run = home.run("parallel", body, json!({})).await;
    assert_eq!(run.state.as_str(), "success", "{:?}", run.error);
    let left = home.task(&run.run_id, "left");
    let right = home.task(&run.run_id, "right");
    let (ls, le) = (left.started_at.expect("start"), left.ended_at.expect("end"));
    let (rs, re) = (
        right.started_at.expect("start"),
        right.ended_at.expect("end"),
    );
    assert!(
        ls < re && rs < le,
        "intervals overlap: left {ls}..{le}, right {rs}..{re}"
    );
    // The downstream task saw both upstream outputs and started after both ended.
    let join = home.task(&run.run_id, "join");
    assert!(join.started_at.expect("start") >= le.max(re));
    let upstream = &home.output(&run.run_id, "join")["upstream"];
    assert_eq!(upstream, &json!(["left", "right"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_tasks_serializes_when_one() {
    let home = TestHome::new();
    let path = home.manifest(
        "serial",
        r#"max_active_tasks = 1

[tasks.a]
plugin = "testkit"
params = { mode = "sleep", ms = 300 }

[tasks.b]
plugin = "testkit"
params = { mode = "sleep", ms = 300 }
"#,
    );
    // `max_active_tasks` belongs to [dag]: written after the header it lands there.
    let deployment = home.deploy(&path);
    let version = home
        .sluice
        .store
        .version(&deployment.dag_id, &deployment.version)
        .expect("version");
    assert_eq!(version.spec.max_active_tasks, 1);
    let run = within(
        RUN_DEADLINE,
        "the run of `serial`",
        sluice::scheduler::run_dag(&home.sluice, &version, Default::default(), None),
    )
    .await
    .expect("run");
    assert_eq!(run.state.as_str(), "success", "{:?}", run.error);
    // Both tasks ran, so both have a start and an end: compare the times, not
    // `Option`s (`None <= None` would hold for tasks that never ran).
    let interval = |task: &str| {
        let record = home.task(&run.run_id, task);
        let start = record
            .started_at
            .unwrap_or_else(|| panic!("{task} has no start: {record:?}"));
        let end = record
            .ended_at
            .unwrap_or_else(|| panic!("{task} has no end: {record:?}"));
        (start, end)
    };
    let ((a_start, a_end), (b_start, b_end)) = (interval("a"), interval("b"));
    assert!(
        a_end <= b_start || b_end <= a_start,
        "the tasks overlap: a {a_start}..{a_end}, b {b_start}..{b_end}"
    );
}
