//! Loads the aggregate into Postgres table `category_revenue` (created if
//! missing, replaced on each run) through a granted connection. The task names
//! the connection; the host holds its credentials and moves the rows.

use serde::{Deserialize, Serialize};
use sluice_sdk::{Context, Input, Result, sql_literal};

#[derive(Deserialize)]
struct Params {
    #[serde(default = "default_connection")]
    connection: String,
}

fn default_connection() -> String {
    "etl_target".into()
}

#[derive(Deserialize)]
struct Transformed {
    file: String,
}

#[derive(Serialize)]
struct Output {
    rows: u64,
    table: String,
}

fn run(ctx: &Context, input: Input<Params>) -> Result<Output> {
    let agg: Transformed = input.upstream("transform")?;
    let pg = ctx.postgres(&input.params.connection)?;
    pg.execute(
        "CREATE TABLE IF NOT EXISTS category_revenue (category text PRIMARY KEY, n bigint, revenue numeric(18,2))",
    )?;
    pg.execute("TRUNCATE category_revenue")?;
    let rows = pg.copy_in(
        "category_revenue",
        &format!(
            "SELECT category, n, revenue FROM read_parquet({})",
            sql_literal(&ctx.staging_path(&agg.file))
        ),
    )?;
    ctx.info(format!("loaded {rows} rows into category_revenue"));
    Ok(Output {
        rows,
        table: "category_revenue".into(),
    })
}

sluice_sdk::task!(run);
