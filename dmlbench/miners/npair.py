"""N-pair construction (Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
Objective", NeurIPS 2016).

From each class of the batch with two or more images, one anchor-positive pair (a_c, p_c) is drawn
at random; every other class's positive serves as a negative of a_c. As pairs: the positive pairs
(a_c, p_c) and the negative pairs (a_c, p_c') for c' != c; as triplets: (a_c, p_c, p_c').
"""

from __future__ import annotations

import torch

from ..geometry.tuples import Pairs, Triplets, empty_like
from .base import MINERS, Miner


@MINERS.register("n-pair")
class NPairMiner(Miner):
    """N-pair construction (Sohn 2016): one random pair per class, the other classes' positives as negatives."""

    produces = ("pairs", "triplets")

    def mine(self, embeddings, labels, kind):
        _, group = torch.unique(labels, return_inverse=True)  # (B,) class index
        score = self.random((len(labels),), labels.device)  # random order within each class
        order = torch.argsort(group.double() + 0.5 * score.double())  # by class, then random
        sorted_group = group[order]
        first = torch.ones_like(sorted_group, dtype=torch.bool)
        first[1:] = sorted_group[1:] != sorted_group[:-1]
        start = torch.cummax(torch.where(first, torch.arange(len(order), device=labels.device), 0), dim=0).values
        rank = torch.arange(len(order), device=labels.device) - start  # position within the class
        anchors, positives = order[rank == 0], order[rank == 1]
        has_pair = torch.isin(sorted_group[rank == 0], sorted_group[rank == 1])
        anchors = anchors[has_pair]  # classes with two or more images; aligned with positives
        n = len(anchors)
        if n == 0:
            return empty_like(kind, labels.device)
        a_idx, n_idx = (~torch.eye(n, dtype=torch.bool, device=labels.device)).nonzero(as_tuple=True)
        if kind == "pairs":
            return Pairs(anchors, positives, anchors[a_idx], positives[n_idx])
        return Triplets(anchors[a_idx], positives[a_idx], positives[n_idx])
