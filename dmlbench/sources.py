"""What a component's code says, as a digest: the staleness guard of a run's identity.

A run's id hashes each component's ``version`` (see ``RunConfig.hashed_dict``), so a loss whose
computation changes gets new runs once its author bumps the version. An author who forgets would
silently reuse the old runs. :func:`source_digest` closes that gap: it hashes the source of the
component's class, of its bases inside the package (or the user's module), and of every function,
class and plain constant those sources name, followed through the package. Comments, docstrings
and blank lines are left out, so a reworded comment is not a new computation.

``sources.lock.json`` beside this file records, for each registered component, the version and the
digest its shipped runs were made with. :func:`identity_version` gives the version itself where the
digest still matches that record, and ``"<version>+<digest>"`` otherwise: an edited component's runs
are new runs, whether or not its version was bumped. ``make lock`` records the current digests and
refuses to record a changed digest under an unchanged version (``FORCE=1`` for a change that cannot
alter a number, such as a refactor); a test holds the record equal to the code.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import io
import json
import sys
import textwrap
import tokenize
import types
from pathlib import Path
from typing import Any, Iterable

LOCK_PATH = Path(__file__).with_name("sources.lock.json")
DIGEST_CHARS = 12
# plumbing that moves files and names things, but computes nothing a run's numbers depend on
NOT_COMPUTATION = ("dmlbench.registry", "dmlbench.errors", "dmlbench.fileio", "dmlbench.paths",
                   "dmlbench.catalogue", "dmlbench.sources")
PLAIN = (int, float, str, bytes, bool, type(None), complex)


def plain_source(source: str) -> str:
    """``source`` without comments, docstrings, blank lines or trailing spaces, dedented."""
    source = textwrap.dedent(source)
    lines = source.splitlines()
    dropped: set[int] = set()
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a fragment inspect could not cut cleanly: hash it as it stands
        return "\n".join(line.rstrip() for line in lines if line.strip())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and _is_docstring(body[0]):
            dropped.update(range(body[0].lineno, body[0].end_lineno + 1))
    comments = _comment_starts(source)
    kept = []
    for number, line in enumerate(lines, start=1):
        if number in dropped:
            continue
        if number in comments:
            line = line[:comments[number]]
        if line.strip():
            kept.append(line.rstrip())
    return "\n".join(kept)


def _is_docstring(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _comment_starts(source: str) -> dict[int, int]:
    """Line number -> column where a comment starts."""
    starts = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                starts[token.start[0]] = token.start[1]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return starts


def _own_module(name: str | None, root: str) -> bool:
    """Whether code of module ``name`` belongs to what a component computes: the package's own
    modules (not its plumbing), or the user's package the component came from."""
    if not name:
        return False
    if name == "dmlbench" or name.startswith("dmlbench."):
        return not any(name == m or name.startswith(m + ".") for m in NOT_COMPUTATION)
    return name.split(".")[0] == root


def _named(tree: ast.AST) -> Iterable[tuple[str, ...]]:
    """Dotted names the code refers to: ``f`` as ("f",), ``mod.f`` as ("mod", "f")."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            yield (node.id,)
        elif isinstance(node, ast.Attribute):
            chain = []
            value: ast.AST = node
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name):
                yield (value.id, *reversed(chain))


def _resolve(chain: tuple[str, ...], namespace: dict[str, Any]) -> Any:
    if chain[0] not in namespace:
        return None
    obj = namespace[chain[0]]
    for part in chain[1:]:
        if not isinstance(obj, (types.ModuleType, type)):
            break
        obj = getattr(obj, part, None)
    return obj


def _plain_value(value: Any) -> str | None:
    """repr of a constant made of plain values only (no object addresses), else None."""
    if isinstance(value, PLAIN):
        return repr(value)
    if isinstance(value, (tuple, list, frozenset, set)):
        parts = [_plain_value(v) for v in value]
        return None if None in parts else f"{type(value).__name__}({sorted(parts) if isinstance(value, (set, frozenset)) else parts})"
    if isinstance(value, dict):
        parts = [(_plain_value(k), _plain_value(v)) for k, v in value.items()]
        return None if any(None in p for p in parts) else f"dict({parts})"
    return None


class _Collector:
    """Walks from a component's class through what its code names, gathering plain sources."""

    def __init__(self, root: str):
        self.root = root
        self.seen: set[int] = set()
        self.parts: dict[str, str] = {}

    def add(self, obj: Any) -> None:
        if id(obj) in self.seen:
            return
        self.seen.add(id(obj))
        module = getattr(obj, "__module__", None)
        if not _own_module(module, self.root):
            return
        if inspect.isclass(obj):
            for base in obj.__mro__[1:]:
                self.add(base)
        try:
            source = inspect.getsource(obj)
        except (OSError, TypeError):  # built in, or defined where no file holds it
            self.parts[f"{module}:{getattr(obj, '__qualname__', obj)}"] = "<no source>"
            return
        text = plain_source(source)
        self.parts[f"{module}:{obj.__qualname__}"] = text
        self._follow(text, sys.modules.get(module))

    def _follow(self, text: str, module: types.ModuleType | None) -> None:
        if module is None:
            return
        try:
            tree = ast.parse(text)
        except SyntaxError:
            return
        namespace = vars(module)
        for chain in sorted(set(_named(tree))):
            obj = _resolve(chain, namespace)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                self.add(obj)
            elif len(chain) == 1 and not isinstance(obj, types.ModuleType):
                value = _plain_value(obj) if chain[0] in namespace else None
                if value is not None and chain[0].isupper():  # a module constant, e.g. EPS = 1e-12
                    self.parts[f"{module.__name__}.{chain[0]}"] = value


@functools.lru_cache(maxsize=None)
def source_digest(cls: type) -> str:
    """The digest of what ``cls`` computes: its plain source and that of all it names in the package."""
    collector = _Collector(root=(cls.__module__ or "").split(".")[0])
    collector.add(cls)
    text = "\n\n".join(f"## {key}\n{collector.parts[key]}" for key in sorted(collector.parts))
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


@functools.lru_cache(maxsize=1)
def read_lock() -> dict[str, dict[str, dict[str, Any]]]:
    """The recorded {kind: {name: {"version", "digest"}}}; empty where no record exists."""
    try:
        return json.loads(LOCK_PATH.read_text())
    except FileNotFoundError:
        return {}


def identity_version(kind: str, name: str, cls: type) -> int | str:
    """``version`` where ``cls``'s code is the code recorded for that version; else the version
    with the current digest, so runs of an edited component never pass for the recorded ones."""
    version = int(getattr(cls, "version", 1))
    if _outside_package(cls):  # pml:... wraps a pinned package's class: its version pin is its identity
        return version
    recorded = read_lock().get(kind, {}).get(name)
    digest = source_digest(cls)
    if recorded and recorded.get("version") == version and recorded.get("digest") == digest:
        return version
    return f"{version}+{digest}"


def _outside_package(cls: type) -> bool:
    module = cls.__module__ or ""
    return not module.startswith("dmlbench") and module.split(".")[0] in {"pytorch_metric_learning", "timm", "torch"}


def current_sources(registries: Iterable[Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{kind: {name: {"version", "digest"}}} of every registered component of ``registries``."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for registry in registries:
        for name in registry.names():
            cls = registry.get(name)
            table.setdefault(registry.kind, {})[name] = {"version": int(getattr(cls, "version", 1)),
                                                         "digest": source_digest(cls)}
    return table


def silent_changes(recorded: dict, current: dict) -> list[str]:
    """Components whose digest changed while their version stayed: what a lock must not record."""
    found = []
    for kind, entries in current.items():
        for name, now in entries.items():
            before = recorded.get(kind, {}).get(name)
            if before and before["version"] == now["version"] and before["digest"] != now["digest"]:
                found.append(f"{kind} {name!r} (version {now['version']})")
    return found


def write_lock(registries: Iterable[Any], force: bool = False) -> list[str]:
    """Record the current digests in ``sources.lock.json``; returns the components whose code changed
    under an unchanged version (recorded only with ``force``: a change that alters no number)."""
    from .errors import ConfigError
    from .fileio import atomic_write_text

    current = current_sources(registries)
    changed = silent_changes(read_lock(), current)
    if changed and not force:
        raise ConfigError(
            f"code changed while the version stayed: {', '.join(changed)}. Bump the component's `version` "
            f"where what it computes changed (its old runs are then kept apart from new ones), or, for a change "
            f"that alters no number (a rename, a refactor), record it with `make lock FORCE=1`")
    atomic_write_text(LOCK_PATH, json.dumps(current, indent=1, sort_keys=True) + "\n")
    read_lock.cache_clear()
    return changed
