"""The Sluice task SDK for Python.

A task is one function from ``(ctx, input)`` to a small JSON-serializable
output, compiled with componentize-py into a WebAssembly component of the
``sluice:task`` world (``sluice build`` does this for every directory of
``plugins/`` whose ``pyproject.toml`` has a ``[tool.sluice]`` table)::

    from sluice import task

    @task
    def run(ctx, input):
        rows = int(input.params["rows"])
        raw = ctx.staging_path("raw.parquet")
        n = ctx.sql.execute(
            f"COPY (SELECT range AS id FROM range({rows})) TO {ctx.literal(raw)} (FORMAT parquet)"
        )
        ctx.info(f"wrote {n} rows")
        return {"rows": n, "file": "raw.parquet"}

``raise PermanentError(...)`` fails the task without spending its retries;
any other exception fails the try as retryable, with the exception's type and
message as the task's error and its traceback in the task's log. Errors of
SQL and connection calls carry the kind the host gave them.
"""

from .context import Bucket, Context, Cursor, Input, Postgres, Sql, literal
from .errors import (
    ConnectionCallError,
    PermanentError,
    RetryableError,
    SluiceError,
    SqlError,
)
from .runtime import task

__all__ = [
    "Bucket",
    "ConnectionCallError",
    "Context",
    "Cursor",
    "Input",
    "PermanentError",
    "Postgres",
    "RetryableError",
    "SluiceError",
    "Sql",
    "SqlError",
    "literal",
    "task",
]
