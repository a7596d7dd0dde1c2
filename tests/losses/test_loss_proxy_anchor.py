"""Proxy-Anchor against a brute-force loop of the paper's formula and against pytorch-metric-learning."""

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from dmlbench.criterion import build_criterion
from dmlbench.errors import ConfigError
from dmlbench.losses import LOSSES
from dmlbench.losses.proxy_anchor import ProxyAnchorLoss

from ..support import assert_same_value_and_grads, batch_with_weights, value_and_grads


def brute_proxy_anchor(x, labels, proxies, margin, alpha):
    """The paper's Eq.: loop over proxies, then over the batch."""
    x = [v / torch.linalg.vector_norm(v) for v in x]
    pos_total, neg_total, with_positives = 0.0, 0.0, 0
    for c in range(len(proxies)):
        p = proxies[c] / torch.linalg.vector_norm(proxies[c])
        pos_sum, neg_sum, has_positive = 0.0, 0.0, False
        for i in range(len(x)):
            s = torch.dot(x[i], p)
            if int(labels[i]) == c:
                pos_sum = pos_sum + torch.exp(-alpha * (s - margin))
                has_positive = True
            else:
                neg_sum = neg_sum + torch.exp(alpha * (s + margin))
        if has_positive:
            pos_total = pos_total + torch.log(1 + pos_sum)
            with_positives += 1
        neg_total = neg_total + torch.log(1 + torch.as_tensor(neg_sum))
    return pos_total / with_positives + neg_total / len(proxies)


CASES = [  # (n, classes, classes present in the batch, seed)
    (48, 8, None, 0),
    (40, 20, 6, 1),  # most proxies have no positive in the batch
    (32, 4, 1, 2),   # one class only: the other proxies have no positive, its own no negative
]


@pytest.mark.parametrize("n,classes,present,seed", CASES)
@pytest.mark.parametrize("margin,alpha", [(0.1, 32.0), (0.2, 16.0), (0.0, 4.0)])
def test_matches_pml_with_the_same_proxies(n, classes, present, seed, margin, alpha):
    x, labels, init = batch_with_weights(n=n, dim=32, classes=classes, present=present, seed=seed)
    ours = ProxyAnchorLoss(classes, 32, margin=margin, alpha=alpha)
    theirs = pml_losses.ProxyAnchorLoss(num_classes=classes, embedding_size=32, margin=margin, alpha=alpha)
    ours.proxies.data.copy_(init)
    theirs.proxies.data.copy_(init)
    assert_same_value_and_grads(lambda e: ours(F.normalize(e), labels),
                                lambda e: theirs(e, labels),
                                x, ours.proxies, theirs.proxies)


@pytest.mark.parametrize("n,classes,present,seed", [(14, 5, None, 3), (12, 9, 4, 4), (8, 3, 1, 5)])
@pytest.mark.parametrize("margin,alpha", [(0.1, 32.0), (0.3, 8.0)])
def test_matches_loop(n, classes, present, seed, margin, alpha):
    x, labels, init = batch_with_weights(n=n, dim=8, classes=classes, present=present, seed=seed, dtype=torch.float64)
    ours = ProxyAnchorLoss(classes, 8, margin=margin, alpha=alpha).double()
    ours.proxies.data.copy_(init)
    reference = torch.nn.Parameter(init.clone())
    assert_same_value_and_grads(lambda e: ours(F.normalize(e), labels),
                                lambda e: brute_proxy_anchor(e, labels, reference, margin, alpha),
                                x, ours.proxies, reference)


def test_float32_matches_loop():
    x, labels, init = batch_with_weights(n=16, dim=16, classes=6, seed=6)
    ours = ProxyAnchorLoss(6, 16)
    ours.proxies.data.copy_(init)
    reference = torch.nn.Parameter(init.clone())
    assert_same_value_and_grads(lambda e: ours(F.normalize(e), labels),
                                lambda e: brute_proxy_anchor(e, labels, reference, 0.1, 32.0),
                                x, ours.proxies, reference)


def test_defaults_initialisation_and_proxy_learning_rate():
    loss = ProxyAnchorLoss(num_classes=2000, embedding_dim=256)
    assert loss.margin == 0.1 and loss.alpha == 32.0 and loss.reduction == "mean"
    assert loss.consumes == "batch" and loss.needs_positives is False and loss.param_lr_scale == 100.0
    # Kaiming normal, fan-out of a (num_classes, dim) matrix: std sqrt(2 / num_classes)
    std = loss.proxies.detach().std().item()
    assert abs(std - math.sqrt(2 / 2000)) < 0.02 * math.sqrt(2 / 2000)
    assert abs(loss.proxies.detach().mean().item()) < 0.01 * std
    assert LOSSES.get("proxy-anchor") is ProxyAnchorLoss
    criterion = build_criterion("proxy-anchor", num_classes=7, embedding_dim=4)
    groups = criterion.param_groups(lr=1e-4)
    assert len(groups) == 1 and groups[0]["lr"] == pytest.approx(1e-2)
    assert groups[0]["params"][0] is criterion.loss.proxies
    assert criterion.param_groups(lr=1e-4, loss_lr=5e-3)[0]["lr"] == 5e-3


def test_bad_hyperparameters_fail_clearly():
    with pytest.raises(ConfigError, match="alpha .* must be positive, got 0"):
        ProxyAnchorLoss(5, 8, alpha=0)
    with pytest.raises(ConfigError, match=r"margin \(delta\) must be >= 0, got -0.1"):
        ProxyAnchorLoss(5, 8, margin=-0.1)
    with pytest.raises(ConfigError, match="num_classes=0"):
        ProxyAnchorLoss(0, 8)
    with pytest.raises(ConfigError, match="valid reductions"):
        ProxyAnchorLoss(5, 8, reduction="median")


def test_finite_gradients_with_duplicates_and_an_embedding_on_its_proxy():
    x, labels, init = batch_with_weights(n=16, dim=8, classes=4, seed=7)
    x[1] = x[0]
    labels[1] = labels[0]
    x[2] = init[labels[2]]
    loss = ProxyAnchorLoss(4, 8)
    loss.proxies.data.copy_(init)
    value, gx, gp = value_and_grads(lambda e: loss(F.normalize(e), labels), x, loss.proxies)
    assert torch.isfinite(value) and torch.isfinite(gx).all() and torch.isfinite(gp).all()
    assert gx.abs().sum() > 0 and gp.abs().sum() > 0


def test_proxies_without_positives_get_only_the_push_term():
    x, labels, init = batch_with_weights(n=10, dim=8, classes=5, present=2, seed=8)
    loss = ProxyAnchorLoss(5, 8)
    loss.proxies.data.copy_(init)
    terms = loss.terms(F.normalize(x), labels, None)
    assert terms["positive"].shape == (2,) and terms["negative"].shape == (5,)
