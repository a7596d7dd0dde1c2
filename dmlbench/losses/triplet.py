"""Triplet margin loss (Schroff, Kalenichenko & Philbin, "FaceNet", CVPR 2015; Weinberger & Saul's
large-margin idea).

For a triplet (a, p, n) with Euclidean distances d_ap, d_an:

    hinge:      [d_ap - d_an + margin]_+
    soft-plus:  log(1 + exp(d_ap - d_an + margin))   (Hermans et al. 2017 use margin 0)

``squared=True`` uses squared Euclidean distances d^2, as FaceNet's paper and TensorFlow's
triplet_semihard_loss (margin 0.2 was chosen there for squared distances); default False. The default
reduction, "mean_nonzero", averages over the triplets with a non-zero loss; ``reduction="mean"`` over
all triplets, FaceNet's / TensorFlow's mean over positive pairs when the semi-hard miner gives one
triplet per positive pair (its ``selection="closest"``, with ``squared`` set alike on both).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..geometry.distances import euclidean, squared_euclidean
from ..errors import ConfigError
from .base import LOSSES, Loss

VARIANTS = ("hinge", "softplus")


@LOSSES.register("triplet")
class TripletMarginLoss(Loss):
    """Triplet loss with margin (Schroff et al. 2015): d(a,p) + margin < d(a,n), hinge or soft-plus."""

    consumes = "triplets"
    paper_miner = "semi-hard"

    def __init__(self, margin: float = 0.2, variant: str = "hinge", reduction: str = "mean_nonzero",
                 squared: bool = False):
        super().__init__(reduction)
        if not isinstance(squared, bool):
            raise ConfigError(f"triplet squared must be true or false, got {squared!r}")
        if variant not in VARIANTS:
            raise ConfigError(f"unknown triplet variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
        if not 0 <= margin < math.inf:  # the gap d(a,n) - d(a,p) asked for: FaceNet's 0.2, Hermans et al.'s soft-plus 0
            raise ConfigError(f"triplet margin must be a distance >= 0 (FaceNet's 0.2; 0 with the soft-plus variant), "
                              f"got {margin}; valid range: margin >= 0")
        self.margin = float(margin)
        self.variant = variant
        self.squared = squared

    def terms(self, embeddings, labels, triplets):
        dist = squared_euclidean(embeddings) if self.squared else euclidean(embeddings)  # (B, B)
        violation = dist[triplets.anchor, triplets.positive] - dist[triplets.anchor, triplets.negative] + self.margin
        values = torch.relu(violation) if self.variant == "hinge" else F.softplus(violation)
        return {"triplet": values}
