"""ArcFace: softmax over scaled cosines with an additive angular margin on the target class.

Paper: J. Deng, J. Guo, N. Xue, S. Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019.

With theta_c the angle between the (unit) embedding x and the unit class weight w_c = W_c / |W_c|:

    L(x, y) = -log( exp(s cos(theta_y + m)) / (exp(s cos(theta_y + m)) + sum_{c != y} exp(s cos theta_c)) )

averaged over the batch. Defaults (the paper's): m = 0.5 rad (about 28.65 degrees), s = 64; class
weights without bias, drawn from N(0, 0.01^2) as in the authors' implementation (insightface).

theta_y + m > pi: cos(theta + m) would rise again with theta there, so, as the authors'
implementation does (a detail of the code, not of the paper's equations), the target logit becomes
cos(theta_y) - m sin(m) when theta_y > pi - m; the logit then keeps decreasing in theta (with a
downward step of cos(m) + m sin(m) - 1, 0.117 for m = 0.5, at the switch). cos(theta_y + m) is
computed as cos(theta_y) cos(m) - sin(theta_y) sin(m) with sin(theta_y) = sqrt(1 - cos^2), whose
gradient is kept finite (0) where the embedding coincides with its class weight.

pytorch-metric-learning's ArcFaceLoss(num_classes, embedding_size, margin, scale) is the same loss
with two differences of convention: its margin is in degrees (default 28.6, i.e. 0.4992 rad, not
exactly the paper's 0.5 rad; ``margin=math.degrees(0.5)`` gives the paper's), and it stores the
weights transposed, as a (D, C) matrix ``W`` drawn from N(0, 1). It switches to cos - m sin(m) when
theta > pi - m too, with theta computed by acos: the same branch up to rounding at the boundary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry.distances import safe_sqrt
from ..errors import ConfigError
from .base import LOSSES, Loss


@LOSSES.register("arcface")
class ArcFaceLoss(Loss):
    """ArcFace (Deng et al. 2019): additive angular margin m = 0.5 rad on the target, scale s = 64."""

    consumes = "batch"
    needs_positives = False

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.5, scale: float = 64.0,
                 reduction: str = "mean"):
        super().__init__(reduction)
        if int(num_classes) < 1 or int(embedding_dim) < 1:
            raise ConfigError(f"arcface needs num_classes >= 1 and embedding_dim >= 1, "
                              f"got num_classes={num_classes}, embedding_dim={embedding_dim}")
        if not 0 <= margin < math.pi / 2:
            raise ConfigError(f"arcface margin is an angle in radians and must be in [0, pi/2), got {margin} "
                              f"(the paper uses 0.5; pytorch-metric-learning's margin is in degrees)")
        if not scale > 0:
            raise ConfigError(f"arcface scale must be positive, got {scale}")
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.margin = float(margin)
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.randn(self.num_classes, self.embedding_dim) * 0.01)

    def terms(self, embeddings, labels, mined):
        weight = F.normalize(self.weight, dim=1).to(embeddings.dtype)  # (C, D)
        cos = embeddings @ weight.T  # (B, C)
        cos_y = cos.gather(1, labels[:, None]).squeeze(1).clamp(-1.0, 1.0)  # (B,)
        sin_y = safe_sqrt(1.0 - cos_y * cos_y)  # (B,)
        with_margin = cos_y * math.cos(self.margin) - sin_y * math.sin(self.margin)  # (B,) cos(theta + m)
        # theta_y > pi - m: theta + m passes pi; continue linearly instead (authors' implementation)
        target = torch.where(cos_y >= math.cos(math.pi - self.margin), with_margin,
                             cos_y - self.margin * math.sin(self.margin))  # (B,)
        logits = cos.scatter(1, labels[:, None], target[:, None])  # (B, C)
        return {"arcface": F.cross_entropy(self.scale * logits, labels, reduction="none")}  # (B,)
