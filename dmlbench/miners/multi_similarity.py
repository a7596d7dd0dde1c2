"""Multi-similarity pair mining (Wang, Han, Huang, Dong & Scott, "Multi-Similarity Loss with General
Pair Weighting for Deep Metric Learning", CVPR 2019), on cosine similarities S.

For an anchor a, a negative pair (a, n) is kept when it is more similar than the anchor's least
similar positive, and a positive pair (a, p) when it is less similar than the anchor's most similar
negative, each up to a margin ε (paper: 0.1):

    keep (a, n)  if  S_an + ε > min_p S_ap          keep (a, p)  if  S_ap - ε < max_n S_an
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..geometry.tuples import Pairs, label_masks
from .base import MINERS, Miner


@MINERS.register("multi-similarity")
class MultiSimilarityMiner(Miner):
    """Multi-similarity mining (Wang et al. 2019): pairs that violate the other kind's extreme by ε."""

    produces = ("pairs",)

    def __init__(self, epsilon: float = 0.1):
        super().__init__()
        if not 0 <= epsilon <= 2:  # a margin on cosine similarities, which differ by at most 2
            raise ConfigError(f"multi-similarity epsilon (the mining margin on cosine similarities; the paper's 0.1) "
                              f"must lie in [0, 2], got {epsilon}; valid range: 0 <= epsilon <= 2")
        self.epsilon = float(epsilon)

    def mine(self, embeddings, labels, kind):
        sim = embeddings @ embeddings.T  # (B, B) cosine: embeddings are L2-normalised
        positive, negative = label_masks(labels)
        hardest_pos = sim.masked_fill(~positive, torch.inf).min(dim=1, keepdim=True).values  # (B, 1)
        hardest_neg = sim.masked_fill(~negative, -torch.inf).max(dim=1, keepdim=True).values  # (B, 1)
        keep_neg = negative & (sim + self.epsilon > hardest_pos)
        keep_pos = positive & (sim - self.epsilon < hardest_neg)
        pos_a, pos_b = keep_pos.nonzero(as_tuple=True)
        neg_a, neg_b = keep_neg.nonzero(as_tuple=True)
        return Pairs(pos_a, pos_b, neg_a, neg_b)
