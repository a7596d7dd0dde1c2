"""Stanford Online Products (Song et al. 2016): every fact of the dataset and its layout reader.

Layout: ``Ebay_train.txt`` / ``Ebay_test.txt`` (header, then image id, class id, super-class id,
path). Train = Ebay_train (11,318 products), test = Ebay_test (11,316).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import register_dataset
from .benchmarks import PhotoDataset
from .counts import OFFICIAL
from .download import Archive
from .layouts import ImageList, Layout, LayoutError, carve_validation, integer, need, rows


def _read_ebay(path: Path) -> ImageList:
    lines = rows(path, 4, "sop", skip=1)
    return ImageList([f[3] for _, f in lines],
                     np.array([integer(f[1], path, n, "sop") for n, f in lines], dtype=np.int64),
                     np.array([integer(f[2], path, n, "sop") for n, f in lines], dtype=np.int64))


@register_dataset
class SOP(PhotoDataset):
    name = "sop"
    description = "Stanford Online Products (Song et al. 2016): 22,634 products; Ebay_train / Ebay_test"
    counts = OFFICIAL["sop"]
    split_sizes = (59551, 60502, 0)
    num_classes = (11318, 11316)
    super_labels = True
    recall_ks = (1, 10, 100, 1000)
    markers = ("Ebay_train.txt",)
    subfolders = ("Stanford_Online_Products", "sop", "SOP", "sop/Stanford_Online_Products")
    origin = "https://cvgl.stanford.edu/projects/lifted_struct/ (Stanford_Online_Products.zip)"
    # The MD5 sum was checked against public code that downloads the same file and verifies it:
    # KevinMusgrave/powerful-benchmarker (src/powerful_benchmarker/datasets/stanford_online_products.py)
    # checks it, fetched from the same cs.stanford.edu FTP address used here.
    archives = [
        # FTP often fails behind proxies: the same host serves the same file over HTTP (same MD5 sum)
        Archive("ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip", "Stanford_Online_Products.zip",
                "7f73d41a2f44250d4779881525aea32e",
                "Stanford Online Products: Stanford_Online_Products/ with Ebay_train.txt, Ebay_test.txt and "
                "the images", mirrors=("http://ftp.cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",)),
    ]
    download_subfolder = "Stanford_Online_Products"

    @classmethod
    def read_layout(cls, root, *, val_fraction: float = 0.2, seed: int = 0) -> Layout:
        root = Path(root)
        train_all = _read_ebay(need(root, "Ebay_train.txt", "sop"))
        test = _read_ebay(need(root, "Ebay_test.txt", "sop"))
        shared = set(train_all.classes) & set(test.classes)
        if shared:
            raise LayoutError(f"sop: Ebay_train.txt and Ebay_test.txt share classes (e.g. {sorted(shared)[:5]})")
        train, val = carve_validation(train_all, val_fraction, seed)
        return Layout("sop", root, train, val, test)
