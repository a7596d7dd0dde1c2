"""Images decoded and resized once, kept as one memory-mapped uint8 file, so training never decodes
a JPEG twice.

``build_cache(root, images, folder, shorter_side=256)`` decodes every image of an
:class:`~dmlbench.datasets.layouts.ImageList` (RGB), resizes it so its shorter side is
``shorter_side`` (aspect kept, antialiased), and appends its pixels (H, W, 3) to ``pixels.u8``;
``index.npz`` records each image's offset, height, width, label and path. The pixel file is written
first and the index last, each to a temporary name renamed into place, so a cache with an index is
complete; a failed build leaves no index. ``ImageCache(folder)`` maps the pixels read-only and
returns (3, H, W) uint8 tensors.

An image that cannot be decoded stops the build with an error naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetNotFoundError
from .layouts import ImageList


class ImageReadError(DatasetNotFoundError):
    """An image file is missing or cannot be decoded; the message names it."""


def _decode(path: Path, shorter_side: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            w, h = image.size
            scale = shorter_side / min(w, h)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
            return np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageReadError(f"image {path} is missing") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageReadError(f"image {path} cannot be decoded ({error}); re-extract it from the dataset's archive") from None


def build_cache(root, images: ImageList, folder, *, shorter_side: int = 256) -> "ImageCache":
    """Decode and resize every image into ``folder`` (reused when its index already exists)."""
    root, folder = Path(root), Path(folder)
    if shorter_side < 1:
        raise ValueError(f"shorter_side must be a positive integer, got {shorter_side}")
    if (folder / "index.npz").is_file():
        cache = ImageCache(folder)
        if cache.paths == list(images.paths) and cache.shorter_side == shorter_side:
            return cache
        raise ValueError(f"{folder} holds a cache of other images or another size; remove it or choose another folder")
    pixels = (_decode(root / relative, shorter_side) for relative in images.paths)
    return write_cache(folder, pixels, images, shorter_side=shorter_side)


def write_cache(folder, pixels, images: ImageList, *, shorter_side: int) -> "ImageCache":
    """Write the (H, W, 3) uint8 arrays ``pixels`` (one per image of ``images``, in order) as a cache:
    the pixel file first, the index last, each under a temporary name renamed into place."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    offsets, heights, widths = [], [], []
    pixels_tmp = folder / "pixels.u8.tmp"
    offset = 0
    try:
        with pixels_tmp.open("wb") as out:
            for array in pixels:
                out.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
                offsets.append(offset)
                heights.append(array.shape[0])
                widths.append(array.shape[1])
                offset += array.size
        if len(offsets) != len(images.paths):
            raise ValueError(f"{len(offsets)} images written for {len(images.paths)} paths")
        os.replace(pixels_tmp, folder / "pixels.u8")
        index_tmp = folder / "index.tmp.npz"
        np.savez(index_tmp, offsets=np.array(offsets, dtype=np.int64), heights=np.array(heights, dtype=np.int32),
                 widths=np.array(widths, dtype=np.int32), labels=images.labels,
                 super_labels=images.super_labels if images.super_labels is not None else np.zeros(0, np.int64),
                 paths=np.array(images.paths, dtype=str), shorter_side=np.array(shorter_side))
        os.replace(index_tmp, folder / "index.npz")
    finally:
        pixels_tmp.unlink(missing_ok=True)
    return ImageCache(folder)


class ImageCache:
    """Read-only view of a built cache: ``cache[i]`` is image i as a (3, H, W) uint8 tensor."""

    def __init__(self, folder):
        folder = Path(folder)
        self.folder = folder
        if not (folder / "index.npz").is_file():
            raise DatasetNotFoundError(f"{folder} holds no finished image cache (index.npz is missing)")
        with np.load(folder / "index.npz") as index:
            self.offsets, self.heights, self.widths = index["offsets"], index["heights"], index["widths"]
            self.labels = index["labels"]
            self.super_labels = index["super_labels"] if len(index["super_labels"]) else None
            self.paths = [str(p) for p in index["paths"]]
            self.shorter_side = int(index["shorter_side"])
        total = int(self.offsets[-1] + 3 * self.heights[-1].astype(np.int64) * self.widths[-1]) if len(self.offsets) else 0
        self.pixels = np.memmap(folder / "pixels.u8", dtype=np.uint8, mode="r", shape=(total,)) if total else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        h, w, start = int(self.heights[i]), int(self.widths[i]), int(self.offsets[i])
        array = np.array(self.pixels[start:start + h * w * 3]).reshape(h, w, 3)
        return torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W)
