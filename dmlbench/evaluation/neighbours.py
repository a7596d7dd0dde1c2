"""Exact k nearest neighbours by inner product, in bounded memory, on CPU and CUDA alike.

The ranking rule: neighbours are ordered by their inner product with the query computed in float64
(elementwise products summed along the embedding, the same arithmetic for every pair), higher
first; equal scores are ordered by reference index, lower first. The rule is applied across the
k-th place too, so a tie straddling it keeps the lower indices.

How it is computed without an N x N float64 product:

1. Candidates in float32. Query and reference blocks (``block_size`` rows each) are multiplied in
   float32 at full precision (TF32 and other reduced-precision matmul modes are switched off for
   the call); each query keeps a running list of its ``k + slack`` best candidates. When the
   queries are the reference set (``reference=None``), only tiles on or above the diagonal are
   computed and each serves its rows and, transposed, its columns: half the multiplications.
2. Rescoring in float64. Every candidate is scored again in float64 and the list is ranked by the
   rule above.
3. A certificate per query. A float32 inner product of length d differs from the exact one by at
   most gamma_d * |q| * |r| with gamma_d = d u / (1 - d u), u = 2^-24, whatever order the BLAS sums
   in; the float64 one by the same expression with u = 2^-53. Every item left out of the candidate
   list had a float32 score at most that of the last candidate, so its float64 score is at most
   ``last + bound``. When the k-th float64 score is strictly above that, no item outside the list
   can enter the top k or tie with it, and the list is provably the exact ranking. Queries that
   fail (near or exact ties around the k-th place, e.g. duplicated embeddings) are ranked again
   against every reference item in float64.

Memory is O(block_size^2 + Q * (k + slack)), independent of N^2.
"""

from __future__ import annotations

import contextlib
import math

import torch

FP32_UNIT_ROUNDOFF = 2.0 ** -24
FP64_UNIT_ROUNDOFF = 2.0 ** -53
RESCORE_CHUNK = 1 << 20  # elements of the (rows, candidates, dim) product held at once


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


def rescore(query64: torch.Tensor, reference64: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """float64 scores of the pairs (rows[i], cols[i]), products summed elementwise.

    Within one query's ranking every score comes from the same arithmetic (a float64 sum along the
    embedding of exact float32 x float32 products), so equal embeddings get equal scores, which a
    blocked GEMM does not promise for equal columns at different positions.
    """
    out = torch.empty(len(rows), dtype=torch.float64, device=query64.device)
    step = max(1, RESCORE_CHUNK // max(query64.shape[1], 1))
    for start in range(0, len(rows), step):
        q = query64[rows[start:start + step]]
        q.mul_(reference64[cols[start:start + step]])
        out[start:start + step] = q.sum(dim=1)
    return out


def rescore_candidates(query: torch.Tensor, reference: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """float64 scores of each query (row) with its candidate reference items, (Q, m).

    The float32 inputs are gathered as they are and widened per chunk; float32 x float32 products
    are exact in float64, and the sum runs in float64 along the embedding.
    """
    n_q, m = candidates.shape
    dim = query.shape[1]
    out = torch.empty(n_q, m, dtype=torch.float64, device=query.device)
    step = max(1, RESCORE_CHUNK // max(m * dim, 1))
    for start in range(0, n_q, step):
        block = reference[candidates[start:start + step]].double()  # (b, m, d)
        block.mul_(query[start:start + step, None, :].double())
        out[start:start + step] = block.sum(dim=2)
    return out


def rank_by_score_then_index(scores: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by score (descending), equal scores by index (ascending)."""
    by_index, order = indices.sort(dim=1, stable=True)
    scores = scores.gather(1, order)
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    return scores, by_index.gather(1, order)


def _merge(best_s, best_i, new_s, new_i):
    s = torch.cat([best_s, new_s], dim=1)
    i = torch.cat([best_i, new_i], dim=1)
    top, pos = s.topk(best_s.shape[1], dim=1)
    return top, i.gather(1, pos)


def _absorb(best_s: torch.Tensor, best_i: torch.Tensor, tile: torch.Tensor, owner0: int, cand0: int, *,
            by_column: bool) -> None:
    """Merge a tile's scores into the running candidate lists, in place.

    Rows of ``tile`` (or its columns, ``by_column``) belong to queries ``owner0 + j``; the other
    axis holds reference items ``cand0 + i``. By rows: a top-m per row, merged. By columns: only
    scores above a query's current m-th candidate can enter its list, so once the lists are
    filled, those few entries are picked out and merged (a top-m down the columns while most
    entries would still qualify).
    """
    m = best_s.shape[1]
    n_owners = tile.shape[1] if by_column else tile.shape[0]
    owners = slice(owner0, owner0 + n_owners)
    mask = None
    if by_column:  # a top-m down the columns of a row-major tile is slow; filtering is not
        mask = tile > best_s[owners, -1][None, :]
        if int(mask.count_nonzero()) > 2 * m * n_owners:
            mask = None
    if mask is None:  # a plain top-m along the query axis
        width = min(m, tile.shape[0] if by_column else tile.shape[1])
        s, i = (tile.T if by_column else tile).topk(width, dim=1)
        best_s[owners], best_i[owners] = _merge(best_s[owners], best_i[owners], s, i + cand0)
        return
    rows, cols = mask.nonzero(as_tuple=True)
    values = tile[rows, cols]
    owner, cand = (cols, rows) if by_column else (rows, cols)
    if len(owner) == 0:
        return
    # group the entries by owner, best first, and keep each owner's m best
    order = torch.argsort(values, descending=True, stable=True)
    order = order[torch.argsort(owner[order], stable=True)]
    owner, cand, values = owner[order], cand[order], values[order]
    counts = torch.bincount(owner, minlength=n_owners)
    rank = torch.arange(len(owner), device=owner.device) - (torch.cumsum(counts, 0) - counts)[owner]
    keep = rank < m
    touched = counts.nonzero(as_tuple=True)[0]
    slot = torch.searchsorted(touched, owner[keep])
    new_s = torch.full((len(touched), m), -math.inf, device=tile.device)
    new_i = torch.full((len(touched), m), -1, dtype=torch.long, device=tile.device)
    new_s[slot, rank[keep]] = values[keep]
    new_i[slot, rank[keep]] = cand[keep] + cand0
    target = touched + owner0
    best_s[target], best_i[target] = _merge(best_s[target], best_i[target], new_s, new_i)


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
        block_size: int = 4096, slack: int = 8, return_stats: bool = False):
    """Exact k nearest neighbours by inner product: ``(scores, indices)``, each (Q, k).

    ``reference=None`` ranks the queries against each other, each query excluding itself.
    Otherwise ``exclude`` (Q,) may name one reference index per query that it may not retrieve.
    Scores are float64; the ranking rule is in the module docstring. ``return_stats`` adds a dict
    with the number of queries that needed the full float64 ranking.
    """
    n_valid = _check(query, reference, k, exclude)
    symmetric = reference is None
    ref = query if symmetric else reference
    device = query.device
    n_q, n_r, dim = len(query), len(ref), query.shape[1]
    m = min(k + slack, n_valid)
    q32, r32 = query.float().contiguous(), ref.float().contiguous()
    best_s = torch.full((n_q, m), -math.inf, device=device)
    best_i = torch.full((n_q, m), -1, dtype=torch.long, device=device)
    exclude_cols = torch.arange(n_q, device=device) if symmetric else exclude

    with full_precision_matmul():
        for r0 in range(0, n_q, block_size):
            r1 = min(r0 + block_size, n_q)
            c_start = r0 if symmetric else 0
            for c0 in range(c_start, n_r, block_size):
                c1 = min(c0 + block_size, n_r)
                tile = q32[r0:r1] @ r32[c0:c1].T
                if exclude_cols is not None:
                    hit = (exclude_cols[r0:r1] >= c0) & (exclude_cols[r0:r1] < c1)
                    rows = hit.nonzero(as_tuple=True)[0]
                    tile[rows, exclude_cols[r0:r1][rows] - c0] = -math.inf
                _absorb(best_s, best_i, tile, r0, c0, by_column=False)
                if symmetric and c0 != r0:  # the same tile, read by column, serves rows c0:c1
                    _absorb(best_s, best_i, tile, c0, r0, by_column=True)
                del tile

    scores = rescore_candidates(q32, r32, best_i)
    scores, indices = rank_by_score_then_index(scores, best_i)

    if m < n_valid:
        q_norm = q32.double().norm(dim=1)
        r_max = r32.double().norm(dim=1).max()
        bound = (dot_error_bound(dim, FP32_UNIT_ROUNDOFF) + dot_error_bound(dim, FP64_UNIT_ROUNDOFF)) * q_norm * r_max
        certified = scores[:, k - 1] > best_s[:, -1].double() + bound
        redo = (~certified).nonzero(as_tuple=True)[0]
    else:  # every retrievable item was a candidate
        redo = torch.empty(0, dtype=torch.long, device=device)
    scores, indices = scores[:, :k].contiguous(), indices[:, :k].contiguous()
    if len(redo):
        q64 = q32.double()
        r64 = q64 if symmetric else r32.double()
        full_s, full_i = _full_rows(q64, r64, redo, k, None if exclude_cols is None else exclude_cols[redo], block_size)
        scores[redo], indices[redo] = full_s, full_i
    if return_stats:
        return scores, indices, {"candidates": m, "full_rows": int(len(redo))}
    return scores, indices


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
    for start in range(0, len(rows), step):
        part = rows[start:start + step]
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
