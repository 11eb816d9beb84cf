//! Snapshots every table of a Postgres schema to Parquet in a bucket, under
//! `snapshots/<ds>/<table>.parquet` for the run's logical date. Re-running the
//! same date overwrites the same keys.

use serde::{Deserialize, Serialize};
use sluice_sdk::{Context, Input, Result, sql_literal};

#[derive(Deserialize)]
struct Params {
    #[serde(default = "source")]
    source: String,
    #[serde(default = "bucket")]
    bucket: String,
    #[serde(default = "schema")]
    schema: String,
}

fn source() -> String {
    "snapshot_source".into()
}
fn bucket() -> String {
    "snapshot_bucket".into()
}
fn schema() -> String {
    "public".into()
}

#[derive(Deserialize)]
struct Table {
    name: String,
}

#[derive(Serialize)]
struct Output {
    ds: String,
    tables: Vec<String>,
    rows: u64,
}

fn run(ctx: &Context, input: Input<Params>) -> Result<Output> {
    let p = input.params;
    let pg = ctx.postgres(&p.source)?;
    let bucket = ctx.bucket(&p.bucket)?;
    let ds = ctx.ds();
    pg.extract(
        &format!(
            "SELECT table_name::text AS name FROM information_schema.tables \
             WHERE table_schema = {} AND table_type = 'BASE TABLE' ORDER BY 1",
            sql_literal(&p.schema)
        ),
        "snapshot_tables",
    )?;
    let tables: Vec<Table> = ctx
        .sql()
        .query_rows("SELECT name FROM snapshot_tables ORDER BY name", 10_000)?;
    let mut rows = 0;
    for (done, table) in tables.iter().enumerate() {
        let quoted = format!(
            "\"{}\".\"{}\"",
            p.schema.replace('"', "\"\""),
            table.name.replace('"', "\"\"")
        );
        rows += pg.extract(&format!("SELECT * FROM {quoted}"), "snapshot_rows")?;
        let file = ctx.staging_path(&format!("{}.parquet", table.name));
        ctx.sql().execute(&format!(
            "COPY snapshot_rows TO {} (FORMAT parquet)",
            sql_literal(&file)
        ))?;
        bucket.put(&file, &format!("snapshots/{ds}/{}.parquet", table.name))?;
        ctx.progress(done as u64 + 1, tables.len() as u64);
    }
    ctx.info(format!(
        "snapshot {ds}: {} tables, {rows} rows",
        tables.len()
    ));
    Ok(Output {
        ds,
        tables: tables.into_iter().map(|t| t.name).collect(),
        rows,
    })
}

sluice_sdk::task!(run);
