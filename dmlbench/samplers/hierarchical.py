"""Hierarchical class sampling for datasets with super-classes (Stanford Online Products, In-Shop):
each batch is drawn from a few super-classes, so its negatives are mostly of the same kind (a bike
part against other bike parts), i.e. harder than P x K batches over all classes give (the
hierarchical sampling used for SOP by, among others, Cakir et al. 2019 and Roth et al. 2020).

Per batch: ``super_per_batch`` super-classes are drawn with probability proportional to their
classes' remaining chunks, then P classes among theirs the same way, then one chunk of K images of
each (see pk.py for chunks and the rule for small classes). When the drawn super-classes hold fewer
than P classes with chunks left, the batch takes its P classes from all super-classes. A pass ends
when fewer than P classes have chunks left.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .base import SAMPLERS, as_labels, class_chunks, draw_classes
from .pk import PKSampler


@SAMPLERS.register("hierarchical")
class HierarchicalSampler(PKSampler):
    """P x K batches drawn from a few super-classes at a time (SOP, In-Shop)."""

    def __init__(self, labels: Sequence[int] | np.ndarray | torch.Tensor, P: int, K: int, *,
                 super_labels: Sequence[int] | np.ndarray | torch.Tensor | None = None, super_per_batch: int = 2,
                 batches_per_epoch: int | None = None, generator: torch.Generator | None = None):
        if super_labels is None:
            raise ConfigError("the hierarchical sampler needs super-class labels, and this dataset has none; "
                              "valid samplers for it: pk, random")
        super().__init__(labels, P, K, batches_per_epoch=batches_per_epoch, generator=generator)
        labels, super_labels = as_labels(labels), as_labels(super_labels)
        if len(super_labels) != len(labels):
            raise ConfigError(f"{len(super_labels)} super-class labels for {len(labels)} images")
        if super_per_batch < 1:
            raise ConfigError(f"super_per_batch must be positive, got {super_per_batch}")
        classes = torch.unique(labels)
        owners = [torch.unique(super_labels[labels == c]) for c in classes]  # each class's super-class
        if any(len(o) != 1 for o in owners):
            raise ConfigError("a class spans several super-classes: super-class labels must be per class")
        self.supers, self.class_super = torch.unique(torch.cat(owners), return_inverse=True)
        self.super_per_batch = min(int(super_per_batch), len(self.supers))

    def one_pass(self) -> list[list[int]]:
        chunks = class_chunks(self.members, self.K, self.generator)
        remaining = torch.tensor([len(c) for c in chunks])
        batches = []
        while int((remaining > 0).sum()) >= self.P:
            per_super = torch.zeros(len(self.supers), dtype=torch.double).index_add_(
                0, self.class_super, remaining.double())
            picked = torch.multinomial(per_super, min(self.super_per_batch, int((per_super > 0).sum())),
                                       replacement=False, generator=self.generator)
            allowed = torch.isin(self.class_super, picked).double()
            chosen = draw_classes(remaining, self.P, self.generator, allowed)
            if chosen is None:
                chosen = draw_classes(remaining, self.P, self.generator)
            batch = []
            for c in chosen:
                remaining[c] -= 1
                batch.extend(chunks[c][int(remaining[c])])
            batches.append(batch)
        return batches
