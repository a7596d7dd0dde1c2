"""Normalised softmax: cross-entropy over cosine similarities to unit class weights, with temperature.

Paper: A. Zhai, H.-Y. Wu, "Classification is a Strong Baseline for Deep Metric Learning", BMVC 2019.

For an (already unit) embedding x of class y and unit class weights w_c = W_c / |W_c|:

    L(x, y) = -log( exp(x . w_y / T) / sum_c exp(x . w_c / T) )

averaged over the batch. Defaults (the paper's): temperature T = 0.05; class weights without bias,
initialised as the authors' code does (uniform in +-1/sqrt(D), nn.Linear's rule) and trained at the
model's learning rate (the authors use a single learning rate for all parameters).

pytorch-metric-learning's NormalizedSoftmaxLoss(num_classes, embedding_size, temperature=0.05) is the
same loss; it stores the weights transposed, as a (D, C) matrix ``W``, and initialises them from
N(0, 1) (only the raw norm differs: the loss sees unit weights). The tests copy our (C, D) weights
into its ``W`` as the transpose.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import LOSSES, Loss


@LOSSES.register("normalized-softmax")
class NormalizedSoftmaxLoss(Loss):
    """Normalised softmax (Zhai & Wu 2019): cosine-similarity classifier with temperature 0.05."""

    consumes = "batch"
    needs_positives = False

    def __init__(self, num_classes: int, embedding_dim: int, temperature: float = 0.05, reduction: str = "mean"):
        super().__init__(reduction)
        if int(num_classes) < 1 or int(embedding_dim) < 1:
            raise ConfigError(f"normalized-softmax needs num_classes >= 1 and embedding_dim >= 1, "
                              f"got num_classes={num_classes}, embedding_dim={embedding_dim}")
        if not temperature > 0:
            raise ConfigError(f"normalized-softmax temperature must be positive, got {temperature}")
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.temperature = float(temperature)
        bound = 1.0 / math.sqrt(self.embedding_dim)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim).uniform_(-bound, bound))

    def terms(self, embeddings, labels, mined):
        weight = F.normalize(self.weight, dim=1).to(embeddings.dtype)  # (C, D)
        logits = (embeddings @ weight.T) / self.temperature  # (B, C)
        return {"softmax": F.cross_entropy(logits, labels, reduction="none")}  # (B,)
