"""Imports a task's modules from the sources the host hands over.

A Python task is not compiled into a component of its own: one runtime
component (the interpreter, the standard library modules of ``preload`` and
this SDK) runs every Python task, and a task's ``.py`` files are data it asks
the host for at its first ``run`` (``python-code`` in ``wit/python.wit``).
``SourceFinder`` serves them to ``import`` from memory, ahead of everything
else on ``sys.meta_path``.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys


class SourceFinder(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    """Finds and loads the modules of ``files`` (``{"pkg/mod.py": text}``).

    ``pkg/__init__.py`` is package ``pkg``; a directory holding sources but no
    ``__init__.py`` is an empty package, as a namespace package would be.
    """

    def __init__(self, files):
        # name -> (path, text, is_package)
        self._modules = {}
        for path, text in sorted(files.items()):
            if not path.endswith(".py"):
                continue
            parts = path[: -len(".py")].split("/")
            package = parts[-1] == "__init__"
            if package:
                parts = parts[:-1]
            if not parts or not all(part.isidentifier() for part in parts):
                continue
            self._modules[".".join(parts)] = (path, text, package)
            for n in range(1, len(parts)):
                directory = ".".join(parts[:n])
                if directory not in self._modules:
                    self._modules[directory] = ("/".join(parts[:n]) + "/", "", True)

    def names(self):
        """The module names this finder serves."""
        return set(self._modules)

    def find_spec(self, fullname, path=None, target=None):
        found = self._modules.get(fullname)
        if found is None:
            return None
        origin, _, package = found
        spec = importlib.machinery.ModuleSpec(fullname, self, origin=origin, is_package=package)
        spec.has_location = not origin.endswith("/")
        return spec

    def is_package(self, fullname):
        return self._found(fullname)[2]

    def get_source(self, fullname):
        return self._found(fullname)[1]

    def get_code(self, fullname):
        path, text, _ = self._found(fullname)
        return compile(text, path, "exec", dont_inherit=True)

    def _found(self, fullname):
        found = self._modules.get(fullname)
        if found is None:
            raise ImportError(f"no task module {fullname!r}", name=fullname)
        return found


def import_task(finder, module):
    """Puts ``finder`` first on ``sys.meta_path`` and imports ``module``
    (running its ``@task``)."""
    sys.meta_path.insert(0, finder)
    importlib.import_module(module)
