"""A test-only task: the `mode` param picks one behaviour for the host's
tests to observe (context, SQL, cursors, logging, failures, escapes)."""

import logging
import os

from sluice import PermanentError, task

# The runtime offers the standard library of `sluice/preload.py`, the escape
# attempts' modules among them (those WASI's CPython lacks stay None).
try:
    import socket
except ImportError:
    socket = None
try:
    import subprocess
except ImportError:
    subprocess = None
try:
    import ctypes
except ImportError:
    ctypes = None


def context(ctx, input):
    ctx.progress(1, 2)
    ctx.warn("a warning from ctx")
    logging.getLogger("testkit").info("hello from logging")
    print("hello from print")
    ctx.sql.execute("CREATE TABLE t AS SELECT range AS i, 'v' || range AS s FROM range(2500)")
    with ctx.sql.query("SELECT i, s FROM t ORDER BY i", batch_rows=1000) as cursor:
        first = cursor.fetchone()
        rest = cursor.fetchall()
    return {
        "dag_id": ctx.dag_id,
        "task_id": ctx.task_id,
        "try_number": ctx.try_number,
        "ds": ctx.ds,
        "ds_nodash": ctx.ds_nodash,
        "staging": ctx.staging_path("x"),
        "params": input.params,
        "upstream": input.upstream,
        "first": first,
        "cursor_rows": 1 + len(rest),
        "last": rest[-1],
        "one": ctx.sql.query_one("SELECT count(*) AS n, sum(i)::BIGINT AS total FROM t"),
        "none": ctx.sql.query_one("SELECT 1 AS x WHERE false"),
        "rows": ctx.sql.query_rows("SELECT i FROM t ORDER BY i", 3),
    }


def permanent(ctx, input):
    raise PermanentError("the input can never work")


def boom(ctx, input):
    return {"value": {"a": 1}["missing"]}


def sql_error(ctx, input):
    ctx.sql.execute("SELEC nonsense")


def spin(ctx, input):
    n = 0
    while True:
        n += 1


def noop(ctx, input):
    """Nothing: what importing the task and calling it costs (benchmark)."""
    return {}


def escape(ctx, input):
    """Tries each way out of the sandbox; returns what each one did."""
    tried = {}

    def attempt(name, action):
        try:
            tried[name] = f"allowed: {action()!r}"[:200]
        except BaseException as e:  # noqa: BLE001 - the test reads what happened
            tried[name] = f"denied: {type(e).__name__}"

    attempt("open", lambda: open("/etc/passwd").read(10))
    attempt("environ", lambda: dict(os.environ))
    attempt("socket", lambda: socket.create_connection(("127.0.0.1", 22), timeout=2))
    attempt("subprocess", lambda: subprocess.run(["true"]))
    attempt("ctypes", lambda: ctypes.CDLL(None))
    attempt("other_staging", lambda: os.listdir(ctx.staging_path("..")))
    return tried


MODES = {
    "context": context,
    "permanent": permanent,
    "boom": boom,
    "sql-error": sql_error,
    "escape": escape,
    "spin": spin,
    "noop": noop,
}


@task
def run(ctx, input):
    return MODES[input.params["mode"]](ctx, input)
