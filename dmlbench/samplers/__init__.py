"""Batch samplers (plain torch Samplers yielding lists of indices), registered in SAMPLERS."""

from .base import SAMPLERS, StreamSampler
from .hierarchical import HierarchicalSampler
from .pk import PKSampler
from .random import RandomBatchSampler

__all__ = ["SAMPLERS", "StreamSampler", "HierarchicalSampler", "PKSampler", "RandomBatchSampler"]
