"""Angular loss against a slow loop and against pytorch-metric-learning."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import reducers as pml_reducers

from dmlbench.errors import ConfigError
from dmlbench.losses import LOSSES
from dmlbench.losses.angular import AngularLoss
from dmlbench.miners import BatchHardMiner, SemiHardMiner
from dmlbench.geometry.tuples import Pairs, all_pairs

from .. import support as oracle
from ..support import as_tuple, batch, shuffled_subset, value_and_grad


# gradients to rtol 1e-5 and an atol of 1e-6 times the largest reference gradient: float32 rounding
# grows with the gradients' size (e.g. under reduction="sum")
assert_same_value_and_grad = partial(oracle.assert_same_value_and_grad, grad_rtol=1e-5, grad_atol=1e-6,
                                     relative_grad_atol=True)


def brute_angular(x, labels, pairs, alpha, rule="anchor", with_npair=False, weight=2.0):
    """Loops over positive pairs and their negatives, with f_apn written out term by term (the
    identity with the paper's angle bound is checked separately below)."""
    t = math.tan(math.radians(alpha)) ** 2
    mined = set(zip(pairs.neg_a.tolist(), pairs.neg_b.tolist()))
    values = []
    for a, p in zip(pairs.pos_a.tolist(), pairs.pos_b.tolist()):
        if rule == "anchor":
            negatives = sorted(n for (e, n) in mined if e == a)
        else:
            negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
        angular = 1 + sum(torch.exp(4 * t * torch.dot(x[a] + x[p], x[n]) - 2 * (1 + t) * torch.dot(x[a], x[p]))
                          for n in negatives)
        value = weight * torch.log(angular) if with_npair else torch.log(angular)
        if with_npair:
            value = value + torch.log(1 + sum(torch.exp(torch.dot(x[a], x[n]) - torch.dot(x[a], x[p]))
                                              for n in negatives))
        values.append(value)
    return sum(values) / len(values)


def test_registered():
    assert LOSSES.get("angular") is AngularLoss and AngularLoss.consumes == "pairs"
    loss = LOSSES.create("angular")
    assert loss.alpha == 40.0 and not loss.with_npair and loss.angular_weight == 2.0
    assert loss.mined_negatives == "anchor" and loss.reduction == "mean"


@pytest.mark.parametrize("alpha", [40.0, 30.0, 50.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pml_on_all_pairs(alpha, seed):
    """pml normalises anchors and positives but not the negatives: it gets normalised input too."""
    embeddings, labels = batch(n=48, dim=32, classes=6, seed=seed)
    ours = AngularLoss(alpha=alpha)
    theirs = pml_losses.AngularLoss(alpha=alpha)  # MeanReducer over positive pairs by default
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels),
                               lambda x: theirs(F.normalize(x), labels), embeddings)


def test_matches_pml_with_sum_reduction():
    embeddings, labels = batch(n=32, dim=16, classes=4, seed=2)
    ours = AngularLoss(reduction="sum")
    theirs = pml_losses.AngularLoss(alpha=40, reducer=pml_reducers.SumReducer())
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels),
                               lambda x: theirs(F.normalize(x), labels), embeddings)


@pytest.mark.parametrize("miner", [SemiHardMiner(margin=0.2), BatchHardMiner()])
def test_batch_rule_matches_pml_on_mined_pairs(miner):
    embeddings, labels = batch(n=48, dim=16, classes=6, seed=3)
    mined = miner(F.normalize(embeddings), labels, "pairs")
    ours = AngularLoss(mined_negatives="batch")
    theirs = pml_losses.AngularLoss(alpha=40)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels, mined),
                               lambda x: theirs(F.normalize(x), labels, as_tuple(mined)), embeddings)
    # the default rule only uses the mined negatives, which pml ignores
    x = F.normalize(embeddings)
    assert AngularLoss()(x, labels, mined) < theirs(x, labels, as_tuple(mined))


@pytest.mark.parametrize("alpha", [40.0, 25.0])
@pytest.mark.parametrize("with_npair", [False, True])
def test_matches_loop_on_all_pairs(alpha, with_npair):
    embeddings, labels = batch(n=14, dim=8, classes=3, seed=4, dtype=torch.float64)
    pairs = all_pairs(labels)
    ours = AngularLoss(alpha=alpha, with_npair=with_npair)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels),
                               lambda x: brute_angular(F.normalize(x), labels, pairs, alpha, with_npair=with_npair),
                               embeddings)


@pytest.mark.parametrize("rule", ["anchor", "batch"])
@pytest.mark.parametrize("with_npair", [False, True])
def test_matches_loop_on_mined_pairs(rule, with_npair):
    embeddings, labels = batch(n=16, dim=8, classes=4, seed=5, dtype=torch.float64)
    mined = shuffled_subset(all_pairs(labels), keep=0.3, seed=5)
    ours = AngularLoss(mined_negatives=rule, with_npair=with_npair, angular_weight=1.5)
    assert_same_value_and_grad(
        lambda x: ours(F.normalize(x), labels, mined),
        lambda x: brute_angular(F.normalize(x), labels, mined, 40.0, rule, with_npair, weight=1.5), embeddings)


def test_exponent_is_the_paper_angle_bound():
    """For unit vectors f_apn = |x_a - x_p|^2 - 4 tan^2(alpha) |x_n - x_c|^2 + 6 tan^2(alpha) - 2, with
    x_c = (x_a + x_p) / 2: the exponent is the paper's angle-bound violation up to a constant."""
    embeddings, labels = batch(n=10, dim=5, classes=2, seed=6, dtype=torch.float64)
    x = F.normalize(embeddings)
    t = math.tan(math.radians(40.0)) ** 2
    for a, p in ((0, 1), (3, 7)):
        c = (x[a] + x[p]) / 2
        for n in range(10):
            f = 4 * t * torch.dot(x[a] + x[p], x[n]) - 2 * (1 + t) * torch.dot(x[a], x[p])
            violation = (x[a] - x[p]).pow(2).sum() - 4 * t * (x[n] - c).pow(2).sum()
            assert math.isclose(f.item(), violation.item() + 6 * t - 2, rel_tol=1e-12, abs_tol=1e-12)


def test_no_negatives_for_a_pair_gives_zero_and_finite_gradients():
    embeddings, labels = batch(n=8, dim=4, seed=7, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    mined = Pairs(torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([2]), torch.tensor([6]))  # (0, 1): none
    terms = AngularLoss().terms(F.normalize(embeddings), labels, mined)["angular"]
    assert terms[0] == 0 and terms[1] > 0
    value, grad = value_and_grad(lambda x: AngularLoss()(F.normalize(x), labels, mined), embeddings)
    assert torch.isfinite(grad).all() and torch.count_nonzero(grad[1]) == 0


def test_finite_gradients_with_duplicated_embeddings():
    embeddings, labels = batch(n=16, seed=9)
    embeddings[1] = embeddings[0]
    labels[1] = labels[0]
    embeddings[3] = embeddings[2]
    labels[3] = (labels[2] + 1) % 5
    for kwargs in ({}, {"with_npair": True}, {"mined_negatives": "batch"}):
        value, grad = value_and_grad(lambda x: AngularLoss(**kwargs)(F.normalize(x), labels), embeddings)
        assert torch.isfinite(value) and value > 0 and torch.isfinite(grad).all()


def test_large_alpha_is_numerically_stable():
    """tan^2(89 deg) ~ 3300: the exponents reach thousands, far past float32's exp range."""
    embeddings, labels = batch(n=20, dim=8, classes=4, seed=10)
    value, grad = value_and_grad(lambda x: AngularLoss(alpha=89.0)(F.normalize(x), labels), embeddings)
    assert torch.isfinite(value) and torch.isfinite(grad).all() and value > 100
    ref, _ = value_and_grad(lambda x: AngularLoss(alpha=89.0)(F.normalize(x), labels), embeddings.double())
    torch.testing.assert_close(value.double(), ref, rtol=1e-4, atol=0)


@pytest.mark.parametrize("kwargs,match", [
    ({"alpha": 0.0}, "alpha is an angle in degrees strictly between 0 and 90, got 0.0"),
    ({"alpha": 90.0}, "strictly between 0 and 90, got 90.0"),
    ({"alpha": -10.0}, "strictly between 0 and 90, got -10.0"),
    ({"angular_weight": 0.0}, "angular_weight must be positive.*got 0.0"),
    ({"mined_negatives": "either"}, "mined_negatives 'either'.*valid values: anchor, batch"),
    ({"reduction": "median"}, "valid reductions: mean, mean_nonzero, sum"),
])
def test_bad_arguments_fail_clearly(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AngularLoss(**kwargs)
