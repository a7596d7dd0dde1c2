"""What the component packages register, read from their source files without importing them, and
which miners can feed which losses.

    entries = read_section("losses")   # [Entry(name="angular", doc="Angular loss ...", consumes="pairs"), ...]
    feeds("semi-hard", ("triplets",), "pairs")   # True: a triplet miner also serves a pair loss

Every component module imports torch, which takes seconds to load; ``dmlbench list`` only needs each
component's name, the first line of its docstring and what it consumes or produces, and those stand
in the source as literals. A module of a package counts when the package's ``__init__`` imports it.
A class counts when a decorator registers it: ``@<REGISTRY>.register("name")``, or
``@register_dataset``, which registers a dataset under its ``name`` class variable. Class variables
missing on the class are looked up on its bases defined in the same package, as Python would, and a
class without a docstring shows its ``description`` (a dataset: its base class copies it) or its
base's docstring. Where the source says something only running it could tell (a name built at run
time, a value that is not a literal), :func:`read_section` returns None and the caller imports the
registry instead; tests/test_cli_polish.py checks that every section reads the same either way.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent
SECTIONS = ("losses", "miners", "samplers", "datasets", "models")
FACTS = {"losses": "consumes", "miners": "produces"}  # the class variable a section's entries must state
DESCRIBED_BY = {"datasets": "description"}  # copied into the docstring (datasets.base.Dataset.__init_subclass__)


@dataclass(frozen=True)
class Entry:
    """One registered component as ``dmlbench list`` shows it."""

    name: str
    doc: str  # the first line of its docstring, as Registry.describe gives it
    consumes: str | None = None  # losses: "pairs", "triplets", "batch" or "any"
    produces: tuple[str, ...] | None = None  # miners: the tuple kinds it builds


def feeds(miner: str, produces: tuple[str, ...], consumes: str) -> bool:
    """Whether a miner (its registered name and what it produces) can feed a loss that consumes
    ``consumes``: "none" feeds every loss, a triplet miner also feeds pair losses."""
    if miner == "none" or consumes == "any":
        return True
    return consumes in produces or (consumes == "pairs" and "triplets" in produces)


class _Unreadable(Exception):
    """The source does not state a fact as a literal."""


def read_section(section: str) -> list[Entry] | None:
    """The registered components of ``section`` (one of SECTIONS) by name, or None where the source
    does not tell them without running it."""
    folder = PACKAGE / section
    classes = {node.name: node for path in sorted(folder.glob("*.py")) for node in _classes(path)}
    try:
        entries = [_entry(section, name, node, classes) for module in _imported_modules(folder)
                   for node in _classes(folder / f"{module}.py") for name in _registered_as(node, classes)]
    except (_Unreadable, OSError, SyntaxError):
        return None
    return sorted({entry.name: entry for entry in entries}.values(), key=lambda entry: entry.name)


def _classes(path: Path) -> list[ast.ClassDef]:
    return [node for node in ast.parse(path.read_text(), filename=str(path)).body if isinstance(node, ast.ClassDef)]


def _imported_modules(folder: Path) -> list[str]:
    """The package's own modules that its ``__init__`` imports (importing one is what registers it)."""
    tree = ast.parse((folder / "__init__.py").read_text())
    names = [node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module]
    return [name for name in dict.fromkeys(names) if (folder / f"{name}.py").is_file()]


def _registered_as(node: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> list[str]:
    """The names a class's decorators register it under."""
    names = []
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Name) and decorator.id == "register_dataset":
            names.append(_attribute(node, "name", classes))
        elif (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
              and decorator.func.attr == "register"):
            if len(decorator.args) != 1 or decorator.keywords:
                raise _Unreadable(node.name)
            names.append(_literal(decorator.args[0]))
    if not all(isinstance(name, str) and name for name in names):
        raise _Unreadable(node.name)
    return names


def _entry(section: str, name: str, node: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> Entry:
    facts = {FACTS[section]: _attribute(node, FACTS[section], classes)} if section in FACTS else {}
    if "produces" in facts:
        facts["produces"] = tuple(facts["produces"])
    return Entry(name, _first_doc_line(node, classes, DESCRIBED_BY.get(section)), **facts)


MISSING = object()


def _attribute(node: ast.ClassDef, attribute: str, classes: dict[str, ast.ClassDef], default: Any = MISSING) -> Any:
    """A class variable's literal value, from the class or, failing that, its bases in the package."""
    for cls in _lineage(node, classes):
        for statement in cls.body:
            target = (statement.targets[0] if isinstance(statement, ast.Assign) and len(statement.targets) == 1
                      else statement.target if isinstance(statement, ast.AnnAssign) and statement.value else None)
            if isinstance(target, ast.Name) and target.id == attribute:
                return _literal(statement.value)
    if default is MISSING:
        raise _Unreadable(f"{node.name}.{attribute}")
    return default


def _lineage(node: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> list[ast.ClassDef]:
    """The class, then its bases defined in the package, depth first (enough for single inheritance,
    which every component uses; a class with several bases is left to the import)."""
    lineage = [node]
    while len(node.bases) == 1:
        base = node.bases[0]
        name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else None
        if name not in classes or classes[name] in lineage:
            break
        node = classes[name]
        lineage.append(node)
    if len(node.bases) > 1:
        raise _Unreadable(node.name)
    return lineage


def _first_doc_line(node: ast.ClassDef, classes: dict[str, ast.ClassDef], described_by: str | None) -> str:
    """As ``inspect.getdoc`` would give it: the class's docstring, else (datasets) its ``description``,
    else the nearest base's docstring; then the first line."""
    doc = ast.get_docstring(node) or (_attribute(node, described_by, classes, default=None) if described_by else None)
    for cls in _lineage(node, classes)[1:]:
        doc = doc or ast.get_docstring(cls)
    if doc is not None and not isinstance(doc, str):
        raise _Unreadable(f"{node.name}.__doc__")
    return inspect.cleandoc(doc).splitlines()[0] if doc else ""


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise _Unreadable(ast.dump(node)) from None
