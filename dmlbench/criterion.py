"""A training criterion: one loss crossed with one miner, both chosen by name.

    criterion = build_criterion("triplet", "semi-hard", loss_kwargs={"margin": 0.2})
    value = criterion(embeddings, labels)   # scalar

The miner decides which pairs or triplets of the batch the loss sees; "none" means all of them.
A loss and a miner are compatible when the miner can produce what the loss consumes (a triplet miner
also feeds pair losses); an incompatible choice fails here, before any training, naming the miners
that would work.

The criterion is called with the embeddings in the space its loss declares (``loss.embedding_space``:
the L2-normalised embeddings, or the raw head output for center loss and N-pairs). The miner always
mines on normalised embeddings: every miner's parameters (margins, the distance-weighted density on
the unit sphere, cut-offs) are defined on the unit hypersphere, so a raw-feature loss crossed with a
miner gets the tuples the same miner would choose for any other loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .catalogue import feeds
from .errors import IncompatibleError
from .losses import LOSSES, Loss
from .miners import MINERS, Miner


def is_compatible(loss_cls: type[Loss], miner_cls: type[Miner]) -> bool:
    return feeds(miner_cls.registry_name, miner_cls.produces, loss_cls.consumes)


def mined_kind(loss: Loss, miner: Miner) -> str | None:
    """What the miner should hand the loss: None for whole-batch losses."""
    if loss.consumes == "batch":
        return None
    if loss.consumes == "any":
        return miner.produces[0]
    return loss.consumes


def compatible_miners(loss: str) -> list[str]:
    loss_cls = LOSSES.get(loss)
    return [name for name in MINERS.names() if is_compatible(loss_cls, MINERS.get(name))]


def check_compatible(loss: str, miner: str) -> None:
    loss_cls, miner_cls = LOSSES.get(loss), MINERS.get(miner)
    if not is_compatible(loss_cls, miner_cls):
        raise IncompatibleError(
            f"loss {loss!r} consumes {loss_cls.consumes} but miner {miner!r} produces "
            f"{' or '.join(miner_cls.produces)}; miners compatible with {loss!r}: {', '.join(compatible_miners(loss))}"
        )


class Criterion(nn.Module):
    """``loss(embeddings, labels, miner(embeddings, labels))``; records how many tuples were mined."""

    def __init__(self, loss: Loss, miner: Miner | None = None):
        super().__init__()
        self.loss = loss
        self.miner = miner
        self.last_mined = 0

    @property
    def raw_embeddings(self) -> bool:
        """Whether the loss takes the network's raw (unnormalised) head output rather than unit embeddings."""
        return getattr(self.loss, "embedding_space", "normalized") == "raw"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``embeddings``: in the loss's space (see :attr:`raw_embeddings`); the miner sees them normalised."""
        embeddings = embeddings.float()  # losses run in fp32 even under autocast
        mined = None
        kind = mined_kind(self.loss, self.miner) if self.miner is not None else None
        if kind is not None and not (self.miner.registry_name == "none" and self.loss.consumes == "any"):
            on_sphere = F.normalize(embeddings, dim=1) if self.raw_embeddings else embeddings
            mined = self.miner(on_sphere, labels, kind)
            self.last_mined = len(mined)
        return self.loss(embeddings, labels, mined)

    def param_groups(self, lr: float, loss_lr: float | None = None, weight_decay: float | None = None,
                     lr_scale: float | None = None) -> list[dict]:
        """Optimiser groups for the loss's own parameters (proxies, classifiers, beta): learning rate
        ``loss_lr``, else ``lr`` x ``lr_scale`` (None: the loss's ``param_lr_scale``); ``weight_decay``
        (None: the optimiser's default, i.e. the model's)."""
        params = [p for p in self.loss.parameters() if p.requires_grad]
        if not params:
            return []
        scale = self.loss.param_lr_scale if lr_scale is None else lr_scale
        group = {"params": params, "lr": loss_lr if loss_lr is not None else lr * scale}
        return [group | ({"weight_decay": weight_decay} if weight_decay is not None else {})]


def class_kwargs(cls: type, num_classes: int | None, embedding_dim: int | None) -> dict[str, Any]:
    """num_classes / embedding_dim for a component whose constructor takes them."""
    import inspect

    parameters = inspect.signature(cls.__init__).parameters
    out = {}
    if "num_classes" in parameters and num_classes is not None:
        out["num_classes"] = num_classes
    if "embedding_dim" in parameters and embedding_dim is not None:
        out["embedding_dim"] = embedding_dim
    return out


def build_criterion(loss: str, miner: str = "none", loss_kwargs: dict[str, Any] | None = None,
                    miner_kwargs: dict[str, Any] | None = None, seed: int | None = None,
                    num_classes: int | None = None, embedding_dim: int | None = None) -> Criterion:
    """Build a :class:`Criterion` from registry names (or ``package.module:Class`` paths).

    ``num_classes`` (training classes) and ``embedding_dim`` reach the losses that own per-class
    parameters (proxies, classifiers, class margins); labels must then be 0 .. num_classes - 1.
    """
    check_compatible(loss, miner)
    loss_kwargs = {**class_kwargs(LOSSES.get(loss), num_classes, embedding_dim), **(loss_kwargs or {})}
    loss_module = LOSSES.create(loss, **loss_kwargs)
    miner_module = MINERS.create(miner, **(miner_kwargs or {}))
    if seed is not None:
        miner_module.seed(seed)
    return Criterion(loss_module, miner_module)
