"""The photo benchmarks' shared machinery: :class:`PhotoDataset`, the layout search, the decoded caches.

Each benchmark (CUB-200-2011, Cars196, SOP, In-Shop) is a :class:`PhotoDataset` subclass in its own
module (``cub``, ``cars196``, ``sop``, ``inshop``) holding its facts (layout markers, sub-folders,
archives and checksums, split sizes, Recall@K) and its layout reader. ``load(root=None)`` finds the
dataset's official layout (its ``read_layout``, helpers in :mod:`.layouts`), splits it by class as
docs/protocol.md prescribes (validation = 20% of the train classes, drawn with seed 0, the same
for every run), and serves the images from a decoded cache (:mod:`.image_cache`): every image of the
layout decoded once, its shorter side resized to the evaluation size (256 pixels for 224-pixel crops). The cache is built on first use (or
ahead of time by ``dmlbench data prepare <name>``) under ``$DMLBENCH_CACHE/images/<name>/<key>``,
where the key hashes the layout folder, the image list and the size, so a moved or changed dataset
gets a new cache and two processes never build the same one at once (a file lock).

The layout folder is, in order: the ``root`` argument (the folder itself, or a known sub-folder such
as ``CUB_200_2011``); each folder of ``$DMLBENCH_DATA`` and its known sub-folders; the folder
``dmlbench data prepare`` downloads into (``$DMLBENCH_CACHE/data/<name>``). Not found is an error
naming the file looked for, every folder searched and the command that fetches the dataset.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from .base import (DATASETS, DEFAULT_IMAGE_SIZE, Dataset, DatasetNames, LabelledSet, Splits, cache_dir,
                   data_roots)
from .counts import Counts, check_counts
from .download import Archive, DownloadError, download_dataset
from .image_cache import ImageCache, build_cache
from .layouts import FETCH_COMMAND, ImageList, Layout, LayoutError, origin, read_layout
from .transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger("dmlbench")

VALIDATION_FRACTION = 0.2
VALIDATION_SEED = 0


class PhotoDataset(Dataset):
    """The contract of a photo benchmark: :class:`Dataset`'s, plus its layout's facts and reader.

    ``load(root=None, cache=True, image_size=None)`` finds the layout folder (:func:`locate_layout`),
    reads it with ``read_layout`` and serves every split from the decoded image cache sized for
    ``image_size``-pixel crops (``default_image_size`` when None): :class:`PhotoSet` splits, ImageNet
    statistics as ``mean`` / ``std``. A subclass sets the facts below and implements ``read_layout``.
    """

    channels: ClassVar[int] = 3
    default_image_size: ClassVar[int | None] = DEFAULT_IMAGE_SIZE
    markers: ClassVar[tuple[str, ...]] = ()  # files (relative to a folder) that mark it as the layout; the first is the index
    subfolders: ClassVar[tuple[str, ...]] = ()  # sub-folder names the layout is often found under, below a data root
    origin: ClassVar[str] = ""  # where the dataset comes from: its page and files, for messages
    archives: ClassVar[list[Archive]] = []  # what 'dmlbench data prepare' downloads, with URLs and MD5 sums
    download_subfolder: ClassVar[str] = ""  # where the archives' layout lands, relative to the download root
    download_needs: ClassVar[tuple[str, ...]] = ()  # further paths (relative to that root) a finished download has
    manual_steps: ClassVar[str | None] = None  # where nothing can be downloaded: how to fetch the files by hand
    missing_hint: ClassVar[str | None] = None  # where a variant's images may be, when listed ones are missing
    download_alternatives: ClassVar[str | None] = None  # a failed download's message: other copies and layouts
    counts: ClassVar["Counts | None"] = None  # the published image and class counts, checked on every load (.counts)
    variants: ClassVar[tuple[str, ...]] = ("official",)  # the layouts its reader accepts, for messages and docs

    @classmethod
    def read_layout(cls, root: Path, *, val_fraction: float = 0.2, seed: int = 0) -> Layout:
        """The layout under ``root``: train / val (``val_fraction`` of the train classes, drawn with
        ``seed``) / test (and gallery) image lists; LayoutError naming a missing or malformed file."""
        raise NotImplementedError(f"{cls.__name__} must implement read_layout(root, *, val_fraction, seed)")

    @classmethod
    def load(cls, root: str | os.PathLike | None = None, cache: bool = True, image_size: int | None = None,
             subset: bool = False) -> Splits:
        # The decoded cache is what makes training on photos fast; it is always used.
        return load_benchmark(cls.name, root, image_size=image_size, subset=subset)

    @classmethod
    def fetch_by_hand(cls, root: Path) -> Path:
        """The layout folder under ``root`` of a dataset with no archive to download: DownloadError with
        ``manual_steps`` (ROOT replaced by ``root``) until its files are in place."""
        raise DownloadError(f"{cls.name}: nothing to download. "
                            + (cls.manual_steps or f"Fetch it from {cls.origin}.").replace("ROOT", str(root)))


# The registered photo datasets' names, in registration order (a live view: a dataset registered later is in it).
PHOTO_DATASETS = DatasetNames(PhotoDataset)

def download_folder(name: str) -> Path:
    """Where ``dmlbench data prepare <name>`` puts a dataset when no root is given."""
    return cache_dir() / "data" / name


def photo_dataset(name: str) -> type[PhotoDataset]:
    """The registered photo dataset ``name``'s class; ValueError naming the valid names otherwise."""
    cls = DATASETS.get(name) if name in PHOTO_DATASETS else None
    if cls is None:
        raise ValueError(f"unknown photo dataset {name!r}; valid: {', '.join(PHOTO_DATASETS)}")
    return cls


def _is_layout(folder: Path, name: str) -> bool:
    return any((folder / marker).is_file() for marker in photo_dataset(name).markers)


def _candidates(base: Path, name: str) -> list[Path]:
    return [base] + [base / sub for sub in photo_dataset(name).subfolders]


def locate_layout(name: str, root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The folder holding ``name``'s official layout, and how it was found; LayoutError if none."""
    searched: list[Path] = []
    if root is not None:
        for folder in _candidates(Path(root).expanduser(), name):
            searched.append(folder)
            if _is_layout(folder, name):
                return folder, f"data root {folder}"
    else:
        for base in data_roots():
            for folder in _candidates(base, name):
                searched.append(folder)
                if _is_layout(folder, name):
                    return folder, f"$DMLBENCH_DATA {folder}"
        for folder in _candidates(download_folder(name), name):
            searched.append(folder)
            if _is_layout(folder, name):
                return folder, f"download folder {folder}"
    looked = ", ".join(str(s) for s in searched) or "(no folder: $DMLBENCH_DATA is empty)"
    raise LayoutError(
        f"{name}: no folder holding {' or '.join(photo_dataset(name).markers)} was found; looked in: {looked}. "
        f"The dataset comes from {origin(name)}. Give its folder as data_root (or in $DMLBENCH_DATA), or run "
        f"'{FETCH_COMMAND.format(name=name)}'.")


@dataclass
class PhotoSet(LabelledSet):
    """A split of a real benchmark: rows of a decoded image cache with their class labels."""

    cache: ImageCache
    rows: np.ndarray  # (N,) row of each image in the cache
    labels: np.ndarray  # (N,) int64 class ids as the dataset numbers them
    super_labels: np.ndarray | None = None  # (N,) super-class ids (SOP, In-Shop)

    @property
    def paths(self) -> list[str]:
        return [self.cache.paths[int(r)] for r in self.rows]

    @property
    def images(self) -> "PhotoSet":
        """Indexable like an image array: ``images[i]`` is image i as a (3, H, W) uint8 array."""
        return self

    def __getitem__(self, i: int) -> np.ndarray:
        return self.cache[int(self.rows[i])].numpy()


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another process builds the same cache
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _all_images(layout: Layout) -> ImageList:
    """Every image of the layout once, in split order (train, val, test, gallery)."""
    parts = [p for p in (layout.train, layout.val, layout.test, layout.gallery) if p is not None]
    seen: dict[str, int] = {}
    paths, labels = [], []
    for part in parts:
        for path, label in zip(part.paths, part.labels):
            if path not in seen:
                seen[path] = len(paths)
                paths.append(path)
                labels.append(label)
    return ImageList(paths, np.array(labels, dtype=np.int64))


def cache_folder(name: str, layout: Layout, images: ImageList, shorter_side: int) -> Path:
    key = hashlib.sha256(json.dumps([str(Path(layout.root).resolve()), shorter_side, images.paths]).encode()).hexdigest()
    return cache_dir() / "images" / name / f"s{shorter_side}-{key[:16]}"


def cache_side(image_size: int | None) -> int:
    """The cached images' shorter side for crops of ``image_size``: the evaluation resize (size x 8/7,
    256 for 224-pixel crops), from which training crops are cut too."""
    return round((image_size or DEFAULT_IMAGE_SIZE) * 8 / 7)


def image_cache(name: str, layout: Layout, *, shorter_side: int, workers: int | None = None) -> ImageCache:
    """The layout's decoded cache, built (under a lock; resumed after an interruption) when it does not
    exist yet, on ``workers`` processes (default: one per core)."""
    images = _all_images(layout)
    folder = cache_folder(name, layout, images, shorter_side)
    with _file_lock(folder.with_name(folder.name + ".lock")):
        if not (folder / "index.npz").is_file():
            log.info("%s: decoding %d images into %s (once)", name, len(images), folder)
        return build_cache(layout.root, images, folder, shorter_side=shorter_side, workers=workers)


def checked_layout(name: str, root: str | os.PathLike | None = None, *, subset: bool = False) -> tuple[Layout, str, dict]:
    """(the layout of benchmark ``name``, where it was found, its counts record): no split empty, the
    published counts met (unless ``subset``), every listed image present."""
    folder, where = locate_layout(name, root)
    layout = read_layout(name, folder, val_fraction=VALIDATION_FRACTION, seed=VALIDATION_SEED)
    for part, images in (("train", layout.train), ("validation", layout.val), ("test", layout.test)):
        if len(images) == 0:
            raise LayoutError(f"{name}: the {part} split of {folder} is empty")
    counts = check_counts(name, layout, photo_dataset(name).counts, variant=layout.variant, subset=subset)
    missing_images(name, layout)
    return layout, where, counts


def missing_images(name: str, layout: Layout) -> None:
    """LayoutError before any decoding when a listed image is not on disk: how many, the first few."""
    images = _all_images(layout)
    missing = [p for p in images.paths if not (layout.root / p).is_file()]
    if missing:
        hint = photo_dataset(name).missing_hint
        raise LayoutError(f"{name} ({layout.variant} layout in {layout.root}): {len(missing):,} of {len(images):,} "
                          f"listed images are missing, e.g. {', '.join(missing[:3])}. Likely cause: the image folder "
                          f"is elsewhere or not unpacked (the list names them relative to {layout.root}"
                          + (f"; {hint}" if hint else "") + ").")


def load_benchmark(name: str, root: str | os.PathLike | None = None, *, image_size: int | None = None,
                   subset: bool = False, workers: int | None = None) -> Splits:
    """The class splits of benchmark ``name``, served from its decoded image cache for ``image_size`` crops."""
    shorter_side = cache_side(image_size or photo_dataset(name).default_image_size)
    layout, where, counts = checked_layout(name, root, subset=subset)
    folder = layout.root
    store = image_cache(name, layout, shorter_side=shorter_side, workers=workers)
    row_of = {path: row for row, path in enumerate(store.paths)}

    def photos(images: ImageList | None) -> PhotoSet | None:
        if images is None:
            return None
        return PhotoSet(store, np.array([row_of[p] for p in images.paths], dtype=np.int64), images.labels,
                        images.super_labels)

    return Splits(
        name=name, train=photos(layout.train), val=photos(layout.val), test=photos(layout.test),
        gallery=photos(layout.gallery), class_names=dict(layout.class_names or {}),
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
        source={"where": where, "root": str(folder), "cache": str(store.folder), "variant": layout.variant,
                "count_check": counts,
                "validation": f"{VALIDATION_FRACTION:.0%} of the train classes, seed {VALIDATION_SEED}"},
    )


def prepare_benchmark(name: str, root: str | os.PathLike | None = None, *, image_size: int | None = None,
                      download: bool = True, url: str | None = None, subset: bool = False,
                      workers: int | None = None) -> str:
    """Find benchmark ``name``'s layout (or download, verify and unpack it into ``root``, or the
    download folder, where the network allows), decode its images into the cache for ``image_size``
    crops, and describe the result."""
    try:
        folder, where = locate_layout(name, root)
    except LayoutError:
        if not download:
            raise
        target = Path(root) if root else download_folder(name)
        log.warning("%s: not found; downloading into %s", name, target)
        folder, where = download_dataset(name, target, base_url=url), f"downloaded into {target}"
    splits = load_benchmark(name, folder, image_size=image_size, subset=subset, workers=workers)
    parts = [("train", splits.train), ("validation", splits.val), ("test", splits.test), ("gallery", splits.gallery)]
    counts = ", ".join(f"{label} {len(part)} images / {len(part.classes)} classes" for label, part in parts if part)
    cache = Path(splits.source["cache"])
    size = sum(f.stat().st_size for f in cache.iterdir() if f.is_file())
    return (f"{name}: {splits.source['variant']} layout in {folder} ({where}); {counts}"
            f"{' (a deliberate subset: the published counts differ)' if subset else ''}; images decoded for "
            f"{image_size or photo_dataset(name).default_image_size}-pixel crops in {cache} ({size / 1e6:,.1f} MB)")
