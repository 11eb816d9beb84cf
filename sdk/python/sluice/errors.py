"""How a task fails, and whether the host retries it."""

PERMANENT = "permanent"
RETRYABLE = "retryable"


class SluiceError(Exception):
    """An error that knows its kind: ``"permanent"`` (retrying cannot help)
    or ``"retryable"`` (a later try may succeed)."""

    kind = RETRYABLE

    def __init__(self, message, kind=None):
        super().__init__(message)
        self.message = str(message)
        if kind is not None:
            if kind not in (PERMANENT, RETRYABLE):
                raise ValueError(f"error kind must be 'permanent' or 'retryable', not {kind!r}")
            self.kind = kind


class PermanentError(SluiceError):
    """Fails the task at once: its remaining retries are not spent."""

    kind = PERMANENT


class RetryableError(SluiceError):
    """Fails the try; the task is retried if it has retries left."""

    kind = RETRYABLE


class SqlError(SluiceError):
    """A DuckDB error as reported by the host, with the host's kind."""


class ConnectionCallError(SluiceError):
    """A failed connection call (Postgres, object store), secrets redacted,
    with the host's kind."""
