//! `sluice run`, `clear`, `runs list|show` and `logs`.

use std::future::Future;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::Value;
use tokio::runtime::Runtime;

use super::{exit_code, short};
use crate::display::{self, seconds};
use sluice::app::App;
use sluice::app::AppError;
use sluice::app::deploy::DeployStep;
use sluice::app::runs::{FinishedRun, Observer, RunRequest, RunResult, StagingStatus};
use sluice::dag::DagSpec;
use sluice::scheduler::ClearScope;

/// The arguments of `sluice run`.
#[derive(Args)]
pub struct RunArgs {
    /// Manifest path or DAG id.
    #[arg(required_unless_present = "resume", conflicts_with = "resume")]
    dag: Option<String>,
    /// Resume this run: tries left running count as failed; what succeeded is reused.
    #[arg(long, value_name = "RUN")]
    resume: Option<String>,
    /// Keep the staging directory (for the TTL) even if the run succeeds.
    #[arg(long)]
    keep_staging: bool,
    /// A run param, `key=value` (value parsed as JSON when it is JSON).
    #[arg(long = "param", short = 'p', value_parser = parse_param)]
    params: Vec<(String, Value)>,
    /// Build the plugins workspace next to the manifest's plugin directory first.
    #[arg(long)]
    build: bool,
    /// The run's logical date (RFC 3339; default now).
    #[arg(long)]
    logical_date: Option<chrono::DateTime<chrono::Utc>>,
    /// Print plain state changes instead of the live display.
    #[arg(long)]
    no_progress: bool,
}

/// The arguments of `sluice clear`.
#[derive(Args)]
pub struct ClearArgs {
    /// Run id.
    run_id: String,
    /// Task id.
    task_id: String,
    /// Also clear every task downstream.
    #[arg(long)]
    downstream: bool,
    /// Also clear every task upstream.
    #[arg(long)]
    upstream: bool,
    /// List what would be cleared, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print plain state changes instead of the live display.
    #[arg(long)]
    no_progress: bool,
}

/// `sluice runs`.
#[derive(Subcommand)]
pub enum RunsCommand {
    /// Recent runs, newest first.
    List {
        /// Only runs of this DAG.
        #[arg(long)]
        dag: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One run and its task instances.
    Show {
        /// Run id.
        run_id: String,
    },
}

fn parse_param(text: &str) -> Result<(String, Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not key=value"))?;
    if key.is_empty() {
        return Err(format!("`{text}` has an empty key"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

/// Prints what a deployment on the way to a run does.
pub fn print_step(step: DeployStep<'_>) {
    match step {
        DeployStep::Building(workspace) => eprintln!("building {}", workspace.display()),
        DeployStep::Deployed(d) => super::deploy::print_deployed(d),
    }
}

/// Runs what `start` starts on `runtime`, with the live display of `spec`'s tasks.
fn drive<F, Fut>(
    runtime: &Runtime,
    spec: &DagSpec,
    no_progress: bool,
    start: F,
) -> Result<FinishedRun>
where
    F: FnOnce(Observer) -> Fut,
    Fut: Future<Output = Result<FinishedRun, AppError>>,
{
    Ok(runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let display = display::spawn(spec, rx, no_progress);
        let finished = start(Some(tx)).await;
        if let Err(e) = display.await {
            tracing::warn!("the progress display failed: {e}");
        }
        finished
    })?)
}

/// `sluice run`: exit 1 if the run failed.
pub fn run(app: &App, runtime: &Runtime, args: RunArgs) -> Result<ExitCode> {
    let finished = if let Some(run_id) = args.resume {
        let version = app.run_version(&run_id)?;
        drive(runtime, &version.spec, args.no_progress, |tx| {
            app.resume_run(&run_id, args.keep_staging, tx)
        })?
    } else {
        let dag = args
            .dag
            .context("a DAG (manifest path or id) is required")?;
        let version = app.version_to_run(&dag, args.build, &mut print_step)?;
        let request = RunRequest {
            params: args.params.into_iter().collect(),
            logical_date: args.logical_date,
            keep_staging: args.keep_staging,
        };
        drive(runtime, &version.spec, args.no_progress, |tx| {
            app.trigger_run(&version, request, tx)
        })?
    };
    print_result(&app.run_result(&finished.run_id)?);
    Ok(exit_code([finished.state]))
}

/// `sluice clear`: clears, then carries the run on; exit 1 if it failed.
pub fn clear(app: &App, runtime: &Runtime, args: ClearArgs) -> Result<ExitCode> {
    let scope = ClearScope {
        downstream: args.downstream,
        upstream: args.upstream,
    };
    let run_id = &args.run_id;
    let cleared = app.clear(run_id, &args.task_id, scope, args.dry_run)?;
    if args.dry_run {
        println!("would clear in run {run_id}: {}", cleared.join(", "));
        return Ok(ExitCode::SUCCESS);
    }
    let version = app.run_version(run_id)?;
    println!(
        "cleared in run {run_id}: {} (now on version {})",
        cleared.join(", "),
        short(&version.digest)
    );
    let finished = drive(runtime, &version.spec, args.no_progress, |tx| {
        app.resume_run(run_id, false, tx)
    })?;
    print_result(&app.run_result(&finished.run_id)?);
    Ok(exit_code([finished.state]))
}

fn print_result(result: &RunResult) {
    let run = &result.run;
    let duration = run.duration.map(seconds).unwrap_or_default();
    println!("run {} {} in {duration}", run.run_id, run.state);
    match &result.staging {
        StagingStatus::Deleted { reason } => println!(
            "staging: {} (deleted: {}; `--keep-staging` keeps it)",
            run.staging_dir,
            reason.as_deref().unwrap_or("")
        ),
        StagingStatus::Kept { until } => println!(
            "staging: {} (kept until {})",
            run.staging_dir,
            until.map_or_else(|| "the run ends".into(), |t| t.to_rfc3339())
        ),
        StagingStatus::Unrecorded => println!("staging: {}", run.staging_dir),
    }
    for task in &result.leaves {
        match (&task.output, &task.error) {
            (Some(output), _) => println!("result of {}: {output}", task.task_id),
            (None, Some(error)) => println!("{} {}: {error}", task.task_id, task.state),
            (None, None) => println!("{} {}", task.task_id, task.state),
        }
    }
    if let Some(error) = &run.error {
        println!("error: {error}");
    }
}

/// `sluice runs list|show`.
pub fn runs(app: &App, command: RunsCommand) -> Result<ExitCode> {
    match command {
        RunsCommand::List { dag, limit } => {
            println!(
                "{:<36} {:<20} {:<12} {:<8} {:<20} {:>10}",
                "RUN", "DAG", "VERSION", "STATE", "STARTED", "DURATION"
            );
            for r in app.list_runs(dag.as_deref(), limit)? {
                println!(
                    "{:<36} {:<20} {:<12} {:<8} {:<20} {:>10}",
                    r.run_id,
                    r.dag_id,
                    short(&r.version),
                    r.state,
                    super::when(r.started_at),
                    r.duration.map(seconds).unwrap_or_default()
                );
            }
        }
        RunsCommand::Show { run_id } => show(app, &run_id)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn show(app: &App, run_id: &str) -> Result<()> {
    let detail = app.show_run(run_id)?;
    let run = &detail.run;
    println!("run      {}", run.run_id);
    println!("dag      {}", run.dag_id);
    println!("version  {} ({})", run.version, detail.version_label);
    println!("state    {}", run.state);
    println!("type     {}", run.run_type);
    println!("logical  {}", run.logical_date.to_rfc3339());
    println!(
        "interval {} .. {}",
        run.interval_start.to_rfc3339(),
        run.interval_end.to_rfc3339()
    );
    if let Some(t) = run.started_at {
        println!("started  {}", t.to_rfc3339());
    }
    if let Some(t) = run.ended_at {
        println!("ended    {}", t.to_rfc3339());
    }
    println!("params   {}", run.params);
    println!("staging  {}", run.staging_dir);
    if !detail.sandboxes.is_empty() {
        println!("sandbox  {}", detail.sandboxes.join(", "));
    }
    if let Some(error) = &run.error {
        println!("error    {error}");
    }
    println!();
    println!(
        "{:<20} {:<16} {:>5} {:>10}  {:<12}  DETAIL",
        "TASK", "STATE", "TRY", "DURATION", "COMPONENT"
    );
    for t in &detail.tasks {
        let detail = t.error.as_deref().or(t.output.as_deref()).unwrap_or("");
        println!(
            "{:<20} {:<16} {:>5} {:>10}  {:<12}  {}",
            t.task_id,
            t.state,
            format!("{}/{}", t.try_number, t.max_tries),
            t.duration.map(seconds).unwrap_or_default(),
            short(&t.component),
            detail
        );
    }
    Ok(())
}

/// `sluice logs`.
pub fn logs(app: &App, run_id: &str, task_id: &str, try_number: Option<u32>) -> Result<ExitCode> {
    for line in app.logs(run_id, task_id, try_number)? {
        println!(
            "{} try {} {:<5} {}",
            line.ts.format("%H:%M:%S%.3f"),
            line.try_number,
            line.level,
            line.message
        );
    }
    Ok(ExitCode::SUCCESS)
}
