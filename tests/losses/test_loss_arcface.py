"""ArcFace against a brute-force loop (angles through acos) and against pytorch-metric-learning."""

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from dmlbench.criterion import build_criterion
from dmlbench.errors import ConfigError
from dmlbench.losses import LOSSES
from dmlbench.losses.arcface import ArcFaceLoss

from ..support import assert_same_value_and_grads, batch_with_weights, value_and_grads


def target_angles(x, labels, weights):
    cos = F.normalize(x, dim=1) @ F.normalize(weights, dim=1).T
    return torch.acos(cos[torch.arange(len(x)), labels].clamp(-1, 1))


def brute_arcface(x, labels, weights, margin, scale):
    total = 0.0
    for i in range(len(x)):
        xi = x[i] / torch.linalg.vector_norm(x[i])
        logits = []
        for c in range(len(weights)):
            cos = torch.dot(xi, weights[c] / torch.linalg.vector_norm(weights[c]))
            if c == int(labels[i]):
                theta = torch.acos(cos)
                cos = torch.cos(theta + margin) if theta <= math.pi - margin else cos - margin * math.sin(margin)
            logits.append(torch.exp(scale * cos))
        total = total - torch.log(logits[int(labels[i])] / sum(logits))
    return total / len(x)


@pytest.mark.parametrize("degrees", [28.6, math.degrees(0.5), 10.0])
@pytest.mark.parametrize("scale", [64.0, 16.0])
def test_matches_pml_with_the_same_weights(degrees, scale):
    x, labels, init = batch_with_weights(n=48, dim=32, classes=10, seed=0, opposite=6)
    assert (target_angles(x, labels, init) > math.pi - math.radians(degrees)).sum() >= 3  # both branches run
    ours = ArcFaceLoss(10, 32, margin=math.radians(degrees), scale=scale)
    theirs = pml_losses.ArcFaceLoss(num_classes=10, embedding_size=32, margin=degrees, scale=scale)
    assert theirs.W.shape == (32, 10)  # pml stores the weights as (dim, classes)
    ours.weight.data.copy_(init)
    theirs.W.data.copy_(init.T)
    assert_same_value_and_grads(lambda e: ours(F.normalize(e), labels),
                                lambda e: theirs(e, labels),
                                x, ours.weight, theirs.W, transposed=True)


def test_default_margin_equals_pml_with_the_margin_in_degrees():
    x, labels, init = batch_with_weights(n=32, dim=16, classes=8, seed=1, opposite=4)
    ours = ArcFaceLoss(8, 16)
    theirs = pml_losses.ArcFaceLoss(num_classes=8, embedding_size=16, margin=math.degrees(0.5), scale=64)
    ours.weight.data.copy_(init)
    theirs.W.data.copy_(init.T)
    torch.testing.assert_close(ours(F.normalize(x), labels), theirs(x, labels), rtol=1e-5, atol=1e-6)
    # pml's default 28.6 degrees is 0.4992 rad, not the paper's 0.5: a (slightly) different loss
    pml_default = pml_losses.ArcFaceLoss(num_classes=8, embedding_size=16)
    pml_default.W.data.copy_(init.T)
    assert abs(pml_default(x, labels).item() - ours(F.normalize(x), labels).item()) > 1e-3


@pytest.mark.parametrize("margin,scale,dtype", [(0.5, 64.0, torch.float64), (0.3, 8.0, torch.float64),
                                                (1.2, 30.0, torch.float64), (0.5, 8.0, torch.float32)])
def test_matches_loop(margin, scale, dtype):
    # float64 where exp(s cos) of the loop's literal formula would under/overflow in float32
    x, labels, init = batch_with_weights(n=14, dim=8, classes=5, seed=2, opposite=4, dtype=dtype)
    assert (target_angles(x, labels, init) > math.pi - margin).any()  # the theta + m > pi branch runs
    assert (target_angles(x, labels, init) < math.pi - margin).any()
    ours = ArcFaceLoss(5, 8, margin=margin, scale=scale).to(dtype)
    ours.weight.data.copy_(init)
    reference = torch.nn.Parameter(init.clone())
    assert_same_value_and_grads(lambda e: ours(F.normalize(e), labels),
                                lambda e: brute_arcface(e, labels, reference, margin, scale),
                                x, ours.weight, reference)


@pytest.mark.parametrize("margin", [0.5, 1.0])
def test_target_logit_decreases_with_the_angle(margin):
    """cos(theta + m) up to pi - m, then cos(theta) - m sin(m): the target logit keeps decreasing over
    [0, pi] (with a downward step at the switch), so the loss keeps increasing. The other class's
    weight is orthogonal to every embedding (logit 0), so the loss is softplus(-s * target); s = 1
    keeps it invertible in float64."""
    loss = ArcFaceLoss(2, 3, margin=margin, scale=1.0).double()
    loss.weight.data.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    x = torch.stack([torch.cos(theta), torch.sin(theta), torch.zeros_like(theta)], dim=1)
    per_sample = loss.terms(x, torch.zeros(len(x), dtype=torch.long), None)["arcface"]  # (2001,)
    target = -torch.log(torch.expm1(per_sample))  # invert softplus(-t)
    expected = torch.where(theta <= math.pi - margin, torch.cos(theta + margin), torch.cos(theta) - margin * math.sin(margin))
    torch.testing.assert_close(target, expected, rtol=1e-9, atol=1e-9)
    assert (target[1:] < target[:-1]).all()


def test_defaults_and_registration():
    loss = ArcFaceLoss(num_classes=100, embedding_dim=128)
    assert loss.margin == 0.5 and loss.scale == 64.0 and loss.reduction == "mean"
    assert loss.consumes == "batch" and loss.needs_positives is False and loss.param_lr_scale == 1.0
    assert loss.weight.shape == (100, 128)
    assert abs(loss.weight.detach().std().item() - 0.01) < 0.001  # N(0, 0.01^2), the authors' initialiser
    assert LOSSES.get("arcface") is ArcFaceLoss
    criterion = build_criterion("arcface", num_classes=7, embedding_dim=4)
    groups = criterion.param_groups(lr=0.01)
    assert groups[0]["lr"] == 0.01 and groups[0]["params"][0] is criterion.loss.weight


def test_bad_hyperparameters_fail_clearly():
    with pytest.raises(ConfigError, match=r"margin is an angle in radians and must be in \[0, pi/2\), got 28.6"):
        ArcFaceLoss(5, 8, margin=28.6)  # degrees by mistake
    with pytest.raises(ConfigError, match="got -0.1"):
        ArcFaceLoss(5, 8, margin=-0.1)
    with pytest.raises(ConfigError, match="scale must be positive, got 0"):
        ArcFaceLoss(5, 8, scale=0)
    with pytest.raises(ConfigError, match="num_classes=0"):
        ArcFaceLoss(0, 8)
    with pytest.raises(ConfigError, match="valid reductions"):
        ArcFaceLoss(5, 8, reduction="median")


def test_finite_gradients_with_duplicates_and_embeddings_on_and_opposite_their_weight():
    x, labels, init = batch_with_weights(n=16, dim=8, classes=4, seed=3)
    x[1] = x[0]
    labels[1] = labels[0]
    x[2] = init[labels[2]]  # theta = 0: sin(theta) = 0, the square root's gradient must not blow up
    x[3] = -init[labels[3]]  # theta = pi
    loss = ArcFaceLoss(4, 8)
    loss.weight.data.copy_(init)
    value, gx, gw = value_and_grads(lambda e: loss(F.normalize(e), labels), x, loss.weight)
    assert torch.isfinite(value) and torch.isfinite(gx).all() and torch.isfinite(gw).all()
    assert gx.abs().sum() > 0 and gw.abs().sum() > 0
