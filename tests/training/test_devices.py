"""The same code on every device torch sees: the CPU always, CUDA when present (with autocast).

On a machine without a GPU only the CPU cases exist; on a CUDA machine every case below also runs
on the GPU and must give the CPU's numbers (to float tolerance).
"""

import pytest
import torch
import torch.nn.functional as F

from dmlbench.config import RunConfig
from dmlbench.criterion import build_criterion, is_compatible
from dmlbench.datasets import load_dataset
from dmlbench.losses import LOSSES
from dmlbench.evaluation.metrics import evaluate
from dmlbench.miners import MINERS
from dmlbench.training.feeds import native_bf16_cpu
from dmlbench.training.loop import autocast_dtype, resolve_device, train

from ..support import tiny_settings

pytestmark = pytest.mark.devices

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(64, 32, generator=g), dim=1), torch.randint(0, 8, (64,), generator=g)


PAIRS = [(loss, miner) for loss in LOSSES.names() for miner in MINERS.names()
         if is_compatible(LOSSES.get(loss), MINERS.get(miner))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loss,miner", PAIRS)
def test_criterion_agrees_with_cpu(device, loss, miner):
    x, labels = batch()
    values, grads = [], []
    for where in ("cpu", device):
        leaf = x.clone().to(where).requires_grad_(True)
        torch.manual_seed(0)  # the same initial proxies / class weights on both devices
        criterion = build_criterion(loss, miner, seed=3, num_classes=8, embedding_dim=32).to(where)
        value = criterion(leaf, labels.to(where))
        value.backward()
        values.append(value.detach().cpu())
        grads.append(leaf.grad.cpu())
    torch.testing.assert_close(values[1], values[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_evaluation_agrees_with_cpu(device):
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 20, (600,), generator=g)
    x = torch.randn(20, 32, generator=g)[labels] + torch.randn(600, 32, generator=g)
    cpu = evaluate(x, labels)
    other = evaluate(x, labels, device=device)
    # exact kNN and faiss-settled k-means: the same numbers on every device, not just close ones
    assert other == cpu


@pytest.mark.parametrize("device", DEVICES)
def test_training_runs_with_mixed_precision_where_available(device, isolated):
    assert resolve_device(device).type == device
    if device == "cpu":  # the default precision, "auto": bf16 where the CPU has it natively
        expected = torch.bfloat16 if native_bf16_cpu() else None
    else:
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert autocast_dtype(torch.device(device)) == expected
    result = train(RunConfig(**tiny_settings(device=device)), load_dataset("fashion-mnist"), progress=False)
    assert result.device.startswith(device)
    assert result.test_embeddings.dtype == torch.float32
    assert torch.isfinite(torch.tensor([h["loss"] for h in result.history[1:]])).all()


def test_cuda_request_without_cuda_fails_clearly():
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
            resolve_device("cuda")
