"""Batch-hard mining (Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person
Re-Identification", 2017).

For every anchor a with at least one positive and one negative in the batch: its farthest positive
p* = argmax_p d(a, p) and its nearest negative n* = argmin_n d(a, n), giving one triplet per anchor.
Ties go to the lowest index.
"""

from __future__ import annotations

import torch

from ..geometry.distances import euclidean
from ..geometry.tuples import Triplets, label_masks
from .base import MINERS, Miner


@MINERS.register("batch-hard")
class BatchHardMiner(Miner):
    """Batch-hard (Hermans et al. 2017): per anchor, the farthest positive and the nearest negative."""

    produces = ("triplets",)

    def mine(self, embeddings, labels, kind):
        dist = euclidean(embeddings)  # (B, B)
        positive, negative = label_masks(labels)
        valid = positive.any(dim=1) & negative.any(dim=1)
        hardest_pos = dist.masked_fill(~positive, -1.0).argmax(dim=1)
        hardest_neg = dist.masked_fill(~negative, float("inf")).argmin(dim=1)
        anchor = valid.nonzero(as_tuple=True)[0]
        return Triplets(anchor, hardest_pos[anchor], hardest_neg[anchor])
