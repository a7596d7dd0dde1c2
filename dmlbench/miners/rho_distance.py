"""Rho-distance sampling (Roth, Milbich, Sinha, Gupta, Ommer & Cohen, "Revisiting Training
Strategies and Generalization Performance in Deep Metric Learning", ICML 2020).

Distance-weighted sampling (Wu et al. 2017, see distance_weighted.py), except that with probability
rho each triplet's negative is swapped for another image of the anchor's own class. Those triplets
push same-class images apart a little, which keeps the embedding from compressing classes into
points (the paper ties generalisation to a less compressed spectrum). The authors' code uses
rho = 0.2 with the distance cut-offs 0.5 and 1.4.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..geometry.tuples import Triplets, label_masks
from .base import MINERS
from .distance_weighted import DistanceWeightedMiner


@MINERS.register("rho-distance")
class RhoDistanceMiner(DistanceWeightedMiner):
    """Rho-distance (Roth et al. 2020): distance-weighted, each negative swapped for a positive with probability rho."""

    def __init__(self, rho: float = 0.2, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4):
        super().__init__(cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff)
        if not 0 <= rho <= 1:
            raise ConfigError(f"rho-distance rho must lie in [0, 1], got {rho}")
        self.rho = float(rho)

    def mine(self, embeddings, labels, kind):
        triplets = super().mine(embeddings, labels, "triplets")
        if len(triplets) == 0 or self.rho == 0:
            return triplets
        positive, _ = label_masks(labels)
        others = positive[triplets.anchor].clone()  # (T, B): the anchor's other class members ...
        others[torch.arange(len(triplets), device=others.device), triplets.positive] = False  # ... except p
        swap = (self.random((len(triplets),), others.device) < self.rho) & others.any(dim=1)
        scores = self.random(tuple(others.shape), others.device).masked_fill(~others, -1.0)
        replacement = scores.argmax(dim=1)  # a uniformly random other member
        return Triplets(triplets.anchor, triplets.positive, torch.where(swap, replacement, triplets.negative))
