"""Angular loss (Wang, Zhou, Wen, Liu & Lin, "Deep Metric Learning with Angular Loss", ICCV 2017).

The angular loss bounds the angle at the negative n of the triangle (a, p, n): the negative must
lie outside the cone of half-angle alpha seen from the pair's centre x_c = (x_a + x_p) / 2, i.e.
|x_a - x_p|^2 <= 4 tan^2(alpha) |x_n - x_c|^2. This module implements the paper's smooth N-pair form
(its eq. for l_ang(B)), for unit-norm embeddings:

    f_apn = 4 tan^2(alpha) (x_a + x_p)^T x_n - 2 (1 + tan^2(alpha)) x_a^T x_p
    loss  = 1/|P| sum_{(a,p) in P} log(1 + sum_{n} exp(f_apn))

with n over the negatives of the anchor a. alpha is given in degrees; default 40 (the paper studies
a range of alphas and picks it per dataset; 40 is also pytorch-metric-learning's default). The
paper's hinge form for single triplets is not implemented.

``with_npair=True`` adds the paper's combination with the N-pair loss, l_npair + lambda * l_ang
(paper: lambda = 2, ``angular_weight``), where the N-pair term of a pair is
log(1 + sum_n exp(x_a^T x_n - x_a^T x_p)) over the same negatives. Off by default.

Negatives (``mined_negatives``):

- ``"anchor"`` (default): the distinct n such that (a, n) is a mined negative pair (with all pairs:
  every image of another class, as in the paper's batch);
- ``"batch"``: every image of another class in the batch, whatever the miner chose; this is what
  pytorch-metric-learning does (it takes only the positive pairs from the miner).

Vectorised: one (B, B) Gram matrix S; the (P, B) exponents are gathered rows of S, and the "1 +" is a
zero column appended to a masked log-sum-exp.

pytorch-metric-learning's AngularLoss(alpha=40) (default MeanReducer, one term per positive pair)
agrees with this loss on all pairs, and on mined pairs with ``mined_negatives="batch"``. It
L2-normalises the anchors and positives but *not* the negatives (its ``ref_emb``), so it must be
given already-normalised embeddings to be compared; the study's embeddings are normalised.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..geometry.tuples import label_masks
from .base import LOSSES, Loss

MINED_NEGATIVES = ("anchor", "batch")


def log1p_sum_exp(exponent: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(P, B) exponents, (P, B) mask -> (P,) log(1 + sum over valid entries of exp(exponent))."""
    masked = exponent.masked_fill(~valid, float("-inf"))  # (P, B)
    one = exponent.new_zeros(len(exponent), 1)  # (P, 1): the "1 +" as exp(0)
    return torch.logsumexp(torch.cat([masked, one], dim=1), dim=1)  # (P,)


@LOSSES.register("angular")
class AngularLoss(Loss):
    """Angular loss (Wang et al. 2017), N-pair form: bound the angle at the negative by alpha."""

    consumes = "pairs"

    def __init__(self, alpha: float = 40.0, with_npair: bool = False, angular_weight: float = 2.0,
                 mined_negatives: str = "anchor", reduction: str = "mean"):
        super().__init__(reduction)
        if not 0 < alpha < 90:
            raise ConfigError(f"angular alpha is an angle in degrees strictly between 0 and 90, got {alpha}")
        if not angular_weight > 0:
            raise ConfigError(f"angular angular_weight must be positive (the paper uses 2), got {angular_weight}")
        if mined_negatives not in MINED_NEGATIVES:
            raise ConfigError(f"unknown angular mined_negatives {mined_negatives!r}; "
                              f"valid values: {', '.join(MINED_NEGATIVES)}")
        self.alpha = float(alpha)
        self.with_npair = bool(with_npair)
        self.angular_weight = float(angular_weight)
        self.mined_negatives = mined_negatives
        self.sq_tan = math.tan(math.radians(self.alpha)) ** 2

    def negatives(self, labels: torch.Tensor, pairs) -> torch.Tensor:
        """(B, B) bool: [a, n] when n is a negative the anchor a is compared with."""
        if self.mined_negatives == "batch":
            return label_masks(labels)[1]
        n = len(labels)
        mask = torch.zeros(n, n, dtype=torch.bool, device=labels.device)  # (B, B)
        mask[pairs.neg_a, pairs.neg_b] = True
        return mask

    def terms(self, embeddings, labels, pairs):
        a, p = pairs.pos_a, pairs.pos_b  # (P,)
        if len(a) == 0:
            return {"angular": embeddings.new_zeros(0)}
        sim = embeddings @ embeddings.T  # (B, B)
        valid = self.negatives(labels, pairs)[a]  # (P, B)
        sim_ap = sim[a, p][:, None]  # (P, 1)
        f = 4 * self.sq_tan * (sim[a] + sim[p]) - 2 * (1 + self.sq_tan) * sim_ap  # (P, B)
        terms = {"angular": log1p_sum_exp(f, valid)}  # (P,)
        if self.with_npair:
            terms["angular"] = self.angular_weight * terms["angular"]
            terms["n-pair"] = log1p_sum_exp(sim[a] - sim_ap, valid)  # (P,)
        return terms
