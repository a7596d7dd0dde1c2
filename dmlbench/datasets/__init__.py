"""Datasets, registered by name in DATASETS: one module per dataset, each imported here (its registration)."""

from .base import (DATASETS, DEFAULT_IMAGE_SIZE, Dataset, ImageSet, Splits, cache_dir, data_roots, load_dataset,
                   register_dataset)
from .benchmarks import PHOTO_DATASETS, PhotoDataset, PhotoSet, load_benchmark, locate_layout
from .fashion_mnist import FashionMNIST
from .cub import CUB
from .cars196 import Cars196
from .sop import SOP
from .inshop import InShop
from .typefaces import HanTypefaces

__all__ = ["DATASETS", "DEFAULT_IMAGE_SIZE", "Dataset", "ImageSet", "Splits", "cache_dir", "data_roots",
           "load_dataset", "register_dataset", "FashionMNIST", "CUB", "Cars196", "SOP", "InShop", "HanTypefaces", "PHOTO_DATASETS",
           "PhotoDataset", "PhotoSet", "load_benchmark", "locate_layout"]
