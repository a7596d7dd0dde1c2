"""``dmlbench data prepare NAME --check``: is a prepared benchmark what its lists say it is?

Three checks, each a line of a one-screen summary:

- **counts**: the layout's images and classes per split against the published counts (:mod:`.counts`);
- **images**: every listed image is on disk and decodes (all of them, in worker processes);
- **cache**: the decoded cache for the crop size exists and matches the lists: the same images in
  the same order with the same labels, and a pixel file of the size its index gives.

:func:`check_prepared` returns the summary and whether every check passed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .benchmarks import _all_images, cache_folder, cache_side, locate_layout, photo_dataset, read_layout
from .benchmarks import VALIDATION_FRACTION, VALIDATION_SEED
from .counts import LABELS, check_counts
from .image_cache import ImageCache, in_blocks

SHOWN_FAILURES = 5  # unreadable images named in the summary


def _unreadable(paths: list[Path]) -> list[str]:
    """The images of ``paths`` that are missing or do not decode, each with why (a worker's task)."""
    from PIL import Image

    bad = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
        except Exception as error:  # every reason an image is unusable is reported, not raised
            bad.append(f"{path} ({type(error).__name__}: {error})")
    return bad


def unreadable_images(root: Path, paths: list[str], workers: int) -> list[str]:
    return in_blocks(_unreadable, [root / p for p in paths], workers)


def _counts_line(record: dict) -> tuple[str, bool]:
    found, expected = record["found"], record["expected"]
    shown = ", ".join(f"{LABELS[k]} {v:,}" for k, v in found.items() if v or not expected or expected[k])
    if expected is None:
        return f"counts  {shown} (no published counts to compare)", True
    wrong = [k for k in found if found[k] != expected[k]]
    if not wrong:
        return f"counts  OK: {shown}, as published", True
    return ("counts  FAILED: " + "; ".join(f"{LABELS[k]} {found[k]:,}, published {expected[k]:,}" for k in wrong),
            False)


def _cache_line(name: str, layout, image_size: int | None) -> tuple[str, bool]:
    images = _all_images(layout)
    folder = cache_folder(name, layout, images, cache_side(image_size or photo_dataset(name).default_image_size))
    if not (folder / "index.npz").is_file():
        partial = " (an interrupted build is there; 'dmlbench data prepare' resumes it)" \
            if (folder / "pixels.u8.partial").is_file() else ""
        return f"cache   not built for these lists at this size: {folder}{partial}", False
    cache = ImageCache(folder)
    if cache.paths != images.paths or not np.array_equal(cache.labels, images.labels):
        return f"cache   FAILED: {folder} holds other images or labels than the lists", False
    expected = int(cache.offsets[-1] + 3 * int(cache.heights[-1]) * int(cache.widths[-1])) if len(cache) else 0
    size = (folder / "pixels.u8").stat().st_size
    if size != expected:
        return f"cache   FAILED: {folder}/pixels.u8 has {size:,} bytes, its index says {expected:,}", False
    return f"cache   OK: {len(cache):,} images, {size / 1e9:,.2f} GB in {folder}", True


def check_prepared(name: str, root=None, *, image_size: int | None = None, workers: int | None = None) -> tuple[str, bool]:
    """The summary of every check of benchmark ``name`` (see the module docstring), and whether all passed."""
    folder, where = locate_layout(name, root)
    layout = read_layout(name, folder, val_fraction=VALIDATION_FRACTION, seed=VALIDATION_SEED)
    record = check_counts(name, layout, photo_dataset(name).counts, variant=layout.variant, subset=True)
    lines = [f"{name}: {layout.variant} layout in {folder} ({where})"]
    counts, counts_ok = _counts_line(record)
    paths = _all_images(layout).paths
    bad = unreadable_images(folder, paths, workers or os.cpu_count() or 1)
    images = (f"images  OK: all {len(paths):,} listed images decode" if not bad else
              f"images  FAILED: {len(bad):,} of {len(paths):,} missing or unreadable, e.g. "
              + "; ".join(bad[:SHOWN_FAILURES]))
    cache, cache_ok = _cache_line(name, layout, image_size)
    lines += [counts, images, cache]
    ok = counts_ok and not bad and cache_ok
    lines.append("all checks passed" if ok else "some checks failed (above)")
    return "\n".join(lines), ok
