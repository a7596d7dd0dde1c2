"""CUB-200-2011 (Wah et al. 2011): 200 bird species, every fact of the dataset and its layout reader.

Layout: ``images.txt`` (id, path under ``images/``), ``image_class_labels.txt`` (id, class 1-200),
``classes.txt`` (class, name). Train classes 1-100, test 101-200 (docs/protocol.md, Splits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import register_dataset
from .benchmarks import PhotoDataset
from .counts import OFFICIAL
from .download import Archive
from .layouts import ImageList, Layout, LayoutError, integer, need, rows, split_by_class


@register_dataset
class CUB(PhotoDataset):
    name = "cub"
    description = "CUB-200-2011 (Wah et al. 2011): 200 bird species; train classes 1-100, test 101-200"
    counts = OFFICIAL["cub"]
    split_sizes = (5864, 5924, 0)
    num_classes = (100, 100)
    recall_ks = (1, 2, 4, 8)
    markers = ("images.txt",)
    subfolders = ("CUB_200_2011", "cub", "cub200", "CUB", "cub/CUB_200_2011")
    origin = "https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz)"
    # The MD5 sum was checked against public code that downloads the same file and verifies it: the
    # CUB200 classes of KevinMusgrave/powerful-benchmarker (src/powerful_benchmarker/datasets/cub200.py)
    # and of ContinualAI/avalanche (avalanche/benchmarks/datasets/cub200/cub200.py) check the same sum.
    archives = [
        Archive("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz", "CUB_200_2011.tgz",
                "97eceeb196236b17998738112f37df78",
                "CUB-200-2011: CUB_200_2011/ with images/, images.txt, image_class_labels.txt, classes.txt"),
    ]
    download_subfolder = "CUB_200_2011"

    @classmethod
    def read_layout(cls, root, *, val_fraction: float = 0.2, seed: int = 0) -> Layout:
        root = Path(root)
        images_txt = need(root, "images.txt", "cub")
        labels_txt = need(root, "image_class_labels.txt", "cub")
        classes_txt = need(root, "classes.txt", "cub")
        paths = {integer(f[0], images_txt, n, "cub"): f[1] for n, f in rows(images_txt, 2, "cub")}
        labels = {integer(f[0], labels_txt, n, "cub"): integer(f[1], labels_txt, n, "cub")
                  for n, f in rows(labels_txt, 2, "cub")}
        names = {}
        with classes_txt.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    key, _, name = line.strip().partition(" ")
                    names[integer(key, classes_txt, number, "cub")] = name
        if set(paths) != set(labels):
            missing = sorted(set(paths) ^ set(labels))[:5]
            raise LayoutError(f"cub: images.txt and image_class_labels.txt list different image ids (e.g. {missing})")
        ids = sorted(paths)
        images = ImageList([f"images/{paths[i]}" for i in ids], np.array([labels[i] for i in ids], dtype=np.int64))
        return split_by_class(images, range(1, 101), range(101, 201), "cub", root, val_fraction, seed, names)
