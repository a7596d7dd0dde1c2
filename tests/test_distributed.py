"""Two processes (gloo) on halves of a batch give the loss and gradients of one process on the whole."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dmlbench.criterion import build_criterion
from dmlbench.distributed import gather_batch, loss_scale, shard, world


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
    criterion = build_criterion(loss_name, miner, {}, {}, seed=0, num_classes=4, embedding_dim=6)
    embeddings = torch.nn.functional.normalize(net(x), dim=1)
    embeddings, labels = gather_batch(embeddings, labels)
    return criterion(embeddings, labels)


def worker(rank, size, port, loss_name, miner, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        torch.set_num_threads(1)
        assert world() == (rank, size)
        x, labels = data()
        mine = shard(list(range(len(labels))), rank, size)
        net = torch.nn.parallel.DistributedDataParallel(model())
        loss = step(net, x[mine], labels[mine], loss_name, miner)
        (loss * loss_scale()).backward()
        out[rank] = (loss.item(), [p.grad.clone() for p in net.module.parameters()])
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("loss_name,miner", [("triplet", "semi-hard"), ("contrastive", "none"),
                                             ("multi-similarity", "multi-similarity")])
def test_two_processes_equal_one_on_the_concatenated_batch(loss_name, miner):
    x, labels = data()
    net = model()
    loss = step(net, x, labels, loss_name, miner)
    loss.backward()
    expected = [p.grad.clone() for p in net.parameters()]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(worker, args=(2, free_port(), loss_name, miner, out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        got_loss, grads = results[rank]
        assert got_loss == pytest.approx(loss.item(), rel=1e-6)
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
