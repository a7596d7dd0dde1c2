"""Miniature copies of the four official benchmark layouts, with real (tiny) JPEG files.

The layout files come from the writers of test_layouts (the real formats, a real .mat file for
Cars196); every image they list is written as a JPEG of a few dozen pixels whose colour depends on
its class, plus noise, so that a network can learn something in a few steps.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from dmlbench.datasets.layouts import read_layout

from .test_layouts import write_cars, write_cub, write_inshop, write_sop

WRITERS = {"cub": write_cub, "cars196": write_cars, "sop": write_sop, "inshop": write_inshop}
FOLDERS = {"cub": "CUB_200_2011", "cars196": "cars196", "sop": "Stanford_Online_Products", "inshop": "inshop"}


def write_images(root, paths, labels, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for path, label in zip(paths, labels):
        h, w = int(rng.integers(24, 40)), int(rng.integers(24, 40))
        colour = np.array([(37 * label) % 256, (91 * label) % 256, (53 * label) % 256], dtype=np.int64)
        pixels = np.clip(colour + rng.integers(-40, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target, quality=90)


def write_miniature(name: str, parent) -> "Path":  # noqa: F821
    """Write dataset ``name``'s miniature layout and images under ``parent / FOLDERS[name]``."""
    root = parent / FOLDERS[name]
    WRITERS[name](root)
    layout = read_layout(name, root)
    for part in (layout.train, layout.val, layout.test, layout.gallery):
        if part is not None:
            write_images(root, part.paths, part.labels)
    return root
