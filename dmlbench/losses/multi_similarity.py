"""Multi-similarity loss (Wang, Han, Huang, Dong & Scott, "Multi-Similarity Loss with General Pair
Weighting for Deep Metric Learning", CVPR 2019), on cosine similarities S_ik.

For each anchor i, with P_i and N_i its positive and negative pairs:

    L_i = 1/α log(1 + Σ_{k∈P_i} exp(-α (S_ik - λ))) + 1/β log(1 + Σ_{k∈N_i} exp(β (S_ik - λ)))

and the loss is the mean of L_i over the m anchors of the batch (the paper's 1/m Σ_i); an anchor without
mined positives (negatives) has a zero positive (negative) part, log(1 + 0). With a miner, P_i and
N_i are the anchor's mined pairs (each pair counted once, duplicates dropped); without one, all of
them. The paper's own pair mining (ε = 0.1) is the separate ``multi-similarity`` miner.

Defaults, from the paper's implementation details: α = 2, β = 50, λ = 1 (``base``). The
authors' released code (MalongTech research-ms-loss) uses λ = 0.5 and β = 40 instead, and
pytorch-metric-learning's MultiSimilarityLoss defaults to α = 2, β = 50, base = 0.5: pass
``base=0.5`` to match either. The default ``reduction="mean"`` is the paper's mean over all
anchors, which pml's default MeanReducer computes too; ``"mean_nonzero"`` averages over anchors
with a positive loss and ``"sum"`` sums.

Embeddings arrive L2-normalised, so S = E Eᵀ is the cosine similarity.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..geometry.tuples import Pairs
from .base import LOSSES, Loss


def log1p_sum_exp(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, B) logits and mask -> (B,) log(1 + Σ_k mask_ik exp(logits_ik)), stable, with zero
    gradient (not NaN) on the masked-out entries and 0 for a row with nothing kept."""
    kept = logits.masked_fill(~mask, -torch.inf)  # (B, B)
    shift = kept.amax(dim=1, keepdim=True).clamp_min(0.0).detach()  # (B, 1) >= 0, so the "1" cannot overflow
    terms = torch.exp(kept - shift).sum(dim=1, keepdim=True)  # (B, 1) Σ_k exp(logit - shift)
    # shift = 0: log1p keeps a tiny sum (exp(-50) for a far negative) instead of rounding log(1 + s) to 0
    out = torch.where(shift > 0, shift + torch.log(torch.exp(-shift) + terms), torch.log1p(terms))  # (B, 1)
    return out.squeeze(1)  # (B,)


@LOSSES.register("multi-similarity")
class MultiSimilarityLoss(Loss):
    """Multi-similarity loss (Wang et al. 2019): soft weighting of positive and negative pairs per anchor."""

    consumes = "pairs"
    paper_miner = "multi-similarity"

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        for name, value in (("alpha", alpha), ("beta", beta), ("base", base)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"multi-similarity {name} must be a finite number, got {value!r}")
        for name, value in (("alpha", alpha), ("beta", beta)):
            if value <= 0:
                raise ConfigError(f"multi-similarity {name} (a scale) must be > 0, got {value}")
        if not -1 <= base <= 1:  # compared with cosine similarities, which lie in [-1, 1]
            raise ConfigError(f"multi-similarity base (lambda, a cosine-similarity threshold: the paper's 1, its "
                              f"code's 0.5) must lie in [-1, 1], got {base}; valid range: -1 <= base <= 1")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.base = float(base)

    def terms(self, embeddings, labels, pairs: Pairs):
        sim = embeddings @ embeddings.T  # (B, B) cosine similarities
        n = len(embeddings)
        pos_mask = torch.zeros(n, n, dtype=torch.bool, device=embeddings.device)  # (B, B)
        neg_mask = torch.zeros(n, n, dtype=torch.bool, device=embeddings.device)  # (B, B)
        pos_mask[pairs.pos_a, pairs.pos_b] = True
        neg_mask[pairs.neg_a, pairs.neg_b] = True
        pos = log1p_sum_exp(-self.alpha * (sim - self.base), pos_mask) / self.alpha  # (B,)
        neg = log1p_sum_exp(self.beta * (sim - self.base), neg_mask) / self.beta  # (B,)
        return {"anchor": pos + neg}  # (B,): one value per anchor, reduced over the batch
