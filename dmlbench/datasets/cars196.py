"""Cars196 (Krause et al. 2013): 196 car models, every fact of the dataset and its layout readers.

Train classes 1-98, test 99-196 (the DML protocol splits by class; the official train/test image
flag is ignored). Three layouts are in circulation, each read into the same class ids and splits:

- ``annos``: the release used by the DML literature: ``cars_annos.mat`` (struct array
  ``annotations`` with ``relative_im_path``, ``class``; ``class_names``) and ``car_ims/``.
  Its Stanford host has answered 404 since 2023.
- ``devkit``: the classification release: ``cars_train/`` and ``cars_test/`` (8,144 + 8,041 images,
  also found nested as ``cars_train/cars_train/``), ``devkit/cars_train_annos.mat`` and the test
  labels published apart as ``cars_test_annos_withlabels.mat`` (beside ``devkit/`` or in it): struct
  arrays ``annotations`` with ``fname`` and ``class``; ``devkit/cars_meta.mat`` holds ``class_names``.
- ``csv``: the class-folder copy that pytorch-metric-learning downloads: ``names.csv`` (one class
  name a line), ``anno_train.csv`` / ``anno_test.csv`` (``file,x1,y1,x2,y2,class``, no header) and
  the images under ``car_data/car_data/<train|test>/<class name, '/' as '-'>/<file>`` (or
  ``car_data/<train|test>/...``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import register_dataset
from .benchmarks import PhotoDataset
from .counts import OFFICIAL
from .download import Archive
from .layouts import ImageList, Layout, LayoutError, integer, need, split_by_class

DEVKIT_TEST_LABELS = ("cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat")
WHERE_TO_GET = (
    "The original files (car_ims.tgz, cars_annos.mat) are no longer served by Stanford. Copies in circulation "
    "that dmlbench reads as they unpack: the devkit release (cars_train.tgz, cars_test.tgz, car_devkit.tgz "
    "and cars_test_annos_withlabels.mat, e.g. Kaggle's 'stanford-cars-dataset' mirrors) and the class-folder "
    "release with anno_train.csv / anno_test.csv / names.csv (Kaggle 'jutrera/stanford-car-dataset-by-classes-"
    "folder', which pytorch-metric-learning downloads). Unpack one into ROOT and run the same command again; "
    "neither is downloaded automatically, since no published MD5 sum vouches for those copies.")


def _load(path: Path) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as error:  # scipy raises several kinds for a damaged file
        raise LayoutError(f"cars196: {path} is not a readable MATLAB file ({error})") from None


def _variable(mat: dict, path: Path, variable: str):
    if variable not in mat:
        raise LayoutError(f"cars196: {path} has no {variable!r} (found {sorted(k for k in mat if not k.startswith('__'))})")
    return np.atleast_1d(mat[variable])


def _records(path: Path, name_field: str) -> tuple[list[str], list[int], dict]:
    """(file or path, class) of every annotation of a Cars196 .mat file, and the file's variables."""
    mat = _load(path)
    names, labels = [], []
    for number, record in enumerate(_variable(mat, path, "annotations"), start=1):
        try:
            names.append(str(getattr(record, name_field)))
            labels.append(int(record.__dict__["class"]))
        except (AttributeError, KeyError, TypeError, ValueError):
            raise LayoutError(f"cars196: {path} annotation {number} lacks {name_field} or class") from None
    return names, labels, mat


def _class_names(mat: dict, path: Path) -> dict[int, str]:
    return {i + 1: str(n) for i, n in enumerate(_variable(mat, path, "class_names"))}


def _first_folder(root: Path, candidates: list[str], probe: str) -> str:
    """The candidate folder (relative to root) that holds ``probe``; the first when none does (the
    images are checked before decoding, and the message names the folders looked in)."""
    return next((folder for folder in candidates if (root / folder / probe).is_file()), candidates[0])


def read_annos(root: Path) -> tuple[ImageList, dict[int, str] | None]:
    path = need(root, "cars_annos.mat", "cars196")
    paths, labels, mat = _records(path, "relative_im_path")
    names = _class_names(mat, path) if "class_names" in mat else None
    return ImageList(paths, np.array(labels, dtype=np.int64)), names


def read_devkit(root: Path) -> tuple[ImageList, dict[int, str] | None]:
    train_mat = need(root, "devkit/cars_train_annos.mat", "cars196")
    test_mat = next((root / p for p in DEVKIT_TEST_LABELS if (root / p).is_file()), None)
    if test_mat is None:
        raise LayoutError(f"cars196 (devkit layout in {root}): the test labels are missing: "
                          f"{' or '.join(str(root / p) for p in DEVKIT_TEST_LABELS)} (devkit/cars_test_annos.mat has no "
                          f"class field); they are published apart from the devkit as cars_test_annos_withlabels.mat")
    paths, labels = [], []
    for split, mat in (("train", train_mat), ("test", test_mat)):
        files, classes, _ = _records(mat, "fname")
        if files:
            folder = _first_folder(root, [f"cars_{split}", f"cars_{split}/cars_{split}"], files[0])
            paths += [f"{folder}/{f}" for f in files]
            labels += classes
    meta = root / "devkit" / "cars_meta.mat"
    names = _class_names(_load(meta), meta) if meta.is_file() else None
    return ImageList(paths, np.array(labels, dtype=np.int64)), names


def _csv_rows(path: Path) -> list[tuple[str, int]]:
    out = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.strip().split(",")
            if len(fields) != 6:
                raise LayoutError(f"cars196: {path} line {number} is malformed: expected 6 comma-separated fields "
                                  f"(file,x1,y1,x2,y2,class), got {len(fields)}: {line.strip()!r}")
            out.append((fields[0], integer(fields[5], path, number, "cars196")))
    return out


def read_csv(root: Path) -> tuple[ImageList, dict[int, str]]:
    names_csv = need(root, "names.csv", "cars196")
    names = [line.strip() for line in names_csv.read_text(encoding="utf-8").splitlines() if line.strip()]
    paths, labels = [], []
    for split in ("train", "test"):
        found = _csv_rows(need(root, f"anno_{split}.csv", "cars196"))
        for number, (_, label) in enumerate(found, start=1):
            if not 1 <= label <= len(names):
                raise LayoutError(f"cars196: {root / f'anno_{split}.csv'} row {number}: class {label} is not in "
                                  f"names.csv's 1-{len(names)}")
        if not found:
            continue
        first = f"{names[found[0][1] - 1].replace('/', '-')}/{found[0][0]}"
        base = _first_folder(root, [f"car_data/car_data/{split}", f"car_data/{split}"], first)
        paths += [f"{base}/{names[label - 1].replace('/', '-')}/{file}" for file, label in found]
        labels += [label for _, label in found]
    return ImageList(paths, np.array(labels, dtype=np.int64)), {i + 1: n for i, n in enumerate(names)}


READERS = {"annos": ("cars_annos.mat", read_annos), "devkit": ("devkit/cars_train_annos.mat", read_devkit),
           "csv": ("anno_train.csv", read_csv)}


def variant_of(root: Path) -> str | None:
    """Which Cars196 layout ``root`` holds (the first of READERS whose marker is there), or None."""
    return next((name for name, (marker, _) in READERS.items() if (root / marker).is_file()), None)


@register_dataset
class Cars196(PhotoDataset):
    name = "cars196"
    description = "Cars196 (Krause et al. 2013): 196 car models; train classes 1-98, test 99-196"
    counts = OFFICIAL["cars196"]
    split_sizes = (8054, 8131, 0)
    num_classes = (98, 98)
    recall_ks = (1, 2, 4, 8)
    markers = tuple(marker for marker, _ in READERS.values())
    variants = tuple(READERS)
    subfolders = ("cars196", "cars", "Cars196", "car196", "CARS196", "stanford_cars", "stanford-cars",
                  "stanford-car-dataset-by-classes-folder")
    origin = ("https://ai.stanford.edu/~jkrause/cars/car_dataset.html (car_ims.tgz and cars_annos.mat; no longer "
              "served: the devkit and class-folder copies are read too)")
    # Both MD5 sums were checked against public code that downloads the same files and verifies them:
    # KevinMusgrave/powerful-benchmarker (src/powerful_benchmarker/datasets/cars196.py) checks both,
    # fetched from the same ai.stanford.edu/~jkrause/car196/ folder used here.
    archives = [
        Archive("http://ai.stanford.edu/~jkrause/car196/car_ims.tgz", "car_ims.tgz",
                "d5c8f0aa497503f355e17dc7886c3f14", "Cars196 images: car_ims/ with 16,185 JPEG files"),
        Archive("http://ai.stanford.edu/~jkrause/car196/cars_annos.mat", "cars_annos.mat",
                "b407c6086d669747186bd1d764ff9dbc", "Cars196 annotations: class and path of every image"),
    ]
    download_subfolder = ""
    download_needs = ("car_ims",)
    download_alternatives = WHERE_TO_GET
    missing_hint = ("devkit copies: cars_train/ and cars_test/, or nested once more; class-folder copies: "
                    "car_data/car_data/<train|test>/<class>/ or car_data/<train|test>/<class>/")

    @classmethod
    def read_layout(cls, root, *, val_fraction: float = 0.2, seed: int = 0) -> Layout:
        root = Path(root)
        variant = variant_of(root) or "annos"  # none there: the annos reader names the file it needs
        images, names = READERS[variant][1](root)
        return split_by_class(images, range(1, 99), range(99, 197), "cars196", root, val_fraction, seed, names,
                              variant=variant)
