//! Schedules: backfill creates one run per interval and never duplicates a
//! succeeded one; the scheduler honours catchup; Ctrl-C stops it cleanly while
//! the CLI keeps reading the metadatabase.

use std::time::Duration;

use chrono::{Days, Utc};
use sluice::state::RunType;

use crate::support::{Spawned, TestHome, text, wait_for};

fn daily(start_date: &str, catchup: bool, task: &str) -> String {
    format!(
        "schedule = \"@daily\"\nstart_date = \"{start_date}\"\ncatchup = {catchup}\n\n\
         [tasks.t]\nplugin = \"testkit\"\nparams = {{ {task} }}\n"
    )
}

fn ok(out: &std::process::Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "failed:\n{stdout}\n{stderr}");
    stdout
}

/// `ok`, and on failure why each of `dag_id`'s runs that did not succeed failed.
fn ok_runs(home: &TestHome, dag_id: &str, out: &std::process::Output) -> String {
    if !out.status.success() {
        for r in home.sluice.store.runs(Some(dag_id), 50).expect("runs") {
            eprintln!("run {} is {}: {:?}", r.run_id, r.state, r.error);
        }
    }
    ok(out)
}

#[test]
fn backfill_runs_each_interval_once_with_its_dates() {
    let home = TestHome::new();
    let path = home.manifest("daily", &daily("2026-01-01", false, "mode = \"echo\""));
    ok(&home.cli(&["deploy", path.to_str().expect("utf-8")]));
    let stdout = ok(&home.cli(&[
        "backfill",
        "daily",
        "--from",
        "2026-01-30",
        "--to",
        "2026-02-01",
    ]));
    assert!(stdout.contains("backfilled 3 run(s)"), "{stdout}");

    let mut runs = home.sluice.store.runs(Some("daily"), 10).expect("runs");
    runs.sort_by_key(|r| r.logical_date);
    let seen: Vec<(RunType, String, String)> = runs
        .iter()
        .map(|r| {
            let out = home.output(&r.run_id, "t");
            (
                r.run_type,
                out["ds"].as_str().unwrap_or_default().to_owned(),
                out["interval"][1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                RunType::Backfill,
                "2026-01-30".into(),
                "2026-01-31T00:00:00Z".into()
            ),
            (
                RunType::Backfill,
                "2026-01-31".into(),
                "2026-02-01T00:00:00Z".into()
            ),
            (
                RunType::Backfill,
                "2026-02-01".into(),
                "2026-02-02T00:00:00Z".into()
            ),
        ]
    );
    assert_eq!(home.output(&runs[1].run_id, "t")["ds_nodash"], "20260131");

    // Again, overlapping: only the new interval runs.
    let stdout = ok(&home.cli(&[
        "backfill",
        "daily",
        "--from",
        "2026-01-31",
        "--to",
        "2026-02-02",
    ]));
    assert!(stdout.contains("backfilled 1 run(s)"), "{stdout}");
    assert_eq!(
        home.sluice
            .store
            .runs(Some("daily"), 10)
            .expect("runs")
            .len(),
        4
    );
}

#[test]
fn the_scheduler_runs_only_the_latest_interval_without_catchup_and_all_with_it() {
    let three_days_ago = (Utc::now() - Days::new(3)).format("%Y-%m-%d").to_string();
    for (catchup, expected) in [(false, 1), (true, 3)] {
        let home = TestHome::new();
        let path = home.manifest("sched", &daily(&three_days_ago, catchup, "mode = \"echo\""));
        ok(&home.cli(&["deploy", path.to_str().expect("utf-8")]));
        let stdout = ok(&home.cli(&["scheduler", "--once"]));
        assert!(
            stdout.contains(&format!("scheduler stopped after {expected} run(s)")),
            "catchup {catchup}: {stdout}"
        );
        let runs = home.sluice.store.runs(Some("sched"), 10).expect("runs");
        assert!(
            runs.iter()
                .all(|r| r.run_type == RunType::Scheduled && r.state.as_str() == "success")
        );
        let yesterday = (Utc::now() - Days::new(1)).format("%Y-%m-%d").to_string();
        assert!(
            runs.iter()
                .any(|r| r.logical_date.format("%Y-%m-%d").to_string() == yesterday)
        );
        // A second pass finds nothing new to do.
        let stdout = ok(&home.cli(&["scheduler", "--once"]));
        assert!(
            stdout.contains("scheduler stopped after 0 run(s)"),
            "{stdout}"
        );
    }
}

#[test]
fn ctrl_c_stops_the_scheduler_cleanly_and_the_cli_reads_meanwhile() {
    let home = TestHome::new();
    let yesterday = (Utc::now() - Days::new(1)).format("%Y-%m-%d").to_string();
    let path = home.manifest(
        "served",
        &daily(&yesterday, false, "mode = \"sleep\", ms = 2000"),
    );
    ok(&home.cli(&["deploy", path.to_str().expect("utf-8")]));
    let mut scheduler = Spawned::new(
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("scheduler")
            .env("SLUICE_HOME", home.home_path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );

    // The scheduler starts yesterday's run at once; allow a loaded machine a minute.
    let run_id = wait_for(
        "the scheduler to start a run of `served` with a running task",
        Duration::from_secs(60),
        || {
            if let Some(status) = scheduler.exited() {
                panic!("the scheduler exited early: {status}");
            }
            home.sluice
                .store
                .runs(Some("served"), 1)
                .expect("runs")
                .into_iter()
                .next()
                .filter(|r| {
                    home.sluice
                        .store
                        .tasks(&r.run_id)
                        .is_ok_and(|ts| ts.iter().any(|t| t.state.as_str() == "running"))
                })
                .map(|r| r.run_id)
        },
    );
    // The CLI reads while the scheduler writes.
    assert!(ok(&home.cli(&["runs", "list"])).contains(&run_id));
    assert!(ok(&home.cli(&["runs", "show", &run_id])).contains("running"));
    ok(&home.cli(&["logs", &run_id, "t"]));

    // SAFETY: sending a signal to our own child process.
    let sent = unsafe { libc::kill(scheduler.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0);
    // It lets the running task (2 s) finish first.
    let out = scheduler.output_within(Duration::from_secs(120));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("stopping: no new runs"), "{stderr}");
    assert!(
        stdout.contains("scheduler stopped after 1 run(s)"),
        "{stdout}"
    );
    let run = home.sluice.store.run(&run_id).expect("run");
    assert_eq!(
        run.state.as_str(),
        "success",
        "the running run finished before the scheduler stopped"
    );
}

/// `30 2 * * *` in Paris from 2026-03-27, with catchup: 02:30 does not exist on
/// 2026-03-29 (issue 16).
fn paris_0230() -> String {
    "schedule = \"30 2 * * *\"\ntimezone = \"Europe/Paris\"\nstart_date = \"2026-03-27\"\n\
     catchup = true\nmax_active_runs = 3\n\n\
     [tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"echo\" }\n"
        .to_owned()
}

/// The `(start, end)` of `dag_id`'s successful runs, by start.
fn succeeded_intervals(home: &TestHome, dag_id: &str) -> Vec<(String, String)> {
    let mut runs = home.sluice.store.runs(Some(dag_id), 50).expect("runs");
    for r in runs.iter().filter(|r| r.state.as_str() != "success") {
        // Shown when an interval is missing below, with why its run failed.
        eprintln!("run {} is {}: {:?}", r.run_id, r.state, r.error);
    }
    runs.retain(|r| r.state.as_str() == "success");
    runs.sort_by_key(|r| (r.interval_start, r.interval_end));
    runs.iter()
        .map(|r| (r.interval_start.to_rfc3339(), r.interval_end.to_rfc3339()))
        .collect()
}

fn span(start: &str, end: &str) -> (String, String) {
    (format!("{start}:00+00:00"), format!("{end}:00+00:00"))
}

/// The intervals from 2026-03-27 to the spring change's day, contiguous.
fn spring_intervals() -> [(String, String); 3] {
    [
        span("2026-03-27T01:30", "2026-03-28T01:30"),
        span("2026-03-28T01:30", "2026-03-29T01:30"),
        // 02:30 CET does not exist: 03:30 CEST.
        span("2026-03-29T01:30", "2026-03-30T00:30"),
    ]
}

#[test]
fn backfill_keeps_the_day_of_the_spring_change() {
    let home = TestHome::new();
    let path = home.manifest("paris", &paris_0230());
    ok(&home.cli(&["deploy", path.to_str().expect("utf-8")]));
    let stdout = ok(&home.cli(&[
        "backfill",
        "paris",
        "--from",
        "2026-03-27",
        "--to",
        "2026-03-29T23:59:59",
    ]));
    assert!(stdout.contains("backfilled 3 run(s)"), "{stdout}");
    assert_eq!(succeeded_intervals(&home, "paris"), spring_intervals());
}

#[test]
fn the_scheduler_keeps_the_day_of_the_spring_change() {
    // The first pass: max_active_runs (3) intervals from the start date.
    let home = TestHome::new();
    let path = home.manifest("paris", &paris_0230());
    ok(&home.cli(&["deploy", path.to_str().expect("utf-8")]));
    let stdout = ok(&home.cli(&["scheduler", "--once"]));
    assert!(
        stdout.contains("scheduler stopped after 3 run(s)"),
        "{stdout}"
    );
    assert_eq!(succeeded_intervals(&home, "paris"), spring_intervals());
}

#[test]
fn backfill_fills_a_spring_gap_left_in_the_metadatabase() {
    let home = TestHome::new();
    let path = home.manifest("paris", &paris_0230());
    home.deploy(&path);
    let version = home.sluice.store.current_version("paris").expect("version");
    // Runs as Sluice made them before issue 16 was fixed: the interval that
    // starts on 2026-03-29 is missing and the one before ends at 03:00 CEST.
    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    };
    for (start, end) in [
        ("2026-03-27T01:30:00Z", "2026-03-28T01:30:00Z"),
        ("2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z"),
        ("2026-03-30T00:30:00Z", "2026-03-31T00:30:00Z"),
    ] {
        let options = sluice::scheduler::RunOptions {
            run_type: RunType::Scheduled,
            interval: Some(sluice::schedule::Interval {
                start: at(start),
                end: at(end),
            }),
            ..Default::default()
        };
        let run = sluice::scheduler::create_run(&home.sluice, &version, &options).expect("run");
        home.sluice
            .store
            .set_run_state(&run.run_id, sluice::state::RunState::Success, None)
            .expect("state");
    }

    let stdout = ok_runs(
        &home,
        "paris",
        &home.cli(&[
            "backfill",
            "paris",
            "--from",
            "2026-03-27",
            "--to",
            "2026-03-30",
        ]),
    );
    // The day of the change, and the day before again over its whole interval.
    assert!(stdout.contains("backfilled 2 run(s)"), "{stdout}");
    let runs = home.sluice.store.runs(Some("paris"), 50).expect("runs");
    let backfilled: Vec<(String, String)> = {
        let mut b: Vec<_> = runs
            .iter()
            .filter(|r| r.run_type == RunType::Backfill && r.state.as_str() == "success")
            .map(|r| (r.interval_start.to_rfc3339(), r.interval_end.to_rfc3339()))
            .collect();
        b.sort();
        b
    };
    assert_eq!(
        backfilled,
        [
            span("2026-03-28T01:30", "2026-03-29T01:30"),
            span("2026-03-29T01:30", "2026-03-30T00:30"),
        ]
    );
    // A second backfill finds every interval covered.
    let stdout = ok(&home.cli(&[
        "backfill",
        "paris",
        "--from",
        "2026-03-27",
        "--to",
        "2026-03-30",
    ]));
    assert!(stdout.contains("backfilled 0 run(s)"), "{stdout}");
}
