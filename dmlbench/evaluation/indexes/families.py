"""The index families, their settings, and one interface to build and search them.

    spec = IndexSpec.make("hnsw", M=16)               # build settings; the family's search sweep by default
    index = build_index(spec, vectors)                 # (N, d) float32, L2-normalised
    scores, ids, computed = index.search(queries, k=10, setting={"ef_search": 64}, threads=1, exclude=query_ids)

``scores`` are cosine similarities (Q, k), best first (an index ranking by L2 reports 1 - d^2 / 2, the
cosine of unit vectors at that distance); ``ids`` item indices (-1 where an approximate
index found fewer than k); ``computed`` the distance computations per query for the exact metric
indexes (ball tree, pivots), else None. ``exclude`` names one item per query that it may not return
(the query itself, when the queries are items of the index).

| family | library | build settings | search sweep |
|---|---|---|---|
| flat | faiss ``IndexFlatIP`` (exact, the reference) | | |
| hnsw | faiss ``IndexHNSWFlat`` (inner product) | M, ef_construction | ef_search |
| ivf-flat | faiss ``IndexIVFFlat`` (L2) | nlist (default 2^round(log2 sqrt N)) | nprobe |
| ivf-pq | faiss ``IndexIVFPQ`` (L2) | nlist, m (bytes per code), nbits | nprobe |
| pq | faiss ``IndexPQ`` (L2, exhaustive, asymmetric distances) | m (bytes per code), nbits | |
| sq8 | faiss ``IndexScalarQuantizer`` (L2, 8 bits per dimension) | | |
| ball-tree | scikit-learn ``BallTree`` (exact) | leaf_size | |
| pivots | :class:`.pivots.PivotTable` (LAESA, exact) | pivots | |

Which metric each family ranks by: the embeddings are unit vectors, whose neighbours by L2 distance
are their neighbours by inner product, so the families that compare the stored vectors themselves
(flat, hnsw) rank by inner product. The families that compare codes or coarse centroids (pq, ivf-pq,
sq8, ivf-flat) rank by L2: a decoded code or a k-means centroid is not a unit vector, and its inner
product with a query ranks items by ``|x'| cos`` rather than by distance (on a han-typefaces run, PQ
with m=4 keeps Recall@1 0.71 of 0.86 by L2 and 0.12 by inner product). ``METRICS`` records the choice.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ...errors import ConfigError
from .aesa import AESA, MAX_ITEMS as AESA_MAX_ITEMS
from .pivots import PivotTable, _exact_distances, check_radius


@dataclass(frozen=True)
class Family:
    library: str
    exact: bool
    build: dict[str, Any]  # build settings and their defaults (None: a rule of the family)
    sweep_key: str | None = None  # the search setting swept, if any
    sweep: tuple[int, ...] = ()
    counts_distances: bool = False


FAMILIES: dict[str, Family] = {
    "flat": Family("faiss", True, {}),
    "hnsw": Family("faiss", False, {"M": 16, "ef_construction": 40}, "ef_search", (16, 32, 64, 128, 256)),
    "ivf-flat": Family("faiss", False, {"nlist": None}, "nprobe", (1, 2, 4, 8, 16, 32)),
    "ivf-pq": Family("faiss", False, {"nlist": None, "m": 16, "nbits": 8}, "nprobe", (1, 4, 16, 64)),
    "pq": Family("faiss", False, {"m": 8, "nbits": 8}),
    "sq8": Family("faiss", False, {}),
    "ball-tree": Family("scikit-learn", True, {"leaf_size": 40}, counts_distances=True),
    "pivots": Family("dmlbench", True, {"pivots": 16}, counts_distances=True),
    "vp-tree": Family("dmlbench", True, {"leaf_size": 16}, counts_distances=True),
    "m-tree": Family("dmlbench", True, {"capacity": 16}, counts_distances=True),
    "aesa": Family("dmlbench", True, {}, counts_distances=True),
}
# The exact structures written here (metric_trees, pivots, aesa): k-NN and range queries, counted.
METRIC_STRUCTURES = ("pivots", "vp-tree", "m-tree", "aesa")

RANGE_SLACK = 1e-6  # a range query's radius widened by this where a library's rounding could drop the boundary
SCORE_SLACK = 1e-5  # the same for faiss's float32 scores (squared distances or inner products of unit vectors)

# Build settings whose range is narrower than "a positive integer": (lowest, highest or None), and why.
BUILD_LIMITS: dict[str, tuple[int, int | None]] = {"M": (2, None), "nbits": (1, 16), "capacity": (4, None)}
BUILD_WHY = {"M": "links per HNSW node; faiss crashes with fewer than 2",
             "capacity": "entries per M-tree node; a split needs room for two promoted entries and their groups",
             "nbits": "bits per sub-quantizer code; each code book has 2^nbits centroids"}
# The metric each faiss family ranks by (module docstring): "ip" where it is the ranking of the stored
# unit vectors, "l2" where codes or centroids are compared.
METRICS: dict[str, str] = {"flat": "ip", "hnsw": "ip", "ivf-flat": "l2", "ivf-pq": "l2", "pq": "l2", "sq8": "l2"}


@dataclass(frozen=True)
class IndexSpec:
    """One family with its build settings and the search settings swept over one build."""
    family: str
    build: tuple[tuple[str, Any], ...]
    sweep: tuple[int, ...]

    @classmethod
    def make(cls, family: str, sweep: tuple[int, ...] | list[int] | None = None, **build) -> "IndexSpec":
        if family not in FAMILIES:
            raise ConfigError(f"unknown index family {family!r}; choose from {', '.join(FAMILIES)}")
        fam = FAMILIES[family]
        unknown = sorted(set(build) - set(fam.build))
        if unknown:
            raise ConfigError(f"index {family}: unknown build setting(s) {', '.join(unknown)}; "
                              f"{family} takes {', '.join(fam.build) or 'none'}")
        for key, value in build.items():
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"index {family}: {key} must be a positive integer, got {value!r}")
            low, high = BUILD_LIMITS.get(key, (1, None))
            if value is not None and (value < low or (high is not None and value > high)):
                raise ConfigError(f"index {family}: {key}={value} is out of range; valid {key}: {low} to {high or 'any'}"
                                  f" ({BUILD_WHY[key]})")
        if sweep is not None and fam.sweep_key is None:
            raise ConfigError(f"index {family}: has no search setting to sweep")
        sweep = tuple(fam.sweep if sweep is None else sweep)
        if fam.sweep_key and (not sweep or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in sweep)):
            raise ConfigError(f"index {family}: its {fam.sweep_key} sweep must be positive integers, got {list(sweep)}")
        nlist = build.get("nlist")
        if fam.sweep_key == "nprobe" and nlist is not None and max(sweep) > nlist:
            raise ConfigError(f"index {family}: nprobe={max(sweep)} of its sweep probes more lists than its nlist={nlist} "
                              f"(the row would record nprobe={max(sweep)} for a search of {nlist}); valid nprobe: 1 to "
                              f"{nlist}")
        return cls(family, tuple(sorted({**fam.build, **build}.items())), sweep)

    @property
    def name(self) -> str:
        """e.g. ``hnsw M=16`` or ``pq m=8``: the family and the build settings that differ between specs."""
        shown = [f"{k}={v}" for k, v in self.build if v is not None and k not in ("ef_construction", "nbits")]
        return " ".join([self.family, *shown])

    @property
    def settings(self) -> list[dict[str, int]]:
        """The search settings of the sweep ([{}] for a family without one)."""
        key = FAMILIES[self.family].sweep_key
        return [{key: v} for v in self.sweep] if key else [{}]

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "build": dict(self.build), "sweep": list(self.sweep)}


def default_specs() -> list[IndexSpec]:
    """The study's indexes: every family at its defaults but IVF-PQ (whose coarse lists pay off only for
    large galleries: the index benchmark has it), PQ at 4, 8 and 16 bytes per vector; the metric-space
    structures (pivots, VP-tree, M-tree, AESA)."""
    return [IndexSpec.make("flat"), IndexSpec.make("hnsw"), IndexSpec.make("ivf-flat"),
            *[IndexSpec.make("pq", m=m) for m in (4, 8, 16)], IndexSpec.make("sq8"), IndexSpec.make("ball-tree"),
            IndexSpec.make("pivots"), IndexSpec.make("vp-tree"), IndexSpec.make("m-tree"), IndexSpec.make("aesa")]


def parse_specs(entries: list[dict[str, Any]], where: str = "indexes") -> list[IndexSpec]:
    """Specs from a study file's list: ``- {family: hnsw, M: 32, sweep: [16, 64]}``."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: a non-empty list of indexes, each {{family: ..., <build setting>: ...}}")
    specs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "family" not in entry:
            raise ConfigError(f"{where}[{i}]: each index is a mapping with a 'family' ({', '.join(FAMILIES)})")
        entry = dict(entry)
        try:
            specs.append(IndexSpec.make(entry.pop("family"), entry.pop("sweep", None), **entry))
        except ConfigError as error:
            raise ConfigError(f"{where}[{i}]: {error}") from None
    return specs


def check_spec(spec: IndexSpec, items: int | None, dim: int) -> None:
    """``spec`` against the index it would be built over: ``items`` vectors (None: not known yet) of
    ``dim`` dimensions. PQ's m must divide the dimension, its 2^nbits centroids per code book need as
    many vectors to train on, and an IVF index cannot have more inverted lists than items: with
    nlist > items most lists are empty and a search probes nothing, so the recall it measures is no
    property of the index. Each failure is one ConfigError line with the valid values."""
    build = dict(spec.build)
    if spec.family in ("pq", "ivf-pq"):
        m, nbits = build["m"], build["nbits"]
        if dim % m:
            valid = ", ".join(str(v) for v in range(1, dim + 1) if dim % v == 0)
            raise ConfigError(f"index {spec.family}: m={m} bytes per code must divide the embedding dimension {dim}; "
                              f"valid m: {valid}")
        if items is not None and items < 2 ** nbits:
            raise ConfigError(f"index {spec.family}: nbits={nbits} needs at least {2 ** nbits} vectors to train its "
                              f"codebooks, got {items}; valid nbits: 1 to {min(16, int(math.log2(max(items, 2))))}")
    if spec.family == "aesa" and items is not None and items > AESA_MAX_ITEMS:
        raise ConfigError(f"index aesa: {items} items need an {items} x {items} distance matrix; aesa takes up to "
                          f"{AESA_MAX_ITEMS:,} items (for more use pivots, the LAESA table, or vp-tree or m-tree)")
    nlist = build.get("nlist")
    if spec.family in ("ivf-flat", "ivf-pq") and nlist is not None and items is not None and nlist > items:
        raise ConfigError(f"index {spec.family}: nlist={nlist} inverted lists over {items} items would leave lists "
                          f"empty and its recall meaningless; valid nlist: 1 to {items} (or leave nlist unset: "
                          f"{min(auto_nlist(items), items)} lists for {items} items)")


def auto_nlist(n: int) -> int:
    """The inverted lists of an IVF index over n vectors: the power of two nearest sqrt(n)."""
    return max(1, 2 ** round(math.log2(max(1.0, math.sqrt(n)))))


class BuiltIndex:
    """A built index: what it costs (build time, bytes per vector) and how to search it."""

    def __init__(self, spec: IndexSpec, n: int, dim: int, searcher: Callable, nbytes: int, build_s: float,
                 apply: Callable[[dict], None] | None = None, ranger: Callable | None = None):
        self.spec, self.n, self.dim, self.build_s = spec, n, dim, build_s
        self.bytes_per_vector = nbytes / n
        self.exact = FAMILIES[spec.family].exact
        self._searcher, self._apply, self._ranger = searcher, apply, ranger
        self.native = None  # the library's own index object, where it can be saved (faiss)
        self.structure = None  # the dmlbench structure (pivots, vp-tree, m-tree, aesa), where there is one

    def range_search(self, queries, radius: float, setting: dict | None = None, exclude=None):
        """Every item within Euclidean ``radius`` of each query (the boundary included): (ids per query,
        distances per query, each sorted by (distance, id); distance computations (Q,) or None). An exact
        index returns exactly the brute-force answer; an approximate one what its search finds."""
        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        radius = check_radius(radius, f"index {self.spec.family}")
        if self._apply is not None:
            self._apply(setting or {})
        ids, dists, computed = self._ranger(queries, radius)
        if exclude is not None:
            keep = [i != e for i, e in zip(ids, np.asarray(exclude, dtype=np.int64))]
            ids, dists = [i[m] for i, m in zip(ids, keep)], [d[m] for d, m in zip(dists, keep)]
        return ids, dists, computed

    def search(self, queries, k: int, setting: dict | None = None, threads: int = 1, exclude=None):
        """(cosine similarities (Q, k), ids (Q, k), distance computations (Q,) or None), best first."""
        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        limit = self.n - (exclude is not None)
        if not 1 <= k <= limit:
            raise ValueError(f"k={k} must be between 1 and the {limit} items each query can retrieve")
        if self._apply is not None:
            self._apply(setting or {})
        depth = k + (exclude is not None)
        scores, ids, computed = self._searcher(queries, depth, threads)
        if exclude is not None:
            scores, ids = _drop(scores, ids, np.asarray(exclude, dtype=np.int64), k)
        return scores, ids, computed


def _drop(scores: np.ndarray, ids: np.ndarray, exclude: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row without its excluded id, cut to k (the row's first k others)."""
    keep = ids != exclude[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def _complete_ties(fetch: Callable, queries: np.ndarray, k: int, n: int):
    """Exact top k with ties broken by the lower id, from a search whose order among equal scores is
    arbitrary: rows whose k-th score equals their last fetched score are fetched deeper until the tie
    is whole (or every item is fetched), then each row is sorted by (score descending, id)."""
    depth = min(n, k + 1)
    scores, ids, computed = fetch(queries, depth)
    rows = np.arange(len(queries))
    while depth < n:
        cut = rows[scores[rows, k - 1] == scores[rows, depth - 1]]
        if len(cut) == 0:
            break
        depth = min(n, depth * 2)
        more_s, more_i, more_c = fetch(queries[cut], depth)
        scores = np.concatenate([scores, np.full((len(scores), depth - scores.shape[1]), -np.inf)], 1)
        ids = np.concatenate([ids, np.full((len(ids), depth - ids.shape[1]), -1)], 1)
        scores[cut], ids[cut] = more_s, more_i
        if computed is not None:
            computed[cut] += more_c
        rows = cut
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1), computed


def _in_threads(search_rows: Callable, queries: np.ndarray, threads: int):
    """A per-query search run on ``threads`` threads over chunks of queries (results in query order)."""
    if threads <= 1 or len(queries) < 2 * threads:
        return search_rows(queries)
    chunks = np.array_split(np.arange(len(queries)), threads)
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda rows: search_rows(queries[rows]), chunks))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def build_index(spec: IndexSpec, vectors, threads: int | None = None) -> BuiltIndex:
    """Build ``spec`` over ``vectors`` (N, d), L2-normalised float32. faiss builds on ``threads``
    (default: every core); the build time is wall time."""
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"index {spec.family}: needs an (N, d) array of at least 2 vectors, got shape {x.shape}")
    build = dict(spec.build)
    if spec.family == "ball-tree":
        return _ball_tree(spec, x, build)
    if spec.family in METRIC_STRUCTURES:
        check_spec(spec, len(x), x.shape[1])
        return _metric_structure(spec, x, build)
    return _faiss_index(spec, x, build, threads)


def _ball_tree(spec: IndexSpec, x: np.ndarray, build: dict) -> BuiltIndex:
    from sklearn.neighbors import BallTree

    start = time.perf_counter()
    tree = BallTree(x.astype(np.float64), leaf_size=build["leaf_size"], metric="euclidean")
    build_s = time.perf_counter() - start

    def counted(q, depth):  # the tree counts its distance calls: only the batch's mean per query is known
        tree.reset_n_calls()
        d, i = tree.query(q.astype(np.float64), k=depth)
        return 1.0 - d * d / 2.0, i.astype(np.int64), np.full(len(q), tree.get_n_calls() / len(q))

    def searcher(q, depth, threads):
        if threads <= 1:
            return _complete_ties(counted, q, depth, len(x))
        # the tree's counter is shared by the threads: on several, the computations are not counted
        s, i, _ = _in_threads(lambda qq: _complete_ties(counted, qq, depth, len(x)), q, threads)
        return s, i, None

    def ranger(q, radius):  # the tree's own distances round differently: fetched a hair wider, then kept by ours
        tree.reset_n_calls()
        found = tree.query_radius(q.astype(np.float64), radius + RANGE_SLACK)
        calls = tree.get_n_calls() / len(q)
        ids, dists = _verified(x, q, found, radius)
        return ids, dists, np.full(len(q), calls)

    return BuiltIndex(spec, len(x), x.shape[1], searcher, sum(a.nbytes for a in tree.get_arrays()), build_s,
                      ranger=ranger)


def _metric_structure(spec: IndexSpec, x: np.ndarray, build: dict) -> BuiltIndex:
    """One of the structures written here (pivots, VP-tree, M-tree, AESA): exact k-NN and range
    queries over float64 distances, each counting its distance computations."""
    start = time.perf_counter()
    structure = _make_structure(spec.family, x, build)
    build_s = time.perf_counter() - start
    knn = structure.search if spec.family == "pivots" else structure.knn

    def searcher(q, depth, threads):
        def rows(qq):
            d, i, c = knn(qq, depth)
            return 1.0 - d * d / 2.0, i, c.astype(np.float64)
        return _in_threads(rows, q, threads)

    built = BuiltIndex(spec, len(x), x.shape[1], searcher, structure.nbytes, build_s, ranger=structure.range)
    built.structure = structure
    return built


def _make_structure(family: str, x: np.ndarray, build: dict):
    from .metric_trees import MTree, VPTree

    if family == "pivots":
        return PivotTable(x, num_pivots=min(build["pivots"], len(x)))
    if family == "vp-tree":
        return VPTree(x, leaf_size=build["leaf_size"])
    if family == "m-tree":
        return MTree(x, capacity=build["capacity"])
    return AESA(x)


def _verified(x: np.ndarray, q: np.ndarray, found, radius: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Candidates of a range query (one id array per query) kept where their float64 distance, computed
    as the brute force computes it, is within ``radius``; sorted by (distance, id)."""
    ids, dists = [], []
    for row, candidates in enumerate(found):
        candidates = np.asarray(candidates, dtype=np.int64)
        d = _exact_distances(q[row][None].astype(np.float64), x[candidates].astype(np.float64))[0]
        keep = d <= radius
        order = np.lexsort((candidates[keep], d[keep]))
        ids.append(candidates[keep][order])
        dists.append(d[keep][order])
    return ids, dists


def _faiss_index(spec: IndexSpec, x: np.ndarray, build: dict, threads: int | None) -> BuiltIndex:
    import faiss

    n, d = x.shape
    before = faiss.omp_get_max_threads()
    if threads:
        faiss.omp_set_num_threads(threads)
    check_spec(spec, n, d)  # refused, not clamped: a clamped nlist would record another index's recall
    try:
        start = time.perf_counter()
        index = _make_faiss(spec.family, build, n, d)
        _quiet_training(index)
        if not index.is_trained:
            index.train(x)
        index.add(x)
        build_s = time.perf_counter() - start
    finally:
        faiss.omp_set_num_threads(before)
    return wrap_faiss(spec, index, build_s)


def wrap_faiss(spec: IndexSpec, index, build_s: float = 0.0) -> BuiltIndex:
    """A built (or read: ``faiss.read_index``) faiss index of ``spec`` behind the common interface;
    its ``native`` attribute is the faiss index, for ``faiss.write_index``."""
    import faiss

    n, d = index.ntotal, index.d
    before = faiss.omp_get_max_threads()

    by_l2 = index.metric_type == faiss.METRIC_L2

    def fetch(q, depth):
        scores, ids = index.search(q, depth)  # squared L2 distances by_l2, else inner products
        scores = scores.astype(np.float64)
        return (1.0 - scores / 2.0 if by_l2 else scores), ids.astype(np.int64), None

    def searcher(q, depth, threads):
        faiss.omp_set_num_threads(threads)
        try:
            if spec.family == "flat":
                scores, ids, _ = _complete_ties(fetch, q, depth, n)
                return scores, ids, np.full(len(q), float(n))
            with _FaissCount(spec.family, index, len(q)) as count:
                scores, ids, _ = fetch(q, depth)
            return np.where(ids < 0, -np.inf, scores), ids, count.per_query
        finally:
            faiss.omp_set_num_threads(before)

    stored: dict = {}  # the flat index's vectors, read back once

    def ranger(q, radius):
        # faiss keeps answers strictly inside, by float32 scores: widened by their rounding, the boundary is in
        limit = radius * radius + SCORE_SLACK if by_l2 else 1.0 - radius * radius / 2.0 - SCORE_SLACK
        with _FaissCount(spec.family, index, len(q)) as count:
            lims, scores, ids = index.range_search(q, limit)
        found = [ids[lims[r]:lims[r + 1]].astype(np.int64) for r in range(len(q))]
        if spec.family == "flat":  # exact: kept by the brute force's own float64 distances
            # as numpy: once pytorch-metric-learning has imported faiss.contrib.torch_utils, faiss returns tensors
            stored.setdefault("x", np.asarray(index.reconstruct_n(0, n), dtype=np.float32))
            return (*_verified(stored["x"], q, found, radius), count.per_query)
        scores = scores.astype(np.float64)
        d = np.sqrt(np.maximum(scores, 0.0)) if by_l2 else np.sqrt(np.maximum(2.0 - 2.0 * scores, 0.0))
        parts = [(found[r], d[lims[r]:lims[r + 1]]) for r in range(len(q))]
        orders = [np.lexsort((i, dd)) for i, dd in parts]
        return [i[o] for (i, _), o in zip(parts, orders)], [dd[o] for (_, dd), o in zip(parts, orders)], \
            count.per_query

    built = BuiltIndex(spec, n, d, searcher, int(faiss.serialize_index(index).nbytes), build_s, _setter(spec, index),
                       ranger=ranger)
    built.native = index
    return built


class _FaissCount:
    """The distance computations of one faiss search, per query: faiss's own counters for HNSW (its
    graph walk) and IVF (the coarse centroids plus the codes scanned in the probed lists); an exhaustive
    family (flat, PQ, SQ8) computes one distance, exact or from codes, per item."""

    def __init__(self, family: str, index, queries: int):
        self.family, self.index, self.queries = family, index, queries
        self.per_query = np.full(queries, float(index.ntotal))

    def __enter__(self):
        import faiss

        if self.family == "hnsw":
            faiss.cvar.hnsw_stats.reset()
        elif self.family in ("ivf-flat", "ivf-pq"):
            faiss.cvar.indexIVF_stats.reset()
        return self

    def __exit__(self, *exc):
        import faiss

        if self.family == "hnsw":
            self.per_query[:] = faiss.cvar.hnsw_stats.ndis / self.queries
        elif self.family in ("ivf-flat", "ivf-pq"):
            self.per_query[:] = faiss.cvar.indexIVF_stats.ndis / self.queries + self.index.nlist
        return False


def _setter(spec: IndexSpec, index):
    """The function applying a search setting to a faiss index of ``spec`` (None: nothing to set)."""
    if spec.family == "hnsw":
        return lambda s: setattr(index.hnsw, "efSearch", s.get("ef_search", index.hnsw.efSearch))
    if spec.family in ("ivf-flat", "ivf-pq"):
        return lambda s: setattr(index, "nprobe", min(s.get("nprobe", index.nprobe), index.nlist))
    return None


def _quiet_training(index) -> None:
    """No warning per codebook when fewer than 39 training vectors per centroid are given (test sets
    of a few thousand images): the codebooks are trained on what there is, and the report says so."""
    import faiss

    for owner in (index, getattr(index, "pq", None)):
        cp = getattr(owner, "cp", None)
        if isinstance(cp, faiss.ClusteringParameters):
            cp.min_points_per_centroid = 1


def _make_faiss(family: str, build: dict, n: int, d: int):
    """An untrained, empty faiss index of ``family`` ranking by its metric (``METRICS``); its settings
    checked against the vectors already (:func:`check_spec`)."""
    import faiss

    metric = faiss.METRIC_L2 if METRICS[family] == "l2" else faiss.METRIC_INNER_PRODUCT
    if family == "flat":
        return faiss.IndexFlatIP(d)
    if family == "sq8":
        return faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, metric)
    if family == "pq":
        return faiss.IndexPQ(d, build["m"], build["nbits"], metric)
    if family == "hnsw":
        index = faiss.IndexHNSWFlat(d, build["M"], metric)
        index.hnsw.efConstruction = build["ef_construction"]
        return index
    nlist = build["nlist"] or min(auto_nlist(n), n)  # a given nlist is at most n (check_spec)
    quantizer = faiss.IndexFlat(d, metric)
    if family == "ivf-flat":
        return faiss.IndexIVFFlat(quantizer, d, nlist, metric)
    return faiss.IndexIVFPQ(quantizer, d, nlist, build["m"], build["nbits"], metric)
