"""Datasets of the study: images and labels split by class into train / validation / test.

One module per dataset (``fashion_mnist``, ``cub``, ``cars196``, ``sop``, ``inshop``) holds a
:class:`Dataset` subclass: the dataset's facts as class attributes and its loader, registered in
:data:`DATASETS` under its ``name`` (``@register_dataset``). Everything else reads the facts from
the class (``DATASETS.get(name).split_sizes``), never from a table of its own; the photo
benchmarks' extra facts and shared machinery are in :mod:`.benchmarks` (:class:`PhotoDataset`).
docs/adding-a-dataset.md walks through adding one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from ..errors import SealedSplitError
from ..registry import Registry

DATASETS = Registry("dataset")
DEFAULT_IMAGE_SIZE = 224  # the crop side of photo datasets when a run gives no image_size


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


class TuningSplits:
    """A dataset's train and validation splits with the test split sealed: what hyperparameter search
    sees (dmlbench.study.tuner). It holds no reference to the test images or labels; asking for
    ``test`` or ``gallery`` raises :class:`dmlbench.errors.SealedSplitError`."""

    def __init__(self, splits: Splits):
        self.name, self.train, self.val = splits.name, splits.train, splits.val
        self.class_names = {c: splits.class_names.get(c, str(c)) for c in {*splits.train.classes, *splits.val.classes}}
        self.mean, self.std = splits.mean, splits.std
        self.source = {"sealed_test": True, **{k: v for k, v in splits.source.items() if "test" not in k}}

    def _sealed(self, what: str):
        raise SealedSplitError(f"{self.name}: the {what} split is sealed while tuning: a search sees the train "
                               f"and validation classes only; test numbers come from the study's cells")

    test = property(lambda self: self._sealed("test"))
    gallery = property(lambda self: self._sealed("gallery"))

    def summary(self) -> dict:
        return {"name": self.name, "num_train": len(self.train), "num_val": len(self.val),
                "train_classes": self.train.classes, "val_classes": self.val.classes, "test": "sealed"}


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


class Dataset:
    """The dataset contract: a class, never instantiated, with its facts and a loader.

    ``load(root=None, cache=True) -> Splits`` finds the dataset's files (``root`` when given, else
    the dataset's own search: ``$DMLBENCH_DATA``, caches), and returns its :class:`Splits`: ``train``
    and ``val`` drawn from the train classes and ``test`` (plus ``gallery``, where the test images
    are queries against a separate set) from test classes that share none with them, each split
    offering ``len``, ``labels`` and ``classes``; ``mean`` / ``std`` are the input statistics on the
    0-1 scale; ``source`` says where the files came from. Missing files raise
    :class:`dmlbench.errors.DatasetNotFoundError` naming where it looked and how to get them. A photo
    dataset's ``load`` also takes ``image_size`` (the crop side its decoded cache is sized for).

    The facts, read by whatever needs them (the estimate, the preflight checks, the evaluation):
    """

    name: ClassVar[str] = ""  # the registered name, as a study's ``dataset:`` gives it
    description: ClassVar[str] = ""  # one line: what it is, where from, how it is split (the class's docstring)
    # (train images, test images or queries, gallery images) as published: train before the validation
    # classes are carved out of it (the study's estimate reads it); None where validation is not carved
    split_sizes: ClassVar[tuple[int, int, int] | None] = None
    num_classes: ClassVar[tuple[int, int] | None] = None  # (train classes, test classes) as published
    super_labels: ClassVar[bool] = False  # whether the images carry super-class labels (hierarchical batches)
    # What it loads (files, splits, normalisation), as a number that a run's identity includes: bump it
    # when that changes, so that runs on the old data are never reused (1, the first, is left out of the hash).
    version: ClassVar[int] = 1
    folds: ClassVar[int] = 0  # independent redrawn splits a study runs every cell on (RunConfig.fold); 0: one split
    recall_ks: ClassVar[tuple[int, ...]] = ()  # the K of the Recall@K its papers report (added to the common ones)
    channels: ClassVar[int] = 3  # image channels
    validation: ClassVar[bool] = True  # whether it has validation classes (a study's tuning block needs them)
    default_image_size: ClassVar[int | None] = None  # side of the (square) images a network gets by default

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.description and not cls.__dict__.get("__doc__"):
            cls.__doc__ = cls.description  # what 'dmlbench list' shows

    @classmethod
    def load(cls, root: str | os.PathLike | None = None, cache: bool = True) -> Splits:
        raise NotImplementedError(f"{cls.__name__} must implement load(root=None, cache=True) -> Splits")


def register_dataset(cls: type) -> type:
    """Class decorator: register a :class:`Dataset` subclass in DATASETS under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name to register it under")
    return DATASETS.register(cls.name)(cls)


def dataset_classes() -> dict[str, type]:
    """Every registered dataset class by name, in the order they were registered."""
    return dict(DATASETS._entries)  # names() sorts; the registry's own dict keeps registration order


def dataset_fact(name: str, attribute: str, default: Any = None) -> Any:
    """``attribute`` of registered dataset ``name``; ``default`` for an unknown name or a class without it."""
    cls = dataset_classes().get(name)
    return default if cls is None else getattr(cls, attribute, default)


def extra_recall_ks(name: str) -> tuple[int, ...]:
    """The K of Recall@K that dataset ``name``'s papers report (SOP: 1, 10, 100, 1000); () if unknown."""
    return tuple(dataset_fact(name, "recall_ks", ()) or ())


class DatasetFacts(Mapping):
    """A live table name -> ``attribute`` over the registered datasets that set it (not None) and are
    ``kind`` subclasses, in registration order. Reading it reads the classes, so a dataset registered
    later is in it; setting an item sets the class attribute (which is how tests patch a fact)."""

    def __init__(self, attribute: str, kind: type = object, convert: Callable[[Any], Any] | None = None):
        self.attribute, self.kind, self.convert = attribute, kind, convert

    def _classes(self) -> dict[str, type]:
        return {name: cls for name, cls in dataset_classes().items()
                if isinstance(cls, type) and issubclass(cls, self.kind) and getattr(cls, self.attribute, None) is not None}

    def __getitem__(self, name: str) -> Any:
        value = getattr(self._classes()[name], self.attribute)
        return self.convert(value) if self.convert else value

    def __setitem__(self, name: str, value: Any) -> None:
        setattr(DATASETS.get(name), self.attribute, value)

    def __iter__(self):
        return iter(self._classes())

    def __len__(self) -> int:
        return len(self._classes())

    def __repr__(self) -> str:
        return f"DatasetFacts({self.attribute!r}: {dict(self)!r})"


class DatasetNames(Sequence):
    """The names of the registered datasets that are ``kind`` subclasses, in registration order, read live."""

    def __init__(self, kind: type):
        self.kind = kind

    def _names(self) -> list[str]:
        return [name for name, cls in dataset_classes().items() if isinstance(cls, type) and issubclass(cls, self.kind)]

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __repr__(self) -> str:
        return repr(tuple(self._names()))
