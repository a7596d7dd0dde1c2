"""No mining: every valid pair or triplet of the batch."""

from __future__ import annotations

from ..geometry.tuples import all_pairs, all_triplets
from .base import MINERS, Miner


@MINERS.register("none")
class AllTuples(Miner):
    """No mining: all positive and negative pairs, or all valid triplets, of the batch."""

    produces = ("pairs", "triplets")

    def mine(self, embeddings, labels, kind):
        return all_pairs(labels) if kind == "pairs" else all_triplets(labels)
