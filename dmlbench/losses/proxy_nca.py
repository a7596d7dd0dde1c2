"""ProxyNCA: neighbourhood component analysis against one learned proxy per class.

Paper: Y. Movshovitz-Attias, A. Toshev, T. K. Leung, S. Ioffe, S. Singh, "No Fuss Distance Metric
Learning using Proxies", ICCV 2017.

For an embedding x of class y, unit proxies p_c = q_c / |q_c| (q: the learned (C, D) parameter) and
squared Euclidean distances d_c = |x - p_c|^2, with scale s:

    L(x, y) = -log( exp(-s d_y) / sum_{z != y} exp(-s d_z) ) = s d_y + logsumexp_{z != y}(-s d_z)

averaged over the batch. As in the paper the denominator runs over the negative proxies only, so a
sample's loss can be negative (use the default "mean" reduction, not "mean_nonzero").

Defaults (the paper's): one proxy per class, s = 1 (the paper's loss has no scale), positive proxy
excluded from the denominator. Later reproductions scale the distances: Teh et al. (ProxyNCA++,
ECCV 2020) multiply unit embeddings and proxies by 3, i.e. s = 9; the Proxy-Anchor authors' code
runs pytorch-metric-learning's version with softmax_scale = 32.

Differences from pytorch-metric-learning's ProxyNCALoss (the oracle of the tests):
- pml takes the softmax over all proxies, the positive included (cross-entropy on -s d);
  ``include_positive_in_denominator=True`` reproduces it exactly;
- pml drops the samples whose softmax probability underflowed to exactly 0 (their loss would be
  infinite); we compute in log space, so such samples keep their large, finite loss;
- pml draws the raw proxies from N(0, 1); we draw them from N(0, 1/D), so that |q_c| is about 1.
  The proxies' directions, hence the initial loss, have the same distribution; only the raw norm,
  which scales the proxies' effective step size, differs. The paper does not specify it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import LOSSES, Loss


@LOSSES.register("proxy-nca")
class ProxyNCALoss(Loss):
    """ProxyNCA (Movshovitz-Attias et al. 2017): softmax over distances to one unit proxy per class."""

    consumes = "batch"
    needs_positives = False

    def __init__(self, num_classes: int, embedding_dim: int, softmax_scale: float = 1.0,
                 include_positive_in_denominator: bool = False, reduction: str = "mean"):
        super().__init__(reduction)
        if int(num_classes) < 1 or int(embedding_dim) < 1:
            raise ConfigError(f"proxy-nca needs num_classes >= 1 and embedding_dim >= 1, "
                              f"got num_classes={num_classes}, embedding_dim={embedding_dim}")
        if not include_positive_in_denominator and int(num_classes) < 2:
            raise ConfigError(f"proxy-nca with the positive proxy excluded from the denominator needs "
                              f"num_classes >= 2 (the denominator sums over the other classes), got {num_classes}")
        if not softmax_scale > 0:
            raise ConfigError(f"proxy-nca softmax_scale must be positive, got {softmax_scale}")
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.softmax_scale = float(softmax_scale)
        self.include_positive_in_denominator = bool(include_positive_in_denominator)
        self.proxies = nn.Parameter(torch.randn(self.num_classes, self.embedding_dim) / math.sqrt(self.embedding_dim))

    def terms(self, embeddings, labels, mined):
        proxies = F.normalize(self.proxies, dim=1).to(embeddings.dtype)  # (C, D), unit rows
        # -s |x - p_c|^2 = 2 s x.p_c - s (|x|^2 + 1) for unit p_c: the second part is the same for every
        # class of a row, so it cancels between numerator and denominator and is left out.
        logits = (2.0 * self.softmax_scale) * (embeddings @ proxies.T)  # (B, C)
        pos_logit = logits.gather(1, labels[:, None]).squeeze(1)  # (B,)
        if not self.include_positive_in_denominator:
            logits = logits.scatter(1, labels[:, None], float("-inf"))  # (B, C), negatives only
        return {"nca": torch.logsumexp(logits, dim=1) - pos_logit}  # (B,)
