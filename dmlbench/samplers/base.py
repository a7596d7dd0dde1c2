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
    # What it computes, as a number that a run's identity includes: bump it when that changes, so that
    # runs of the old behaviour are never reused as this one's (1, the first, is left out of the hash).
    version: int = 1

    def __init__(self, batches_per_epoch: int | None, generator: torch.Generator | None):
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.batches_per_epoch = int(batches_per_epoch) if batches_per_epoch else None
        # The stream's position, as plain data so that a checkpoint can hold it: the batches of the
        # current pass not served yet (batches_per_epoch set), or a pass drawn early by len().
        self._pending: list[list[int]] = []
        self._next_pass: list[list[int]] | None = None

    def one_pass(self) -> list[list[int]]:
        raise NotImplementedError

    def _next_batch(self) -> list[int]:
        if not self._pending:
            self._pending = self.one_pass()
            if not self._pending:
                raise ConfigError(f"{type(self).__name__}: a pass over the data yields no batch")
        return self._pending.pop(0)

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
        for _ in range(self.batches_per_epoch):
            yield self._next_batch()

    def state_dict(self) -> dict:
        """Everything the next batches depend on: the generator and the stream's position (taken
        between epochs, it makes a resumed run draw the batches an uninterrupted one would)."""
        return {"generator": self.generator.get_state(), "pending": [list(b) for b in self._pending],
                "next_pass": None if self._next_pass is None else [list(b) for b in self._next_pass]}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._pending = [list(b) for b in state["pending"]]
        self._next_pass = None if state["next_pass"] is None else [list(b) for b in state["next_pass"]]


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
