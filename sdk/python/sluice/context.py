"""What a task sees: its input, its run context, SQL, connections, logging."""

import json

from componentize_py_types import Err
from wit_world.imports import connections as _connections
from wit_world.imports import context as _context
from wit_world.imports import log as _log
from wit_world.imports import sql as _sql
from wit_world.imports import types as _types

from .errors import PERMANENT, RETRYABLE, ConnectionCallError, PermanentError, SqlError

#: Rows ``query_rows`` returns unless told otherwise.
DEFAULT_MAX_ROWS = 10_000
#: Rows a cursor asks the host for at a time.
CURSOR_ROWS = 1_024


def literal(value):
    """Quotes ``value`` as a SQL string literal: ``it's`` becomes ``'it''s'``."""
    return "'" + str(value).replace("'", "''") + "'"


def _kind(kind):
    return PERMANENT if kind == _types.ErrorKind.PERMANENT else RETRYABLE


def _sql_call(call, *args):
    try:
        return call(*args)
    except Err as e:
        raise SqlError(e.value.message, _kind(e.value.kind)) from None


def _connection_call(call, *args):
    try:
        return call(*args)
    except Err as e:
        raise ConnectionCallError(e.value.message, _kind(e.value.kind)) from None


class Input:
    """The task's input: ``params`` (DAG params overlaid by the task's and the
    run's) and ``upstream`` (each upstream task's output, by task id)."""

    def __init__(self, params, upstream):
        self.params = params
        self.upstream = upstream

    @classmethod
    def decode(cls, text):
        """Reads the host's input document; a malformed one is permanent."""
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise PermanentError(f"the task input is not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise PermanentError("the task input is not a JSON object")
        params = doc.get("params") or {}
        upstream = doc.get("upstream") or {}
        if not isinstance(params, dict) or not isinstance(upstream, dict):
            raise PermanentError("the task input's params and upstream must be objects")
        return cls(params, upstream)

    def output_of(self, task_id):
        """The output of upstream task ``task_id``; permanent if it has none."""
        if task_id not in self.upstream:
            raise PermanentError(
                f"no output of upstream task {task_id!r} (is it listed in `after`?)"
            )
        return self.upstream[task_id]

    def __repr__(self):
        return f"Input(params={self.params!r}, upstream={self.upstream!r})"


class Cursor:
    """A streaming query result: iterate it for rows as dicts, or use
    ``fetchone``/``fetchmany``/``fetchall``. Rows come from the host in pieces
    of at most ``batch_rows`` (and about 4 MiB). While a cursor is open, other
    statements of the session fail: drain it or ``close()`` it (or use it in a
    ``with`` block)."""

    def __init__(self, handle, batch_rows=CURSOR_ROWS):
        self._handle = handle
        self._batch_rows = max(1, int(batch_rows))
        self._rows = []
        self._done = False

    def _fill(self):
        while not self._rows and not self._done:
            if self._handle is None:
                raise SqlError("the cursor is closed", PERMANENT)
            text = _sql_call(self._handle.next_rows, self._batch_rows)
            if text is None:
                self.close()
            else:
                self._rows = json.loads(text)
        return bool(self._rows)

    def fetchone(self):
        """The next row as a dict, or ``None`` at the end."""
        if not self._fill():
            return None
        return self._rows.pop(0)

    def fetchmany(self, size=CURSOR_ROWS):
        """At most ``size`` next rows (fewer only at the end)."""
        out = []
        while len(out) < size and self._fill():
            take = min(size - len(out), len(self._rows))
            out.extend(self._rows[:take])
            del self._rows[:take]
        return out

    def fetchall(self):
        """Every remaining row (mind the guest's memory for large results)."""
        out = []
        while self._fill():
            out.extend(self._rows)
            self._rows = []
        return out

    def batches(self):
        """The remaining rows, a list of dicts per piece the host sends."""
        while self._fill():
            rows, self._rows = self._rows, []
            yield rows

    def arrow_batches(self):
        """The remaining result as self-contained Arrow IPC streams (bytes),
        for code that can decode Arrow."""
        if self._rows:
            raise SqlError("rows were already read from this cursor as dicts", PERMANENT)
        while not self._done:
            if self._handle is None:
                raise SqlError("the cursor is closed", PERMANENT)
            batch = _sql_call(self._handle.next_batch)
            if batch is None:
                self.close()
            else:
                yield batch

    def __iter__(self):
        while self._fill():
            yield self._rows.pop(0)

    def close(self):
        """Releases the result (other statements can run again)."""
        self._done = True
        self._rows = []
        if self._handle is not None:
            handle, self._handle = self._handle, None
            handle.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return None


class Sql:
    """The task's DuckDB session, confined to the run's staging directory."""

    def execute(self, statement):
        """Runs one or more statements; returns the rows the last one changed
        (or wrote, for ``COPY``)."""
        return _sql_call(_sql.execute, statement)

    def query(self, statement, batch_rows=CURSOR_ROWS):
        """Runs a query and returns a :class:`Cursor` over its rows."""
        return Cursor(_sql_call(_sql.query, statement), batch_rows)

    def query_rows(self, statement, max_rows=DEFAULT_MAX_ROWS):
        """At most ``max_rows`` rows of the query as a list of dicts. The host
        refuses a result over 16 MiB of JSON: use :meth:`query` for large ones."""
        return json.loads(_sql_call(_sql.query_json, statement, max_rows))

    def query_one(self, statement):
        """The first row of the query as a dict, or ``None`` if it has none."""
        rows = self.query_rows(statement, 1)
        return rows[0] if rows else None


class Postgres:
    """A PostgreSQL connection opened by the host (the task never sees its password)."""

    def __init__(self, handle):
        self._handle = handle

    def execute(self, statement):
        """Runs one statement in Postgres; returns the rows it changed."""
        return _connection_call(self._handle.execute, statement)

    def copy_in(self, table, query):
        """Streams the result of DuckDB ``query`` into Postgres ``table``
        (binary COPY, one transaction); returns the rows loaded."""
        return _connection_call(self._handle.copy_in, table, query)

    def extract(self, query, table):
        """Streams the result of Postgres ``query`` into a new DuckDB table
        ``table``; returns the rows extracted."""
        return _connection_call(self._handle.extract, query, table)


class Bucket:
    """A bucket of an object store opened by the host. Files are paths in the
    run's staging directory (relative, or absolute under it)."""

    def __init__(self, handle):
        self._handle = handle

    def put(self, staging_file, key):
        """Uploads ``staging_file`` as ``key``; returns the bytes sent."""
        return _connection_call(self._handle.put, staging_file, key)

    def get(self, key, staging_file):
        """Downloads ``key`` into ``staging_file``; returns the bytes received."""
        return _connection_call(self._handle.get, key, staging_file)

    def list_keys(self, prefix=""):
        """Keys under ``prefix``, sorted (at most 10,000)."""
        return _connection_call(self._handle.list_keys, prefix)


class Context:
    """The task instance's context: identity, dates, staging, SQL, connections,
    logging and progress. Values are fixed for the try."""

    def __init__(self):
        self.sql = Sql()

    dag_id = property(lambda self: _context.dag_id(), doc="The DAG's id.")
    run_id = property(lambda self: _context.run_id(), doc="The run's id.")
    task_id = property(lambda self: _context.task_id(), doc="The task's id in its DAG.")
    try_number = property(lambda self: _context.try_number(), doc="1 on the first try.")
    logical_date = property(
        lambda self: _context.logical_date(), doc="Start of the data interval, RFC 3339 UTC."
    )
    data_interval_start = property(
        lambda self: _context.data_interval_start(), doc="RFC 3339 UTC."
    )
    data_interval_end = property(lambda self: _context.data_interval_end(), doc="RFC 3339 UTC.")
    ds = property(lambda self: _context.ds(), doc="The logical date as YYYY-MM-DD.")
    ds_nodash = property(lambda self: _context.ds_nodash(), doc="The logical date as YYYYMMDD.")
    staging_dir = property(
        lambda self: _context.staging_dir(),
        doc="Absolute path of the run's staging directory (the same in SQL).",
    )

    @property
    def params(self):
        """The task's params as a dict (also ``input.params``)."""
        return json.loads(_context.params())

    def staging_path(self, name=""):
        """The absolute path of ``name`` in the run's staging directory, valid
        for file I/O in the task and inside SQL."""
        base = self.staging_dir.rstrip("/")
        return f"{base}/{name}" if name else base

    literal = staticmethod(literal)

    def log(self, level, message):
        """Records ``message`` at ``level`` (trace, debug, info, warn, error)."""
        _log.log(_LEVELS[level], str(message))

    def debug(self, message):
        """Records a debug message."""
        _log.log(_log.Level.DEBUG, str(message))

    def info(self, message):
        """Records an info message."""
        _log.log(_log.Level.INFO, str(message))

    def warn(self, message):
        """Records a warning."""
        _log.log(_log.Level.WARN, str(message))

    warning = warn

    def error(self, message):
        """Records an error message (it does not fail the task)."""
        _log.log(_log.Level.ERROR, str(message))

    def progress(self, done, total=0):
        """Reports progress: ``done`` units out of ``total`` (0 when unknown)."""
        _log.progress(int(done), int(total))

    def postgres(self, connection_id):
        """Opens granted Postgres connection ``connection_id``."""
        return Postgres(_connection_call(_connections.open_postgres, connection_id))

    def bucket(self, connection_id):
        """Opens granted object-store connection ``connection_id``."""
        return Bucket(_connection_call(_connections.open_bucket, connection_id))


_LEVELS = {
    "trace": _log.Level.TRACE,
    "debug": _log.Level.DEBUG,
    "info": _log.Level.INFO,
    "warn": _log.Level.WARN,
    "warning": _log.Level.WARN,
    "error": _log.Level.ERROR,
}
