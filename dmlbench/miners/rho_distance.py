"""Rho-distance sampling (Roth, Milbich, Sinha, Gupta, Ommer & Cohen, "Revisiting Training
Strategies and Generalization Performance in Deep Metric Learning", ICML 2020).

Follows the authors' batch miner, ``batchminer/rho_distance.py`` of
Confusezius/Revisiting_Deep_Metric_Learning_PyTorch. Every anchor a whose class has another image
in the batch gets exactly one triplet; a coin with probability rho decides which kind:

    with probability 1 - rho:  (a, p, n)   p uniform among a's other class members, n drawn by
                                           distance-weighted sampling (weight 1/q(max(d(a, n), cutoff))
                                           over a's negatives, q the distance density on the unit
                                           sphere, as in distance_weighted.py)
    with probability rho:      (a, a, p')  the anchor is its own positive and p', uniform among a's
                                           other class members, takes the negative's place

A triplet loss on (a, a, p') is [d(a, a) - d(a, p') + margin]_+ = [margin - d(a, p')]_+ (and a
pair loss gets the "negative" pair (a, p')): it pushes members of one class apart, which keeps the
embedding from compressing classes into points (the paper ties generalisation to a less compressed
spectrum). The authors use rho = 0.2, the lower cut-off 0.5, and no upper cut-off: their code
comments out the 1.4 cut-off of Wu et al. ("made the results slightly worse"), so by default every
negative can be drawn; ``nonzero_loss_cutoff`` brings Wu et al.'s cut-off back when set.

Deliberate differences from the authors' code: it is one vectorised pass over the batch instead of
a Python loop; the coin, the positives and the negatives come from the miner's own generator (so
the draws are not the same numbers as numpy's, only the same distribution); an anchor without any
negative of finite weight (a batch of one class, or negatives only at the antipode d = 2, where the
authors' weights are NaN) gets no distance-weighted triplet instead of an error, though it still
gets its (a, a, p') triplet when the coin says so.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..geometry.tuples import Triplets, empty_like, label_masks
from .base import MINERS
from .distance_weighted import DistanceWeightedMiner


@MINERS.register("rho-distance")
class RhoDistanceMiner(DistanceWeightedMiner):
    """Rho-distance (Roth et al. 2020): one triplet per anchor; with probability rho it is (a, a, p')."""

    version = 2  # 1 built (a, p, p') from Wu et al.'s per-pair sampling with the 1.4 cut-off

    def __init__(self, rho: float = 0.2, cutoff: float = 0.5, nonzero_loss_cutoff: float | None = None):
        super().__init__(cutoff=cutoff, nonzero_loss_cutoff=math.inf if nonzero_loss_cutoff is None
                         else nonzero_loss_cutoff)
        if not 0 <= rho <= 1:
            raise ConfigError(f"rho-distance rho must lie in [0, 1], got {rho}")
        self.rho = float(rho)

    def mine(self, embeddings, labels, kind):
        device = embeddings.device
        positive, _ = label_masks(labels)  # (B, B)
        swap = self.random((len(labels),), device) < self.rho  # (B,): a coin for every anchor, as theirs
        anchors = positive.any(dim=1).nonzero(as_tuple=True)[0]  # (A,): a class member besides itself
        if len(anchors) == 0:
            return empty_like("triplets", device)
        other = self.draw(positive[anchors].float())  # (A,) uniform among the anchor's other members
        weights = self.negative_weights(embeddings, labels)[anchors]  # (A, B), rows of 0 without negatives
        has_negative = weights.sum(dim=1) > 0
        negative = torch.full_like(anchors, -1)
        if has_negative.any():
            negative[has_negative] = self.draw(weights[has_negative])
        swap = swap[anchors]
        keep = swap | has_negative
        a = anchors[keep]
        p = torch.where(swap, anchors, other)[keep]
        n = torch.where(swap, other, negative)[keep]
        return Triplets(a, p, n)
