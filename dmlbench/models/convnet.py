"""A small convolutional embedder for 28x28 grey images (Fashion-MNIST).

Three 3x3 convolution blocks (convolution, batch norm, ReLU; max-pooling after the first two),
global average pooling and a linear head, then L2 normalisation:

    (B, 1, 28, 28) -> (B, c1, 14, 14) -> (B, c2, 7, 7) -> (B, c3) -> (B, embedding_dim), |e| = 1

``forward(images, raw=True)`` gives the linear head's output before the normalisation.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .base import MODELS, Embedder


@MODELS.register("convnet")
class ConvEmbedder(Embedder):
    """Small CNN for 28x28 inputs: 3 conv blocks, global average pooling, linear head, L2 norm."""

    # trained from scratch: no normalization of its own (inputs get the dataset's statistics)
    default_image_size = 28
    l2_normalized = True

    def __init__(self, embedding_dim: int = 64, channels: Sequence[int] = (32, 64, 128), in_channels: int = 1):
        super().__init__()
        if embedding_dim < 1:
            raise ConfigError(f"embedding_dim must be a positive integer, got {embedding_dim}")
        if len(channels) != 3 or min(channels) < 1:
            raise ConfigError(f"channels must be three positive integers, got {list(channels)}")
        c1, c2, c3 = (int(c) for c in channels)

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_channels, c1), nn.MaxPool2d(2),  # (B, c1, 14, 14)
            *block(c1, c2), nn.MaxPool2d(2),  # (B, c2, 7, 7)
            *block(c2, c3),  # (B, c3, 7, 7)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, c3)
        )
        self.head = nn.Linear(c3, embedding_dim)
        self.embedding_dim = embedding_dim

    def raw_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (B, embedding_dim), normalised by forward
