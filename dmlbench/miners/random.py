"""Random mining: informative tuples chosen without looking at the embeddings.

Triplets: for every positive pair (a, p) of the batch one negative n drawn uniformly among a's
negatives. Pairs: every positive pair, and for each one negative pair (a, n) drawn the same way, so
positives and negatives are balanced. This is the "random" sampling baseline of Roth et al. 2020.
"""

from __future__ import annotations

import torch

from ..geometry.tuples import Pairs, Triplets, empty_like, label_masks
from .base import MINERS, Miner


@MINERS.register("random")
class RandomMiner(Miner):
    """Random: every positive pair with one uniformly drawn negative for its anchor."""

    produces = ("pairs", "triplets")

    def mine(self, embeddings, labels, kind):
        positive, negative = label_masks(labels)
        anchor, pos = positive.nonzero(as_tuple=True)
        has_negative = negative[anchor].any(dim=1)
        anchor, pos = anchor[has_negative], pos[has_negative]
        if len(anchor) == 0:
            return empty_like(kind, embeddings.device)
        # One uniform draw per (pair, candidate); the arg-max over the anchor's negatives is a
        # uniformly random negative.
        scores = self.random((len(anchor), len(labels)), embeddings.device)
        neg = scores.masked_fill(~negative[anchor], -1.0).argmax(dim=1)
        if kind == "pairs":
            return Pairs(anchor, pos, anchor, neg)
        return Triplets(anchor, pos, neg)
