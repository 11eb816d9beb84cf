"""The Python SDK's own tests, run by CPython on the host (`.ci/run`) against
fake bindings standing in for the modules componentize-py generates."""

import enum
import json
import logging
import sys
import types
import unittest
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Err(Exception):
    def __init__(self, value):
        super().__init__(value)
        self.value = value


class ErrorKind(enum.Enum):
    RETRYABLE = 0
    PERMANENT = 1


class Level(enum.Enum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


@dataclass
class TaskError:
    kind: ErrorKind
    message: str


@dataclass
class SqlErrorValue:
    kind: ErrorKind
    message: str


@dataclass
class SourceFile:
    path: str
    text: str


@dataclass
class TaskCode:
    module: str
    sources: list


LOG = []
TABLE = [{"i": n} for n in range(7)]
# What the fake host hands over as the task's code (``python-code``).
CODE = TaskCode("main", [])


class FakeCursor:
    def __init__(self, rows):
        self.rows = list(rows)
        self.closed = False

    def next_rows(self, max_rows):
        if not self.rows:
            return None
        head, self.rows = self.rows[:max_rows], self.rows[max_rows:]
        return json.dumps(head)

    def __exit__(self, *exc):
        self.closed = True


def fake_query(statement):
    if statement == "bad":
        raise Err(SqlErrorValue(ErrorKind.PERMANENT, "Parser Error: bad"))
    return FakeCursor(TABLE)


def install_fakes():
    cpt = types.ModuleType("componentize_py_types")
    cpt.Err = Err
    sys.modules["componentize_py_types"] = cpt
    root = types.ModuleType("wit_world")
    imports = types.ModuleType("wit_world.imports")
    root.imports = imports
    mods = {name: types.ModuleType(f"wit_world.imports.{name}") for name in
            ["types", "log", "sql", "context", "connections", "python_code"]}
    mods["types"].ErrorKind = ErrorKind
    mods["types"].TaskError = TaskError
    mods["log"].Level = Level
    mods["log"].log = lambda level, message: LOG.append((level, message))
    mods["log"].progress = lambda done, total: LOG.append(("progress", done, total))
    mods["sql"].execute = lambda statement: 3
    mods["sql"].query = fake_query
    mods["sql"].query_json = lambda statement, max_rows: json.dumps(TABLE[:max_rows])
    mods["python_code"].code = lambda: CODE
    mods["context"].staging_dir = lambda: "/staging/run"
    mods["context"].ds = lambda: "2026-01-31"
    mods["connections"].open_postgres = lambda id: (_ for _ in ()).throw(
        Err(SqlErrorValue(ErrorKind.PERMANENT, f"connection {id!r} is not granted"))
    )
    sys.modules["wit_world"] = root
    sys.modules["wit_world.imports"] = imports
    for name, module in mods.items():
        setattr(imports, name, module)
        sys.modules[f"wit_world.imports.{name}"] = module


install_fakes()

import sluice  # noqa: E402
from sluice import runtime  # noqa: E402


def run(function, params=None, upstream=None):
    LOG.clear()
    text = json.dumps({"params": params or {}, "upstream": upstream or {}})
    return runtime.run_task(function, text)


class RuntimeTests(unittest.TestCase):
    def test_output_is_json_and_input_is_dicts(self):
        def task(ctx, input):
            return {"rows": input.params["rows"], "up": input.output_of("a")}

        self.assertEqual(run(task, {"rows": 5}, {"a": [1]}), '{"rows":5,"up":[1]}')

    def test_permanent_error_is_permanent_with_its_message(self):
        def task(ctx, input):
            raise sluice.PermanentError("never")

        with self.assertRaises(Err) as caught:
            run(task)
        self.assertEqual(caught.exception.value, TaskError(ErrorKind.PERMANENT, "never"))

    def test_other_exceptions_are_retryable_with_type_and_message_and_traceback(self):
        def task(ctx, input):
            return 1 / 0

        with self.assertRaises(Err) as caught:
            run(task)
        self.assertEqual(
            caught.exception.value,
            TaskError(ErrorKind.RETRYABLE, "ZeroDivisionError: division by zero"),
        )
        level, text = LOG[-1]
        self.assertEqual(level, Level.ERROR)
        self.assertIn("Traceback (most recent call last)", text)
        self.assertIn("1 / 0", text)

    def test_system_exit_does_not_escape(self):
        def task(ctx, input):
            sys.exit(3)

        with self.assertRaises(Err) as caught:
            run(task)
        self.assertEqual(caught.exception.value.message, "SystemExit: 3")

    def test_sql_errors_keep_the_hosts_kind_and_missing_upstream_is_permanent(self):
        def task(ctx, input):
            ctx.sql.query("bad")

        with self.assertRaises(Err) as caught:
            run(task)
        self.assertEqual(
            caught.exception.value, TaskError(ErrorKind.PERMANENT, "Parser Error: bad")
        )

        def upstream(ctx, input):
            input.output_of("nope")

        with self.assertRaises(Err) as caught:
            run(upstream)
        self.assertEqual(caught.exception.value.kind, ErrorKind.PERMANENT)

    def test_output_that_is_not_json_is_permanent(self):
        with self.assertRaises(Err) as caught:
            run(lambda ctx, input: {"x": object()})
        self.assertEqual(caught.exception.value.kind, ErrorKind.PERMANENT)

    def test_logging_and_ctx_reach_the_task_log(self):
        def task(ctx, input):
            logging.getLogger("mine").warning("careful %s", "now")
            logging.getLogger("mine").debug("not shown at the default level")
            ctx.info("hello")
            ctx.progress(1, 4)

        run(task)
        self.assertEqual(
            LOG,
            [(Level.WARN, "mine: careful now"), (Level.INFO, "hello"), ("progress", 1, 4)],
        )


class SqlTests(unittest.TestCase):
    def setUp(self):
        self.ctx = sluice.Context()

    def test_cursor_reads_every_row_once_in_any_mix(self):
        cursor = self.ctx.sql.query("q", batch_rows=3)
        self.assertEqual(cursor.fetchone(), {"i": 0})
        self.assertEqual(cursor.fetchmany(4), [{"i": n} for n in range(1, 5)])
        self.assertEqual(list(cursor), [{"i": 5}, {"i": 6}])
        self.assertIsNone(cursor.fetchone())
        self.assertEqual(cursor.fetchall(), [])

    def test_with_closes_the_cursor(self):
        with self.ctx.sql.query("q") as cursor:
            handle = cursor._handle
        self.assertTrue(handle.closed)

    def test_query_rows_and_one(self):
        self.assertEqual(self.ctx.sql.query_rows("q", 2), [{"i": 0}, {"i": 1}])
        self.assertEqual(self.ctx.sql.query_one("q"), {"i": 0})

    def test_a_refused_connection_keeps_the_hosts_kind(self):
        with self.assertRaises(sluice.ConnectionCallError) as caught:
            self.ctx.postgres("warehouse")
        self.assertEqual(caught.exception.kind, "permanent")
        self.assertEqual(caught.exception.message, "connection 'warehouse' is not granted")

    def test_context_values(self):
        self.assertEqual(self.ctx.staging_path("a.parquet"), "/staging/run/a.parquet")
        self.assertEqual(self.ctx.ds, "2026-01-31")
        self.assertEqual(sluice.literal("it's"), "'it''s'")


class HostCodeTests(unittest.TestCase):
    """The runtime imports the task the host hands over, from memory."""

    def setUp(self):
        self.saved = (runtime._task, list(sys.meta_path), dict(sys.modules))
        runtime._task = None

    def tearDown(self):
        runtime._task, meta_path, modules = self.saved
        sys.meta_path[:] = meta_path
        for name in set(sys.modules) - set(modules):
            del sys.modules[name]

    def host_run(self, module, files, params=None):
        global CODE
        CODE = TaskCode(module, [SourceFile(path, text) for path, text in sorted(files.items())])
        LOG.clear()
        return runtime.WitWorld().run(json.dumps({"params": params or {}, "upstream": {}}))

    def test_the_task_module_imports_its_packages_from_the_sources(self):
        files = {
            "jobs/__init__.py": "PREFIX = 'n='\n",
            "jobs/main.py": (
                "from sluice import task\n"
                "from jobs import PREFIX\n"
                "from lib.util import double\n"
                "@task\n"
                "def run(ctx, input):\n"
                "    return PREFIX + str(double(input.params['n']))\n"
            ),
            "lib/util.py": "def double(n):\n    return 2 * n\n",
        }
        self.assertEqual(self.host_run("jobs.main", files, {"n": 21}), '"n=42"')
        self.assertEqual(sys.modules["lib"].__path__, [])
        self.assertEqual(sys.modules["jobs.main"].__file__, "jobs/main.py")

    def test_a_traceback_shows_the_tasks_lines(self):
        files = {"main.py": "from sluice import task\n@task\ndef run(ctx, input):\n    return {}['gone']\n"}
        with self.assertRaises(Err) as caught:
            self.host_run("main", files)
        self.assertEqual(caught.exception.value, TaskError(ErrorKind.RETRYABLE, "KeyError: 'gone'"))
        self.assertIn('File "main.py", line 4, in run', LOG[-1][1])
        self.assertIn("return {}['gone']", LOG[-1][1])

    def test_what_cannot_import_fails_permanently(self):
        for files, expected in [
            ({"main.py": "def broken(:\n"}, "SyntaxError"),
            ({"main.py": "import numpy\n"}, "ModuleNotFoundError: No module named 'numpy' (a Python task"),
            ({"main.py": "X = 1\n"}, "module main declares no @task function"),
            ({"other.py": "X = 1\n"}, "ModuleNotFoundError: No module named 'main'"),
        ]:
            runtime._task = None
            sys.modules.pop("main", None)
            sys.meta_path[:] = self.saved[1]
            with self.assertRaises(Err) as caught:
                self.host_run("main", files)
            self.assertEqual(caught.exception.value.kind, ErrorKind.PERMANENT, files)
            self.assertTrue(caught.exception.value.message.startswith(expected), caught.exception.value)

    def test_the_snapshot_warm_up_leaves_no_module_behind_no_file_search_and_a_module_list(self):
        import gc
        import importlib.machinery

        import json
        import tempfile

        try:
            with tempfile.TemporaryDirectory() as tmp:
                modules_file = Path(tmp) / "runtime-modules.json"
                runtime.prepare_snapshot(str(modules_file))
                listed = json.loads(modules_file.read_text())
            self.assertEqual(listed["python"], ".".join(map(str, sys.version_info[:3])))
            self.assertTrue({"json", "sluice", "sys"} <= set(listed["modules"]), listed)
            self.assertNotIn("sluice_warm_up", sys.modules)
            self.assertEqual(
                sys.meta_path,
                [f for f in self.saved[1] if f is not importlib.machinery.PathFinder],
            )
            self.assertIsNone(runtime._task)
            with self.assertRaises(ModuleNotFoundError):
                import sluice_not_in_memory  # noqa: F401
        finally:
            gc.unfreeze()

    def test_the_preloaded_standard_library_is_importable(self):
        from sluice import preload

        self.assertEqual(preload.UNAVAILABLE, ())
        self.assertIn("json", preload.MODULES)


class DecoratorTests(unittest.TestCase):
    def test_a_second_task_is_refused(self):
        saved = runtime._task
        try:
            runtime._task = None
            sluice.task(lambda ctx, input: None)
            with self.assertRaises(RuntimeError):
                sluice.task(lambda ctx, input: None)
        finally:
            runtime._task = saved


if __name__ == "__main__":
    unittest.main()
