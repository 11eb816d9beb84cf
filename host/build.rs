//! Links every binary of this package (the `sluice` and `sluice-bench`
//! executables, the test binaries) so that the `duckdb` crate's calls to
//! DuckDB's two statement-executing functions reach `duckdb_wait`, which runs
//! them without a spinning thread (see `src/duckdb_wait.rs`).

fn main() {
    for function in [
        "duckdb_execute_prepared",
        "duckdb_execute_prepared_streaming",
    ] {
        println!("cargo::rustc-link-arg=-Wl,--wrap={function}");
    }
}
