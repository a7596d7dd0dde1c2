"""Losses against slow, obviously-correct loops and against pytorch-metric-learning."""

import itertools
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import reducers as pml_reducers

from dmlbench.criterion import build_criterion, class_kwargs
from dmlbench.errors import ConfigError
from dmlbench.losses import LOSSES, ContrastiveLoss, TripletMarginLoss
from dmlbench.miners import BatchHardMiner, SemiHardMiner
from dmlbench.geometry.tuples import Triplets

from .. import support as oracle
from ..support import as_tuple, batch, value_and_grad


# gradients to rtol 1e-4, atol 1e-6
assert_same_value_and_grad = partial(oracle.assert_same_value_and_grad, grad_rtol=1e-5, grad_atol=1e-6)


def mean_nonzero(values):
    values = [v for v in values if v > 0]
    return sum(values) / len(values) if values else torch.tensor(0.0)


def brute_contrastive(x, labels, pos_margin, neg_margin, power=1.0, reduction="mean_nonzero"):
    pos, neg = [], []
    for i, j in itertools.permutations(range(len(x)), 2):
        d = torch.linalg.vector_norm(x[i] - x[j])
        if labels[i] == labels[j]:
            pos.append(torch.relu(d - pos_margin) ** power)
        else:
            neg.append(torch.relu(neg_margin - d) ** power)
    if reduction == "mean":
        return sum(pos) / len(pos) + sum(neg) / len(neg)
    return mean_nonzero(pos) + mean_nonzero(neg)


def brute_triplet(x, triplets, margin, softplus=False):
    values = []
    for a, p, n in triplets:
        v = torch.linalg.vector_norm(x[a] - x[p]) - torch.linalg.vector_norm(x[a] - x[n]) + margin
        values.append(F.softplus(v) if softplus else torch.relu(v))
    return mean_nonzero(values)


def all_triplets_loop(labels):
    n = len(labels)
    return [(a, p, q) for a in range(n) for p in range(n) for q in range(n)
            if a != p and labels[a] == labels[p] and labels[a] != labels[q]]


@pytest.mark.parametrize("pos_margin,neg_margin,power", [(0.0, 1.0, 1.0), (0.2, 0.8, 1.0), (0.0, 1.0, 2.0)])
def test_contrastive_matches_loop(pos_margin, neg_margin, power):
    embeddings, labels = batch(n=14, seed=1)
    ours = ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin, power=power)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels),
                               lambda x: brute_contrastive(F.normalize(x), labels, pos_margin, neg_margin, power), embeddings)


@pytest.mark.parametrize("pos_margin,neg_margin", [(0.0, 1.0), (0.25, 0.9)])
@pytest.mark.parametrize("reduction", ["mean_nonzero", "mean"])
def test_contrastive_matches_pml(pos_margin, neg_margin, reduction):
    embeddings, labels = batch(n=48, dim=32, classes=6, seed=2)
    ours = ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin, reduction=reduction)
    reducer = pml_reducers.AvgNonZeroReducer() if reduction == "mean_nonzero" else pml_reducers.MeanReducer()
    theirs = pml_losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin, reducer=reducer)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels),
                               lambda x: theirs(x, labels), embeddings)


def test_contrastive_on_mined_triplets_matches_pml():
    embeddings, labels = batch(n=40, dim=16, classes=5, seed=3)
    mined = BatchHardMiner()(F.normalize(embeddings), labels, "triplets")
    ours = ContrastiveLoss(pos_margin=0.1, neg_margin=0.9)
    theirs = pml_losses.ContrastiveLoss(pos_margin=0.1, neg_margin=0.9)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels, mined),
                               lambda x: theirs(x, labels, as_tuple(mined)), embeddings)


@pytest.mark.parametrize("variant", ["hinge", "softplus"])
def test_triplet_all_triplets_matches_loop(variant):
    embeddings, labels = batch(n=12, seed=4, classes=3)
    ours = TripletMarginLoss(margin=0.3, variant=variant)
    triplets = all_triplets_loop(labels.tolist())
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels),
                               lambda x: brute_triplet(F.normalize(x), triplets, 0.3, variant == "softplus"), embeddings)


@pytest.mark.parametrize("margin", [0.05, 0.2, 1.0])
@pytest.mark.parametrize("smooth", [False, True])
def test_triplet_matches_pml(margin, smooth):
    embeddings, labels = batch(n=40, dim=32, classes=6, seed=5)
    ours = TripletMarginLoss(margin=margin, variant="softplus" if smooth else "hinge")
    theirs = pml_losses.TripletMarginLoss(margin=margin, smooth_loss=smooth)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels),
                               lambda x: theirs(x, labels), embeddings)


def test_triplet_with_semihard_miner_matches_pml():
    from pytorch_metric_learning import miners as pml_miners

    embeddings, labels = batch(n=64, dim=32, classes=8, seed=6)
    criterion = build_criterion("triplet", "semi-hard", {"margin": 0.2}, {"margin": 0.2, "fallback": "none"})
    pml_loss = pml_losses.TripletMarginLoss(margin=0.2)
    pml_miner = pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
    assert_same_value_and_grad(lambda x: criterion(F.normalize(x), labels),
                               lambda x: pml_loss(x, labels, pml_miner(x, labels)), embeddings)
    assert criterion.last_mined > 0


def test_triplet_with_batch_hard_miner_matches_pml():
    from pytorch_metric_learning import miners as pml_miners

    embeddings, labels = batch(n=64, dim=32, classes=8, seed=7)
    criterion = build_criterion("triplet", "batch-hard", {"margin": 0.2})
    pml_loss = pml_losses.TripletMarginLoss(margin=0.2)
    assert_same_value_and_grad(lambda x: criterion(F.normalize(x), labels),
                               lambda x: pml_loss(x, labels, pml_miners.BatchHardMiner()(x, labels)), embeddings)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_backpropagates_finite_gradients_with_duplicates(name):
    embeddings, labels = batch(n=16, seed=8)
    embeddings[1] = embeddings[0]  # zero distance: sqrt must not give NaN gradients
    labels[1] = labels[0]
    loss = LOSSES.create(name, **class_kwargs(LOSSES.get(name), 5, 16))  # batch(): 5 classes, dim 16
    value, grad = value_and_grad(lambda x: loss(F.normalize(x), labels), embeddings)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_no_mined_tuples_gives_zero_loss_with_graph():
    embeddings, labels = batch(n=8, seed=9)
    empty = torch.empty(0, dtype=torch.long)
    value, grad = value_and_grad(lambda x: TripletMarginLoss()(F.normalize(x), labels, Triplets(empty, empty, empty)), embeddings)
    assert value.item() == 0.0 and torch.count_nonzero(grad) == 0


def test_bad_arguments_fail_clearly():
    with pytest.raises(ConfigError, match="valid variants: hinge, softplus"):
        TripletMarginLoss(variant="square")
    with pytest.raises(ConfigError, match="valid reductions: mean, mean_nonzero, sum"):
        ContrastiveLoss(reduction="median")
    with pytest.raises(ValueError, match="labels must be"):
        TripletMarginLoss()(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
