"""The training loop: dataset -> PK batches -> model -> criterion -> optimiser, validated each epoch.

Model selection follows ../shared/PROTOCOL.md: after every epoch the model embeds the validation
split (never the test split) and the epoch with the best validation ``select_metric`` is kept; the
test split is embedded and evaluated once, on that model. On the CPU a seed fixes every number
(sampler, miner and initialisation draw from seeded generators); on CUDA the forward pass runs under
bf16 autocast (fp16 with a gradient scaler where bf16 is unsupported) while losses stay in fp32.
"""

from __future__ import annotations

import logging
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
from .distributed import gather_batch, loss_scale, world
from .feeds import autocast_dtype, forward_embed, image_tensor, make_feed  # noqa: F401 (re-exported)
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


def embed(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """(N, C, H, W) on the model's device -> (N, D) float32 embeddings, eval mode."""
    batches = (images[start:start + batch_size] for start in range(0, len(images), batch_size))
    return forward_embed(model, batches, images.device)


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
EXTRA_KS = {"sop": (10, 100, 1000), "inshop": (10, 20, 30, 40, 50)}


def recall_ks(dataset: str) -> tuple[int, ...]:
    return tuple(sorted(set(TEST_KS) | set(EXTRA_KS.get(dataset, ()))))


def optimisation_step(forward, criterion: Criterion, optimizer: torch.optim.Optimizer, scaler, images: torch.Tensor,
                      labels: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor:
    """One step: embeddings (under autocast on CUDA), the loss in fp32, and, when the loss is finite,
    backward and the optimiser's update. Returns the loss, detached; a non-finite loss changes nothing.

    Under torch.distributed the rank's embeddings join every rank's before mining and the loss (see
    dmlbench.training.distributed), so the step is the one a single process takes on the whole batch."""
    with torch.autocast(images.device.type, dtype=amp, enabled=amp is not None):
        embeddings = forward(images)
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
    return MODELS.create(config.model, embedding_dim=config.embedding_dim, **(config.model_kwargs | overrides))


def build_run_criterion(config: RunConfig, num_classes: int) -> Criterion:
    """The run's loss and miner, the miner seeded by the run's seed; ``num_classes``: training classes."""
    return build_criterion(config.loss, config.miner, config.loss_kwargs, config.miner_kwargs, seed=config.seed,
                           num_classes=num_classes, embedding_dim=config.embedding_dim)


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
    return {"val_recall@1": metrics["recall@1"], "val_map@r": metrics["map@r"]}


def train(config: RunConfig, splits: Splits, *, on_epoch_end: Callable[[dict, list[dict]], None] | None = None,
          progress: bool = True, checkpoint: str | os.PathLike | None = None) -> TrainResult | None:
    """Train one run, select the best validation epoch, evaluate it once on the test split.

    ``checkpoint``: a file (the run folder's resume.pt) written at every epoch's end with everything
    the next epochs depend on; when it exists at the start, training continues after its epoch.
    Under torch.distributed (torchrun; see dmlbench.training.launch) every rank trains on its share of each
    batch, and rank 0 alone validates, writes the checkpoint and tests: the other ranks return None."""
    config.validate()
    rank, processes = world()
    device = resolve_device(config.device)
    if processes > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    seed_everything(config.seed)
    amp = autocast_dtype(device)

    # Training labels become 0 .. C-1, the indices of per-class parameters (proxies, classifiers).
    train_classes, train_labels = np.unique(splits.train.labels, return_inverse=True)
    model = build_model(config)
    if processes > 1 and device.type == "cuda":  # batch statistics over the whole batch, as in one process
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=torch.channels_last)
    criterion = build_run_criterion(config, num_classes=len(train_classes)).to(device)
    groups = [{"params": list(model.parameters())}] + criterion.param_groups(config.lr, config.loss_lr)
    optimizer = make_optimizer(config.optimizer, groups, config.lr, config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    # The network's training forward pass: under torch.distributed wrapped in DDP, which averages the
    # gradients over ranks (optimisation_step scales the loss to make that the sum); compiled when asked.
    # The state dicts stay those of `model`. Evaluation (rank 0 alone) bypasses DDP's collectives.
    ddp = None
    if processes > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(ddp or model) if config.torch_compile else (ddp or model)
    evaluator = model if ddp is not None else forward

    sampler = SAMPLERS.create(config.sampler_name, labels=splits.train.labels, P=config.P, K=config.K,
                              super_labels=splits.train.super_labels, batches_per_epoch=config.iters_per_epoch or None,
                              generator=torch.Generator().manual_seed(config.seed), **(config.sampler_kwargs or {}))
    # Photos are normalised with the statistics the backbone's weights expect (ImageNet's, or a timm model's).
    mean, std = getattr(model, "normalization", (None, None))
    feed = make_feed(config, splits, train_labels, sampler, device, mean=mean, std=std, world=(rank, processes))
    val_y = torch.from_numpy(splits.val.labels)
    lead = rank == 0  # validates, checkpoints and tests

    def validate() -> dict[str, float]:
        return validation_metrics(feed.embed(evaluator, splits.val), val_y) if lead else {}

    select_key = f"val_{config.select_metric}"
    saved = resume.load(checkpoint, config.config_hash()) if checkpoint else None
    if saved is None:
        history: list[dict] = [{"epoch": 0, "loss": None, "mined_per_batch": None, "time_s": 0.0, **validate()}]
        best = {"score": -float("inf"), "epoch": 0, "state": None}
        train_time, images_seen, resumed_at, first_epoch = 0.0, 0, [], 1
    else:  # an interrupted run: everything as it was after the saved epoch
        resume.restore(saved, model=model, criterion=criterion, optimizer=optimizer, scaler=scaler, sampler=sampler,
                       feed=feed)
        history, best = saved["history"], saved["best"]
        train_time, images_seen = saved["train_time"], saved["images_seen"]
        resumed_at, first_epoch = saved["resumed_at"] + [saved["epoch"]], saved["epoch"] + 1
        log.warning("resuming %s after epoch %d (%s)", config.run_id(), saved["epoch"], checkpoint)
    if on_epoch_end and lead:
        on_epoch_end(history[-1], history)
    bar = _progress(config.epochs * len(sampler), progress and lead)
    if bar is not None:
        bar.update((first_epoch - 1) * len(sampler))
    for epoch in range(first_epoch, config.epochs + 1):
        model.train()
        start = time.perf_counter()
        losses, mined = [], []
        for step, (images, labels) in enumerate(feed.epoch()):
            loss = optimisation_step(forward, criterion, optimizer, scaler, images, labels, amp)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, batch {step}: training diverged "
                                         f"(lower lr={config.lr}?)")
            losses.append(loss)
            mined.append(criterion.last_mined)
            images_seen += len(labels) * processes
            if bar is not None:
                bar.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_time = time.perf_counter() - start
        train_time += epoch_time
        record = {"epoch": epoch, "loss": torch.stack(losses).mean().item(), "mined_per_batch": float(np.mean(mined)),
                  "time_s": epoch_time, **validate()}
        history.append(record)
        if lead and record[select_key] > best["score"]:
            best = {"score": record[select_key], "epoch": epoch,
                    "state": {name: {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                              for name, module in (("model", model), ("criterion", criterion))}}
        if lead:
            log.info("epoch %d/%d  loss %.4f  val R@1 %.4f  val MAP@R %.4f  (%.1f s)", epoch, config.epochs,
                     record["loss"], record["val_recall@1"], record["val_map@r"], epoch_time)
        if on_epoch_end and lead:
            on_epoch_end(record, history)
        if checkpoint and lead:
            resume.save(checkpoint, config_hash=config.config_hash(), epoch=epoch, model=model, criterion=criterion,
                        optimizer=optimizer, scaler=scaler, sampler=sampler, feed=feed, history=history, best=best,
                        train_time=train_time, images_seen=images_seen, resumed_at=resumed_at)
    if bar is not None:
        bar.close()
    if not lead:
        return None

    best_epoch = best["epoch"]
    if best["state"] is None:  # the validation score was never a number (NaN): keep the last epoch
        log.warning("validation %s was never finite; testing the last epoch", select_key)
        best_epoch = config.epochs
    else:  # the model and the loss's parameters (proxies, centres) of the selected epoch
        model.load_state_dict(best["state"]["model"])
        criterion.load_state_dict(best["state"]["criterion"])
    test_embeddings = feed.embed(evaluator, splits.test).cpu()
    test_labels = torch.from_numpy(splits.test.labels)
    gallery_embeddings = gallery_labels = None
    if splits.gallery is not None:  # In-Shop: queries ranked against the gallery
        gallery_embeddings = feed.embed(evaluator, splits.gallery).cpu()
        gallery_labels = torch.from_numpy(splits.gallery.labels)
    # the one look at the test split
    test_metrics = evaluate(test_embeddings, test_labels, ks=recall_ks(config.dataset), gallery=gallery_embeddings,
                            gallery_labels=gallery_labels, device=device)
    return TrainResult(config=config, model=model, criterion=criterion, history=history, best_epoch=best_epoch,
                       test_metrics=test_metrics, test_embeddings=test_embeddings, test_labels=test_labels,
                       device=str(device), train_time_s=train_time, images_per_s=images_seen / max(train_time, 1e-9),
                       gallery_embeddings=gallery_embeddings, gallery_labels=gallery_labels,
                       extra={"resumed_after_epochs": resumed_at, "processes": processes})
