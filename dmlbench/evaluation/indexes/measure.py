"""What an index's answers are worth, against the exact neighbours.

- k-NN recall (as ann-benchmarks counts it): the fraction of an index's k answers whose exact
  similarity to the query reaches that of the true k-th neighbour (less ``TIE_TOLERANCE``), so an
  answer tied with the k-th counts whichever of the tied items the index returned;
- relative distance error: per query, the summed Euclidean distances of the k answers over those
  of the true k neighbours, less 1 (0 for an exact answer; a missing answer counts the sphere's
  diameter, 2), averaged over queries;
- label metrics: Recall@K and MAP@R computed from an index's ranked answers by the evaluation's
  own formulas (:func:`dmlbench.evaluation.metrics.retrieval_metrics`); MAP@R needs the answers to
  reach R, the largest number of same-class items of a query (:func:`search_depth`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..metrics import retrieval_metrics

TIE_TOLERANCE = 1e-6  # similarities closer than this to the k-th count as ties (float32 index scores)
MIN_DEPTH = 10  # answers per query at least (k-NN recall@10)
MAX_DEPTH = 100  # answers per query at most: beyond, MAP@R is not computed from an index


def search_depth(largest_class: int) -> tuple[int, bool]:
    """(answers per query, whether they reach R for MAP@R) for queries whose largest same-class
    count is ``largest_class``."""
    if largest_class <= MAX_DEPTH:
        return max(MIN_DEPTH, int(largest_class)), True
    return MIN_DEPTH, False


def _similarities(ids: np.ndarray, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Exact float64 similarities of each query to its answers (-inf where an answer is missing)."""
    safe = np.where(ids < 0, 0, ids)
    q = queries.astype(np.float64)
    sims = np.einsum("qd,qkd->qk", q, items.astype(np.float64)[safe])
    return np.where(ids < 0, -np.inf, sims)


def knn_recall(found: np.ndarray, true: np.ndarray, queries: np.ndarray, items: np.ndarray) -> float:
    """Mean over queries of the fraction of the k answers ``found`` (Q, k) at least as close as the
    k-th of the exact answers ``true`` (Q, k)."""
    found, true = np.asarray(found), np.asarray(true)
    if found.shape != true.shape:
        raise ValueError(f"found answers {found.shape} and exact answers {true.shape} differ in shape")
    kth = _similarities(true[:, -1:], queries, items)  # (Q, 1)
    good = _similarities(found, queries, items) >= kth - TIE_TOLERANCE
    return float(good.mean())


def relative_distance_error(found: np.ndarray, true: np.ndarray, queries: np.ndarray, items: np.ndarray) -> float:
    """Mean over queries of sum(d(q, found)) / sum(d(q, true)) - 1, Euclidean on the unit sphere."""
    def distances(ids):  # a missing answer (similarity -inf) at the sphere's diameter, 2
        return np.sqrt(np.clip(2.0 - 2.0 * np.maximum(_similarities(ids, queries, items), -1.0), 0.0, 4.0))

    got, best = distances(np.asarray(found)).sum(1), distances(np.asarray(true)).sum(1)
    ratio = np.where(best > 0, got / np.where(best > 0, best, 1.0), np.where(got > 0, np.inf, 1.0))
    return float(np.mean(ratio - 1.0))


def label_metrics(found: np.ndarray, item_labels: np.ndarray, query_labels: np.ndarray, relevant: np.ndarray,
                  ks: tuple[int, ...] = (1,), with_map: bool = True) -> dict[str, float | None]:
    """Recall@K (and MAP@R when ``with_map``) of ranked answers ``found`` (Q, k), as the evaluation
    computes them; ``relevant`` (Q,) is each query's R (its same-class items, itself excluded)."""
    found = np.asarray(found)
    if with_map and found.shape[1] < int(np.max(relevant)):
        raise ValueError(f"MAP@R needs {int(np.max(relevant))} answers per query, got {found.shape[1]}")
    missing = int(np.min(item_labels)) - 1  # a label no item has: a missing answer is never a hit
    answer_labels = np.where(found < 0, missing, np.asarray(item_labels)[np.where(found < 0, 0, found)])
    out = retrieval_metrics(torch.from_numpy(answer_labels), torch.from_numpy(np.asarray(query_labels)),
                            torch.from_numpy(np.asarray(relevant)), ks)
    result: dict[str, float | None] = {f"recall@{k}": out[f"recall@{k}"] for k in ks}
    result["map@r"] = out["map@r"] if with_map else None
    return result
