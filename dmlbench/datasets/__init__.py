"""Datasets, registered by name in DATASETS."""

from .base import DATASETS, ImageSet, Splits, cache_dir, data_roots, load_dataset
from .fashion_mnist import FashionMNIST

__all__ = ["DATASETS", "ImageSet", "Splits", "cache_dir", "data_roots", "load_dataset", "FashionMNIST"]
