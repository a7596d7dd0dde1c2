"""Training protocols of the two reference studies, selectable in a study file as ``preset``.

A preset is a set of RunConfig settings. In a study file, ``settings: {preset: roth2020}`` fills
every setting the preset names, and any setting written beside it overrides the preset's value (the
run still carries the preset's name; the report lists where its settings depart from the preset and
compares its numbers with the published ones only where they do not, see :func:`deviations`).

- ``roth2020``: Roth, Milbich, Sinha, Gupta, Ommer & Cohen, "Revisiting Training Strategies and
  Generalization Performance in Deep Metric Learning", ICML 2020 (docs/protocol.md, Published protocols):
  ImageNet ResNet-50 with frozen BatchNorm, global average pooling, 128-d normalised embedding,
  Adam lr 1e-5 with weight decay 4e-4, batches of 112 = 56 classes x 2 images, 224-pixel crops,
  150 epochs. The loss's own parameters get no weight decay (their code builds Adam's parameter
  groups without one) and their own learning rates: beta of the margin loss 5e-4
  (``loss_margin_beta_lr``), ArcFace's class weights 5e-4 (``loss_arcface_lr``), ProxyNCA's proxies
  50 x lr (``loss_proxynca_lrmulti``), normalised softmax's weights 1e-5 = lr (``loss_softmax_lr``):
  at lr 1e-5, factors 50, 50, 50 and 1 (``loss_lr_scales``; other losses keep their paper's factor).
  They report the best epoch on the test set; we select it on a validation split of the
  train classes, so our numbers are expected to be somewhat lower.
- ``mlrc``: Musgrave, Belongie & Lim, "A Metric Learning Reality Check", ECCV 2020: 128-d linear
  embedder on a frozen-BatchNorm ImageNet network, batches of 32 = 8 classes x 4 images, RMSprop
  lr 1e-6, 227-pixel crops, model selection on validation MAP@R. Departures, stated in the report:
  the paper's BN-Inception is in neither torchvision nor timm, so the trunk is ResNet-50; the paper
  trains 4 models on 4 class-disjoint folds with 50 Bayesian-optimisation trials of each loss's
  hyperparameters and reports the 4 models' concatenated 512-d embeddings, where a preset run
  trains one model on one validation split with the hyperparameters the study gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    source: str
    settings: dict[str, Any]
    differences: tuple[str, ...] = field(default_factory=tuple)  # where the preset itself departs from the paper
    # The learning-rate factor of each named loss's own parameters (proxies, classifiers, beta) over
    # ``lr``, replacing the loss's ``param_lr_scale`` under this preset (a run's ``loss_lr`` still wins).
    loss_lr_scales: dict[str, float] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "roth2020": Preset(
        name="roth2020",
        source="Roth et al., Revisiting Training Strategies and Generalization Performance in Deep Metric "
               "Learning, ICML 2020",
        settings={
            "model": "resnet50", "model_kwargs": {"pretrained": True, "freeze_bn": True, "pooling": "avg"},
            "embedding_dim": 128, "P": 56, "K": 2, "optimizer": "adam", "lr": 1e-5, "weight_decay": 4e-4,
            "image_size": 224, "epochs": 150, "iters_per_epoch": 0, "select_metric": "recall@1",
            "loss_weight_decay": None,  # none on the loss's parameters, as their code
        },
        differences=("the epoch is selected on validation classes, not on the test set as in the paper",),
        # their parameters.py at lr 1e-5: loss_margin_beta_lr 5e-4, loss_arcface_lr 5e-4, loss_proxynca_lrmulti 50,
        # loss_softmax_lr 1e-5
        loss_lr_scales={"margin": 50.0, "arcface": 50.0, "proxy-nca": 50.0, "normalized-softmax": 1.0},
    ),
    "mlrc": Preset(
        name="mlrc",
        source="Musgrave, Belongie & Lim, A Metric Learning Reality Check, ECCV 2020",
        settings={
            "model": "resnet50", "model_kwargs": {"pretrained": True, "freeze_bn": True, "pooling": "avg"},
            "embedding_dim": 128, "P": 8, "K": 4, "optimizer": "rmsprop", "lr": 1e-6, "weight_decay": 0.0,
            "image_size": 227, "epochs": 100, "iters_per_epoch": 0, "select_metric": "map@r",
        },
        differences=(
            "ResNet-50 instead of the paper's BN-Inception (in neither torchvision nor timm)",
            "one model on one validation split instead of 4 cross-validation folds whose embeddings are concatenated "
            "to 512-d",
            "the study's loss hyperparameters instead of 50 Bayesian-optimisation trials per loss",
        ),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def apply_preset(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings with their ``preset`` expanded: the preset's values, then the given ones over them."""
    name = settings.get("preset")
    if name is None:
        return dict(settings)
    preset = get_preset(name)
    merged = {key: (dict(value) if isinstance(value, dict) else value) for key, value in preset.settings.items()}
    for key, value in settings.items():
        if key == "model_kwargs" and isinstance(value, dict) and settings.get("model", preset.settings["model"]) == \
                preset.settings["model"]:
            merged[key] = merged.get(key, {}) | value  # e.g. {pretrained: false} keeps the preset's pooling
        else:
            merged[key] = value
    return merged


def deviations(config: dict[str, Any]) -> list[str]:
    """Where a run's resolved settings depart from its preset's, as 'setting: run value (preset value)'."""
    name = config.get("preset")
    if name is None:
        return []
    preset = get_preset(name)
    out = []
    for key, expected in preset.settings.items():
        value = config.get(key)
        if key == "model_kwargs":
            for sub, sub_expected in expected.items():
                got = (value or {}).get(sub)
                if got != sub_expected:
                    out.append(f"model_kwargs.{sub}: {got!r} (preset {sub_expected!r})")
        elif value != expected:
            out.append(f"{key}: {value!r} (preset {expected!r})")
    return out
