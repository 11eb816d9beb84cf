//! Prints the metadatabase benchmark's figures (`sluice_core::store::bench`):
//! `cargo run --release -p sluice-core --features bench --example metadb_bench [RUNS]`.

use std::process::ExitCode;

use sluice_core::store::bench::{self, Shape};

fn main() -> ExitCode {
    let mut shape = Shape::default();
    if let Some(runs) = std::env::args().nth(1) {
        match runs.parse() {
            Ok(runs) => shape.runs = runs,
            Err(e) => {
                eprintln!("metadb_bench: `{runs}` is not a number of runs: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("metadb_bench: cannot make a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    match bench::metadb(dir.path(), shape) {
        Ok(figures) => {
            println!("{figures}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("metadb_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
