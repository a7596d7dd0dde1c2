"""The photo benchmarks' on-disk layouts, read into class-split image lists: the shared parts.

Each photo dataset's module (``cub``, ``cars196``, ``sop``, ``inshop``) holds its own reader, the
classmethod ``read_layout(root, *, val_fraction, seed) -> Layout`` of its class: image paths
(relative to the root) with their class ids, split by class as docs/protocol.md, Splits
prescribes, plus a validation split carved out of the train classes (class-disjoint:
``val_fraction`` of them, drawn with ``seed``). Nothing here opens an image; decoding and caching are
a separate step. This module holds what the readers share: :class:`ImageList`, :class:`Layout`,
:class:`LayoutError`, the line parsers, :func:`carve_validation`, :func:`split_by_class`, and
:func:`read_layout`, which calls a registered dataset's reader by name.

A missing file or a malformed line raises :class:`LayoutError` naming the file (and line) and where
the dataset comes from (its class's ``origin``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetNotFoundError
from .base import dataset_classes, dataset_fact
# The command that fetches (where the network allows), unpacks and caches a dataset.
FETCH_COMMAND = "dmlbench data prepare {name} --root DIR"


class LayoutError(DatasetNotFoundError):
    """A dataset's official files are missing or malformed; the message names the file."""


@dataclass
class ImageList:
    paths: list[str]  # relative to the dataset root
    labels: np.ndarray  # (N,) int64 class ids as the dataset numbers them
    super_labels: np.ndarray | None = None  # (N,) int64 super-class ids (SOP, In-Shop)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def classes(self) -> list[int]:
        return sorted(int(c) for c in np.unique(self.labels))

    def subset(self, mask: np.ndarray) -> "ImageList":
        return ImageList([p for p, keep in zip(self.paths, mask) if keep], self.labels[mask],
                         None if self.super_labels is None else self.super_labels[mask])


@dataclass
class Layout:
    name: str
    root: Path
    train: ImageList
    val: ImageList
    test: ImageList  # the queries, for In-Shop
    gallery: ImageList | None = None  # In-Shop's gallery; None means the test set is its own reference
    class_names: dict[int, str] | None = None
    variant: str = "official"  # which of the dataset's known layouts this is (Cars196: annos, devkit, csv)


def origin(dataset: str) -> str:
    """Where dataset ``dataset`` comes from (its page and files), for messages."""
    return dataset_fact(dataset, "origin", "") or "its authors' page"


def need(root: Path, name: str, dataset: str) -> Path:
    """``root / name``, or a LayoutError naming it, where the dataset comes from and the fetch command."""
    path = root / name
    if not path.is_file():
        raise LayoutError(f"{dataset}: expected {path}, which is missing. The dataset comes from "
                          f"{origin(dataset)}; unpack it so that this file sits in {root}, or run "
                          f"'{FETCH_COMMAND.format(name=dataset)}'.")
    return path


def rows(path: Path, columns: int, dataset: str, *, skip: int = 0) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty line after ``skip`` lines, each with ``columns`` fields."""
    out = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if number <= skip or not line.strip():
                continue
            fields = line.split()
            if len(fields) != columns:
                raise LayoutError(f"{dataset}: {path} line {number} is malformed: expected {columns} fields, "
                                  f"got {len(fields)}: {line.strip()!r}")
            out.append((number, fields))
    return out


def integer(value: str, path: Path, number: int, dataset: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise LayoutError(f"{dataset}: {path} line {number} is malformed: {value!r} is not an integer") from None


def carve_validation(train: ImageList, val_fraction: float, seed: int) -> tuple[ImageList, ImageList]:
    """Move ``val_fraction`` of the train classes (at least one, seeded) into a validation split."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    classes = np.array(train.classes)
    if len(classes) < 2:
        raise ValueError("a class-disjoint validation split needs at least two train classes")
    n_val = min(max(1, round(val_fraction * len(classes))), len(classes) - 1)
    val_classes = np.random.default_rng(seed).choice(classes, size=n_val, replace=False)
    in_val = np.isin(train.labels, val_classes)
    return train.subset(~in_val), train.subset(in_val)


def split_by_class(images: ImageList, train_classes, test_classes, name: str, root: Path,
                   val_fraction: float, seed: int, class_names=None, variant: str = "official") -> Layout:
    """The layout of ``images`` split into train (and validation carved from it) and test by class id."""
    train_all = images.subset(np.isin(images.labels, list(train_classes)))
    test = images.subset(np.isin(images.labels, list(test_classes)))
    train, val = carve_validation(train_all, val_fraction, seed)
    return Layout(name, root, train, val, test, None, class_names, variant)


def readers() -> dict[str, object]:
    """name -> layout reader of every registered dataset that has one (the photo datasets)."""
    return {name: cls.read_layout for name, cls in dataset_classes().items() if callable(getattr(cls, "read_layout", None))}


def read_layout(name: str, root, **kwargs) -> Layout:
    """Dataset ``name``'s layout under ``root`` (its class's ``read_layout``); a damaged file's error
    says where the official one comes from."""
    found = readers()
    if name not in found:
        raise ValueError(f"unknown dataset layout {name!r}; valid: {sorted(found)}")
    try:
        return found[name](Path(root), **kwargs)
    except LayoutError as error:
        message = str(error)
        if "dmlbench data prepare" in message:
            raise
        # a damaged or edited file: the official one comes back from the dataset's archive
        raise LayoutError(f"{message}. The official file comes from {origin(name)}; restore it, or fetch the "
                          f"dataset again with '{FETCH_COMMAND.format(name=name)}' into an empty folder.") from None
