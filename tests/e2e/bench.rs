//! `sluice-bench --smoke` keeps every benchmark case compiling and working.
//! It asserts that each case reported its figures, never how fast they were.

use std::process::Command;

use crate::support::{CHILD_DEADLINE, output_within, plugins_dist, repo_root, text};

#[test]
fn every_benchmark_case_runs_in_smoke_mode() {
    plugins_dist();
    let repo = repo_root().canonicalize().expect("repo");
    let pg = crate::pg::server().uri();
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
            .args(["--smoke", "--postgres", &pg])
            .arg("--repo")
            .arg(&repo)
            .args(["--sluice", env!("CARGO_BIN_EXE_sluice")]),
        CHILD_DEADLINE,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "bench failed\n{stdout}\n{stderr}");
    for heading in [
        "1. sandbox tax",
        "2. start-up",
        "3. host call cost",
        "4. scheduling overhead",
        "5. data out",
        "6. Postgres",
        "7. metadatabase: 1000 runs x 10 task instances",
        "  runs list --limit 50",
        "  staging sweep reads",
        "8. Python tasks",
        "9. web UI and HTTP API: 1000 runs x 10 task instances over 10 DAGs, real server on 127.0.0.1",
        "  GET /api/dags/dag0/grid?limit=25 ",
        "  GET /api/runs?limit=50 ",
        "  GET /api/runs?limit=50&offset=950 ",
        "  GET /api/runs?state=success&limit=50 ",
        "  first page load: ",
        " /ui/app.js ",
        " /api/dags ",
        "10. Kubernetes executor, fake API server: 3 no-op tries",
        "    Job created -> outcome stored, per try: median ",
        "    API requests: ",
    ] {
        assert!(
            stdout.contains(heading),
            "missing `{heading}` in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("components compiled: 0, new version: false"),
        "{stdout}"
    );
    // Ratios such as `1.013x`: case 1 (one per size), case 5, and case 6's two.
    let ratios = stdout
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(';').strip_suffix('x'))
        .filter_map(|n| n.parse::<f64>().ok())
        .filter(|r| r.is_finite() && *r > 0.0)
        .count();
    assert!(ratios >= 4, "{ratios} ratios printed: {stdout}");
}
