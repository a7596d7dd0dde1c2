"""Center loss, jointly with a softmax classifier: pull each embedding to its class centre.

Paper: Y. Wen, K. Zhang, Z. Li, Y. Qiao, "A Discriminative Feature Learning Approach for Deep Face
Recognition", ECCV 2016.

The paper's objective over a mini-batch of m samples (its Eq. 5) is a sum over the batch:

    L = L_S + lambda L_C,   L_S = -sum_i log softmax(W x_i + b)_{y_i},   L_C = 1/2 sum_i |x_i - c_{y_i}|^2

The authors' Caffe layers average both sums over the mini-batch (the softmax-with-loss layer by
default, the center-loss layer explicitly, dividing by m); we do the same, so with the default "mean"
reduction

    loss = mean_i CE(W x_i + b, y_i) + (lambda / 2) mean_i |x_i - c_{y_i}|^2

which is the paper's Eq. 5 divided by m (the same optimum; only the gradient scale differs).

The classifier (W, b: a linear layer with bias) is trained by the optimiser. The centres are not: they
are a buffer (saved in the state_dict with the model) updated after each training forward pass
(``self.training``; never in eval mode) with the paper's rule (its Eq. 4 and Algorithm 1)

    delta_c_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j]),     c_j <- c_j - alpha delta_c_j

from the centres the loss was computed with and the batch's (detached) embeddings. The update
replaces the buffer's values in place; the loss holds only a gathered copy of the centres, so
backpropagation afterwards is unaffected.

Features: as in the paper, the loss works on the network's raw (unnormalised) features, the embedding
head's output before L2 normalisation (``embedding_space = "raw"``; evaluation still uses the
normalised embedding). On unit-norm embeddings the centre term is at most 2 lambda per sample
(0.006 at the default lambda), which made the loss plain softmax cross-entropy (version 1 of this
loss; version 2 works on raw features).

Defaults (the paper's face-recognition experiments): lambda = 0.003, alpha = 0.5. The paper
does not state the centres' initialisation; we use the Xavier rule of the authors' Caffe example
(uniform in +-sqrt(3 / D)), which gives centres of about unit norm.

pytorch-metric-learning has no center loss; the tests check a brute-force loop and a hand-worked
centre update.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import LOSSES, Loss


@LOSSES.register("center")
class CenterLoss(Loss):
    """Center loss + softmax (Wen et al. 2016): centres updated by the paper's rule, not by the optimiser."""

    consumes = "batch"
    needs_positives = False
    embedding_space = "raw"  # the paper's unnormalised features
    version = 2  # 1: computed on L2-normalised embeddings, where the centre term was at most 2 lambda

    def __init__(self, num_classes: int, embedding_dim: int, lambda_c: float = 0.003, alpha: float = 0.5,
                 reduction: str = "mean"):
        super().__init__(reduction)
        if int(num_classes) < 1 or int(embedding_dim) < 1:
            raise ConfigError(f"center needs num_classes >= 1 and embedding_dim >= 1, "
                              f"got num_classes={num_classes}, embedding_dim={embedding_dim}")
        if not lambda_c >= 0:
            raise ConfigError(f"center lambda_c (weight of the center term) must be >= 0, got {lambda_c}")
        if not 0 <= alpha <= 1:
            raise ConfigError(f"center alpha (the centres' update rate) must be in [0, 1], got {alpha}")
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.lambda_c = float(lambda_c)
        self.alpha = float(alpha)
        self.classifier = nn.Linear(self.embedding_dim, self.num_classes, bias=True)
        bound = math.sqrt(3.0 / self.embedding_dim)
        self.register_buffer("centers", torch.empty(self.num_classes, self.embedding_dim).uniform_(-bound, bound))

    def terms(self, embeddings, labels, mined):
        logits = self.classifier(embeddings)  # (B, C)
        centers = self.centers[labels].to(embeddings.dtype)  # (B, D), a copy
        return {
            "softmax": F.cross_entropy(logits, labels, reduction="none"),  # (B,)
            "center": 0.5 * self.lambda_c * (embeddings - centers).pow(2).sum(dim=1),  # (B,)
        }

    def forward(self, embeddings, labels, mined=None):
        value = super().forward(embeddings, labels, mined)
        if self.training:
            self.update_centers(embeddings.detach(), labels.to(embeddings.device))
        return value

    @torch.no_grad()
    def update_centers(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """The paper's rule: c_j <- c_j - alpha * sum_{y_i = j}(c_j - x_i) / (1 + n_j)."""
        x = embeddings.to(self.centers.dtype)  # (B, D)
        counts = torch.bincount(labels, minlength=self.num_classes).to(x.dtype)[:, None]  # (C, 1)
        sums = torch.zeros_like(self.centers).index_add_(0, labels, x)  # (C, D)
        delta = (counts * self.centers - sums) / (1.0 + counts)  # (C, D)
        self.centers.sub_(self.alpha * delta)
