"""k-means for the NMI metric: faiss's algorithm, without recomputing distances that did not change.

``kmeans`` follows faiss.Clustering (the k-means behind faiss.Kmeans and behind
pytorch-metric-learning's NMI) step by step, so with the same seed it returns the same clusters:

- training points: all of them, unless there are more than ``max_points_per_centroid * k`` (faiss's
  default 256 per centroid, kept by faiss.Kmeans and so by pytorch-metric-learning); then the first
  ``256 k`` points of ``faiss.rand_perm(n, seed)``, in that order;
- initial centroids: the first k training points of ``faiss.rand_perm(n_train, seed + 1)`` (faiss's
  own RNG);
- each iteration assigns every point to its nearest centroid (squared L2, computed as
  ``(|x|^2 + |c|^2) - 2 x.c`` in float32), then sets each centroid to the float32 sum of its
  points, taken in point order, times ``1 / count`` (float32);
- an empty cluster takes a perturbed copy of a cluster drawn with faiss.RandomGenerator(1234) with
  probability (size - 1) / (n - k), scanning from cluster 0, the drawn cluster is perturbed the
  other way (factors 1 +- 1/1024 on alternate coordinates) and the two share its count;
- after ``iterations`` updates, every point (not only the training sample) is assigned to the
  final centroids (what a search of the trained index returns).

The saving: a centroid that did not move keeps its distances. Each point carries its ``list_size``
nearest centroids with their distances and a lower bound on the distance to every other centroid.
An iteration computes distances only to the centroids that moved, merges them with the point's
unchanged entries, and falls back to the full row when the nearest entry is not strictly below
the bound. When no centroid moves, every later iteration would repeat the last one, so the loop
stops (the result is the same as running all iterations).

Near ties: our float32 distances (torch GEMM) and faiss's (its BLAS and SIMD kernels) round
differently, so a point almost equidistant from two centroids could go to different ones, and the
clusters would drift apart from there. Every point whose runner-up centroid lies within the
proven rounding-error margin of its nearest one is therefore searched again by faiss itself, on
the same tile of rows faiss's full search would give it, and faiss's answer is kept
(``match_faiss=True``, the default). Exact ties go to the lower centroid index in both.

Small problems (at most ``FAISS_SEARCH_BELOW`` training points x clusters) skip our search
altogether: every assignment pass is faiss's own search of all the points, the very call faiss's
k-means makes. There a faiss search takes milliseconds, while a pass of ours, with only a few of
faiss's 4096-row tiles, nearly always has a near tie in each of them and ends up searching them
with faiss anyway. Either way the clusters are faiss's; the saving that remains is the early stop
at a fixed point (and, on a busy machine, the absence of faiss's per-iteration bookkeeping).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .neighbours import FP32_UNIT_ROUNDOFF, caller_threads, dot_error_bound, full_precision_matmul

KMEANS_SEED = 1234  # faiss.Clustering's default, which pytorch-metric-learning's NMI uses
KMEANS_ITERATIONS = 20  # pytorch-metric-learning's setting
MAX_POINTS_PER_CENTROID = 256  # faiss's default: larger sets are subsampled for training
FAISS_SEARCH_BELOW = 1 << 24  # (training points x clusters) up to which faiss's own search assigns the points
SPLIT_EPS = 1 / 1024.0


@dataclass
class KMeansResult:
    assignment: np.ndarray  # (n,) int64, nearest final centroid of each point
    centroids: np.ndarray  # (k, d) float32
    iterations: int  # centroid updates actually run (fewer than asked when it converged)
    objectives: list[float] = field(default_factory=list)  # sum of squared distances before each update
    splits: int = 0  # empty clusters refilled, over all iterations
    distance_fraction: float = 1.0  # distances computed / (points x centroids x assignment passes)
    near_ties_settled: int = 0  # point assignments decided by faiss's own search (near ties, small problems)


def faiss_init(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """faiss.Clustering's initial centroids: the first k points of its random permutation."""
    import faiss

    perm = np.empty(len(x), dtype=np.int32)
    faiss.rand_perm(faiss.swig_ptr(perm), len(x), seed + 1)
    return x[perm[:k]].copy()


def compute_centroids(x: np.ndarray, assignment: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 sums of each cluster's points in point order, times 1 / count; empty clusters zero."""
    n = len(assignment)
    counts = np.bincount(assignment, minlength=k)
    centroids = np.zeros((k, x.shape[1]), dtype=np.float32)
    # Each cluster's sum is taken in point order, one addition at a time in float32, as faiss does:
    # step r adds the r-th point of every cluster (distinct targets, so one vectorised add).
    by_cluster = np.argsort(assignment, kind="stable")
    starts = np.cumsum(counts) - counts
    rank = np.arange(n) - starts[assignment[by_cluster]]
    by_rank = np.argsort(rank, kind="stable")
    points, targets = by_cluster[by_rank], assignment[by_cluster[by_rank]]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(rank))])
    for r in range(len(bounds) - 1):
        rows = slice(bounds[r], bounds[r + 1])
        centroids[targets[rows]] += x[points[rows]]
    present = np.flatnonzero(counts)
    hassign = counts.astype(np.float32)
    scale = np.ones(k, dtype=np.float32)
    scale[present] = np.float32(1) / hassign[present]
    centroids *= scale[:, None]
    return centroids, hassign


def split_clusters(centroids: np.ndarray, hassign: np.ndarray, n: int) -> int:
    """Refill empty clusters from large ones, in place, with faiss's rule and RNG sequence."""
    import faiss

    k = len(centroids)
    empty = np.flatnonzero(hassign == 0)
    if len(empty) == 0:
        return 0
    rng = faiss.RandomGenerator(1234)
    denominator = np.float64(np.float32(n - k))
    up = np.float64(1 + SPLIT_EPS)
    down = np.float64(1 - SPLIT_EPS)
    even = np.arange(centroids.shape[1]) % 2 == 0
    for ci in empty:
        cj = 0
        while True:
            p = np.float32((np.float64(hassign[cj]) - 1.0) / denominator)
            if np.float32(rng.rand_float()) < p:
                break
            cj = (cj + 1) % k
        source = centroids[cj].astype(np.float64)
        centroids[ci] = np.where(even, source * up, source * down).astype(np.float32)
        centroids[cj] = np.where(even, source * down, source * up).astype(np.float32)
        hassign[ci] = hassign[cj] / np.float32(2)
        hassign[cj] = hassign[cj] - hassign[ci]
    return len(empty)


class _Assigner:
    """Nearest-centroid search that recomputes only distances to centroids that moved."""

    def __init__(self, x: torch.Tensor, k: int, list_size: int, block_size: int, points: np.ndarray | None = None,
                 faiss_search_below: int = 0):
        self.x = x
        self.points = points  # the same points as numpy, to settle near ties with faiss's own search
        self.faiss_only = points is not None and len(x) * k <= faiss_search_below
        self.settled = 0  # assignments taken from faiss's search
        self.x_norm = (x * x).sum(dim=1)
        self.k = k
        self.m = min(list_size, k)
        self.block = block_size
        self.ids = None  # (n, m) nearest centroids at their last computation, sorted
        self.dist = None
        self.bound = None  # (n,) lower bound on the distance to every centroid not listed
        self.computed = 0

    def _distances(self, rows: slice | torch.Tensor, centroids: torch.Tensor, c_norm: torch.Tensor) -> torch.Tensor:
        # (|x|^2 + |c|^2) - 2 x.c, the GEMM accumulating into the norms' sum in place (one buffer)
        d = self.x_norm[rows][:, None] + c_norm[None, :]
        d.addmm_(self.x[rows], centroids.T, alpha=-2)
        self.computed += d.numel()
        return d.clamp_min_(0)

    def __call__(self, centroids: torch.Tensor, changed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.faiss_only:
            return self._faiss_search(centroids)
        n, m = len(self.x), self.m
        c_norm = (centroids * centroids).sum(dim=1)
        if self.ids is None or changed is None:
            changed = torch.ones(self.k, dtype=torch.bool, device=self.x.device)
            self.ids = torch.zeros(n, m, dtype=torch.long, device=self.x.device)
            self.dist = torch.full((n, m), float("inf"), device=self.x.device)
            self.bound = torch.full((n,), float("inf"), device=self.x.device)
            fresh = True
        else:
            fresh = False
        moved = changed.nonzero(as_tuple=True)[0]
        assignment = torch.empty(n, dtype=torch.long, device=self.x.device)
        dis = torch.empty(n, device=self.x.device)
        with full_precision_matmul():
            for p0 in range(0, n, self.block):
                p1 = min(p0 + self.block, n)
                top_d = top_i = None
                if len(moved):
                    d_new = self._distances(slice(p0, p1), centroids[moved], c_norm[moved])
                    top_d, pos = d_new.topk(min(m, len(moved)), dim=1, largest=False)
                    top_i = moved[pos]
                    del d_new
                if not fresh:  # merge with the listed centroids that did not move
                    keep = ~changed[self.ids[p0:p1]]
                    old_d = torch.where(keep, self.dist[p0:p1], float("inf"))
                    top_d = old_d if top_d is None else torch.cat([old_d, top_d], dim=1)
                    top_i = self.ids[p0:p1] if top_i is None else torch.cat([self.ids[p0:p1], top_i], dim=1)
                    top_d, pos = top_d.topk(m, dim=1, largest=False)
                    top_i = top_i.gather(1, pos)
                # every centroid left out is >= the m-th kept distance (or >= the old bound)
                self.bound[p0:p1] = torch.minimum(self.bound[p0:p1], top_d[:, -1])
                # sort the list by (distance, centroid index)
                top_i, order = top_i.sort(dim=1, stable=True)
                top_d, order2 = top_d.gather(1, order).sort(dim=1, stable=True)
                top_i = top_i.gather(1, order2)
                self.ids[p0:p1], self.dist[p0:p1] = top_i, top_d
                assignment[p0:p1], dis[p0:p1] = top_i[:, 0], top_d[:, 0]
            unsure = (self.dist[:, 0] >= self.bound).nonzero(as_tuple=True)[0]
            for start in range(0, len(unsure), self.block):
                rows = unsure[start:start + self.block]
                full = self._distances(rows, centroids, c_norm)
                dis[rows], assignment[rows] = full.min(dim=1)  # first index among equal minima
                top_d, top_i = full.topk(min(m + 1, self.k), dim=1, largest=False)
                self.bound[rows] = top_d[:, m] if top_d.shape[1] > m else float("inf")
                top_i, order = top_i[:, :m].sort(dim=1, stable=True)
                top_d, order2 = top_d[:, :m].gather(1, order).sort(dim=1, stable=True)
                self.ids[rows], self.dist[rows] = top_i.gather(1, order2), top_d
        if self.points is not None:
            self._settle_near_ties(centroids, assignment, dis)
        return assignment, dis

    def _faiss_search(self, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every point's nearest centroid by faiss itself: the search faiss's k-means runs (one
        faiss.IndexFlatL2 of the centroids, all the points at once), so its answer by construction.

        For small problems this is the cheaper way: a pass of ours ends with faiss searching
        again the tiles that hold a near tie, and with few tiles nearly every tile holds one.
        """
        import faiss

        index = faiss.IndexFlatL2(centroids.shape[1])
        index.add(np.ascontiguousarray(centroids.cpu().numpy(), dtype=np.float32))
        found_d, found_i = index.search(self.points, 1)
        self.settled += len(self.points)
        device = self.x.device
        return torch.from_numpy(found_i[:, 0]).to(device), torch.from_numpy(found_d[:, 0]).to(device)

    def _settle_near_ties(self, centroids: torch.Tensor, assignment: torch.Tensor, dis: torch.Tensor) -> None:
        """Where faiss's float32 arithmetic could pick another centroid, take faiss's answer.

        Both computations of a squared distance lie within
        E = (gamma_d + 3u) (|x| + max|c|)^2 of the exact value (inner product and norms summed in
        any order, then two additions), so faiss can only disagree with our nearest centroid when
        the runner-up is within 4E. Those points are searched again with faiss.IndexFlatL2 on the
        very tile of rows that faiss's search over all points gives them (faiss tiles the queries
        by ``distance_compute_blas_query_bs`` from row 0), so the arithmetic is faiss's own.
        """
        import faiss

        n, dim = self.x.shape
        u = FP32_UNIT_ROUNDOFF
        c_max = centroids.norm(dim=1).max()
        slack = 4 * (dot_error_bound(dim, u) + 3 * u) * (self.x_norm.sqrt() + c_max) ** 2
        second = self.bound if self.m < 2 else torch.minimum(self.dist[:, 1], self.bound)
        near = ((second - dis) <= slack).nonzero(as_tuple=True)[0].cpu().numpy()
        if len(near) == 0:
            return
        tile = max(int(faiss.cvar.distance_compute_blas_query_bs), 1)
        min_rows = max(int(faiss.cvar.distance_compute_blas_threshold) // max(dim, 1) + 1, faiss.omp_get_max_threads(), 1)
        index = faiss.IndexFlatL2(dim)
        index.add(np.ascontiguousarray(centroids.cpu().numpy(), dtype=np.float32))
        for block in np.unique(near // tile):
            start, stop = block * tile, min(block * tile + tile, n)
            rows = near[(near >= start) & (near < stop)]
            while stop - start < min_rows and start > 0:  # a short last tile: faiss saw it after others
                start = max(0, start - tile)
            found_d, found_i = index.search(self.points[start:stop], 1)
            rows_t = torch.from_numpy(rows).to(assignment.device)
            assignment[rows_t] = torch.from_numpy(found_i[rows - start, 0]).to(assignment.device)
            dis[rows_t] = torch.from_numpy(found_d[rows - start, 0]).to(dis.device)
            self.settled += len(rows)


def faiss_subsample(n: int, k: int, max_points_per_centroid: int, seed: int) -> np.ndarray | None:
    """faiss.Clustering's training subset when n > k * max_points_per_centroid, else None."""
    if n <= k * max_points_per_centroid:
        return None
    import faiss

    perm = np.empty(n, dtype=np.int32)
    faiss.rand_perm(faiss.swig_ptr(perm), n, seed)
    return perm[:k * max_points_per_centroid].astype(np.int64)


def kmeans(x, k: int, *, iterations: int = KMEANS_ITERATIONS, seed: int = KMEANS_SEED, init: np.ndarray | None = None,
           max_points_per_centroid: int = MAX_POINTS_PER_CENTROID, device: str | torch.device | None = None,
           list_size: int = 8, block_size: int = 2048, match_faiss: bool = True,
           faiss_search_below: int = FAISS_SEARCH_BELOW) -> KMeansResult:
    """Cluster the rows of ``x`` (n, d) into ``k`` clusters; see the module docstring.

    When (training points x k) is at most ``faiss_search_below`` (and ``match_faiss``), every
    assignment pass is faiss's own search instead of ours (0: always ours).
    """
    x_np = np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    if x_np.ndim != 2 or len(x_np) == 0:
        raise ValueError(f"k-means needs a non-empty 2-D array (points, dim), got shape {x_np.shape}")
    n = len(x_np)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of points ({n}), got k={k}")
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    if not np.isfinite(x_np).all():
        raise ValueError("k-means input contains NaN or infinite values")
    if device is None:
        device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    if init is not None:
        init = np.ascontiguousarray(init, dtype=np.float32).copy()
        if init.shape != (k, x_np.shape[1]):
            raise ValueError(f"init must have shape ({k}, {x_np.shape[1]}), got {init.shape}")
    # On the caller's threads, also inside dmlbench.evaluation.metrics.evaluate (which runs its own
    # work on one): faiss's results depend on its thread count, and must be the reference's.
    with caller_threads():
        return _cluster(x_np, k, iterations, seed, init, max_points_per_centroid, device, list_size, block_size,
                        match_faiss, faiss_search_below)


def _cluster(x_np: np.ndarray, k: int, iterations: int, seed: int, init: np.ndarray | None,
             max_points_per_centroid: int, device: torch.device, list_size: int, block_size: int,
             match_faiss: bool, faiss_search_below: int) -> KMeansResult:
    """:func:`kmeans` once its arguments are checked."""
    n = len(x_np)
    x_all = torch.from_numpy(x_np).to(device)
    sample = faiss_subsample(n, k, max_points_per_centroid, seed)
    x_train = x_np if sample is None else x_np[sample]
    n_train = len(x_train)
    xt = x_all if sample is None else torch.from_numpy(x_train).to(device)
    assign = _Assigner(xt, k, list_size, block_size, x_train if match_faiss else None, faiss_search_below)

    if n == k:  # faiss copies the points and runs no iteration
        centroids = x_np.copy()
        a, _ = assign(torch.from_numpy(centroids).to(device), None)
        return KMeansResult(a.cpu().numpy(), centroids, 0, [], 0, 1.0, assign.settled)

    centroids = init if init is not None else faiss_init(x_train, k, seed)
    objectives, splits, changed, done = [], 0, None, 0
    moved = np.ones(k, dtype=bool)
    for _ in range(iterations):
        a, dis = assign(torch.from_numpy(centroids).to(device), changed)
        objectives.append(float(np.add.accumulate(dis.cpu().numpy(), dtype=np.float32)[-1]))
        new, hassign = compute_centroids(x_train, a.cpu().numpy(), k)
        splits += split_clusters(new, hassign, n_train)
        moved = (new != centroids).any(axis=1)
        centroids, done = new, done + 1
        changed = torch.from_numpy(moved).to(device)
        if not moved.any():  # a fixed point: every further iteration repeats this one
            break
    final_centroids = torch.from_numpy(centroids).to(device)
    if sample is None:
        passes = done
        if moved.any():  # else the last pass's assignment is already the one to the final centroids
            a, _ = assign(final_centroids, changed)
            passes += 1
        computed = assign.computed / (n * k * passes)
        settled = assign.settled
    else:
        everyone = _Assigner(x_all, k, list_size, block_size, x_np if match_faiss else None, faiss_search_below)
        a, _ = everyone(final_centroids, None)
        computed = (assign.computed + everyone.computed) / (n_train * k * done + n * k)
        settled = assign.settled + everyone.settled
    return KMeansResult(a.cpu().numpy(), centroids, done, objectives, splits, computed, settled)
