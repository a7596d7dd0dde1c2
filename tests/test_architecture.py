"""The package's shape: the folder listing is the architecture, and imports run one way.

Stages, lowest first; a module may import from its own stage and the ones below it, never above:

    base        errors, paths, fileio, registry, catalogue, presets, sources (what a component computes, as a digest)
    geometry    distances and index tuples of a batch
    components  losses, miners, samplers, models, datasets
    assembly    criterion (a loss with its miner), config (a run's settings, checked against the components)
    evaluation  metrics, exact neighbours, k-means, diagnostics
    training    the loop, feeds, resume, distributed, the run record
    study       the study file, running a cell, executors, preflight checks, estimates
    reporting   tables, statistics, figures, the report, the README's blocks
    bench       benchmarks and the GPU check
    cli         the command line

Every import counts, also one inside a function: none may close a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dmlbench"

STAGES = [
    ("base", ["errors", "paths", "fileio", "registry", "catalogue", "presets", "sources"]),
    ("geometry", ["geometry"]),
    ("components", ["losses", "miners", "samplers", "models", "datasets"]),
    ("assembly", ["criterion", "config"]),
    ("evaluation", ["evaluation"]),
    ("training", ["training"]),
    ("study", ["study"]),
    ("reporting", ["reporting"]),
    ("bench", ["bench"]),
    ("cli", ["cli", "__main__"]),
]
RANK = {top: rank for rank, (_, tops) in enumerate(STAGES) for top in tops}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, wherever in the file the import stands."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(here[:len(here) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            if not target.startswith("dmlbench"):
                continue
            for alias in node.names:  # 'from pkg import module' imports the module
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in known else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dmlbench")}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def stage(module: str) -> int | None:
    parts = module.split(".")
    return RANK.get(parts[1]) if len(parts) > 1 else None


def test_the_top_level_holds_few_modules_beside_the_stage_packages():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= 10, top
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert folders == sorted(["bench", "datasets", "evaluation", "geometry", "losses", "miners", "models", "reporting",
                              "samplers", "study", "training"])


def test_every_module_has_a_stage():
    unplaced = [m for m in modules() if m != "dmlbench" and stage(m) is None]
    assert not unplaced, f"add these to STAGES: {unplaced}"


def test_imports_run_one_way_along_the_stages():
    upward = [(m, t) for m, targets in graph().items() for t in targets
              if m != "dmlbench" and stage(t) is not None and stage(m) is not None and stage(t) > stage(m)]
    assert not upward, "\n".join(f"{m} imports {t}, a later stage" for m, t in upward)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str):
        state[node] = 1
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The two checks above can fail: on a planted package they do."""
    package = tmp_path / "dmlbench"
    (package / "training").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "training" / "__init__.py").write_text("")
    (package / "errors.py").write_text("def f():\n    from .training import loop\n")
    (package / "training" / "loop.py").write_text("from ..errors import f\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, package
    try:
        assert "dmlbench.training.loop" in graph()["dmlbench.errors"]
        with pytest.raises(pytest.fail.Exception, match="import cycle"):
            test_no_import_cycle()
        with pytest.raises(AssertionError, match="dmlbench.errors imports dmlbench.training.loop"):
            test_imports_run_one_way_along_the_stages()
    finally:
        PACKAGE = saved
