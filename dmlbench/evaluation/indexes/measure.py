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
    return float(per_query_recall(found, true, queries, items).mean())


def per_query_recall(found: np.ndarray, true: np.ndarray, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Each query's k-NN recall (Q,): the share of its answers at least as close as its true k-th."""
    found, true = np.asarray(found), np.asarray(true)
    if found.shape != true.shape:
        raise ValueError(f"found answers {found.shape} and exact answers {true.shape} differ in shape")
    kth = _similarities(true[:, -1:], queries, items)  # (Q, 1)
    return (_similarities(found, queries, items) >= kth - TIE_TOLERANCE).mean(1)


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


def distance_ratio_error(found: np.ndarray, true: np.ndarray, queries: np.ndarray, items: np.ndarray) -> float:
    """The relative error on distances of Zezula et al.'s approximate search chapter: per query and rank j,
    d(q, j-th answer) / d(q, true j-th neighbour) - 1, both lists in increasing distance, averaged over
    ranks and queries. A rank whose true distance is 0 counts 0 when the answer is at 0 too, else it is
    left out (no finite ratio); a missing answer is at the sphere's diameter, 2."""
    def distances(ids):
        return np.sqrt(np.clip(2.0 - 2.0 * np.maximum(_similarities(ids, queries, items), -1.0), 0.0, 4.0))

    got, best = np.sort(distances(np.asarray(found)), 1), np.sort(distances(np.asarray(true)), 1)
    defined = (best > 0) | (got == 0)
    ratio = np.where(best > 0, got / np.where(best > 0, best, 1.0), 1.0)
    return float(np.mean((ratio - 1.0)[defined])) if defined.any() else 0.0


class Positions:
    """Each query's rank of every item by similarity, to score an answer's position error.

    The position error (Zezula et al.'s approximate search chapter) of a query's answers o_1..o_k is
    sum_j |OX(o_j) - j| / (k N): OX(o) is o's position in the whole collection ordered by distance to the
    query, j its position in the answer, N the collection's size; 0 for an exact answer. Items tied
    with o (similarities within ``TIE_TOLERANCE``) share a run of positions, and o may stand anywhere
    in it: the error counts the distance from j to that run. The similarities are float32 products, sorted once per query; queries
    are limited so that at most ``MAX_POSITION_ENTRIES`` similarities are held (the first ones)."""

    MAX_POSITION_ENTRIES = 50_000_000

    def __init__(self, queries: np.ndarray, items: np.ndarray, exclude: np.ndarray | None = None):
        count = max(1, min(len(queries), self.MAX_POSITION_ENTRIES // len(items)))
        q = torch.from_numpy(np.ascontiguousarray(queries[:count], dtype=np.float32))
        self.sims = (q @ torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32)).T).numpy()  # (Q', N)
        if exclude is not None:  # the query itself is not part of the collection it searches
            self.sims[np.arange(count), np.asarray(exclude[:count])] = -np.inf
        self.sorted = np.sort(self.sims, axis=1)  # (Q', N) ascending
        self.count, self.n = count, len(items) - (exclude is not None)

    def error(self, found: np.ndarray) -> float:
        """The mean position error of ``found`` (Q, k) over its first ``count`` queries (a missing answer at N)."""
        found = np.asarray(found)[:self.count]
        safe = np.where(found < 0, 0, found)
        s = np.take_along_axis(self.sims[:len(found)], safe, 1)  # (Q', k)
        # an item tied with others (within TIE_TOLERANCE) may stand anywhere in their run of positions
        first = np.stack([len(row) - np.searchsorted(row, v + TIE_TOLERANCE, side="right") + 1
                          for row, v in zip(self.sorted, s)])
        last = np.stack([len(row) - np.searchsorted(row, v - TIE_TOLERANCE, side="left") for row, v in zip(self.sorted, s)])
        rank = np.arange(1, found.shape[1] + 1)[None, :]
        off = np.maximum(0, np.maximum(first - rank, rank - last))
        off = np.where(found < 0, self.n - rank, off)
        return float(np.mean(off.sum(1) / (found.shape[1] * self.n)))
