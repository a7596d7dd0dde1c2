"""Exact k nearest neighbours by inner product, in bounded memory, on CPU and CUDA alike.

The ranking rule: neighbours are ordered by their inner product with the query computed in float64
(elementwise products summed along the embedding, the same arithmetic for every pair), higher
first; equal scores are ordered by reference index, lower first. The rule is applied across the
k-th place too, so a tie straddling it keeps the lower indices.

How it is computed without an N x N float64 product:

1. Candidates in float32. Blocks of queries (``TILE`` rows) times reference items (as many as
   ``block_size ** 2`` elements allow) are multiplied in float32 at full precision (TF32 and other
   reduced-precision matmul modes are switched off for the call; on the CPU numpy's OpenBLAS, an
   IEEE float32 GEMM, multiplies); each query keeps a list of its
   ``m = k + slack`` best candidates. When the queries are the reference set (``reference=None``),
   only the diagonal tiles and the strips right of them are computed, each serving its rows and,
   transposed, its columns: little more than half the multiplications. The diagonal tiles come
   first, so every list is full before the rest. On the CPU each list is a faiss min-heap that a
   block's scores are pushed through (one comparison with the list's lowest score for most); on
   other devices a block is compared with each list's lowest score and the few entries above it
   are merged. With labels, the items' own search runs with them sorted by label, so that each
   list starts from its own class's (usually the nearest) items.
2. What float32 already decides. A float32 inner product of length d differs from the exact one by
   at most gamma_d * |q| * |r| with gamma_d = d u / (1 - d u), u = 2^-24, whatever order the BLAS
   sums in; the float64 one by the same expression with u = 2^-53. With E the sum of the two (for
   the query's norm and the largest reference norm), a candidate whose float32 score exceeds
   another's by more than 2E has the higher float64 score too. The candidates, in float32 order,
   split into runs where neighbours lie within 2E of each other; runs keep their order.
3. Rescoring in float64. Only the members of runs of two or more that reach the top k are scored
   again in float64, and each such run is ranked by the rule above. (With ``labels``, runs whose
   members all share, or all lack, the query's label are left as they are: see :func:`knn`.)
4. A certificate per query. Every item left out of the list had a float32 score at most s_m, that
   of the last candidate, so a float64 score at most ``s_m + E``. When (a lower bound on) the k-th
   float64 score is strictly above that, no item outside the list can enter the top k or tie with
   it, and the list is provably the exact ranking. Queries that fail (near or exact ties around the
   k-th place, e.g. duplicated embeddings) are ranked again against every reference item in float64.

Memory is O(block_size^2 + Q * (k + slack)), independent of N^2. On the CPU the torch selection
work runs on one thread and the products on the caller's threads or one, whichever is faster
(:func:`serial_ops`, :class:`ProductThreads`; searches under SERIAL_WORK multiply-adds, faiss's heaps
included, on one); no result depends on the thread count.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch

FP32_UNIT_ROUNDOFF = 2.0 ** -24
FP64_UNIT_ROUNDOFF = 2.0 ** -53
RESCORE_CHUNK = 1 << 20  # elements of the (rows, candidates, dim) product held at once
TILE = 1024  # rows per tile of the float32 search: small tiles leave less of the symmetric product unused,
LARGE_TILE = 2048  # ... but beyond LARGE_SET items each tile's bookkeeping costs more than the products it spares
LARGE_SET = 8192
SERIAL_WORK = 1 << 30  # multiply-adds: a search with fewer (some 50 ms) runs its products on one thread
HEAP_TILE = 512  # rows per tile of the CPU search, whose per-item heap work does not grow with the tile count
TRANSPOSE_CHUNK = 1 << 18  # elements of a block transposed at once for its column heaps (1 MiB)


def dot_error_bound(dim: int, unit_roundoff: float) -> float:
    """gamma_dim: |computed - exact| <= gamma_dim * sum_i |q_i r_i| for any summation order."""
    nu = dim * unit_roundoff
    if nu >= 1:
        raise ValueError(f"dimension {dim} too large for a rounding-error bound")
    return nu / (1 - nu)


@contextlib.contextmanager
def full_precision_matmul():
    """float32 products computed in float32 (IEEE) on every backend: no TF32 or bf16 shortcuts."""
    backends = [torch.backends.cuda.matmul, torch.backends.mkldnn.matmul]
    previous = [backend.fp32_precision for backend in backends]
    for backend in backends:
        backend.fp32_precision = "ieee"
    try:
        yield
    finally:
        for backend, value in zip(backends, previous):
            backend.fp32_precision = value


_outer_threads: list[int] = []  # torch's CPU thread count outside each serial_ops() block entered


@contextlib.contextmanager
def serial_ops(device: torch.device | str):
    """Run torch's CPU work on one thread inside the block; :class:`ProductThreads` lets the matrix
    products, and :func:`caller_threads` k-means, have the caller's thread count back.

    Each multi-threaded torch op on the CPU ends with all its threads meeting. On a machine busy
    with other jobs, a thread is often parked by the scheduler for a few milliseconds, and the
    others wait for it: the thousands of small indexing and selection ops of a search then cost
    seconds, for little gain even on an idle machine.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    _outer_threads.append(_outer_threads[-1] if _outer_threads else before)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        _outer_threads.pop()
        torch.set_num_threads(before)


class ProductThreads:
    """The thread count for a run of matrix products inside :func:`serial_ops`: the caller's, or
    one thread if that proves faster.

    On a machine busy with other jobs, a multi-threaded product keeps waiting for threads that the
    scheduler has parked, and can take longer than on one thread (measured here: 1.5 times as
    long with two threads on two shared cores), while on an idle machine the threads pay. So the
    first product runs on the caller's threads, the next on one, and the faster (seconds per
    multiply-add) is kept for the rest. The results do not depend on it.
    """

    def __init__(self, total_multiply_adds: float = math.inf):
        self.seconds_per_op: dict[int, float] = {}
        # Below SERIAL_WORK the threads could save a few milliseconds at best, and lose more waiting.
        self.choice: int | None = 1 if total_multiply_adds < SERIAL_WORK else None

    @contextlib.contextmanager
    def __call__(self, multiply_adds: float):
        caller = _outer_threads[-1] if _outer_threads else None
        if caller is None:
            yield
            return
        if caller == 1:
            with blas_threads(1):
                yield
            return
        threads = self.choice or (caller if caller not in self.seconds_per_op else 1)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        start = time.perf_counter()
        try:
            with blas_threads(threads):
                yield
        finally:
            elapsed = time.perf_counter() - start
            torch.set_num_threads(before)
            if self.choice is None:
                self.seconds_per_op[threads] = elapsed / max(multiply_adds, 1.0)
                if len(self.seconds_per_op) == 2:
                    self.choice = min(self.seconds_per_op, key=self.seconds_per_op.get)


_blas: list = []  # threadpoolctl's handle on the loaded BLAS libraries (numpy's, faiss's), made once


@contextlib.contextmanager
def blas_threads(threads: int):
    """numpy's and faiss's BLAS on ``threads`` threads inside the block (torch's setting does not
    reach them)."""
    if not _blas:
        from threadpoolctl import ThreadpoolController

        _blas.append(ThreadpoolController().select(user_api="blas"))
    with _blas[0].limit(limits=threads):
        yield


@contextlib.contextmanager
def caller_threads():
    """Inside a :func:`serial_ops` block, the caller's thread count again: for k-means, whose faiss
    calls share torch's OpenMP setting and must run as they would outside (faiss's float32 results
    depend on its thread count)."""
    if not _outer_threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(_outer_threads[-1])
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rescore(query: torch.Tensor, reference: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """float64 scores of the pairs (rows[i], cols[i]), products summed elementwise.

    The inputs may be float32 or float64 holding float32 values: a product of two float32 numbers
    is exact in float64, and the sum runs in float64 along the embedding. Within one query's
    ranking every score comes from this same arithmetic, so equal embeddings get equal scores,
    which a blocked GEMM does not promise for equal columns at different positions.
    """
    out = torch.empty(len(rows), dtype=torch.float64, device=query.device)
    step = max(1, RESCORE_CHUNK // max(query.shape[1], 1))
    for start in range(0, len(rows), step):
        q = query.index_select(0, rows[start:start + step]).double()  # a gathered copy, so it may be overwritten
        q.mul_(reference.index_select(0, cols[start:start + step]))
        torch.sum(q, dim=1, out=out[start:start + step])
    return out


def rescore_candidates(query: torch.Tensor, reference: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """float64 scores of each query (row) with its candidate reference items, (Q, m).

    The float32 inputs are gathered as they are and widened per chunk; the arithmetic is
    :func:`rescore`'s, one (rows x candidates, dim) block at a time.
    """
    n_q, m = candidates.shape
    dim = query.shape[1]
    out = torch.empty(n_q, m, dtype=torch.float64, device=query.device)
    step = max(1, RESCORE_CHUNK // max(m * dim, 1))
    for start in range(0, n_q, step):
        part = candidates[start:start + step]
        block = reference.index_select(0, part.reshape(-1)).view(len(part), m, dim).double()  # (b, m, d)
        block.mul_(query[start:start + step, None, :].double())
        out[start:start + step] = block.sum(dim=2)
    return out


def _merge(best_s: torch.Tensor, best_i: torch.Tensor, new_s: torch.Tensor, new_i: torch.Tensor, owners: slice) -> None:
    """Keep, for each query of ``owners``, the m best of its list and the new entries (in place;
    lists are kept in no particular order)."""
    s = torch.cat([best_s[owners], new_s], dim=1)
    i = torch.cat([best_i[owners], new_i], dim=1)
    top, pos = s.topk(best_s.shape[1], dim=1, sorted=False)
    best_s[owners], best_i[owners] = top, i.gather(1, pos)


def _absorb(best_s: torch.Tensor, best_i: torch.Tensor, tile: torch.Tensor, owner0: int, cand0: int, *,
            by_column: bool) -> None:
    """Merge a tile's scores into the running candidate lists, in place.

    Rows of ``tile`` (or its columns, ``by_column``) belong to queries ``owner0 + j``; the other
    axis holds reference items ``cand0 + i``. Only scores above the lowest score of a query's list
    can enter it, so once the lists are full those few entries are picked out, laid out one row
    per query and merged; while a list has free places, or most entries would qualify, the
    tile's top m per query is merged instead.
    """
    m = best_s.shape[1]
    view = tile.T if by_column else tile  # (owners, candidates)
    n_owners, n_cands = view.shape
    owners = slice(owner0, owner0 + n_owners)
    threshold = best_s[owners].min(dim=1).values
    width = n_cands  # entries per query in the merge
    if not bool(torch.isneginf(threshold).any()):
        mask = tile > (threshold[None, :] if by_column else threshold[:, None])
        owner, cand = (mask.T if by_column else mask).nonzero(as_tuple=True)  # grouped by owner
        if len(owner) == 0:
            return
        counts = torch.bincount(owner, minlength=n_owners)
        width = int(counts.max())
    if width > n_cands // 2:  # the entries laid out would fill most of the block: its top m is cheaper
        s, i = view.topk(min(m, n_cands), dim=1, sorted=False)
        _merge(best_s, best_i, s, i + cand0, owners)
        return
    rank = torch.arange(len(owner), device=owner.device) - (torch.cumsum(counts, 0) - counts)[owner]
    new_s = torch.full((n_owners, width), -math.inf, device=tile.device)
    new_i = torch.full((n_owners, width), -1, dtype=torch.long, device=tile.device)
    new_s[owner, rank] = view[owner, cand]
    new_i[owner, rank] = cand + cand0
    _merge(best_s, best_i, new_s, new_i, owners)


def _tile_order(n_q: int, n_r: int, tile: int, width: int, symmetric: bool) -> list[tuple[int, int, int, int]]:
    """(row start, row end, column start, column end) of the blocks to compute, ``tile`` rows by
    up to ``width`` columns. For the symmetric product the diagonal tiles come first (they fill
    every list), then the strips right of the diagonal."""
    rows = [(r0, min(r0 + tile, n_q)) for r0 in range(0, n_q, tile)]
    if not symmetric:
        return [(r0, r1, c0, min(c0 + width, n_r)) for r0, r1 in rows for c0 in range(0, n_r, width)]
    return [(r0, r1, r0, r1) for r0, r1 in rows] + [
        (r0, r1, c0, min(c0 + width, n_r)) for r0, r1 in rows for c0 in range(r1, n_r, width)]


def _candidates(q32: torch.Tensor, r32: torch.Tensor, m: int, symmetric: bool, exclude: torch.Tensor | None,
                tile: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's m best reference items by float32 score, (Q, m) scores (descending) and indices;
    ``exclude`` (Q,) names a reference item each query may not retrieve.

    On the CPU the lists are faiss heaps (:func:`_heap_candidates`); elsewhere, or where a list
    could not be filled with finite scores, the tiles are merged with torch (:func:`_torch_candidates`).
    """
    if q32.device.type == "cpu":
        found = _heap_candidates(q32, r32, m, symmetric, exclude, min(block_size, HEAP_TILE), block_size)
        if found is not None:
            return found
    # Tiles hold at least 4m columns, so that the diagonal ones leave a selective m-th score.
    tile = max(1, min(block_size, max(tile, 4 * m)))
    return _torch_candidates(q32, r32, m, symmetric, exclude, tile, block_size)


def _products(q32: torch.Tensor, r32: torch.Tensor, symmetric: bool, exclude: torch.Tensor | None, tile: int,
              block_size: int):
    """The float32 blocks of the candidate search, in :func:`_tile_order`: yields (row start, column
    start, scores), the scores of excluded pairs set to -inf. Each block lives until the next is asked
    for (its storage is reused). TF32 and other reduced-precision modes are off meanwhile."""
    n_q, n_r = len(q32), len(r32)
    width = max(tile, block_size * block_size // tile)
    buffer = torch.empty(min(tile, n_q) * min(width, n_r), device=q32.device)  # one block's storage, reused
    threads = ProductThreads(n_q * n_r * q32.shape[1] / (2 if symmetric else 1))
    cpu = q32.device.type == "cpu"
    with full_precision_matmul():
        for r0, r1, c0, c1 in _tile_order(n_q, n_r, tile, width, symmetric):
            scores = buffer[:(r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
            with threads(scores.numel() * q32.shape[1]):
                if cpu:  # numpy's OpenBLAS: measured here 1.7 times as fast as torch's float32 GEMM
                    np.matmul(q32[r0:r1].detach().numpy(), r32[c0:c1].detach().numpy().T, out=scores.numpy())
                else:
                    torch.mm(q32[r0:r1], r32[c0:c1].T, out=scores)
            if exclude is not None:
                hit = (exclude[r0:r1] >= c0) & (exclude[r0:r1] < c1)
                rows = hit.nonzero(as_tuple=True)[0]
                scores[rows, exclude[r0:r1][rows] - c0] = -math.inf
            yield r0, c0, scores


def _heap_candidates(q32: torch.Tensor, r32: torch.Tensor, m: int, symmetric: bool, exclude: torch.Tensor | None,
                     tile: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`_candidates` on the CPU: every block is pushed, row by row, through one faiss min-heap
    of m entries per query (an entry enters only if strictly above the heap's lowest, so each left
    out item scores at most s_m); in the symmetric product the block's columns are pushed too, a
    slice of them at a time transposed into a small buffer. None where a heap was left with a free
    place (an item scoring -inf or NaN): the torch merge then decides as it always did."""
    import faiss

    n_q = len(q32)
    best_s = torch.empty(n_q, m)
    best_i = torch.empty(n_q, m, dtype=torch.long)
    heaps = faiss.float_minheap_array_t()
    heaps.nh, heaps.k = n_q, m
    heaps.val, heaps.ids = faiss.swig_ptr(best_s.numpy()), faiss.swig_ptr(best_i.numpy())
    heaps.heapify()
    columns = max(1, TRANSPOSE_CHUNK // tile)  # columns of a block transposed at once
    flipped = torch.empty(min(columns, n_q) * min(tile, n_q)) if symmetric else None
    threads = faiss.omp_get_max_threads()
    if n_q * len(r32) * q32.shape[1] / (2 if symmetric else 1) < SERIAL_WORK:  # small: faiss's threads would wait
        faiss.omp_set_num_threads(1)
    try:
        for r0, c0, scores in _products(q32, r32, symmetric, exclude, tile, block_size):
            rows, cols = scores.shape
            heaps.addn(cols, faiss.swig_ptr(scores.numpy()), c0, r0, rows)
            if symmetric and c0 != r0:  # the same block, read by column, serves queries c0:c1
                for j0 in range(0, cols, columns):
                    j1 = min(j0 + columns, cols)
                    part = flipped[:(j1 - j0) * rows].view(j1 - j0, rows)
                    part.copy_(scores[:, j0:j1].T)
                    heaps.addn(rows, faiss.swig_ptr(part.numpy()), r0, c0 + j0, j1 - j0)
    finally:
        faiss.omp_set_num_threads(threads)
    heaps.reorder()  # each list by score, descending
    if bool((best_i < 0).any()):
        return None
    return best_s, best_i


def _torch_candidates(q32: torch.Tensor, r32: torch.Tensor, m: int, symmetric: bool, exclude: torch.Tensor | None,
                      tile: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_candidates` with torch ops: blocks are ``tile`` rows by as many columns as
    ``block_size ** 2`` elements allow (few, large products, since on a busy machine each
    multi-threaded product also waits for its slowest thread), merged into the lists by
    :func:`_absorb`."""
    n_q, device = len(q32), q32.device
    best_s = torch.full((n_q, m), -math.inf, device=device)
    best_i = torch.full((n_q, m), -1, dtype=torch.long, device=device)
    for r0, c0, scores in _products(q32, r32, symmetric, exclude, tile, block_size):
        _absorb(best_s, best_i, scores, r0, c0, by_column=False)
        if symmetric and c0 != r0:  # the same block, read by column, serves rows c0:c1
            _absorb(best_s, best_i, scores, c0, r0, by_column=True)
    best_s, order = best_s.sort(dim=1, descending=True)
    return best_s, best_i.gather(1, order)


def _grouped_candidates(x32: torch.Tensor, labels: torch.Tensor, m: int, tile: int,
                        block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_candidates` of the items against each other, searched with the items sorted by label.

    An item's nearest neighbours are mostly of its own label; side by side, they share its diagonal
    tile, which is searched first, so each list starts near its final scores and few later entries
    displace one. The lists come back in the items' own order and numbering; only the order of
    equal float32 scores in them may differ, which the ranking settles in float64 as ever.
    """
    order = labels.argsort(stable=True)
    grouped = x32.index_select(0, order)
    best_s, best_i = _candidates(grouped, grouped, m, True, torch.arange(len(x32), device=x32.device), tile,
                                 block_size)
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order), device=order.device)
    return best_s[back], order[best_i[back]]


def _rank_candidates(q64: torch.Tensor, r64: torch.Tensor, best_s: torch.Tensor, best_i: torch.Tensor, k: int,
                     error: torch.Tensor, hits: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The candidates of each query in the order of the rule, as far as its candidate list decides
    it (steps 2 and 3 of the module docstring): (ranked indices (Q, m), a lower bound on the k-th
    float64 score (Q,), the number of pairs rescored). ``error`` (Q,) is E, the largest difference
    between a float32 score and the float64 one. With ``hits`` (Q, m: candidate shares the query's
    label), runs whose members all agree on it keep their float32 order, unless they run to the
    end of the list (where the certificate needs their float64 scores)."""
    n_q, m = best_s.shape
    s = best_s.double()
    close = (s[:, :-1] - s[:, 1:]) <= 2 * error[:, None]  # (Q, m - 1): neighbours float32 cannot order
    run = torch.zeros(n_q, m, dtype=torch.long, device=s.device)
    run[:, 1:] = torch.cumsum(~close, dim=1)  # run number of each place
    shared = torch.zeros(n_q, m, dtype=torch.bool, device=s.device)
    shared[:, 1:] |= close
    shared[:, :-1] |= close
    rescored = shared & (run <= run[:, k - 1:k])  # runs of two or more that reach the top k
    if hits is not None:
        rescored &= _mixed_runs(run, hits) | (run == run[:, -1:])
    rows, cols = rescored.nonzero(as_tuple=True)  # by query, then place: by query, then run
    index = best_i[rows, cols]
    f = rescore(q64, r64, rows, index)
    # Each run keeps its places; its members are ordered by float64 score (descending), then by
    # reference index: stable sorts by index, by score, and last by (query, run) restore the runs.
    order = index.argsort(stable=True)
    order = order[f[order].sort(descending=True, stable=True).indices]
    order = order[(rows * m + run[rows, cols])[order].argsort(stable=True)]
    ranked = best_i.clone()
    ranked[rows, cols] = index[order]
    ranked_f = torch.zeros(n_q, m, dtype=torch.float64, device=s.device)
    ranked_f[rows, cols] = f[order]
    # The k-th float64 score is at least the float32 score of the last member of the k-th place's
    # run, less E, or it is known where that run was rescored.
    run_end = (run <= run[:, k - 1:k]).sum(dim=1, keepdim=True) - 1
    kth = torch.where(rescored[:, k - 1], ranked_f[:, k - 1], s.gather(1, run_end)[:, 0] - error)
    return ranked, kth, len(rows)


def _mixed_runs(run: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
    """(Q, m): whether the run of each place holds both hits and misses."""
    in_run = torch.zeros_like(run).scatter_add_(1, run, torch.ones_like(run))
    hits_in_run = torch.zeros_like(run).scatter_add_(1, run, hits.long())
    return ((hits_in_run > 0) & (hits_in_run < in_run)).gather(1, run)


def _check(query: torch.Tensor, reference: torch.Tensor | None, k: int, exclude: torch.Tensor | None) -> int:
    if query.ndim != 2 or (reference is not None and reference.ndim != 2):
        raise ValueError("query and reference must be 2-D (items, dim)")
    if reference is not None and reference.shape[1] != query.shape[1]:
        raise ValueError(f"reference dim {reference.shape[1]} differs from query dim {query.shape[1]}")
    if reference is not None and reference.device != query.device:
        raise ValueError(f"query is on {query.device} but reference on {reference.device}")
    n_ref = len(query) if reference is None else len(reference)
    if exclude is not None:
        if reference is None:
            raise ValueError("exclude is implied when reference is None (each item excludes itself)")
        if exclude.shape != (len(query),):
            raise ValueError(f"exclude must hold one reference index per query, got shape {tuple(exclude.shape)}")
        if len(exclude) and (exclude.min() < 0 or exclude.max() >= n_ref):
            raise ValueError(f"exclude indices must lie in [0, {n_ref})")
    n_valid = n_ref - (1 if (reference is None or exclude is not None) else 0)
    if not 1 <= k <= n_valid:
        raise ValueError(f"k={k} must be between 1 and the {n_valid} reference items each query can retrieve")
    return n_valid


def knn(query: torch.Tensor, reference: torch.Tensor | None, k: int, *, exclude: torch.Tensor | None = None,
        block_size: int = 4096, slack: int = 8, return_stats: bool = False, scores: bool = True,
        labels: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Exact k nearest neighbours by inner product: ``(scores, indices)``, each (Q, k).

    ``reference=None`` ranks the queries against each other, each query excluding itself.
    Otherwise ``exclude`` (Q,) may name one reference index per query that it may not retrieve.
    Scores are float64; the ranking rule is in the module docstring. ``scores=False`` returns
    ``(None, indices)``, sparing the float64 scores of the neighbours that the ranking did not need.
    ``return_stats`` adds a dict with the candidates per query, the (query, candidate) pairs scored
    in float64 and the number of queries that needed the full float64 ranking.

    ``labels`` = (query labels (Q,), reference labels) is for callers that only read which
    neighbours share the query's label (every retrieval metric): neighbours that float32 cannot
    order and that all share, or all lack, the query's label are then left in float32 order, which
    may swap them relative to the rule but leaves each query's sequence of hits exactly as the
    rule's. It requires ``scores=False``.
    """
    n_valid = _check(query, reference, k, exclude)
    if labels is not None and scores:
        raise ValueError("labels (an order exact only up to swaps of equally relevant neighbours) needs scores=False")
    with serial_ops(query.device):
        out_scores, indices, stats = _knn(query, reference, k, exclude, block_size, slack, n_valid, scores, labels)
    return (out_scores, indices, stats) if return_stats else (out_scores, indices)


def _knn(query: torch.Tensor, reference: torch.Tensor | None, k: int, exclude: torch.Tensor | None, block_size: int,
         slack: int, n_valid: int, scores: bool, labels) -> tuple[torch.Tensor | None, torch.Tensor, dict]:
    """:func:`knn` once its arguments are checked: the steps of the module docstring."""
    symmetric = reference is None
    ref = query if symmetric else reference
    n_q, dim = len(query), query.shape[1]
    m = min(k + slack, n_valid)
    q32, r32 = query.float().contiguous(), ref.float().contiguous()
    exclude_cols = torch.arange(n_q, device=query.device) if symmetric else exclude
    tile = TILE if max(n_q, len(ref)) <= LARGE_SET else LARGE_TILE
    if symmetric and labels is not None:
        best_s, best_i = _grouped_candidates(q32, labels[0], m, tile, block_size)
    else:
        best_s, best_i = _candidates(q32, r32, m, symmetric, exclude_cols, tile, block_size)

    # The float32 values widened once (exactly): every float64 score below gathers these rows.
    q64 = q32.double()
    r64 = q64 if symmetric else r32.double()
    q_norm = q64.norm(dim=1)
    r_max = q_norm.max() if symmetric else r64.norm(dim=1).max()
    error = (dot_error_bound(dim, FP32_UNIT_ROUNDOFF) + dot_error_bound(dim, FP64_UNIT_ROUNDOFF)) * q_norm * r_max
    hits = None if labels is None else labels[1][best_i] == labels[0][:, None]
    ranked, kth_lower, n_rescored = _rank_candidates(q64, r64, best_s, best_i, k, error, hits)
    indices = ranked[:, :k].contiguous()
    if m < n_valid:
        redo = (kth_lower <= best_s[:, -1].double() + error).nonzero(as_tuple=True)[0]
    else:  # every retrievable item was a candidate
        redo = torch.empty(0, dtype=torch.long, device=query.device)
    out_scores = rescore_candidates(q64, r64, indices) if scores else None
    if len(redo):
        full_s, full_i = _full_rows(q64, r64, redo, k, None if exclude_cols is None else exclude_cols[redo], block_size)
        indices[redo] = full_i
        if scores:
            out_scores[redo] = full_s
    return out_scores, indices, {"candidates": m, "rescored_pairs": n_rescored, "full_rows": int(len(redo))}


def _full_rows(q64: torch.Tensor, r64: torch.Tensor, rows: torch.Tensor, k: int, exclude: torch.Tensor | None,
               block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact ranking of the given queries against every reference item, in float64.

    A float64 GEMM picks, per query, every item that could rank in the top k; those are rescored
    elementwise and ranked by the rule.
    """
    dim = q64.shape[1]
    gamma = dot_error_bound(dim, FP64_UNIT_ROUNDOFF)
    r_max = r64.norm(dim=1).max()
    out_s = torch.empty(len(rows), k, dtype=torch.float64, device=q64.device)
    out_i = torch.empty(len(rows), k, dtype=torch.long, device=q64.device)
    step = max(1, (block_size * block_size) // max(len(r64), 1))
    threads = ProductThreads()
    for start in range(0, len(rows), step):
        part = rows[start:start + step]
        with threads(len(part) * r64.numel()):
            gemm = q64[part] @ r64.T
        if exclude is not None:
            gemm[torch.arange(len(part), device=gemm.device), exclude[start:start + step]] = -math.inf
        kth = gemm.topk(k, dim=1).values[:, -1:]
        # GEMM and elementwise values each lie within gamma |q||r| of the exact product, so an item
        # ranking at or above the k-th elementwise score has a GEMM score >= kth - 4 gamma |q||r|.
        slack = 4 * gamma * q64[part].norm(dim=1, keepdim=True) * r_max
        local, cols = (gemm >= kth - slack).nonzero(as_tuple=True)
        del gemm
        s = rescore(q64, r64, part[local], cols)
        # Rank all selected pairs: by query, then score descending, then index ascending.
        order = cols.argsort(stable=True)
        order = order[(-s[order]).argsort(stable=True)]
        order = order[local[order].argsort(stable=True)]
        local, cols, s = local[order], cols[order], s[order]
        first = torch.searchsorted(local, torch.arange(len(part), device=local.device))
        take = first[:, None] + torch.arange(k, device=local.device)[None, :]
        out_s[start:start + len(part)], out_i[start:start + len(part)] = s[take], cols[take]
    return out_s, out_i
