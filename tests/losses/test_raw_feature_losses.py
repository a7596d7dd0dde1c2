"""Center loss and N-pairs on raw (unnormalised) features, as their papers, on a real tiny training run.

On L2-normalised embeddings both were degenerate: center loss's term is at most 2 lambda = 0.006 per
sample (so about 0.6% of a loss whose softmax part is about 1: plain cross-entropy), and N-pairs'
logits lie in [-1, 1], so with N = 5 classes its loss cannot fall below log(1 + 4 e^-2) = 0.432.
The run prints the centre term's share of the loss and the range of N-pairs' loss over the steps
(``pytest -s tests/losses/test_raw_feature_losses.py``)."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from dmlbench.config import RunConfig
from dmlbench.criterion import build_criterion
from dmlbench.losses import LOSSES
from dmlbench.models import MODELS
from dmlbench.training import loop

from .test_every_loss import default_settings, fashion_mnist  # noqa: F401 (the real Fashion-MNIST fixture)

NORMALISED_NPAIRS_FLOOR = math.log(1 + 4 * math.exp(-2))  # 0.432: 5 classes, unit embeddings


def tiny_run(loss, splits, monkeypatch, epochs=3, iters=80):
    """``epochs`` x ``iters`` batches of the default study's settings (half its 6 x 80); the loss of every step."""
    steps = []
    step = loop.optimisation_step

    def recording(*args, **kwargs):
        value = step(*args, **kwargs)
        steps.append(float(value))
        return value

    monkeypatch.setattr(loop, "optimisation_step", recording)
    # the short run of the old default (constant lr 1e-3), not the study's annealed schedule
    config = RunConfig(**{**default_settings().to_dict(), "loss": loss, "miner": "none", "loss_kwargs": {},
                          "miner_kwargs": {}, "epochs": epochs, "iters_per_epoch": iters, "device": "cpu",
                          "lr": 1e-3, "lr_schedule": None, "patience": None, "min_delta": None})
    return loop.train(config, splits, progress=False), steps


def test_center_and_npairs_declare_raw_features_and_version_2():
    for name in ("center", "n-pairs"):
        assert LOSSES.get(name).embedding_space == "raw" and LOSSES.get(name).version == 2
    assert {LOSSES.get(n).embedding_space for n in LOSSES.names() if n not in ("center", "n-pairs")} == {"normalized"}


def test_center_term_is_a_real_share_of_the_loss_on_a_tiny_run(fashion_mnist, monkeypatch):  # noqa: F811
    result, steps = tiny_run("center", fashion_mnist, monkeypatch)
    model, loss = result.model.eval(), result.criterion.loss.eval()
    images = torch.from_numpy(fashion_mnist.train.images[:400]).float()[:, None] / 255.0
    images = (images - fashion_mnist.mean) / fashion_mnist.std
    labels = torch.unique(torch.as_tensor(fashion_mnist.train.labels), return_inverse=True)[1][:400]
    with torch.no_grad():
        raw = model(images, raw=True)
        terms = {name: value.mean().item() for name, value in loss.terms(raw, labels, None).items()}
    share = terms["center"] / (terms["center"] + terms["softmax"])
    # on unit embeddings and unit centres |x - c|^2 <= 4: the centre term at most 2 lambda per sample
    unit_bound = 2 * loss.lambda_c / (2 * loss.lambda_c + terms["softmax"])
    print(f"\ncenter: centre term {terms['center']:.4f}, softmax {terms['softmax']:.4f}: share {share:.1%} "
          f"(at most {unit_bound:.2%} on unit embeddings); mean |raw feature| {raw.norm(dim=1).mean():.2f}; "
          f"loss over steps {min(steps):.3f}..{max(steps):.3f}")
    # measured: 3.2% (centre 0.0108, softmax 0.328) against at most 1.8% on unit embeddings, and growing
    # with the features' norm; the term is no longer bounded by 2 lambda
    assert share > 0.025 and share > 1.5 * unit_bound
    assert result.history[1]["val_recall@1"] > result.history[0]["val_recall@1"]


def test_npairs_loss_goes_below_the_normalised_floor_on_a_tiny_run(fashion_mnist, monkeypatch):  # noqa: F811
    result, steps = tiny_run("n-pairs", fashion_mnist, monkeypatch)
    print(f"\nn-pairs: loss over {len(steps)} steps {min(steps):.3f}..{max(steps):.3f} (first {steps[0]:.3f}, "
          f"last {steps[-1]:.3f}); the floor on unit embeddings is {NORMALISED_NPAIRS_FLOOR:.3f}")
    assert min(steps) < NORMALISED_NPAIRS_FLOOR  # measured: 0.401 within 240 steps
    assert result.history[1]["val_recall@1"] > result.history[0]["val_recall@1"]


@pytest.mark.parametrize("name", ["convnet", "resnet18"])
def test_models_give_raw_features_whose_normalisation_is_the_embedding(name):
    torch.manual_seed(0)
    model = MODELS.create(name, embedding_dim=8).eval()
    images = torch.randn(3, 1 if name == "convnet" else 3, 28 if name == "convnet" else 32, 28 if name == "convnet" else 32)
    with torch.no_grad():
        raw, unit = model(images, raw=True), model(images)
    assert raw.dtype == torch.float32 and not torch.allclose(raw.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(unit, F.normalize(raw, dim=1), rtol=0, atol=0)


def test_optimisation_step_feeds_raw_features_and_the_miner_mines_normalised(monkeypatch):
    torch.manual_seed(0)
    model = MODELS.create("convnet", embedding_dim=8)
    criterion = build_criterion("n-pairs", "semi-hard", seed=0)
    seen = {}
    loss_forward, mine = criterion.loss.forward, criterion.miner.mine
    monkeypatch.setattr(criterion.loss, "forward", lambda e, l, m=None: seen.setdefault("loss", e) is None or loss_forward(e, l, m))
    monkeypatch.setattr(criterion.miner, "mine", lambda e, l, k: seen.setdefault("miner", e) is None or mine(e, l, k))
    optimizer = loop.make_optimizer("adam", [{"params": list(model.parameters())}], 1e-3, 0.0)
    images, labels = torch.randn(8, 1, 28, 28), torch.arange(4).repeat(2)
    model.train()
    loop.optimisation_step(model, criterion, optimizer, torch.amp.GradScaler("cpu", enabled=False), images, labels, None)
    assert not torch.allclose(seen["loss"].norm(dim=1), torch.ones(8))
    torch.testing.assert_close(seen["miner"], F.normalize(seen["loss"].detach(), dim=1))
