"""The embedding-network contract: image batch in, embedding batch out.

Every network of the study is an :class:`Embedder`: an ``nn.Module`` built as
``MODELS.create(name, embedding_dim=..., **model_kwargs)`` whose ``forward`` maps a float image batch
(B, C, H, W), already normalised, to embeddings (B, ``embedding_dim``). It states:

- ``embedding_dim``: the output dimension (set by ``__init__`` from its argument);
- ``l2_normalized``: whether every output row has unit L2 norm (true of every network here, so
  inner products are cosine similarities);
- ``normalization``: ``(mean, std)`` per input channel on the 0-1 scale that the network's
  pretrained weights expect (ImageNet's for torchvision's weights, the weights' own timm config
  for a timm model). A network trained from scratch (the small ``convnet``) declares none and is
  fed inputs normalised with the dataset's own statistics (``Splits.mean`` / ``std``): the training
  loop reads ``getattr(model, "normalization", (None, None))``;
- ``default_image_size``: the side of the square images its weights were trained on (None: none).

``forward(images)`` returns the L2-normalised embedding (what evaluation always uses);
``forward(images, raw=True)`` returns the head's output before the normalisation, in float32 (the
space of the losses that declare ``embedding_space = "raw"``, e.g. center loss and N-pairs). A
network implements :meth:`Embedder.raw_embeddings` (the head's output) and inherits ``forward``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry

MODELS = Registry("model")


class Embedder(nn.Module):
    """Base class of the study's networks; see the module docstring for the contract."""

    normalization: ClassVar[tuple[tuple[float, ...], tuple[float, ...]]]  # declared only by pretrained networks
    default_image_size: ClassVar[int | None] = None
    l2_normalized: ClassVar[bool] = True
    # What it computes, as a number that a run's identity includes: bump it when that changes, so that
    # runs of the old behaviour are never reused as this one's (1, the first, is left out of the hash).
    version: ClassVar[int] = 1
    embedding_dim: int  # the output dimension, set by __init__

    def raw_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, embedding_dim): the embedding head's output, before L2 normalisation."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, raw: bool = False) -> torch.Tensor:
        """The L2-normalised embedding (B, embedding_dim) in float32; ``raw=True``: before normalisation."""
        features = self.raw_embeddings(images).float()  # (B, embedding_dim)
        return features if raw else F.normalize(features, dim=1)
