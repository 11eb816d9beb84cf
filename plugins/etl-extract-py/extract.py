"""Generates the seed data set, as the Rust `etl-extract` does: `rows` rows of
(id, category, amount) into `raw.parquet` in the run's staging directory."""

import logging

from sluice import task

log = logging.getLogger("extract")


@task
def run(ctx, input):
    rows = int(input.params.get("rows", 70_000_000))
    file = "raw.parquet"
    written = ctx.sql.execute(
        "COPY (SELECT i AS id, 'cat_' || (i % 50) AS category, "
        "(random() * 1000)::DECIMAL(10,2) AS amount "
        f"FROM range({rows}) t(i)) TO {ctx.literal(ctx.staging_path(file))} (FORMAT parquet)"
    )
    log.info("wrote %d rows to %s", written, file)
    return {"rows": written, "file": file}
