"""A small ResNet for 24-32 px grey glyphs, from scratch or pretrained on the han-typefaces pool.

The trunk: a 3x3 stem convolution, 2x2 max-pooling, then one basic residual block (He et al. 2016) per
stage, the second and third halving the side; global average pooling. Then a linear embedding head
and L2 normalisation:

    (B, 1, 24, 24) -> stem (B, w1, 12, 12) -> (B, w1, 12, 12) -> (B, w2, 6, 6) -> (B, w3, 3, 3)
                   -> pooling (B, w3) -> linear -> (B, embedding_dim), |e| = 1

With the default widths (32, 64, 128) the trunk has 0.31M parameters. ``glyph-resnet`` trains it from
scratch. ``pretrained-glyphnet`` loads the trunk pretrained by ``dmlbench pretrain`` (``make pretrain``)
on fold ``fold``'s pretraining pool (characters no fold evaluates, drawn in that fold's training
typefaces: :mod:`dmlbench.datasets.glyph_pool`) and puts a new head on it; the weights are read from
``pretrained/<weights>/fold<k>.pt`` in the repository (or ``$DMLBENCH_PRETRAINED``), never trained on the
fly, and their sha256 is part of a run's identity. Its inputs are normalised as every grey network's, with
the dataset's training statistics (the pool's, recorded with the weights, differ from a fold's by little:
the same typefaces draw both). ``freeze_bn=True`` keeps the trunk's
BatchNorm layers in inference mode with fixed affine parameters (the Reality Check and Roth et al.).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .backbone import FrozenBatchNorm
from .base import MODELS

PRETRAINED_VARIABLE = "DMLBENCH_PRETRAINED"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut (a 1x1 convolution where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                                  nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def glyph_trunk(widths: Sequence[int] = (32, 64, 128), in_channels: int = 1) -> nn.Sequential:
    """The trunk: (B, in_channels, H, W) -> (B, widths[-1]) pooled features."""
    if len(widths) != 3 or min(widths) < 1:
        raise ConfigError(f"widths must be three positive integers, got {list(widths)}")
    w1, w2, w3 = (int(w) for w in widths)
    return nn.Sequential(nn.Conv2d(in_channels, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2), BasicBlock(w1, w1, 1), BasicBlock(w1, w2, 2), BasicBlock(w2, w3, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


@MODELS.register("glyph-resnet")
class GlyphResNet(FrozenBatchNorm):
    """A small ResNet for grey glyphs (3 stages of one basic block), linear head, L2 norm; from scratch."""

    default_image_size = 24
    l2_normalized = True

    def __init__(self, embedding_dim: int = 64, widths: Sequence[int] = (32, 64, 128), freeze_bn: bool = False):
        super().__init__()
        if embedding_dim < 1:
            raise ConfigError(f"embedding_dim must be a positive integer, got {embedding_dim}")
        self.trunk = glyph_trunk(widths)
        self.feature_dim = int(widths[-1])
        self.head = nn.Linear(self.feature_dim, embedding_dim)
        self.embedding_dim = embedding_dim
        self.set_frozen_batchnorm(freeze_bn)

    def raw_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))  # (B, embedding_dim), normalised by forward


def pretrained_root() -> Path:
    """Where pretrained backbones live: $DMLBENCH_PRETRAINED, else the repository's pretrained/."""
    return Path(os.environ.get(PRETRAINED_VARIABLE) or Path(__file__).resolve().parents[2] / "pretrained")


def weights_path(weights: str, fold: int) -> Path:
    return pretrained_root() / weights / f"fold{fold}.pt"


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def weights_sha256(weights: str, fold: int) -> str:
    """The sha256 of the weights file ``weights`` of ``fold``; a missing file is an error naming the command."""
    path = weights_path(weights, fold)
    if not path.is_file():
        raise ConfigError(f"pretrained-glyphnet: no weights at {path}; 'make pretrain' (dmlbench pretrain) "
                          f"makes them from the han-typefaces pretraining pool")
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


def read_weights(weights: str, fold: int) -> dict:
    """The saved backbone: {"trunk": state dict, "widths", "normalization": (mean, std), "recipe": ...}."""
    weights_sha256(weights, fold)  # the clear error when absent
    saved = torch.load(weights_path(weights, fold), map_location="cpu", weights_only=True)
    saved["recipe"] = json.loads(saved["recipe"])
    return saved


@MODELS.register("pretrained-glyphnet")
class PretrainedGlyphNet(GlyphResNet):
    """glyph-resnet's trunk pretrained on fold ``fold``'s pretraining pool, a new linear head, L2 norm."""

    per_fold = True  # the run's fold chooses the weights (dmlbench.training.loop.build_model passes it)

    def __init__(self, embedding_dim: int = 64, fold: int = 0, weights: str = "han-typefaces",
                 freeze_bn: bool = False):
        saved = read_weights(weights, fold)
        super().__init__(embedding_dim, widths=saved["widths"], freeze_bn=False)
        self.trunk.load_state_dict(saved["trunk"])
        self.weights, self.fold = weights, fold
        self.set_frozen_batchnorm(freeze_bn)

    @staticmethod
    def weights_identity(model_kwargs: dict, fold: int) -> str:
        """What a run's identity records of the weights: their sha256."""
        return weights_sha256(model_kwargs.get("weights", "han-typefaces"), fold)
