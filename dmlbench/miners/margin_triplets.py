"""Margin-based triplet selection: the triplets whose loss is non-zero, and their hard and
semi-hard subsets (the selections of FaceNet, Schroff et al. 2015, and of the triplet-mining
literature that followed).

With gap = d(a, n) - d(a, p) for a triplet (a, p, n):

    violating:  gap <= margin            (every triplet with a non-zero hinge loss)
    hard:       gap <= 0                 (the negative is no farther than the positive)
    semihard:   0 < gap <= margin        (see also the "semi-hard" miner, with FaceNet's fallback)

The same sets as pytorch-metric-learning's TripletMarginMiner with type_of_triplets "all", "hard"
and "semihard". ``squared=True`` measures d as the squared Euclidean distance (FaceNet's paper,
TensorFlow's triplet_semihard_loss), to go with the triplet loss's ``squared=True``; default False,
Euclidean.
"""

from __future__ import annotations

import math

import torch

from ..geometry.distances import euclidean, squared_euclidean
from ..errors import ConfigError
from ..geometry.tuples import Triplets, label_masks
from .base import MINERS, Miner

SELECTIONS = ("violating", "hard", "semihard")


def pair_gaps(embeddings: torch.Tensor, labels: torch.Tensor, squared: bool = False):
    """For every positive pair (a, p): gap[k, n] = d(a, n) - d(a, p) over all candidates n (d squared
    Euclidean when ``squared``).

    Returns (anchor (P,), positive (P,), gap (P, B), negative mask (P, B), distances (B, B)).
    """
    dist = squared_euclidean(embeddings) if squared else euclidean(embeddings)  # (B, B)
    positive, negative = label_masks(labels)
    anchor, pos = positive.nonzero(as_tuple=True)  # (P,)
    gap = dist[anchor] - dist[anchor, pos][:, None]  # (P, B)
    return anchor, pos, gap, negative[anchor], dist


@MINERS.register("margin-triplets")
class MarginTripletMiner(Miner):
    """Margin triplets: every triplet violating the margin, or its hard / semi-hard subset."""

    produces = ("triplets",)

    def __init__(self, margin: float = 0.2, selection: str = "violating", squared: bool = False):
        super().__init__()
        if not isinstance(squared, bool):
            raise ConfigError(f"margin-triplets squared must be true or false, got {squared!r}")
        if not 0 < margin < math.inf:
            raise ConfigError(f"margin-triplets margin must be positive, got {margin}; valid range: margin > 0")
        if selection not in SELECTIONS:
            raise ConfigError(f"unknown margin-triplets selection {selection!r}; valid selections: {', '.join(SELECTIONS)}")
        self.margin = float(margin)
        self.selection = selection
        self.squared = squared

    def mine(self, embeddings, labels, kind):
        anchor, pos, gap, negative, _ = pair_gaps(embeddings, labels, self.squared)
        keep = negative & (gap <= self.margin)
        if self.selection == "hard":
            keep &= gap <= 0
        elif self.selection == "semihard":
            keep &= gap > 0
        pair, neg = keep.nonzero(as_tuple=True)
        return Triplets(anchor[pair], pos[pair], neg)
