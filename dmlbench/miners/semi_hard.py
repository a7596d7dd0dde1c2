"""Semi-hard mining (Schroff, Kalenichenko & Philbin, "FaceNet", CVPR 2015).

A negative n is semi-hard for the positive pair (a, p) when it is farther from the anchor than the
positive but still inside the margin:

    d(a, p) < d(a, n) <= d(a, p) + margin

Such negatives give a non-zero triplet loss without the collapse that the hardest negatives cause
early in training. ``selection`` picks, per positive pair, every semi-hard negative ("all", the set
of pytorch-metric-learning's TripletMarginMiner with type_of_triplets="semihard") or only the
closest one ("closest", FaceNet's reference implementation). ``fallback`` decides what a positive
pair with no semi-hard negative gets: "easiest", its farthest negative (what FaceNet's reference
implementation does, giving a small or zero loss), "hardest", its nearest negative, or "none".
``squared=True`` measures d as the squared Euclidean distance, as FaceNet's paper and TensorFlow's
triplet_semihard_loss do (pair it with the triplet loss's ``squared=True``); default False, Euclidean.
With ``selection="closest"`` (and the default fallback) every positive pair gets one triplet, so the
triplet loss's ``reduction="mean"`` is TensorFlow's mean over all positive pairs.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..geometry.tuples import Triplets
from .base import MINERS, Miner
from .margin_triplets import pair_gaps

SELECTIONS = ("all", "closest")
FALLBACKS = ("easiest", "hardest", "none")


@MINERS.register("semi-hard")
class SemiHardMiner(Miner):
    """Semi-hard (Schroff et al. 2015): negatives with d(a,p) < d(a,n) <= d(a,p) + margin."""

    produces = ("triplets",)

    def __init__(self, margin: float = 0.2, selection: str = "all", fallback: str = "easiest", squared: bool = False):
        super().__init__()
        if not isinstance(squared, bool):
            raise ConfigError(f"semi-hard squared must be true or false, got {squared!r}")
        if not 0 < margin < math.inf:
            raise ConfigError(f"semi-hard margin must be positive, got {margin}; "
                              f"valid range: margin > 0 (FaceNet's 0.2)")
        if selection not in SELECTIONS:
            raise ConfigError(f"unknown semi-hard selection {selection!r}; valid selections: {', '.join(SELECTIONS)}")
        if fallback not in FALLBACKS:
            raise ConfigError(f"unknown semi-hard fallback {fallback!r}; valid fallbacks: {', '.join(FALLBACKS)}")
        self.margin = float(margin)
        self.selection = selection
        self.fallback = fallback
        self.squared = squared

    def mine(self, embeddings, labels, kind):
        anchor, pos, gap, negative, _ = pair_gaps(embeddings, labels, self.squared)  # gap, negative: (P, B)
        semi_hard = negative & (gap > 0) & (gap <= self.margin)
        if self.selection == "closest":
            closest = gap.masked_fill(~semi_hard, torch.inf).argmin(dim=1)  # (P,)
            has = semi_hard.any(dim=1)
            semi_hard = torch.zeros_like(semi_hard)
            semi_hard[has.nonzero(as_tuple=True)[0], closest[has]] = True
        pair, neg = semi_hard.nonzero(as_tuple=True)
        triplets = [(anchor[pair], pos[pair], neg)]
        if self.fallback != "none":
            lacking = ~semi_hard.any(dim=1) & negative.any(dim=1)  # (P,)
            if lacking.any():
                g = gap[lacking]
                mask = negative[lacking]
                pick = (g.masked_fill(~mask, -torch.inf).argmax(dim=1) if self.fallback == "easiest"
                        else g.masked_fill(~mask, torch.inf).argmin(dim=1))
                triplets.append((anchor[lacking], pos[lacking], pick))
        a, p, n = (torch.cat(parts) for parts in zip(*triplets))
        return Triplets(a, p, n)
