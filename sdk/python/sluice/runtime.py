"""The entry point: the ``@task`` decorator and the ``WitWorld`` export that
componentize-py binds to the world's ``run``.

The runtime component holds no task: at its ``run`` it asks the host for the
task's code (``python-code``), imports the task's module from it (``loader``),
and calls the function that module declared with ``@task``.

Nothing raised by a task reaches componentize-py (where an uncaught exception
traps the component): every exception becomes a ``task-error``.
"""

import _imp
import gc
import importlib.machinery
import json
import logging
import os
import sys
import traceback

from componentize_py_types import Err
from wit_world.imports import log as _log
from wit_world.imports import python_code as _python_code
from wit_world.imports import types as _types

from . import loader
from . import preload  # noqa: F401 - imports the standard library the runtime offers
from .context import Context, Input
from .errors import PERMANENT, SluiceError

_task = None


def task(function):
    """Declares ``function(ctx, input)`` as the module's task. Its return value
    (JSON-serializable, at most 64 KiB encoded) is the task's output."""
    global _task
    if _task is not None:
        raise RuntimeError(
            f"a component holds one task: {_task.__qualname__} is already declared, "
            f"so {function.__qualname__} cannot be"
        )
    _task = function
    return function


def declared():
    """The function ``@task`` declared, or ``None``."""
    return _task


class _HostLogHandler(logging.Handler):
    """Sends records of the standard ``logging`` module to the task's log."""

    def emit(self, record):
        try:
            message = self.format(record)
        except Exception:  # noqa: BLE001 - a bad format argument must not fail the task
            message = f"{record.msg!r} {record.args!r}"
        if record.levelno >= logging.ERROR:
            level = _log.Level.ERROR
        elif record.levelno >= logging.WARNING:
            level = _log.Level.WARN
        elif record.levelno >= logging.INFO:
            level = _log.Level.INFO
        elif record.levelno >= logging.DEBUG:
            level = _log.Level.DEBUG
        else:
            level = _log.Level.TRACE
        _log.log(level, message)


def _route_logging():
    root = logging.getLogger()
    if not any(isinstance(h, _HostLogHandler) for h in root.handlers):
        handler = _HostLogHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def _describe(error):
    """The task error's message for an exception: its type and message."""
    name = type(error).__qualname__
    module = type(error).__module__
    if module not in ("builtins", "__main__") and not module.startswith("sluice"):
        name = f"{module}.{name}"
    text = str(error)
    return f"{name}: {text}" if text else name


def load_task(module, files):
    """Imports the task's ``module`` from ``files`` (``{path: text}``) and
    returns the function it declared with ``@task``. What cannot import
    (a syntax error, a module the runtime does not have) fails permanently."""
    finder = loader.SourceFinder(files)
    try:
        loader.import_task(finder, module)
    except (SyntaxError, ImportError) as error:
        message = _describe(error)
        if isinstance(error, ModuleNotFoundError) and error.name not in finder.names():
            message += (
                " (a Python task can import its own .py files and the standard library"
                " modules of the Sluice runtime, listed in sluice/preload.py)"
            )
        raise SluiceError(message, PERMANENT) from error
    if _task is None:
        raise SluiceError(f"module {module} declares no @task function", PERMANENT)
    return _task


def _host_task():
    """The task the host hands over (``python-code``), imported once."""
    if _task is not None:
        return _task
    code = _python_code.code()
    return load_task(code.module, {source.path: source.text for source in code.sources})


def run_task(function, text):
    """Runs ``function`` (or, when it is ``None``, the task the host hands
    over) on the input document ``text``; returns the output document, or
    raises ``Err(TaskError)`` for every failure."""
    _route_logging()
    try:
        if function is None:
            function = _host_task()
        output = function(Context(), Input.decode(text))
        try:
            return json.dumps(output, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise SluiceError(f"the task's output is not JSON: {e}", PERMANENT) from None
    except BaseException as error:  # noqa: BLE001 - nothing may trap the component
        # The traceback goes to the task's log; the error carries type and message.
        _log.log(_log.Level.ERROR, "".join(traceback.format_exception(error)).rstrip())
        if isinstance(error, SluiceError):
            kind, message = error.kind, error.message
        else:
            kind, message = "retryable", _describe(error)
        wit_kind = (
            _types.ErrorKind.PERMANENT if kind == PERMANENT else _types.ErrorKind.RETRYABLE
        )
        raise Err(_types.TaskError(wit_kind, message)) from None


class WitWorld:
    """The world's export, bound by componentize-py."""

    def run(self, input: str) -> str:
        return run_task(None, input)


def prepare_snapshot(modules_file):
    """Called once, by the runtime's entry module, while componentize-py
    pre-initializes the interpreter: every instance starts from the memory
    this leaves, mapped copy-on-write, so what is done here is not done (nor
    its pages copied) at each run. Routes logging, takes the import path a
    task takes once (with a module that is then forgotten), and moves every
    object out of the collector's generations, so that a collection during a
    run does not write to every page of the heap. Imports are then served
    from memory only: ``sys.modules``, the built-in and frozen modules, and
    the task's sources; ``modules_file`` receives their names, for
    ``sluice build``'s check of a task's imports."""
    _route_logging()
    finder = loader.SourceFinder({"sluice_warm_up.py": "VALUE = 1\n"})
    loader.import_task(finder, "sluice_warm_up")
    sys.meta_path.remove(finder)
    del sys.modules["sluice_warm_up"]
    # The interpreter's files are not in the sandbox at run time (what was
    # imported now is in memory): searching the file system for a module
    # only costs a run time (milliseconds per missing module) and would read
    # `.py` files from wherever the working directory is.
    sys.meta_path[:] = [f for f in sys.meta_path if f is not importlib.machinery.PathFinder]
    sys.path_importer_cache.clear()
    _write_importable(modules_file)
    gc.collect()
    gc.freeze()


def _write_importable(path):
    """Writes the modules a task can import from now on, and this Python's
    version, as JSON to ``path``: those in memory, the built-in ones and the
    frozen ones."""
    names = set(sys.modules) | set(sys.builtin_module_names)
    names.update(getattr(_imp, "_frozen_module_names", tuple)())
    with open(path, "w", encoding="utf-8") as file:
        json.dump(
            {
                "python": ".".join(str(part) for part in sys.version_info[:3]),
                "modules": sorted(names),
            },
            file,
        )
