"""Class-balanced batches: P classes x K images each (Hermans, Beyer & Leibe 2017, "PK sampling").

A pass over the data: each class's images are shuffled and cut into chunks of K; batches are formed
by drawing P distinct classes with probability proportional to their remaining chunks and taking one
chunk of each, until fewer than P classes have chunks left. So within a pass no image repeats and
all but the last few chunks are used. Stated rule for a class with fewer than K images: its chunk is
filled by drawing with replacement (one chunk per pass).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .base import SAMPLERS, StreamSampler, as_labels, class_chunks, draw_classes


@SAMPLERS.register("pk")
class PKSampler(StreamSampler):
    """P classes x K images per batch, each pass over the data without repeats."""

    def __init__(self, labels: Sequence[int] | np.ndarray | torch.Tensor, P: int, K: int, *,
                 batches_per_epoch: int | None = None, generator: torch.Generator | None = None,
                 super_labels: Sequence[int] | np.ndarray | torch.Tensor | None = None):
        super().__init__(batches_per_epoch, generator)
        labels = as_labels(labels)
        classes = torch.unique(labels)
        if P < 1 or K < 1:
            raise ConfigError(f"P and K must be positive, got P={P}, K={K}")
        if P > len(classes):
            raise ConfigError(f"P={P} classes per batch but the data has only {len(classes)} classes")
        self.P, self.K = int(P), int(K)
        self.members = [torch.nonzero(labels == c, as_tuple=True)[0] for c in classes]

    def one_pass(self) -> list[list[int]]:
        chunks = class_chunks(self.members, self.K, self.generator)
        remaining = torch.tensor([len(c) for c in chunks])
        batches = []
        while (chosen := draw_classes(remaining, self.P, self.generator)) is not None:
            batch = []
            for c in chosen:
                remaining[c] -= 1
                batch.extend(chunks[c][int(remaining[c])])
            batches.append(batch)
        return batches
