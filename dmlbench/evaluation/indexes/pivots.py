"""Exact k-NN search with a pivot table (LAESA: Micó, Oncina and Vidal 1994), counting the
distance computations it avoids.

Build: choose ``P`` pivots among the items and store every item's distance to every pivot, an
(N, P) table. The pivots are chosen by LAESA's own rule, the greedy maximum sum of distances:
the first pivot is item ``first`` (0 unless told), and each next one is the item whose summed
distance to the pivots chosen so far is largest (the lowest index among equals).

Search for a query q: compute d(q, p) for the P pivots (P distance computations; the pivots are
items, so their own distances are then known). The triangle inequality gives every item x the
lower bound ``lb(x) = max_p |d(q, p) - d(x, p)| <= d(q, x)``. Items are visited in increasing lower
bound; each visit computes one distance; the search stops at the first item whose lower bound
exceeds the current k-th smallest distance, since neither it nor any later item can enter the
top k (nor tie with its k-th: the bound is strict, with a margin ``TOLERANCE`` for rounding). The
result is exact, ties broken by the lower item index.

The visits are computed in chunks of growing size for speed, and the count is the sequential
algorithm's: the number of visits before the first stop (found by bisection, since lb grows and the
k-th distance shrinks along the visiting order). Distances are Euclidean, in float64.
"""

from __future__ import annotations

import numpy as np

TOLERANCE = 1e-12  # float64 rounding of a lower bound; a visit is skipped only above kth + this
FIRST_CHUNK = 32  # visits evaluated at once, doubling each time


def _exact_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distances by differences, never by the expanded square (which loses digits near zero)."""
    out = np.empty((x.shape[0], y.shape[0]))
    for i in range(x.shape[0]):
        out[i] = np.sqrt(((y - x[i]) ** 2).sum(1))
    return out


def choose_pivots(x: np.ndarray, count: int, first: int = 0) -> np.ndarray:
    """LAESA's maximum-sum-of-distances pivots: item indices, in the order chosen."""
    n = len(x)
    if not 1 <= count <= n:
        raise ValueError(f"pivots: {count} pivots cannot be chosen among {n} items (1 to {n})")
    if not 0 <= first < n:
        raise ValueError(f"pivots: first pivot {first} is not an item index (0 to {n - 1})")
    chosen = [first]
    total = np.zeros(n)
    for _ in range(count - 1):
        total += _exact_distances(x[chosen[-1]][None], x)[0]
        total[chosen] = -np.inf
        chosen.append(int(np.argmax(total)))
    return np.asarray(chosen, dtype=np.int64)


class PivotTable:
    """A LAESA pivot table over ``x`` (N, d); :meth:`search` returns exact neighbours and counts."""

    def __init__(self, x, num_pivots: int = 16, first: int = 0):
        self.x = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
        if self.x.ndim != 2 or len(self.x) == 0:
            raise ValueError(f"pivots: items must be a non-empty (N, d) array, got shape {self.x.shape}")
        self.pivots = choose_pivots(self.x, num_pivots, first)
        self.table = _exact_distances(self.x[self.pivots], self.x).T  # (N, P)
        self._others = np.setdiff1d(np.arange(len(self.x)), self.pivots)

    @property
    def nbytes(self) -> int:
        """The items and the pivot table (float64)."""
        return self.x.nbytes + self.table.nbytes + self.pivots.nbytes

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distances (Q, k), item ids (Q, k), distance computations per query (Q,))."""
        q = np.asarray(queries, dtype=np.float64)
        n = len(self.x)
        if not 1 <= k <= n:
            raise ValueError(f"pivots: k={k} must be between 1 and the {n} items")
        out_d, out_i = np.empty((len(q), k)), np.empty((len(q), k), dtype=np.int64)
        computed = np.empty(len(q), dtype=np.int64)
        for row in range(len(q)):
            out_d[row], out_i[row], computed[row] = self._search_one(q[row], k)
        return out_d, out_i, computed

    def _search_one(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """One query: the sequential LAESA search, visits evaluated chunk by chunk."""
        to_pivots = _exact_distances(q[None], self.x[self.pivots])[0]  # (P,)
        lower = np.abs(self.table[self._others] - to_pivots[None, :]).max(axis=1)  # (N - P,)
        order = np.argsort(lower, kind="stable")
        lower, visit = lower[order], self._others[order]
        seen_d, seen_i = list(to_pivots), list(self.pivots)
        start, chunk, stop = 0, FIRST_CHUNK, len(visit)
        while start < len(visit):
            end = min(start + chunk, len(visit))
            d = _exact_distances(q[None], self.x[visit[start:end]])[0]
            stop = _first_stop(np.asarray(seen_d), lower[start:end], d, k)
            seen_d.extend(d[:stop])
            seen_i.extend(visit[start:start + stop])
            if stop < end - start:
                stop += start
                break
            start, chunk = end, chunk * 2
        else:
            stop = len(visit)
        seen_d, seen_i = np.asarray(seen_d), np.asarray(seen_i)
        best = np.lexsort((seen_i, seen_d))[:k]
        return seen_d[best], seen_i[best], len(self.pivots) + stop


def _kth(values: np.ndarray, k: int) -> float:
    return np.inf if len(values) < k else float(np.partition(values, k - 1)[k - 1])


def _first_stop(known: np.ndarray, lower: np.ndarray, d: np.ndarray, k: int) -> int:
    """How many of this chunk's visits the sequential search makes: the first j whose lower bound
    exceeds the k-th smallest of ``known`` and the chunk's first j distances (len(d) if none)."""
    def stops(j: int) -> bool:
        return lower[j] > _kth(np.concatenate([known, d[:j]]), k) + TOLERANCE

    if not stops(len(d) - 1):
        return len(d)
    lo, hi = 0, len(d) - 1  # stops(hi) holds; the predicate is monotone in j
    while lo < hi:
        mid = (lo + hi) // 2
        if stops(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
