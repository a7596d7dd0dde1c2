"""Any timm model as an embedding backbone: ``MODELS.create("timm", name="convnext_tiny")``.

The model's trunk (``forward_features``, built with ``num_classes=0, global_pool=""``), global
pooling, a linear embedding head and L2 normalisation:

    (B, 3, H, W) -> trunk -> (B, F, h, w) -> pooling -> (B, F) -> linear -> (B, embedding_dim), |e| = 1

``F`` is the model's ``num_features``. Trunks that return channels-last maps (B, h, w, F) (Swin,
MambaOut: ``output_fmt == "NHWC"``) are pooled over (h, w) the same way. Token trunks (ViT, DeiT,
EVA...) return (B, T, F): ``avg``, ``max`` and ``avg+max`` pool over the patch tokens, leaving out
the class and register tokens (as timm's own ``global_pool="avg"`` does), and ``token`` takes the
class token (timm's default for ViTs), for models that have one. Layers timm places after its own
pooling (ConvNeXt's head norm, MobileNetV3's ``conv_head``) are not used, as torchvision's ``fc``.

Pretrained weights come only from local files, never the network:

- ``pretrained=True`` looks for timm's weights for ``name`` (its default pretrained tag, or the one
  in ``"resnet50.a1_in1k"``) where timm itself would have downloaded them: the Hugging Face hub cache
  (``$HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``) and then the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``). Found, the file is handed to timm as a local file
  (``pretrained_cfg_overlay=dict(file=...)``), so timm's own loading applies (checkpoint
  conversion, dropping the classifier); missing, the error names the folders searched and the
  command that fills them on a machine with network.
- ``weights_file="/path/w.safetensors"`` (or ``.pth``, ``.bin``, ``.npz``) loads that file instead.

Weights that leave any trunk parameter uninitialised (a checkpoint of another architecture) are an
error rather than a silently random trunk. ``freeze_bn=True`` keeps every BatchNorm layer in
inference mode with fixed statistics and affine parameters (other norms are unaffected).
``normalization`` and ``default_image_size`` are the input statistics and size in the weights'
timm config (for ``weights_file``, the config of ``name``'s tag). ``forward(images, raw=True)``
gives the linear head's output before the normalisation.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import ConfigError
from .backbone import FrozenBatchNorm
from .base import MODELS

POOLINGS = ("avg", "max", "avg+max", "token")
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
RESERVED_ARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",
                 "num_classes", "global_pool", "features_only")


def check_model_name(name: str) -> None:
    """Fail, naming close matches, unless ``name`` is a timm architecture (with a valid pretrained tag)."""
    import timm

    if not isinstance(name, str) or not name:
        raise ConfigError(f"timm model name must be a non-empty string, got {name!r}")
    arch, _, tag = name.partition(".")
    if not timm.is_model(name):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f" (close matches: {', '.join(close)})" if close else ""
        family = re.match(r"[A-Za-z]*", arch).group() or "resnet"
        prefixed = ("; hub and local-dir names are not taken: give the architecture's name and weights_file"
                    if ":" in name else "")
        raise ConfigError(f"unknown timm model {name!r}{hint}; timm.list_models() lists the valid names "
                          f"(timm.list_models('{family.lower()}*') those of a family){prefixed}")
    if tag:
        tags = timm.list_pretrained(f"{arch}.*")
        if name not in tags:
            raise ConfigError(f"timm model {arch!r} has no pretrained tag {tag!r}; its tags: "
                              f"{', '.join(tags) or '(none)'}")


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, read from the environment now (as huggingface_hub does at import)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def cached_weights(name: str) -> tuple[Path | None, list[str], dict[str, Any]]:
    """The local copy of timm's pretrained weights for ``name`` (None when absent), the places searched
    (as text), and the weights' pretrained cfg."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    searched: list[str] = []
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        filename = cfg.get("hf_hub_filename")
        if filename:  # a safetensors twin first, as timm does
            stem, ext = os.path.splitext(filename)
            twins = {"pytorch_model": "model", "open_clip_pytorch_model": "open_clip_model"}
            filenames = ([twins.get(stem, stem) + ".safetensors"] if ext == ".bin" else []) + [filename]
        else:
            filenames = ["model.safetensors", "pytorch_model.bin"]
        cache = hf_hub_cache()
        for filename in filenames:
            found = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found), searched, cfg
        searched.append(f"{cache / ('models--' + repo.replace('/', '--'))}/snapshots/*/{{{','.join(filenames)}}} "
                        f"(Hugging Face hub cache, {hub_id})")
    if cfg.get("url"):
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg["url"]).path)
        if path.is_file():
            return path, searched, cfg
        searched.append(f"{path} (torch hub cache, {cfg['url']})")
    return None, searched, cfg


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def load_messages() -> Iterator[list[logging.LogRecord]]:
    """The log records of timm's weight loader (missing/unexpected keys are only logged), passing on to
    the usual handlers, afterwards, those the logger would have let through anyway."""
    logger = logging.getLogger("timm.models._builder")
    handler, level, propagate, enabled = _Records(), logger.level, logger.propagate, logger.getEffectiveLevel()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        for record in handler.records:
            if record.levelno >= enabled:
                logger.handle(record)


def check_arguments(name: str, embedding_dim: int, pooling: str, model_args) -> None:
    """The embedder's arguments, each checked on its own (ConfigError naming the valid values)."""
    check_model_name(name)
    if embedding_dim < 1:
        raise ConfigError(f"embedding_dim must be a positive integer, got {embedding_dim}")
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r} is not one of {list(POOLINGS)}")
    if model_args is not None and not isinstance(model_args, dict):
        raise ConfigError(f"model_args must be a mapping of timm model arguments (img_size, in_chans...), "
                          f"got {model_args!r}")
    reserved = sorted(set(model_args or {}) & set(RESERVED_ARGS))
    if reserved:  # set here, or (pretrained, cache_dir...) ways to reach the network
        raise ConfigError(f"model_args may not set {', '.join(reserved)}: the embedder sets them (weights: "
                          f"pretrained=True or weights_file)")


def weights_source(name: str, pretrained: bool, weights_file: str | None) -> tuple[Path | None, dict | None]:
    """The local weights file to load (None: random weights) and timm's ``pretrained_cfg_overlay`` for it."""
    if weights_file is not None:
        source = Path(weights_file).expanduser()
        if not source.is_file():
            raise ConfigError(f"weights_file {str(weights_file)!r} for timm model {name!r} does not exist")
        # .npz: original JAX/Flax weights, read by the model's own load_pretrained
        return source, {"file": str(source), "custom_load": source.suffix == ".npz"}
    if not pretrained:
        return None, None
    source, searched, cfg = cached_weights(name)
    if not searched and source is None:
        raise ConfigError(f"timm has no pretrained weights for {name!r}; set pretrained=False, or give "
                          f"weights_file")
    if source is None:
        raise ConfigError(
            f"pretrained timm model {name!r}: no local copy of its weights, and nothing is downloaded at run "
            f"time; looked in {'; '.join(searched)}. On a machine with network run "
            f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\" and copy its Hugging "
            f"Face hub cache ({hf_hub_cache()}, set by HF_HUB_CACHE or HF_HOME) or torch hub cache "
            f"({Path(torch.hub.get_dir()) / 'checkpoints'}, set by TORCH_HOME) to the same place here; or "
            f"pass weights_file='/path/to/weights.safetensors'; or set pretrained=False.")
    return source, {"file": str(source), "custom_load": cfg.get("custom_load", False)}


def create_trunk(name: str, kwargs: dict[str, Any], source: Path | None, model_args) -> nn.Module:
    """timm's model ``name`` built with ``kwargs``; ConfigError when its arguments or the weights in
    ``source`` do not fit it, or leave a parameter uninitialised."""
    import timm

    try:
        with load_messages() as messages:
            net = timm.create_model(name, **kwargs)
    except TypeError as error:  # an argument the model class does not take
        raise ConfigError(f"timm model {name!r} rejects model_args {model_args!r}: {error}") from error
    except (RuntimeError, ValueError, KeyError) as error:  # shapes or keys that do not fit
        if source is None:
            raise
        lines = str(error).splitlines()  # torch lists every mismatching tensor: the first few say enough
        more = f"\n\t... ({len(lines) - 4} more)" if len(lines) > 4 else ""
        raise ConfigError(f"the weights in {source} do not fit timm model {name!r}: "
                          + "\n".join(lines[:4]) + more) from error
    missing = [r.getMessage() for r in messages if r.getMessage().startswith("Missing keys")]
    if source is not None and missing:
        raise ConfigError(f"the weights in {source} leave parameters of timm model {name!r} uninitialised "
                          f"(a checkpoint of another architecture?): {missing[0][:300]}...")
    return net


@MODELS.register("timm")
class TimmEmbedder(FrozenBatchNorm):
    """Any timm model's trunk (``name``), pooling, linear head, L2 norm; weights only from local files."""

    normalization = IMAGENET_NORMALIZATION  # replaced, per instance, by the weights' timm config
    default_image_size = None  # likewise: the weights' square input size, if they have one
    l2_normalized = True

    def __init__(self, name: str = "resnet50", embedding_dim: int = 128, pretrained: bool = False,
                 freeze_bn: bool = True, pooling: str = "avg", weights_file: str | None = None,
                 model_args: dict[str, Any] | None = None):
        super().__init__()
        check_arguments(name, embedding_dim, pooling, model_args)
        kwargs: dict[str, Any] = dict(model_args or {}) | {"num_classes": 0, "global_pool": ""}
        source, overlay = weights_source(name, pretrained, weights_file)
        if source is not None:
            kwargs |= {"pretrained": True, "pretrained_cfg_overlay": overlay}
        net = create_trunk(name, kwargs, source, model_args)
        if pooling == "token" and getattr(net, "cls_token", None) is None:
            raise ConfigError(f"pooling 'token' takes the class token, and timm model {name!r} has none; "
                              f"use one of {list(POOLINGS[:3])}")
        self.trunk = net
        self.model_name = name
        self.feature_dim = int(net.num_features)
        self.prefix_tokens = int(getattr(net, "num_prefix_tokens", 0) or 0)
        self.channels_last = getattr(net, "output_fmt", "NCHW") == "NHWC"
        cfg = dict(getattr(net, "pretrained_cfg", None) or {})
        mean, std = cfg.get("mean") or IMAGENET_NORMALIZATION[0], cfg.get("std") or IMAGENET_NORMALIZATION[1]
        self.normalization = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
        size = cfg.get("input_size")
        self.default_image_size = int(size[-1]) if size and size[-1] == size[-2] else None
        self.pooling = pooling
        self.head = nn.Linear(self.feature_dim, embedding_dim)
        self.embedding_dim = embedding_dim
        self.set_frozen_batchnorm(freeze_bn)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, h, w), (B, h, w, F) or (B, T, F) trunk features -> (B, F)."""
        if features.ndim == 3:  # tokens
            if self.pooling == "token":
                return features[:, 0]
            features = features[:, self.prefix_tokens:]
            dims: tuple[int, ...] = (1,)
        elif features.ndim == 4:
            dims = (1, 2) if self.channels_last else (2, 3)
        else:
            raise RuntimeError(f"timm model {self.model_name!r} returned features of shape {tuple(features.shape)}; "
                               f"expected (B, F, h, w), (B, h, w, F) or (B, tokens, F)")
        if self.pooling == "token":
            raise ConfigError(f"pooling 'token' needs token features; {self.model_name!r} returns feature maps")
        if self.pooling == "avg":
            return features.mean(dim=dims)
        if self.pooling == "max":
            return features.amax(dim=dims)
        return features.mean(dim=dims) + features.amax(dim=dims)

    def raw_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.trunk.forward_features(images))  # (B, F)
        return self.head(pooled)  # (B, embedding_dim), normalised by forward unless raw=True
