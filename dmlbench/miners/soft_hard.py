"""Soft-hard mining, the ``softhard`` batch miner of Roth et al.'s benchmark (Roth, Milbich, Sinha,
Gupta, Ommer & Cohen, "Revisiting Training Strategies and Generalization Performance in Deep Metric
Learning", ICML 2020).

Follows ``batchminer/softhard.py`` of Confusezius/Revisiting_Deep_Metric_Learning_PyTorch. Every
anchor a whose class has another image in the batch gets one triplet (a, p, n), with p and n drawn
uniformly from the members that violate the triplet order "in a hard fashion":

    p uniform among a's positives farther than a's nearest negative:    d(a, p) > min_n d(a, n)
    n uniform among a's negatives nearer than a's farthest positive:    d(a, n) < max_p d(a, p)

and, where a set is empty, uniform among all of a's positives (or negatives). Unlike batch-hard, it
is not the hardest pair that is taken but any violating one, which softens the selection.

Deliberate differences from the authors' code: one vectorised pass over the batch instead of a
Python loop; the draws come from the miner's own generator (the same distribution as numpy's
``np.random.choice``, not the same numbers); the comparisons are strict as theirs, on our Euclidean
distances (float32, from the Gram matrix, as theirs); an anchor without any negative (a batch of
one class) gets no triplet, where the authors' code would fail.
"""

from __future__ import annotations

import torch

from ..geometry.distances import euclidean
from ..geometry.tuples import Triplets, empty_like, label_masks
from .base import MINERS, Miner


@MINERS.register("soft-hard")
class SoftHardMiner(Miner):
    """Soft-hard (Roth et al. 2020): one triplet per anchor, a random violating positive and negative."""

    produces = ("triplets",)

    def mine(self, embeddings, labels, kind):
        dist = euclidean(embeddings)  # (B, B)
        positive, negative = label_masks(labels)
        anchors = (positive.any(dim=1) & negative.any(dim=1)).nonzero(as_tuple=True)[0]  # (A,)
        if len(anchors) == 0:
            return empty_like("triplets", embeddings.device)
        d, pos, neg = dist[anchors], positive[anchors], negative[anchors]  # (A, B)
        farthest_positive = d.masked_fill(~pos, -torch.inf).max(dim=1, keepdim=True).values  # (A, 1)
        nearest_negative = d.masked_fill(~neg, torch.inf).min(dim=1, keepdim=True).values  # (A, 1)
        hard_pos = pos & (d > nearest_negative)
        hard_neg = neg & (d < farthest_positive)
        pos = torch.where(hard_pos.any(dim=1, keepdim=True), hard_pos, pos)
        neg = torch.where(hard_neg.any(dim=1, keepdim=True), hard_neg, neg)
        return Triplets(anchors, self.draw(pos.float()), self.draw(neg.float()))
