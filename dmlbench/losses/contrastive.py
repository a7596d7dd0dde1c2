"""Contrastive loss (Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an Invariant
Mapping", CVPR 2006).

For a pair at Euclidean distance d:

    positive pair:  [d - m_pos]_+ ** p        negative pair:  [m_neg - d]_+ ** p

The paper's form is ``p = 2, m_pos = 0`` (up to a factor 1/2); ``p = 1`` with a positive margin is
the variant of "A Metric Learning Reality Check" and pytorch-metric-learning. Positive and negative
terms are reduced separately and added.
"""

from __future__ import annotations

import math

import torch

from ..geometry.distances import euclidean
from ..errors import ConfigError
from .base import LOSSES, Loss


@LOSSES.register("contrastive")
class ContrastiveLoss(Loss):
    """Contrastive loss (Hadsell et al. 2006): pull positives within m_pos, push negatives past m_neg."""

    consumes = "pairs"

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0, power: float = 1.0,
                 reduction: str = "mean_nonzero"):
        super().__init__(reduction)
        if not power > 0:
            raise ConfigError(f"contrastive power must be positive, got {power}")
        # Margins are distances: positive pairs cost nothing within pos_margin, negative pairs beyond
        # neg_margin (the paper's m > 0), and the second must lie beyond the first.
        if not 0 <= pos_margin < math.inf:
            raise ConfigError(f"contrastive pos_margin must be a distance >= 0 (the paper's is 0), got {pos_margin}; "
                              f"valid range: 0 <= pos_margin < neg_margin")
        if not pos_margin < neg_margin < math.inf:
            raise ConfigError(f"contrastive neg_margin must be a distance beyond pos_margin={pos_margin} (the paper's "
                              f"m > 0), got {neg_margin}; valid range: neg_margin > pos_margin >= 0")
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)
        self.power = float(power)

    def terms(self, embeddings, labels, pairs):
        dist = euclidean(embeddings)  # (B, B)
        pos = torch.relu(dist[pairs.pos_a, pairs.pos_b] - self.pos_margin)
        neg = torch.relu(self.neg_margin - dist[pairs.neg_a, pairs.neg_b])
        if self.power != 1.0:
            pos, neg = pos.pow(self.power), neg.pow(self.power)
        return {"positive": pos, "negative": neg}
