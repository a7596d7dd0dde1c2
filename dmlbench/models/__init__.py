"""Embedding networks, registered by name in MODELS."""

from .backbone import ResNet18Embedder, ResNet50Embedder, TorchvisionEmbedder
from .base import MODELS
from .convnet import ConvEmbedder

__all__ = ["MODELS", "ConvEmbedder", "ResNet18Embedder", "ResNet50Embedder", "TorchvisionEmbedder"]
