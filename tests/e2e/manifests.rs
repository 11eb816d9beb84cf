//! Bad manifests fail before anything runs, naming the file, the line and the task.

use crate::support::{TestHome, text};

fn deploy_error(home: &TestHome, name: &str, body: &str) -> String {
    let path = home.manifest(name, body);
    let out = home.cli(&["deploy", path.to_str().expect("utf-8 path")]);
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "deploy of a bad manifest succeeded: {stdout}"
    );
    assert!(
        stderr.contains(path.to_str().expect("utf-8")),
        "names the file: {stderr}"
    );
    stderr
}

#[test]
fn each_bad_manifest_gives_its_error() {
    let home = TestHome::new();
    // The header takes 3 lines, so the body starts on line 4.
    let cases = [
        (
            "unknown_dep",
            "[tasks.a]\nplugin = \"testkit\"\nafter = [\"ghost\"]\n",
            ":6: task `a`: unknown dependency `ghost`",
        ),
        (
            "cycle",
            "[tasks.a]\nplugin = \"testkit\"\nafter = [\"b\"]\n[tasks.b]\nplugin = \"testkit\"\nafter = [\"a\"]\n",
            ": task `a`: dependency cycle: a -> b -> a",
        ),
        (
            "duplicate",
            "[tasks.a]\nplugin = \"testkit\"\n[tasks.a]\nplugin = \"testkit\"\n",
            ":6:",
        ),
        (
            "missing_plugin",
            "[tasks.a]\nplugin = \"no-such-plugin\"\n",
            ":4: task `a`: plugin `no-such-plugin` not found",
        ),
        (
            "wrong_type",
            "[tasks.a]\nplugin = \"testkit\"\nretries = \"many\"\n",
            ":6:",
        ),
        (
            "bad_size",
            "[tasks.a]\nplugin = \"testkit\"\nmemory = \"lots\"\n",
            ":6: invalid size `lots`",
        ),
        (
            "no_plugin",
            "[tasks.a]\nafter = []\n",
            ":4: task `a`: missing `plugin`",
        ),
        (
            "not_a_task",
            "[tasks.a]\nplugin = \"not-a-task\"\n",
            ":4: task `a`: plugin `not-a-task`",
        ),
    ];
    for (name, body, expected) in cases {
        let stderr = deploy_error(&home, name, body);
        assert!(
            stderr.contains(expected),
            "{name}: expected `{expected}` in:\n{stderr}"
        );
    }
    // Nothing was deployed by any of them.
    for (name, ..) in cases {
        assert!(
            home.sluice
                .store
                .versions(name)
                .expect("versions")
                .is_empty(),
            "{name} left a version"
        );
    }
}

#[test]
fn a_component_of_another_world_is_rejected_naming_what_is_missing() {
    let home = TestHome::new();
    let stderr = deploy_error(&home, "wrong_world", "[tasks.a]\nplugin = \"not-a-task\"\n");
    assert!(
        stderr.contains("does not implement the sluice:task/task world"),
        "{stderr}"
    );
    assert!(stderr.contains("run"), "names the missing export: {stderr}");
}

/// Issue 15 added the cursor's `next-rows` (sluice:task 0.2.1): a task built
/// against 0.2.0 still deploys and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_of_the_previous_compatible_contract_still_runs() {
    let home = TestHome::new();
    let run = home
        .run(
            "contract_0_2_0",
            "[tasks.a]\nplugin = \"contract-0-2-0\"\n",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(run.state.as_str(), "success", "{:?}", run.error);
    assert_eq!(
        home.output(&run.run_id, "a"),
        serde_json::json!({ "task": "a", "batches": 1 })
    );
}

/// Issue 11 changed `sql-error` and `connection-error` (sluice:task 0.1.0 to
/// 0.2.0): a task built before is refused at deploy, saying so.
#[test]
fn a_component_of_an_earlier_contract_is_rejected_naming_its_version() {
    let home = TestHome::new();
    let stderr = deploy_error(
        &home,
        "old_contract",
        "[tasks.a]\nplugin = \"contract-0-1\"\n",
    );
    assert!(
        stderr.contains(
            "it was built against sluice:task@0.1.0 and this host implements sluice:task@0.2.1; rebuild it with the current sluice-sdk"
        ),
        "{stderr}"
    );
}

#[test]
fn a_core_module_is_rejected() {
    let home = TestHome::new();
    let dir = home.dir.path().join("core-plugins");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("core.wasm"), b"\0asm\x01\0\0\0").expect("write");
    let path = home.dir.path().join("core.toml");
    std::fs::write(
        &path,
        format!(
            "[dag]\nid = \"core\"\nplugin_dir = \"{}\"\n[tasks.a]\nplugin = \"core\"\n",
            dir.display()
        ),
    )
    .expect("write");
    let out = home.cli(&["deploy", path.to_str().expect("utf-8")]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("core.toml:4: task `a`")
            && stderr.contains("core WebAssembly module, not a component"),
        "{stderr}"
    );
}
