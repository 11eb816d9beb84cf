//! Writes the aggregate to `output.csv` in the run's staging directory.

use serde::{Deserialize, Serialize};
use sluice_sdk::{Context, Input, Result, sql_literal};

#[derive(Deserialize)]
struct Params {}

#[derive(Deserialize)]
struct Transformed {
    file: String,
}

#[derive(Serialize)]
struct Output {
    rows: u64,
    file: String,
}

fn run(ctx: &Context, input: Input<Params>) -> Result<Output> {
    let agg: Transformed = input.upstream("transform")?;
    let file = ctx.staging_path("output.csv");
    let rows = ctx.sql().execute(&format!(
        "COPY (SELECT * FROM read_parquet({}) ORDER BY category) TO {} (HEADER)",
        sql_literal(&ctx.staging_path(&agg.file)),
        sql_literal(&file),
    ))?;
    ctx.info(format!("loaded {rows} rows into {file}"));
    Ok(Output { rows, file })
}

sluice_sdk::task!(run);
