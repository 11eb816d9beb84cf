# Run by `sluice build` with the host's Python (see python_imports.rs): lists
# the absolute imports of a Python task's sources. Reads {"path": text, ...}
# as JSON on stdin; writes {"imports": [...], "unparsed": [...]} on stdout.
# An import is "guarded" when a failure to import it is handled: inside the
# body of a `try` whose handlers catch ImportError (or a base of it), or under
# `if TYPE_CHECKING:`.
import ast
import json
import sys

CATCHES_IMPORT_ERROR = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def catches_import_error(handlers):
    for handler in handlers:
        if handler.type is None:
            return True
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(t, ast.Name) and t.id in CATCHES_IMPORT_ERROR for t in types):
            return True
    return False


def is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def visit(node, path, guarded, found):
    if isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
        body_guarded = guarded or catches_import_error(node.handlers)
        for child in node.body:
            visit(child, path, body_guarded, found)
        for child in node.handlers + node.orelse + node.finalbody:
            visit(child, path, guarded, found)
        return
    if isinstance(node, ast.If) and is_type_checking(node.test):
        for child in node.body:
            visit(child, path, True, found)
        for child in node.orelse:
            visit(child, path, guarded, found)
        return
    if isinstance(node, ast.Import):
        modules = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        modules = [node.module]
    else:
        modules = []
    for module in modules:
        found.append({"path": path, "line": node.lineno, "module": module, "guarded": guarded})
    for child in ast.iter_child_nodes(node):
        visit(child, path, guarded, found)


def main():
    imports, unparsed = [], []
    for path, text in json.load(sys.stdin).items():
        try:
            tree = ast.parse(text, filename=path)
        except SyntaxError as error:
            unparsed.append({"path": path, "line": error.lineno or 0, "message": error.msg})
            continue
        visit(tree, path, False, imports)
    json.dump(
        {
            "python": ".".join(str(part) for part in sys.version_info[:3]),
            "imports": imports,
            "unparsed": unparsed,
        },
        sys.stdout,
    )


main()
