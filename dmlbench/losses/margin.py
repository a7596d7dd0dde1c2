"""Margin-based loss (Wu, Manmatha, Smola & Krähenbühl, "Sampling Matters in Deep Embedding
Learning", ICCV 2017), with a learnable boundary β.

For a pair (i, j) at Euclidean distance D_ij, with margin α and boundary β:

    positive pair:  [D_ij - β + α]_+          negative pair:  [β - D_ij + α]_+

plus the paper's regulariser ν β(i) for every pair, where β(i) is the global β or, per class, the β
of the anchor's class, β_{c(i)}: the objective is Σ_(i,j) ℓ(i,j) + ν β(i). As in the authors'
released implementation (and pytorch-metric-learning's DivisorReducer), the sum of the pair terms
and of the regulariser is divided by the number of active pairs (pairs with a positive hinge) under
the default ``reduction="mean_nonzero"``; ``"mean"`` divides by the number of pairs and ``"sum"``
by 1. The positive and negative pairs share this one divisor, so the loss returns a single term
that is already reduced.

Defaults, from the paper and its authors' code (MXNet Gluon example ``embedding_learning``):
α = 0.2 (``margin``), initial β = 1.2 (``beta``), ν = 0 (``nu``), β learned (``learn_beta``) and
class-specific (``per_class``, which needs ``num_classes``; the training loop passes it). The
paper's per-image offsets β^(img) are not implemented.

Learning rate of β. The authors train β with SGD (momentum 0.9) at learning rate 0.1 on a gradient
rescaled by 1/batch size, while the network trains with Adam at 1e-4. That 1000x ratio is between
two different optimisers and does not carry over to this project, where one optimiser (Adam by
default) updates every parameter group: Adam's step is about the learning rate whatever the
gradient's scale, so a 1000x rate would move β by about 1000 x lr per step (1.0 at lr = 1e-3).
``param_lr_scale`` is therefore 1 (β steps at the model's rate); a run's ``loss_lr`` sets another.

Differences from pytorch-metric-learning's MarginLoss: pml works on triplets (all of them when no
miner is given), so each pair counts once per triplet containing it; this loss works on pairs (all
ordered pairs when no miner is given; a triplet miner's triplets give one positive and one negative
pair each, which reproduces pml's sums exactly). pml adds ν β once per triplet for class-specific
β (ours: once per pair, so pml's ``nu`` = 2ν on triplet-derived pairs) and ν β once, undivided, for
a global β (ours: once per pair, divided like the pair terms). When no pair is active pml returns 0;
here the divisor is clamped at 1 (the regulariser alone remains).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..geometry.distances import euclidean
from ..errors import ConfigError
from ..geometry.tuples import Pairs
from .base import LOSSES, REDUCTIONS, Loss


@LOSSES.register("margin")
class MarginLoss(Loss):
    """Margin-based loss (Wu et al. 2017): positives within β - α, negatives beyond β + α, β learned."""

    consumes = "pairs"
    paper_miner = "distance-weighted"
    param_lr_scale = 1.0

    def __init__(self, margin: float = 0.2, beta: float = 1.2, nu: float = 0.0, learn_beta: bool = True,
                 per_class: bool = True, num_classes: int | None = None, reduction: str = "mean_nonzero"):
        super().__init__(reduction)
        for name, value in (("margin", margin), ("beta", beta), ("nu", nu)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"margin loss {name} must be a finite number, got {value!r}")
        if margin < 0:
            raise ConfigError(f"margin loss margin (alpha) must be >= 0, got {margin}")
        if beta <= 0:
            raise ConfigError(f"margin loss beta (initial boundary) must be > 0, got {beta}")
        if nu < 0:
            raise ConfigError(f"margin loss nu (beta regularisation) must be >= 0, got {nu}")
        for name, value in (("learn_beta", learn_beta), ("per_class", per_class)):
            if not isinstance(value, bool):
                raise ConfigError(f"margin loss {name} must be true or false, got {value!r}")
        if per_class and (num_classes is None or isinstance(num_classes, bool) or not isinstance(num_classes, int)
                          or num_classes < 1):
            raise ConfigError(f"margin loss per_class=True needs num_classes, a positive integer (the number of "
                              f"training classes), got num_classes={num_classes!r}; or set per_class=False")
        self.margin = float(margin)
        self.nu = float(nu)
        self.learn_beta = learn_beta
        self.per_class = per_class
        self.num_classes = num_classes if per_class else None
        initial = torch.full((num_classes if per_class else 1,), float(beta))  # (C,) or (1,)
        if learn_beta:
            self.beta = nn.Parameter(initial)
        else:
            self.register_buffer("beta", initial)

    def terms(self, embeddings, labels, pairs: Pairs):
        n = len(embeddings)
        dist = euclidean(embeddings)  # (B, B)
        if self.per_class:
            if n and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(f"margin loss with per-class beta needs labels in 0..{self.num_classes - 1}, "
                                 f"got labels in {int(labels.min())}..{int(labels.max())}")
            beta = self.beta[labels].to(embeddings.dtype)[:, None]  # (B, 1): the boundary of each anchor's class
        else:
            beta = self.beta.to(embeddings.dtype)[:, None]  # (1, 1)
        # A pair's term depends only on (anchor, other), so mined pairs are counted into (B, B)
        # multiplicity matrices (a pair mined twice counts twice) and the hinges are computed densely.
        pos_count = torch.bincount(pairs.pos_a * n + pairs.pos_b, minlength=n * n).view(n, n).to(dist.dtype)  # (B, B)
        neg_count = torch.bincount(pairs.neg_a * n + pairs.neg_b, minlength=n * n).view(n, n).to(dist.dtype)  # (B, B)
        pos = torch.relu(dist - beta + self.margin)  # (B, B) [D_ij - β + α]_+
        neg = torch.relu(beta - dist + self.margin)  # (B, B) [β - D_ij + α]_+
        total = (pos_count * pos).sum() + (neg_count * neg).sum()
        if self.nu:
            per_anchor = (pos_count.sum(dim=1) + neg_count.sum(dim=1))[:, None]  # (B, 1) pairs of each anchor
            total = total + self.nu * (per_anchor * beta).sum()  # Σ over pairs of ν β(anchor)
        if self.reduction == "mean_nonzero":
            divisor = ((pos_count * (pos > 0)).sum() + (neg_count * (neg > 0)).sum()).clamp_min(1)
        elif self.reduction == "mean":
            divisor = max(len(pairs.pos_a) + len(pairs.neg_a), 1)
        elif self.reduction == "sum":
            divisor = 1
        else:  # pragma: no cover - checked in Loss.__init__
            raise ConfigError(f"unknown reduction {self.reduction!r}; valid reductions: {', '.join(REDUCTIONS)}")
        return {"margin": total / divisor}  # 0-d: already reduced with the shared divisor
