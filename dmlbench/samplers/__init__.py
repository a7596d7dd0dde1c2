"""Batch samplers (plain torch Samplers yielding lists of indices)."""

from .pk import PKSampler

__all__ = ["PKSampler"]
