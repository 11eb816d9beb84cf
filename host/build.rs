//! Links every binary of this package (the `sluice` and `sluice-bench`
//! executables, the test binaries) so that the `duckdb` crate's calls to
//! DuckDB's two statement-executing functions reach `duckdb_wait`, which runs
//! them without a spinning thread (see `src/duckdb_wait.rs`).

fn main() {
    // The arguments depend on nothing else: without this, cargo would run
    // the script again whenever any file of the package changes.
    println!("cargo::rerun-if-changed=build.rs");
    for function in [
        "duckdb_execute_prepared",
        "duckdb_execute_prepared_streaming",
    ] {
        println!("cargo::rustc-link-arg=-Wl,--wrap={function}");
    }
}
