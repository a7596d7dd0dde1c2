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

The search is vectorised: the lower bounds of a block of queries come from one numpy expression, and
a query's distances are computed in two batches (the items of smallest bound, then every item whose
bound does not exceed the k-th distance found among them). The count is the sequential algorithm's:
the visits before the first stop, replayed on those batches (found by bisection, since lb grows and
the k-th distance shrinks along the visiting order). Distances are Euclidean, in float64.

A range query (all items within ``radius``, the ball's boundary included) computes the pivots'
distances and those of the items whose lower bound does not exceed the radius.
"""

from __future__ import annotations

import numpy as np

TOLERANCE = 1e-12  # float64 rounding of a lower bound; a visit is skipped only above kth + this
FIRST_CHUNK = 64  # items of smallest bound whose distances a k-NN query computes first
DISTANCE_ROWS = 4096  # rows of differences held at once by _exact_distances
BLOCK_ELEMENTS = 4_000_000  # bound-table entries (queries x items x pivots) held at once


def _exact_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distances by differences, never by the expanded square (which loses digits near zero). ``y`` is
    taken ``DISTANCE_ROWS`` rows at a time, so the differences stay in cache rather than filling memory
    (at a million items, one query's differences would be a gigabyte); each row's sum is the same."""
    out = np.empty((x.shape[0], y.shape[0]))
    for i in range(x.shape[0]):
        for start in range(0, y.shape[0], DISTANCE_ROWS):
            part = y[start:start + DISTANCE_ROWS] - x[i]
            out[i, start:start + DISTANCE_ROWS] = np.sqrt((part * part).sum(1))
    return out


def _distances_of(q: np.ndarray, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """d(q, x[i]) for the items ``ids``, as :func:`_exact_distances` computes each, gathered a block of
    rows at a time (gathering them all at once copies most of the collection per query)."""
    out = np.empty(len(ids))
    for start in range(0, len(ids), DISTANCE_ROWS):
        part = x[ids[start:start + DISTANCE_ROWS]] - q
        out[start:start + DISTANCE_ROWS] = np.sqrt((part * part).sum(1))
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
        self._other_table = np.ascontiguousarray(self.table[self._others])  # (N - P, P): the rows bounds are for

    @property
    def nbytes(self) -> int:
        """The items and the pivot table (float64)."""
        return self.x.nbytes + self.table.nbytes + self._other_table.nbytes + self.pivots.nbytes

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distances (Q, k), item ids (Q, k), distance computations per query (Q,))."""
        q = self._queries(queries)
        n = len(self.x)
        if not 1 <= k <= n:
            raise ValueError(f"pivots: k={k} must be between 1 and the {n} items")
        out_d, out_i = np.empty((len(q), k)), np.empty((len(q), k), dtype=np.int64)
        computed = np.empty(len(q), dtype=np.int64)
        for rows, to_pivots, lower in self._bounds(q):
            for row, near, bound in zip(rows, to_pivots, lower):
                out_d[row], out_i[row], computed[row] = self._knn_one(q[row], near, bound, k)
        return out_d, out_i, computed

    def range(self, queries, radius: float) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """(item ids per query, their distances, distance computations per query (Q,)): every item with
        d(q, x) <= radius, sorted by (distance, id). An item whose lower bound exceeds the radius is never
        computed: the count is the pivots plus the items with lb(x) <= radius (+ rounding margin)."""
        radius = check_radius(radius, "pivots")
        q = self._queries(queries)
        ids, dists = [None] * len(q), [None] * len(q)
        computed = np.empty(len(q), dtype=np.int64)
        for rows, to_pivots, lower in self._bounds(q):
            for row, near, bound in zip(rows, to_pivots, lower):
                visit = self._others[bound <= radius + TOLERANCE]
                d = np.concatenate([near, _distances_of(q[row], self.x, visit)])
                seen = np.concatenate([self.pivots, visit])
                keep = d <= radius
                order = np.lexsort((seen[keep], d[keep]))
                ids[row], dists[row] = seen[keep][order], d[keep][order]
                computed[row] = len(self.pivots) + len(visit)
        return ids, dists, computed

    def _queries(self, queries) -> np.ndarray:
        q = np.asarray(queries, dtype=np.float64)
        if q.ndim != 2 or q.shape[1] != self.x.shape[1]:
            raise ValueError(f"pivots: queries must be a (Q, {self.x.shape[1]}) array, got shape {q.shape}")
        return q

    def _bounds(self, q: np.ndarray):
        """Blocks of (query rows, distances to the pivots (B, P), lower bounds of the non-pivot items
        (B, N - P)), all in numpy: lb(x) = max_p |d(q, p) - d(x, p)|, the triangle inequality's."""
        others = self._other_table  # (N - P, P)
        block = max(1, BLOCK_ELEMENTS // max(1, others.size))
        for start in range(0, len(q), block):
            rows = np.arange(start, min(start + block, len(q)))
            to_pivots = _exact_distances(q[rows], self.x[self.pivots])  # (B, P)
            lower = np.abs(others[None, :, :] - to_pivots[:, None, :]).max(axis=2)  # (B, N - P)
            yield rows, to_pivots, lower

    def _knn_one(self, q: np.ndarray, to_pivots: np.ndarray, lower: np.ndarray, k: int):
        """One query's exact k nearest and the sequential LAESA count. The distances are computed in two
        batches: the ``FIRST_CHUNK`` (at least 2k) items of smallest bound, then every item whose bound does
        not exceed the k-th distance known after them; an item left out has a bound, hence a distance,
        above the final k-th. The count replays the sequential search (visits in increasing bound, ties by
        id, stopping at the first bound above the running k-th), whose visits all lie in these batches."""
        first = min(len(lower), max(FIRST_CHUNK, 2 * k))
        head = np.argpartition(lower, first - 1)[:first] if first < len(lower) else np.arange(len(lower))
        d_head = _distances_of(q, self.x, self._others[head])
        kth = _kth(np.concatenate([to_pivots, d_head]), k)
        wanted = lower <= kth + TOLERANCE
        wanted[head] = True
        visit = np.flatnonzero(wanted)  # in id order: the head again, and every item the k-th cannot exclude
        d = _distances_of(q, self.x, self._others[visit])
        order = np.argsort(lower[visit], kind="stable")  # the sequential order: bound, then id
        stop = _first_stop(to_pivots, lower[visit][order], d[order], k) if len(visit) else 0
        seen_d, seen_i = np.concatenate([to_pivots, d]), np.concatenate([self.pivots, self._others[visit]])
        near = np.flatnonzero(seen_d <= _kth(seen_d, k))  # the k nearest and every item tied with the k-th
        best = near[np.lexsort((seen_i[near], seen_d[near]))[:k]]
        return seen_d[best], seen_i[best], len(self.pivots) + stop


def check_radius(radius, where: str) -> float:
    """A range query's radius: a finite number >= 0 (a ValueError naming it otherwise)."""
    value = float(radius)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{where}: a range query's radius must be a finite distance >= 0, got {radius!r}")
    return value


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
