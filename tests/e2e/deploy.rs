//! Content-hashed deployment: unchanged code makes no version and compiles nothing.

use serde_json::json;

use crate::support::{CHILD_DEADLINE, TestHome, output_within, text};

const BODY: &str = "[tasks.a]\nplugin = \"testkit\"\nparams = { mode = \"echo\" }\n";

#[test]
fn redeploying_unchanged_code_is_a_no_op_and_changes_make_versions() {
    let home = TestHome::new();
    let path = home.manifest("versioned", BODY);
    let first = home.deploy(&path);
    assert!(first.new_version);
    assert_eq!(first.compiled, vec!["a".to_owned()]);
    assert_eq!(first.version.len(), 64);

    let again = home.deploy(&path);
    assert!(!again.new_version);
    assert!(again.compiled.is_empty(), "compiled {:?}", again.compiled);
    assert_eq!(again.version, first.version);

    // A fresh process (new engine, same home) loads compiled code from the cache.
    let out = home.cli(&["deploy", path.to_str().expect("utf-8")]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("unchanged, nothing compiled"), "{stdout}");

    // The component is stored under its sha256.
    let version = home
        .sluice
        .store
        .version("versioned", &first.version)
        .expect("version");
    let digest = &version.spec.tasks[0].component;
    let blob = std::fs::read(home.sluice.home.blob(digest)).expect("blob");
    assert_eq!(&sluice::registry::sha256_hex(&blob), digest);

    // A change to the manifest is a new version; the old one stays listed.
    let path = home.manifest(
        "versioned",
        "[tasks.a]\nplugin = \"testkit\"\nparams = { mode = \"echo\", x = 1 }\n",
    );
    let changed = home.deploy(&path);
    assert!(changed.new_version);
    assert!(
        changed.compiled.is_empty(),
        "same component, nothing to compile"
    );
    let (list, _) = text(&home.cli(&["versions", "versioned"]));
    assert!(
        list.contains(&changed.version[..12]) && list.contains(&first.version[..12]),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_records_the_version_it_ran() {
    let home = TestHome::new();
    let run = home.run("recorded", BODY, json!({})).await;
    let record = home.sluice.store.run(&run.run_id).expect("run");
    let current = home
        .sluice
        .store
        .current_version("recorded")
        .expect("current");
    assert_eq!(record.version, current.digest);
    let task = home.task(&run.run_id, "a");
    assert_eq!(task.component, current.spec.tasks[0].component);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_modified_after_deploy_is_refused() {
    let home = TestHome::new();
    let path = home.manifest("tampered", BODY);
    let deployment = home.deploy(&path);
    let version = home
        .sluice
        .store
        .version("tampered", &deployment.version)
        .expect("version");
    let digest = version.spec.tasks[0].component.clone();
    // Change one byte of the stored component and drop the compiled code.
    let blob = home.sluice.home.blob(&digest);
    let mut bytes = std::fs::read(&blob).expect("blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&blob, bytes).expect("tamper");
    for entry in std::fs::read_dir(home.sluice.home.compile_cache())
        .expect("cache")
        .flatten()
    {
        std::fs::remove_file(entry.path()).expect("remove cached code");
    }
    // A fresh process must not run the modified bytes under the deployed digest.
    let out = home.cli(&["run", "tampered", "--no-progress"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        format!("{stdout}{stderr}").contains("does not match its digest"),
        "{stdout}\n{stderr}"
    );
}

/// The compile-cache entry of component `digest` (exactly one per component).
fn cache_entry(home: &TestHome, digest: &str) -> std::path::PathBuf {
    let entries: Vec<_> = std::fs::read_dir(home.sluice.home.compile_cache())
        .expect("cache")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{digest}-")) && n.ends_with(".cwasm"))
        })
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].clone()
}

/// The attack of issue 10: machine code written into `cache/compiled/` under
/// another component's name must never run as that component. Two plants: the
/// donor's whole cache entry (tag included) copied under the victim's name, and
/// the donor's bare serialized code (what `Component::serialize` writes).
#[test]
fn a_planted_compile_cache_entry_is_never_loaded() {
    let home = TestHome::new();
    let component = |dag: &str, body: &str| {
        let deployment = home.deploy(&home.manifest(dag, body));
        home.sluice
            .store
            .version(dag, &deployment.version)
            .expect("version")
            .spec
            .tasks[0]
            .component
            .clone()
    };
    let victim = component(
        "planted",
        "[tasks.victim]\nplugin = \"testkit\"\nparams = { mode = \"echo\", marker = \"victim\" }\n",
    );
    // Deployed (so compiled and cached), never run here.
    let donor = component(
        "donor",
        "[tasks.donor]\nplugin = \"etl-extract\"\nparams = { rows = 5 }\n",
    );
    assert_ne!(victim, donor);
    let victim_entry = cache_entry(&home, &victim);
    let donor_entry = std::fs::read(cache_entry(&home, &donor)).expect("donor entry");
    let header = b"sluice-cwasm-v1\n".len() + 32;
    assert!(donor_entry.starts_with(b"sluice-cwasm-v1\n"));

    for (what, planted) in [
        ("the donor's tagged entry", donor_entry.clone()),
        ("the donor's bare code", donor_entry[header..].to_vec()),
    ] {
        std::fs::write(&victim_entry, &planted).expect("plant");

        // A fresh process runs the DAG: the victim must behave as testkit.
        let out = output_within(
            std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["run", "planted", "--no-progress"])
                .env("SLUICE_HOME", home.home_path())
                .env("SLUICE_LOG", "warn"),
            CHILD_DEADLINE,
        );
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{what}: {stdout}\n{stderr}");
        let run = home
            .sluice
            .store
            .runs(Some("planted"), 1)
            .expect("runs")
            .remove(0);
        let output = home.output(&run.run_id, "victim");
        assert_eq!(output["task"], "victim", "{what}: {output}");
        assert_eq!(output["rest"]["marker"], "victim", "{what}: {output}");
        assert!(
            output.get("rows").is_none(),
            "{what}: the donor ran: {output}"
        );
        // The refusal is logged, naming the file.
        assert!(
            stderr.contains(&victim_entry.display().to_string()) && stderr.contains("not used"),
            "{what}: {stderr}"
        );

        // The entry was replaced by a valid one: a fresh engine loads it without compiling.
        let rewritten = std::fs::read(&victim_entry).expect("entry");
        assert_ne!(
            rewritten, planted,
            "{what}: the planted entry is still there"
        );
        let engine = sluice::engine::Engine::new(&home.sluice.home).expect("engine");
        let blob = home.sluice.home.blob(&victim);
        assert!(!engine.prepare(&victim, &blob).expect("prepare").compiled);

        // And an engine that finds the plant compiles instead of loading it.
        std::fs::write(&victim_entry, &planted).expect("plant again");
        let engine = sluice::engine::Engine::new(&home.sluice.home).expect("engine");
        assert!(
            engine.prepare(&victim, &blob).expect("prepare").compiled,
            "{what}: the planted entry was loaded"
        );
        assert_ne!(std::fs::read(&victim_entry).expect("entry"), planted);
    }

    // The key that authenticates entries is private to the owner.
    let key = home.sluice.home.root().join(sluice::engine::CACHE_KEY_FILE);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key).expect("key").permissions(),
    );
    assert_eq!(mode & 0o077, 0, "cache.key mode {mode:o}");
}

/// A worker maps the compiled code its host verified (a sealed memfd handed
/// over at spawn) and does not read the compile cache again: an entry spoiled
/// after the host loaded it is neither loaded nor rewritten by the worker.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_maps_the_code_its_host_verified() {
    let mut home = TestHome::new();
    home.sluice
        .run_tries_in_workers(std::path::PathBuf::from(env!("CARGO_BIN_EXE_sluice")));
    let body =
        "[tasks.echo]\nplugin = \"testkit\"\nparams = { mode = \"echo\", marker = \"handed\" }\n";
    let first = home.run("handover", body, json!({})).await;
    assert!(first.error.is_none(), "{first:?}");
    let digest = home.task(&first.run_id, "echo").component;
    let entry = cache_entry(&home, &digest);
    std::fs::write(&entry, b"spoiled").expect("spoil the entry");

    let second = home.run("handover", body, json!({})).await;
    assert!(second.error.is_none(), "{second:?}");
    assert_eq!(
        home.output(&second.run_id, "echo")["rest"]["marker"],
        "handed"
    );
    assert_eq!(
        std::fs::read(&entry).expect("entry"),
        b"spoiled",
        "the worker read the compile cache (and rewrote the entry) instead of mapping the code handed over"
    );
}

/// A Python task is deployed with the runtime it names, which must be built
/// and be a component: a runtime is recorded for its key only once it
/// loads. The stored package is checked as a component's blob is. (No
/// runtime is compiled here.)
#[test]
fn a_python_task_needs_its_runtime_and_its_package_unchanged() {
    use sluice::python_package::{PythonPackage, SourceFile};

    let home = TestHome::new();
    let plugins = home.dir.path().join("fake-plugins");
    let runtimes = plugins.join("python-runtime");
    std::fs::create_dir_all(&runtimes).expect("dir");
    let key = "ab".repeat(32);
    let package = PythonPackage::new(
        &key,
        "main",
        vec![SourceFile {
            path: "main.py".into(),
            text: "X = 1\n".into(),
        }],
    );
    std::fs::write(plugins.join("fake-py.pytask"), package.to_bytes()).expect("package");
    let dag = home.dir.path().join("fakepy.toml");
    std::fs::write(
        &dag,
        format!(
            "[dag]\nid = \"fakepy\"\nplugin_dir = \"{}\"\n[tasks.t]\nplugin = \"fake-py\"\n",
            plugins.display()
        ),
    )
    .expect("manifest");
    let deploy = || {
        let manifest = sluice::manifest::Manifest::load(&dag).expect("manifest");
        sluice::registry::deploy(
            &home.sluice.home,
            &home.sluice.store,
            &home.sluice.engine,
            &manifest,
        )
        .expect_err("refused")
        .to_string()
    };
    let error = deploy();
    assert!(
        error.contains("cannot read its Python runtime") && error.contains("sluice build"),
        "{error}"
    );
    let file = runtimes.join(format!("{key}.wasm"));
    std::fs::write(&file, b"not a runtime component").expect("runtime");
    let error = deploy();
    assert!(
        error.contains(&format!("its Python runtime {}", file.display()))
            && error.contains("is not a WebAssembly component"),
        "{error}"
    );
    assert_eq!(
        home.sluice.home.python_runtime(&key).expect("record"),
        None,
        "a runtime that does not load is not recorded for the key"
    );

    // A stored package modified after deploy is not run under its digest.
    let digest = sluice::registry::sha256_hex(&package.to_bytes());
    let blob = home.sluice.home.blob(&digest);
    let mut changed = package.clone();
    changed.sources[0].text = "X = 2\n".into();
    std::fs::write(&blob, changed.to_bytes()).expect("tamper");
    let engine = sluice::engine::Engine::new(&home.sluice.home).expect("engine");
    let error = engine
        .prepare(&digest, &blob)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("does not match its digest"), "{error}");
}

/// The engine knows which tasks import `sql` (what the process executor
/// tells a worker so that it opens its database ahead): a component imports
/// only the interfaces it uses.
#[test]
fn the_engine_knows_which_tasks_import_sql() {
    let home = TestHome::new();
    let path = home.manifest(
        "imports",
        "[tasks.extract]\nplugin = \"etl-extract\"\n\
         [tasks.load]\nplugin = \"etl-load-pg\"\nafter = [\"extract\"]\n",
    );
    let deployment = home.deploy(&path);
    let version = home
        .sluice
        .store
        .version("imports", &deployment.version)
        .expect("version");
    let component = |id: &str| {
        version
            .spec
            .tasks
            .iter()
            .find(|t| t.id == id)
            .map(|t| t.component.clone())
            .unwrap_or_else(|| panic!("no task {id}"))
    };
    let engine = &home.sluice.engine;
    assert!(
        engine.uses_sql(&component("extract")),
        "etl-extract runs SQL"
    );
    assert!(
        !engine.uses_sql(&component("load")),
        "etl-load-pg only copies through its Postgres connection"
    );
    assert!(!engine.uses_sql(&"0".repeat(64)), "an unknown component");
}
