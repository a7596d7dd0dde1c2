"""Embedding networks: image batch in, L2-normalised embedding batch out."""

from __future__ import annotations

from ..registry import Registry

MODELS = Registry("model")
