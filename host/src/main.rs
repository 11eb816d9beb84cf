//! The `sluice` command line: parses arguments, calls the application layer
//! ([`sluice::app`]) and formats what it returns (see the [`cli`] modules).

mod cli;
mod display;

/// mimalloc, for Rust and (through its `override` feature) for DuckDB's C++:
/// glibc's malloc cost DuckDB 20-30% more CPU on the ETL (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use cli::connections::ConnectionsCommand;
use cli::runs::{ClearArgs, RunArgs, RunsCommand};
use cli::serve::TokensCommand;
use cli::staging::StagingCommand;
use cli::trust::{KeysCommand, TrustCommand};
use sluice::app::{App, AppConfig};
use sluice::home::Home;

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
    /// Where tries run: `process` (a worker process per try, killed if it
    /// overruns its timeout) or `local` (threads of this process).
    #[arg(
        long,
        global = true,
        env = "SLUICE_EXECUTOR",
        default_value = "process"
    )]
    executor: ExecutorChoice,
    #[command(flatten)]
    kubernetes: cli::kubernetes::KubeArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where tries run.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ExecutorChoice {
    /// A `sluice worker` child process per try.
    Process,
    /// Threads of this process.
    Local,
    /// A Kubernetes Job per try (needs `--namespace` and `--image`).
    Kubernetes,
}

#[derive(Subcommand)]
enum Command {
    /// Run one try handed over on stdin (started by the process executor), or
    /// fetched from the host endpoint (in a Kubernetes pod).
    #[command(hide = true)]
    Worker(cli::kubernetes::WorkerArgs),
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
    Run(RunArgs),
    /// Inspect runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Reset a task instance (and optionally its downstream or upstream) and
    /// re-run it in the same run, reusing what is staged; the run re-binds to
    /// the DAG's current version.
    Clear(ClearArgs),
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
    /// Serve the JSON API (OpenAPI at /api/openapi.json) and the web UI
    /// until Ctrl-C; a non-loopback address requires API tokens.
    Serve {
        /// Address to listen on (port 0: any free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: std::net::SocketAddr,
        /// Also run the scheduler loop in this process.
        #[arg(long)]
        scheduler: bool,
        /// Require API tokens even on a loopback address (other local users).
        #[arg(long)]
        require_tokens: bool,
    },
    /// API tokens for `sluice serve` on a non-loopback address.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("SLUICE_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .and_then(|runtime| run(cli, &runtime));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Carries out `cli`'s command; `runtime` is the process's one async runtime.
fn run(cli: Cli, runtime: &tokio::runtime::Runtime) -> Result<ExitCode> {
    let worker = matches!(cli.command, Command::Worker(_));
    let workers = match (cli.executor, worker) {
        // A worker runs its try in itself.
        (_, true) | (ExecutorChoice::Local | ExecutorChoice::Kubernetes, _) => None,
        (ExecutorChoice::Process, false) => {
            Some(std::env::current_exe().context("cannot find the sluice executable")?)
        }
    };
    let kubernetes = match (cli.executor, worker) {
        (ExecutorChoice::Kubernetes, false) => Some(cli.kubernetes.settings()?),
        _ => None,
    };
    let config = AppConfig {
        home: cli.home.unwrap_or_else(Home::default_root),
        staging_ttl: cli.staging_ttl,
        allow_unconfined: cli.allow_unconfined,
        workers,
        worker,
        kubernetes,
    };
    let open = || App::open(&config);
    match cli.command {
        Command::Worker(args) => {
            let app = open()?;
            let open_database_ahead = args.open_database_ahead();
            match args.pod_try()? {
                Some(pod) => runtime.block_on(app.serve_pod_worker(pod))?,
                None => runtime.block_on(app.serve_worker(open_database_ahead))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Build { plugins } => cli::deploy::build(&plugins),
        Command::Deploy { dag, sign } => cli::deploy::deploy(&open()?, &dag, sign.as_deref()),
        Command::Keys { command } => cli::trust::keys(&open()?, command),
        Command::Trust { command } => cli::trust::trust(&open()?, command),
        Command::Versions { dag_id } => cli::deploy::versions(&open()?, &dag_id),
        Command::Run(args) => cli::runs::run(&cli::open_for_tasks(&config)?, runtime, args),
        Command::Clear(args) => cli::runs::clear(&cli::open_for_tasks(&config)?, runtime, args),
        Command::Runs { command } => cli::runs::runs(&open()?, command),
        Command::Logs {
            run_id,
            task_id,
            try_number,
        } => cli::runs::logs(&open()?, &run_id, &task_id, try_number),
        Command::Scheduler { once } => {
            cli::schedules::scheduler(&cli::open_for_tasks(&config)?, runtime, once)
        }
        Command::Backfill { dag_id, from, to } => {
            let app = cli::open_for_tasks(&config)?;
            cli::schedules::backfill(&app, runtime, &dag_id, &from, &to)
        }
        Command::Connections { command } => cli::connections::run(&open()?, runtime, command),
        Command::Serve {
            bind,
            scheduler,
            require_tokens,
        } => cli::serve::serve(&open()?, runtime, bind, require_tokens, scheduler),
        Command::Tokens { command } => cli::serve::tokens(&open()?, command),
        Command::Gc { dry_run } => cli::staging::gc(&open()?, runtime, dry_run),
        Command::Staging { command } => cli::staging::run(&open()?, command),
    }
}
