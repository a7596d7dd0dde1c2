"""Multi-class N-pair loss (Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
Objective", NeurIPS 2016).

The batch is read as N anchor-positive pairs (f_i, f_i^+) of N distinct classes. Each anchor must
pick its own positive out of the N positives, a softmax cross-entropy over dot-product similarities;
the paper adds an L2 penalty on the embeddings, which keeps their norms from growing without bound:

    loss = 1/N sum_i log(1 + sum_{j != i} exp(f_i . f_j^+ - f_i . f_i^+))
           + lambda * 1/(2N) sum_i (|f_i|^2 + |f_i^+|^2)

Default: lambda = 0.002, the value of the loss's reference implementations (TensorFlow's and
Paddle's ``npairs_loss``; their penalty is lambda/4 (mean |f_i|^2 + mean |f_i^+|^2), half of the one
above, whose lambda multiplies the plain mean squared norm); ``l2_weight=0`` removes the penalty.

Features: as in the paper, the loss works on the network's raw (unnormalised) features, the embedding
head's output before L2 normalisation (``embedding_space = "raw"``; evaluation still uses the
normalised embedding), with temperature 1 (plain dot products). On unit-norm embeddings every logit
is in [-1, 1], so the loss cannot fall below log(1 + (N - 1) e^-2) (0.43 for N = 5 classes) and the
regulariser is the constant lambda with no gradient (version 1 of this loss; version 2 works on raw
features, where the regulariser is what keeps the norms from growing without bound).

One pair per class: from the positive pairs (all pairs, or a miner's), in their order, the first
pair whose anchor has label c is class c's pair. With all pairs (row-major order) that is the
first and the second image of each class in the batch. Classes with a single image in the batch
contribute no pair. Mined negative pairs are not used: the negatives of an anchor are the other
pairs' positives, as in the paper's batch construction.

pytorch-metric-learning's NPairsLoss (with ``embedding_regularizer=LpRegularizer(p=2, power=2)``,
``embedding_reg_weight=lambda``, its default MeanReducer) chooses the pairs by the same rule and
agrees with this loss, except that its regulariser averages |x|^2 over *every* embedding of the
batch (including those not in a chosen pair), whereas here it covers the 2N embeddings the loss is
defined on, as in the paper. The two coincide on batches of exactly two images per class and
whenever the embeddings are L2-normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import LOSSES, Loss


def one_pair_per_class(labels: torch.Tensor, pos_a: torch.Tensor, pos_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each label among the anchors of the (P,) positive pairs, its first pair in their order:
    (N,) anchor and (N,) positive indices, by increasing label."""
    if len(pos_a) == 0:
        return pos_a, pos_b
    anchor_labels = labels[pos_a]  # (P,)
    classes, which = torch.unique(anchor_labels, return_inverse=True)  # (N,), (P,)
    order = torch.arange(len(pos_a), device=pos_a.device)  # (P,)
    first = torch.full((len(classes),), len(pos_a), dtype=order.dtype, device=order.device)
    first = first.scatter_reduce(0, which, order, reduce="amin")  # (N,)
    return pos_a[first], pos_b[first]


@LOSSES.register("n-pairs")
class NPairsLoss(Loss):
    """Multi-class N-pair loss (Sohn 2016): softmax over one positive per class, plus an L2 penalty."""

    consumes = "pairs"
    embedding_space = "raw"  # the paper's unnormalised features
    version = 2  # 1: computed on L2-normalised embeddings, with logits in [-1, 1] and a constant regulariser

    def __init__(self, l2_weight: float = 0.002, reduction: str = "mean"):
        super().__init__(reduction)
        if not l2_weight >= 0:
            raise ConfigError(f"n-pairs l2_weight must be >= 0 (the paper's lambda is 0.002), got {l2_weight}")
        self.l2_weight = float(l2_weight)

    def terms(self, embeddings, labels, pairs):
        anchor, positive = one_pair_per_class(labels, pairs.pos_a, pairs.pos_b)  # (N,), (N,)
        if len(anchor) == 0:
            return {"n-pairs": embeddings.new_zeros(0)}
        f, f_pos = embeddings[anchor], embeddings[positive]  # (N, D), (N, D)
        logits = f @ f_pos.T  # (N, N): [i, j] = f_i . f_j^+
        target = torch.arange(len(anchor), device=embeddings.device)  # (N,)
        terms = {"n-pairs": F.cross_entropy(logits, target, reduction="none")}  # (N,)
        if self.l2_weight:
            squared_norms = torch.cat([f, f_pos]).pow(2).sum(dim=1)  # (2N,)
            terms["l2"] = self.l2_weight * squared_norms.mean()  # 0-d, already reduced
        return terms
