"""Plain random batches: a shuffled pass over the data cut into batches of B = P x K images, with no
regard to classes (the baseline against which class-balanced sampling is judged). The last,
incomplete batch of a pass is left out."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .base import SAMPLERS, StreamSampler, as_labels


@SAMPLERS.register("random")
class RandomBatchSampler(StreamSampler):
    """Random batches of P x K images, each pass over the data without repeats."""

    def __init__(self, labels: Sequence[int] | np.ndarray | torch.Tensor, P: int, K: int, *,
                 batches_per_epoch: int | None = None, generator: torch.Generator | None = None,
                 super_labels: Sequence[int] | np.ndarray | torch.Tensor | None = None):
        super().__init__(batches_per_epoch, generator)
        self.n = len(as_labels(labels))
        self.batch_size = int(P) * int(K)
        if self.batch_size < 1 or self.batch_size > self.n:
            raise ConfigError(f"batch size P x K = {self.batch_size} must lie in 1 .. {self.n} (the data's size)")

    def one_pass(self) -> list[list[int]]:
        order = torch.randperm(self.n, generator=self.generator).tolist()
        return [order[i:i + self.batch_size] for i in range(0, self.n - self.batch_size + 1, self.batch_size)]
