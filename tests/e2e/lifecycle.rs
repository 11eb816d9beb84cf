//! The run lifecycle: staging deleted on success, kept on failure and reclaimed
//! after the TTL (with an injected clock); clear and re-run reusing staged
//! data; resume after the host process is killed; retry backoff.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sluice::scheduler::{ClearScope, StagingPolicy, clear, resume_run};
use sluice::staging::sweep;
use sluice::state::VolumeState;

use crate::support::{CHILD_DEADLINE, Spawned, TestHome, output_within, text, wait_for};

const TTL: Duration = Duration::from_secs(3600);

fn volume_reason(home: &TestHome, run_id: &str) -> (VolumeState, Option<String>) {
    let v = home
        .sluice
        .store
        .volume(run_id)
        .expect("volumes")
        .expect("a volume record");
    (v.state, v.delete_reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_deletes_staging_and_failure_keeps_it_until_the_ttl() {
    let home = TestHome::new();
    let ok = home
        .run(
            "ok",
            "[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"echo\" }\n",
            json!({}),
        )
        .await;
    assert!(!ok.staging_dir.exists());
    assert_eq!(
        volume_reason(&home, &ok.run_id),
        (VolumeState::Deleted, Some("run_succeeded".into()))
    );

    let failed = home
        .run(
            "bad",
            "[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"fail\" }\n",
            json!({}),
        )
        .await;
    assert_eq!(failed.state.as_str(), "failed");
    assert!(failed.staging_dir.is_dir(), "kept for clear and re-run");
    assert_eq!(
        volume_reason(&home, &failed.run_id).0,
        VolumeState::Retained
    );

    // Just before the TTL nothing goes; a dry run past it reports but deletes nothing.
    let early = sweep(
        &home.sluice.home,
        &home.sluice.store,
        TTL,
        Utc::now() + chrono::Duration::minutes(59),
        false,
    )
    .expect("sweep");
    assert!(early.is_empty(), "{early:?}");
    let later = Utc::now() + chrono::Duration::minutes(61);
    let dry = sweep(&home.sluice.home, &home.sluice.store, TTL, later, true).expect("dry run");
    assert_eq!(dry.len(), 1);
    assert!(failed.staging_dir.is_dir());

    let done = sweep(&home.sluice.home, &home.sluice.store, TTL, later, false).expect("sweep");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].reason, "ttl_expired");
    assert!(!failed.staging_dir.exists());
    assert_eq!(
        volume_reason(&home, &failed.run_id),
        (VolumeState::Deleted, Some("ttl_expired".into()))
    );

    let (list, _) = text(&home.cli(&["staging", "list"]));
    assert!(
        list.contains("run_succeeded") && list.contains("ttl_expired"),
        "{list}"
    );
}

#[test]
fn orphans_are_reclaimed_only_past_the_ttl_and_active_runs_never() {
    let home = TestHome::new();
    // Named as Sluice names runs: a directory with any other name is not Sluice's to delete.
    let orphan = home.sluice.home.staging(LEFT_BEHIND);
    std::fs::create_dir_all(&orphan).expect("orphan dir");
    let now = Utc::now();
    assert!(
        sweep(&home.sluice.home, &home.sluice.store, TTL, now, false)
            .expect("sweep")
            .is_empty()
    );
    assert!(orphan.is_dir(), "a young orphan stays");

    // An active run's directory is never touched, however old.
    let active = home.sluice.home.staging("active-run");
    std::fs::create_dir_all(&active).expect("active dir");
    home.sluice
        .store
        .add_volume("active-run", &active.display().to_string(), now)
        .expect("volume");

    let reclaimed = sweep(
        &home.sluice.home,
        &home.sluice.store,
        TTL,
        now + chrono::Duration::hours(2),
        false,
    )
    .expect("sweep");
    assert_eq!(reclaimed.len(), 1, "{reclaimed:?}");
    assert_eq!(
        (reclaimed[0].run_id.as_str(), reclaimed[0].reason),
        (LEFT_BEHIND, "orphaned")
    );
    assert!(!orphan.exists());
    assert!(active.is_dir());
}

const LEFT_BEHIND: &str = "manual__20000101T000000_00abcd";

/// A metadatabase that fails while the sweep asks whether a run claims a
/// directory is an error, not "no run claims it": nothing is deleted.
#[test]
fn a_sweep_whose_metadatabase_fails_deletes_nothing() {
    let home = TestHome::new();
    let orphan = home.sluice.home.staging(LEFT_BEHIND);
    std::fs::create_dir_all(&orphan).expect("orphan dir");
    std::fs::write(orphan.join("data.parquet"), b"staged").expect("staged file");
    let later = Utc::now() + chrono::Duration::hours(2);
    let db = rusqlite::Connection::open(home.sluice.home.database()).expect("metadatabase");
    db.execute_batch("ALTER TABLE dag_runs RENAME TO dag_runs_away")
        .expect("break the runs table");
    let e = sweep(&home.sluice.home, &home.sluice.store, TTL, later, false)
        .expect_err("the runs table is gone");
    assert!(e.to_string().contains("dag_runs"), "{e}");
    assert!(orphan.join("data.parquet").is_file(), "nothing deleted");
    // Control: with the table back, the same sweep reclaims the orphan.
    db.execute_batch("ALTER TABLE dag_runs_away RENAME TO dag_runs")
        .expect("restore the runs table");
    let reclaimed = sweep(&home.sluice.home, &home.sluice.store, TTL, later, false).expect("sweep");
    assert_eq!(reclaimed.len(), 1, "{reclaimed:?}");
    assert!(!orphan.exists());
}

/// Issue 10: a file planted in the staging root made every `sluice gc` fail
/// ("Not a directory"). Planted things (a file, a link to a directory outside,
/// a directory that is no run's) are skipped with a warning naming them, never
/// deleted nor followed, and the sweep still reclaims the expired run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_skips_what_it_did_not_make_and_still_reclaims_expired_runs() {
    let home = TestHome::new();
    let failed = home
        .run(
            "bad",
            "[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"fail\" }\n",
            json!({}),
        )
        .await;
    assert!(failed.staging_dir.is_dir());
    let root = home.sluice.home.root().join("staging");
    let file = root.join("planted.txt");
    std::fs::write(&file, "x").expect("file");
    let outside = home.dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("precious"), "keep").expect("precious");
    let link = root.join("manual__20000101T000000_0000ee");
    std::os::unix::fs::symlink(&outside, &link).expect("link");
    let odd = root.join("not a run");
    std::fs::create_dir_all(&odd).expect("odd");

    let out = output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["gc", "--staging-ttl", "0s"])
            .env("SLUICE_HOME", home.home_path())
            .env("SLUICE_LOG", "warn"),
        CHILD_DEADLINE,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("reclaimed {} (ttl_expired)", failed.run_id)),
        "{stdout}"
    );
    for planted in [&file, &link, &odd] {
        assert!(
            stderr.contains(&format!("skipping {}", planted.display())),
            "no warning about {}: {stderr}",
            planted.display()
        );
    }
    assert!(!failed.staging_dir.exists());
    assert!(file.is_file() && odd.is_dir());
    assert!(
        link.symlink_metadata()
            .expect("link")
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("precious")).expect("target"),
        "keep"
    );
}

const ETL_BROKEN_LOAD: &str = r#"
[tasks.extract]
plugin = "etl-extract"
params = { rows = 10000 }

[tasks.transform]
plugin = "etl-transform"
after = ["extract"]

[tasks.load]
plugin = "testkit"
after = ["transform"]
params = { mode = "fail" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_the_failed_load_after_a_fix_reruns_only_load_on_the_new_version() {
    let home = TestHome::new();
    let failed = home.run("etl", ETL_BROKEN_LOAD, json!({})).await;
    assert_eq!(failed.state.as_str(), "failed");
    let broken_version = home.sluice.store.run(&failed.run_id).expect("run").version;
    let agg_written = std::fs::metadata(failed.staging_dir.join("agg.parquet"))
        .expect("agg")
        .modified()
        .expect("mtime");

    // The fix: load is now the real loader. Deploy it.
    let fixed = ETL_BROKEN_LOAD.replace(
        "plugin = \"testkit\"\nafter = [\"transform\"]\nparams = { mode = \"fail\" }",
        "plugin = \"etl-load\"\nafter = [\"transform\"]",
    );
    let fixed_version = home.deploy(&home.manifest("etl", &fixed)).version;
    assert_ne!(fixed_version, broken_version);

    let dry = clear(
        &home.sluice,
        &failed.run_id,
        "load",
        ClearScope::default(),
        true,
    )
    .expect("dry run");
    assert_eq!(dry, vec!["load".to_owned()]);
    assert_eq!(
        home.task(&failed.run_id, "load").state.as_str(),
        "failed",
        "a dry run changes nothing"
    );

    let cleared = clear(
        &home.sluice,
        &failed.run_id,
        "load",
        ClearScope::default(),
        false,
    )
    .expect("clear");
    assert_eq!(cleared, vec!["load".to_owned()]);
    let rerun = resume_run(
        &home.sluice,
        &failed.run_id,
        StagingPolicy {
            keep: true,
            ttl: TTL,
        },
        None,
    )
    .await
    .expect("re-run");
    assert_eq!(rerun.state.as_str(), "success", "{:?}", rerun.error);

    // Only load ran again: on try 2, with the fixed version's component.
    let load = home.task(&failed.run_id, "load");
    assert_eq!((load.state.as_str(), load.try_number), ("success", 2));
    assert_eq!(home.output(&failed.run_id, "load")["rows"], 50);
    for upstream in ["extract", "transform"] {
        let t = home.task(&failed.run_id, upstream);
        assert_eq!(t.try_number, 1, "{upstream} ran again");
        assert_eq!(
            home.sluice
                .store
                .tries(&failed.run_id, upstream)
                .expect("tries")
                .len(),
            1
        );
    }
    let agg_now = std::fs::metadata(rerun.staging_dir.join("agg.parquet"))
        .expect("agg")
        .modified()
        .expect("mtime");
    assert_eq!(
        agg_written, agg_now,
        "the staged aggregate was reused, not rewritten"
    );
    let tries = home
        .sluice
        .store
        .tries(&failed.run_id, "load")
        .expect("tries");
    assert_eq!(tries.len(), 2);
    assert_eq!(tries[0].version, broken_version);
    assert_eq!(tries[1].version, fixed_version);
    assert_eq!(
        home.sluice.store.run(&failed.run_id).expect("run").version,
        fixed_version,
        "the run re-bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_a_run_whose_staging_was_reclaimed_fails_with_the_reason() {
    let home = TestHome::new();
    let failed = home.run("etl", ETL_BROKEN_LOAD, json!({})).await;
    sweep(
        &home.sluice.home,
        &home.sluice.store,
        TTL,
        Utc::now() + chrono::Duration::hours(2),
        false,
    )
    .expect("sweep");
    assert!(!failed.staging_dir.exists());

    let out = home.cli(&["clear", &failed.run_id, "load", "--no-progress"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    let load = home.task(&failed.run_id, "load");
    assert_eq!(load.state.as_str(), "failed");
    let error = load.error.unwrap_or_default();
    assert!(
        error.contains("was reclaimed (ttl_expired"),
        "{error}\n{stdout}\n{stderr}"
    );
    assert_eq!(
        home.task(&failed.run_id, "load").try_number,
        1,
        "load did not run on missing data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_with_downstream_and_upstream_selects_the_right_tasks() {
    let home = TestHome::new();
    let failed = home.run("etl", ETL_BROKEN_LOAD, json!({})).await;
    let both = ClearScope {
        downstream: true,
        upstream: true,
    };
    let selected = clear(&home.sluice, &failed.run_id, "transform", both, true).expect("dry run");
    assert_eq!(selected, ["extract", "transform", "load"]);
    let down = clear(
        &home.sluice,
        &failed.run_id,
        "transform",
        ClearScope {
            downstream: true,
            upstream: false,
        },
        true,
    )
    .expect("dry run");
    assert_eq!(down, ["transform", "load"]);
    let out = home.cli(&["clear", &failed.run_id, "extract", "--dry-run"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("would clear in run") && stdout.contains("extract"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_delays_grow_with_exponential_backoff() {
    let home = TestHome::new();
    let body = "[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"flaky\", succeed_on = 4 }\nretries = 3\n\
                retry_delay = \"200ms\"\nretry_exponential_backoff = true\nmax_retry_delay = \"10s\"\n";
    let run = home.run("backoff", body, json!({})).await;
    assert_eq!(run.state.as_str(), "success", "{:?}", run.error);
    let tries = home.sluice.store.tries(&run.run_id, "t").expect("tries");
    assert_eq!(tries.len(), 4);
    let states: Vec<&str> = tries.iter().map(|t| t.state.as_str()).collect();
    assert_eq!(
        states,
        ["up_for_retry", "up_for_retry", "up_for_retry", "success"]
    );
    // Each retry waited at least its delay: 200 ms, 400 ms, 800 ms (lower bounds, not speed).
    for (i, min_ms) in [(1usize, 200i64), (2, 400), (3, 800)] {
        let gap = tries[i].started_at - tries[i - 1].ended_at.expect("ended");
        assert!(
            gap.num_milliseconds() >= min_ms,
            "try {} started {gap:?} after try {} ended",
            i + 1,
            i
        );
    }
}

/// Starts `sluice run` on `manifest` and SIGKILLs it once `slow` is running;
/// returns the run id, left `running`.
fn start_and_kill(home: &TestHome, manifest: &std::path::Path) -> String {
    let mut child = Spawned::new(
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", manifest.to_str().expect("utf-8"), "--no-progress"])
            .env("SLUICE_HOME", home.home_path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let known: Vec<String> = home
        .sluice
        .store
        .runs(Some("crashy"), 100)
        .expect("runs")
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    let run_id = wait_for(
        "a new run of `crashy` with `slow` running",
        Duration::from_secs(60),
        || {
            if let Some(status) = child.exited() {
                panic!("sluice exited before it could be killed: {status}");
            }
            home.sluice
                .store
                .runs(Some("crashy"), 1)
                .expect("runs")
                .into_iter()
                .next()
                .and_then(|r| {
                    let slow = home
                        .sluice
                        .store
                        .tasks(&r.run_id)
                        .ok()?
                        .into_iter()
                        .find(|t| t.task_id == "slow")?;
                    (!known.contains(&r.run_id) && slow.state.as_str() == "running")
                        .then_some(r.run_id)
                })
        },
    );
    // `slow` is recorded running before its worker starts.
    wait_for("the worker of `slow`", Duration::from_secs(30), || {
        (!workers_of(home).is_empty()).then_some(())
    });
    child.kill();
    assert_eq!(
        home.sluice.store.run(&run_id).expect("run").state.as_str(),
        "running",
        "left running by the kill"
    );
    // The killed host's worker (`slow` sleeps for 10 minutes) dies with it.
    wait_for(
        "the killed host's worker to end",
        Duration::from_secs(10),
        || workers_of(home).is_empty().then_some(()),
    );
    run_id
}

/// The pids of the `sluice worker` processes running on `home`.
fn workers_of(home: &TestHome) -> Vec<u32> {
    let home = home.home_path().to_string_lossy().into_owned();
    let processes = std::fs::read_dir("/proc").expect("/proc");
    processes
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_worker = args.contains(&b"worker".as_slice()) && args.contains(&home.as_bytes());
            is_worker.then_some(pid)
        })
        .collect()
}

fn assert_recovered(home: &TestHome, run_id: &str) {
    assert_eq!(
        home.sluice.store.run(run_id).expect("run").state.as_str(),
        "success"
    );
    let slow = home.task(run_id, "slow");
    assert_eq!((slow.state.as_str(), slow.try_number), ("success", 2));
    let tries = home.sluice.store.tries(run_id, "slow").expect("tries");
    assert_eq!(
        tries[0].error.as_deref(),
        Some("the host process stopped during try 1")
    );
    assert_eq!(
        home.task(run_id, "first").try_number,
        1,
        "first was not run again"
    );
    assert_eq!(home.task(run_id, "last").state.as_str(), "success");
}

#[test]
fn a_killed_host_is_resumed_and_the_run_completes_reusing_what_succeeded() {
    let home = TestHome::new();
    let body = r#"
[tasks.first]
plugin = "testkit"
params = { mode = "echo" }

[tasks.slow]
plugin = "testkit"
after = ["first"]
params = { mode = "sleep-first", ms = 600000 }
retries = 1
retry_delay = "10ms"

[tasks.last]
plugin = "testkit"
after = ["slow"]
params = { mode = "echo" }
"#;
    let manifest = home.manifest("crashy", body);

    // Recovered by `sluice run --resume`.
    let run_id = start_and_kill(&home, &manifest);
    let out = home.cli(&["run", "--resume", &run_id, "--no-progress"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "resume failed\n{stdout}\n{stderr}");
    assert_recovered(&home, &run_id);

    // Recovered by the next `sluice scheduler` (it resumes runs left running).
    let run_id = start_and_kill(&home, &manifest);
    let out = home.cli(&["scheduler", "--once"]);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success() && stdout.contains("scheduler stopped after 1 run(s)"),
        "{stdout}\n{stderr}"
    );
    assert_recovered(&home, &run_id);
}

/// A resumed run whose stored params do not parse is an error naming the run,
/// not a run with empty params; nothing is run or changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_with_corrupt_stored_params_fails_and_changes_nothing() {
    let home = TestHome::new();
    let failed = home
        .run(
            "corrupt",
            "[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"fail\" }\n",
            json!({"x": 1}),
        )
        .await;
    let db = rusqlite::Connection::open(home.sluice.home.database()).expect("metadatabase");
    db.execute(
        "UPDATE dag_runs SET params = '{not json' WHERE run_id = ?1",
        [&failed.run_id],
    )
    .expect("corrupt the params");
    clear(
        &home.sluice,
        &failed.run_id,
        "t",
        ClearScope::default(),
        false,
    )
    .expect("clear");
    let e = resume_run(&home.sluice, &failed.run_id, StagingPolicy::default(), None)
        .await
        .expect_err("corrupt params");
    let message = e.to_string();
    assert!(
        message.contains(&failed.run_id) && message.contains("stored params do not parse"),
        "{message}"
    );
    let task = home.task(&failed.run_id, "t");
    assert_eq!((task.state.as_str(), task.try_number), ("scheduled", 1));
}
