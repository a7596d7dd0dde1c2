"""Every index of a list over one set of embeddings: build each, search each setting of its sweep on
one thread and on every core, and score the answers against the exact neighbours.

    result = evaluate_indexes(items, item_labels, queries, default_specs())
    result["exact"]     # the exact evaluation of the same queries: recall@1, map@r (when R fits the depth)
    result["rows"]      # one per index and search setting (the keys are ROW_KEYS)

``queries`` is a :class:`Queries`: vectors with their labels, and for queries that are items of the
index (no gallery: every test image queries the others) the item each must not retrieve. The exact
metric structures that count their distances (ball tree, pivots, VP-tree, M-tree, AESA) answer the
first ``exact_queries`` queries only: they are slow in Python and in high dimension, and exact by
construction. When the queries are items, these structures are built over the other items
(:func:`held_out`, ``held_out`` in their rows), and their rows carry no label metrics. Every family
also answers a range query per query of that subset (``range_rows``), of the radius
:func:`tenth_distance`. Queries per second are batch throughput, the best of up to ``repeats``
timed searches (ann-benchmarks also keeps the best run).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..neighbours import knn
from .families import FAMILIES, IndexSpec, build_index
from .pivots import _exact_distances
from .distribution import distance_statistics
from .measure import (Positions, distance_ratio_error, label_metrics, per_query_recall, relative_distance_error,
                      search_depth)

ROW_KEYS = ("index", "family", "setting", "exact", "queries", "k", "knn_recall", "relative_distance_error",
            "distance_ratio_error", "position_error", "mismatches", "recall@1", "map@r", "exact_recall@1",
            "exact_map@r", "qps_1", "qps_all", "threads_all", "build_s", "bytes_per_vector", "distance_fraction",
            "distances_per_query", "efficiency_gain", "held_out")
RANGE_KEYS = ("index", "family", "setting", "exact", "queries", "radius", "answers", "range_recall",
              "range_precision", "mismatches", "qps_1", "distance_fraction", "distances_per_query", "efficiency_gain",
              "held_out")
TIMING_BUDGET_S = 1.0  # a search quicker than a third of this is timed again, up to `repeats` times


@dataclass
class Queries:
    vectors: np.ndarray  # (Q, d) float32, L2-normalised
    labels: np.ndarray | None = None  # (Q,) class ids; None: no label metrics (synthetic data)
    exclude: np.ndarray | None = None  # (Q,) the item each query may not retrieve (itself), or None

    def head(self, n: int) -> "Queries":
        return Queries(self.vectors[:n], None if self.labels is None else self.labels[:n],
                       None if self.exclude is None else self.exclude[:n])


def normalized(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))


def exact_answers(items: np.ndarray, queries: Queries, k: int) -> np.ndarray:
    """The exact k nearest items of each query (float64 scores, ties by the lower index), (Q, k)."""
    exclude = None if queries.exclude is None else torch.from_numpy(queries.exclude.astype(np.int64))
    _, ids = knn(torch.from_numpy(queries.vectors), torch.from_numpy(items), k, exclude=exclude, scores=False)
    return ids.numpy()


def relevant_counts(item_labels: np.ndarray, queries: Queries) -> np.ndarray:
    """R of each query: the items of its class, itself excluded when it is one of them."""
    classes, counts = np.unique(item_labels, return_counts=True)
    position = np.clip(np.searchsorted(classes, queries.labels), 0, len(classes) - 1)
    r = np.where(classes[position] == queries.labels, counts[position], 0)
    return r - (queries.exclude is not None)


def timed(search: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(the shortest wall time of up to ``repeats`` calls, the first call's result)."""
    start = time.perf_counter()
    result = search()
    best = time.perf_counter() - start
    for _ in range(repeats - 1):
        if best > TIMING_BUDGET_S / 3:
            break
        start = time.perf_counter()
        search()
        best = min(best, time.perf_counter() - start)
    return best, result


def evaluate_indexes(items, item_labels, queries: Queries, specs: list[IndexSpec], *, exact_queries: int = 500,
                     threads_all: int | None = None, repeats: int = 3, log: Callable[[str], None] | None = None,
                     ranges: bool = True, statistics: bool = True) -> dict:
    """Build every spec over ``items`` and measure every search setting (see the module docstring)."""
    items = normalized(items)
    threads_all = threads_all or os.cpu_count() or 1
    labelled = queries.labels is not None and item_labels is not None
    relevant = relevant_counts(np.asarray(item_labels), queries) if labelled else None
    if labelled and (relevant < 1).any():
        raise ValueError(f"{int((relevant < 1).sum())} queries have no other item of their class: choose queries "
                         f"that do (the evaluation leaves such queries out)")
    k, with_map = search_depth(int(relevant.max())) if labelled else search_depth(0)
    true = exact_answers(items, queries, k)
    reference = {"queries": len(true), "k": k, "map_at_r_measured": with_map}
    if labelled:
        reference |= label_metrics(true, item_labels, queries.labels, relevant, with_map=with_map)
    context = dict(items=items, item_labels=item_labels, queries=queries, relevant=relevant, true=true, k=k,
                   with_map=with_map, threads_all=threads_all, repeats=repeats, exact_queries=exact_queries,
                   positions=Positions(queries.vectors, items, queries.exclude))
    first = queries.head(min(exact_queries, len(true)))
    radius = tenth_distance(items, first, true) if ranges else None
    if ranges:
        context["range"] = range_reference(items, first, radius)
        reference |= {"radius": radius, "range_queries": len(context["range"]["ids"])}
    if queries.exclude is not None and any(FAMILIES[spec.family].counts_distances for spec in specs):
        context["held"] = held_out(items, first, k, radius)
    out = {"exact": reference, "rows": [], "range_rows": []}
    for spec in specs:
        out["rows"] += _measure_spec(spec, context, log)
    out["range_rows"] = context.get("range_rows", [])
    if statistics:
        out["distribution"] = distance_statistics(items)
    return out


def tenth_distance(items: np.ndarray, queries: Queries, true: np.ndarray) -> float:
    """The range queries' radius: the median over ``queries`` of the distance to their 10th neighbour,
    so that a query finds about ten items within it."""
    tenth = true[:len(queries.vectors), min(9, true.shape[1] - 1)]
    d = np.sqrt(((items[tenth].astype(np.float64) - queries.vectors.astype(np.float64)) ** 2).sum(1))
    return float(np.median(d))


def range_reference(items: np.ndarray, queries: Queries, radius: float) -> dict:
    """The exact answers of a range query of ``radius`` per query, by brute force over float64 distances
    computed as the exact structures compute them."""
    d = _exact_distances(queries.vectors.astype(np.float64), items.astype(np.float64))  # (Q, N)
    if queries.exclude is not None:
        d[np.arange(len(d)), queries.exclude] = np.inf
    ids = []
    for row in d:
        inside = np.flatnonzero(row <= radius)
        ids.append(inside[np.lexsort((inside, row[inside]))])
    return {"radius": radius, "ids": ids, "queries": queries}


def held_out(items: np.ndarray, queries: Queries, k: int, radius: float | None) -> dict:
    """The collection the structures that count distances search when the queries are items: the items
    without the queries' own, and the exact answers there. A structure that keeps stored items as pivots
    would otherwise meet the query's own copy at distance 0 and learn every distance from its table
    (AESA then computes k + 2 distances per query, whatever the data); held out, every structure faces a
    query it has not stored, as a deployed index does."""
    kept = np.setdiff1d(np.arange(len(items)), queries.exclude)
    sub, fresh = np.ascontiguousarray(items[kept]), Queries(queries.vectors)
    out = {"items": sub, "queries": fresh, "true": exact_answers(sub, fresh, k), "positions": Positions(fresh.vectors, sub),
           "relevant": None, "held_out": True}
    if radius is not None:
        out["range"] = range_reference(sub, fresh, radius)
    return out


def _measure_spec(spec: IndexSpec, c: dict, log: Callable[[str], None] | None) -> list[dict]:
    """One index built, then each search setting of its sweep measured (k-NN rows; range rows go to
    ``c["range_rows"]``)."""
    family = FAMILIES[spec.family]
    if family.counts_distances and "held" in c:
        c = {**c, **c["held"], "range_rows": c.setdefault("range_rows", [])}
    built = build_index(spec, c["items"], threads=c["threads_all"])
    n_q = min(c["exact_queries"], len(c["true"])) if family.counts_distances else len(c["true"])
    queries, true = c["queries"].head(n_q), c["true"][:n_q]
    labelled = c["relevant"] is not None
    exact = label_metrics(true, c["item_labels"], queries.labels, c["relevant"][:n_q],
                          with_map=c["with_map"]) if labelled else {}
    rows = []
    for setting in spec.settings:
        row = _knn_row(built, spec, setting, queries, true, c)
        if labelled:
            got = label_metrics(row.pop("found"), c["item_labels"], queries.labels, c["relevant"][:n_q],
                                with_map=c["with_map"])
            row |= {"recall@1": got["recall@1"], "map@r": got["map@r"], "exact_recall@1": exact["recall@1"],
                    "exact_map@r": exact["map@r"]}
        rows.append({key: row.get(key) for key in ROW_KEYS})
        if "range" in c:
            c.setdefault("range_rows", []).append(_range_row(built, spec, setting, c))
        if log:
            log(f"  {spec.name:<22} {_setting_text(setting):<14} knn-recall {row['knn_recall']:.4f}  "
                f"{row['qps_1']:>10.0f} q/s (1 thread)  {row['qps_all']:>10.0f} q/s ({c['threads_all']})")
    return rows


def _knn_row(built, spec: IndexSpec, setting: dict, queries: Queries, true: np.ndarray, c: dict) -> dict:
    """One search setting's k-NN answers timed and scored against the exact ones."""
    family = FAMILIES[spec.family]

    def search(threads: int):
        return built.search(queries.vectors, c["k"], setting, threads=threads, exclude=queries.exclude)

    one_s, (_, found, computed) = timed(lambda: search(1), c["repeats"])
    # the trees walk their nodes in Python, holding the interpreter's lock: on every core they run as on one
    all_s = one_s if spec.family in ("vp-tree", "m-tree") else timed(lambda: search(c["threads_all"]), c["repeats"])[0]
    per_query = None if computed is None else float(np.mean(computed))
    good = per_query_recall(found, true, queries.vectors, c["items"])
    return {"index": spec.name, "family": spec.family, "setting": setting, "exact": family.exact,
            "queries": len(true), "k": c["k"], "knn_recall": float(good.mean()),
            "relative_distance_error": relative_distance_error(found, true, queries.vectors, c["items"]),
            "distance_ratio_error": distance_ratio_error(found, true, queries.vectors, c["items"]),
            "position_error": c["positions"].error(found), "mismatches": int((good < 1).sum()),
            "qps_1": len(true) / one_s, "qps_all": len(true) / all_s, "threads_all": c["threads_all"],
            "build_s": built.build_s, "bytes_per_vector": built.bytes_per_vector,
            "distance_fraction": per_query / built.n if family.counts_distances and per_query is not None else None,
            "distances_per_query": per_query, "efficiency_gain": built.n / per_query if per_query else None,
            "held_out": c.get("held_out", False), "found": found}


def _range_row(built, spec: IndexSpec, setting: dict, c: dict) -> dict:
    """One search setting's range query (the reference's radius) timed and scored against the exact answers."""
    ref = c["range"]
    queries = ref["queries"]
    one_s, (ids, _, computed) = timed(lambda: built.range_search(queries.vectors, ref["radius"], setting,
                                                                exclude=queries.exclude), c["repeats"])
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(ids, ref["ids"]))
    wanted, given = sum(len(b) for b in ref["ids"]), sum(len(a) for a in ids)
    per_query = None if computed is None else float(np.mean(computed))
    family = FAMILIES[spec.family]
    row = {"index": spec.name, "family": spec.family, "setting": setting, "exact": family.exact,
           "queries": len(ids), "radius": ref["radius"], "answers": given / len(ids),
           "range_recall": hits / wanted if wanted else 1.0, "range_precision": hits / given if given else 1.0,
           "mismatches": int(sum(not np.array_equal(a, b) for a, b in zip(ids, ref["ids"]))),
           "qps_1": len(ids) / one_s,
           "distance_fraction": per_query / built.n if family.counts_distances and per_query is not None else None,
           "distances_per_query": per_query, "efficiency_gain": built.n / per_query if per_query else None,
           "held_out": c.get("held_out", False)}
    return {key: row.get(key) for key in RANGE_KEYS}


def _setting_text(setting: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items()) or "-"
