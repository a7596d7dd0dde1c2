"""The miner contract: choose which pairs or triplets of a batch a loss sees.

A miner is called as ``miner(embeddings, labels, kind)`` with ``kind`` the loss's ``consumes``
(``"pairs"`` or ``"triplets"``) and returns :class:`dmlbench.geometry.tuples.Pairs` or
:class:`dmlbench.geometry.tuples.Triplets` index tensors. It works on detached embeddings (mining is not
differentiated). ``produces`` lists the kinds it can build; a triplet miner also serves pair losses
(each triplet gives one positive and one negative pair). Randomised miners draw from
``self.generator``, seeded by :meth:`Miner.seed` so runs are reproducible.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..registry import Registry
from ..geometry.tuples import Pairs, Triplets


class Miner(nn.Module):
    """Base class of every miner; see the module docstring for the contract."""

    produces: ClassVar[tuple[str, ...]] = ("triplets",)
    registry_name: ClassVar[str] = ""
    # What it computes, as a number that a run's identity includes: bump it when that changes, so that
    # runs of the old behaviour are never reused as this one's (1, the first, is left out of the hash).
    version: ClassVar[int] = 1

    def __init__(self):
        super().__init__()
        self.generator = torch.Generator().manual_seed(0)

    def seed(self, seed: int) -> "Miner":
        self.generator.manual_seed(int(seed))
        return self

    def can_produce(self, kind: str) -> bool:
        return kind in self.produces or (kind == "pairs" and "triplets" in self.produces)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, kind: str) -> Pairs | Triplets:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, kind: str = "triplets") -> Pairs | Triplets:
        if not self.can_produce(kind):
            raise ValueError(f"miner {self.registry_name or type(self).__name__!r} produces "
                             f"{' or '.join(self.produces)}, not {kind}")
        with torch.no_grad():
            mined = self.mine(embeddings.detach().float(), labels.to(embeddings.device), kind)
        if kind == "pairs" and isinstance(mined, Triplets):
            mined = mined.to_pairs()
        return mined

    def draw(self, weights: torch.Tensor) -> torch.Tensor:
        """One column index per row of non-negative ``weights`` (R, B), with probability proportional
        to the row's weights (rows must not be all zero): inverse-CDF sampling, vectorised."""
        cdf = weights.double().cumsum(dim=1)  # (R, B)
        u = self.random((len(weights),), weights.device).double() * cdf[:, -1]  # (R,) in [0, row total)
        return torch.searchsorted(cdf, u[:, None], right=True)[:, 0].clamp_max(weights.shape[1] - 1)

    def random(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Uniform [0, 1) numbers from this miner's generator (drawn on the CPU, so CPU and GPU
        runs with one seed mine the same tuples from the same distances)."""
        return torch.rand(shape, generator=self.generator).to(device)


MINERS = Registry("miner", base=Miner)
