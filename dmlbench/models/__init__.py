"""Embedding networks, registered by name in MODELS."""

from .backbone import ResNet18Embedder, ResNet50Embedder, TorchvisionEmbedder
from .base import MODELS
from .convnet import ConvEmbedder
from .timm_backbone import TimmEmbedder

__all__ = ["MODELS", "ConvEmbedder", "ResNet18Embedder", "ResNet50Embedder", "TimmEmbedder",
           "TorchvisionEmbedder"]
