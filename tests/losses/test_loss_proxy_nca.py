"""ProxyNCA against a brute-force loop of the paper's formula and against pytorch-metric-learning."""

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from dmlbench.criterion import build_criterion
from dmlbench.errors import ConfigError
from dmlbench.losses import LOSSES
from dmlbench.losses.proxy_nca import ProxyNCALoss

from ..support import assert_same_value_and_grads, batch_with_weights, value_and_grads


def brute_proxy_nca(x, labels, proxies, scale):
    """The paper's formula, one sample and one proxy at a time."""
    total = 0.0
    for i in range(len(x)):
        xi = x[i] / torch.linalg.vector_norm(x[i])
        numerator, denominator = None, 0.0
        for c in range(len(proxies)):
            pc = proxies[c] / torch.linalg.vector_norm(proxies[c])
            term = torch.exp(-scale * torch.sum((xi - pc) ** 2))
            if c == int(labels[i]):
                numerator = term
            else:
                denominator = denominator + term
        total = total - torch.log(numerator / denominator)
    return total / len(x)


@pytest.mark.parametrize("scale", [1.0, 3.0, 9.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_positive_in_denominator_matches_pml(scale, seed):
    x, labels, init = batch_with_weights(n=48, dim=32, classes=10, seed=seed)
    ours = ProxyNCALoss(10, 32, softmax_scale=scale, include_positive_in_denominator=True)
    theirs = pml_losses.ProxyNCALoss(num_classes=10, embedding_size=32, softmax_scale=scale)
    ours.proxies.data.copy_(init)
    theirs.proxies.data.copy_(init)
    assert_same_value_and_grads(lambda e: ours(F.normalize(e), labels),
                                lambda e: theirs(e, labels),
                                x, ours.proxies, theirs.proxies)


@pytest.mark.parametrize("scale", [1.0, 9.0, 32.0])
@pytest.mark.parametrize("seed", [2, 3])
def test_paper_default_matches_loop(scale, seed):
    x, labels, init = batch_with_weights(n=14, dim=8, classes=5, seed=seed, dtype=torch.float64)
    ours = ProxyNCALoss(5, 8, softmax_scale=scale).double()
    ours.proxies.data.copy_(init)
    reference = torch.nn.Parameter(init.clone())
    assert_same_value_and_grads(lambda e: ours(F.normalize(e), labels),
                                lambda e: brute_proxy_nca(e, labels, reference, scale),
                                x, ours.proxies, reference)


def test_paper_default_in_float32_matches_loop_and_differs_from_pml():
    x, labels, init = batch_with_weights(n=20, dim=16, classes=6, seed=4)
    ours = ProxyNCALoss(6, 16)
    ours.proxies.data.copy_(init)
    reference = torch.nn.Parameter(init.clone())
    value, _, _ = assert_same_value_and_grads(lambda e: ours(F.normalize(e), labels),
                                              lambda e: brute_proxy_nca(e, labels, reference, 1.0),
                                              x, ours.proxies, reference)
    theirs = pml_losses.ProxyNCALoss(num_classes=6, embedding_size=16)
    theirs.proxies.data.copy_(init)
    # pml keeps the positive proxy in the denominator: a different (larger) loss
    assert theirs(x, labels).item() > value.item() + 0.1


def test_defaults_and_registration():
    loss = ProxyNCALoss(num_classes=10, embedding_dim=8)
    assert loss.softmax_scale == 1.0 and loss.include_positive_in_denominator is False
    assert loss.reduction == "mean" and loss.consumes == "batch" and loss.needs_positives is False
    assert loss.proxies.shape == (10, 8) and loss.param_lr_scale == 1.0
    assert LOSSES.get("proxy-nca") is ProxyNCALoss
    criterion = build_criterion("proxy-nca", num_classes=7, embedding_dim=4)
    assert criterion.loss.proxies.shape == (7, 4)
    groups = criterion.param_groups(lr=0.01)
    assert len(groups) == 1 and groups[0]["lr"] == 0.01 and groups[0]["params"][0] is criterion.loss.proxies
    x, labels, _ = batch_with_weights(n=10, dim=4, classes=7, seed=5)
    assert torch.isfinite(criterion(F.normalize(x), labels))


def test_bad_hyperparameters_fail_clearly():
    with pytest.raises(ConfigError, match="softmax_scale must be positive, got 0"):
        ProxyNCALoss(5, 8, softmax_scale=0)
    with pytest.raises(ConfigError, match="softmax_scale must be positive, got -1"):
        ProxyNCALoss(5, 8, softmax_scale=-1)
    with pytest.raises(ConfigError, match="num_classes >= 2"):
        ProxyNCALoss(1, 8)
    with pytest.raises(ConfigError, match="embedding_dim=0"):
        ProxyNCALoss(5, 0)
    with pytest.raises(ConfigError, match="valid reductions"):
        ProxyNCALoss(5, 8, reduction="median")
    ProxyNCALoss(1, 8, include_positive_in_denominator=True)  # one class is fine when the positive counts


@pytest.mark.parametrize("include_positive", [False, True])
def test_finite_gradients_with_duplicates_and_an_embedding_on_its_proxy(include_positive):
    x, labels, init = batch_with_weights(n=16, dim=8, classes=4, seed=6)
    x[1] = x[0]
    labels[1] = labels[0]
    x[2] = init[labels[2]] * 3.0  # the embedding coincides with its proxy's direction: distance 0
    loss = ProxyNCALoss(4, 8, softmax_scale=32.0, include_positive_in_denominator=include_positive)
    loss.proxies.data.copy_(init)
    value, gx, gp = value_and_grads(lambda e: loss(F.normalize(e), labels), x, loss.proxies)
    assert torch.isfinite(value) and torch.isfinite(gx).all() and torch.isfinite(gp).all()
    assert gx.abs().sum() > 0 and gp.abs().sum() > 0


def test_loss_decreases_when_moving_an_embedding_to_its_proxy():
    x, labels, init = batch_with_weights(n=1, dim=8, classes=4, seed=7)
    loss = ProxyNCALoss(4, 8)
    loss.proxies.data.copy_(init)
    far = loss(F.normalize(x), labels).item()
    near = loss(F.normalize(init[labels]), labels).item()
    assert near < far and math.isfinite(near)
