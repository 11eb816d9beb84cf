"""Writes the aggregate to `output.csv` in the run's staging directory, as
the Rust `etl-load` does (param `file` names another output)."""

from sluice import PermanentError, task


@task
def run(ctx, input):
    # The aggregate of its one upstream task, whatever the DAG calls it.
    if len(input.upstream) != 1:
        raise PermanentError(f"load runs after exactly one task, not {sorted(input.upstream)}")
    agg = next(iter(input.upstream.values()))["file"]
    file = ctx.staging_path(input.params.get("file", "output.csv"))
    rows = ctx.sql.execute(
        f"COPY (SELECT * FROM read_parquet({ctx.literal(ctx.staging_path(agg))}) "
        f"ORDER BY category) TO {ctx.literal(file)} (HEADER)"
    )
    ctx.info(f"loaded {rows} rows into {file}")
    return {"rows": rows, "file": file}
