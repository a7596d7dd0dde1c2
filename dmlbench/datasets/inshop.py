"""In-Shop Clothes Retrieval (Liu et al. 2016): every fact of the dataset, its layout reader and its
files-by-hand download (the dataset is served from Google Drive only).

Layout: ``list_eval_partition.txt`` (count, header, then path, item id, status train / query /
gallery; also found as ``Eval/list_eval_partition.txt``), images under ``img/``, or ``img_highres/``
(the high-resolution archive), or the Google Drive folder's ``Img/img/`` / ``Img/img_highres/``: the
variant is the folder the listed images are found in. Test = the queries
ranked against the gallery; the super-class of an item is its category folder (e.g. ``WOMEN/Dresses``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import register_dataset
from .benchmarks import PhotoDataset
from .counts import OFFICIAL
from .download import DOWNLOADS, DownloadError, unpack
from .layouts import FETCH_COMMAND, ImageList, Layout, LayoutError, carve_validation, origin, rows

PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"
PARTITION = ("list_eval_partition.txt", "Eval/list_eval_partition.txt")
LISTED = "img/"  # the partition file names every image under this folder
# Where the images are found: the official img.zip unpacked (img/), the high-resolution img_highres.zip
# that open-metric-learning uses, and the Google Drive folder's own nesting (Img/img/, Img/img_highres/).
IMAGE_FOLDERS = ("img/", "img_highres/", "Img/img/", "Img/img_highres/")
STATUSES = ("train", "query", "gallery")


def _partition(path: Path) -> tuple[list[str], list[int], list[str], list[str]]:
    """(image paths as listed, item ids, statuses, categories) of list_eval_partition.txt. Its first line
    is the image count and its second the header; a file without the count line starts with the header
    (no image is lost to it), and a count that disagrees with the lines is an error."""
    with path.open(encoding="utf-8") as handle:
        head = [handle.readline().strip() for _ in range(2)]
    counted = head[0].isdigit()
    skip = 2 if counted else (1 if head[0].split()[:1] == ["image_name"] else 0)
    paths, items, status, categories = [], [], [], []
    for number, (image, item, state) in rows(path, 3, "inshop", skip=skip):
        if state not in STATUSES:
            raise LayoutError(f"inshop: {path} line {number} is malformed: status {state!r} is not one of "
                              f"{sorted(STATUSES)}")
        if not item.startswith("id_") or not item[3:].isdigit():
            raise LayoutError(f"inshop: {path} line {number} is malformed: item {item!r} is not like id_00000001")
        if not image.startswith(LISTED):
            raise LayoutError(f"inshop: {path} line {number} is malformed: image {image!r} is not under {LISTED}")
        parts = image.split("/")
        paths.append(image)
        items.append(int(item[3:]))
        status.append(state)
        categories.append("/".join(parts[1:3]) if len(parts) >= 4 else "")
    if counted and int(head[0]) != len(paths):
        raise LayoutError(f"inshop: {path} announces {int(head[0]):,} images on its first line but lists {len(paths):,}: "
                          f"the file is truncated or edited; restore it from Eval/list_eval_partition.txt of the dataset")
    if not paths:
        raise LayoutError(f"inshop: {path} lists no image")
    return paths, items, status, categories


def _image_folder(root: Path, first: str) -> str:
    """The folder (with its trailing '/') under ``root`` that holds the listed images (the first of
    IMAGE_FOLDERS that holds the first of them; img/ when none does)."""
    for folder in IMAGE_FOLDERS:
        if (root / (folder + first[len(LISTED):])).is_file():
            return folder
    return LISTED  # in none of them: the images are checked before decoding, and the message lists the folders


@register_dataset
class InShop(PhotoDataset):
    name = "inshop"
    description = "In-Shop Clothes (Liu et al. 2016): 7,982 items; test = 14,218 queries against a 12,612-image gallery"
    counts = OFFICIAL["inshop"]
    # 2: a partition file without its count line lost its first image (the reader always skipped two lines)
    version = 2
    split_sizes = (25882, 14218, 12612)
    num_classes = (3997, 3985)
    super_labels = True
    recall_ks = (1, 10, 20, 30, 40, 50)
    markers = PARTITION
    variants = tuple(f[:-1] for f in IMAGE_FOLDERS)
    missing_hint = f"the images are looked for in {', '.join(IMAGE_FOLDERS)} under the folder of the partition file"
    subfolders = ("inshop", "InShop", "In-Shop", "in-shop", "deepfashion_inshop")
    origin = f"{PAGE} (img.zip and Eval/list_eval_partition.txt)"
    archives = []  # Google Drive only: see manual_steps
    download_subfolder = ""
    manual_steps = (
        "In-Shop Clothes Retrieval (DeepFashion) is distributed through Google Drive only and cannot be "
        f"downloaded automatically. Open {PAGE}, follow its download link (Google Drive, 'In-shop Clothes "
        "Retrieval Benchmark'), and fetch two files: 'Img/img.zip' (the images) and "
        "'Eval/list_eval_partition.txt' (the train / query / gallery split). Put them into the dataset root "
        "ROOT: either img.zip into ROOT/downloads/ (it is then unpacked for you) or unpack img.zip yourself so "
        "that ROOT/img/ holds the category folders (ROOT/img/WOMEN/..., ROOT/img/MEN/...; img_highres/ and the "
        "Drive folder's Img/img/ are read too); and "
        "list_eval_partition.txt as ROOT/list_eval_partition.txt (or ROOT/Eval/list_eval_partition.txt). "
        "Then run the same command again."
    )

    @classmethod
    def read_layout(cls, root, *, val_fraction: float = 0.2, seed: int = 0) -> Layout:
        root = Path(root)
        candidates = [root / name for name in PARTITION]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise LayoutError(f"inshop: expected {candidates[0]} (or {candidates[1]}), which is missing. The dataset "
                              f"comes from {origin('inshop')}; '{FETCH_COMMAND.format(name='inshop')}' says which "
                              f"files to fetch and where they go.")
        paths, items, status, categories = _partition(path)
        folder = _image_folder(root, paths[0])
        paths = [folder + p[len(LISTED):] for p in paths]
        names = sorted(set(categories))
        super_ids = np.array([names.index(c) for c in categories], dtype=np.int64)
        everything = ImageList(paths, np.array(items, dtype=np.int64), super_ids)
        status = np.array(status)
        train, val = carve_validation(everything.subset(status == "train"), val_fraction, seed)
        return Layout("inshop", root, train, val, everything.subset(status == "query"),
                      everything.subset(status == "gallery"), {i: n for i, n in enumerate(names)}, variant=folder[:-1])

    @classmethod
    def fetch_by_hand(cls, root: Path) -> Path:
        """In-Shop from files the user fetched by hand: unpack ROOT/downloads/img.zip if there, check the rest."""
        img_zip = root / DOWNLOADS / "img.zip"
        if img_zip.is_file():
            unpack(img_zip, root)
        partition = [root / name for name in PARTITION]
        has_images = any((root / folder).is_dir() for folder in IMAGE_FOLDERS)
        if has_images and any(p.is_file() for p in partition):
            return root
        missing = [f"{root / 'img'}/ (or {', '.join(IMAGE_FOLDERS[1:])})"] if not has_images else []
        if not any(p.is_file() for p in partition):
            missing.append(str(partition[0]))
        raise DownloadError(f"inshop: {', '.join(missing)} missing. " + cls.manual_steps.replace("ROOT", str(root)))
