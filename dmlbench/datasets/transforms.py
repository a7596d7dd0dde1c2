"""Image transforms of the real benchmarks' protocols (uint8 CHW tensors in, normalised float out).

- train: a random resized crop to ``size`` (area ``scale``, by default torchvision's 0.08-1, aspect
  3/4-4/3) and a horizontal flip with probability 1/2;
- evaluation (validation and test): resize the shorter side to ``resize`` (by default size x 8/7:
  256 for 224-pixel crops), then a centre crop to ``size``;
- both end by scaling to [0, 1] and normalising with the backbone's statistics (ImageNet's mean and
  standard deviation for torchvision's ImageNet weights).

``size`` is 224 in Roth et al. 2020 and 227 in "A Metric Learning Reality Check".
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _finish(mean, std) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def train_transform(size: int = 224, *, scale: tuple[float, float] = (0.08, 1.0), mean=IMAGENET_MEAN,
                    std=IMAGENET_STD) -> v2.Compose:
    if size < 1:
        raise ValueError(f"crop size must be a positive integer, got {size}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {tuple(scale)}")
    return v2.Compose([v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True), v2.RandomHorizontalFlip(),
                       *_finish(mean, std)])


def eval_transform(size: int = 224, *, resize: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    if size < 1:
        raise ValueError(f"crop size must be a positive integer, got {size}")
    resize = round(size * 8 / 7) if resize is None else resize
    if resize < size:
        raise ValueError(f"resize ({resize}) must be at least the crop size ({size})")
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size), *_finish(mean, std)])
