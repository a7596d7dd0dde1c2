"""The loss contract: what every loss of the study shares.

A loss is an ``nn.Module`` called as ``loss(embeddings, labels, mined)`` that returns a scalar. It
declares what it consumes:

- ``"pairs"``: positive and negative pairs (:class:`dmlbench.geometry.tuples.Pairs`);
- ``"triplets"``: anchor-positive-negative triplets (:class:`dmlbench.geometry.tuples.Triplets`);
- ``"batch"``: the whole batch, no miner (proxy, classifier and class-statistics losses);
- ``"any"``: whatever the miner produces, pairs or triplets (the pytorch-metric-learning adapter).

Subclasses implement :meth:`Loss.terms`, returning named per-element loss tensors (for a pair loss:
one value per positive pair and one per negative pair). A term may also be a 0-d tensor that the
loss has already reduced the way its paper defines; reductions leave such a term as it is. The base
class checks shapes, builds all pairs/triplets when no miner is used, reduces each term and sums the
reductions. Reductions:

- ``"mean"``: the mean over all elements of the term;
- ``"mean_nonzero"``: the mean over elements with a positive loss (the average over "active"
  pairs/triplets; 0 when none is active), as pytorch-metric-learning's AvgNonZeroReducer;
- ``"sum"``: the sum.

A loss also declares the space it works in, ``embedding_space``: ``"normalized"`` (the default: the
L2-normalised embeddings that evaluation uses) or ``"raw"`` (the network head's output before the
normalisation, for losses whose papers use unnormalised features: center loss, N-pairs). Training
feeds each loss its space (dmlbench.training.loop.optimisation_step); miners always mine on the
normalised embeddings (dmlbench.criterion.Criterion).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from ..geometry.tuples import Pairs, Triplets, all_pairs, all_triplets

REDUCTIONS = ("mean", "mean_nonzero", "sum")
CONSUMES = ("pairs", "triplets", "batch", "any")
EMBEDDING_SPACES = ("normalized", "raw")


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.sum() / max(values.numel(), 1)
    if reduction == "mean_nonzero":
        return values.sum() / (values > 0).sum().clamp_min(1)
    raise ConfigError(f"unknown reduction {reduction!r}; valid reductions: {', '.join(REDUCTIONS)}")


class Loss(nn.Module):
    """Base class of every loss; see the module docstring for the contract."""

    consumes: ClassVar[str] = "pairs"
    registry_name: ClassVar[str] = ""
    # What it computes, as a number that a run's identity includes: bump it when that changes, so that
    # runs of the old behaviour are never reused as this one's (1, the first, is left out of the hash).
    version: ClassVar[int] = 1
    # Needs two or more images of a class in a batch (K >= 2): true of every pair or triplet loss.
    needs_positives: ClassVar[bool] = True
    # The loss's own parameters (proxies, classifier weights, beta) train at this multiple of the
    # model's learning rate, as their papers prescribe, unless the run sets loss_lr.
    param_lr_scale: ClassVar[float] = 1.0
    # The miner that implements the sampling of the loss's own paper ("none": every tuple of the
    # batch, or the loss selects its tuples itself). The default study runs each loss with it.
    paper_miner: ClassVar[str] = "none"
    # The embeddings it is computed on: "normalized" (unit L2 norm, what evaluation uses) or "raw" (the
    # network head's output before normalisation, as in the papers of center loss and N-pairs).
    embedding_space: ClassVar[str] = "normalized"

    def __init__(self, reduction: str = "mean_nonzero"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ConfigError(f"unknown reduction {reduction!r}; valid reductions: {', '.join(REDUCTIONS)}")
        self.reduction = reduction

    def terms(self, embeddings: torch.Tensor, labels: torch.Tensor, mined) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None = None) -> torch.Tensor:
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be (batch, dim), got shape {tuple(embeddings.shape)}")
        if labels.ndim != 1 or len(labels) != len(embeddings):
            raise ValueError(f"labels must be (batch,) = ({len(embeddings)},), got shape {tuple(labels.shape)}")
        labels = labels.to(embeddings.device)
        if mined is None and self.consumes in ("pairs", "triplets"):
            mined = self.all_tuples(labels)
        elif self.consumes == "pairs" and isinstance(mined, Triplets):
            mined = mined.to_pairs()
        total = embeddings.sum() * 0.0  # keeps the graph when nothing is mined
        for values in self.terms(embeddings, labels, mined).values():
            if values.numel():
                total = total + reduce(values, self.reduction)
        return total

    def all_tuples(self, labels: torch.Tensor) -> Pairs | Triplets | None:
        if self.consumes == "pairs":
            return all_pairs(labels)
        if self.consumes == "triplets":
            return all_triplets(labels)
        return None


LOSSES = Registry("loss", base=Loss)
