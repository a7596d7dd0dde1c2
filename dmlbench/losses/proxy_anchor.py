"""Proxy-Anchor loss: each class proxy is an anchor that pulls its batch samples and pushes the others.

Paper: S. Kim, D. Kim, M. Cho, S. Kwak, "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020.

With s(x, p) the cosine similarity between an embedding and a proxy, P the set of all proxies, P+
the proxies with at least one sample of their class in the batch, X_p+ / X_p- the batch samples of
/ not of p's class:

    L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta)))
      + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + delta)))

Defaults (the paper's): alpha = 32, delta = 0.1 (``margin``), proxies initialised with Kaiming
normal (fan-out, as in the authors' code: std sqrt(2 / num_classes)) and trained at 100 times the
model's learning rate (``param_lr_scale = 100``, the authors' optimiser setting).

The two terms are returned per proxy (the positive term only for the proxies in P+), so the default
"mean" reduction gives exactly the paper's 1/|P+| and 1/|P| normalisations.

pytorch-metric-learning's ProxyAnchorLoss(num_classes, embedding_size, margin=0.1, alpha=32) computes
the same quantity (its DivisorReducer divides by |P+| and |P|); the tests compare values and
gradients with respect to embeddings and proxies with identical proxies copied into both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import LOSSES, Loss


def log1p_sum_exp(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(N, C) logits, (N, C) bool mask -> (C,) log(1 + sum over kept rows of exp(logits)), stably.

    A zero row stands for the "1 +": the result is finite (0) for a column with no kept entry."""
    masked = logits.masked_fill(~keep, float("-inf"))  # (N, C)
    padded = torch.cat([masked, masked.new_zeros(1, masked.shape[1])], dim=0)  # (N + 1, C)
    return torch.logsumexp(padded, dim=0)  # (C,)


@LOSSES.register("proxy-anchor")
class ProxyAnchorLoss(Loss):
    """Proxy-Anchor (Kim et al. 2020): soft, batch-wide pull/push around each class proxy."""

    consumes = "batch"
    needs_positives = False
    param_lr_scale = 100.0

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.1, alpha: float = 32.0,
                 reduction: str = "mean"):
        super().__init__(reduction)
        if int(num_classes) < 1 or int(embedding_dim) < 1:
            raise ConfigError(f"proxy-anchor needs num_classes >= 1 and embedding_dim >= 1, "
                              f"got num_classes={num_classes}, embedding_dim={embedding_dim}")
        if not alpha > 0:
            raise ConfigError(f"proxy-anchor alpha (the scale) must be positive, got {alpha}")
        if not margin >= 0:
            raise ConfigError(f"proxy-anchor margin (delta) must be >= 0, got {margin}")
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.margin = float(margin)
        self.alpha = float(alpha)
        self.proxies = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def terms(self, embeddings, labels, mined):
        proxies = F.normalize(self.proxies, dim=1).to(embeddings.dtype)  # (C, D)
        cos = embeddings @ proxies.T  # (B, C)
        positive = F.one_hot(labels, self.num_classes).bool()  # (B, C)
        pos = log1p_sum_exp(-self.alpha * (cos - self.margin), positive)  # (C,)
        neg = log1p_sum_exp(self.alpha * (cos + self.margin), ~positive)  # (C,)
        with_positives = positive.any(dim=0)  # (C,)
        return {"positive": pos[with_positives], "negative": neg}
