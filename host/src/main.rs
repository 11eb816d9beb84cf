//! The `sluice` command line.

mod display;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::{Map, Value};

use sluice::Sluice;
use sluice::home::Home;
use sluice::manifest::Manifest;
use sluice::scheduler::{
    ClearScope, RunOptions, RunSummary, StagingPolicy, clear, resume_run, run_dag,
};
use sluice::state::RunState;
use sluice::store::VersionRecord;

/// Run data-pipeline tasks as sandboxed WebAssembly components.
#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    /// The Sluice home: metadatabase, components, compile cache, staging.
    #[arg(long, global = true, env = "SLUICE_HOME")]
    home: Option<PathBuf>,
    /// How long a failed run's staging directory is kept for clear and re-run.
    #[arg(long, global = true, env = "SLUICE_STAGING_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    staging_ttl: std::time::Duration,
    /// Run tasks even where the kernel cannot confine the host threads that open
    /// files for them (no Landlock): only WASI and DuckDB's own checks remain.
    #[arg(long, global = true, env = "SLUICE_ALLOW_UNCONFINED")]
    allow_unconfined: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile the plugins workspace to components in `<plugins>/dist`.
    Build {
        /// The plugins workspace.
        #[arg(long, default_value = "plugins")]
        plugins: PathBuf,
    },
    /// Store a DAG's components and record its version.
    Deploy {
        /// A manifest file or a directory holding `dag.toml`.
        dag: PathBuf,
        /// Sign the version with this key (see `sluice keys generate`).
        #[arg(long, value_name = "KEY")]
        sign: Option<String>,
    },
    /// Signing keys for deployments.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Which signing keys are trusted, and whether runs require a trusted signature.
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// List the deployed versions of a DAG.
    Versions {
        /// DAG id.
        dag_id: String,
    },
    /// Run a DAG: a manifest path (deployed first) or a deployed DAG id; or
    /// carry on a run whose host process died (`--resume <run>`).
    Run {
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
    },
    /// Inspect runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Measure the sandbox tax, start-up, host calls, scheduling and data out
    /// (needs `sluice build` first; see BENCHMARKS.md).
    Bench {
        /// Tiny sizes: checks that every case works, measures nothing useful.
        #[arg(long)]
        smoke: bool,
        /// Row counts for the sandbox-tax case.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "1000000,10000000,70000000"
        )]
        rows: Vec<u64>,
        /// The repository holding examples/ and plugins/dist.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// Also measure Postgres load and extract against `psql \copy` on this
        /// server (an Airflow-style URI; tables `sluice_bench` are created and dropped).
        #[arg(long)]
        postgres: Option<String>,
    },
    /// The sandbox-tax baseline: the ETL's SQL run directly by DuckDB.
    #[command(hide = true)]
    BenchBaseline {
        #[arg(long)]
        rows: u64,
        #[arg(long)]
        threads: u32,
        #[arg(long)]
        memory: u64,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Reset a task instance (and optionally its downstream or upstream) and
    /// re-run it in the same run, reusing what is staged; the run re-binds to
    /// the DAG's current version.
    Clear {
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
    },
    /// Create and run scheduled DAG runs until Ctrl-C (which lets running runs
    /// finish); resumes runs a stopped host left running.
    Scheduler {
        /// One pass: start what is due, wait for it, exit.
        #[arg(long)]
        once: bool,
    },
    /// Create and run the runs of a scheduled DAG for intervals starting between
    /// two dates, skipping intervals that already succeeded.
    Backfill {
        /// DAG id.
        dag_id: String,
        /// First interval start (2026-01-31, 2026-01-31T06:00:00, or RFC 3339; in the DAG's time zone).
        #[arg(long)]
        from: String,
        /// Last interval start, inclusive.
        #[arg(long)]
        to: String,
    },
    /// Managed connections: stored encrypted, never printed, never given to tasks.
    Connections {
        #[command(subcommand)]
        command: ConnectionsCommand,
    },
    /// Reclaim staging directories past their TTL, and orphans.
    Gc {
        /// List what would be reclaimed, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Staging directories and their audit trail.
    Staging {
        #[command(subcommand)]
        command: StagingCommand,
    },
    /// Print the log of a task instance.
    Logs {
        /// Run id.
        run_id: String,
        /// Task id.
        task_id: String,
        /// Only this try.
        #[arg(long = "try")]
        try_number: Option<u32>,
    },
}

#[derive(Subcommand)]
enum ConnectionsCommand {
    /// Add a connection from an Airflow-style URI, or an S3-compatible store from flags.
    Add {
        /// Connection id (what a DAG grants to a task).
        id: String,
        /// `postgresql://user:pw@host:5432/db?sslmode=...`, `s3://KEY:SECRET@bucket?endpoint_url=...`.
        #[arg(long, conflicts_with = "kind")]
        uri: Option<String>,
        /// `s3` to give the store's fields one by one.
        #[arg(long = "type", value_name = "TYPE", requires_all = ["bucket", "access_key_id"])]
        kind: Option<String>,
        /// S3 endpoint URL (none: AWS).
        #[arg(long)]
        endpoint: Option<String>,
        /// S3 region.
        #[arg(long, default_value = "us-east-1")]
        region: String,
        /// S3 bucket.
        #[arg(long)]
        bucket: Option<String>,
        /// S3 access key id.
        #[arg(long)]
        access_key_id: Option<String>,
        /// The environment variable holding the S3 secret key (kept out of shell history).
        #[arg(long, default_value = "SLUICE_S3_SECRET_KEY")]
        secret_key_env: String,
        /// Path-style addressing.
        #[arg(long)]
        path_style: bool,
        /// Overwrite an existing connection.
        #[arg(long)]
        replace: bool,
    },
    /// Every connection, without secrets.
    List,
    /// One connection, without its secret.
    Show {
        /// Connection id.
        id: String,
    },
    /// Delete a connection.
    Delete {
        /// Connection id.
        id: String,
    },
    /// Open a connection and report success or why not.
    Test {
        /// Connection id.
        id: String,
    },
    /// Re-encrypt every secret under a new master key.
    RotateKey,
    /// Import `AIRFLOW_CONN_*` variables from the environment (URI and JSON forms).
    ImportAirflow {
        /// Overwrite connections that exist.
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an ed25519 signing key in the Sluice home; prints its public key.
    Generate {
        /// Key name.
        name: String,
    },
}

#[derive(Subcommand)]
enum TrustCommand {
    /// Trust a public key (64 hex digits).
    Add {
        /// The public key.
        public_key: String,
        /// A name to show.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Stop trusting a public key.
    Remove {
        /// The public key.
        public_key: String,
    },
    /// Trusted keys and the policy.
    List,
    /// Require (on) or not (off) a trusted signature for every run.
    Require {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        setting: String,
    },
}

#[derive(Subcommand)]
enum StagingCommand {
    /// Every staging directory: state, kept until, deleted when and why.
    List,
}

#[derive(Subcommand)]
enum RunsCommand {
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("SLUICE_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn open(home: Option<PathBuf>) -> Result<Sluice> {
    let root = home.unwrap_or_else(Home::default_root);
    Ok(Sluice::open(&root)?)
}

/// Opens the home for a command that runs tasks: says on stderr how tasks are
/// confined, and refuses when they cannot be (no Landlock, no opt-out).
fn open_for_tasks(home: Option<PathBuf>, allow_unconfined: bool) -> Result<Sluice> {
    let mut sluice = open(home)?;
    sluice.sandbox = sluice.sandbox.allow_unconfined(allow_unconfined);
    eprintln!("{}", sluice.sandbox.describe());
    sluice.sandbox.check()?;
    Ok(sluice)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Build { plugins } => {
            let built = sluice::plugins::build_plugins(&plugins, false)?;
            for path in built {
                println!("built {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Deploy { dag, sign } => {
            let manifest = Manifest::load(&dag)?;
            let sluice = open(cli.home)?;
            let deployment = deploy(&sluice, &manifest)?;
            if let Some(key) = sign {
                let public = sluice::trust::sign(
                    &sluice.store,
                    sluice.home.root(),
                    &key,
                    &deployment.dag_id,
                    &deployment.version,
                )?;
                println!(
                    "signed {} {} with key `{key}` ({public})",
                    deployment.dag_id,
                    short(&deployment.version)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            command: KeysCommand::Generate { name },
        } => {
            let sluice = open(cli.home)?;
            let public = sluice::trust::generate(sluice.home.root(), &name)?;
            println!(
                "created key `{name}` at {}",
                sluice::trust::key_path(sluice.home.root(), &name).display()
            );
            println!("public key: {public}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Trust { command } => {
            let sluice = open(cli.home)?;
            match command {
                TrustCommand::Add { public_key, name } => {
                    sluice::trust::parse_public(&public_key)?;
                    sluice.store.trust_key(public_key.trim(), &name)?;
                    println!("trusted {}", public_key.trim());
                }
                TrustCommand::Remove { public_key } => {
                    if !sluice.store.distrust_key(public_key.trim())? {
                        bail!("`{}` is not trusted", public_key.trim());
                    }
                    println!("no longer trusted: {}", public_key.trim());
                }
                TrustCommand::List => {
                    let policy = if sluice.store.require_signatures()? {
                        "on"
                    } else {
                        "off"
                    };
                    println!("require signatures: {policy}");
                    for (key, name) in sluice.store.trusted_keys()? {
                        println!("{key} {name}");
                    }
                }
                TrustCommand::Require { setting } => {
                    sluice.store.set_require_signatures(setting == "on")?;
                    println!("require signatures: {setting}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Versions { dag_id } => {
            let sluice = open(cli.home)?;
            let versions = sluice.store.versions(&dag_id)?;
            if versions.is_empty() {
                bail!("DAG `{dag_id}` has not been deployed");
            }
            println!(
                "{:<1} {:<12} {:<24} {:<20} {:>5}  SOURCE",
                "", "VERSION", "LABEL", "DEPLOYED", "TASKS"
            );
            for v in versions {
                println!(
                    "{:<1} {:<12} {:<24} {:<20} {:>5}  {}",
                    if v.current { "*" } else { "" },
                    short(&v.digest),
                    v.label,
                    v.created_at.format("%Y-%m-%d %H:%M:%S"),
                    v.spec.tasks.len(),
                    v.source
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            dag,
            resume,
            keep_staging,
            params,
            build,
            logical_date,
            no_progress,
        } => {
            let sluice = open_for_tasks(cli.home, cli.allow_unconfined)?;
            let policy = StagingPolicy {
                keep: keep_staging,
                ttl: cli.staging_ttl,
            };
            let summary = if let Some(run_id) = resume {
                let record = sluice.store.run(&run_id)?;
                let version = sluice.store.version(&record.dag_id, &record.version)?;
                drive(&version.spec, no_progress, |tx| {
                    resume_run(&sluice, &run_id, policy, Some(tx))
                })?
            } else {
                let dag = dag.context("a DAG (manifest path or id) is required")?;
                let version = resolve_version(&sluice, &dag, build)?;
                let options = RunOptions {
                    params: params.into_iter().collect::<Map<_, _>>(),
                    logical_date,
                    staging: policy,
                    ..RunOptions::default()
                };
                drive(&version.spec, no_progress, |tx| {
                    run_dag(&sluice, &version, options, Some(tx))
                })?
            };
            print_run_result(&sluice, &summary.run_id, cli.staging_ttl)?;
            Ok(if summary.state == RunState::Success {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Clear {
            run_id,
            task_id,
            downstream,
            upstream,
            dry_run,
            no_progress,
        } => {
            let sluice = open_for_tasks(cli.home, cli.allow_unconfined)?;
            let cleared = clear(
                &sluice,
                &run_id,
                &task_id,
                ClearScope {
                    downstream,
                    upstream,
                },
                dry_run,
            )?;
            if dry_run {
                println!("would clear in run {run_id}: {}", cleared.join(", "));
                return Ok(ExitCode::SUCCESS);
            }
            let record = sluice.store.run(&run_id)?;
            println!(
                "cleared in run {run_id}: {} (now on version {})",
                cleared.join(", "),
                short(&record.version)
            );
            let version = sluice.store.version(&record.dag_id, &record.version)?;
            let policy = StagingPolicy {
                keep: false,
                ttl: cli.staging_ttl,
            };
            let summary = drive(&version.spec, no_progress, |tx| {
                resume_run(&sluice, &run_id, policy, Some(tx))
            })?;
            print_run_result(&sluice, &summary.run_id, cli.staging_ttl)?;
            Ok(if summary.state == RunState::Success {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Scheduler { once } => {
            let sluice = std::sync::Arc::new(open_for_tasks(cli.home, cli.allow_unconfined)?);
            let policy = StagingPolicy {
                keep: false,
                ttl: cli.staging_ttl,
            };
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let done = runtime.block_on(async {
                let shutdown = async {
                    let _ = tokio::signal::ctrl_c().await;
                    eprintln!("stopping: no new runs; waiting for running runs to finish");
                };
                sluice::daemon::serve(sluice.clone(), policy, once, shutdown).await
            })?;
            for run in &done {
                println!("{} {}", run.run_id, run.state);
            }
            println!("scheduler stopped after {} run(s)", done.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Backfill { dag_id, from, to } => {
            let sluice = std::sync::Arc::new(open_for_tasks(cli.home, cli.allow_unconfined)?);
            let version = sluice.store.current_version(&dag_id)?;
            let tz = version
                .spec
                .schedule
                .as_ref()
                .map_or("UTC", |s| s.timezone.as_str())
                .to_owned();
            let from =
                sluice::schedule::parse_start_date(&from, &tz).map_err(anyhow::Error::msg)?;
            let to = sluice::schedule::parse_start_date(&to, &tz).map_err(anyhow::Error::msg)?;
            let policy = StagingPolicy {
                keep: false,
                ttl: cli.staging_ttl,
            };
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let done = runtime.block_on(sluice::daemon::backfill(
                sluice.clone(),
                &dag_id,
                from,
                to,
                policy,
            ))?;
            for run in &done {
                println!("{} {}", run.run_id, run.state);
            }
            println!("backfilled {} run(s)", done.len());
            let failed = done.iter().any(|r| r.state != RunState::Success);
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Connections { command } => connections_command(cli.home, command),
        Command::Gc { dry_run } => {
            let sluice = open(cli.home)?;
            let now = chrono::Utc::now();
            let reclaimed =
                sluice::staging::sweep(&sluice.home, &sluice.store, cli.staging_ttl, now, dry_run)?;
            let verb = if dry_run {
                "would reclaim"
            } else {
                "reclaimed"
            };
            for r in &reclaimed {
                println!("{verb} {} ({}): {}", r.run_id, r.reason, r.path);
            }
            println!(
                "{verb} {} staging director{}",
                reclaimed.len(),
                if reclaimed.len() == 1 { "y" } else { "ies" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Staging {
            command: StagingCommand::List,
        } => {
            let sluice = open(cli.home)?;
            let ttl = chrono::Duration::from_std(cli.staging_ttl).unwrap_or(chrono::Duration::MAX);
            let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default()
            };
            println!(
                "{:<36} {:<9} {:<20} {:<20} {:<20} {:<14} PATH",
                "RUN", "STATE", "CREATED", "KEPT UNTIL", "DELETED", "REASON"
            );
            for v in sluice.store.volumes()? {
                println!(
                    "{:<36} {:<9} {:<20} {:<20} {:<20} {:<14} {}",
                    v.run_id,
                    v.state,
                    when(Some(v.created_at)),
                    when(v.released_at.map(|t| t + ttl)),
                    when(v.deleted_at),
                    v.delete_reason.as_deref().unwrap_or(""),
                    v.path
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs {
            command: RunsCommand::List { dag, limit },
        } => {
            let sluice = open(cli.home)?;
            println!(
                "{:<36} {:<20} {:<12} {:<8} {:<20} {:>10}",
                "RUN", "DAG", "VERSION", "STATE", "STARTED", "DURATION"
            );
            for r in sluice.store.runs(dag.as_deref(), limit)? {
                let duration = match (r.started_at, r.ended_at) {
                    (Some(s), Some(e)) => display::seconds((e - s).to_std().unwrap_or_default()),
                    _ => String::new(),
                };
                println!(
                    "{:<36} {:<20} {:<12} {:<8} {:<20} {:>10}",
                    r.run_id,
                    r.dag_id,
                    short(&r.version),
                    r.state,
                    r.started_at
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_default(),
                    duration
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs {
            command: RunsCommand::Show { run_id },
        } => {
            let sluice = open(cli.home)?;
            show_run(&sluice, &run_id)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            smoke,
            rows,
            repo,
            postgres,
        } => {
            let options = sluice::bench::BenchOptions {
                etl_rows: if smoke { vec![10_000] } else { rows },
                smoke,
                repo: repo
                    .canonicalize()
                    .with_context(|| format!("no repository at {}", repo.display()))?,
                sluice_exe: std::env::current_exe().context("cannot find the sluice executable")?,
                postgres,
            };
            sluice::bench::run(&options).map_err(|e| anyhow::anyhow!("bench failed: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchBaseline {
            rows,
            threads,
            memory,
            dir,
        } => {
            sluice::bench::baseline_etl(&dir, rows, threads, memory)
                .map_err(|e| anyhow::anyhow!("baseline failed: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            run_id,
            task_id,
            try_number,
        } => {
            let sluice = open(cli.home)?;
            let run = sluice.store.run(&run_id)?;
            if !sluice
                .store
                .tasks(&run.run_id)?
                .iter()
                .any(|t| t.task_id == task_id)
            {
                bail!("run `{run_id}` has no task `{task_id}`");
            }
            for line in sluice.store.logs(&run_id, &task_id, try_number)? {
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
    }
}

fn connections_command(home: Option<PathBuf>, command: ConnectionsCommand) -> Result<ExitCode> {
    use sluice::connections::{self, Connection, ConnectionConfig};
    let sluice = open(home)?;
    let vault = || sluice::vault::Vault::open(&sluice.store, sluice.home.root());
    match command {
        ConnectionsCommand::Add {
            id,
            uri,
            kind,
            endpoint,
            region,
            bucket,
            access_key_id,
            secret_key_env,
            path_style,
            replace,
        } => {
            let connection = match (uri, kind.as_deref()) {
                (Some(uri), _) => connections::from_uri(&id, &uri)?,
                (None, Some("s3")) => Connection {
                    id: id.clone(),
                    config: ConnectionConfig::S3 {
                        endpoint,
                        region,
                        bucket: bucket.unwrap_or_default(),
                        access_key_id: access_key_id.unwrap_or_default(),
                        path_style,
                    },
                    secret: std::env::var(&secret_key_env)
                        .with_context(|| format!("set the S3 secret key in ${secret_key_env}"))?,
                    allow_privileged: false,
                },
                (None, Some(other)) => {
                    bail!("unsupported --type `{other}`: use --uri for postgres, --type s3 for S3")
                }
                (None, None) => bail!("give --uri or --type s3"),
            };
            connections::add(&sluice.store, &vault()?, &connection, replace)?;
            println!("added {}: {}", connection.id, connection.config.describe());
            if let ConnectionConfig::Postgres { .. } = connection.config {
                // Say now, not at a task's first open, when the role is privileged.
                let runtime =
                    tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
                match runtime.block_on(sluice::capabilities::postgres::test_connection(&connection))
                {
                    Ok(report) => {
                        println!("checked {}: {report}", connection.id);
                        warn_if_privileged(&connection.id, &report.privileges);
                    }
                    Err(why) => eprintln!(
                        "note: connection `{}` was added but its role's privileges could not be checked ({why}); \
                         run `sluice connections test {}` once the server is reachable",
                        connection.id, connection.id
                    ),
                }
            }
        }
        ConnectionsCommand::List => {
            println!("{:<24} {:<9} WHERE", "ID", "TYPE");
            for (id, config) in connections::list(&sluice.store)? {
                println!("{id:<24} {:<9} {}", config.kind(), config.describe());
            }
        }
        ConnectionsCommand::Show { id } => {
            let connection = connections::get(&sluice.store, &vault()?, &id)?;
            println!("id       {}", connection.id);
            match &connection.config {
                ConnectionConfig::Postgres {
                    host,
                    port,
                    database,
                    user,
                    extras,
                } => {
                    println!(
                        "type     postgres\nhost     {host}\nport     {port}\ndatabase {database}\nuser     {user}"
                    );
                    println!(
                        "password {}",
                        if connection.secret.is_empty() {
                            "(none)"
                        } else {
                            "***"
                        }
                    );
                    for (k, v) in extras {
                        println!("extra    {k}={v}");
                    }
                }
                ConnectionConfig::S3 {
                    endpoint,
                    region,
                    bucket,
                    access_key_id,
                    path_style,
                } => {
                    println!(
                        "type     s3\nendpoint {}\nregion   {region}",
                        endpoint.as_deref().unwrap_or("AWS")
                    );
                    println!(
                        "bucket   {bucket}\nkey id   {access_key_id}\nsecret   ***\npath     {path_style}"
                    );
                }
            }
        }
        ConnectionsCommand::Delete { id } => {
            if !sluice.store.delete_connection(&id)? {
                bail!("no connection `{id}`");
            }
            println!("deleted {id}");
        }
        ConnectionsCommand::Test { id } => {
            let connection = connections::get(&sluice.store, &vault()?, &id)?;
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let tested = runtime.block_on(async {
                match connection.config {
                    ConnectionConfig::Postgres { .. } => {
                        sluice::capabilities::postgres::test_connection(&connection)
                            .await
                            .map(|report| {
                                warn_if_privileged(&id, &report.privileges);
                                report.to_string()
                            })
                    }
                    ConnectionConfig::S3 { .. } => {
                        sluice::capabilities::bucket::test_connection(&connection).await
                    }
                }
            });
            match tested {
                Ok(what) => println!("ok: {id}: {what}"),
                Err(why) => {
                    eprintln!("error: connection `{id}`: {why}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        ConnectionsCommand::RotateKey => {
            let from_env = std::env::var_os(sluice::vault::KEY_ENV).is_some();
            let key = vault()?.rotate(&sluice.store, sluice.home.root())?;
            if from_env {
                println!(
                    "re-encrypted every connection; set {} to the new key:\n{key}",
                    sluice::vault::KEY_ENV
                );
            } else {
                println!(
                    "re-encrypted every connection; the new key is in {}",
                    sluice.home.root().join(sluice::vault::KEY_FILE).display()
                );
            }
        }
        ConnectionsCommand::ImportAirflow { replace } => {
            let vault = vault()?;
            let mut failed = false;
            for found in connections::from_airflow_env(std::env::vars()) {
                match found
                    .and_then(|c| connections::add(&sluice.store, &vault, &c, replace).map(|()| c))
                {
                    Ok(c) => println!("imported {}: {}", c.id, c.config.describe()),
                    Err(e) => {
                        failed = true;
                        eprintln!("error: {e}");
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Warns (stderr) that connection `id`'s role holds powers a task needs an opt-in for.
fn warn_if_privileged(id: &str, privileges: &sluice::capabilities::postgres::RolePrivileges) {
    if privileges.is_privileged() {
        eprintln!(
            "warning: connection `{id}`: {}; {}",
            privileges.describe(),
            sluice::capabilities::postgres::privileged_opt_in_hint(id)
        );
    }
}

/// Runs `start` on a new async runtime with the live display attached.
fn drive<F, Fut>(spec: &sluice::dag::DagSpec, no_progress: bool, start: F) -> Result<RunSummary>
where
    F: FnOnce(tokio::sync::mpsc::UnboundedSender<sluice::events::RunEvent>) -> Fut,
    Fut: std::future::Future<Output = Result<RunSummary, sluice::scheduler::RunError>>,
{
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    Ok(runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let display = display::spawn(spec, rx, no_progress);
        let summary = start(tx).await;
        let _ = display.await;
        summary
    })?)
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn deploy(sluice: &Sluice, manifest: &Manifest) -> Result<sluice::registry::Deployment> {
    let d = sluice::registry::deploy(&sluice.home, &sluice.store, &sluice.engine, manifest)?;
    let what = if d.new_version {
        "new version"
    } else {
        "unchanged"
    };
    let compiled = if d.compiled.is_empty() {
        "nothing compiled".to_owned()
    } else {
        format!("compiled {}", d.compiled.join(", "))
    };
    println!(
        "deployed {} {} ({}) — {what}, {compiled}",
        d.dag_id,
        short(&d.version),
        d.label
    );
    Ok(d)
}

/// A path is loaded and deployed; anything else is a deployed DAG id.
fn resolve_version(sluice: &Sluice, dag: &str, build: bool) -> Result<VersionRecord> {
    let path = Path::new(dag);
    if !path.exists() {
        if build {
            bail!("--build needs a manifest path; `{dag}` is not one");
        }
        return Ok(sluice.store.current_version(dag)?);
    }
    let manifest = Manifest::load(path)?;
    if build {
        let workspace = manifest
            .plugin_dir
            .parent()
            .filter(|p| p.join("Cargo.toml").is_file())
            .with_context(|| {
                format!(
                    "no plugins workspace (Cargo.toml) next to {}",
                    manifest.plugin_dir.display()
                )
            })?;
        eprintln!("building {}", workspace.display());
        sluice::plugins::build_plugins(workspace, false)?;
    }
    let deployment = deploy(sluice, &manifest)?;
    Ok(sluice
        .store
        .version(&deployment.dag_id, &deployment.version)?)
}

fn print_run_result(sluice: &Sluice, run_id: &str, ttl: std::time::Duration) -> Result<()> {
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    let run = sluice.store.run(run_id)?;
    let version = sluice.store.version(&run.dag_id, &run.version)?;
    let tasks = sluice.store.tasks(run_id)?;
    let duration = match (run.started_at, run.ended_at) {
        (Some(s), Some(e)) => display::seconds((e - s).to_std().unwrap_or_default()),
        _ => String::new(),
    };
    println!("run {} {} in {duration}", run.run_id, run.state);
    match sluice.store.volume(run_id)? {
        Some(v) if v.state == sluice::state::VolumeState::Deleted => println!(
            "staging: {} (deleted: {}; `--keep-staging` keeps it)",
            run.staging_dir,
            v.delete_reason.as_deref().unwrap_or("")
        ),
        Some(v) => println!(
            "staging: {} (kept until {})",
            run.staging_dir,
            v.released_at
                .map(|t| (t + ttl).to_rfc3339())
                .unwrap_or_else(|| "the run ends".into())
        ),
        None => println!("staging: {}", run.staging_dir),
    }
    let has_downstream: std::collections::HashSet<&str> = version
        .spec
        .tasks
        .iter()
        .flat_map(|t| t.after.iter().map(String::as_str))
        .collect();
    for task in tasks
        .iter()
        .filter(|t| !has_downstream.contains(t.task_id.as_str()))
    {
        match (&task.output, &task.error) {
            (Some(output), _) => println!("result of {}: {output}", task.task_id),
            (None, Some(error)) => println!("{} {}: {error}", task.task_id, task.state),
            (None, None) => println!("{} {}", task.task_id, task.state),
        }
    }
    if let Some(error) = &run.error {
        println!("error: {error}");
    }
    Ok(())
}

fn show_run(sluice: &Sluice, run_id: &str) -> Result<()> {
    let run = sluice.store.run(run_id)?;
    let version = sluice.store.version(&run.dag_id, &run.version)?;
    println!("run      {}", run.run_id);
    println!("dag      {}", run.dag_id);
    println!("version  {} ({})", run.version, version.label);
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
    let sandboxes = sluice.store.run_sandboxes(run_id)?;
    if !sandboxes.is_empty() {
        println!("sandbox  {}", sandboxes.join(", "));
    }
    if let Some(error) = &run.error {
        println!("error    {error}");
    }
    println!();
    println!(
        "{:<20} {:<16} {:>5} {:>10}  {:<12}  DETAIL",
        "TASK", "STATE", "TRY", "DURATION", "COMPONENT"
    );
    for t in sluice.store.tasks(run_id)? {
        let detail = t.error.as_deref().or(t.output.as_deref()).unwrap_or("");
        println!(
            "{:<20} {:<16} {:>5} {:>10}  {:<12}  {}",
            t.task_id,
            t.state,
            format!("{}/{}", t.try_number, t.max_tries),
            t.duration.map(display::seconds).unwrap_or_default(),
            short(&t.component),
            detail
        );
    }
    Ok(())
}
