"""Which query types each index family answers, how, and the test that proves an exact one exact.

The query types are those of the first part of Zezula, Amato, Dohnal and Batko's "Similarity Search:
The Metric Space Approach" that dmlbench implements: the range query (every item within a distance r
of the query, the boundary included), the k-nearest-neighbour query, and the similarity self-join by
range queries (:mod:`.join`). docs/indexes.md's table is generated from :data:`STRUCTURES` and
:data:`PROOFS` together with the study's measurements (queries checked against brute force and the
share of distances computed), and ``tests/evaluation/test_range_queries.py`` checks that every test
named here exists.
"""

from __future__ import annotations

QUERY_TYPES = {"knn": "k-NN", "range": "range", "join": "self-join"}

# family -> (what it is, how it partitions or filters the space)
STRUCTURES: dict[str, tuple[str, str]] = {
    "flat": ("sequential scan (faiss IndexFlatIP)", "none: every item's distance"),
    "ball-tree": ("ball tree (scikit-learn)", "balls split on the coordinate of greatest spread (vectors only)"),
    "pivots": ("LAESA pivot table", "object-pivot filtering with P pivots"),
    "vp-tree": ("VP-tree", "ball partitioning at the median distance to a vantage point"),
    "m-tree": ("M-tree (dynamic: insert, split, delete)", "covering radii and parent-distance pruning"),
    "aesa": ("AESA", "every item a pivot (an N x N distance table)"),
    "hnsw": ("HNSW graph (faiss)", "approximate: greedy walk on a navigable small-world graph"),
    "ivf-flat": ("IVF-Flat (faiss)", "approximate: Voronoi cells of k-means centroids"),
    "ivf-pq": ("IVF-PQ (faiss)", "approximate: Voronoi cells, product-quantised codes"),
    "pq": ("PQ (faiss)", "approximate: product-quantised codes scanned"),
    "sq8": ("SQ8 (faiss)", "approximate: 8-bit scalar codes scanned"),
}

_EXACT_KNN = "tests/evaluation/test_indexes.py::test_every_exact_index_returns_the_brute_force_neighbours_ties_by_index"
_RANGE = "tests/evaluation/test_range_queries.py::test_every_exact_family_answers_range_queries_as_brute_force"
_JOIN = "tests/evaluation/test_range_queries.py::test_a_self_join_through_an_exact_index_finds_the_brute_force_pairs"
_APPROX = "tests/evaluation/test_range_queries.py::test_an_approximate_family_answers_range_queries_near_brute_force"
_TREES = "tests/evaluation/test_metric_trees.py"

# (family, query type) -> the test that proves the answer exact (for an approximate family: the test of its
# answers against brute force)
PROOFS: dict[tuple[str, str], str] = {
    **{(family, "knn"): _EXACT_KNN for family in ("flat", "ball-tree", "pivots", "vp-tree", "m-tree", "aesa")},
    **{(family, "range"): _RANGE for family in ("flat", "ball-tree", "pivots", "vp-tree", "m-tree", "aesa")},
    **{(family, "join"): _JOIN for family in ("flat", "ball-tree", "pivots", "vp-tree", "m-tree", "aesa")},
    **{(family, query): _APPROX for family in ("hnsw", "ivf-flat", "ivf-pq", "pq", "sq8") for query in ("knn", "range")},
}
