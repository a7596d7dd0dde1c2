"""Batch samplers: plain torch Samplers yielding lists of dataset indices, one list per batch.

Every sampler draws from an explicit ``torch.Generator`` (the same seed gives the same batches) and
produces a stream of passes over the data: a pass uses every image at most once; with
``batches_per_epoch`` set, an epoch is that many batches of the stream (the stream continues across
epochs), otherwise an epoch is one pass.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import ConfigError
from ..registry import Registry

SAMPLERS = Registry("sampler")


def as_labels(labels: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(labels)).long()


class StreamSampler(Sampler[list[int]]):
    """Base: subclasses implement ``one_pass()`` (the batches of one pass over the data)."""

    registry_name = ""

    def __init__(self, batches_per_epoch: int | None, generator: torch.Generator | None):
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.batches_per_epoch = int(batches_per_epoch) if batches_per_epoch else None
        self._stream: Iterator[list[int]] | None = None
        self._next_pass: list[list[int]] | None = None  # drawn early by len(), served by the next iter()

    def one_pass(self) -> list[list[int]]:
        raise NotImplementedError

    def _batches(self) -> Iterator[list[int]]:
        while True:
            batches = self.one_pass()
            if not batches:
                raise ConfigError(f"{type(self).__name__}: a pass over the data yields no batch")
            yield from batches

    def __len__(self) -> int:
        if self.batches_per_epoch:
            return self.batches_per_epoch
        if self._next_pass is None:
            self._next_pass = self.one_pass()
        return len(self._next_pass)

    def __iter__(self) -> Iterator[list[int]]:
        if not self.batches_per_epoch:
            batches, self._next_pass = (self._next_pass or self.one_pass()), None
            yield from batches
            return
        if self._stream is None:
            self._stream = self._batches()
        for _ in range(self.batches_per_epoch):
            yield next(self._stream)


def class_chunks(members: list[torch.Tensor], K: int, generator: torch.Generator) -> list[list[list[int]]]:
    """Each class's images shuffled and cut into chunks of K (the last, incomplete chunk is left
    out of this pass). Rule for a class with fewer than K images: one chunk filled by drawing with
    replacement."""
    chunks = []
    for idx in members:
        if len(idx) < K:
            chunks.append([idx[torch.randint(len(idx), (K,), generator=generator)].tolist()])
            continue
        shuffled = idx[torch.randperm(len(idx), generator=generator)].tolist()
        chunks.append([shuffled[i:i + K] for i in range(0, len(shuffled) - K + 1, K)])
    return chunks


def draw_classes(remaining: torch.Tensor, P: int, generator: torch.Generator,
                 allowed: torch.Tensor | None = None) -> list[int] | None:
    """P distinct classes drawn with probability proportional to their remaining chunks (None when
    fewer than P classes have chunks left)."""
    weights = remaining.double() if allowed is None else remaining.double() * allowed
    if int((weights > 0).sum()) < P:
        return None
    return torch.multinomial(weights, P, replacement=False, generator=generator).tolist()
