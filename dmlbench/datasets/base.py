"""Datasets of the study: images and labels split by class into train / validation / test.

A dataset module registers a loader ``load(root=None, cache=True) -> Splits``. Splits are
class-disjoint between train and test (zero-shot retrieval, ../shared/PROTOCOL.md section 1); model
selection uses ``val``, never ``test``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..registry import Registry

DATASETS = Registry("dataset")


class LabelledSet:
    """What every split offers, whatever holds its images: ``len``, ``labels`` and the sorted ``classes``."""

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> list[int]:
        return sorted(int(c) for c in np.unique(self.labels))


@dataclass
class ImageSet(LabelledSet):
    """Images (N, H, W) or (N, C, H, W) uint8 held in memory and their integer labels (N,).

    The real benchmarks' splits are :class:`dmlbench.datasets.benchmarks.PhotoSet`s instead: images
    of different sizes read from a decoded cache, with the same ``labels`` / ``classes`` / ``len``."""

    images: np.ndarray
    labels: np.ndarray
    super_labels: np.ndarray | None = None  # super-class of each image (SOP, In-Shop), for hierarchical batches

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")


@dataclass
class Splits:
    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    class_names: dict[int, str]
    mean: float | tuple[float, ...]  # normalisation (0-1 scale): the train split's statistics, or per channel
    std: float | tuple[float, ...]
    source: dict = field(default_factory=dict)  # where the files came from, their checksums
    gallery: "ImageSet | None" = None  # In-Shop: the test queries are ranked against this set, not each other

    def summary(self) -> dict:
        return {
            "name": self.name,
            "num_train": len(self.train), "num_val": len(self.val), "num_test": len(self.test),
            "train_classes": self.train.classes, "val_classes": self.val.classes, "test_classes": self.test.classes,
            "source": self.source,
        } | ({"num_gallery": len(self.gallery)} if self.gallery is not None else {})


def cache_dir() -> Path:
    """Where decoded arrays are cached: $DMLBENCH_CACHE, else ~/.cache/dmlbench."""
    return Path(os.environ.get("DMLBENCH_CACHE") or Path.home() / ".cache" / "dmlbench")


def data_roots() -> list[Path]:
    """Roots given by $DMLBENCH_DATA (os.pathsep-separated), in order."""
    value = os.environ.get("DMLBENCH_DATA", "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def load_dataset(name: str, root: str | None = None, *, image_size: int | None = None, **kwargs) -> Splits:
    """Load a registered dataset by name (``root`` overrides the search). ``image_size``: the crop size
    of a photo dataset, whose decoded cache is sized for it."""
    if image_size is not None:
        kwargs["image_size"] = image_size
    return DATASETS.get(name).load(root=root, **kwargs)
