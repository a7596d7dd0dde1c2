"""Distance-weighted sampling (Wu, Manmatha, Smola & Krähenbühl, "Sampling Matters in Deep
Embedding Learning", ICCV 2017).

On the unit hypersphere in n dimensions, pairwise distances of random points have density
q(d) ∝ d^(n-2) [1 - d²/4]^((n-3)/2). Sampling negatives with weight 1/q(d) spreads the chosen
negatives evenly over distances instead of concentrating them near sqrt(2):

    w(a, n) ∝ min(λ, q(max(d(a, n), cutoff))^-1)  for negatives with d(a, n) < nonzero_loss_cutoff

For every positive pair (a, p) of the batch one negative is drawn with probability proportional to
w(a, ·). Paper values: cutoff 0.5, and negatives at distance 1.4 or more are never drawn (they give
no loss with the margin loss's margin). Weights are computed in log space with each anchor's
largest log-weight subtracted, so n = 512 does not overflow.
"""

from __future__ import annotations

import torch

from ..geometry.distances import euclidean
from ..errors import ConfigError
from ..geometry.tuples import Triplets, empty_like, label_masks
from .base import MINERS, Miner


@MINERS.register("distance-weighted")
class DistanceWeightedMiner(Miner):
    """Distance-weighted (Wu et al. 2017): one negative per positive pair, drawn with weight 1/q(d)."""

    produces = ("triplets",)

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4):
        super().__init__()
        if not 0 < cutoff < 2:
            raise ConfigError(f"distance-weighted cutoff must lie in (0, 2), got {cutoff}")
        if not cutoff < nonzero_loss_cutoff:
            raise ConfigError(f"nonzero_loss_cutoff ({nonzero_loss_cutoff}) must exceed cutoff ({cutoff})")
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)

    def negative_weights(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, B) sampling probabilities of each anchor's negatives (rows sum to 1, or 0 without any)."""
        n = embeddings.shape[1]
        dist = euclidean(embeddings).double()  # (B, B)
        _, negative = label_masks(labels)
        d = dist.clamp_min(self.cutoff)
        log_w = (2.0 - n) * torch.log(d) - ((n - 3) / 2.0) * torch.log1p(-0.25 * d.pow(2))  # -log q(d)
        valid = negative & (dist < self.nonzero_loss_cutoff) & torch.isfinite(log_w)
        log_w = log_w.masked_fill(~valid, -torch.inf)
        row_max = log_w.max(dim=1, keepdim=True).values.nan_to_num(neginf=0.0)
        w = torch.exp(log_w - row_max)  # (B, B), 0 outside valid
        return (w / w.sum(dim=1, keepdim=True).clamp_min(1e-300)).float()

    def mine(self, embeddings, labels, kind):
        weights = self.negative_weights(embeddings, labels)  # (B, B)
        positive, _ = label_masks(labels)
        anchor, pos = positive.nonzero(as_tuple=True)
        keep = weights[anchor].sum(dim=1) > 0
        anchor, pos = anchor[keep], pos[keep]
        if len(anchor) == 0:
            return empty_like("triplets", embeddings.device)
        return Triplets(anchor, pos, self.draw(weights[anchor]))
