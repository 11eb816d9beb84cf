//! Python tasks (issue 15): built by `sluice build` (one runtime component
//! made by componentize-py, a package of sources per task), run in a DAG
//! next to Rust tasks through real DuckDB. One home covers every case, so
//! the runtime is compiled once (~20 CPU-s) and no Python task after the
//! first compiles anything.

use serde_json::json;

use crate::support::{TestHome, plugins_dist, repo_root};

const DAG: &str = r#"
[tasks.extract]
plugin = "etl-extract-py"
params = { rows = 20000 }

[tasks.transform]
plugin = "etl-transform"
after = ["extract"]

[tasks.load]
plugin = "etl-load"
after = ["transform"]

[tasks.transform_py]
plugin = "etl-transform-py"
after = ["extract"]
params = { file = "agg_py.parquet" }

[tasks.load_py]
plugin = "etl-load-py"
after = ["transform_py"]
params = { file = "output_py.csv" }

[tasks.context]
plugin = "py-testkit"
after = ["extract"]
params = { mode = "context", answer = 42 }

[tasks.permanent]
plugin = "py-testkit"
params = { mode = "permanent" }
retries = 2
retry_delay = "10ms"

[tasks.boom]
plugin = "py-testkit"
params = { mode = "boom" }
retries = 1
retry_delay = "10ms"

[tasks.sql_error]
plugin = "py-testkit"
params = { mode = "sql-error" }
retries = 2
retry_delay = "10ms"

[tasks.escape]
plugin = "py-testkit"
params = { mode = "escape" }

[tasks.spin]
plugin = "py-testkit"
params = { mode = "spin" }
timeout = "1s"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tasks_run_beside_rust_tasks_and_fail_as_they_should() {
    let home = TestHome::new();

    // The first Python task compiles the runtime; a second one, other code on
    // the same runtime, compiles nothing, and neither leaves code of its own
    // in the compile cache.
    let first_task =
        home.deploy(&home.manifest("python_first", "[tasks.t]\nplugin = \"py-testkit\"\n"));
    assert_eq!(first_task.compiled, ["t"]);
    let second_task =
        home.deploy(&home.manifest("python_second", "[tasks.t]\nplugin = \"etl-extract-py\"\n"));
    assert!(
        second_task.compiled.is_empty(),
        "{:?}",
        second_task.compiled
    );
    let component = |deployment: &sluice::registry::Deployment| {
        home.sluice
            .store
            .version(&deployment.dag_id, &deployment.version)
            .expect("version")
            .spec
            .tasks[0]
            .component
            .clone()
    };
    let (first_package, second_package) = (component(&first_task), component(&second_task));
    assert_ne!(first_package, second_package);
    let runtime_of = |digest: &str| {
        let bytes = std::fs::read(home.sluice.home.blob(digest)).expect("stored package");
        sluice::python_package::PythonPackage::parse(&bytes)
            .expect("a Python package")
            .runtime_key
    };
    let runtime_key = runtime_of(&first_package);
    assert_eq!(runtime_of(&second_package), runtime_key);
    let runtime = home
        .sluice
        .home
        .python_runtime(&runtime_key)
        .expect("the home's record")
        .expect("a runtime recorded for the key");
    let cached: Vec<String> = std::fs::read_dir(home.home_path().join("cache/compiled"))
        .expect("compile cache")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].starts_with(&format!("{runtime}-")), "{cached:?}");

    let run = home.run("python_tasks", DAG, json!({})).await;
    assert_eq!(run.state.as_str(), "failed", "four tasks fail on purpose");
    let id = &run.run_id;

    // The Python extract feeds the Rust transform and load, and their Python
    // versions, which write the same aggregate.
    for task in [
        "extract",
        "transform",
        "load",
        "transform_py",
        "load_py",
        "context",
        "escape",
    ] {
        let record = home.task(id, task);
        assert_eq!(record.state.as_str(), "success", "{task}: {record:?}");
    }
    assert_eq!(
        home.output(id, "extract"),
        json!({ "rows": 20000, "file": "raw.parquet" })
    );
    assert_eq!(home.output(id, "load")["rows"], 50);
    let staging = home.sluice.store.run(id).expect("run").staging_dir;
    let csv = |name: &str| {
        std::fs::read_to_string(std::path::Path::new(&staging).join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    assert_eq!(
        csv("output.csv").lines().count(),
        51,
        "header and 50 categories"
    );
    assert_eq!(csv("output_py.csv"), csv("output.csv"));
    assert!(
        home.log_text(id, "extract")
            .contains("extract: wrote 20000 rows to raw.parquet"),
        "logging reaches the task log: {}",
        home.log_text(id, "extract")
    );

    // Context values, input, SQL (rows, one row, a cursor in pieces).
    let out = home.output(id, "context");
    assert_eq!(out["dag_id"], "python_tasks");
    assert_eq!(out["task_id"], "context");
    assert_eq!(out["try_number"], 1);
    assert_eq!(out["staging"], format!("{staging}/x"));
    let ds = out["ds"].as_str().expect("ds");
    assert_eq!(out["ds_nodash"], ds.replace('-', ""));
    assert_eq!(out["params"], json!({ "mode": "context", "answer": 42 }));
    assert_eq!(
        out["upstream"],
        json!({ "extract": { "rows": 20000, "file": "raw.parquet" } })
    );
    assert_eq!(out["first"], json!({ "i": 0, "s": "v0" }));
    assert_eq!(out["cursor_rows"], 2500);
    assert_eq!(out["last"], json!({ "i": 2499, "s": "v2499" }));
    assert_eq!(out["one"], json!({ "n": 2500, "total": 3_123_750 }));
    assert_eq!(out["none"], json!(null));
    assert_eq!(out["rows"], json!([{ "i": 0 }, { "i": 1 }, { "i": 2 }]));
    let log = home.log_text(id, "context");
    for line in [
        "warn a warning from ctx",
        "info testkit: hello from logging",
        "hello from print",
    ] {
        assert!(log.contains(line), "{line:?} not in the log:\n{log}");
    }

    // PermanentError: one try, retries unspent.
    let permanent = home.task(id, "permanent");
    assert_eq!(
        (permanent.state.as_str(), permanent.try_number),
        ("failed", 1)
    );
    assert_eq!(permanent.error.as_deref(), Some("the input can never work"));

    // Any other exception: retryable (two tries), type and message as the
    // error, the traceback in the log, never a trap.
    let boom = home.task(id, "boom");
    assert_eq!((boom.state.as_str(), boom.try_number), ("failed", 2));
    assert_eq!(boom.error.as_deref(), Some("KeyError: 'missing'"));
    let log = home.log_text(id, "boom");
    assert!(
        log.contains("Traceback (most recent call last)") && log.contains("in boom"),
        "traceback in the log:\n{log}"
    );
    assert!(
        !log.contains("wasm trap") && !log.contains("unreachable"),
        "{log}"
    );

    // An uncaught SQL error keeps the host's kind: a parser error is permanent.
    let sql_error = home.task(id, "sql_error");
    assert_eq!(
        (sql_error.state.as_str(), sql_error.try_number),
        ("failed", 1)
    );
    assert!(
        sql_error
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("Parser Error")),
        "{sql_error:?}"
    );

    // A Python loop is stopped at the task's timeout.
    let spin = home.task(id, "spin");
    assert_eq!((spin.state.as_str(), spin.try_number), ("failed", 1));
    assert!(
        spin.error
            .as_deref()
            .is_some_and(|e| e.contains("timed out after 1s")),
        "{spin:?}"
    );

    // Every way out of the sandbox is closed; the environment is empty.
    let tried = home.output(id, "escape");
    let tried = tried.as_object().expect("attempts");
    assert_eq!(tried.len(), 6, "{tried:?}");
    for (attempt, outcome) in tried {
        let outcome = outcome.as_str().expect("text");
        if attempt == "environ" {
            assert_eq!(outcome, "allowed: {}", "no host environment");
        } else {
            assert!(outcome.starts_with("denied: "), "{attempt}: {outcome}");
        }
    }

    // An unchanged task builds to the same bytes: its re-deploy records no
    // new version. (The package is a function of the sources and the
    // runtime's key; the runtime is kept while the SDK is unchanged. A clean
    // checkout: `a_clean_checkout_builds_an_unchanged_python_task_to_the_same_version`.)
    let plugins = repo_root().join("plugins");
    let dist = plugins.join("dist");
    let first = home.deploy(&home.dir.path().join("dags/python_tasks/dag.toml"));
    let before = std::fs::read(dist.join("py-testkit.pytask")).expect("built");
    let rebuilt_runtime = sluice::plugins::python::build_runtime(
        &sluice::plugins::python::componentize_py().expect("componentize-py"),
        &sluice::plugins::default_target_dir(&plugins).join("python"),
        &dist,
        true,
    )
    .expect("runtime rebuilt");
    assert!(
        rebuilt_runtime.reused,
        "unchanged SDK and WIT reuse the last runtime"
    );
    assert_eq!(rebuilt_runtime.key, runtime_key);
    let task = sluice::plugins::python::find_tasks(&plugins)
        .expect("Python tasks")
        .into_iter()
        .find(|t| t.name == "py-testkit")
        .expect("py-testkit");
    let rebuilt =
        sluice::plugins::python::build_task(&task, &rebuilt_runtime.key, &dist).expect("rebuilt");
    assert_eq!(std::fs::read(&rebuilt).expect("rebuilt"), before);
    let again = home.deploy(&home.dir.path().join("dags/python_tasks/dag.toml"));
    assert_eq!(again.version, first.version);
    assert!(!again.new_version);
    assert!(again.compiled.is_empty(), "{:?}", again.compiled);
}

/// A clean checkout builds the runtime again, and componentize-py's bytes
/// differ from one build to the next; the task's package does not, so its
/// re-deploy records no new version, and the home keeps running the
/// runtime it recorded first for the key.
#[test]
fn a_clean_checkout_builds_an_unchanged_python_task_to_the_same_version() {
    use sluice::plugins::python;

    let home = TestHome::new();
    let first =
        home.deploy(&home.manifest("clean_checkout", "[tasks.t]\nplugin = \"py-testkit\"\n"));
    let package = std::fs::read(plugins_dist().join("py-testkit.pytask")).expect("built");
    let key = sluice::python_package::PythonPackage::parse(&package)
        .expect("a package")
        .runtime_key;
    let recorded = home
        .sluice
        .home
        .python_runtime(&key)
        .expect("record")
        .expect("a runtime recorded for the key");

    // Another checkout's build: nothing built before, in its own directories.
    let clean = tempfile::tempdir().expect("temp dir");
    let dist = clean.path().join("dist");
    let runtime = python::build_runtime(
        &python::componentize_py().expect("componentize-py"),
        &clean.path().join("target"),
        &dist,
        true,
    )
    .expect("runtime built");
    assert!(!runtime.reused, "nothing to reuse in a clean checkout");
    assert_eq!(runtime.key, key, "same SDK, WIT and componentize-py");
    let task = python::find_tasks(&repo_root().join("plugins"))
        .expect("Python tasks")
        .into_iter()
        .find(|t| t.name == "py-testkit")
        .expect("py-testkit");
    let rebuilt = python::build_task(&task, &runtime.key, &dist).expect("task built");
    assert_eq!(std::fs::read(&rebuilt).expect("package"), package);

    // The build checks imports against what this runtime listed: the
    // testkit's pass (its escape attempts import socket, subprocess and
    // ctypes), a module the runtime lacks is refused with its file and line.
    python::check_imports(&task, &runtime.modules).expect("the testkit's imports");
    let lacking = clean.path().join("lacking");
    std::fs::create_dir_all(&lacking).expect("dir");
    std::fs::write(
        lacking.join("main.py"),
        "import statistics\nimport zoneinfo\nimport requests\n",
    )
    .expect("source");
    let lacking = python::PythonTask {
        dir: lacking,
        name: "lacking".into(),
        module: "main".into(),
    };
    let error = python::check_imports(&lacking, &runtime.modules)
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("main.py:3: imports `requests`, which the Python runtime does not have")
            && !error.contains("statistics")
            && !error.contains("zoneinfo"),
        "{error}"
    );

    let manifest = clean.path().join("dag.toml");
    std::fs::write(
        &manifest,
        format!(
            "[dag]\nid = \"clean_checkout\"\nplugin_dir = \"{}\"\n[tasks.t]\nplugin = \"py-testkit\"\n",
            dist.display()
        ),
    )
    .expect("manifest");
    let again = home.deploy(&manifest);
    assert_eq!(again.version, first.version);
    assert!(!again.new_version);
    assert!(again.compiled.is_empty(), "{:?}", again.compiled);
    assert_eq!(
        home.sluice.home.python_runtime(&key).expect("record"),
        Some(recorded.clone()),
        "the home runs the runtime it recorded first"
    );
    let rebuilt_runtime =
        sluice::registry::sha256_hex(&std::fs::read(&runtime.component).expect("runtime"));
    if rebuilt_runtime != recorded {
        assert!(
            !home.sluice.home.blob(&rebuilt_runtime).exists(),
            "a second runtime for a recorded key is not stored"
        );
    }
}
