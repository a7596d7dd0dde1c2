"""Lifted structured loss (Song, Xiang, Jegelka & Savarese, "Deep Metric Learning via Lifted Structured
Feature Embedding", CVPR 2016).

Every positive pair (i, j) is compared with all the negatives of *both* its ends at once, through a
smooth (log-sum-exp) upper bound of the hardest one. With Euclidean distances D and margin m
(the paper's alpha):

    J_ij = log( sum_{(i,k) in N} exp(m - D_ik) + sum_{(j,l) in N} exp(m - D_jl) ) + D_ij
    loss = 1 / (2 |P|) * sum_{(i,j) in P} max(0, J_ij)^2

P is the set of positive pairs, N the set of negative pairs. The paper uses m = 1 (the default).
Each ordered positive pair gives the term max(0, J_ij)^2 / 2 and the default reduction "mean"
averages them; as J_ij = J_ji, the mean over the ordered pairs of all pairs equals the paper's sum
over unordered pairs divided by 2|P|.

On the unit sphere every distance lies in [0, 2], while the paper's features were unnormalised: with
about 250 negatives per pair the log-sum-exp then stays near log 250 whatever the network does, and the
loss barely separates classes. ``scale`` (default 1: the embeddings as given) measures the distances on
a sphere of that radius, the embeddings times ``scale``; the margin is in those units (the default study
sets it, chosen on validation: studies/default.yaml).

Which negatives an end sees when a miner chose the pairs (``mined_negatives``):

- ``"either"`` (default): the paper's pair set is unordered, so the negatives of an end e are the
  distinct k such that (e, k) or (k, e) is a mined negative pair;
- ``"first"``: the mined negative pairs (e, k) whose *first* member is e, each occurrence counted
  (a pair mined twice enters the sum twice). This is pytorch-metric-learning's rule.

With all pairs (no miner) both rules give every negative of e exactly once.

The implementation needs only the (B, B) distance matrix: each end's masked log-sum-exp
L_e = log sum_k w_ek exp(m - D_ek) (w = the multiplicity of the negative pair, log w added to the
exponent) and then J_ij = logaddexp(L_i, L_j) + D_ij, numerically stable and O(B^2 + |P|).

Differences from pytorch-metric-learning's LiftedStructureLoss (``neg_margin = m``,
``pos_margin = 0``, its default MeanReducer), which agrees with this loss on all pairs and, with
``mined_negatives="first"``, on mined pairs, except that:

- a positive pair none of whose ends has a mined negative gives 0 here (the log of an empty sum is
  -inf, so J = -inf), whereas pytorch-metric-learning replaces the empty log-sum-exp by 0 and
  charges max(0, D_ij)^2 / 2;
- pytorch-metric-learning builds a (positive pairs x negative pairs) matrix, which costs
  O(|P| |N|) time and memory (about 100x slower at batch 128); this one is O(B^2).
"""

from __future__ import annotations

import torch

from ..geometry.distances import euclidean
from ..errors import ConfigError
from .base import LOSSES, Loss

MINED_NEGATIVES = ("either", "first")


@LOSSES.register("lifted-structure")
class LiftedStructureLoss(Loss):
    """Lifted structured loss (Song et al. 2016): smooth hinge of each positive pair against all the
    negatives of both its ends."""

    consumes = "pairs"

    def __init__(self, margin: float = 1.0, mined_negatives: str = "either", reduction: str = "mean",
                 scale: float = 1.0):
        super().__init__(reduction)
        if not margin > 0:
            raise ConfigError(f"lifted-structure margin must be positive (the paper uses 1), got {margin}")
        if not scale > 0:
            raise ConfigError(f"lifted-structure scale (the radius of the sphere distances are measured on) must be "
                              f"positive, got {scale}")
        self.scale = float(scale)
        if mined_negatives not in MINED_NEGATIVES:
            raise ConfigError(f"unknown lifted-structure mined_negatives {mined_negatives!r}; "
                              f"valid values: {', '.join(MINED_NEGATIVES)}")
        self.margin = float(margin)
        self.mined_negatives = mined_negatives

    def negative_weights(self, pairs, n: int, like: torch.Tensor) -> torch.Tensor:
        """(B, B) weight of negative k in the sum of end e: 0 (not a negative of e), 1, or, with the
        "first" rule, the number of times (e, k) was mined."""
        weights = like.new_zeros(n, n)  # (B, B)
        if self.mined_negatives == "first":
            weights.index_put_((pairs.neg_a, pairs.neg_b), like.new_ones(len(pairs.neg_a)), accumulate=True)
        else:
            weights[pairs.neg_a, pairs.neg_b] = 1.0
            weights = torch.maximum(weights, weights.T)
        return weights

    def terms(self, embeddings, labels, pairs):
        n = len(embeddings)
        dist = euclidean(embeddings * self.scale if self.scale != 1.0 else embeddings)  # (B, B)
        weights = self.negative_weights(pairs, n, dist.detach())  # (B, B)
        valid = weights > 0  # (B, B)
        has_negative = valid.any(dim=1)  # (B,)
        exponent = self.margin - dist + weights.clamp_min(1.0).log()  # (B, B)
        exponent = exponent.masked_fill(~valid, float("-inf"))
        # An end without negatives gets a harmless finite row here (its result is replaced by -inf
        # below), so that no -inf - (-inf) = NaN reaches the backward pass.
        exponent = exponent.masked_fill(~has_negative[:, None], 0.0)
        per_end = torch.logsumexp(exponent, dim=1)  # (B,): L_e = log sum_k w_ek exp(m - D_ek)
        per_end = per_end.masked_fill(~has_negative, float("-inf"))

        a, b = pairs.pos_a, pairs.pos_b  # (P,)
        some = has_negative[a] | has_negative[b]  # (P,): J is -inf (loss 0) when neither end has one
        l_a = torch.where(some, per_end[a], torch.zeros_like(per_end[a]))  # (P,)
        l_b = torch.where(some, per_end[b], torch.zeros_like(per_end[b]))  # (P,)
        j = torch.logaddexp(l_a, l_b) + dist[a, b]  # (P,)
        values = torch.where(some, torch.relu(j).pow(2) / 2, torch.zeros_like(j))  # (P,)
        return {"lifted": values}
