//! The example ETL end to end, through the CLI, checked against DuckDB directly.

use crate::support::{TestHome, text};

#[test]
fn etl_example_runs_and_its_aggregate_is_exact() {
    let home = TestHome::new();
    let rows: i64 = 200_000;
    let out = home.cli_env(
        &[
            "run",
            "examples/etl_local",
            "--param",
            &format!("rows={rows}"),
            "--no-progress",
            "--keep-staging",
        ],
        &[("SLUICE_LOG", "sluice::executor=debug")],
    );
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "run failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("result of load:"), "{stdout}");
    // Each task after the first ran in a worker started while the one
    // before it ran.
    let ahead =
        |task: &str| stderr.contains(&format!("task `{task}` runs in a worker started ahead"));
    assert!(
        !ahead("extract") && ahead("transform") && ahead("load"),
        "{stderr}"
    );

    let run = home
        .sluice
        .store
        .runs(Some("etl_local"), 1)
        .expect("runs")
        .remove(0);
    assert_eq!(run.state.as_str(), "success");
    let staging = std::path::PathBuf::from(&run.staging_dir);
    assert!(
        stdout.contains(&run.staging_dir),
        "prints where the result is: {stdout}"
    );
    assert_eq!(home.output(&run.run_id, "extract")["rows"], rows);
    assert_eq!(home.output(&run.run_id, "load")["rows"], 50);

    // Recompute independently from the raw data the extract task wrote.
    let db = duckdb::Connection::open_in_memory().expect("duckdb");
    let raw = staging.join("raw.parquet");
    let csv = staging.join("output.csv");
    let (expected_n, expected_revenue): (i64, String) = db
        .query_row(
            &format!(
                "SELECT count(*), sum(amount)::VARCHAR FROM read_parquet('{}')",
                raw.display()
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("direct aggregate");
    assert_eq!(expected_n, rows);
    let (categories, n, revenue, mismatches): (i64, i64, String, i64) = db
        .query_row(
            &format!(
                "WITH loaded AS (SELECT * FROM read_csv('{csv}', header = true, \
                     columns = {{'category': 'VARCHAR', 'n': 'BIGINT', 'revenue': 'DECIMAL(38,2)'}})),
                 direct AS (SELECT category, count(*) AS n, sum(amount) AS revenue
                            FROM read_parquet('{raw}') GROUP BY category)
                 SELECT (SELECT count(*) FROM loaded), (SELECT sum(n) FROM loaded)::BIGINT,
                        (SELECT sum(revenue) FROM loaded)::VARCHAR,
                        (SELECT count(*) FROM loaded l FULL JOIN direct d USING (category)
                         WHERE l.n IS DISTINCT FROM d.n OR l.revenue IS DISTINCT FROM d.revenue)",
                csv = csv.display(),
                raw = raw.display()
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .expect("compare");
    assert_eq!(categories, 50);
    assert_eq!(n, rows);
    assert_eq!(revenue, expected_revenue);
    assert_eq!(
        mismatches, 0,
        "every category's n and revenue match the direct computation"
    );

    // The run shows in `runs list` and `runs show` with its version.
    let (list, _) = text(&home.cli(&["runs", "list"]));
    assert!(list.contains(&run.run_id), "{list}");
    let (show, _) = text(&home.cli(&["runs", "show", &run.run_id]));
    assert!(show.contains(&run.version), "{show}");
    assert!(show.contains("success"), "{show}");
    let (logs, _) = text(&home.cli(&["logs", &run.run_id, "extract"]));
    assert!(logs.contains(&format!("wrote {rows} rows")), "{logs}");
}
