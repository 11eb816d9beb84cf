//! `sluice-bench`: the benchmarks of BENCHMARKS.md, a program of its own on top
//! of the `sluice` library (nothing of it is in the library or in `sluice`).
//!
//! It times the `sluice` binary as a child process (case 1) and runs itself
//! again in its `baseline` mode for that case's DuckDB-only baseline.

mod cases;
mod kube;
mod metadb;
mod official;
mod web;

/// mimalloc, for Rust and (through its `override` feature) for DuckDB's C++:
/// glibc's malloc cost DuckDB 20-30% more CPU on the ETL (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

/// Measure the sandbox tax, start-up, host calls, scheduling and data out
/// (needs `sluice build` first; see BENCHMARKS.md).
#[derive(Parser)]
#[command(name = "sluice-bench")]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
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
    /// Only these cases (numbers as in BENCHMARKS.md, e.g. `--case 1,7`) [default: all].
    #[arg(long = "case", value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=10))]
    cases: Vec<u8>,
    /// No-op tries through the Kubernetes executor (case 10).
    #[arg(long, default_value_t = 1000)]
    kube_tries: usize,
    /// The repository holding examples/ and plugins/dist.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Also measure Postgres load and extract against `psql \copy` on this
    /// server (an Airflow-style URI; tables `sluice_bench` are created and dropped).
    #[arg(long)]
    postgres: Option<String>,
    /// The `sluice` executable to time in the sandbox-tax case [default: the
    /// `sluice` next to this program, as cargo builds them].
    #[arg(long)]
    sluice: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Mode {
    /// The sandbox-tax baseline: the ETL's SQL run directly by DuckDB (the
    /// benchmark runs this itself, as a fresh process).
    Baseline {
        #[arg(long)]
        rows: u64,
        #[arg(long)]
        threads: u32,
        #[arg(long)]
        memory: u64,
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(Mode::Baseline {
        rows,
        threads,
        memory,
        dir,
    }) = cli.mode
    {
        return cases::baseline_etl(&dir, rows, threads, memory)
            .map_err(|e| anyhow::anyhow!("baseline failed: {e}"));
    }
    let bench_exe = std::env::current_exe().context("cannot find the sluice-bench executable")?;
    let sluice_exe = match cli.sluice {
        Some(path) => path,
        None => {
            let sibling = bench_exe.with_file_name("sluice");
            anyhow::ensure!(
                sibling.is_file(),
                "no `sluice` executable at {}: build it (`cargo build --bin sluice`) or pass --sluice",
                sibling.display()
            );
            sibling
        }
    };
    let options = cases::BenchOptions {
        etl_rows: if cli.smoke { vec![10_000] } else { cli.rows },
        smoke: cli.smoke,
        repo: cli
            .repo
            .canonicalize()
            .with_context(|| format!("no repository at {}", cli.repo.display()))?,
        sluice_exe,
        bench_exe,
        postgres: cli.postgres,
        cases: cli.cases,
        kube_tries: cli.kube_tries,
    };
    cases::run(&options).map_err(|e| anyhow::anyhow!("bench failed: {e}"))
}
