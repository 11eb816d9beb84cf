//! `sluice scheduler` and `sluice backfill`.

use std::process::ExitCode;

use anyhow::Result;
use tokio::runtime::Runtime;

use super::exit_code;
use sluice::app::App;

/// `sluice scheduler [--once]`: until Ctrl-C, which lets running runs finish.
pub fn scheduler(app: &App, runtime: &Runtime, once: bool) -> Result<ExitCode> {
    let shutdown = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {e}");
        }
        eprintln!("stopping: no new runs; waiting for running runs to finish");
    };
    let done = runtime.block_on(app.scheduler(once, shutdown))?;
    for run in &done {
        println!("{} {}", run.run_id, run.state);
    }
    println!("scheduler stopped after {} run(s)", done.len());
    Ok(ExitCode::SUCCESS)
}

/// `sluice backfill`: exit 1 if a run failed.
pub fn backfill(
    app: &App,
    runtime: &Runtime,
    dag_id: &str,
    from: &str,
    to: &str,
) -> Result<ExitCode> {
    let done = runtime.block_on(app.backfill(dag_id, from, to))?;
    for run in &done {
        println!("{} {}", run.run_id, run.state);
    }
    println!("backfilled {} run(s)", done.len());
    Ok(exit_code(done.iter().map(|r| r.state)))
}
