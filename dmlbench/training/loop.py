"""The training loop: dataset -> PK batches -> model -> criterion -> optimiser, validated each epoch.

Model selection follows docs/protocol.md: after every epoch the model embeds the validation
split (never the test split) and the epoch with the best validation ``select_metric`` is kept; the
test split is embedded and evaluated once, on that model. On the CPU a seed fixes every number
(sampler, miner and initialisation draw from seeded generators); on CUDA the forward pass runs under
bf16 autocast (fp16 with a gradient scaler where bf16 is unsupported) while losses stay in fp32.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..config import RunConfig
from ..criterion import Criterion, build_criterion
from . import resume
from ..datasets import Splits
from ..datasets.base import extra_recall_ks
from .distributed import gather_batch, loss_scale, world
from .feeds import autocast_dtype, forward_embed, image_tensor, make_feed, precision_name  # noqa: F401 (re-exported)
from ..evaluation.metrics import evaluate
from ..models import MODELS
from ..samplers import SAMPLERS

log = logging.getLogger("dmlbench")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device; use device='auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def embed(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000, precision: str = "auto") -> torch.Tensor:
    """(N, C, H, W) on the model's device -> (N, D) float32 embeddings, eval mode (``precision``: RunConfig's)."""
    batches = (images[start:start + batch_size] for start in range(0, len(images), batch_size))
    return forward_embed(model, batches, images.device, precision)


def compiled(module: torch.nn.Module) -> Callable:
    """``torch.compile(module)``, its kernels cached on disk under the project's cache folder
    (``$TORCHINDUCTOR_CACHE_DIR`` when set): the compile is paid once per machine, not once per run."""
    from ..datasets.base import cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
    return torch.compile(module)


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


# Recall@K is reported at these K: the curve over K for the report, with each benchmark's own K
# (SOP: 1, 10, 100, 1000; In-Shop: 1, 10, ..., 50) added to the common 1, 2, 4, 8, 16, 32.
TEST_KS = (1, 2, 4, 8, 16, 32)


def recall_ks(dataset: str) -> tuple[int, ...]:
    """The common K and the dataset's own (its class's recall_ks: SOP 1, 10, 100, 1000; In-Shop 1, 10, ..., 50)."""
    return tuple(sorted(set(TEST_KS) | set(extra_recall_ks(dataset))))


def optimisation_step(forward, criterion: Criterion, optimizer: torch.optim.Optimizer, scaler, images: torch.Tensor,
                      labels: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor:
    """One step: embeddings (under autocast on CUDA), the loss in fp32, and, when the loss is finite,
    backward and the optimiser's update. Returns the loss, detached; a non-finite loss changes nothing.
    A loss that declares raw embeddings (``embedding_space = "raw"``: center loss, N-pairs) gets the
    network's head output before normalisation, ``forward(images, raw=True)``; the others the
    normalised embeddings, ``forward(images)`` (the criterion mines on normalised ones either way).

    Under torch.distributed the rank's embeddings join every rank's before mining and the loss (see
    dmlbench.training.distributed), so the step is the one a single process takes on the whole batch."""
    with torch.autocast(images.device.type, dtype=amp, enabled=amp is not None):
        embeddings = forward(images, raw=True) if criterion.raw_embeddings else forward(images)
    # the loss and the miner see fp32 whatever the network's last layer returned under autocast
    embeddings, labels = gather_batch(embeddings.float(), labels)
    loss = criterion(embeddings, labels)
    if not torch.isfinite(loss):
        return loss.detach()
    optimizer.zero_grad(set_to_none=True)
    scale = loss_scale()
    scaler.scale(loss * scale if scale != 1 else loss).backward()
    if scale != 1:  # every rank computed the loss's own parameters' whole gradient, times the scale
        for parameter in criterion.parameters():
            if parameter.grad is not None:
                parameter.grad.div_(scale)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def build_model(config: RunConfig, **overrides) -> torch.nn.Module:
    """The run's embedding network (``overrides`` replace model_kwargs entries, e.g. pretrained=False)."""
    from ..config import model_fold

    return MODELS.create(config.model, embedding_dim=config.embedding_dim,
                         **(config.model_kwargs | model_fold(config.model, config.fold) | overrides))


def build_run_criterion(config: RunConfig, num_classes: int) -> Criterion:
    """The run's loss and miner, the miner seeded by the run's seed; ``num_classes``: training classes."""
    return build_criterion(config.loss, config.miner, config.loss_kwargs, config.miner_kwargs, seed=config.seed,
                           num_classes=num_classes, embedding_dim=config.embedding_dim)


def optimiser_groups(config: RunConfig, model: torch.nn.Module, criterion: Criterion) -> list[dict]:
    """The network's parameters (lr, weight_decay) and the loss's own (its effective lr and weight decay:
    RunConfig.loss_parameter_settings, by default no weight decay, as Roth et al.'s code)."""
    loss_params = config.loss_parameter_settings()
    return network_groups(config, model) + criterion.param_groups(
        config.lr, config.loss_lr, weight_decay=loss_params["weight_decay"], lr_scale=loss_params["lr_scale"])


def network_groups(config: RunConfig, model: torch.nn.Module) -> list[dict]:
    """The network's parameter groups: one at lr, or, for fine-tuning (trunk_lr or warmup_epochs set, a network
    with a ``trunk``), the trunk at trunk_lr (held at 0 for the warm-up's epochs: ``warmup_epochs``) and the rest
    (the head) at lr. Parameters that do not train (a frozen BatchNorm's) are left out."""
    trunk = getattr(model, "trunk", None)
    if (config.trunk_lr is None and not config.warmup_epochs) or trunk is None:
        return [{"params": list(model.parameters())}]
    trainable = [p for p in model.parameters() if p.requires_grad]
    in_trunk = {id(p) for p in trunk.parameters()}
    return [{"params": [p for p in trainable if id(p) in in_trunk], "warmup_epochs": config.warmup_epochs or 0,
             "lr": config.lr if config.trunk_lr is None else config.trunk_lr},
            {"params": [p for p in trainable if id(p) not in in_trunk]}]


def check_embedding_space(model: torch.nn.Module, criterion: Criterion) -> None:
    """A loss on raw embeddings needs a network whose forward takes ``raw=True`` (every Embedder does)."""
    import inspect

    if criterion.raw_embeddings and "raw" not in inspect.signature(model.forward).parameters:
        from ..errors import ConfigError

        raise ConfigError(f"loss {type(criterion.loss).__name__} works on raw (unnormalised) embeddings, and the "
                          f"network {type(model).__name__} has no forward(images, raw=True); make it a "
                          f"dmlbench.models.Embedder (implement raw_embeddings)")


@dataclass
class TrainResult:
    config: RunConfig
    model: torch.nn.Module
    criterion: Criterion
    history: list[dict]
    best_epoch: int
    test_metrics: dict[str, float]
    test_embeddings: torch.Tensor  # (N_test, D), CPU
    test_labels: torch.Tensor  # (N_test,), CPU
    device: str
    train_time_s: float
    images_per_s: float
    extra: dict = field(default_factory=dict)
    gallery_embeddings: torch.Tensor | None = None  # (N_gallery, D), CPU: In-Shop's gallery
    gallery_labels: torch.Tensor | None = None


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.std import tqdm  # plain text bar: renders the same in a terminal and an executed notebook

    return tqdm(total=total, desc="training", unit="batch", file=sys.stderr, mininterval=5.0, dynamic_ncols=False, ncols=90)


def validation_metrics(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    metrics = evaluate(embeddings, labels, ks=(1,), nmi=False)
    return {"val_recall@1": metrics["recall@1"], "val_map@r": metrics["map@r"],
            "val_r_precision": metrics["r_precision"]}


@dataclass
class _Run:
    """What a run trains with: where, which network and loss, how they are optimised and fed."""
    rank: int
    processes: int
    device: torch.device
    amp: torch.dtype | None
    model: torch.nn.Module  # the state dicts are this module's
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    forward: Callable  # the training forward pass (DDP, compiled when asked)
    evaluator: torch.nn.Module  # the forward pass of evaluation (rank 0 alone: never DDP)
    sampler: object
    feed: object

    @property
    def lead(self) -> bool:
        """Rank 0 validates, checkpoints and tests."""
        return self.rank == 0


@dataclass
class _RunState:
    """Everything the next epochs depend on beyond the modules' states: what a checkpoint keeps."""
    history: list[dict]
    best: dict  # score, epoch and state (the model's and the criterion's) of the best validation epoch
    train_time: float
    images_seen: int
    resumed_at: list[int]
    first_epoch: int


def _training_device(config: RunConfig, rank: int, processes: int) -> torch.device:
    device = resolve_device(config.device)
    if processes > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    return device


def _set_up(config: RunConfig, splits: Splits) -> _Run:
    """Device, seeds, network, criterion, optimiser and the training feed, in that order."""
    rank, processes = world()
    device = _training_device(config, rank, processes)
    seed_everything(config.seed)
    amp = autocast_dtype(device, config.precision)

    # Training labels become 0 .. C-1, the indices of per-class parameters (proxies, classifiers).
    train_classes, train_labels = np.unique(splits.train.labels, return_inverse=True)
    model = build_model(config)
    if processes > 1 and device.type == "cuda":  # batch statistics over the whole batch, as in one process
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=torch.channels_last)
    criterion = build_run_criterion(config, num_classes=len(train_classes)).to(device)
    check_embedding_space(model, criterion)
    optimizer = make_optimizer(config.optimizer, optimiser_groups(config, model, criterion), config.lr,
                               config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    # The network's training forward pass: under torch.distributed wrapped in DDP, which averages the
    # gradients over ranks (optimisation_step scales the loss to make that the sum); compiled when asked.
    # The state dicts stay those of `model`. Evaluation (rank 0 alone) bypasses DDP's collectives.
    ddp = None
    if processes > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = compiled(ddp or model) if config.torch_compile else (ddp or model)
    evaluator = model if ddp is not None else forward

    sampler = SAMPLERS.create(config.sampler_name, labels=splits.train.labels, P=config.P, K=config.K,
                              super_labels=splits.train.super_labels, batches_per_epoch=config.iters_per_epoch or None,
                              generator=torch.Generator().manual_seed(config.seed), **(config.sampler_kwargs or {}))
    # Photos are normalised with the statistics the backbone's weights expect (ImageNet's, or a timm model's).
    mean, std = getattr(model, "normalization", (None, None))
    feed = make_feed(config, splits, train_labels, sampler, device, mean=mean, std=std, world=(rank, processes))
    return _Run(rank=rank, processes=processes, device=device, amp=amp, model=model, criterion=criterion,
                optimizer=optimizer, scaler=scaler, forward=forward, evaluator=evaluator, sampler=sampler, feed=feed)


def _validation(run: _Run, splits: Splits) -> dict[str, float]:
    """The validation split's scores (rank 0; the other ranks validate nothing)."""
    if not run.lead:
        return {}
    return validation_metrics(run.feed.embed(run.evaluator, splits.val), torch.from_numpy(splits.val.labels))


def _start_or_resume(config: RunConfig, run: _Run, splits: Splits,
                     checkpoint: str | os.PathLike | None) -> _RunState:
    """A fresh start (epoch 0: the untrained network validated), or the state after a checkpoint's epoch."""
    saved = resume.load(checkpoint, config.config_hash()) if checkpoint else None
    if saved is None:
        history: list[dict] = [{"epoch": 0, "loss": None, "mined_per_batch": None, "time_s": 0.0,
                                **_validation(run, splits)}]
        return _RunState(history=history, best={"score": -float("inf"), "epoch": 0, "state": None},
                         train_time=0.0, images_seen=0, resumed_at=[], first_epoch=1)
    # an interrupted run: everything as it was after the saved epoch
    resume.restore(saved, model=run.model, criterion=run.criterion, optimizer=run.optimizer, scaler=run.scaler,
                   sampler=run.sampler, feed=run.feed)
    log.warning("resuming %s after epoch %d (%s)", config.run_id(), saved["epoch"], checkpoint)
    return _RunState(history=saved["history"], best=saved["best"], train_time=saved["train_time"],
                     images_seen=saved["images_seen"], resumed_at=saved["resumed_at"] + [saved["epoch"]],
                     first_epoch=saved["epoch"] + 1)


def set_learning_rates(config: RunConfig, optimizer: torch.optim.Optimizer, step: int, total: int) -> None:
    """lr_schedule "cosine": every group's lr is its initial lr x (1 + cos(pi step / total)) / 2 before step
    ``step`` (0-based) of ``total``; computed from the step alone, so a resumed run needs no saved schedule."""
    factor = 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1))) if config.lr_schedule == "cosine" \
        else None
    for group in optimizer.param_groups:
        warm = group.get("warmup_epochs", 0) * total // max(config.epochs, 1)  # the trunk's warm-up steps
        if factor is None and not warm:
            continue
        group.setdefault("initial_lr", group["lr"])
        if step < warm:
            group["lr"] = 0.0
        elif factor is not None:
            group["lr"] = group["initial_lr"] * factor
        elif step == warm:  # the warm-up's end under a constant (or plateau) schedule
            group["lr"] = group["initial_lr"]


def _train_epoch(config: RunConfig, run: _Run, state: _RunState, epoch: int, bar) -> dict:
    """One pass of optimisation steps over the epoch's batches; the epoch's record, validation not yet in it."""
    run.model.train()
    start = time.perf_counter()
    losses, mined = [], []
    per_epoch = len(run.sampler)
    for step, (images, labels) in enumerate(run.feed.epoch()):
        set_learning_rates(config, run.optimizer, (epoch - 1) * per_epoch + step, config.epochs * per_epoch)
        loss = optimisation_step(run.forward, run.criterion, run.optimizer, run.scaler, images, labels, run.amp)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, batch {step}: training diverged "
                                     f"(lower lr={config.lr}?)")
        losses.append(loss)
        mined.append(run.criterion.last_mined)
        state.images_seen += len(labels) * run.processes
        if bar is not None:
            bar.update()
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    epoch_time = time.perf_counter() - start
    state.train_time += epoch_time
    return {"epoch": epoch, "loss": torch.stack(losses).mean().item(), "mined_per_batch": float(np.mean(mined)),
            "time_s": epoch_time}


def _select(config: RunConfig, run: _Run, state: _RunState, record: dict) -> None:
    """Rank 0 keeps the epoch's model and loss parameters when its validation score is the best yet."""
    if not run.lead:
        return
    select_key = f"val_{config.select_metric}"
    if record[select_key] > state.best.get("patience_score", -float("inf")) + (config.min_delta or 0.0):
        state.best["patience_score"], state.best["patience_epoch"] = record[select_key], record["epoch"]
    if record[select_key] > state.best["score"]:
        state.best = {**state.best, "score": record[select_key], "epoch": record["epoch"],
                      "state": {name: {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                                for name, module in (("model", run.model), ("criterion", run.criterion))}}
    log.info("epoch %d/%d  loss %.4f  val R@1 %.4f  val MAP@R %.4f  (%.1f s)", record["epoch"], config.epochs,
             record["loss"], record["val_recall@1"], record["val_map@r"], record["time_s"])


LR_DROP = 0.1  # lr_schedule "plateau": the factor of the learning rates at the plateau
LR_DROPS = 1  # how many drops before the next plateau stops the run


def _plateaued(config: RunConfig, run: _Run, state: _RunState, epoch: int) -> bool:
    """Whether training stops after ``epoch``: ``patience`` epochs in a row up to it brought no gain over
    the best by more than ``min_delta``. Under lr_schedule "plateau" the first LR_DROPS plateaus divide
    every learning rate by 10 instead and restart the count. Rank 0 decides; under torch.distributed
    the decision is shared with the other ranks, which drop their learning rates alike."""
    if config.patience is None or epoch < 1:
        return False
    last = state.best.get("patience_epoch", state.best["epoch"])  # the last improvement by more than min_delta
    plateau = [bool(epoch - last >= config.patience and state.best["state"] is not None)]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(plateau, src=0)
    if not plateau[0]:
        return False
    if config.lr_schedule == "plateau" and state.best.get("lr_drops", 0) < LR_DROPS:
        for group in run.optimizer.param_groups:
            group["lr"] *= LR_DROP
        state.best = {**state.best, "lr_drops": state.best.get("lr_drops", 0) + 1, "patience_epoch": epoch}
        log.info("validation plateau after epoch %d: learning rates x %g", epoch, LR_DROP)
        return False
    log.info("stopping after epoch %d: no better validation %s for %d epochs (best: epoch %d)", epoch,
             config.select_metric, config.patience, state.best["epoch"])
    return True


def _save_checkpoint(checkpoint: str | os.PathLike, config: RunConfig, run: _Run, state: _RunState,
                     epoch: int) -> None:
    resume.save(checkpoint, config_hash=config.config_hash(), epoch=epoch, model=run.model, criterion=run.criterion,
                optimizer=run.optimizer, scaler=run.scaler, sampler=run.sampler, feed=run.feed,
                history=state.history, best=state.best, train_time=state.train_time,
                images_seen=state.images_seen, resumed_at=state.resumed_at)


def _restore_best(config: RunConfig, run: _Run, state: _RunState) -> int:
    """Load the selected epoch's model and loss parameters (proxies, centres); returns that epoch."""
    best = state.best
    if best["state"] is None:  # the validation score was never a number (NaN): keep the last epoch
        log.warning("validation %s was never finite; testing the last epoch", f"val_{config.select_metric}")
        return config.epochs
    run.model.load_state_dict(best["state"]["model"])
    run.criterion.load_state_dict(best["state"]["criterion"])
    return best["epoch"]


def _test(config: RunConfig, run: _Run, splits: Splits, state: _RunState) -> TrainResult:
    """The selected epoch's network, evaluated once on the test split (In-Shop: queries against the gallery)."""
    best_epoch = _restore_best(config, run, state)
    feed, evaluator, device = run.feed, run.evaluator, run.device
    test_embeddings = feed.embed(evaluator, splits.test).cpu()
    test_labels = torch.from_numpy(splits.test.labels)
    gallery_embeddings = gallery_labels = None
    if splits.gallery is not None:  # In-Shop: queries ranked against the gallery
        gallery_embeddings = feed.embed(evaluator, splits.gallery).cpu()
        gallery_labels = torch.from_numpy(splits.gallery.labels)
    # the one look at the test split
    test_metrics = evaluate(test_embeddings, test_labels, ks=recall_ks(config.dataset), gallery=gallery_embeddings,
                            gallery_labels=gallery_labels, device=device)
    train_time = state.train_time
    return TrainResult(config=config, model=run.model, criterion=run.criterion, history=state.history,
                       best_epoch=best_epoch, test_metrics=test_metrics, test_embeddings=test_embeddings,
                       test_labels=test_labels, device=str(device), train_time_s=train_time,
                       images_per_s=state.images_seen / max(train_time, 1e-9),
                       gallery_embeddings=gallery_embeddings, gallery_labels=gallery_labels,
                       extra={"resumed_after_epochs": state.resumed_at, "processes": run.processes,
                              "precision": precision_name(run.amp)})


def fit(config: RunConfig, splits: Splits, *, on_epoch_end: Callable[[dict, list[dict]], None] | None = None,
        progress: bool = True, checkpoint: str | os.PathLike | None = None) -> tuple[_Run, _RunState]:
    """Train one run on the train split, validating every epoch; the test split is not looked at.

    ``on_epoch_end(record, history)`` sees every epoch's record (an exception it raises, such as a
    tuner's pruning, stops training there). ``checkpoint``: a file (the run folder's resume.pt) written
    at every epoch's end with everything the next epochs depend on; when it exists at the start,
    training continues after its epoch. Returns what :func:`train` tests (the best epoch's state)."""
    config.validate()
    run = _set_up(config, splits)
    state = _start_or_resume(config, run, splits, checkpoint)
    if on_epoch_end and run.lead:
        on_epoch_end(state.history[-1], state.history)
    bar = _progress(config.epochs * len(run.sampler), progress and run.lead)
    if bar is not None:
        bar.update((state.first_epoch - 1) * len(run.sampler))
    try:
        for epoch in range(state.first_epoch, config.epochs + 1):
            if _plateaued(config, run, state, epoch - 1):
                break
            record = _train_epoch(config, run, state, epoch, bar)
            record["lr"] = run.optimizer.param_groups[0]["lr"]  # the network's, at the epoch's end
            started = time.perf_counter()
            record |= _validation(run, splits)
            record["val_time_s"] = time.perf_counter() - started  # what validation costs beside training
            state.history.append(record)
            _select(config, run, state, record)
            if on_epoch_end and run.lead:
                on_epoch_end(record, state.history)
            if checkpoint and run.lead:
                _save_checkpoint(checkpoint, config, run, state, epoch)
    finally:
        if bar is not None:
            bar.close()
    return run, state


def train(config: RunConfig, splits: Splits, *, on_epoch_end: Callable[[dict, list[dict]], None] | None = None,
          progress: bool = True, checkpoint: str | os.PathLike | None = None) -> TrainResult | None:
    """Train one run (:func:`fit`), select the best validation epoch, evaluate it once on the test split.

    Under torch.distributed (torchrun; see dmlbench.training.launch) every rank trains on its share of each
    batch, and rank 0 alone validates, writes the checkpoint and tests: the other ranks return None."""
    run, state = fit(config, splits, on_epoch_end=on_epoch_end, progress=progress, checkpoint=checkpoint)
    return _test(config, run, splits, state) if run.lead else None
