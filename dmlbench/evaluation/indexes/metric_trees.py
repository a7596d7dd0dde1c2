"""Two exact metric trees, a VP-tree and an M-tree, counting the distance computations they make.

Both answer k-NN and range queries exactly under the Euclidean distance, and both rely only on the
triangle inequality: from d(q, p) and a stored d(x, p) they know ``d(q, x) >= |d(q, p) - d(x, p)|``
without computing d(q, x). A bound skips work only when it exceeds the threshold (the current k-th
distance, or the radius) by more than ``TOLERANCE``, so rounding never drops an answer, and an item
tied with the k-th distance is still looked at (ties go to the lower item id). Every distance is
computed by :func:`.pivots._exact_distances`, so an answer's distance is bit-identical to a brute
force's; a query's count is the number of distances it computed (in the M-tree, an item that is also a
routing object is computed again at each level where it appears, and counted each time).

VP-tree (Yianilos 1993; ball partitioning as in Uhlmann 1991). Each internal node holds a vantage
point ``p`` (an item of its subset picked at random, seeded) and splits the rest of the subset at the
median of their distances to ``p``: the nearer half goes inside, the farther half outside (items tied
at the median are split by position, so the halves are equal in size). Each child keeps the smallest
and largest distance to ``p`` among its items, ``[lo, hi]``, which bounds a query's distance to any of
them by ``max(0, d(q, p) - hi, lo - d(q, p))``. Subsets of at most ``leaf_size`` items are leaf
buckets. The tree is built by partitioning an index array in place, node by node, each node costing
one vectorised distance call. k-NN search is best-first: a priority queue of subtrees ordered by
their lower bound; popping a vantage point computes its distance (it is a candidate answer itself)
and queues its children, popping a bucket computes all of its distances in one call; the search
ends when the smallest queued bound exceeds the k-th distance found. A range query visits every
subtree whose bound does not exceed the radius, in any order (the order does not change the count).

M-tree (Ciaccia, Patella and Zezula 1997). A balanced tree built by insertion, with at most
``capacity`` entries per node. A leaf entry is an item with its distance to the routing object of
its node; a routing entry is a routing object (an item's vector), the radius of a ball around it that
covers every item below it, its distance to the routing object of its own node, and its child node.

- Insert: descend from the root, at each node into the entry whose ball already holds the new item
  (the nearest such), or else the one whose radius grows least, growing it to the item's distance.
  An overflowing node is split: of every pair of entries (all pairs when there are at most
  ``PROMOTION_CANDIDATES``; otherwise pairs of a seeded sample of that many) the pair whose two
  covering radii have the smallest maximum is promoted (mM_RAD); every entry goes to the nearer
  promoted object (generalised hyperplane; entries at equal distance alternate to the smaller side);
  covering radii are the largest ``d(promoted, entry) + entry radius``; the two promoted objects
  replace the node's entry in its parent, which may overflow and split in turn, and a split root
  grows a new root, so all leaves stay at one depth.
- Search: a node reached from a routing object ``p`` with d(q, p) known skips, without computing a
  distance, each entry ``e`` with ``|d(q, p) - d(e, p)| > t + r(e)`` (parent-distance rule; ``t`` is
  the radius or the current k-th distance, ``r(e)`` the covering radius, 0 for items); for the
  others it computes d(q, e) in one call, and descends into a routing entry only when
  ``d(q, e) - r(e) <= t`` (covering-radius rule). k-NN search is best-first on that lower bound,
  ``max(0, d(q, e) - r(e))``, as in the paper (without its upper-bound list: the k-th distance comes
  from items actually computed).
- Delete: the item's leaf entry is removed; a node left empty is removed from its parent, up the
  tree, and a root left with one child is replaced by that child (the tree loses a level
  everywhere, so the leaves stay at one depth). Covering radii are not shrunk: a ball larger than
  needed still covers its items, so every query stays exact, only pruning may weaken. A deleted item's
  vector is kept while it may serve as a routing object; ids are never reused.

Usage::

    tree = VPTree(items, leaf_size=16)                 # items (N, d)
    dist, ids, computed = tree.knn(queries, k=10)      # (Q, k), (Q, k), (Q,)
    ids, dists, computed = tree.range(queries, 0.5)    # lists of (m_q,) arrays, (Q,)
    mtree = MTree(items, capacity=16)
    new_id = mtree.insert(vector); mtree.delete(3)

References: P. N. Yianilos, Data structures and algorithms for nearest neighbor search in general
metric spaces, SODA 1993. J. K. Uhlmann, Satisfying general proximity/similarity queries with metric
trees, Information Processing Letters 1991. P. Ciaccia, M. Patella, P. Zezula, M-tree: an efficient
access method for similarity search in metric spaces, VLDB 1997. P. Zezula, G. Amato, V. Dohnal,
M. Batko, Similarity Search: The Metric Space Approach, Springer 2006 (Part I).
"""

from __future__ import annotations

import heapq
import itertools

import numpy as np

from .pivots import TOLERANCE, _exact_distances

PROMOTION_CANDIDATES = 24  # an M-tree split tries every pair among at most this many entries


# ---------------------------------------------------------------------------------------------------
# Shared checks and the k-best list


def _distances(q: np.ndarray, items: np.ndarray) -> np.ndarray:
    """d(q, item) for each row of ``items`` (m, d): (m,), exactly as a brute force computes them."""
    return _exact_distances(q[None], items)[0]


def _as_items(x, who: str) -> np.ndarray:
    items = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
    if items.ndim != 2:
        raise ValueError(f"{who}: items must be an (N, d) array, got shape {items.shape}")
    if not np.isfinite(items).all():
        raise ValueError(f"{who}: items must be finite (no NaN or infinity)")
    return items


def _as_queries(queries, dim: int | None, who: str) -> np.ndarray:
    q = np.ascontiguousarray(np.asarray(queries, dtype=np.float64))
    if q.ndim != 2 or (dim is not None and q.shape[1] != dim):
        raise ValueError(f"{who}: queries must be a (Q, {dim}) array like the items, got shape {q.shape}")
    return q


def _check_k(k, live: int, who: str) -> int:
    if not 1 <= k <= live or int(k) != k:
        raise ValueError(f"{who}: k={k} must be an integer between 1 and the {live} items")
    return int(k)


def _check_radius(radius, who: str) -> float:
    r = float(radius)
    if not np.isfinite(r) or r < 0:
        raise ValueError(f"{who}: radius={radius} must be a finite number >= 0")
    return r


def _kth(best: list, k: int) -> float:
    """The k-th smallest distance so far (inf until k are known); ``best`` is a heap of (-d, -id)."""
    return -best[0][0] if len(best) == k else np.inf


def _offer(best: list, d: np.ndarray, ids: np.ndarray, k: int) -> None:
    """Keep in ``best`` the k smallest (distance, id) pairs seen, ties by the lower id."""
    if len(best) == k:
        keep = d <= -best[0][0]
        d, ids = d[keep], ids[keep]
    for di, ii in zip(d.tolist(), ids.tolist()):
        key = (-di, -ii)
        if len(best) < k:
            heapq.heappush(best, key)
        elif key > best[0]:
            heapq.heapreplace(best, key)


def _sorted_best(best: list) -> tuple[np.ndarray, np.ndarray]:
    pairs = sorted((-nd, -ni) for nd, ni in best)
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs], dtype=np.int64)


def _sorted_hits(d: list, ids: list) -> tuple[np.ndarray, np.ndarray]:
    """The range answers ordered by (distance, id): (ids (m,), distances (m,))."""
    d = np.concatenate(d) if d else np.empty(0)
    ids = np.concatenate(ids).astype(np.int64) if ids else np.empty(0, dtype=np.int64)
    order = np.lexsort((ids, d))
    return ids[order], d[order]


def _run_knn(search_one, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out_d, out_i = np.empty((len(q), k)), np.empty((len(q), k), dtype=np.int64)  # (Q, k)
    computed = np.empty(len(q), dtype=np.int64)  # (Q,)
    for row in range(len(q)):
        out_d[row], out_i[row], computed[row] = search_one(q[row], k)
    return out_d, out_i, computed


def _run_range(search_one, q: np.ndarray, radius: float) -> tuple[list, list, np.ndarray]:
    ids, dists, computed = [], [], np.empty(len(q), dtype=np.int64)  # (Q,)
    for row in range(len(q)):
        i, d, computed[row] = search_one(q[row], radius)
        ids.append(i)
        dists.append(d)
    return ids, dists, computed


# ---------------------------------------------------------------------------------------------------
# VP-tree


class VPTree:
    """A vantage-point tree over ``x`` (N, d): exact :meth:`knn` and :meth:`range`, with counts."""

    def __init__(self, x, leaf_size: int = 16, seed: int = 0):
        self.x = _as_items(x, "vp-tree")
        if len(self.x) == 0:
            raise ValueError("vp-tree: items must be a non-empty (N, d) array, got 0 items")
        if int(leaf_size) != leaf_size or leaf_size < 1:
            raise ValueError(f"vp-tree: leaf_size={leaf_size} must be an integer >= 1")
        self.leaf_size = int(leaf_size)
        self.build_distances = 0
        self._build(np.random.default_rng(seed))

    def _build(self, rng: np.random.Generator) -> None:
        """Partition an index array node by node; leaves own a slice [start, stop) of it."""
        order = np.arange(len(self.x), dtype=np.int64)  # (N,)
        vantage, span, child, bounds = [], [], [], []
        stack = [(0, len(order), -1, 0)]  # (start, stop, parent node, 0 inside / 1 outside)
        while stack:
            start, stop, parent, side = stack.pop()
            node = len(vantage)
            if parent >= 0:
                child[parent][side] = node
            vantage.append(-1)
            span.append((start, stop))
            child.append([-1, -1])
            bounds.append([[0.0, 0.0], [0.0, 0.0]])
            if stop - start <= self.leaf_size:
                continue
            vantage[node], halves, bounds[node] = self._split(order, start, stop, rng)
            for side, (lo, hi) in enumerate(halves):
                if hi > lo:
                    stack.append((lo, hi, node, side))
        self.order = order
        self.vantage = np.asarray(vantage, dtype=np.int64)  # (M,) item id, -1 for a leaf
        self.span = np.asarray(span, dtype=np.int64)  # (M, 2) slice of ``order`` (a leaf's bucket)
        self.child = np.asarray(child, dtype=np.int64)  # (M, 2) inside, outside; -1 for none
        self.bounds = np.asarray(bounds, dtype=np.float64)  # (M, 2, 2) [child][lo, hi] distance to vp

    def _split(self, order: np.ndarray, start: int, stop: int, rng: np.random.Generator):
        """Pick a vantage point, move it to ``start``, and put the nearer half of the rest first."""
        pick = start + int(rng.integers(stop - start))
        order[start], order[pick] = order[pick], order[start]
        vp, rest = int(order[start]), order[start + 1:stop]
        d = _distances(self.x[vp], self.x[rest])  # (n - 1,)
        self.build_distances += len(rest)
        half = (len(rest) + 1) // 2
        part = np.argpartition(d, half - 1) if half < len(rest) else np.arange(len(rest))
        order[start + 1:stop], d = rest[part], d[part]
        inside, outside = d[:half], d[half:]
        bounds = [[inside.min(), inside.max()],
                  [outside.min(), outside.max()] if len(outside) else [0.0, 0.0]]
        mid = start + 1 + half
        return vp, [(start + 1, mid), (mid, stop)], bounds

    @property
    def nbytes(self) -> int:
        """The items (float64) and the tree's arrays."""
        return (self.x.nbytes + self.order.nbytes + self.vantage.nbytes + self.span.nbytes
                + self.child.nbytes + self.bounds.nbytes)

    def knn(self, queries, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distances (Q, k), item ids (Q, k), distance computations per query (Q,)); ties by lower id."""
        q = _as_queries(queries, self.x.shape[1], "vp-tree")
        return _run_knn(self._knn_one, q, _check_k(k, len(self.x), "vp-tree"))

    def range(self, queries, radius: float) -> tuple[list, list, np.ndarray]:
        """(ids per query, distances per query, computations (Q,)): every item with d(q, x) <= radius."""
        q = _as_queries(queries, self.x.shape[1], "vp-tree")
        return _run_range(self._range_one, q, _check_radius(radius, "vp-tree"))

    def _children(self, node: int, dq: float, bound: float, limit: float):
        """(lower bound, child) of each child whose bound does not exceed ``limit`` + TOLERANCE."""
        out = []
        for side in (0, 1):
            c = int(self.child[node, side])
            if c >= 0:
                lo, hi = self.bounds[node, side]
                b = max(bound, dq - hi, lo - dq)
                if b <= limit + TOLERANCE:
                    out.append((b, c))
        return out

    def _knn_one(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        best, count, queue = [], 0, [(0.0, 0)]  # queue: (lower bound, node)
        while queue:
            bound, node = heapq.heappop(queue)
            if bound > _kth(best, k) + TOLERANCE:
                break
            vp = int(self.vantage[node])
            if vp < 0:
                ids = self.order[self.span[node, 0]:self.span[node, 1]]  # (m,)
                _offer(best, _distances(q, self.x[ids]), ids, k)
                count += len(ids)
                continue
            dq = _distances(q, self.x[vp][None])  # (1,)
            count += 1
            _offer(best, dq, np.array([vp]), k)
            for item in self._children(node, float(dq[0]), bound, _kth(best, k)):
                heapq.heappush(queue, item)
        d, ids = _sorted_best(best)
        return d, ids, count

    def _range_one(self, q: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, int]:
        hit_d, hit_i, count, stack = [], [], 0, [(0.0, 0)]
        while stack:
            bound, node = stack.pop()
            vp = int(self.vantage[node])
            ids = (self.order[self.span[node, 0]:self.span[node, 1]] if vp < 0
                   else np.array([vp], dtype=np.int64))  # (m,)
            d = _distances(q, self.x[ids])  # (m,)
            count += len(ids)
            inside = d <= radius
            hit_d.append(d[inside])
            hit_i.append(ids[inside])
            if vp >= 0:
                stack.extend(self._children(node, float(d[0]), bound, radius))
        ids, d = _sorted_hits(hit_d, hit_i)
        return ids, d, count


# ---------------------------------------------------------------------------------------------------
# M-tree


class _Node:
    """An M-tree node: parallel lists of entries. ``ids`` are item ids (leaf) or routing objects' item
    ids (internal); ``pdist`` the distance of each to ``center``, the routing object of this node's own
    entry in its parent (-1 at the root, where ``pdist`` is unused); ``radius`` and ``children`` only
    in an internal node."""

    __slots__ = ("leaf", "ids", "pdist", "radius", "children", "parent", "center")

    def __init__(self, leaf: bool, parent: _Node | None = None, center: int = -1):
        self.leaf, self.parent, self.center = leaf, parent, center
        self.ids, self.pdist, self.radius, self.children = [], [], [], []


class MTree:
    """A dynamic M-tree: :meth:`insert`, :meth:`delete`, and exact :meth:`knn` and :meth:`range`."""

    def __init__(self, x=None, capacity: int = 16, seed: int = 0, dim: int | None = None):
        if int(capacity) != capacity or capacity < 2:
            raise ValueError(f"m-tree: capacity={capacity} must be an integer >= 2")
        items = None if x is None else _as_items(x, "m-tree")
        if items is not None and dim is not None and items.shape[1] != dim:
            raise ValueError(f"m-tree: items have {items.shape[1]} dimensions but dim={dim}")
        self.capacity, self.dim = int(capacity), (items.shape[1] if items is not None else dim)
        self.build_distances = 0
        self.root: _Node | None = None
        self._rng = np.random.default_rng(seed)
        self._x = np.empty((0 if items is None else len(items), self.dim or 0))  # stored vectors
        self._size = 0  # rows of ``_x`` in use: every id ever given
        self._leaf_of: dict[int, _Node] = {}  # live item -> its leaf
        for row in (items if items is not None else ()):
            self.insert(row)

    def __len__(self) -> int:
        return len(self._leaf_of)

    @property
    def nbytes(self) -> int:
        """The stored vectors (float64; deleted items' too, as routing objects may use them) and 8 bytes
        per number of the entries: id and parent distance of a leaf entry, plus radius and child of a
        routing entry (the growing buffer's spare rows and Python's object overhead not counted)."""
        total, stack = self._size * (self.dim or 0) * 8, [self.root] if self.root else []
        while stack:
            node = stack.pop()
            total += len(node.ids) * (16 if node.leaf else 32)
            stack.extend(node.children)
        return total

    # -- insertion ---------------------------------------------------------------------------------

    def _store(self, vector) -> int:
        v = np.asarray(vector, dtype=np.float64)
        if self.dim is None and v.ndim == 1:
            self.dim, self._x = len(v), np.empty((0, len(v)))
        if v.shape != (self.dim,) or not np.isfinite(v).all():
            raise ValueError(f"m-tree: a vector must be finite of shape ({self.dim},), got shape {v.shape}")
        if self._size == len(self._x):
            grown = np.empty((max(16, 2 * len(self._x)), self.dim))
            grown[:self._size] = self._x[:self._size]
            self._x = grown
        self._x[self._size] = v
        self._size += 1
        return self._size - 1

    def _build_dist(self, item: int, others) -> np.ndarray:
        """Insert-time distances from stored item ``item`` to stored items ``others``: (m,)."""
        others = np.asarray(others, dtype=np.int64)
        self.build_distances += len(others)
        return _distances(self._x[item], self._x[others])

    def insert(self, vector) -> int:
        """Add ``vector`` (d,); returns its id (the next unused one)."""
        item = self._store(vector)
        if self.root is None:
            self.root = _Node(leaf=True)
        node, pd = self.root, 0.0
        while not node.leaf:
            d = self._build_dist(item, node.ids)  # (m,)
            r = np.asarray(node.radius)  # (m,)
            covers = d <= r
            if covers.any():
                j = int(np.argmin(np.where(covers, d, np.inf)))
            else:
                j = int(np.argmin(d - r))
                node.radius[j] = float(d[j])
            node, pd = node.children[j], float(d[j])
        node.ids.append(item)
        node.pdist.append(pd)
        self._leaf_of[item] = node
        if len(node.ids) > self.capacity:
            self._split(node)
        return item

    def _candidate_distances(self, ids: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """(S, n) distances from the candidates (positions ``cand``) to all entries, each pair once."""
        out, known = np.zeros((len(cand), len(ids))), np.zeros(len(ids), dtype=bool)
        for row, p in enumerate(cand):
            known[p] = True
            todo = np.flatnonzero(~known)
            if len(todo):
                out[row, todo] = self._build_dist(int(ids[p]), ids[todo])
        upper = np.triu(out[:, cand], 1)  # (S, S): computed above the diagonal only
        out[:, cand] = upper + upper.T
        return out

    def _promote(self, ids: np.ndarray, ext: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
        """mM_RAD: positions a, b of the promoted pair and every entry's distance to each, (n,) twice."""
        n = len(ids)
        cand = (np.arange(n) if n <= PROMOTION_CANDIDATES
                else np.sort(self._rng.choice(n, PROMOTION_CANDIDATES, replace=False)))
        dist = self._candidate_distances(ids, cand)  # (S, n)
        first, second = np.triu_indices(len(cand), 1)  # (P,) pairs of candidate rows
        da, db = dist[first], dist[second]  # (P, n)
        to_a = da <= db
        to_a[np.arange(len(first)), cand[second]] = False
        ra = np.where(to_a, da + ext, -np.inf).max(1)  # (P,)
        rb = np.where(to_a, -np.inf, db + ext).max(1)  # (P,)
        best = int(np.argmin(np.maximum(ra, rb)))
        return int(cand[first[best]]), int(cand[second[best]]), da[best], db[best]

    def _split(self, node: _Node) -> None:
        """Split an overflowing node in two and post both promoted objects to its parent."""
        ids = np.asarray(node.ids, dtype=np.int64)  # (n,)
        ext = np.zeros(len(ids)) if node.leaf else np.asarray(node.radius)  # (n,)
        a, b, da, db = self._promote(ids, ext)
        side = _balanced_sides(da, db, a, b)  # (n,) 0 or 1
        children = node.children
        sibling = _Node(node.leaf)
        radii = []
        for part, dist, centre in ((node, da, ids[a]), (sibling, db, ids[b])):
            mask = side == (0 if part is node else 1)
            part.ids, part.pdist, part.center = ids[mask].tolist(), dist[mask].tolist(), int(centre)
            radii.append(float((dist[mask] + ext[mask]).max()))
            if not node.leaf:
                part.radius = ext[mask].tolist()
                part.children = [children[i] for i in np.flatnonzero(mask)]
                for c in part.children:
                    c.parent = part
        if node.leaf:
            for item in sibling.ids:
                self._leaf_of[item] = sibling
        self._post(node, sibling, radii)

    def _post(self, node: _Node, sibling: _Node, radii: list) -> None:
        """Replace ``node``'s entry in its parent by the two halves' entries (a new root if none)."""
        parent = node.parent
        if parent is None:
            self.root = parent = _Node(leaf=False)
            parent.ids, parent.pdist = [node.center, sibling.center], [0.0, 0.0]
            parent.radius, parent.children = list(radii), [node, sibling]
            node.parent = sibling.parent = parent
            return
        pd = (self._build_dist(parent.center, [node.center, sibling.center]).tolist()
              if parent.center >= 0 else [0.0, 0.0])
        j = parent.children.index(node)
        parent.ids[j], parent.pdist[j], parent.radius[j] = node.center, pd[0], radii[0]
        parent.ids.append(sibling.center)
        parent.pdist.append(pd[1])
        parent.radius.append(radii[1])
        parent.children.append(sibling)
        sibling.parent = parent
        if len(parent.ids) > self.capacity:
            self._split(parent)

    # -- deletion ----------------------------------------------------------------------------------

    def delete(self, item: int) -> None:
        """Remove a live item; an id that was never given or is already deleted raises KeyError."""
        node = self._leaf_of.pop(item, None)
        if node is None:
            raise KeyError(f"m-tree: item {item} is not in the tree (never inserted, or already deleted); "
                           f"live items: {len(self)}")
        j = node.ids.index(item)
        del node.ids[j], node.pdist[j]
        while not node.ids and node.parent is not None:
            parent = node.parent
            j = parent.children.index(node)
            del parent.ids[j], parent.pdist[j], parent.radius[j], parent.children[j]
            node = parent
        if not self.root.ids:
            self.root = None
        while self.root is not None and not self.root.leaf and len(self.root.ids) == 1:
            self.root = self.root.children[0]
            self.root.parent, self.root.center = None, -1

    # -- search ------------------------------------------------------------------------------------

    def knn(self, queries, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distances (Q, k), item ids (Q, k), distance computations per query (Q,)); ties by lower id."""
        q = _as_queries(queries, self.dim, "m-tree")
        return _run_knn(self._knn_one, q, _check_k(k, len(self), "m-tree"))

    def range(self, queries, radius: float) -> tuple[list, list, np.ndarray]:
        """(ids per query, distances per query, computations (Q,)): every item with d(q, x) <= radius."""
        q = _as_queries(queries, self.dim, "m-tree")
        return _run_range(self._range_one, q, _check_radius(radius, "m-tree"))

    def _visit(self, q: np.ndarray, node: _Node, dpar: float | None, limit: float):
        """The entries of ``node`` that survive the parent-distance rule, and their distances to q:
        (ids (m,), distances (m,), covering radii (m,), positions in the node (m,))."""
        ids = np.asarray(node.ids, dtype=np.int64)  # (n,)
        ext = np.zeros(len(ids)) if node.leaf else np.asarray(node.radius)  # (n,)
        where = np.arange(len(ids))
        if dpar is not None:
            where = np.flatnonzero(np.abs(dpar - np.asarray(node.pdist)) <= limit + ext + TOLERANCE)
        return ids[where], _distances(q, self._x[ids[where]]), ext[where], where

    def _knn_one(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        best, count, tick = [], 0, itertools.count()
        queue = [(0.0, next(tick), self.root, None)]  # (d_min, order, node, d(q, its routing object))
        while queue:
            dmin, _, node, dpar = heapq.heappop(queue)
            if dmin > _kth(best, k) + TOLERANCE:
                break
            ids, d, ext, where = self._visit(q, node, dpar, _kth(best, k))
            count += len(ids)
            if node.leaf:
                _offer(best, d, ids, k)
                continue
            lower = np.maximum(d - ext, 0.0)  # (m,)
            for j in np.flatnonzero(lower <= _kth(best, k) + TOLERANCE):
                heapq.heappush(queue, (float(lower[j]), next(tick), node.children[where[j]], float(d[j])))
        d, ids = _sorted_best(best)
        return d, ids, count

    def _range_one(self, q: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, int]:
        hit_d, hit_i, count = [], [], 0
        stack = [(self.root, None)] if self.root is not None else []
        while stack:
            node, dpar = stack.pop()
            ids, d, ext, where = self._visit(q, node, dpar, radius)
            count += len(ids)
            if node.leaf:
                inside = d <= radius
                hit_d.append(d[inside])
                hit_i.append(ids[inside])
            else:
                for j in np.flatnonzero(d - ext <= radius + TOLERANCE):
                    stack.append((node.children[where[j]], float(d[j])))
        ids, d = _sorted_hits(hit_d, hit_i)
        return ids, d, count


def _balanced_sides(da: np.ndarray, db: np.ndarray, a: int, b: int) -> np.ndarray:
    """Each entry to the nearer promoted object (0: a, 1: b); entries at equal distance, as
    duplicates are, go one by one to the smaller side, so a split always shrinks the node."""
    side = (da > db).astype(np.int64)  # (n,)
    tie = da == db
    side[a], side[b], tie[a], tie[b] = 0, 1, False, False
    sizes = [int((side[~tie] == 0).sum()), int((side[~tie] == 1).sum())]
    for e in np.flatnonzero(tie):
        side[e] = 0 if sizes[0] <= sizes[1] else 1
        sizes[side[e]] += 1
    return side
