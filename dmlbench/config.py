"""The configuration of one run (one cell of a study) and its identity.

``RunConfig`` holds every setting that can change a run's numbers. Its hash (SHA-256 of the
canonical JSON of those settings) identifies the run: the run id embeds it, so a changed setting
gives a new run folder and never overwrites an old run's results. Settings that only decide where
or how fast a run executes (device, data root, evaluation batch size) are not hashed, nor are
optional settings left unset (None). The evaluation protocol's version is hashed with them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ConfigError, UnknownNameError

DEVICES = ("auto", "cpu", "cuda")
SELECT_METRICS = ("map@r", "recall@1")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
LR_SCHEDULES = ("constant", "cosine", "plateau")
# In-memory grey datasets' training-time augmentations (dmlbench.training.augment) and their ranges.
AUGMENTATIONS = {"rotate": "degrees, uniform in +-value", "scale": "relative, uniform in 1 +- value",
                 "shift": "fraction of the side, uniform in +-value", "shear": "degrees, uniform in +-value",
                 "stroke": "probability of thinning or thickening the strokes by one pixel (each half of it)"}
# The largest amount of each, and whether it is allowed: a scale of 1 could shrink an image to nothing, a
# shear of 90 degrees is tan's asymptote.
AUGMENT_LIMITS = {"rotate": (180.0, True), "scale": (1.0, False), "shift": (1.0, True), "shear": (90.0, False),
                  "stroke": (1.0, True)}
# A sampler's arguments that training supplies (dmlbench.training.loop); sampler_kwargs holds only the others.
SAMPLER_SUPPLIED = ("labels", "P", "K", "batches_per_epoch", "generator", "super_labels")
# The arithmetic of the network's forward and backward passes (dmlbench.training.feeds.autocast_dtype): "auto" is
# bf16 autocast on CUDA (fp16 where the GPU lacks bf16) and on a CPU with native bf16 instructions (AVX512-BF16,
# AMX), fp32 on other CPUs; "fp32" never autocasts; "bf16" always does; "fp16" (CUDA only) autocasts to fp16 with
# a gradient scaler. Losses and miners always work in fp32.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
NOT_HASHED = ("device", "data_root", "eval_batch_size", "num_workers")
# How a run's metrics are computed is part of its identity: when the evaluation protocol changes
# (dmlbench.evaluation.metrics), every run gets a new id, so runs evaluated the old way are neither mistaken
# for new ones nor overwritten.
EVALUATION_PROTOCOL = ("3: neighbours exact in float64 with index tie-breaking; NMI from faiss's k-means "
                       "as AccuracyCalculator runs it (seed 1234, 20 iterations, 256 points per centroid); "
                       "Recall@K at K = 1, 2, 4, 8, 16, 32 (SOP also 10, 100, 1000; In-Shop 10-50); "
                       "spectral decay and class distances of the test embeddings")


@dataclass
class RunConfig:
    dataset: str = "fashion-mnist"
    loss: str = "triplet"
    miner: str = "semi-hard"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    miner_kwargs: dict[str, Any] = field(default_factory=dict)
    model: str = "convnet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    embedding_dim: int = 64
    sampler: str | None = None  # batch sampler (dmlbench.samplers); None = "pk"
    sampler_kwargs: dict[str, Any] | None = None  # e.g. {"super_per_batch": 2} for "hierarchical"
    P: int = 5  # classes per batch
    K: int = 16  # images per class
    epochs: int = 8
    iters_per_epoch: int = 60  # batches per epoch; 0 = one pass over the train split
    optimizer: str = "adam"
    lr: float = 1e-3
    loss_lr: float | None = None  # learning rate of the loss's own parameters; None = lr x the loss's paper factor
    weight_decay: float = 0.0  # of the network's parameters
    trunk_lr: float | None = None  # fine-tuning: the learning rate of a network's pretrained trunk (its `trunk`);
    #                                None = lr. The head (and the loss's parameters) keep theirs
    warmup_epochs: int | None = None  # fine-tuning: the first epochs train the head and the loss's parameters only
    #                                   (the trunk's lr held at 0), as Proxy-Anchor's recipe; None = none
    loss_weight_decay: float | None = None  # of the loss's own parameters (proxies, classifiers, centres' softmax,
    #                                         beta); None = none, as Roth et al.'s code. Hashed as its effect: see
    #                                         hashed_dict
    select_metric: str = "map@r"  # validation metric that picks the tested epoch
    lr_schedule: str | None = None  # None or "constant": the same lr throughout; "cosine": per step, down to 0 at
    #                                 the last epoch's end (Loshchilov & Hutter 2017, no restarts); "plateau": lr / 10
    #                                 at the first validation plateau (patience, min_delta), stop at the second
    patience: int | None = None  # stop when this many epochs in a row bring no validation score better than the
    #                              best by more than min_delta (the best epoch is tested); None: train every epoch
    min_delta: float | None = None  # with patience: the improvement that resets its count; None: any
    augment: dict[str, float] | None = None  # in-memory grey datasets: training-time augmentation, e.g.
    #                                          {"rotate": 8, "scale": 0.1, "stroke": 0.5} (see AUGMENTATIONS)
    seed: int = 0
    fold: int | None = None  # which of the dataset's folds (redrawn class split and typeface groups) it trains and is
    #                          tested on; datasets with folds (han-typefaces) read None as fold 0, others have none
    device: str = "auto"
    data_root: str | None = None
    eval_batch_size: int = 1000
    # Photo datasets (cub, cars196, sop, inshop) only:
    image_size: int | None = None  # crop size in pixels; None = 224
    data_subset: bool | None = None  # true: train on a layout whose counts differ from the published ones
    #                                  (a deliberate subset; hashed, and the run records the counts found)
    num_workers: int | None = None  # image loader processes; None = enough for a GPU, 0 on a CPU (not hashed:
    #                                 each image's augmentation has its own seed, so the count changes no number)
    torch_compile: bool | None = None  # torch.compile the network's training forward pass (hashed when true: the
    #                                    compiled kernels round differently, so the numbers may change)
    precision: str = "auto"  # see PRECISIONS; hashed, except "fp32", which is how every run trained on the CPU
    #                          before this setting existed (records without it read as fp32: from_record)
    preset: str | None = None  # the protocol the settings come from (dmlbench.presets), for the literature comparison
    processes: int | None = None  # training processes of the run, one per GPU (torchrun, torch.distributed); None = 1.
    #                               Hashed: per-process batch norm on the CPU and summation order change the numbers

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> "RunConfig":
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"{where}: unknown setting {', '.join(map(repr, unknown))}; "
                              f"valid settings: {', '.join(cls.field_names())}")
        return cls(**values)

    @classmethod
    def from_record(cls, values: dict[str, Any], where: str = "record") -> "RunConfig":
        """The configuration a run recorded (metrics.json, checkpoint.pt): a record written before the
        ``precision`` setting existed trained in fp32 (on the CPU, where every shipped run trained)."""
        return cls.from_dict({"precision": "fp32", **values}, where=where)

    @property
    def sampler_name(self) -> str:
        return self.sampler or "pk"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hashed_dict(self) -> dict[str, Any]:
        """The settings that identify the run. Unset optional settings (None) are left out, so a
        setting added to RunConfig later does not change the ids of runs that never used it.

        The loss's own parameters once trained with the network's weight decay and the loss class's
        learning-rate factor; now their weight decay is ``loss_weight_decay`` (None: none) and a preset
        may set the factor. ``loss_weight_decay`` itself is not hashed: where the loss has trainable
        parameters and their effective learning rate or weight decay differs from the old rule's, the
        effective values are hashed as ``loss_parameters``, so exactly the runs whose numbers change get
        new ids (a run with weight_decay 0, or a loss without parameters, keeps its id)."""
        settings = {k: v for k, v in self.to_dict().items()
                    if k not in NOT_HASHED and k != "loss_weight_decay" and v is not None}
        # settings that train exactly as if unset are hashed as unset: one training, one id
        if settings.get("lr_schedule") == "constant":
            del settings["lr_schedule"]
        if settings.get("data_subset") is False:
            del settings["data_subset"]
        if settings.get("torch_compile") is False:
            del settings["torch_compile"]
        if settings.get("precision") == "fp32":  # the only precision before the setting existed (on the CPU)
            del settings["precision"]
        if _dataset_folds(self.dataset):  # one split, one id: a folded dataset's fold None is its fold 0
            settings["fold"] = self.fold or 0
        weights = _model_weights(self.model, self.model_kwargs, self.fold or 0)
        if weights is not None:  # pretrained weights are part of what the run computes: their sha256
            settings["model_weights"] = weights
        if settings.get("augment") == {} or (settings.get("augment") and not any(settings["augment"].values())):
            del settings["augment"]
        effective, before = self.loss_parameter_settings(), self._loss_parameter_settings_before()
        if (effective["lr"], effective["weight_decay"]) != (before["lr"], before["weight_decay"]) \
                and self.has_loss_parameters():
            settings["loss_parameters"] = {"lr": effective["lr"], "weight_decay": effective["weight_decay"]}
        # a component's behaviour is part of the identity: versions after the first are hashed, so runs of
        # unchanged components keep their ids and a changed one's runs are new runs
        changed = {kind: v for kind, v in self.component_versions().items() if v != 1}
        return settings | {"evaluation_protocol": EVALUATION_PROTOCOL} | ({"component_versions": changed} if changed else {})

    def loss_parameter_settings(self) -> dict[str, float]:
        """How the loss's own parameters train: ``lr_scale`` (the preset's factor for this loss, else the
        loss's paper factor ``param_lr_scale``), ``lr`` (``loss_lr``, else ``lr`` x ``lr_scale``) and
        ``weight_decay`` (``loss_weight_decay``, else 0)."""
        scale = _paper_lr_scale(self.loss)
        if self.preset is not None:
            from .presets import PRESETS

            preset = PRESETS.get(self.preset)
            scale = float(preset.loss_lr_scales.get(self.loss, scale)) if preset is not None else scale
        return {"lr_scale": scale, "lr": self.loss_lr if self.loss_lr is not None else self.lr * scale,
                "weight_decay": self.loss_weight_decay if self.loss_weight_decay is not None else 0.0}

    def _loss_parameter_settings_before(self) -> dict[str, float]:
        """The old rule: the loss class's factor and the network's weight decay."""
        scale = _paper_lr_scale(self.loss)
        return {"lr": self.loss_lr if self.loss_lr is not None else self.lr * scale, "weight_decay": self.weight_decay}

    def has_loss_parameters(self) -> bool:
        """Whether the loss, built with these kwargs, has trainable parameters (True when it cannot be built)."""
        return _has_trainable_parameters(self.loss, json.dumps(self.loss_kwargs, sort_keys=True, default=str),
                                         self.embedding_dim)

    def component_versions(self) -> dict[str, int | str]:
        """The version of each component the run uses (dataset, loss, miner, sampler, model), with its
        source digest appended where its code differs from the code recorded for that version
        (:mod:`dmlbench.sources`)."""
        from .datasets import DATASETS
        from .losses import LOSSES
        from .miners import MINERS
        from .models import MODELS
        from .samplers import SAMPLERS

        named = {"dataset": (DATASETS, self.dataset), "loss": (LOSSES, self.loss), "miner": (MINERS, self.miner),
                 "sampler": (SAMPLERS, self.sampler), "model": (MODELS, self.model)}
        return {kind: registry.identity(name) for kind, (registry, name) in named.items()}

    def config_hash(self) -> str:
        canonical = json.dumps(self.hashed_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def run_id(self) -> str:
        def slug(name: str) -> str:
            prefix, _, rest = name.partition(":")
            # 'pml:Name' keeps its origin; 'package.module:Class' is named by its class
            name = (f"pml-{rest}" if prefix == "pml" else rest) if rest else name
            return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-").lower()

        fold = f"fold{self.fold or 0}__" if _dataset_folds(self.dataset) else ""
        return (f"{slug(self.dataset)}__{slug(self.loss)}__{slug(self.miner)}__{fold}seed{self.seed}__"
                f"{self.config_hash()[:10]}")

    def validate(self, checked_models: set[str] | None = None) -> "RunConfig":
        """Check every field; names are checked against the registries. Returns self.

        First the settings themselves (:meth:`check_settings`: types, ranges, choices), then the
        components they name (:meth:`check_components`: samplers, datasets, losses, miners, models)."""
        self.check_settings()
        self.check_components(checked_models)
        return self

    # -- the settings themselves: types, ranges, choices ------------------------------------------

    def check_settings(self) -> None:
        """Each setting's type and value on its own, without building any component."""
        self._check_numbers()
        self._check_choices()
        self._check_optional_settings()
        for name in ("loss_kwargs", "miner_kwargs", "model_kwargs", "sampler_kwargs"):
            value = getattr(self, name)
            if not isinstance(value, dict) and not (name == "sampler_kwargs" and value is None):
                raise ConfigError(f"{name} must be a mapping of argument names to values, got {value!r}")

    def _check_numbers(self) -> None:
        for name in ("embedding_dim", "P", "K", "epochs", "eval_batch_size"):
            _positive_int(self, name)
        if not isinstance(self.iters_per_epoch, int) or self.iters_per_epoch < 0:
            raise ConfigError(f"iters_per_epoch must be a non-negative integer (0 = one pass), got {self.iters_per_epoch!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name, smallest in (("lr", "positive"), ("weight_decay", "non-negative"),
                               ("loss_weight_decay", "non-negative")):
            value = getattr(self, name)
            if name == "loss_weight_decay" and value is None:
                continue
            if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                    or value < 0 or (name == "lr" and value == 0)):
                raise ConfigError(f"{name} must be a {smallest} number"
                                  f"{' or None (none)' if name == 'loss_weight_decay' else ''}, got {value!r}")
        folds = _dataset_folds(self.dataset)
        if self.fold is not None and (not isinstance(self.fold, int) or isinstance(self.fold, bool)
                                      or not 0 <= self.fold < max(folds, 1) or not folds):
            raise ConfigError(f"fold must be one of 0..{folds - 1} for {self.dataset} (or None: fold 0), got {self.fold!r}"
                              if folds else f"{self.dataset} has one split, no folds: leave fold None, got {self.fold!r}")
        if self.loss_lr is not None and (not isinstance(self.loss_lr, (int, float)) or isinstance(self.loss_lr, bool)
                                         or not math.isfinite(self.loss_lr) or self.loss_lr <= 0):
            raise ConfigError(f"loss_lr must be a positive number or None, got {self.loss_lr!r}")

    def _check_choices(self) -> None:
        for name, choices in (("device", DEVICES), ("select_metric", SELECT_METRICS), ("optimizer", OPTIMIZERS),
                              ("lr_schedule", LR_SCHEDULES), ("precision", PRECISIONS)):
            if name == "lr_schedule" and self.lr_schedule is None:
                continue
            if getattr(self, name) not in choices:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; valid choices: {', '.join(choices)}")

    def _check_fine_tuning(self) -> None:
        if self.trunk_lr is not None and (not isinstance(self.trunk_lr, (int, float)) or isinstance(self.trunk_lr, bool)
                                          or not math.isfinite(self.trunk_lr) or self.trunk_lr < 0):
            raise ConfigError(f"trunk_lr must be a non-negative number or None (the network's lr), got {self.trunk_lr!r}")
        if self.warmup_epochs is not None:
            if not isinstance(self.warmup_epochs, int) or isinstance(self.warmup_epochs, bool) \
                    or not 0 <= self.warmup_epochs < self.epochs:
                raise ConfigError(f"warmup_epochs must be an integer in 0..epochs-1 ({self.epochs - 1}) or None, "
                                  f"got {self.warmup_epochs!r}")

    def _check_optional_settings(self) -> None:
        """The settings that may be left None: image_size, num_workers, torch_compile, processes, preset."""
        if self.image_size is not None:
            from .datasets.benchmarks import PHOTO_DATASETS

            _positive_int(self, "image_size")
            if self.dataset not in PHOTO_DATASETS:
                raise ConfigError(f"image_size={self.image_size} applies to the photo datasets "
                                  f"({', '.join(PHOTO_DATASETS)}), not to {self.dataset!r}; leave it None")
        if self.data_subset is not None:
            self._check_data_subset()
        if self.num_workers is not None and (not isinstance(self.num_workers, int) or isinstance(self.num_workers, bool)
                                             or self.num_workers < 0):
            raise ConfigError(f"num_workers must be a non-negative integer or None (automatic), got {self.num_workers!r}")
        if self.patience is not None:
            _positive_int(self, "patience")
        self._check_fine_tuning()
        if self.lr_schedule == "plateau" and self.patience is None:
            raise ConfigError("lr_schedule 'plateau' drops the learning rate on a validation plateau: set patience "
                              "(the epochs without a gain that make one)")
        if self.min_delta is not None and (self.patience is None or not isinstance(self.min_delta, (int, float))
                                           or isinstance(self.min_delta, bool) or not 0 <= self.min_delta < 1):
            raise ConfigError(f"min_delta must be a number in [0, 1) and needs patience set, got min_delta="
                              f"{self.min_delta!r}, patience={self.patience!r}")
        if self.augment is not None:
            self._check_augment()
        if self.torch_compile is not None and not isinstance(self.torch_compile, bool):
            raise ConfigError(f"torch_compile must be true, false or None, got {self.torch_compile!r}")
        if self.processes is not None:
            _positive_int(self, "processes")
            if (self.P * self.K) % self.processes:
                raise ConfigError(f"processes={self.processes} must divide the batch P x K = {self.P * self.K} "
                                  f"(each process trains on an equal share); valid choices: "
                                  f"{', '.join(str(n) for n in range(1, self.P * self.K + 1) if (self.P * self.K) % n == 0)}")
        if self.preset is not None:
            from .presets import PRESETS

            if self.preset not in PRESETS:
                raise ConfigError(f"unknown preset {self.preset!r}; valid presets: {', '.join(PRESETS)}")

    def _check_augment(self) -> None:
        if not isinstance(self.augment, dict):
            raise ConfigError(f"augment must be a mapping of augmentations to amounts, got {self.augment!r}; "
                              f"valid augmentations: {', '.join(AUGMENTATIONS)}")
        for name, value in self.augment.items():
            if name not in AUGMENTATIONS:
                raise ConfigError(f"unknown augmentation {name!r}; valid augmentations: "
                                  + "; ".join(f"{k} ({v})" for k, v in AUGMENTATIONS.items()))
            most = AUGMENT_LIMITS[name]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= most[0] \
                    or (not most[1] and value == most[0]):
                raise ConfigError(f"augment {name}={value!r}: expected a number from 0 to {most[0]:g}"
                                  f"{'' if most[1] else ' (excluded)'} ({AUGMENTATIONS[name]})")
        from .datasets.benchmarks import PHOTO_DATASETS

        if self.dataset in PHOTO_DATASETS:
            raise ConfigError(f"augment applies to in-memory grey datasets; {self.dataset!r} has its protocol's "
                              f"own crops and flips (leave augment None)")

    # -- the components the settings name: registries, arguments, compatibility, the data folder --

    def check_components(self, checked_models: set[str] | None = None) -> None:
        """The sampler, data folder, dataset, loss, miner and model the settings name: known names,
        arguments they accept, a loss and miner that go together, and a network that builds.
        Expects :meth:`check_settings` to have passed."""
        from .criterion import check_compatible
        from .datasets import DATASETS

        self._check_sampler()
        self._check_data_root()
        DATASETS.get(self.dataset)
        check_compatible(self.loss, self.miner)
        self._check_model(checked_models)
        self._check_loss_and_miner()

    def _check_sampler(self) -> None:
        from .samplers import SAMPLERS

        SAMPLERS.get(self.sampler_name)
        supplied = sorted(set(self.sampler_kwargs or {}) & set(SAMPLER_SUPPLIED))
        if supplied:
            raise ConfigError(f"sampler_kwargs: {', '.join(map(repr, supplied))} is given by the run itself "
                              f"(the data's labels, and the settings P, K and iters_per_epoch), not in sampler_kwargs")
        with _field("sampler_kwargs"):
            SAMPLERS.check_kwargs(self.sampler_name, self.sampler_kwargs or {})

    def _check_data_subset(self) -> None:
        from .datasets.benchmarks import PHOTO_DATASETS

        if not isinstance(self.data_subset, bool):
            raise ConfigError(f"data_subset must be true, false or None, got {self.data_subset!r}")
        if self.data_subset and self.dataset not in PHOTO_DATASETS:
            raise ConfigError(f"data_subset applies to the photo datasets ({', '.join(PHOTO_DATASETS)}), whose "
                              f"published counts are checked; not to {self.dataset!r}")

    def load_splits(self):
        """The run's dataset splits (dmlbench.datasets.load_dataset with the run's data settings)."""
        from .datasets import load_dataset
        from .paths import data_root_folder

        subset = {"subset": True} if self.data_subset else {}
        if _dataset_folds(self.dataset):
            subset["fold"] = self.fold or 0
        root = None if self.data_root is None else str(data_root_folder(self.data_root))  # as the checks found it
        return load_dataset(self.dataset, root=root, image_size=self.image_size, **subset)

    def _check_data_root(self) -> None:
        if self.data_root is None:
            return
        if not isinstance(self.data_root, str) or not self.data_root:
            raise ConfigError(f"data_root must be a folder path or None (search the usual places), "
                              f"got {self.data_root!r}")
        from .paths import data_root_folder

        if not data_root_folder(self.data_root).is_dir():
            raise ConfigError(f"data_root {self.data_root!r} is not a folder; give the folder that holds the "
                              f"dataset's files, or None to search $DMLBENCH_DATA and the usual places")

    def _check_model(self, checked_models: set[str] | None) -> None:
        """Building the network checks its arguments' values too. ``checked_models`` (a study's loader
        passes one set for all its cells) skips networks already built: building a pretrained
        ResNet-50, weights read from disk, for every cell would be slow."""
        from .models import MODELS

        model_spec = json.dumps([self.model, self.model_kwargs, self.embedding_dim], sort_keys=True, default=str)
        if checked_models is None or model_spec not in checked_models:
            with _field("model_kwargs"):
                MODELS.create(self.model, **(self.model_kwargs | {"embedding_dim": self.embedding_dim}
                                             | model_fold(self.model, self.fold)))
            if checked_models is not None:
                checked_models.add(model_spec)

    def _check_loss_and_miner(self) -> None:
        """Building the loss and the miner checks their argument values (a margin's sign, a variant name)."""
        from .criterion import class_kwargs
        from .losses import LOSSES
        from .miners import MINERS

        loss_cls = LOSSES.get(self.loss)
        if loss_cls.needs_positives and self.K < 2:
            raise ConfigError(f"loss {self.loss!r} needs two or more images per class in a batch (positives), "
                              f"but K={self.K}; set K >= 2")
        # A stand-in class count: the real one (the dataset's training classes) comes at training time.
        _check_number_arguments(LOSSES, self.loss, self.loss_kwargs, "loss_kwargs")
        _check_number_arguments(MINERS, self.miner, self.miner_kwargs, "miner_kwargs")
        with _field("loss_kwargs"):
            LOSSES.create(self.loss, **(class_kwargs(loss_cls, 2, self.embedding_dim) | self.loss_kwargs))
        with _field("miner_kwargs"):
            MINERS.create(self.miner, **self.miner_kwargs)


def _check_number_arguments(registry, name: str, kwargs: dict[str, Any], setting: str) -> None:
    """A component's argument whose default is a number given text or true/false (``margin: fast``):
    one line naming the setting, the argument and its default, before the component sees it."""
    import inspect

    parameters = inspect.signature(registry.get(name).__init__).parameters
    for key, value in kwargs.items():
        default = parameters[key].default if key in parameters else None
        if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, (str, bool)):
            shown = f"the text {value!r}" if isinstance(value, str) else repr(value)
            defaults = ", ".join(f"{p}={v.default!r}" for p, v in parameters.items()
                                 if p != "self" and v.default is not inspect.Parameter.empty)
            raise ConfigError(f"{setting}: {registry.kind} {name!r} rejects its arguments {kwargs!r}: {key} expects "
                              f"a number, got {shown}; its arguments and their defaults: {defaults}")


def _paper_lr_scale(loss: str) -> float:
    """The loss class's ``param_lr_scale`` (1 where ``loss`` names nothing: validate() says so)."""
    from .losses import LOSSES

    try:
        return float(getattr(LOSSES.get(loss), "param_lr_scale", 1.0))
    except Exception:  # noqa: BLE001 - an unknown name is validate()'s to report
        return 1.0


@functools.lru_cache(maxsize=256)
def _has_trainable_parameters(loss: str, loss_kwargs_json: str, embedding_dim: int) -> bool:
    from .criterion import class_kwargs
    from .losses import LOSSES

    try:
        kwargs = class_kwargs(LOSSES.get(loss), 2, embedding_dim) | json.loads(loss_kwargs_json)
        module = LOSSES.create(loss, **kwargs)
    except Exception:  # noqa: BLE001 - a loss that cannot be built is taken to have parameters
        return True
    return any(p.requires_grad for p in module.parameters())


def _positive_int(config: RunConfig, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


@contextmanager
def _field(name: str):
    """A component's own complaint about its arguments, prefixed with the setting that holds them."""
    try:
        yield
    except UnknownNameError:
        raise
    except ConfigError as error:
        raise type(error)(f"{name}: {error}") from None


class SettingsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with numbers read as numbers however YAML spells them.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: ``1e-3``, ``1E-3``,
    ``1.0e3`` and ``+.5`` come back as text, and a learning rate written ``1e-3`` would reach the run
    as the string '1e-3'. This loader adds YAML 1.2's float form (``[-+]? (.digits | digits[.digits])
    ([eE][-+]?digits)?``), tried after the integer form, so ``10`` stays an integer. Underscores
    between digits are kept as YAML 1.1 and Python read them (``1_000`` is 1000, ``1_000.5`` 1000.5),
    and text that spells no number (``fast``) stays text for the settings' checks to refuse."""


SettingsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9][0-9_]*|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """``text`` read as YAML with :class:`SettingsLoader`: what every study file, settings override
    and tuning space of dmlbench is read with (raises yaml.YAMLError as yaml.safe_load does)."""
    return yaml.load(text, Loader=SettingsLoader)  # noqa: S506 - a SafeLoader subclass


# What a value of each kind of setting is, in the one-line error for a value of another kind.
KIND_WORDS = {bool: "true or false", int: "a whole number (digits only, e.g. 300)", float: "a number (e.g. 0.001 or 1e-3)",
              str: "a text", dict: "a mapping of names to values"}


def check_setting_types(values: dict[str, Any], where: str) -> None:
    """No known RunConfig setting of ``values`` holds text where a number, true/false or a mapping
    belongs (``lr: fast``, or a spelling of a number the reader took for text): one ConfigError line
    naming ``where`` (the file or option), the setting, the expected type and the text. Other values
    of a wrong type, unknown names and ranges are :meth:`RunConfig.validate`'s to refuse."""
    hints = typing.get_type_hints(RunConfig)
    for name, value in values.items():
        if name not in hints or not isinstance(value, str):
            continue
        hint = hints[name]
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kinds = [typing.get_origin(option) or option for option in options if option is not type(None)]
        if (value is None and len(kinds) < len(options)) or any(_is_kind(value, kind) for kind in kinds):
            continue
        expected = " or ".join(KIND_WORDS.get(kind, kind.__name__) for kind in kinds)
        raise ConfigError(f"{where}: {name}: expected {expected}"
                          f"{' or null (unset)' if len(kinds) < len(options) else ''}, got the text {value!r}")


def _is_kind(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return kind is Any or isinstance(value, kind)


# The experiment notebook's parameters beyond RunConfig's fields.
NOTEBOOK_PARAMETERS = ("run_dir", "tsne_points")


def check_parameter_names(injected: set[str]) -> None:
    """Names a notebook run defined beyond the notebook's own: papermill injects a misspelt parameter
    (``-p lose triplet``) without complaint, so the notebook fails here naming it and the valid ones."""
    valid = RunConfig.field_names() + list(NOTEBOOK_PARAMETERS)
    unknown = sorted(name for name in injected if not name.startswith("_") and name not in valid)
    if unknown:
        raise ConfigError(f"notebook parameters: unknown parameter {', '.join(map(repr, unknown))}; "
                          f"valid parameters: {', '.join(valid)}")


def settings_from_text(values: dict[str, Any]) -> dict[str, Any]:
    """RunConfig settings with text that stands for a value of the setting's type read as that value.

    papermill's command line reads the ``-p`` values True, False, None and numbers, and passes
    anything else on as text: ``-p loss_kwargs '{"margin": 0.1}'`` gives the notebook the string
    '{"margin": 0.1}'. A mapping setting (loss_kwargs, miner_kwargs, model_kwargs, sampler_kwargs)
    given text takes the mapping the text reads as in YAML (so JSON too), or fails naming the
    setting; a whole-number, number or true/false setting takes the value its text spells ("16",
    "1e-3", "true"), and an optional one None for "None" or "null". Text settings (names, paths)
    stay text, and text that spells no value of the setting's type is left for
    :meth:`RunConfig.validate` to refuse, naming the setting.
    """
    hints = typing.get_type_hints(RunConfig)
    out = dict(values)
    for name, value in values.items():
        if name not in hints or not isinstance(value, str):
            continue
        options = typing.get_args(hints[name]) if isinstance(hints[name], types.UnionType) else (hints[name],)
        kinds = {typing.get_origin(option) or option for option in options}  # dict[str, Any] -> dict
        text = value.strip()
        if str in kinds:
            continue
        if type(None) in kinds and text in ("None", "null", "~"):
            out[name] = None
        elif dict in kinds:
            try:
                parsed = load_yaml(text)
            except yaml.YAMLError as error:
                mark = getattr(error, "problem_mark", None)
                reason = (f"{error.problem} at column {mark.column + 1}" if getattr(error, "problem", None) and mark
                          else " ".join(str(error).split()))
                raise ConfigError(f"{name}: cannot read the text {value!r} as a mapping (YAML or JSON): "
                                  f"{reason}") from None
            if not isinstance(parsed, dict):
                raise ConfigError(f"{name} must be a mapping of argument names to values, got the text {value!r}, "
                                  f"which reads as {parsed!r}; write it as YAML or JSON, e.g. '{{\"margin\": 0.1}}'")
            out[name] = parsed
        elif bool in kinds:
            if text.lower() in ("true", "false"):
                out[name] = text.lower() == "true"
        elif int in kinds:
            if re.fullmatch(r"[+-]?[0-9][0-9_]*", text):  # 1_000 as the study files read it
                out[name] = int(text)
        elif float in kinds:
            try:
                out[name] = float(text)
            except ValueError:
                pass
    return out


def write_source_lock(force: bool = False) -> list[str]:
    """Record every registered component's version and source digest (``make lock``); see
    :mod:`dmlbench.sources`. Returns the components recorded with ``force`` despite an unchanged version."""
    from .datasets import DATASETS
    from .losses import LOSSES
    from .miners import MINERS
    from .models import MODELS
    from .samplers import SAMPLERS
    from .sources import write_lock

    return write_lock([DATASETS, LOSSES, MINERS, MODELS, SAMPLERS], force=force)


def read_yaml_file(path, what: str = "study file") -> Any:
    """``path``'s YAML (numbers as YAML 1.2 spells them), or one ConfigError naming the file and where
    it stops being readable: a missing file, a folder, bytes that are not UTF-8, a YAML syntax error."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give the YAML file itself")
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a text file in UTF-8 (byte {error.start} cannot be read); "
                          f"a {what} is YAML text") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read: {error.strerror or error}") from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(error)}") from None


def yaml_problem(error: Exception) -> str:
    """A YAML error in one line, placed by line and column (PyYAML counts from 0)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(f"{problem}{f' ({context})' if context else ''}".split())


def _dataset_folds(name: str) -> int:
    """The number of folds of registered dataset ``name`` (0: one split, or an unknown name)."""
    from .datasets.base import dataset_fact

    return int(dataset_fact(name, "folds", 0) or 0)


def _model_class(model: str) -> type | None:
    """The registered network class named ``model``; None when the name is unknown (validation says so)."""
    from .models import MODELS

    try:
        return MODELS.get(model)
    except ConfigError:
        return None


def model_fold(model: str, fold: int | None) -> dict[str, int]:
    """{"fold": fold} for a network whose weights differ per fold (``per_fold``, e.g. pretrained-glyphnet), else {}."""
    return {"fold": fold or 0} if getattr(_model_class(model), "per_fold", False) else {}


def _model_weights(model: str, model_kwargs: dict, fold: int) -> str | None:
    """The identity of a network's pretrained weights where it declares one (``weights_identity``), else None."""
    identity = getattr(_model_class(model), "weights_identity", None)
    return identity(model_kwargs, fold) if identity is not None else None
