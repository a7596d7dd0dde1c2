"""Embedding diagnostics of Roth et al. (ICML 2020), computed on a run's test embeddings.

- ``spectral_decay``: rho = KL(U || S), the Kullback-Leibler divergence from the uniform distribution
  U to S, the singular values of the (N, D) embedding matrix normalised to sum to one (all of them
  by default; ``skip_largest`` leaves out the largest few, as the authors' variant "rho@k+1" does).
  0 when every direction carries the same energy; large when a few directions dominate (compression).
- ``intra_class_distance``: for each class with two or more items, the mean cosine distance
  (1 - cos) between its distinct items, averaged over those classes.
- ``inter_class_distance``: the mean cosine distance between distinct class centres (each centre
  the mean of its class's embeddings, L2-normalised).
- ``intra_over_inter``: their ratio, Roth et al.'s pi_ratio (higher: classes spread out relative to
  their separation, a less dense embedding space).

Both distances use closed forms over class sums (for unit vectors, sum_{i != j} e_i . e_j =
|sum e|^2 - n), in float64, so SOP's 11,316 classes cost one pass over the embeddings.
"""

from __future__ import annotations

import numpy as np
import torch


def _checked(embeddings) -> np.ndarray:
    """(N, D) float64, N >= 2, finite, no zero row."""
    x = torch.as_tensor(embeddings).detach().cpu().double().numpy()
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"embeddings must be an (N, D) array with N >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    if (np.linalg.norm(x, axis=1) == 0).any():
        raise ValueError("an embedding is the zero vector: its cosine distance is undefined")
    return x


def spectral_decay(embeddings, *, skip_largest: int = 0) -> float:
    """KL(uniform || normalised singular values) of the embedding matrix (natural log)."""
    x = _checked(embeddings)
    s = np.linalg.svd(x, compute_uv=False)[skip_largest:]  # descending
    s = s[s > 0]
    if len(s) == 0:
        raise ValueError("the embedding matrix has no non-zero singular value")
    p = s / s.sum()
    u = np.full(len(s), 1.0 / len(s))
    return float(np.sum(u * np.log(u / p)))


def class_distances(embeddings, labels) -> dict[str, float]:
    """Mean intra-class and inter-class cosine distances and their ratio (see the module docstring)."""
    x = _checked(embeddings)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = torch.as_tensor(labels).cpu().numpy()
    if len(y) != len(x):
        raise ValueError(f"{len(x)} embeddings but {len(y)} labels")
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise ValueError("inter-class distance needs two or more classes")
    sums = np.zeros((len(classes), x.shape[1]))
    np.add.at(sums, inverse, x)  # (C, D) class sums
    multi = counts >= 2
    if not multi.any():
        raise ValueError("intra-class distance needs a class with two or more items")
    n = counts[multi].astype(np.float64)
    pair_cos = ((sums[multi] ** 2).sum(axis=1) - n) / (n * (n - 1))  # mean cosine over distinct pairs, per class
    intra = float(np.mean(1.0 - pair_cos))
    centres = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    c = len(classes)
    inter = float(1.0 - ((centres.sum(axis=0) ** 2).sum() - c) / (c * (c - 1)))
    return {"intra_class_distance": intra, "inter_class_distance": inter,
            "intra_over_inter": intra / max(inter, 1e-12), "classes_with_pairs": int(multi.sum())}


def diagnostics(embeddings, labels) -> dict[str, float | None]:
    """Every diagnostic of ``embeddings`` (N, D) with class ``labels`` (N,). A distance the data cannot
    give (one class only, or no class with two items) is None, with the reason under ``note``."""
    out = {"spectral_decay": spectral_decay(embeddings)}
    try:
        return out | class_distances(embeddings, labels)
    except ValueError as error:
        if "needs" not in str(error):  # bad input, not a property of the classes
            raise
        return out | {"intra_class_distance": None, "inter_class_distance": None, "intra_over_inter": None,
                      "classes_with_pairs": 0, "note": str(error)}
