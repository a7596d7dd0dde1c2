"""The CUDA path: bf16 autocast with every loss, channels-last, pinned batches normalised on the GPU,
torch.compile, NCCL. Every test here needs a CUDA device and is skipped (counted as skipped) where
torch sees none; the GPU check (``make gpu-check``) runs them on its machine. What these tests catch
that can be reproduced on the CPU has its own CPU test (test_train.py: fp32 embeddings for the loss
under autocast)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist

from dmlbench.config import RunConfig
from dmlbench.criterion import build_criterion, is_compatible
from dmlbench.datasets import load_dataset
from dmlbench.training.feeds import PhotoFeed, autocast_dtype
from dmlbench.losses import LOSSES
from dmlbench.miners import MINERS
from dmlbench.models import MODELS
from dmlbench.training.loop import make_optimizer, optimisation_step, train

from ..support import tiny_settings

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")
PAIRS = [(loss, miner) for loss in LOSSES.names() for miner in MINERS.names()
         if is_compatible(LOSSES.get(loss), MINERS.get(miner))]


def images_and_labels(seed=0, n=64, classes=8):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n // classes)
    return torch.rand(n, 1, 28, 28, generator=g) + labels.view(-1, 1, 1, 1) / classes, labels


def one_step(loss, miner, amp, device=CUDA):
    """dmlbench's optimisation step with the study's network on ``device``: the loss, its dtype, and
    whether every gradient is finite."""
    x, labels = images_and_labels()
    torch.manual_seed(0)
    model = MODELS.create("convnet", embedding_dim=32).to(device, memory_format=torch.channels_last)
    criterion = build_criterion(loss, miner, {}, {}, seed=0, num_classes=8, embedding_dim=32).to(device)
    optimizer = make_optimizer("adam", [{"params": list(model.parameters())}] + criterion.param_groups(1e-3), 1e-3, 0.0)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    value = optimisation_step(model, criterion, optimizer, scaler, x.to(device, memory_format=torch.channels_last),
                              labels.to(device), amp)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return value, all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("loss,miner", PAIRS)
def test_every_loss_and_miner_trains_under_autocast_on_cuda(loss, miner):
    amp = autocast_dtype(CUDA)
    assert amp in (torch.bfloat16, torch.float16)
    value, finite = one_step(loss, miner, amp)
    reference, _ = one_step(loss, miner, None)
    assert value.dtype == torch.float32 and torch.isfinite(value) and finite
    # bf16 convolutions round to about 3 significant digits: the loss moves a little, not a lot
    assert abs(value.item() - reference.item()) <= 0.1 * abs(reference.item()) + 0.05, (value, reference)


def test_channels_last_network_matches_the_cpu_in_fp32():
    x, _ = images_and_labels()
    torch.manual_seed(0)
    model = MODELS.create("convnet", embedding_dim=32).eval()
    with torch.no_grad():
        cpu = model(x)
        cuda = model.to(CUDA, memory_format=torch.channels_last)(x.to(CUDA, memory_format=torch.channels_last))
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-3, atol=1e-4)


def test_photo_feed_pins_batches_and_normalises_them_on_the_gpu(tmp_path):
    from dmlbench.bench.train import synthetic_cache
    from dmlbench.datasets.base import Splits
    from dmlbench.datasets.benchmarks import PhotoSet
    from dmlbench.samplers import SAMPLERS

    cache = synthetic_cache(tmp_path / "cache", 32, 4, 40)
    labels = cache.labels.astype(np.int64)
    train_set = PhotoSet(cache, np.arange(32), labels)
    splits = Splits("synthetic", train_set, train_set, train_set, {}, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    batches = {}
    for device, workers in ((torch.device("cpu"), 0), (CUDA, 2)):
        sampler = SAMPLERS.create("pk", labels=labels, P=4, K=2, batches_per_epoch=3,
                                  generator=torch.Generator().manual_seed(0))
        feed = PhotoFeed(splits, labels, sampler, device, image_size=32, num_workers=workers, eval_batch_size=8, seed=0)
        assert feed.pin == (device.type == "cuda")
        if device.type == "cuda":
            raw, _ = next(iter(feed.loader))
            assert raw.is_pinned() and raw.dtype == torch.uint8  # uint8 crosses the bus, pinned
        batches[device.type] = [(x, y) for x, y in feed.epoch()]
    for (cx, cy), (gx, gy) in zip(batches["cpu"], batches["cuda"]):
        assert gx.is_cuda and gx.dtype == torch.float32 and gx.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(gx.cpu(), cx, rtol=0, atol=1e-6)  # the same crops, normalised on the GPU
        assert torch.equal(gy.cpu(), cy)


def test_torch_compile_trains_on_cuda(isolated):
    splits = load_dataset("fashion-mnist")
    result = train(RunConfig(**tiny_settings(device="cuda", torch_compile=True)), splits, progress=False)
    assert result.device.startswith("cuda")
    assert torch.isfinite(torch.tensor([h["loss"] for h in result.history[1:]])).all()
    eager = train(RunConfig(**tiny_settings(device="cuda")), splits, progress=False)
    # compiled kernels fuse and reorder: the runs agree in their first epoch's loss, closely
    assert abs(result.history[1]["loss"] - eager.history[1]["loss"]) <= 0.05 * abs(eager.history[1]["loss"]) + 1e-3


def test_nccl_gathers_a_batch_on_one_gpu(tmp_path):
    from dmlbench.training.distributed import gather_batch

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.cuda.set_device(0)
        x = torch.randn(8, 4, device=CUDA, requires_grad=True)
        labels = torch.arange(8, device=CUDA)
        gathered, gathered_labels = gather_batch(x, labels)
        assert torch.equal(gathered.detach(), x.detach()) and torch.equal(gathered_labels, labels)
        gathered.sum().backward()
        assert torch.equal(x.grad, torch.ones_like(x))
    finally:
        dist.destroy_process_group()
