"""Smooth-hard: the lifted structured loss's hard-negative choice as a miner (Song, Xiang, Jegelka
& Savarese, "Deep Metric Learning via Lifted Structured Feature Embedding", CVPR 2016).

The lifted loss scores each positive pair (i, j) against the hardest negative of either end,

    J_ij = max( max_{k in N(i)} (alpha - D_ik),  max_{l in N(j)} (alpha - D_jl) ) + D_ij

(the paper's non-smooth objective), and then replaces that nested max by a log-sum-exp, its smooth
upper bound (the ``lifted-structure`` loss). This miner makes the hard choice itself: for every positive pair
(i, j) of the batch, taken once as an unordered pair, it picks the negative k with the smallest
distance to either i or j, and returns the triplet oriented at the end that negative is hardest
for: (i, j, k) when the hardest is k = argmin_k D_ik, (j, i, k) when it is argmin_l D_jl. A triplet
loss then sees D_ij - D_ik with the same anchor as the paper's term.

It follows that rule of the paper; it is not a transcription of a published miner's code (Roth et
al.'s ``softhard`` is a different rule, registered as ``soft-hard``). Ties: within one end, the
negative of the lowest index; between the two ends, the end of the lower index i. Nothing in it is
random. The old ``scale`` keyword is gone (there is no softmax left to scale).
"""

from __future__ import annotations

import torch

from ..geometry.distances import euclidean
from ..geometry.tuples import Triplets, empty_like, label_masks
from .base import MINERS, Miner


@MINERS.register("smooth-hard")
class SmoothHardMiner(Miner):
    """Smooth-hard (Song et al. 2016): per positive pair, the hardest negative of either end."""

    produces = ("triplets",)
    version = 2  # 1 drew a negative from a softmax of the lifted weights at scale 1 (near random)

    def mine(self, embeddings, labels, kind):
        dist = euclidean(embeddings)  # (B, B)
        positive, negative = label_masks(labels)
        i, j = torch.triu(positive, diagonal=1).nonzero(as_tuple=True)  # (P,): each pair once, i < j
        keep = negative[i].any(dim=1)  # the ends share their class, so their negatives too
        i, j = i[keep], j[keep]
        if len(i) == 0:
            return empty_like("triplets", embeddings.device)
        masked = dist.masked_fill(~negative, torch.inf)  # (B, B): distances to negatives only
        d_i, k_i = masked[i].min(dim=1)  # (P,) the hardest negative of end i
        d_j, k_j = masked[j].min(dim=1)  # (P,) ... and of end j
        at_i = d_i <= d_j
        return Triplets(torch.where(at_i, i, j), torch.where(at_i, j, i), torch.where(at_i, k_i, k_j))
