"""The similarity self-join: every pair of items within a distance of each other, found with an index.

    pairs, distances, computed = self_join(build_index(IndexSpec.make("vp-tree"), x), x, radius=0.3)

``pairs`` (P, 2) holds each pair once, the lower id first, sorted by (distance, first id, second id);
``computed`` is the distance computations the index made over all its range queries (None for an
index that does not count them). The join runs one range query per item, each excluding the item
itself, as Zezula et al. describe the range-query join: with an exact index (flat, ball tree, pivots,
VP-tree, M-tree, AESA) it returns exactly the brute-force pairs, the boundary included; with an
approximate one, the pairs its range search finds.
"""

from __future__ import annotations

import numpy as np


def self_join(index, vectors, radius: float, block: int = 1024) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(pairs (P, 2), their distances (P,), distance computations or None): see the module docstring."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) != index.n:
        raise ValueError(f"a self-join queries the index with its own {index.n} items, got {len(vectors)} vectors")
    firsts, seconds, dists, computed = [], [], [], 0
    for start in range(0, len(vectors), block):
        rows = np.arange(start, min(start + block, len(vectors)))
        ids, d, counted = index.range_search(vectors[rows], radius, exclude=rows)
        computed = None if counted is None or computed is None else computed + float(np.sum(counted))
        for row, found, near in zip(rows, ids, d):
            later = found > row  # each pair once, from its lower id
            firsts.append(np.full(int(later.sum()), row))
            seconds.append(found[later])
            dists.append(near[later])
    first, second, dist = (np.concatenate(a) if a else np.empty(0) for a in (firsts, seconds, dists))
    order = np.lexsort((second, first, dist))
    pairs = np.stack([first[order], second[order]], axis=1).astype(np.int64)
    return pairs, dist[order].astype(np.float64), None if computed is None else int(round(computed))
