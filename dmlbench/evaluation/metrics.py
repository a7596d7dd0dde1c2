"""Retrieval and clustering metrics of the study (docs/protocol.md, Metrics).

For every query q, with its own index removed from its ranking and R_q the number of other
reference items sharing its label:

- Recall@K: 1 if a same-label item is among the K nearest neighbours, averaged over queries;
- R-Precision: (same-label items among the R_q nearest) / R_q;
- MAP@R: (1 / R_q) * sum_{i <= R_q} P(i) * rel(i), with P(i) the precision at rank i;
- NMI / AMI: k-means with k = number of classes on the query embeddings (faiss.Kmeans's algorithm and
  defaults as pytorch-metric-learning runs it: seed 1234, 20 iterations, at most 256 training points
  per centroid; dmlbench.evaluation.kmeans computes the same clusters faster), then scikit-learn's NMI and
  AMI between cluster ids and labels.

Queries whose label has no other reference item are excluded from the retrieval metrics and
counted. Neighbours are exact (dmlbench.evaluation.neighbours): inner products (cosine, after L2
normalisation) ranked in float64, computed tile by tile so memory stays at ``block_size^2``; among
equal scores the lower reference index ranks first, also across the k-th neighbour boundary.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .kmeans import KMEANS_ITERATIONS, KMEANS_SEED, MAX_POINTS_PER_CENTROID, kmeans
from .neighbours import knn, serial_ops

DEFAULT_KS = (1, 2, 4, 8)


def _as_tensor(name: str, value, dtype=None) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    return value if dtype is None else value.to(dtype)


def _check_inputs(name: str, embeddings, labels) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings = _as_tensor(name, embeddings)
    labels = _as_tensor(f"{name} labels", labels)
    if embeddings.ndim != 2:
        raise ValueError(f"{name} must be 2-D (items, dim), got shape {tuple(embeddings.shape)}")
    if len(embeddings) == 0:
        raise ValueError(f"{name} is empty: nothing to evaluate")
    if not torch.is_floating_point(embeddings):
        raise TypeError(f"{name} must be floating point, got {embeddings.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"{name} labels must be 1-D, got shape {tuple(labels.shape)}")
    if len(labels) != len(embeddings):
        raise ValueError(f"{name} has {len(embeddings)} rows but {len(labels)} labels")
    if torch.is_floating_point(labels) or labels.dtype == torch.bool:
        raise TypeError(f"{name} labels must be integers, got {labels.dtype}")
    if embeddings.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(embeddings))).all()):  # NaN reaches both
        bad = (~torch.isfinite(embeddings)).any(dim=1).nonzero()[:5, 0].tolist()
        raise ValueError(f"{name} contains NaN or infinite values (rows {bad}...)")
    return embeddings, labels.long()


def retrieval_metrics(neighbour_labels: torch.Tensor, query_labels: torch.Tensor, relevant: torch.Tensor,
                      ks: Sequence[int]) -> dict[str, float]:
    """Recall@K, R-Precision and MAP@R from ranked neighbour labels.

    neighbour_labels (Q, k): labels of each query's ranked neighbours, k >= max(relevant);
    relevant (Q,): R_q, the number of reference items sharing the query's label (> 0).
    """
    hits = neighbour_labels == query_labels[:, None]  # (Q, k)
    ranks = torch.arange(1, hits.shape[1] + 1, device=hits.device)  # (k,)
    within_r = ranks[None, :] <= relevant[:, None]  # (Q, k)
    hits_r = hits & within_r
    r = relevant.double()
    precision_at_i = hits_r.cumsum(dim=1).double() / ranks[None, :]
    out = {f"recall@{k}": hits[:, :k].any(dim=1).double().mean().item() for k in ks}
    out["r_precision"] = (hits_r.sum(dim=1).double() / r).mean().item()
    out["map@r"] = ((precision_at_i * hits_r).sum(dim=1) / r).mean().item()
    return out


def kmeans_clusters(embeddings, num_clusters: int, *, device: str | torch.device | None = None) -> np.ndarray:
    """Cluster ids from dmlbench.evaluation.kmeans: faiss's k-means (seed, iterations and every step) on all points."""
    return kmeans(embeddings, num_clusters, iterations=KMEANS_ITERATIONS, seed=KMEANS_SEED,
                  max_points_per_centroid=MAX_POINTS_PER_CENTROID, device=device).assignment


def faiss_kmeans_clusters(embeddings, num_clusters: int) -> np.ndarray:
    """The reference: faiss.Kmeans as pytorch-metric-learning's NMI runs it, then a search."""
    import faiss

    x = np.ascontiguousarray(embeddings.cpu().numpy() if isinstance(embeddings, torch.Tensor) else embeddings,
                             dtype=np.float32)
    clustering = faiss.Kmeans(x.shape[1], num_clusters, niter=KMEANS_ITERATIONS, seed=KMEANS_SEED)
    clustering.train(x)
    _, assignment = clustering.index.search(x, 1)
    return assignment[:, 0].astype(np.int64)


def clustering_metrics(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """NMI and AMI (scikit-learn) between the labels and k-means clusters, k = number of classes."""
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    y = labels.cpu().numpy()
    clusters = kmeans_clusters(embeddings.float(), len(np.unique(y)), device=embeddings.device)
    return {"nmi": float(normalized_mutual_info_score(y, clusters)),
            "ami": float(adjusted_mutual_info_score(y, clusters))}


def _evaluation_inputs(embeddings, labels, gallery, gallery_labels, ks: Sequence[int]):
    """:func:`evaluate`'s arguments checked: (query, query labels, reference, reference labels, ks),
    the reference being the gallery when there is one and the queries themselves otherwise."""
    query, query_labels = _check_inputs("embeddings", embeddings, labels)
    if gallery is None:
        if gallery_labels is not None:
            raise ValueError("gallery_labels given without gallery")
        reference, reference_labels = query, query_labels
    else:
        if gallery_labels is None:
            raise ValueError("gallery given without gallery_labels")
        reference, reference_labels = _check_inputs("gallery", gallery, gallery_labels)
        if reference.shape[1] != query.shape[1]:
            raise ValueError(f"gallery dim {reference.shape[1]} differs from query dim {query.shape[1]}")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ConfigError(f"ks must be positive integers, got {ks}")
    if len(torch.unique(query_labels)) < 2:
        raise ValueError("embeddings hold fewer than two classes: retrieval and NMI are undefined")
    return query, query_labels, reference, reference_labels, ks


def evaluate(embeddings, labels, *, ks: Sequence[int] = DEFAULT_KS, gallery=None, gallery_labels=None,
             device: str | torch.device | None = None, normalize: bool = True, nmi: bool = True,
             block_size: int = 4096) -> dict[str, float]:
    """All metrics of the study for one set of embeddings.

    Without a gallery every item queries all the others (itself excluded by index); with one,
    the queries ``embeddings`` are ranked against ``gallery`` (In-Shop). NMI/AMI cluster the
    queries. Returns ``recall@K`` for each K, ``r_precision``, ``map@r``, ``nmi``, ``ami``,
    ``num_queries`` (those scored) and ``num_excluded_queries`` (no same-label reference item).
    On the CPU the work runs on one thread but for the large matrix products
    (dmlbench.evaluation.neighbours.serial_ops says why).
    """
    where = device if device is not None else (embeddings.device if isinstance(embeddings, torch.Tensor) else "cpu")
    with serial_ops(where):
        return _evaluate(embeddings, labels, ks, gallery, gallery_labels, device, normalize, nmi, block_size)


def _evaluate(embeddings, labels, ks: Sequence[int], gallery, gallery_labels, device, normalize: bool, nmi: bool,
              block_size: int) -> dict[str, float]:
    """:func:`evaluate`, step by step."""
    query, query_labels, reference, reference_labels, ks = _evaluation_inputs(embeddings, labels, gallery,
                                                                              gallery_labels, ks)
    device = torch.device(device) if device is not None else query.device
    query = query.to(device, torch.float32)
    reference = reference.to(device, torch.float32) if gallery is not None else query
    if normalize:
        query = torch.nn.functional.normalize(query, dim=1)
        reference = torch.nn.functional.normalize(reference, dim=1) if gallery is not None else query
    query_labels = query_labels.to(device)
    reference_labels = reference_labels.to(device)

    # R_q: same-label reference items, self excluded when the query set is the reference set.
    classes, ref_counts = torch.unique(reference_labels, return_counts=True)
    position = torch.searchsorted(classes, query_labels).clamp_max(len(classes) - 1)
    relevant = torch.where(classes[position] == query_labels, ref_counts[position], 0)
    if gallery is None:
        relevant = relevant - 1
    scored = relevant > 0
    n_ref_candidates = len(reference) - (1 if gallery is None else 0)
    k = min(max(max(ks), int(relevant.max().item())), n_ref_candidates)

    out: dict[str, float] = {}
    if scored.any() and k > 0:
        # Only which neighbours share the query's label is read, so knn may leave equally relevant
        # neighbours that float32 cannot order in float32 order (the metrics come out the same).
        if gallery is None:  # every item against the others (self excluded), then the scored rows
            _, neighbours = knn(query, None, k, block_size=block_size, scores=False, labels=(query_labels, query_labels))
            neighbours = neighbours[scored]
        else:
            _, neighbours = knn(query[scored], reference, k, block_size=block_size, scores=False,
                                labels=(query_labels[scored], reference_labels))
        out.update(retrieval_metrics(reference_labels[neighbours], query_labels[scored], relevant[scored], ks))
    else:
        out.update({f"recall@{k}": math.nan for k in ks} | {"r_precision": math.nan, "map@r": math.nan})
    if nmi:
        out.update(clustering_metrics(query, query_labels))
    out["num_queries"] = int(scored.sum().item())
    out["num_excluded_queries"] = int((~scored).sum().item())
    return out
