"""Datasets, registered by name in DATASETS."""

from .base import DATASETS, ImageSet, Splits, cache_dir, data_roots, load_dataset
from .benchmarks import PhotoSet, load_benchmark, locate_layout
from .fashion_mnist import FashionMNIST

__all__ = ["DATASETS", "ImageSet", "Splits", "cache_dir", "data_roots", "load_dataset", "FashionMNIST", "PhotoSet",
           "load_benchmark", "locate_layout"]
