//! Independent tasks run at the same time.

use serde_json::json;

use crate::support::TestHome;

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
    let run = sluice::scheduler::run_dag(&home.sluice, &version, Default::default(), None)
        .await
        .expect("run");
    assert_eq!(run.state.as_str(), "success");
    let a = home.task(&run.run_id, "a");
    let b = home.task(&run.run_id, "b");
    let disjoint = a.ended_at <= b.started_at || b.ended_at <= a.started_at;
    assert!(
        disjoint,
        "a {:?}..{:?}, b {:?}..{:?}",
        a.started_at, a.ended_at, b.started_at, b.ended_at
    );
}
