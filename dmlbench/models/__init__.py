"""Embedding networks, registered by name in MODELS."""

from .backbone import ResNet18Embedder, ResNet50Embedder, TorchvisionEmbedder
from .base import MODELS, Embedder
from .convnet import ConvEmbedder
from .glyphnet import GlyphResNet, PretrainedGlyphNet
from .timm_backbone import TimmEmbedder

__all__ = ["MODELS", "Embedder", "ConvEmbedder", "GlyphResNet", "PretrainedGlyphNet", "ResNet18Embedder", "ResNet50Embedder", "TimmEmbedder",
           "TorchvisionEmbedder"]
