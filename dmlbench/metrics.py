"""Retrieval and clustering metrics of the study (../shared/PROTOCOL.md, section 2).

For every query q, with its own index removed from its ranking and R_q the number of other
reference items sharing its label:

- Recall@K: 1 if a same-label item is among the K nearest neighbours, averaged over queries;
- R-Precision: (same-label items among the R_q nearest) / R_q;
- MAP@R: (1 / R_q) * sum_{i <= R_q} P(i) * rel(i), with P(i) the precision at rank i;
- NMI / AMI: k-means (faiss) with k = number of classes, then scikit-learn's NMI and AMI between
  cluster ids and labels.

Queries whose label has no other reference item are excluded from the retrieval metrics and
counted. Neighbours are exact: inner products (cosine, after L2 normalisation) computed block by
block so memory stays at ``block_size x N``; among equal scores the lower reference index ranks
first, also across the k-th neighbour boundary.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .errors import ConfigError

DEFAULT_KS = (1, 2, 4, 8)
KMEANS_ITERATIONS = 20
KMEANS_SEED = 0


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
    if not torch.isfinite(embeddings).all():
        bad = (~torch.isfinite(embeddings)).any(dim=1).nonzero()[:5, 0].tolist()
        raise ValueError(f"{name} contains NaN or infinite values (rows {bad}...)")
    return embeddings, labels.long()


def knn(query: torch.Tensor, reference: torch.Tensor, k: int, *, exclude: torch.Tensor | None = None,
        block_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours by inner product, ``(scores, indices)`` each (Q, k).

    ``exclude`` (Q,) gives for each query a reference index it may not retrieve (itself, when the
    queries are drawn from the reference set). Ties are broken by index, lower first, also when
    they straddle the k-th place.
    """
    n_candidates = len(reference) - (1 if exclude is not None else 0)
    scores_out = torch.empty(len(query), k, dtype=torch.float32, device=query.device)
    index_out = torch.empty(len(query), k, dtype=torch.long, device=query.device)
    for start in range(0, len(query), block_size):
        stop = min(start + block_size, len(query))
        scores = query[start:stop] @ reference.T  # (b, N)
        if exclude is not None:
            rows = torch.arange(stop - start, device=query.device)
            scores[rows, exclude[start:stop]] = -math.inf
        top, idx = torch.topk(scores, k, dim=1)  # (b, k), scores descending
        # Order equal scores by index: in rows holding a tie, sort by index, then stably by score.
        tie_rows = (top[:, 1:] == top[:, :-1]).any(dim=1).nonzero(as_tuple=True)[0]
        if len(tie_rows):
            t_idx, order = idx[tie_rows].sort(dim=1)
            t_top, order2 = top[tie_rows].gather(1, order).sort(dim=1, descending=True, stable=True)
            top[tie_rows], idx[tie_rows] = t_top, t_idx.gather(1, order2)
        # Rows with a tie across the k-th place: topk may have kept any of the tied items, the
        # rule keeps the lowest indices, so those rows are redone with a full stable sort.
        if k < n_candidates:
            tied = (scores >= top[:, -1:]).sum(dim=1) > k
            if tied.any():
                full, full_idx = scores[tied].sort(dim=1, descending=True, stable=True)
                top[tied], idx[tied] = full[:, :k], full_idx[:, :k]
        scores_out[start:stop], index_out[start:stop] = top, idx
    return scores_out, index_out


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


def kmeans_clusters(embeddings: np.ndarray, num_clusters: int, *, seed: int = KMEANS_SEED,
                    iterations: int = KMEANS_ITERATIONS, gpu: bool = False) -> np.ndarray:
    """faiss k-means on every point (no subsampling), fixed seed and iteration count."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    kmeans = faiss.Kmeans(x.shape[1], num_clusters, niter=iterations, seed=seed, gpu=gpu,
                          max_points_per_centroid=max(len(x), 1), verbose=False)
    kmeans.train(x)
    _, assignment = kmeans.index.search(x, 1)
    return assignment[:, 0].astype(np.int64)


def clustering_metrics(embeddings: torch.Tensor, labels: torch.Tensor, *, gpu: bool = False) -> dict[str, float]:
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    y = labels.cpu().numpy()
    clusters = kmeans_clusters(embeddings.float().cpu().numpy(), len(np.unique(y)), gpu=gpu)
    return {"nmi": float(normalized_mutual_info_score(y, clusters)),
            "ami": float(adjusted_mutual_info_score(y, clusters))}


def _faiss_has_gpu() -> bool:
    try:
        import faiss

        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # pragma: no cover - faiss missing entirely
        return False


def evaluate(embeddings, labels, *, ks: Sequence[int] = DEFAULT_KS, gallery=None, gallery_labels=None,
             device: str | torch.device | None = None, normalize: bool = True, nmi: bool = True,
             block_size: int = 1024) -> dict[str, float]:
    """All metrics of the study for one set of embeddings.

    Without a gallery every item queries all the others (itself excluded by index); with one,
    the queries ``embeddings`` are ranked against ``gallery`` (In-Shop). NMI/AMI cluster the
    queries. Returns ``recall@K`` for each K, ``r_precision``, ``map@r``, ``nmi``, ``ami``,
    ``num_queries`` (those scored) and ``num_excluded_queries`` (no same-label reference item).
    """
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
        exclude = scored.nonzero(as_tuple=True)[0] if gallery is None else None  # self, by index
        _, neighbours = knn(query[scored], reference, k, exclude=exclude, block_size=block_size)
        out.update(retrieval_metrics(reference_labels[neighbours], query_labels[scored], relevant[scored], ks))
    else:
        out.update({f"recall@{k}": math.nan for k in ks} | {"r_precision": math.nan, "map@r": math.nan})
    if nmi:
        out.update(clustering_metrics(query, query_labels, gpu=device.type == "cuda" and _faiss_has_gpu()))
    out["num_queries"] = int(scored.sum().item())
    out["num_excluded_queries"] = int((~scored).sum().item())
    return out
