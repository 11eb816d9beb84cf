//! Generates the seed data set: `rows` rows of (id, category, amount) into
//! `raw.parquet` in the run's staging directory.

use serde::{Deserialize, Serialize};
use sluice_sdk::{Context, Input, Result, sql_literal};

#[derive(Deserialize)]
struct Params {
    #[serde(default = "default_rows")]
    rows: u64,
}

fn default_rows() -> u64 {
    70_000_000
}

#[derive(Serialize)]
struct Output {
    rows: u64,
    file: String,
}

fn run(ctx: &Context, input: Input<Params>) -> Result<Output> {
    let file = "raw.parquet";
    let rows = ctx.sql().execute(&format!(
        "COPY (SELECT i AS id, 'cat_' || (i % 50) AS category, \
                (random() * 1000)::DECIMAL(10,2) AS amount \
         FROM range({}) t(i)) TO {} (FORMAT parquet)",
        input.params.rows,
        sql_literal(&ctx.staging_path(file)),
    ))?;
    ctx.info(format!("wrote {rows} rows to {file}"));
    Ok(Output {
        rows,
        file: file.into(),
    })
}

sluice_sdk::task!(run);
