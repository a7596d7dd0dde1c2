"""A study's index evaluation: each finished run's test embeddings served by similarity-search
indexes (:mod:`dmlbench.evaluation.indexes`), and what each index costs and loses.

A study file opts in with an ``indexes:`` block (``indexes: {}`` takes every default):

    indexes:
      queries: 1000        # queries per run, drawn once per dataset (seed), the same for every run
      exact_queries: 200   # of them, those the ball tree and the pivot table answer
      seed: 0
      families:            # default: dmlbench.evaluation.indexes.default_specs()
        - {family: hnsw, M: 16, sweep: [16, 32, 64, 128, 256]}
        - {family: pq, m: 8}

For each finished run the network is reloaded from its checkpoint and the test split embedded again
(the evaluation's own embeddings). Without a gallery every test image is an item of the index and
the queries are a sample of them, each excluding itself; with one (In-Shop) the gallery is indexed
and the queries are a sample of the query split. Queries without another item of their class are
never drawn. The results go to ``<results>/indexes/<plan id>/<run id>.json``, written atomically;
the plan id hashes the block, ``INDEX_EVAL_VERSION`` and the faiss and scikit-learn versions, so a
changed plan or library makes new files and a finished file is never computed again. One process
at a time measures (a lock in the plan's folder), so no two evaluations share the cores they time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import ConfigError, DamagedFileError, MissingCheckpointError
from ..evaluation.indexes import IndexSpec, default_specs, parse_specs
from ..evaluation.indexes.aesa import MAX_ITEMS as AESA_MAX_ITEMS
from ..evaluation.indexes.sweep import Queries, evaluate_indexes, normalized
from ..fileio import atomic_write_json, read_json
from ..paths import results_dir

# Bumped when what the evaluation computes changes: its files are then new ones. 2: a missing answer
# counts the sphere's diameter in the relative distance error (it counted as infinite). 3: PQ, IVF-PQ,
# IVF-Flat and SQ8 rank by L2, the embeddings' own metric (they ranked by inner product). 4: range
# queries, the VP-tree, M-tree and AESA, the distance distribution (rho, LID), position error, the relative
# error on distances, distances computed by every family and the efficiency gain.
INDEX_EVAL_VERSION = 4
PLAN_KEYS = ("queries", "exact_queries", "seed", "families", "folds", "seeds")
RESULT_KEYS = ("run_id", "plan_id", "dataset", "loss", "miner", "seed", "exact", "rows")


@dataclass(frozen=True)
class IndexPlan:
    specs: tuple[IndexSpec, ...] = field(default_factory=lambda: tuple(default_specs()))
    queries: int = 1000
    exact_queries: int = 200
    seed: int = 0
    # which of a cell's runs are served: those of these folds and seeds (None: all). An index measures the
    # geometry a loss learns; one run per cell shows it at a fraction of the cost of every fold x seed.
    folds: tuple[int, ...] | None = None
    seeds: tuple[int, ...] | None = None
    # whether the block named its families: the defaults leave AESA out of a dataset too large for its N x N table
    families_given: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"queries": self.queries, "exact_queries": self.exact_queries, "seed": self.seed,
                "families": [spec.to_dict() for spec in self.specs]}

    def serves(self, config) -> bool:
        """Whether the run of this configuration is one the plan serves (its fold and seed are chosen)."""
        return ((self.folds is None or (config.fold or 0) in self.folds)
                and (self.seeds is None or config.seed in self.seeds))

    @property
    def plan_id(self) -> str:
        identity = self.to_dict() | {"version": INDEX_EVAL_VERSION, "faiss": _version("faiss-cpu"),
                                     "scikit-learn": _version("scikit-learn")}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]

    def folder(self, results: Path | None = None) -> Path:
        return (results or results_dir()) / "indexes" / self.plan_id

    def result_path(self, run_id: str, results: Path | None = None) -> Path:
        return self.folder(results) / f"{run_id}.json"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def parse_plan(path: Path, raw: Any) -> IndexPlan:
    """The study file's ``indexes:`` block, checked: one error per bad key, naming the valid ones."""
    where = f"{path}: indexes"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a mapping with keys {', '.join(PLAN_KEYS)} (indexes: {{}} takes the defaults)")
    unknown = sorted(set(raw) - set(PLAN_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(map(repr, unknown))}; valid keys: {', '.join(PLAN_KEYS)}")
    numbers = {}
    for key, low in (("queries", 1), ("exact_queries", 1), ("seed", 0)):
        value = raw.get(key, getattr(IndexPlan, key))
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{where}: {key} must be a whole number >= {low}, got {value!r}")
        numbers[key] = value
    for key in ("folds", "seeds"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, list) or not value or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
            raise ConfigError(f"{where}: {key} must be a list of whole numbers >= 0 (or absent: every one), got {value!r}")
        numbers[key] = None if value is None else tuple(value)
    specs = parse_specs(raw["families"], f"{where}: families") if "families" in raw else default_specs()
    return IndexPlan(specs=tuple(specs), families_given="families" in raw, **numbers)


def query_sample(labels: np.ndarray, count: int, seed: int, *, items: np.ndarray | None = None) -> np.ndarray:
    """``count`` query positions drawn without replacement (numpy's PCG64 with ``seed``) among those with
    another item of their class: the other test images (``items=None``) or the gallery's ``items`` labels."""
    classes, sizes = np.unique(labels if items is None else items, return_counts=True)
    position = np.clip(np.searchsorted(classes, labels), 0, len(classes) - 1)
    have = np.where(classes[position] == labels, sizes[position], 0) - (1 if items is None else 0)
    eligible = np.flatnonzero(have > 0)
    if len(eligible) == 0:
        raise ValueError("no query has another item of its class: nothing to retrieve")
    rng = np.random.default_rng(seed)
    return eligible[rng.permutation(len(eligible))[:count]]


def evaluate_run(cell, splits, plan: IndexPlan, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One finished run's indexes measured (the file's contents; see the module docstring)."""
    from ..training.embed import embed_test_split

    started = time.perf_counter()
    gallery = splits.gallery is not None
    parts = ("test", "gallery") if gallery else ("test",)
    embedded = embed_test_split(cell.run_dir, splits, parts=parts)
    (test, test_labels), *rest = embedded if gallery else [embedded]
    test, test_labels = normalized(test.numpy()), test_labels.numpy()
    embed_s = time.perf_counter() - started
    if gallery:
        items, item_labels = normalized(rest[0][0].numpy()), rest[0][1].numpy()
        chosen = query_sample(test_labels, plan.queries, plan.seed, items=item_labels)
        queries = Queries(test[chosen], test_labels[chosen])
    else:
        items, item_labels = test, test_labels
        chosen = query_sample(test_labels, plan.queries, plan.seed)
        queries = Queries(test[chosen], test_labels[chosen], exclude=chosen)
    specs, skipped = usable_specs(plan, len(items))
    measured = evaluate_indexes(items, item_labels, queries, specs, exact_queries=plan.exact_queries,
                                threads_all=_cores(), log=log)
    measured["skipped"] = skipped
    config = cell.config
    return {"run_id": cell.run_id, "plan_id": plan.plan_id, "plan": plan.to_dict(), "dataset": config.dataset,
            "loss": config.loss, "miner": config.miner, "seed": config.seed, "role": cell.role,
            "items": len(items), "dim": int(items.shape[1]), "gallery": gallery, **measured,
            "embed_s": embed_s, "total_s": time.perf_counter() - started, "threads_all": _cores(),
            "versions": {name: _version(name) for name in ("faiss-cpu", "scikit-learn", "numpy", "torch")}}


def usable_specs(plan: IndexPlan, items: int) -> tuple[list[IndexSpec], list[str]]:
    """The plan's indexes for ``items`` items, and why any was left out: with the default families,
    AESA is left out of a collection too large for its distance matrix (a named AESA is not)."""
    if plan.families_given or items <= AESA_MAX_ITEMS:
        return list(plan.specs), []
    return ([spec for spec in plan.specs if spec.family != "aesa"],
            [f"aesa: {items} items exceed the {AESA_MAX_ITEMS} its N x N distance matrix takes"])


def run_line(result: dict[str, Any]) -> str:
    """One line per evaluated run: its intrinsic dimensionality and each exact structure's share of
    brute force's distance computations (k-NN)."""
    stats = result.get("distribution") or {}
    shares = [f"{row['family']} {100 * row['distance_fraction']:.1f}%" for row in result["rows"]
              if row.get("distance_fraction") is not None]
    return (f"indexes: {result['run_id']}: rho {stats.get('rho', float('nan')):.2f}, LID "
            f"{stats.get('lid') or float('nan'):.1f}; distances computed (k-NN): {', '.join(shares) or 'none counted'}")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def _measuring(folder: Path) -> Iterator[None]:
    """Held while one process measures: others wait, so no two evaluations time on shared cores."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def result_problem(path: Path) -> str | None:
    """Why ``path`` is not a finished index evaluation (absent, unreadable, incomplete), or None."""
    if not path.is_file():
        return "not written"
    try:
        data = read_json(path)
    except (OSError, ValueError) as error:
        return f"unreadable ({error})"
    if not isinstance(data, dict) or any(key not in data for key in RESULT_KEYS):
        return f"incomplete: an index evaluation holds {', '.join(RESULT_KEYS)}"
    return None


def run_indexes(study, *, log: Callable[[str], None] = print) -> dict[str, int]:
    """Every finished run of ``study`` evaluated under its ``indexes:`` plan, unless already done.
    Returns the counts: computed, already done, runs not finished (left for a later pass)."""
    plan = study.indexes
    if plan is None:
        raise ConfigError(f"{study.path}: has no indexes: block; add 'indexes: {{}}' to evaluate its runs' indexes")
    from .preflight import check_study_indexes

    check_study_indexes(study)  # the block against the runs' embeddings and items, before anything is measured
    counts = {"computed": 0, "done": 0, "unfinished": 0}
    unusable: list[str] = []  # runs whose checkpoint is damaged or absent: the others are still measured
    with _measuring(plan.folder()):
        atomic_write_json(plan.folder() / "plan.json", plan.to_dict() | {"plan_id": plan.plan_id,
                                                                          "version": INDEX_EVAL_VERSION})
        _evaluate_cells(study, plan, counts, unusable, log)
    log(f"indexes: {counts['computed']} runs evaluated, {counts['done']} already done, "
        f"{counts['unfinished']} runs not finished yet ({plan.folder()})")
    if unusable:
        raise DamagedFileError(f"indexes: {len(unusable)} run(s) could not be reloaded, the first: {unusable[0]}")
    return counts


def _evaluate_cells(study, plan: IndexPlan, counts: dict[str, int], unusable: list[str],
                    log: Callable[[str], None]) -> None:
    """Each finished cell without a finished evaluation measured; a run whose checkpoint cannot be
    reloaded is named (``unusable``) and left for later."""
    splits_of: dict[tuple, Any] = {}
    for cell in study.cells:
        path = plan.result_path(cell.run_id)
        if not plan.serves(cell.config):
            continue
        if not cell.is_done():
            counts["unfinished"] += 1
            continue
        if result_problem(path) is None:
            counts["done"] += 1
            continue
        config = cell.config
        key = (config.dataset, config.data_root, config.image_size, config.data_subset)
        if key not in splits_of:
            splits_of[key] = config.load_splits()
        log(f"indexes: {cell.run_id}")
        try:
            result = evaluate_run(cell, splits_of[key], plan, log=log)
        except (DamagedFileError, MissingCheckpointError) as error:  # the message names the checkpoint
            log(f"indexes: {cell.run_id}: not evaluated: {error}")
            unusable.append(str(error))
            continue
        atomic_write_json(path, result, compact=True)  # one line: about half the bytes of an indented file
        log(run_line(result))
        counts["computed"] += 1


def read_results(plan: IndexPlan, run_ids: list[str], results: Path | None = None) -> list[dict[str, Any]]:
    """The finished index evaluations of these runs (the others are left out)."""
    out = []
    for run_id in run_ids:
        path = plan.result_path(run_id, results)
        if result_problem(path) is None:
            out.append(read_json(path))
    return out
