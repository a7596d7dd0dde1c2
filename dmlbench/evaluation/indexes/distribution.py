"""The distance distribution of a set of embeddings: what explains the cost of exact metric search.

    stats = distance_statistics(items, seed=0)
    stats["rho"]        # Chavez et al.'s intrinsic dimensionality, mu^2 / (2 sigma^2)
    stats["lid"]        # a local intrinsic-dimensionality estimate (maximum likelihood, k neighbours)
    stats["histogram"]  # {"edges": [...], "counts": [...]}: the distances of random item pairs

- **The distribution**: the Euclidean distances of ``pairs`` random pairs of distinct items (a seeded
  draw, numpy's PCG64), their mean mu, standard deviation sigma and histogram. The more concentrated
  the distances (large mu against sigma), the less a triangle-inequality bound |d(q, p) - d(x, p)| can
  exclude, whatever the structure (Chavez, Navarro, Baeza-Yates and Marroquin 2001 name
  rho = mu^2 / (2 sigma^2) the intrinsic dimensionality: it grows linearly with the dimension of
  uniformly spread data).
- **Local intrinsic dimensionality**: for each of ``lid_points`` sampled items, the maximum-likelihood
  estimate from its k nearest other items (Levina and Bickel 2004; Amsaleg et al. 2015):
  -1 / mean_j log(r_j / r_k), r_j the j-th neighbour's distance; items with a duplicate among their k
  neighbours (r = 0) are left out. ``lid`` is the mean of the estimates, ``lid_median`` their median.
"""

from __future__ import annotations

import numpy as np
import torch

PAIRS = 200_000
BINS = 40
LID_K = 20
LID_POINTS = 1000


def pair_distances(items: np.ndarray, pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Distances of ``pairs`` random pairs of distinct items, float64, by differences."""
    n = len(items)
    first = rng.integers(0, n, pairs)
    second = (first + rng.integers(1, n, pairs)) % n  # never the same item
    x = items.astype(np.float64)
    out = np.empty(pairs)
    for start in range(0, pairs, 50_000):
        a, b = first[start:start + 50_000], second[start:start + 50_000]
        out[start:start + len(a)] = np.sqrt(((x[a] - x[b]) ** 2).sum(1))
    return out


def local_dimension(items: np.ndarray, points: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """The maximum-likelihood local dimension at ``points`` sampled items from their k nearest others
    (found by float32 distances in blocks, then measured in float64 by differences)."""
    chosen = rng.permutation(len(items))[:points]
    k = min(k, len(items) - 1)
    x = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))
    x64 = items.astype(np.float64)
    r = np.empty((len(chosen), k))
    for start in range(0, len(chosen), 32):
        rows = chosen[start:start + 32]
        d = torch.cdist(x[rows], x)  # (B, N)
        d[torch.arange(len(rows)), torch.from_numpy(rows)] = float("inf")  # not itself
        near = d.topk(k, largest=False).indices.numpy()  # (B, k)
        r[start:start + len(rows)] = np.sqrt(((x64[near] - x64[rows][:, None]) ** 2).sum(2))
    r = np.sort(r, axis=1)
    usable = r[:, 0] > 0
    logs = np.log(r[usable] / r[usable, -1:])[:, :-1]  # (U, k - 1): the k-th's own term is log 1 = 0
    return -1.0 / (logs.sum(1) / k)


def distance_statistics(items, *, pairs: int = PAIRS, bins: int = BINS, lid_k: int = LID_K,
                        lid_points: int = LID_POINTS, seed: int = 0) -> dict:
    """The statistics of the module docstring for ``items`` (N, d), N >= 2."""
    items = np.asarray(items)
    if items.ndim != 2 or len(items) < 2:
        raise ValueError(f"distance statistics need an (N, d) array of 2 or more items, got shape {items.shape}")
    rng = np.random.default_rng(seed)
    d = pair_distances(items, pairs, rng)
    mu, sigma = float(d.mean()), float(d.std())
    counts, edges = np.histogram(d, bins=bins, range=(0.0, float(d.max()) or 1.0))
    lid = local_dimension(items, min(lid_points, len(items)), lid_k, rng)
    return {"pairs": pairs, "mean": mu, "std": sigma, "rho": mu * mu / (2 * sigma * sigma) if sigma > 0 else float("inf"),
            "lid": float(lid.mean()) if len(lid) else None, "lid_median": float(np.median(lid)) if len(lid) else None,
            "lid_k": min(lid_k, len(items) - 1), "lid_points": int(len(lid)),
            "histogram": {"edges": edges.round(6).tolist(), "counts": counts.tolist()}}
