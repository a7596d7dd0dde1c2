"""Smooth-hard negatives: the lifted structured loss's weighting of negatives as a miner (Song, Xiang,
Jegelka & Savarese, "Deep Metric Learning via Lifted Structured Feature Embedding", CVPR 2016).

The lifted loss bounds each positive pair (a, p) by a log-sum-exp over the negatives of both ends,
in which negative n weighs exp(-s d(a, n)) + exp(-s d(p, n)): the softmax of that sum is a smooth
version of "the hardest negative of either end". This miner draws, for every positive pair, one
negative n with exactly those probabilities (s = 1, the lifted loss's scale), giving triplets
(a, p, n) whose negative is hard for one end or the other but not always the hardest.
"""

from __future__ import annotations

import math

import torch

from ..geometry.distances import euclidean
from ..errors import ConfigError
from ..geometry.tuples import Triplets, empty_like, label_masks
from .base import MINERS, Miner


@MINERS.register("smooth-hard")
class SmoothHardMiner(Miner):
    """Smooth-hard (Song et al. 2016): per positive pair one negative drawn with the lifted loss's weights."""

    produces = ("triplets",)

    def __init__(self, scale: float = 1.0):
        super().__init__()
        if not 0 < scale < math.inf:
            raise ConfigError(f"smooth-hard scale must be positive, got {scale}")
        self.scale = float(scale)

    def negative_weights(self, embeddings: torch.Tensor, labels: torch.Tensor):
        """(anchor, positive, weights (P, B)): each positive pair's distribution over negatives."""
        dist = euclidean(embeddings).double()  # (B, B)
        positive, negative = label_masks(labels)
        anchor, pos = positive.nonzero(as_tuple=True)  # (P,)
        logits = torch.logaddexp(-self.scale * dist[anchor], -self.scale * dist[pos])  # (P, B)
        logits = logits.masked_fill(~negative[anchor], -torch.inf)
        return anchor, pos, torch.softmax(logits, dim=1).nan_to_num(0.0)

    def mine(self, embeddings, labels, kind):
        anchor, pos, weights = self.negative_weights(embeddings, labels)
        keep = weights.sum(dim=1) > 0
        if not keep.any():
            return empty_like("triplets", embeddings.device)
        return Triplets(anchor[keep], pos[keep], self.draw(weights[keep]))
