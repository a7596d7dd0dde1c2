"""Cars196 (Krause et al. 2013): 196 car models, every fact of the dataset and its layout reader.

Layout: ``cars_annos.mat`` (struct array ``annotations`` with ``relative_im_path``, ``class``;
``class_names``) and ``car_ims/``. Train classes 1-98, test 99-196, the official train/test image
flag ignored (the DML protocol splits by class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import register_dataset
from .benchmarks import PhotoDataset
from .download import Archive
from .layouts import ImageList, Layout, LayoutError, need, split_by_class


@register_dataset
class Cars196(PhotoDataset):
    name = "cars196"
    description = "Cars196 (Krause et al. 2013): 196 car models; train classes 1-98, test 99-196"
    split_sizes = (8054, 8131, 0)
    num_classes = (98, 98)
    recall_ks = (1, 2, 4, 8)
    markers = ("cars_annos.mat",)
    subfolders = ("cars196", "cars", "Cars196", "car196", "CARS196")
    origin = "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (car_ims.tgz and cars_annos.mat)"
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

    @classmethod
    def read_layout(cls, root, *, val_fraction: float = 0.2, seed: int = 0) -> Layout:
        from scipy.io import loadmat

        root = Path(root)
        mat_path = need(root, "cars_annos.mat", "cars196")
        try:
            mat = loadmat(mat_path, squeeze_me=True, struct_as_record=False)
        except Exception as error:  # scipy raises several kinds for a damaged file
            raise LayoutError(f"cars196: {mat_path} is not a readable MATLAB file ({error})") from None
        if "annotations" not in mat:
            raise LayoutError(f"cars196: {mat_path} has no 'annotations' struct array "
                              f"(found {sorted(k for k in mat if not k.startswith('__'))})")
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
        return split_by_class(images, range(1, 99), range(99, 197), "cars196", root, val_fraction, seed, names)
