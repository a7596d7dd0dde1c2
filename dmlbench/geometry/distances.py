"""Pairwise distances on a batch of embeddings, differentiable everywhere.

Euclidean distance is computed from the Gram matrix, ``d_ij^2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j``,
which costs one (B, D) x (D, B) product. The square root is taken only where ``d^2 > 0``: at zero
distance (the diagonal, duplicated embeddings) the value is 0 and the gradient is 0, not NaN.
"""

from __future__ import annotations

import torch


def squared_euclidean(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """(B, D), (M, D) -> (B, M) squared Euclidean distances, clamped at 0."""
    y = x if y is None else y
    x_sq = x.pow(2).sum(dim=1, keepdim=True)  # (B, 1)
    y_sq = y.pow(2).sum(dim=1, keepdim=True).T  # (1, M)
    sq = (x_sq + y_sq - 2.0 * (x @ y.T)).clamp_min(0.0)
    if y is x:  # an item's distance to itself is exactly 0, not rounding noise
        sq = sq.masked_fill(torch.eye(len(x), dtype=torch.bool, device=x.device), 0.0)
    return sq


def safe_sqrt(sq: torch.Tensor) -> torch.Tensor:
    """sqrt with value 0 and gradient 0 where the argument is 0."""
    positive = sq > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def euclidean(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """(B, D), (M, D) -> (B, M) Euclidean distances."""
    return safe_sqrt(squared_euclidean(x, y))
