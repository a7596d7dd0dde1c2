"""No function or method of the package is longer than 60 lines.

A function's length runs from its ``def`` line to its last line (docstring and nested functions
included, decorators excluded): a longer one is split into named steps.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dmlbench"
MAX_LINES = 60


def long_functions(path: Path, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(qualified name, length in lines) of each function or method in ``path`` over ``limit`` lines."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                length = child.end_lineno - child.lineno + 1  # lineno is the def line, decorators excluded
                if length > limit:
                    found.append((name, length))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return found


def test_no_function_over_60_lines():
    offenders = [f"{path.relative_to(PACKAGE.parent)}: {name} is {length} lines"
                 for path in sorted(PACKAGE.rglob("*.py")) for name, length in long_functions(path)]
    assert not offenders, (f"functions over {MAX_LINES} lines (split them into named steps):\n"
                           + "\n".join(offenders))


def test_checker_catches_a_61_line_function(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(59))
    source = ("import functools\n\n\n"
              "@functools.lru_cache\n"  # decorators do not count
              f"def planted():\n{body}    return x0\n\n\n"
              f"def fits():\n{body[:-len('    x58 = 58' + chr(10))]}    return x0\n\n\n"
              f"class Holder:\n    def method(self):\n{''.join('    ' + line for line in body.splitlines(True))}"
              "        return x0\n")
    path = tmp_path / "planted.py"
    path.write_text(source)
    assert long_functions(path) == [("planted", 61), ("Holder.method", 61)]
    assert long_functions(path, limit=61) == []
