"""Exact search with every item as a pivot (AESA: Vidal 1986), counting its distance computations.

    index = AESA(x)                              # (N, d); stores the N x N distance matrix
    d, ids, computed = index.knn(queries, k=10)  # exact, ties by the lower id
    ids, d, computed = index.range(queries, radius=0.4)

Build: the distance between every pair of items, an (N, N) float64 matrix, so AESA is for small
collections (``MAX_ITEMS``); LAESA (:mod:`.pivots`) keeps only P columns of it.

Search for a query q: every item starts alive with lower bound 0. Repeatedly the alive item of
smallest lower bound (the lowest id among equals) is taken, its distance d(q, c) computed (one
computation), and c leaves the alive set. Since c is now a pivot whose distance to every item is
stored, each alive item's bound rises to max(lb(x), |d(q, c) - d(c, x)|), and an item whose bound
exceeds the current search radius (the k-th smallest distance found so far for k-NN, the query's
radius for a range query) is dropped without its distance being computed. The search ends when no
item is alive. A bound never exceeds the true distance, so the result is exact; an item is dropped
only above the radius plus ``TOLERANCE`` (float64 rounding), so ties with the k-th neighbour and
items on a range query's boundary are kept. Distances are Euclidean in float64, computed as
:mod:`.pivots` computes them.
"""

from __future__ import annotations

import heapq

import numpy as np

from .pivots import TOLERANCE, _exact_distances, check_radius

MAX_ITEMS = 12_000  # an N x N float64 matrix of 12,000 items is 1.15 GB


class AESA:
    """AESA over ``x`` (N, d): :meth:`knn` and :meth:`range` are exact and count distances."""

    def __init__(self, x):
        self.x = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
        if self.x.ndim != 2 or len(self.x) == 0:
            raise ValueError(f"aesa: items must be a non-empty (N, d) array, got shape {self.x.shape}")
        if len(self.x) > MAX_ITEMS:
            raise ValueError(f"aesa: {len(self.x)} items need a {len(self.x)} x {len(self.x)} distance matrix; "
                             f"AESA takes 1 to {MAX_ITEMS} items (use the pivot table, LAESA, for more)")
        self.matrix = _exact_distances(self.x, self.x)  # (N, N)
        self.build_distances = len(self.x) * (len(self.x) - 1) // 2

    @property
    def nbytes(self) -> int:
        return self.x.nbytes + self.matrix.nbytes

    def _queries(self, queries) -> np.ndarray:
        q = np.asarray(queries, dtype=np.float64)
        if q.ndim != 2 or q.shape[1] != self.x.shape[1]:
            raise ValueError(f"aesa: queries must be a (Q, {self.x.shape[1]}) array, got shape {q.shape}")
        return q

    def knn(self, queries, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distances (Q, k), item ids (Q, k), distance computations per query (Q,))."""
        q = self._queries(queries)
        if not 1 <= k <= len(self.x):
            raise ValueError(f"aesa: k={k} must be between 1 and the {len(self.x)} items")
        out_d, out_i = np.empty((len(q), k)), np.empty((len(q), k), dtype=np.int64)
        computed = np.empty(len(q), dtype=np.int64)
        for row in range(len(q)):
            seen_i, seen_d = self._search(q[row], _KthSmallest(k))
            best = np.lexsort((seen_i, seen_d))[:k]
            out_d[row], out_i[row], computed[row] = seen_d[best], seen_i[best], len(seen_i)
        return out_d, out_i, computed

    def range(self, queries, radius: float) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """(item ids per query, their distances, computations (Q,)): items with d(q, x) <= radius,
        sorted by (distance, id)."""
        radius = check_radius(radius, "aesa")
        q = self._queries(queries)
        ids, dists, computed = [], [], np.empty(len(q), dtype=np.int64)
        for row in range(len(q)):
            seen_i, seen_d = self._search(q[row], lambda d: radius)
            keep = seen_d <= radius
            order = np.lexsort((seen_i[keep], seen_d[keep]))
            ids.append(seen_i[keep][order])
            dists.append(seen_d[keep][order])
            computed[row] = len(seen_i)
        return ids, dists, computed

    def _search(self, q: np.ndarray, radius_of) -> tuple[np.ndarray, np.ndarray]:
        """The items whose distance the search computed, and those distances; ``radius_of(d)`` takes
        each computed distance and returns the current search radius."""
        alive = np.arange(len(self.x))  # (A,), in id order
        lower = np.zeros(len(self.x))  # (A,)
        seen_i, seen_d = [], []
        while len(alive):
            pick = int(np.argmin(lower))  # the first minimum: the lowest id among equal bounds
            c = int(alive[pick])
            d = float(_exact_distances(q[None], self.x[c][None])[0, 0])
            seen_i.append(c)
            seen_d.append(d)
            lower = np.maximum(lower, np.abs(d - self.matrix[c, alive]))
            keep = lower <= radius_of(d) + TOLERANCE
            keep[pick] = False
            alive, lower = alive[keep], lower[keep]
        return np.asarray(seen_i, dtype=np.int64), np.asarray(seen_d)


class _KthSmallest:
    """The k-th smallest of the distances seen so far (infinite until k are seen), kept in a heap."""

    def __init__(self, k: int):
        self.k, self.heap = k, []  # the k smallest, negated: a max-heap

    def __call__(self, d: float) -> float:
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, -d)
        elif d < -self.heap[0]:
            heapq.heapreplace(self.heap, -d)
        return -self.heap[0] if len(self.heap) == self.k else np.inf
