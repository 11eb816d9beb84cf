//! A task cannot reach outside its staging directory, through WASI or SQL.

use serde_json::{Value, json};

use crate::support::TestHome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_escape_attempt_is_denied_and_controls_work() {
    let home = TestHome::new();
    // Another run's staging directory holding a file the task must not read.
    let other = home
        .run(
            "victim",
            "[tasks.a]\nplugin = \"testkit\"\nparams = { mode = \"echo\" }\n",
            json!({}),
        )
        .await;
    // It succeeded, so its directory was deleted; put one back as if it were still there.
    std::fs::create_dir_all(&other.staging_dir).expect("victim staging");
    std::fs::write(other.staging_dir.join("secret.txt"), "secret").expect("write secret");
    // Files the SQL attempts would create if they were allowed.
    let _ = std::fs::remove_file("/tmp/sluice-escape.csv");
    let _ = std::fs::remove_file("/tmp/sluice-escape.txt");

    let body = "[tasks.probe]\nplugin = \"testkit\"\nparams = { mode = \"escape\" }\n";
    let run = home
        .run(
            "escape",
            body,
            json!({ "other_staging": other.staging_dir.display().to_string() }),
        )
        .await;
    assert_eq!(run.state.as_str(), "success", "{:?}", run.error);
    let report = home.output(&run.run_id, "probe");

    let controls = report["controls"].as_array().expect("controls");
    assert_eq!(controls.len(), 3);
    for c in controls {
        assert_eq!(
            c["allowed"], true,
            "a control inside staging failed, so denials prove nothing: {c}"
        );
    }
    let attempts = report["attempts"].as_array().expect("attempts");
    assert!(attempts.len() >= 30, "{} attempts", attempts.len());
    let allowed: Vec<&Value> = attempts.iter().filter(|a| a["allowed"] != false).collect();
    assert!(allowed.is_empty(), "escapes that worked: {allowed:#?}");

    assert!(!std::path::Path::new("/tmp/sluice-escape.csv").exists());
    assert!(!std::path::Path::new("/tmp/sluice-escape.txt").exists());
    assert!(
        !run.staging_dir
            .parent()
            .expect("parent")
            .join("sibling.csv")
            .exists()
    );

    // SQL denials carry DuckDB's reason, not a crash.
    let by_name = |name: &str| -> String {
        attempts
            .iter()
            .find(|a| a["attempt"] == name)
            .map(|a| a["detail"].to_string())
            .unwrap_or_default()
    };
    let read = by_name("sql read_text /etc/passwd");
    assert!(
        read.contains("Permission Error") || read.contains("disabled"),
        "{read}"
    );
    let set = by_name("sql enable external access");
    assert!(
        set.contains("lock") || set.contains("locked") || set.contains("disabled"),
        "{set}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_cannot_reach_another_running_runs_staging() {
    let home = TestHome::new();
    let victim = "[tasks.v]\nplugin = \"testkit\"\nparams = { mode = \"sleep\", ms = 4000 }\n";
    let attacker =
        "[tasks.a]\nplugin = \"testkit\"\nparams = { mode = \"probe-later\", ms = 20000 }\n";
    // While both run: plant a secret in the victim's staging and tell the attacker where it is.
    let db = home.sluice.home.database();
    let planter = std::thread::spawn(move || {
        let store = sluice::store::Store::open(&db).expect("store");
        let staging_of = |dag: &str| {
            store
                .runs(Some(dag), 1)
                .ok()?
                .into_iter()
                .next()
                .filter(|r| r.state.as_str() == "running")
                .map(|r| r.staging_dir)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let (Some(v), Some(a)) = (staging_of("victim"), staging_of("attacker")) {
                std::fs::write(format!("{v}/secret.txt"), "the victim's data").expect("plant");
                // Renamed into place, so the attacker, polling for the file,
                // never reads it created but not yet written.
                std::fs::write(format!("{a}/target.tmp"), &v).expect("tell");
                std::fs::rename(format!("{a}/target.tmp"), format!("{a}/target.txt"))
                    .expect("tell");
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "both runs never ran at once"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    let (v, a) = tokio::join!(
        home.run("victim", victim, json!({})),
        home.run("attacker", attacker, json!({}))
    );
    let victim_staging = planter.join().expect("planter");
    assert_eq!(v.state.as_str(), "success");
    assert_eq!(a.state.as_str(), "success", "{:?}", a.error);
    let report = home.output(&a.run_id, "a");
    assert_eq!(
        report["target"],
        victim_staging.as_str(),
        "the attacker knew the live path"
    );
    assert_eq!(report["wasi"]["allowed"], false, "{report}");
    assert_eq!(report["sql"]["allowed"], false, "{report}");
    assert!(
        report["sql"]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("Permission Error"),
        "{report}"
    );
}
