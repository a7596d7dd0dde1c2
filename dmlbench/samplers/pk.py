"""Class-balanced batches: P classes x K images each (Hermans et al. 2017; "PK sampling").

Each batch draws P distinct classes, then K images of each. Images of a class are served from a
shuffled queue that is refilled only when exhausted, so within an epoch no image repeats until its
class has been gone through. Rule for a class with fewer than K images: its K slots are filled by
drawing with replacement from the class. Classes are drawn uniformly. All randomness comes from the
explicit ``generator``; the same seed gives the same batches.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import ConfigError


class PKSampler(Sampler[list[int]]):
    """Batch sampler yielding lists of P x K dataset indices (P classes, K images each)."""

    def __init__(self, labels: Sequence[int] | np.ndarray | torch.Tensor, P: int, K: int, *,
                 batches_per_epoch: int | None = None, generator: torch.Generator | None = None):
        labels = torch.as_tensor(np.asarray(labels)).long()
        classes = torch.unique(labels)
        if P < 1 or K < 1:
            raise ConfigError(f"P and K must be positive, got P={P}, K={K}")
        if P > len(classes):
            raise ConfigError(f"P={P} classes per batch but the data has only {len(classes)} classes")
        self.P, self.K = int(P), int(K)
        self.classes = classes
        self.members = [torch.nonzero(labels == c, as_tuple=True)[0] for c in classes]
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.batches_per_epoch = int(batches_per_epoch) if batches_per_epoch else max(len(labels) // (P * K), 1)
        self._queues: list[list[int]] = [[] for _ in classes]

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _take(self, c: int) -> list[int]:
        members = self.members[c]
        if len(members) < self.K:  # stated rule: with replacement
            draw = torch.randint(len(members), (self.K,), generator=self.generator)
            return members[draw].tolist()
        queue = self._queues[c]
        if len(queue) < self.K:
            # Keep the leftovers first, then a fresh permutation without them, so no image repeats
            # within the batch.
            leftovers = set(queue)
            fresh = members[torch.randperm(len(members), generator=self.generator)].tolist()
            queue.extend(i for i in fresh if i not in leftovers)
        taken, self._queues[c] = queue[:self.K], queue[self.K:]
        return taken

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.batches_per_epoch):
            chosen = torch.randperm(len(self.classes), generator=self.generator)[:self.P].tolist()
            batch: list[int] = []
            for c in chosen:
                batch.extend(self._take(c))
            yield batch
