"""Aggregates `raw.parquet` into revenue per category, `agg.parquet`, as the
Rust `etl-transform` does (param `file` names another output)."""

from sluice import task


@task
def run(ctx, input):
    raw = input.output_of("extract")["file"]
    file = input.params.get("file", "agg.parquet")
    categories = ctx.sql.execute(
        "COPY (SELECT category, count(*) AS n, sum(amount) AS revenue "
        f"FROM read_parquet({ctx.literal(ctx.staging_path(raw))}) "
        "GROUP BY category ORDER BY category) "
        f"TO {ctx.literal(ctx.staging_path(file))} (FORMAT parquet)"
    )
    ctx.info(f"aggregated into {categories} categories")
    return {"categories": categories, "file": file}
