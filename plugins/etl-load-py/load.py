"""Writes the aggregate to `output.csv` in the run's staging directory, as
the Rust `etl-load` does."""

from sluice import task


@task
def run(ctx, input):
    agg = input.output_of("transform")["file"]
    file = ctx.staging_path("output.csv")
    rows = ctx.sql.execute(
        f"COPY (SELECT * FROM read_parquet({ctx.literal(ctx.staging_path(agg))}) "
        f"ORDER BY category) TO {ctx.literal(file)} (HEADER)"
    )
    ctx.info(f"loaded {rows} rows into {file}")
    return {"rows": rows, "file": file}
