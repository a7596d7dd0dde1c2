"""Any pytorch-metric-learning loss by name: ``pml:<ClassName>`` with its own keyword arguments.

    loss = "pml:MultiSimilarityLoss", loss_kwargs = {"alpha": 2, "beta": 50, "base": 0.5}

The adapter hands the library's loss the miner's tuples as its ``indices_tuple`` (triplets as
``(a, p, n)``, pairs as ``(a1, p, a2, n)``) or nothing with the "none" miner, so the library applies
its own default. Losses with per-class parameters get ``num_classes`` and ``embedding_size`` from
the run; their parameters train with the model. Needs pytorch-metric-learning installed.
"""

from __future__ import annotations

import functools
import inspect

from ..errors import ConfigError
from ..geometry.tuples import Pairs
from .base import LOSSES, Loss


class PMLLoss(Loss):
    """A pytorch-metric-learning loss behind dmlbench's loss interface."""

    consumes = "any"
    pml_class: type | None = None

    def __init__(self, num_classes: int | None = None, embedding_dim: int | None = None, **kwargs):
        super().__init__("mean")
        parameters = inspect.signature(self.pml_class.__init__).parameters
        if "num_classes" in parameters and "num_classes" not in kwargs:
            kwargs["num_classes"] = num_classes
        if "embedding_size" in parameters and "embedding_size" not in kwargs:
            kwargs["embedding_size"] = embedding_dim
        self.inner = self.pml_class(**kwargs)

    def forward(self, embeddings, labels, mined=None):
        indices = None
        if mined is not None:
            indices = ((mined.pos_a, mined.pos_b, mined.neg_a, mined.neg_b) if isinstance(mined, Pairs)
                       else (mined.anchor, mined.positive, mined.negative))
        return self.inner(embeddings, labels.to(embeddings.device), indices)


@functools.cache
def pml_loss(name: str) -> type[PMLLoss]:
    """The adapter class for ``pytorch_metric_learning.losses.<name>``."""
    try:
        from pytorch_metric_learning import losses as pml_losses
    except ImportError:
        raise ConfigError("'pml:' losses need pytorch-metric-learning: pip install pytorch-metric-learning") from None
    from pytorch_metric_learning.losses import BaseMetricLossFunction

    cls = getattr(pml_losses, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, BaseMetricLossFunction)):
        valid = sorted(n for n, c in vars(pml_losses).items()
                       if inspect.isclass(c) and issubclass(c, BaseMetricLossFunction) and c is not BaseMetricLossFunction)
        raise ConfigError(f"pytorch-metric-learning has no loss {name!r}; its losses: {', '.join(valid)}")
    adapter = type(f"PML_{name}", (PMLLoss,), {"pml_class": cls, "__doc__": f"pytorch-metric-learning's {name}."})
    adapter.registry_name = f"pml:{name}"
    adapter.needs_positives = not {"num_classes"} <= set(inspect.signature(cls.__init__).parameters)
    return adapter


LOSSES.add_prefix("pml", pml_loss)
