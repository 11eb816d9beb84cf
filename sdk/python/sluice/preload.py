"""The standard library of the Python runtime.

componentize-py keeps only the modules imported while it pre-initializes the
interpreter: the runtime component is built once for every Python task, so
these are imported then, and a task can import exactly these (and its own
``.py`` files). Importing this module loads them; those WASI's CPython lacks
are listed in ``UNAVAILABLE``. ``socket``, ``subprocess`` and ``ctypes`` are
among them so that a task trying them meets the sandbox, which denies them.
"""

import importlib

MODULES = (
    "_strptime",  # what datetime.strptime and time.strptime import when first called
    "abc",
    "argparse",
    "array",
    "ast",
    "base64",
    "binascii",
    "bisect",
    "calendar",
    "cmath",
    "codecs",
    "collections",
    "collections.abc",
    "colorsys",
    "contextlib",
    "copy",
    "csv",
    "ctypes",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "glob",
    "graphlib",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "keyword",
    "locale",
    "logging",
    "math",
    "numbers",
    "operator",
    "os",
    "os.path",
    "pathlib",
    "pprint",
    "random",
    "re",
    "secrets",
    "shlex",
    "shutil",
    "socket",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "sys",
    "tempfile",
    "textwrap",
    "time",
    "traceback",
    "types",
    "typing",
    "unicodedata",
    "urllib.parse",
    "uuid",
    "warnings",
    "weakref",
    "zipfile",
    "zlib",
    "zoneinfo",
)


def _load():
    missing = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return tuple(missing)


#: The modules of ``MODULES`` this interpreter does not have.
UNAVAILABLE = _load()
