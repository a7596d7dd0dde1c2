"""ImageNet backbones with an embedding head, the networks of the real benchmarks' protocols.

``resnet50`` and ``resnet18`` (torchvision): the convolutional trunk, global pooling (``avg``,
``max`` or ``avg+max``, their sum), a linear embedding head and L2 normalisation:

    (B, 3, H, W) -> trunk -> (B, 2048 or 512, h, w) -> pooling -> (B, F) -> linear -> (B, embedding_dim), |e| = 1

``pretrained=True`` loads torchvision's ImageNet weights from the local torch hub cache
(``$TORCH_HOME/hub/checkpoints``, where ``torch.hub`` keeps the files it downloads); nothing is
downloaded at run time, and a missing file is an error naming the path and the URL to fetch it
from. ``freeze_bn=True`` (both reference protocols) keeps every BatchNorm layer in inference mode
with fixed statistics and affine parameters, whatever mode the model is in. ``forward(images,
raw=True)`` gives the linear head's output before the normalisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .base import MODELS, Embedder

POOLINGS = ("avg", "max", "avg+max")
ARCHITECTURES = {"resnet18": ("resnet18", "ResNet18_Weights"), "resnet50": ("resnet50", "ResNet50_Weights")}


def cached_weights_path(arch: str) -> tuple[Path, str]:
    """Where torch.hub keeps torchvision's ImageNet weights for ``arch``, and their URL."""
    import torchvision

    weights = getattr(torchvision.models, ARCHITECTURES[arch][1]).IMAGENET1K_V1
    url = weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


class FrozenBatchNorm(Embedder):
    """For embedders with a ``trunk``: ``set_frozen_batchnorm(True)`` keeps every BatchNorm layer of the
    trunk in inference mode (running statistics fixed) and its affine parameters out of training,
    whatever mode the model is put in."""

    freeze_bn = False

    def set_frozen_batchnorm(self, freeze: bool) -> None:
        self.freeze_bn = freeze
        if freeze:
            for module in self.trunk.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    for parameter in module.parameters():
                        parameter.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_bn:
            for module in self.trunk.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


class TorchvisionEmbedder(FrozenBatchNorm):
    #: the input statistics of torchvision's ImageNet weights: (mean, std) per RGB channel
    normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    default_image_size = 224  # the side of the crops those weights were trained on
    l2_normalized = True

    def __init__(self, arch: str, embedding_dim: int = 128, pretrained: bool = False, freeze_bn: bool = True,
                 pooling: str = "avg"):
        super().__init__()
        import torchvision

        if arch not in ARCHITECTURES:
            raise ConfigError(f"unknown backbone {arch!r}; valid: {sorted(ARCHITECTURES)}")
        if embedding_dim < 1:
            raise ConfigError(f"embedding_dim must be a positive integer, got {embedding_dim}")
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling {pooling!r} is not one of {list(POOLINGS)}")
        net = getattr(torchvision.models, ARCHITECTURES[arch][0])(weights=None)
        if pretrained:
            path, url = cached_weights_path(arch)
            if not path.is_file():
                raise ConfigError(f"pretrained {arch}: ImageNet weights expected at {path}, which is missing, and "
                                  f"nothing is downloaded at run time. Fetch {url} into {path.parent} (for example "
                                  f"with torch.hub.load_state_dict_from_url on a machine with network), or set "
                                  f"pretrained=False.")
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.feature_dim = net.fc.in_features
        self.trunk = nn.Sequential(*list(net.children())[:-2])  # up to the last convolution stage
        self.pooling = pooling
        self.head = nn.Linear(self.feature_dim, embedding_dim)
        self.embedding_dim = embedding_dim
        self.set_frozen_batchnorm(freeze_bn)

    def raw_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.trunk(images)  # (B, F, h, w)
        if self.pooling == "avg":
            pooled = maps.mean(dim=(2, 3))
        elif self.pooling == "max":
            pooled = maps.amax(dim=(2, 3))
        else:
            pooled = maps.mean(dim=(2, 3)) + maps.amax(dim=(2, 3))
        return self.head(pooled)  # (B, embedding_dim), normalised by forward unless raw=True


@MODELS.register("resnet50")
class ResNet50Embedder(TorchvisionEmbedder):
    """ResNet-50 trunk (He et al. 2016), pooling, linear head, L2 norm: Roth et al. 2020's backbone."""

    def __init__(self, embedding_dim: int = 128, pretrained: bool = False, freeze_bn: bool = True,
                 pooling: str = "avg"):
        super().__init__("resnet50", embedding_dim, pretrained, freeze_bn, pooling)


@MODELS.register("resnet18")
class ResNet18Embedder(TorchvisionEmbedder):
    """ResNet-18 trunk, pooling, linear head, L2 norm: for quick runs."""

    def __init__(self, embedding_dim: int = 128, pretrained: bool = False, freeze_bn: bool = True,
                 pooling: str = "avg"):
        super().__init__("resnet18", embedding_dim, pretrained, freeze_bn, pooling)
