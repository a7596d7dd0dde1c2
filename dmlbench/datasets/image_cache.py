"""Images decoded and resized once, kept as one memory-mapped uint8 file, so training never decodes
a JPEG twice.

``build_cache(root, images, folder, shorter_side=256, workers=None)`` decodes every image of an
:class:`~dmlbench.datasets.layouts.ImageList` (RGB), resizes it so its shorter side is
``shorter_side`` (aspect kept, antialiased), and stores its pixels (H, W, 3) in ``pixels.u8``;
``index.npz`` records each image's offset, height, width, label and path. ``ImageCache(folder)``
maps the pixels read-only and returns (3, H, W) uint8 tensors.

The build, step by step:

1. every image's header is read (not its pixels), which gives each resized image's size, so the
   cache's size is known exactly before anything is decoded;
2. the free space on the cache's disk is checked against it: too little stops the build, saying how
   much it needs (:class:`CacheSpaceError`);
3. ``workers`` processes (default: every core) decode blocks of ``BLOCK`` images and write each at its
   own offset of ``pixels.u8.partial``; a finished block is appended to ``blocks.done``, with a
   progress bar on the terminal;
4. once every block is written, the pixel file is renamed into place and the index written last
   (a temporary name renamed), so a cache with an index is complete.

An interrupted build keeps ``pixels.u8.partial``, ``blocks.done`` and ``plan.json`` (the images, the
size, the offsets). The next build of the same images resumes: only the blocks not listed as done
are decoded again. An image that cannot be read or decoded stops the build with an error naming the
file. A built cache whose index does not read, or whose pixel file is not the size its index gives,
is named (:class:`DamagedCacheError`), set aside (``<name>.damaged-<time>``) and built again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DatasetNotFoundError
from ..fileio import set_aside
from .layouts import ImageList
from .transforms import plain_image

BLOCK = 256  # images decoded and written by one task; a resumed build redoes at most the blocks in flight
REBUILD = "'dmlbench data prepare <dataset>' (or any run of it) sets it aside and builds it again"
SPACE_MARGIN = 1.02  # the free space asked for: the pixel file's size, and 2% for the index and the file system


class ImageReadError(DatasetNotFoundError):
    """An image file is missing or cannot be decoded; the message names it."""


class DamagedCacheError(DatasetNotFoundError):
    """A built cache whose index does not read or whose pixel file is not the size its index gives; the
    message names the file. :func:`build_cache` sets such a cache aside and builds it again."""


class CacheSpaceError(DatasetNotFoundError):
    """The cache's disk has less free space than the cache needs; the message says how much."""


def _resized(width: int, height: int, shorter_side: int) -> tuple[int, int]:
    scale = shorter_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _header_size(path: Path, shorter_side: int) -> tuple[int, int]:
    """(height, width) of the image at ``path`` once resized, from its header alone."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            w, h = _resized(*image.size, shorter_side)
            return h, w
    except FileNotFoundError:
        raise ImageReadError(f"image {path} is missing") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageReadError(f"image {path} cannot be decoded ({error}); re-extract it from the dataset's archive") from None


def _decode(path: Path, shorter_side: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = plain_image(image).convert("RGB")  # 16-bit scaled, not clipped; transparency on white
            image = image.resize(_resized(*image.size, shorter_side), Image.Resampling.BILINEAR, reducing_gap=None)
            return np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageReadError(f"image {path} is missing") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageReadError(f"image {path} cannot be decoded ({error}); re-extract it from the dataset's archive") from None


def build_cache(root, images: ImageList, folder, *, shorter_side: int = 256, workers: int | None = None,
                free_bytes: Callable[[Path], int] | None = None, progress: bool = True) -> "ImageCache":
    """Decode and resize every image into ``folder`` (reused when its index already exists; resumed
    when an interrupted build of the same images left its partial file). ``free_bytes(folder)`` gives
    the disk's free space (default: shutil.disk_usage's)."""
    root, folder = Path(root), Path(folder)
    if shorter_side < 1:
        raise ValueError(f"shorter_side must be a positive integer, got {shorter_side}")
    if (folder / "index.npz").is_file():
        try:
            cache = ImageCache(folder)
        except DamagedCacheError as error:
            _set_aside_cache(folder, error)
            return build_cache(root, images, folder, shorter_side=shorter_side, workers=workers,
                               free_bytes=free_bytes, progress=progress)
        if cache.paths == list(images.paths) and cache.shorter_side == shorter_side:
            return cache
        raise ValueError(f"{folder} holds a cache of other images or another size; remove it or choose another folder")
    workers = max(1, workers or os.cpu_count() or 1)
    folder.mkdir(parents=True, exist_ok=True)
    files = [root / relative for relative in images.paths]
    shapes = np.array(in_blocks(_header_sizes, files, workers, shorter_side), dtype=np.int64).reshape(-1, 2)
    sizes = shapes[:, 0] * shapes[:, 1] * 3
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    total = int(sizes.sum())
    done = _resumable(folder, images, shorter_side, offsets, total)
    _check_space(folder, total - sum(int(sizes[b * BLOCK:(b + 1) * BLOCK].sum()) for b in done), len(files),
                 free_bytes or (lambda f: shutil.disk_usage(f).free))
    _decode_blocks(folder, files, shapes, offsets, shorter_side, workers, done, progress)
    os.replace(folder / "pixels.u8.partial", folder / "pixels.u8")
    _write_index(folder, offsets, shapes, images, shorter_side)
    for name in ("blocks.done", "plan.json"):
        (folder / name).unlink(missing_ok=True)
    return ImageCache(folder)


def _set_aside_cache(folder: Path, error: DamagedCacheError) -> None:
    """A damaged cache's index and pixel file renamed aside (kept for a look), with a warning naming them."""
    import logging

    moved = [set_aside(folder / name).name for name in ("index.npz", "pixels.u8") if (folder / name).exists()]
    logging.getLogger("dmlbench").warning("%s; set aside as %s, rebuilding the cache",
                                          str(error).replace(f"; {REBUILD}", ""), ", ".join(moved))


def _header_sizes(paths: list[Path], shorter_side: int) -> list[tuple[int, int]]:
    return [_header_size(path, shorter_side) for path in paths]


def _decode_block(paths: list[Path], shapes: np.ndarray, offsets: np.ndarray, shorter_side: int, target: str) -> int:
    """Decode a block of images and write each at its offset of the partial pixel file (a worker's task)."""
    fd = os.open(target, os.O_WRONLY)
    try:
        for path, (h, w), offset in zip(paths, shapes, offsets):
            pixels = _decode(path, shorter_side)
            if pixels.shape[:2] != (h, w):
                raise ImageReadError(f"image {path} decodes to {pixels.shape[1]}x{pixels.shape[0]} pixels, not the "
                                     f"{w}x{h} its header gives; re-extract it from the dataset's archive")
            os.pwrite(fd, np.ascontiguousarray(pixels).tobytes(), int(offset))
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(paths)


def in_blocks(task, items: list, workers: int, *extra) -> list:
    """``task(block, *extra)`` over blocks of BLOCK ``items`` on ``workers`` processes; the lists it
    returns joined, in order."""
    chunks = [items[i:i + BLOCK] for i in range(0, len(items), BLOCK)]
    if workers <= 1 or len(chunks) <= 1:
        return [r for chunk in chunks for r in task(chunk, *extra)]
    with ProcessPoolExecutor(min(workers, len(chunks))) as pool:
        return [r for part in pool.map(task, chunks, *[[e] * len(chunks) for e in extra]) for r in part]


def _plan_key(images: ImageList, shorter_side: int, offsets: np.ndarray) -> str:
    return hashlib.sha256(json.dumps([images.paths, shorter_side]).encode() + offsets.tobytes()).hexdigest()


def _resumable(folder: Path, images: ImageList, shorter_side: int, offsets: np.ndarray, total: int) -> set[int]:
    """The blocks an interrupted build of the same plan finished (and its partial file kept); a new
    plan starts a new partial file of the cache's full size (sparse until written)."""
    key = _plan_key(images, shorter_side, offsets)
    partial, plan, journal = folder / "pixels.u8.partial", folder / "plan.json", folder / "blocks.done"
    if partial.is_file() and plan.is_file() and journal.is_file():
        done = _journalled(folder, key, total)
        if done is not None:
            return done
    with open(partial, "wb") as handle:
        handle.truncate(total)
    journal.write_text("")
    plan.write_text(json.dumps({"key": key, "images": len(images.paths), "bytes": total}))
    return set()


def _journalled(folder: Path, key: str, total: int) -> set[int] | None:
    """The blocks that an interrupted build of plan ``key`` journalled as done; None where it was another
    plan, or its files are damaged (then named in a warning and set aside: the build starts over)."""
    import logging

    partial, plan, journal = folder / "pixels.u8.partial", folder / "plan.json", folder / "blocks.done"
    try:
        same = json.loads(plan.read_text()).get("key") == key
        lines = journal.read_text().split("\n")  # a last line without its end was cut short: not done
        done = {int(line) for line in lines[:-1] if line.strip()}
        if same and partial.stat().st_size != total:
            raise ValueError(f"{partial.name} has {partial.stat().st_size:,} bytes, its plan {total:,}")
    except (OSError, ValueError, AttributeError) as error:
        moved = [set_aside(path).name for path in (plan, journal, partial)]
        logging.getLogger("dmlbench").warning("%s: an interrupted build's files are damaged (%s: %s); set aside as %s, "
                                              "the build starts over", folder, type(error).__name__,
                                              " ".join(str(error).split()), ", ".join(moved))
        return None
    return done if same else None


def _check_space(folder: Path, needed: int, count: int, free_bytes: Callable[[Path], int]) -> None:
    free = free_bytes(folder)
    if needed * SPACE_MARGIN > free:
        raise CacheSpaceError(f"the image cache of {count:,} images needs {_size(needed * SPACE_MARGIN)} more on the "
                              f"disk of {folder}, which has {_size(free)} free. Free some space, or point "
                              f"$DMLBENCH_CACHE at a larger disk (a smaller image_size needs less)")


def _size(n: float) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB"


def _decode_blocks(folder: Path, files: list[Path], shapes: np.ndarray, offsets: np.ndarray, shorter_side: int,
                   workers: int, done: set[int], progress: bool) -> None:
    """Every block not in ``done`` decoded into the partial file, each finished one journalled."""
    import sys

    from tqdm.std import tqdm

    todo = [b for b in range((len(files) + BLOCK - 1) // BLOCK) if b not in done]
    bar = tqdm(total=len(files), initial=len(files) - sum(len(files[b * BLOCK:(b + 1) * BLOCK]) for b in todo),
               desc=f"decoding into {folder.name}", unit="image", file=sys.stderr, disable=not progress or None,
               mininterval=2.0)
    target = str(folder / "pixels.u8.partial")
    args = [(files[b * BLOCK:(b + 1) * BLOCK], shapes[b * BLOCK:(b + 1) * BLOCK], offsets[b * BLOCK:(b + 1) * BLOCK],
             shorter_side, target) for b in todo]
    with open(folder / "blocks.done", "a") as journal:
        def finished(block: int, count: int) -> None:
            journal.write(f"{block}\n")
            journal.flush()
            os.fsync(journal.fileno())
            bar.update(count)
        if workers == 1 or len(todo) <= 1:
            for block, arg in zip(todo, args):
                finished(block, _decode_block(*arg))
        else:
            with ProcessPoolExecutor(min(workers, len(todo))) as pool:
                for block, count in zip(todo, pool.map(_decode_block, *zip(*args))):
                    finished(block, count)
    bar.close()


def _write_index(folder: Path, offsets: np.ndarray, shapes: np.ndarray, images: ImageList, shorter_side: int) -> None:
    index_tmp = folder / "index.tmp.npz"
    np.savez(index_tmp, offsets=offsets, heights=shapes[:, 0].astype(np.int32), widths=shapes[:, 1].astype(np.int32),
             labels=images.labels,
             super_labels=images.super_labels if images.super_labels is not None else np.zeros(0, np.int64),
             paths=np.array(images.paths, dtype=str), shorter_side=np.array(shorter_side))
    os.replace(index_tmp, folder / "index.npz")


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
        try:  # every array read whole, so the zip's checksums are checked
            with np.load(folder / "index.npz", allow_pickle=False) as index:
                self.offsets, self.heights, self.widths = index["offsets"], index["heights"], index["widths"]
                self.labels = index["labels"]
                self.super_labels = index["super_labels"] if len(index["super_labels"]) else None
                self.paths = [str(p) for p in index["paths"]]
                self.shorter_side = int(index["shorter_side"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise DamagedCacheError(f"{folder / 'index.npz'}: a damaged image cache index ({type(error).__name__}: "
                                    f"{' '.join(str(error).split())}); {REBUILD}") from None
        total = int(self.offsets[-1] + 3 * self.heights[-1].astype(np.int64) * self.widths[-1]) if len(self.offsets) else 0
        size = (folder / "pixels.u8").stat().st_size if (folder / "pixels.u8").is_file() else None
        if size != total:
            raise DamagedCacheError(f"{folder / 'pixels.u8'}: {'missing' if size is None else f'{size:,} bytes'}, its "
                                    f"index says {total:,}; {REBUILD}")
        self.pixels = np.memmap(folder / "pixels.u8", dtype=np.uint8, mode="r", shape=(total,)) if total else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        h, w, start = int(self.heights[i]), int(self.widths[i]), int(self.offsets[i])
        array = np.array(self.pixels[start:start + h * w * 3]).reshape(h, w, 3)
        return torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W)
