"""Normalised softmax against a brute-force loop and against pytorch-metric-learning."""

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from dmlbench.criterion import build_criterion
from dmlbench.errors import ConfigError
from dmlbench.losses import LOSSES
from dmlbench.losses.normalized_softmax import NormalizedSoftmaxLoss

from ..support import assert_same_value_and_grads, batch_with_weights, value_and_grads


def brute_normalized_softmax(x, labels, weights, temperature):
    total = 0.0
    for i in range(len(x)):
        xi = x[i] / torch.linalg.vector_norm(x[i])
        exps = [torch.exp(torch.dot(xi, w / torch.linalg.vector_norm(w)) / temperature) for w in weights]
        total = total - torch.log(exps[int(labels[i])] / sum(exps))
    return total / len(x)


@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pml_with_the_same_weights(temperature, seed):
    x, labels, init = batch_with_weights(n=48, dim=32, classes=10, seed=seed)
    ours = NormalizedSoftmaxLoss(10, 32, temperature=temperature)
    theirs = pml_losses.NormalizedSoftmaxLoss(num_classes=10, embedding_size=32, temperature=temperature)
    assert theirs.W.shape == (32, 10)  # pml stores the weights as (dim, classes)
    ours.weight.data.copy_(init)
    theirs.W.data.copy_(init.T)
    assert_same_value_and_grads(lambda e: ours(F.normalize(e), labels),
                                lambda e: theirs(e, labels),
                                x, ours.weight, theirs.W, transposed=True)


@pytest.mark.parametrize("temperature", [0.05, 0.5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_loop(temperature, dtype):
    x, labels, init = batch_with_weights(n=14, dim=8, classes=5, seed=2, dtype=dtype)
    ours = NormalizedSoftmaxLoss(5, 8, temperature=temperature).to(dtype)
    ours.weight.data.copy_(init)
    reference = torch.nn.Parameter(init.clone())
    assert_same_value_and_grads(lambda e: ours(F.normalize(e), labels),
                                lambda e: brute_normalized_softmax(e, labels, reference, temperature),
                                x, ours.weight, reference)


def test_defaults_and_registration():
    loss = NormalizedSoftmaxLoss(num_classes=50, embedding_dim=64)
    assert loss.temperature == 0.05 and loss.reduction == "mean"
    assert loss.consumes == "batch" and loss.needs_positives is False and loss.param_lr_scale == 1.0
    assert loss.weight.shape == (50, 64)
    bound = 1 / math.sqrt(64)  # nn.Linear's rule, as in the authors' code
    assert loss.weight.abs().max() <= bound and loss.weight.abs().max() > 0.9 * bound
    assert LOSSES.get("normalized-softmax") is NormalizedSoftmaxLoss
    criterion = build_criterion("normalized-softmax", num_classes=7, embedding_dim=4)
    groups = criterion.param_groups(lr=0.01)
    assert groups[0]["lr"] == 0.01 and groups[0]["params"][0] is criterion.loss.weight


def test_bad_hyperparameters_fail_clearly():
    with pytest.raises(ConfigError, match="temperature must be positive, got 0"):
        NormalizedSoftmaxLoss(5, 8, temperature=0)
    with pytest.raises(ConfigError, match="temperature must be positive, got -0.05"):
        NormalizedSoftmaxLoss(5, 8, temperature=-0.05)
    with pytest.raises(ConfigError, match="embedding_dim=0"):
        NormalizedSoftmaxLoss(5, 0)
    with pytest.raises(ConfigError, match="valid reductions"):
        NormalizedSoftmaxLoss(5, 8, reduction="median")


def test_finite_gradients_with_duplicates_and_an_embedding_on_its_weight():
    x, labels, init = batch_with_weights(n=16, dim=8, classes=4, seed=3)
    x[1] = x[0]
    labels[1] = labels[0]
    x[2] = init[labels[2]]
    loss = NormalizedSoftmaxLoss(4, 8)
    loss.weight.data.copy_(init)
    value, gx, gw = value_and_grads(lambda e: loss(F.normalize(e), labels), x, loss.weight)
    assert torch.isfinite(value) and torch.isfinite(gx).all() and torch.isfinite(gw).all()
    assert gx.abs().sum() > 0 and gw.abs().sum() > 0
