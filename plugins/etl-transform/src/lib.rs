//! Aggregates `raw.parquet` into revenue per category, `agg.parquet`.

use serde::{Deserialize, Serialize};
use sluice_sdk::{Context, Input, Result, sql_literal};

#[derive(Deserialize)]
struct Params {}

#[derive(Deserialize)]
struct Extracted {
    file: String,
}

#[derive(Serialize)]
struct Output {
    categories: u64,
    file: String,
}

fn run(ctx: &Context, input: Input<Params>) -> Result<Output> {
    let raw: Extracted = input.upstream("extract")?;
    let file = "agg.parquet";
    let categories = ctx.sql().execute(&format!(
        "COPY (SELECT category, count(*) AS n, sum(amount) AS revenue \
               FROM read_parquet({}) GROUP BY category ORDER BY category) \
         TO {} (FORMAT parquet)",
        sql_literal(&ctx.staging_path(&raw.file)),
        sql_literal(&ctx.staging_path(file)),
    ))?;
    ctx.info(format!("aggregated into {categories} categories"));
    Ok(Output {
        categories,
        file: file.into(),
    })
}

sluice_sdk::task!(run);
