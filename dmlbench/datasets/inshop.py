"""In-Shop Clothes Retrieval (Liu et al. 2016): every fact of the dataset, its layout reader and its
files-by-hand download (the dataset is served from Google Drive only).

Layout: ``list_eval_partition.txt`` (count, header, then path, item id, status train / query /
gallery; also found as ``Eval/list_eval_partition.txt``), images under ``img/``. Test = the queries
ranked against the gallery; the super-class of an item is its category folder (e.g. ``WOMEN/Dresses``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import register_dataset
from .benchmarks import PhotoDataset
from .download import DOWNLOADS, DownloadError, unpack
from .layouts import FETCH_COMMAND, ImageList, Layout, LayoutError, carve_validation, origin, rows

PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"
PARTITION = ("list_eval_partition.txt", "Eval/list_eval_partition.txt")


@register_dataset
class InShop(PhotoDataset):
    name = "inshop"
    description = "In-Shop Clothes (Liu et al. 2016): 7,982 items; test = 14,218 queries against a 12,612-image gallery"
    split_sizes = (25882, 14218, 12612)
    num_classes = (3997, 3985)
    super_labels = True
    recall_ks = (1, 10, 20, 30, 40, 50)
    markers = PARTITION
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
        "that ROOT/img/ holds the category folders (ROOT/img/WOMEN/..., ROOT/img/MEN/...); and "
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
        statuses = {"train", "query", "gallery"}
        paths, items, status, categories = [], [], [], []
        for number, (image, item, state) in rows(path, 3, "inshop", skip=2):
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

    @classmethod
    def fetch_by_hand(cls, root: Path) -> Path:
        """In-Shop from files the user fetched by hand: unpack ROOT/downloads/img.zip if there, check the rest."""
        img_zip = root / DOWNLOADS / "img.zip"
        if img_zip.is_file():
            unpack(img_zip, root)
        partition = [root / name for name in PARTITION]
        if (root / "img").is_dir() and any(p.is_file() for p in partition):
            return root
        missing = [str(root / "img") + "/"] if not (root / "img").is_dir() else []
        if not any(p.is_file() for p in partition):
            missing.append(str(partition[0]))
        raise DownloadError(f"inshop: {', '.join(missing)} missing. " + cls.manual_steps.replace("ROOT", str(root)))
