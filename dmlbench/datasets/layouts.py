"""The official on-disk layouts of the four real DML benchmarks, read into class-split image lists.

Each reader takes the dataset's root folder and returns a :class:`Layout`: image paths (relative to
the root) with their class ids, split by class as ../shared/PROTOCOL.md section 1 prescribes, plus a
validation split carved out of the train classes (class-disjoint: ``val_fraction`` of them, drawn
with ``seed``). Nothing here opens an image; decoding and caching are a separate step.

- CUB-200-2011: ``images.txt`` (id, path under ``images/``), ``image_class_labels.txt`` (id, class
  1-200), ``classes.txt`` (class, name). Train classes 1-100, test 101-200.
- Cars196: ``cars_annos.mat`` (struct array ``annotations`` with ``relative_im_path``, ``class``;
  ``class_names``) and ``car_ims/``. Train classes 1-98, test 99-196, the official train/test
  image flag ignored (the DML protocol splits by class).
- Stanford Online Products: ``Ebay_train.txt`` / ``Ebay_test.txt`` (header, then image id, class id,
  super-class id, path). Train = Ebay_train, test = Ebay_test.
- In-Shop Clothes: ``list_eval_partition.txt`` (count, header, then path, item id, status
  train / query / gallery), images under ``img/``. Test = queries against the gallery; the
  super-class of an item is its category folder (e.g. ``WOMEN/Dresses``).

A missing file or a malformed line raises :class:`LayoutError` naming the file (and line) and where
the dataset comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetNotFoundError

SOURCES = {
    "cub": "https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz)",
    "cars196": "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (car_ims.tgz and cars_annos.mat)",
    "sop": "https://cvgl.stanford.edu/projects/lifted_struct/ (Stanford_Online_Products.zip)",
    "inshop": "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html "
              "(img.zip and Eval/list_eval_partition.txt)",
}
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


def _need(root: Path, name: str, dataset: str) -> Path:
    path = root / name
    if not path.is_file():
        raise LayoutError(f"{dataset}: expected {path}, which is missing. The dataset comes from "
                          f"{SOURCES[dataset]}; unpack it so that this file sits in {root}, or run "
                          f"'{FETCH_COMMAND.format(name=dataset)}'.")
    return path


def _rows(path: Path, columns: int, dataset: str, *, skip: int = 0) -> list[tuple[int, list[str]]]:
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


def _int(value: str, path: Path, number: int, dataset: str) -> int:
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


def _split_by_class(images: ImageList, train_classes, test_classes, name: str, root: Path,
                    val_fraction: float, seed: int, class_names=None) -> Layout:
    train_all = images.subset(np.isin(images.labels, list(train_classes)))
    test = images.subset(np.isin(images.labels, list(test_classes)))
    train, val = carve_validation(train_all, val_fraction, seed)
    return Layout(name, root, train, val, test, None, class_names)


def read_cub(root, *, val_fraction: float = 0.2, seed: int = 0) -> Layout:
    root = Path(root)
    images_txt = _need(root, "images.txt", "cub")
    labels_txt = _need(root, "image_class_labels.txt", "cub")
    classes_txt = _need(root, "classes.txt", "cub")
    paths = {_int(f[0], images_txt, n, "cub"): f[1] for n, f in _rows(images_txt, 2, "cub")}
    labels = {_int(f[0], labels_txt, n, "cub"): _int(f[1], labels_txt, n, "cub") for n, f in _rows(labels_txt, 2, "cub")}
    names = {}
    with classes_txt.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                key, _, name = line.strip().partition(" ")
                names[_int(key, classes_txt, number, "cub")] = name
    if set(paths) != set(labels):
        missing = sorted(set(paths) ^ set(labels))[:5]
        raise LayoutError(f"cub: images.txt and image_class_labels.txt list different image ids (e.g. {missing})")
    ids = sorted(paths)
    images = ImageList([f"images/{paths[i]}" for i in ids], np.array([labels[i] for i in ids], dtype=np.int64))
    return _split_by_class(images, range(1, 101), range(101, 201), "cub", root, val_fraction, seed, names)


def read_cars196(root, *, val_fraction: float = 0.2, seed: int = 0) -> Layout:
    from scipy.io import loadmat

    root = Path(root)
    mat_path = _need(root, "cars_annos.mat", "cars196")
    try:
        mat = loadmat(mat_path, squeeze_me=True, struct_as_record=False)
    except Exception as error:  # scipy raises several kinds for a damaged file
        raise LayoutError(f"cars196: {mat_path} is not a readable MATLAB file ({error})") from None
    if "annotations" not in mat:
        raise LayoutError(f"cars196: {mat_path} has no 'annotations' struct array (found {sorted(k for k in mat if not k.startswith('__'))})")
    records = np.atleast_1d(mat["annotations"])
    paths, labels = [], []
    for number, record in enumerate(records, start=1):
        try:
            paths.append(str(record.relative_im_path))
            labels.append(int(record.__dict__["class"]))
        except (AttributeError, KeyError, TypeError, ValueError):
            raise LayoutError(f"cars196: {mat_path} annotation {number} lacks relative_im_path or class") from None
    names = None
    if "class_names" in mat:
        names = {i + 1: str(n) for i, n in enumerate(np.atleast_1d(mat["class_names"]))}
    images = ImageList(paths, np.array(labels, dtype=np.int64))
    return _split_by_class(images, range(1, 99), range(99, 197), "cars196", root, val_fraction, seed, names)


def _read_ebay(path: Path) -> ImageList:
    rows = _rows(path, 4, "sop", skip=1)
    return ImageList([f[3] for _, f in rows],
                     np.array([_int(f[1], path, n, "sop") for n, f in rows], dtype=np.int64),
                     np.array([_int(f[2], path, n, "sop") for n, f in rows], dtype=np.int64))


def read_sop(root, *, val_fraction: float = 0.2, seed: int = 0) -> Layout:
    root = Path(root)
    train_all = _read_ebay(_need(root, "Ebay_train.txt", "sop"))
    test = _read_ebay(_need(root, "Ebay_test.txt", "sop"))
    shared = set(train_all.classes) & set(test.classes)
    if shared:
        raise LayoutError(f"sop: Ebay_train.txt and Ebay_test.txt share classes (e.g. {sorted(shared)[:5]})")
    train, val = carve_validation(train_all, val_fraction, seed)
    return Layout("sop", root, train, val, test)


def read_inshop(root, *, val_fraction: float = 0.2, seed: int = 0) -> Layout:
    root = Path(root)
    candidates = [root / "list_eval_partition.txt", root / "Eval" / "list_eval_partition.txt"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise LayoutError(f"inshop: expected {candidates[0]} (or {candidates[1]}), which is missing. The dataset "
                          f"comes from {SOURCES['inshop']}; '{FETCH_COMMAND.format(name='inshop')}' says which "
                          f"files to fetch and where they go.")
    rows = _rows(path, 3, "inshop", skip=2)
    statuses = {"train", "query", "gallery"}
    paths, items, status, categories = [], [], [], []
    for number, (image, item, state) in rows:
        if state not in statuses:
            raise LayoutError(f"inshop: {path} line {number} is malformed: status {state!r} is not one of "
                              f"{sorted(statuses)}")
        if not item.startswith("id_") or not item[3:].isdigit():
            raise LayoutError(f"inshop: {path} line {number} is malformed: item {item!r} is not like id_00000001")
        parts = image.split("/")
        paths.append(image)
        items.append(int(item[3:]))
        status.append(state)
        categories.append("/".join(parts[1:3]) if len(parts) >= 4 else "")
    names = sorted(set(categories))
    super_ids = np.array([names.index(c) for c in categories], dtype=np.int64)
    everything = ImageList(paths, np.array(items, dtype=np.int64), super_ids)
    status = np.array(status)
    train, val = carve_validation(everything.subset(status == "train"), val_fraction, seed)
    return Layout("inshop", root, train, val, everything.subset(status == "query"),
                  everything.subset(status == "gallery"), {i: n for i, n in enumerate(names)})


READERS = {"cub": read_cub, "cars196": read_cars196, "sop": read_sop, "inshop": read_inshop}


def read_layout(name: str, root, **kwargs) -> Layout:
    if name not in READERS:
        raise ValueError(f"unknown dataset layout {name!r}; valid: {sorted(READERS)}")
    try:
        return READERS[name](root, **kwargs)
    except LayoutError as error:
        message = str(error)
        if "dmlbench data prepare" in message:
            raise
        # a damaged or edited file: the official one comes back from the dataset's archive
        raise LayoutError(f"{message}. The official file comes from {SOURCES[name]}; restore it, or fetch the "
                          f"dataset again with '{FETCH_COMMAND.format(name=name)}' into an empty folder.") from None
