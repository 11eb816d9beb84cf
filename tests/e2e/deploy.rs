//! Content-hashed deployment: unchanged code makes no version and compiles nothing.

use serde_json::json;

use crate::support::{TestHome, text};

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
