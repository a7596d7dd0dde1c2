"""dmlbench: a reproducible study of deep metric learning losses and sampling strategies."""

__version__ = "0.1.0"
