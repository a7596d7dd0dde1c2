"""Semi-hard mining (Schroff, Kalenichenko & Philbin, "FaceNet", CVPR 2015).

A negative n is semi-hard for the positive pair (a, p) when it is farther from the anchor than the
positive but still inside the margin:

    d(a, p) < d(a, n) <= d(a, p) + margin

Such negatives give a non-zero triplet loss without the collapse that the hardest negatives cause
early in training. The miner returns every semi-hard triplet of the batch (the "all" selection,
as pytorch-metric-learning's TripletMarginMiner with type_of_triplets="semihard").
"""

from __future__ import annotations

from ..distances import euclidean
from ..errors import ConfigError
from ..tuples import Triplets, label_masks
from .base import MINERS, Miner


@MINERS.register("semi-hard")
class SemiHardMiner(Miner):
    """Semi-hard (Schroff et al. 2015): negatives with d(a,p) < d(a,n) <= d(a,p) + margin."""

    produces = ("triplets",)

    def __init__(self, margin: float = 0.2):
        super().__init__()
        if margin <= 0:
            raise ConfigError(f"semi-hard margin must be positive, got {margin}")
        self.margin = float(margin)

    def mine(self, embeddings, labels, kind):
        dist = euclidean(embeddings)  # (B, B)
        positive, negative = label_masks(labels)
        anchor, pos = positive.nonzero(as_tuple=True)  # (P,): the positive pairs
        gap = dist[anchor] - dist[anchor, pos][:, None]  # (P, B): d(a, n) - d(a, p) for every candidate n
        semi_hard = negative[anchor] & (gap > 0) & (gap <= self.margin)
        pair, neg = semi_hard.nonzero(as_tuple=True)
        return Triplets(anchor[pair], pos[pair], neg)
