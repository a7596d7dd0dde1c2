"""Similarity-search indexes on this machine: k-NN recall@10 against queries per second, in a batch and
one query at a time, over a grid of build and search settings, with each family's Pareto frontier.

The data sets (:mod:`dmlbench.bench.index_data`, ``--data``): ``fashion-mnist`` (the 60,000 raw
training images indexed, test images as queries, pixels L2-normalised: angular neighbours) and
``manifold`` (points of a 12-dimensional curved surface in 128 dimensions, no cluster count an IVF
index could match) are the committed ones; ``clustered`` (the earlier Gaussian mixture) stays for
comparison. Every build of :func:`plan` is made once and searched with each setting of its sweep:

- flat (brute force, exact);
- hnsw: M in ``HNSW_M`` x efConstruction in ``HNSW_EF_CONSTRUCTION``, each with ef_search in ``EF_SEARCH``;
- ivf-flat: nlist the powers of two nearest sqrt(n)/2, sqrt(n) and 4 sqrt(n), nprobe in ``NPROBE``;
- ivf-pq: nlist nearest sqrt(n), two code sizes (``pq_sizes``), nprobe in ``NPROBE``; and
  ivf-pq-refine, the smaller code's index with exact re-ranking (faiss ``IndexRefineFlat``: the
  k x k_factor candidates the codes rank best are scored again on the stored float vectors), nprobe in
  ``REFINE_NPROBE`` x k_factor in ``K_FACTORS`` (k_factor 1 would re-order the same 10 answers, whose
  recall is the plain index's);
- pq (exhaustive, the smaller code) and sq8; ball-tree and pivots (exact, on the first
  ``--exact-queries`` queries).

A single-key sweep (ef_search, nprobe) stops at the first setting of recall ``STOP_RECALL`` or after
two settings in a row that each add less than ``PLATEAU`` (recall has levelled off; the settings left
out cost more). Each setting is timed in a batch (all queries in one call, best of up to 3, on one
thread and on every core) and one query at a time (``--single-queries`` calls of one query each from
a Python loop, one thread).
The rows carry build time, bytes per vector and, per mode, whether the row is on its family's Pareto
frontier (no row of the family has at least its recall and its queries/s, and more of one).

    dmlbench bench indexes --data fashion-mnist     # results/bench/indexes-fashion-mnist.{json,csv,txt,png}
    dmlbench bench indexes --data manifold --n 100000 --out /tmp/bench

Sharding beyond one index or one machine: :mod:`dmlbench.evaluation.indexes.sharding`.
"""

from __future__ import annotations

import argparse
import io
import math
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..evaluation.indexes import IndexSpec
from ..evaluation.indexes.families import BuiltIndex, auto_nlist, build_index
from ..evaluation.indexes.measure import knn_recall, relative_distance_error
from ..evaluation.indexes.sweep import timed
from ..fileio import atomic_write_bytes, atomic_write_json, compact_png
from ..paths import results_dir
from .index_data import DATA, DEFAULT_N, clustered, load_data  # noqa: F401  (clustered: the earlier generator)
from .timing import load_note, load_record, load_span, machine_line, save_table

K = 10
HNSW_M = (8, 16, 32)
HNSW_EF_CONSTRUCTION = (40, 200)
EF_SEARCH = (16, 32, 64, 128, 256, 512)
NPROBE = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REFINE_NPROBE = (4, 16, 64)
K_FACTORS = (4, 16, 64)
PQ_SIZES = {128: (16, 32), 784: (28, 49)}  # bytes per code: m sub-quantisers of 8 bits
MODES = {"batch": "qps_1", "single": "qps_single"}  # the frontier's speed in each mode
STOP_RECALL = 0.999  # a single-key sweep stops at the first setting reaching this recall ...
PLATEAU = 0.0005  # ... or after two settings in a row adding less than this recall each
TRIMMED = ("trimmed to fit about 10 minutes on 2 cores: ivf-pq at one nlist (nearest sqrt n), exact re-ranking "
           "over the smaller code only, pq at the smaller code only, no OPQ, no HNSW over compressed vectors")


@dataclass
class Variant:
    """One built index and the search settings measured on it."""
    index: str
    family: str
    build_s: float
    bytes_per_vector: float
    settings: list[dict]
    search: Callable[[np.ndarray, dict, int], tuple[np.ndarray, np.ndarray | None]]  # (ids, computed)
    build: dict = field(default_factory=dict)
    exact_subset: bool = False  # answers only the first --exact-queries queries
    stops_early: bool = True  # a single-key sweep, stopped by _done


def pq_sizes(dim: int) -> tuple[int, int]:
    """Two code sizes m (bytes per vector) dividing ``dim``: ``PQ_SIZES`` where the dimension has an
    entry (784: 28 and 49, whose sub-vectors faiss trains in seconds; 16 bytes train minutes), else the
    divisors nearest 16 and 32."""
    if dim in PQ_SIZES:
        return PQ_SIZES[dim]
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    return tuple(min(divisors, key=lambda m: (abs(m - target), m)) for target in (16, 32))


def nlists(n: int) -> list[int]:
    """The IVF-Flat list counts: powers of two nearest sqrt(n)/2, sqrt(n) and 4 sqrt(n), distinct."""
    root = math.sqrt(n)
    return sorted({min(n, 2 ** round(math.log2(max(1.0, x)))) for x in (root / 2, root, 4 * root)})


def _faiss_search(index, apply: Callable[[dict], None]):
    """The search function of a faiss index: applies the setting, searches on ``threads`` threads."""
    import faiss

    def search(queries: np.ndarray, setting: dict, threads: int):
        apply(setting)
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads)
        try:
            return index.search(queries, K)[1], None
        finally:
            faiss.omp_set_num_threads(before)
    return search


def _setter(index) -> Callable[[dict], None]:
    """Applies ef_search, nprobe and k_factor to whichever of them ``index`` has."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)

    def apply(setting: dict) -> None:
        if "ef_search" in setting:
            index.hnsw.efSearch = setting["ef_search"]
        if "nprobe" in setting:
            ivf.nprobe = setting["nprobe"]
        if "k_factor" in setting:
            index.k_factor = setting["k_factor"]
    return apply


def _nbytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def _variant(spec: IndexSpec, items: np.ndarray, index: str, family: str, settings: list[dict], **build) -> Variant:
    built = build_index(spec, items)
    if built.native is None:  # an exact metric index of scikit-learn or dmlbench
        return Variant(index, family, built.build_s, built.bytes_per_vector, [{}], _built_search(built), build,
                       exact_subset=True)
    return Variant(index, family, built.build_s, built.bytes_per_vector, settings,
                   _faiss_search(built.native, _setter(built.native)), build)


def _built_search(built: BuiltIndex):
    def search(queries: np.ndarray, setting: dict, threads: int):
        _, ids, computed = built.search(queries, K, setting, threads=threads)
        return ids, computed
    return search


def _ivf_pq_variants(items: np.ndarray, nlist: int, m: int, refine: bool) -> Iterator[Variant]:
    """IVF-PQ at (nlist, m) and, when ``refine``, the same index with exact re-ranking."""
    import faiss

    probes = tuple(p for p in NPROBE if p <= nlist)
    built = build_index(IndexSpec.make("ivf-pq", sweep=probes, nlist=nlist, m=m), items)
    name, build = f"ivf-pq m={m} nlist={nlist}", {"nlist": nlist, "m": m}
    native = built.native
    yield Variant(name, "ivf-pq", built.build_s, built.bytes_per_vector, [{"nprobe": p} for p in probes],
                  _faiss_search(native, _setter(native)), build)
    if not refine:
        return
    start = time.perf_counter()
    refined = faiss.IndexRefineFlat(native, faiss.swig_ptr(items))  # stores a copy of the float vectors
    build_s = built.build_s + time.perf_counter() - start
    settings = [{"nprobe": p, "k_factor": f} for p in REFINE_NPROBE if p <= nlist for f in K_FACTORS]
    yield Variant(name + " +refine", "ivf-pq-refine", build_s, _nbytes(refined) / len(items), settings,
                  _faiss_search(refined, _setter(refined)), build, stops_early=False)


def plan(items: np.ndarray, exact: bool = True) -> Iterator[Variant]:
    """Every build of the benchmark, made one at a time (the module docstring lists them)."""
    n, dim = items.shape
    yield _variant(IndexSpec.make("flat"), items, "flat", "flat", [{}])
    for m_links in HNSW_M:
        for efc in HNSW_EF_CONSTRUCTION:
            yield _variant(IndexSpec.make("hnsw", M=m_links, ef_construction=efc), items, f"hnsw M={m_links} efC={efc}",
                           "hnsw", [{"ef_search": e} for e in EF_SEARCH], M=m_links, ef_construction=efc)
    for nlist in nlists(n):
        probes = tuple(p for p in NPROBE if p <= nlist)
        yield _variant(IndexSpec.make("ivf-flat", sweep=probes, nlist=nlist), items, f"ivf-flat nlist={nlist}",
                       "ivf-flat", [{"nprobe": p} for p in probes], nlist=nlist)
    small, large = pq_sizes(dim)
    nlist = min(auto_nlist(n), n)
    yield from _ivf_pq_variants(items, nlist, small, refine=True)
    yield from _ivf_pq_variants(items, nlist, large, refine=False)
    yield _variant(IndexSpec.make("pq", m=small), items, f"pq m={small}", "pq", [{}], m=small)
    yield _variant(IndexSpec.make("sq8"), items, "sq8", "sq8", [{}])
    if exact:
        yield _variant(IndexSpec.make("ball-tree"), items, "ball-tree leaf_size=40", "ball-tree", [{}])
        yield _variant(IndexSpec.make("pivots"), items, "pivots pivots=16", "pivots", [{}])


def exact_neighbours(items: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The exact K nearest items of each query by inner product (float64 ties by the lower id)."""
    import torch

    from ..evaluation.neighbours import knn

    _, ids = knn(torch.from_numpy(queries), torch.from_numpy(items), K, scores=False)
    return ids.numpy()


def best_time(search: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """(the shortest wall time of up to ``repeats`` calls, the first call's result), as the sweep times."""
    return timed(search, repeats)


def one_at_a_time(variant: Variant, queries: np.ndarray, setting: dict) -> tuple[float, float]:
    """(queries per second, median latency in ms) of ``queries`` searched one per call on one thread,
    after three warm-up calls."""
    for i in range(min(3, len(queries))):
        variant.search(queries[i:i + 1], setting, 1)
    times = []
    for i in range(len(queries)):
        start = time.perf_counter()
        variant.search(queries[i:i + 1], setting, 1)
        times.append(time.perf_counter() - start)
    return len(times) / sum(times), 1000 * statistics.median(times)


def measure(variant: Variant, setting: dict, c: dict) -> dict:
    """One row: recall and distance error of the batch answers, batch and one-at-a-time speed."""
    count = min(c["exact_queries"], len(c["queries"])) if variant.exact_subset else len(c["queries"])
    queries, true = c["queries"][:count], c["true"][:count]
    one_s, (found, computed) = best_time(lambda: variant.search(queries, setting, 1))
    all_s, _ = best_time(lambda: variant.search(queries, setting, c["threads_all"]))
    single = queries[:min(c["single_queries"], count)]
    qps_single, latency = one_at_a_time(variant, single, setting)
    return {"index": variant.index, "family": variant.family, "setting": _setting_text(setting),
            "M": variant.build.get("M"), "ef_construction": variant.build.get("ef_construction"),
            "nlist": variant.build.get("nlist"), "m": variant.build.get("m"),
            "reranked": K * setting["k_factor"] if "k_factor" in setting else None,
            "queries": count, "single_queries": len(single), "k": K,
            "knn_recall": knn_recall(found, true, queries, c["items"]),
            "relative_distance_error": relative_distance_error(found, true, queries, c["items"]),
            "qps_1": count / one_s, "qps_all": count / all_s, "threads_all": c["threads_all"],
            "qps_single": qps_single, "latency_ms": latency, "build_s": variant.build_s,
            "bytes_per_vector": variant.bytes_per_vector,
            "distance_fraction": None if computed is None else float(np.mean(computed)) / len(c["items"]),
            "peak_rss_gb": peak_rss_gb()}


def _setting_text(setting: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items()) or "-"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def sweep(variant: Variant, c: dict, log: Callable[[str], None]) -> list[dict]:
    """The rows of every setting of ``variant``, a single-key sweep stopping early (:func:`_done`)."""
    rows = []
    for setting in variant.settings:
        row = measure(variant, setting, c)
        rows.append(row)
        log(f"  {variant.index:<30} {row['setting']:<20} recall {row['knn_recall']:.4f}  batch {row['qps_1']:>9.0f} "
            f"q/s (1 thread) {row['qps_all']:>9.0f} ({c['threads_all']})  single {row['qps_single']:>8.0f} q/s")
        if variant.stops_early and _done(rows):
            break
    return rows


def _done(rows: list[dict]) -> bool:
    """Whether a single-key sweep can stop: its last setting reached STOP_RECALL, or its last two
    settings each added less than PLATEAU recall (costlier settings would only cost)."""
    recalls = [r["knn_recall"] for r in rows]
    plateau = len(recalls) >= 3 and all(b - a < PLATEAU for a, b in zip(recalls[-3:], recalls[-2:]))
    return recalls[-1] >= STOP_RECALL or plateau


def pareto(recall, qps) -> np.ndarray:
    """Whether each point is on the Pareto frontier: no other point has at least its recall and its
    queries per second, and more of one."""
    recall, qps = np.asarray(recall, dtype=float), np.asarray(qps, dtype=float)
    covered = (recall[None, :] >= recall[:, None]) & (qps[None, :] >= qps[:, None])
    better = (recall[None, :] > recall[:, None]) | (qps[None, :] > qps[:, None])
    return ~(covered & better).any(axis=1)


def with_frontiers(table: pd.DataFrame) -> pd.DataFrame:
    """The table with ``frontier_<mode>``: on its family's frontier of recall against that mode's speed."""
    table = table.copy()
    for mode, speed in MODES.items():
        flags = pd.Series(False, index=table.index)
        for _, rows in table.groupby("family", sort=False):
            flags[rows.index] = pareto(rows["knn_recall"], rows[speed])
        table[f"frontier_{mode}"] = flags.astype(bool)
    return table


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> tuple[pd.DataFrame, str]:
    """(every row, the data's one-line description)."""
    import os

    started = time.perf_counter()
    data = load_data(args.data, args.n, args.queries)
    log(f"{data.description}; {len(data.queries)} queries; loaded in {time.perf_counter() - started:.0f} s")
    c = {"items": data.items, "queries": data.queries, "true": exact_neighbours(data.items, data.queries),
         "exact_queries": args.exact_queries, "single_queries": args.single_queries,
         "threads_all": os.cpu_count() or 1}
    rows = []
    for variant in plan(data.items, exact=args.exact_queries > 0):
        log(f"{variant.index}: built in {variant.build_s:.1f} s, {variant.bytes_per_vector:.1f} bytes per vector; "
            f"peak memory {peak_rss_gb():.2f} GiB")
        rows += sweep(variant, c, log)
        del variant
    table = pd.DataFrame(rows)
    table.insert(0, "dim", data.items.shape[1])
    table.insert(0, "n", len(data.items))
    table.insert(0, "data", args.data)
    return with_frontiers(table), data.description


def _header(args, table: pd.DataFrame, description: str, load: dict, total_s: float) -> str:
    import torch

    import faiss

    return (f"Similarity-search indexes over {description}, {int(table['queries'].max())} queries, k = {K}; "
            f"{machine_line(torch.device('cpu'))}; faiss {faiss.__version__}; {load_note(load)}\n"
            f"knn_recall = recall@10 against the exact neighbours; qps_1, qps_all = queries per second in a batch (all "
            f"queries in one call, best of up to 3) on 1 and {int(table['threads_all'].iloc[0])} threads; qps_single = "
            f"queries per second issued one per call from a Python loop on 1 thread ({args.single_queries} queries), "
            f"latency_ms its median; reranked = candidates re-ranked exactly per query (k x k_factor); frontier_batch, "
            f"frontier_single = on the family's Pareto frontier of knn_recall against qps_1 and against qps_single; "
            f"a single-key sweep stops at the first setting of recall >= {STOP_RECALL} or after two settings "
            f"adding < {PLATEAU} recall each; the exact metric indexes answer the first "
            f"{args.exact_queries} queries; {TRIMMED}; total {total_s:.0f} s")


def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    """The printed table: whole queries per second, build seconds to 2 digits, fractions to 4."""
    return table.round({"qps_1": 0, "qps_all": 0, "qps_single": 0, "latency_ms": 3, "build_s": 2,
                        "bytes_per_vector": 1, "knn_recall": 4, "relative_distance_error": 5, "distance_fraction": 4,
                        "peak_rss_gb": 2})


def plot_frontiers(table: pd.DataFrame, title: str, path: Path) -> None:
    """recall (x) against log queries/s (y), batch and one-at-a-time panels, one line per family
    through its frontier points (the dominated points faint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    colours = plt.get_cmap("tab20")  # eleven families: ten colours would give two the same
    for ax, (mode, speed) in zip(axes, MODES.items()):
        for i, (family, rows) in enumerate(table.groupby("family", sort=False)):
            colour = colours((2 * i) % 20 + (2 * i) // 20 % 2)  # the dark shades first, then the light
            front = rows[rows[f"frontier_{mode}"]].sort_values("knn_recall")
            ax.scatter(rows["knn_recall"], rows[speed], s=6, color=colour, alpha=0.25, linewidths=0)
            ax.plot(front["knn_recall"], front[speed], marker="o", ms=3, lw=1.2, color=colour, label=family)
        ax.set_yscale("log")
        ax.set_xlabel("k-NN recall@10")
        ax.set_title(f"{mode}: " + ("all queries per call, 1 thread" if mode == "batch" else "one query per call, 1 thread"),
                     fontsize=9)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    axes[0].set_ylabel("queries per second")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, compact_png(buffer.getvalue()))  # an indexed-colour PNG, as every shipped figure


def figure_title(table: pd.DataFrame) -> str:
    first = table.iloc[0]
    return (f"{first['data']}: {int(first['n']):,} x {int(first['dim'])} vectors, {int(table['queries'].max()):,} "
            f"queries, k = {K}; each family's frontier of recall against queries/s")


def save(table: pd.DataFrame, header: str, args, total_s: float) -> Path:
    """results/bench/indexes-<data>.{csv,txt,json,png}."""
    out = args.out or results_dir() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    name = f"indexes-{args.data}"
    path = save_table(_rounded(table), name, header, out)
    grid = {"hnsw_M": HNSW_M, "hnsw_ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": EF_SEARCH, "nprobe": NPROBE,
            "refine_nprobe": REFINE_NPROBE, "k_factors": K_FACTORS, "ivf_flat_nlist": nlists(int(table["n"].iloc[0])),
            "pq_m": pq_sizes(int(table["dim"].iloc[0]))}
    atomic_write_json(out / f"{name}.json", {"data": args.data, "header": header, "grid": grid, "trimmed": TRIMMED,
                                             "rows": table.to_dict("records"), "total_s": total_s})
    plot_frontiers(table, figure_title(table), out / f"{name}.png")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmlbench bench indexes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="manifold", help=f"the vectors: {', '.join(DATA)} (default manifold)")
    parser.add_argument("--n", type=int, default=None, help="vectors indexed (default: "
                        + ", ".join(f"{k} {v:,}" for k, v in DEFAULT_N.items()) + ")")
    parser.add_argument("--queries", type=int, default=1000, help="queries of the batch searches")
    parser.add_argument("--single-queries", type=int, default=200, help="queries issued one at a time")
    parser.add_argument("--exact-queries", type=int, default=50, help="queries of the ball tree and the pivots "
                        "(0: leave them out)")
    parser.add_argument("--out", type=Path, default=None, help="folder of the tables (default results/bench)")
    args = parser.parse_args(argv)
    if args.data not in DATA:
        raise ConfigError(f"unknown index benchmark data {args.data!r}; choose from {', '.join(DATA)}")
    if args.single_queries < 1 or args.exact_queries < 0:
        raise ConfigError(f"--single-queries must be at least 1 and --exact-queries at least 0, got "
                          f"{args.single_queries} and {args.exact_queries}")
    started = time.perf_counter()
    before = load_record()
    table, description = run(args, log=lambda line: print(line, flush=True))
    load = load_span(before, load_record())
    table = table.assign(**load)
    total_s = time.perf_counter() - started
    path = save(table, _header(args, table, description, load, total_s), args, total_s)
    print(path.read_text())
    return 0
