"""Embedding networks, registered by name in MODELS."""

from .base import MODELS
from .convnet import ConvEmbedder

__all__ = ["MODELS", "ConvEmbedder"]
