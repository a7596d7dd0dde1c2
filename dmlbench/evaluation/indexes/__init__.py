"""Similarity-search indexes over a set of embeddings, and what they cost and lose.

- :mod:`.families`: the index families (faiss's exact flat index, HNSW, IVF-Flat, IVF-PQ, PQ, the
  8-bit scalar quantiser; scikit-learn's ball tree; the pivot table) behind one ``build`` / ``search``
  interface, each family with its build settings and its sweep of search settings;
- :mod:`.pivots`: LAESA-style k-NN search that skips distance computations through the triangle
  inequality, written here because no maintained library provides it;
- :mod:`.measure`: k-NN recall against the exact neighbours, relative distance error, the label
  metrics an index's neighbours give, queries per second on one thread and on every core.

Every index ranks L2-normalised embeddings by their Euclidean distance: the faiss indexes that compare
the stored vectors (flat, HNSW) by inner product, the same order on the unit sphere since
``|a - b|^2 = 2 - 2 a.b``; those that compare codes or centroids (PQ, IVF, SQ8) by L2 itself, since a
decoded code is not a unit vector (``families.METRICS``). An exact
index returns the exact neighbours with ties broken by the lower item index, as the evaluation does.
"""

from .families import FAMILIES, IndexSpec, build_index, default_specs, parse_specs
from .measure import knn_recall, label_metrics, relative_distance_error, search_depth
from .pivots import PivotTable

__all__ = ["FAMILIES", "IndexSpec", "PivotTable", "build_index", "default_specs", "knn_recall", "label_metrics",
           "parse_specs", "relative_distance_error", "search_depth"]
