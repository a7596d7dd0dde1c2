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

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _finish(mean, std, normalize: bool) -> list:
    from torchvision.transforms import v2  # imported here: torchvision takes a second to import

    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))] if normalize else []


def train_transform(size: int = 224, *, scale: tuple[float, float] = (0.08, 1.0), mean=IMAGENET_MEAN,
                    std=IMAGENET_STD, normalize: bool = True):
    """uint8 (3, H, W) -> random resized crop + flip -> float (3, size, size) normalised; with
    ``normalize=False`` the crop stays uint8 (4x less to copy to a GPU, normalised there)."""
    from torchvision.transforms import v2

    if size < 1:
        raise ValueError(f"crop size must be a positive integer, got {size}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {tuple(scale)}")
    return v2.Compose([v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True), v2.RandomHorizontalFlip(),
                       *_finish(mean, std, normalize)])


def eval_transform(size: int = 224, *, resize: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   normalize: bool = True):
    """uint8 (3, H, W) -> shorter side to ``resize`` -> centre crop ``size`` -> normalised float (or uint8)."""
    from torchvision.transforms import v2

    resize = round(size * 8 / 7) if resize is None else resize
    if size < 1:
        raise ValueError(f"crop size must be a positive integer, got {size}")
    if resize < size:
        raise ValueError(f"resize ({resize}) must be at least the crop size ({size})")
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size), *_finish(mean, std, normalize)])


def normalize_batch(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, 3, H, W) on any device -> float32 (B, 3, H, W), channels-last, (x - 255 mean) / (255 std):
    the transforms' ToDtype + Normalize up to float rounding, in two in-place passes over the batch."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) * 255
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) * 255
    x = images.contiguous(memory_format=torch.channels_last).float()  # the layout change on uint8: 4x fewer bytes
    return x.sub_(mean_t).div_(std_t)


WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")  # 16- and 32-bit greyscale, float greyscale
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def plain_image(image, behind: int = 255):
    """``image`` as 8-bit greyscale (L) or RGB with its values kept: 16-bit greyscale scaled from its
    range 0..65535 (PIL's own conversion clips it to white), transparency composited on the grey
    level ``behind``, a palette expanded; other modes (CMYK, YCbCr, 1) by PIL's conversion."""
    from PIL import Image

    if image.mode in WIDE_MODES:
        values = np.asarray(image, dtype=np.float64)
        scale = 1.0 if image.mode == "F" else 257.0  # float images are taken as 0..255
        return Image.fromarray(np.clip(np.rint(values / scale), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        composed = Image.alpha_composite(Image.new("RGBA", rgba.size, (behind, behind, behind, 255)), rgba)
        return composed.convert("L" if image.mode in ("LA", "La") else "RGB")
    return image if image.mode in ("L", "RGB") else image.convert("RGB")
