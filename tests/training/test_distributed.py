"""Two processes (gloo) on halves of a batch give the loss and gradients of one process on the whole."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dmlbench.criterion import build_criterion
from dmlbench.training.distributed import gather_batch, loss_scale, shard, world
from dmlbench.training.loop import optimisation_step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 12, generator=generator)
    labels = torch.arange(4).repeat_interleave(4)  # P = 4 classes x K = 4
    return x, labels


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 6))


def step(net, x, labels, loss_name, miner):
    """dmlbench's training step (optimisation_step, learning rate 0): the loss and the gradients of
    the network's and the loss's own parameters (proxies)."""
    criterion = build_criterion(loss_name, miner, {}, {}, seed=0, num_classes=4, embedding_dim=6)
    module = net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net
    params = list(module.parameters()) + list(criterion.parameters())
    optimizer = torch.optim.SGD(params, lr=0.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loss = optimisation_step(lambda images: torch.nn.functional.normalize(net(images), dim=1), criterion, optimizer,
                             scaler, x, labels, None)
    return loss.item(), [p.grad.clone() for p in params]


def worker(rank, size, port, loss_name, miner, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        torch.set_num_threads(1)
        assert world() == (rank, size)
        x, labels = data()
        mine = shard(list(range(len(labels))), rank, size)
        out[rank] = step(torch.nn.parallel.DistributedDataParallel(model()), x[mine], labels[mine], loss_name, miner)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("loss_name,miner", [("triplet", "semi-hard"), ("contrastive", "none"),
                                             ("multi-similarity", "multi-similarity"), ("proxy-anchor", "none")])
def test_two_processes_equal_one_on_the_concatenated_batch(loss_name, miner):
    x, labels = data()
    loss, expected = step(model(), x, labels, loss_name, miner)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(worker, args=(2, free_port(), loss_name, miner, out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        got_loss, grads = results[rank]
        assert got_loss == pytest.approx(loss, rel=1e-6)
        assert len(grads) == len(expected) == len(list(model().parameters())) + (loss_name == "proxy-anchor")
        for g, e in zip(grads, expected):
            assert torch.allclose(g, e, atol=1e-6, rtol=1e-5)


def test_shards_and_errors():
    assert shard(list(range(8)), 1, 2) == [4, 5, 6, 7] and shard([3, 1], 0, 1) == [3, 1]
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        shard(list(range(8)), 0, 3)
    with pytest.raises(ValueError, match="rank 2 is outside 0..1"):
        shard(list(range(8)), 2, 2)
    x, labels = data()
    assert gather_batch(x, labels)[0] is x and world() == (0, 1) and loss_scale() == 1.0


FLAT_MODEL = '''
import torch
from torch import nn


class Flat(nn.Module):
    """A network without batch norm (per-process statistics would make 2 processes differ from 1 on the CPU)."""

    def __init__(self, embedding_dim=8):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.ReLU(), nn.Linear(32, embedding_dim))

    def forward(self, images):
        return nn.functional.normalize(self.net(images), dim=1)
'''


def test_torchrun_training_of_one_run_equals_one_process(isolated, tmp_path, monkeypatch):
    """A run with processes=2 goes through torchrun (2 gloo processes, each its half of every batch,
    rank 0 validating and testing) and ends where the one-process run of the same settings ends."""
    from dmlbench.config import RunConfig
    from dmlbench.datasets import load_dataset
    from dmlbench.training.launch import LOG_FILE, train_distributed
    from dmlbench.training.loop import train

    from ..support import tiny_settings
    from ..support import user_module

    user_module(tmp_path, monkeypatch, "flat_model.py", FLAT_MODEL)
    splits = load_dataset("fashion-mnist")
    # fp32: under bf16 autocast each process's half batch rounds through other kernels than the whole batch
    settings = tiny_settings(epochs=2, device="cpu", model="flat_model:Flat", model_kwargs={}, loss="proxy-anchor",
                             miner="none", precision="fp32")
    one = train(RunConfig(**settings), splits, progress=False)
    two = train_distributed(RunConfig(**settings, processes=2), splits, tmp_path / "run")
    assert two.extra["processes"] == 2 and (tmp_path / "run" / LOG_FILE).is_file()
    assert [r["epoch"] for r in two.history] == [0, 1, 2] and two.best_epoch == one.best_epoch
    for a, b in zip(one.history, two.history):
        assert (a["loss"] is None and b["loss"] is None) or a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["val_map@r"] == pytest.approx(b["val_map@r"], abs=1e-6)
    assert torch.allclose(one.test_embeddings, two.test_embeddings, atol=1e-5)
    assert one.test_metrics == pytest.approx(two.test_metrics, abs=1e-6)
    assert torch.allclose(one.criterion.loss.proxies, two.criterion.loss.proxies, atol=1e-5)


def test_a_failed_launch_names_its_log(isolated, tmp_path):
    from dmlbench.config import RunConfig
    from dmlbench.datasets import load_dataset
    from dmlbench.training.launch import train_distributed

    from ..support import tiny_settings

    config = RunConfig(**tiny_settings(epochs=1, device="cpu", data_root=str(tmp_path / "nowhere")), processes=2)
    with pytest.raises(RuntimeError, match=r"torchrun with 2 processes failed .*launch\.log ends with"):
        train_distributed(config, load_dataset("fashion-mnist"), tmp_path / "run")
