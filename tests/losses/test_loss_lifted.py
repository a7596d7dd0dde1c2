"""Lifted structured loss against a slow loop and against pytorch-metric-learning."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import reducers as pml_reducers

from dmlbench.errors import ConfigError
from dmlbench.losses import LOSSES
from dmlbench.losses.lifted import LiftedStructureLoss
from dmlbench.miners import BatchHardMiner, RandomMiner, SemiHardMiner
from dmlbench.geometry.tuples import Pairs, all_pairs

from .. import support as oracle
from ..support import as_tuple, batch, shuffled_subset, value_and_grad


# gradients to rtol 1e-5 and an atol of 1e-6 times the largest reference gradient: float32 rounding
# grows with the gradients' size (e.g. under reduction="sum")
assert_same_value_and_grad = partial(oracle.assert_same_value_and_grad, grad_rtol=1e-5, grad_atol=1e-6,
                                     relative_grad_atol=True)


def brute_lifted(x, pairs, margin, rule):
    """The paper's J_ij with a Python loop over positive pairs and negative pairs."""
    neg = list(zip(pairs.neg_a.tolist(), pairs.neg_b.tolist()))
    values = []
    for i, j in zip(pairs.pos_a.tolist(), pairs.pos_b.tolist()):
        exps = []
        for end in (i, j):
            if rule == "first":  # every mined (end, k), repeats included
                others = [k for e, k in neg if e == end]
            else:  # distinct k with (end, k) or (k, end) mined
                others = sorted({k for e, k in neg if e == end} | {e for e, k in neg if k == end})
            exps += [torch.exp(margin - torch.linalg.vector_norm(x[end] - x[k])) for k in others]
        if not exps:
            values.append(x.sum() * 0.0)
            continue
        j_ij = torch.log(sum(exps)) + torch.linalg.vector_norm(x[i] - x[j])
        values.append(torch.relu(j_ij) ** 2 / 2)
    return sum(values) / len(values)


def test_registered():
    assert LOSSES.get("lifted-structure") is LiftedStructureLoss
    assert LiftedStructureLoss.consumes == "pairs"
    loss = LOSSES.create("lifted-structure")
    assert loss.margin == 1.0 and loss.reduction == "mean" and loss.mined_negatives == "either"


@pytest.mark.parametrize("margin", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pml_on_all_pairs(margin, seed):
    embeddings, labels = batch(n=48, dim=32, classes=6, seed=seed)
    ours = LiftedStructureLoss(margin=margin)
    theirs = pml_losses.LiftedStructureLoss(neg_margin=margin, pos_margin=0)  # MeanReducer by default
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels), lambda x: theirs(x, labels), embeddings)


def two_clusters(spread=0.8, seed=0):
    """Two classes around opposite directions of the plane, six images each, and pairs in which each
    positive pair (i, i+1) sees one far negative at end i only: J_ij = m - D_ik + D_ij, negative for
    tight pairs and positive for loose ones."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(2).repeat_interleave(6)
    angles = labels * math.pi + spread * torch.randn(12, generator=g)
    radii = 0.5 + torch.rand(12, generator=g)  # raw x is not normalised
    embeddings = torch.stack([radii * angles.cos(), radii * angles.sin()], dim=1)
    anchors = torch.tensor([0, 2, 4, 6, 8, 10])
    pairs = Pairs(anchors, anchors + 1, anchors, (anchors + 6) % 12)
    return embeddings, labels, pairs


@pytest.mark.parametrize("reduction,reducer", [("mean_nonzero", pml_reducers.AvgNonZeroReducer),
                                               ("mean", pml_reducers.MeanReducer),
                                               ("sum", pml_reducers.SumReducer)])
def test_reductions_match_pml_when_some_pairs_are_inactive(reduction, reducer):
    embeddings, labels, mined = two_clusters()
    terms = LiftedStructureLoss(margin=0.3, mined_negatives="first").terms(F.normalize(embeddings), labels, mined)
    assert (terms["lifted"] == 0).any() and (terms["lifted"] > 0).any()
    ours = LiftedStructureLoss(margin=0.3, mined_negatives="first", reduction=reduction)
    theirs = pml_losses.LiftedStructureLoss(neg_margin=0.3, pos_margin=0, reducer=reducer())
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels, mined),
                               lambda x: theirs(x, labels, as_tuple(mined)), embeddings)


@pytest.mark.parametrize("miner", [SemiHardMiner(margin=0.3), BatchHardMiner(), RandomMiner()])
def test_first_rule_matches_pml_on_mined_pairs(miner):
    embeddings, labels = batch(n=48, dim=16, classes=6, seed=3)
    mined = miner(F.normalize(embeddings), labels, "pairs")
    assert len(mined.pos_a) > 0
    ours = LiftedStructureLoss(mined_negatives="first")
    theirs = pml_losses.LiftedStructureLoss(neg_margin=1, pos_margin=0)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels, mined),
                               lambda x: theirs(x, labels, as_tuple(mined)), embeddings)


def test_either_rule_differs_from_pml_on_one_sided_mined_pairs():
    """Batch-hard pairs (a, n) are one-sided: the "either" rule also lets n see a as a negative."""
    embeddings, labels = batch(n=48, dim=16, classes=6, seed=3)
    mined = BatchHardMiner()(F.normalize(embeddings), labels, "pairs")
    theirs = pml_losses.LiftedStructureLoss(neg_margin=1, pos_margin=0)(embeddings, labels, as_tuple(mined))
    ours = LiftedStructureLoss()(F.normalize(embeddings), labels, mined)
    assert ours > theirs  # more negatives in each log-sum-exp


@pytest.mark.parametrize("margin", [1.0, 0.4])
@pytest.mark.parametrize("rule", ["either", "first"])
def test_matches_loop_on_all_pairs(margin, rule):
    embeddings, labels = batch(n=14, dim=8, classes=3, seed=4, dtype=torch.float64)
    pairs = all_pairs(labels)
    ours = LiftedStructureLoss(margin=margin, mined_negatives=rule)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels),
                               lambda x: brute_lifted(F.normalize(x), pairs, margin, rule), embeddings)


@pytest.mark.parametrize("rule", ["either", "first"])
@pytest.mark.parametrize("seed", [5, 6])
def test_matches_loop_on_mined_pairs(rule, seed):
    embeddings, labels = batch(n=16, dim=8, classes=4, seed=seed, dtype=torch.float64)
    mined = shuffled_subset(all_pairs(labels), keep=0.3, seed=seed)
    ours = LiftedStructureLoss(mined_negatives=rule)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels, mined),
                               lambda x: brute_lifted(F.normalize(x), mined, 1.0, rule), embeddings)


def test_rules_differ_when_negatives_are_repeated_or_one_sided():
    embeddings, labels = batch(n=16, dim=8, classes=4, seed=5, dtype=torch.float64)
    mined = shuffled_subset(all_pairs(labels), keep=0.3, seed=5)
    x = F.normalize(embeddings)
    assert not torch.isclose(LiftedStructureLoss(mined_negatives="first")(x, labels, mined),
                             LiftedStructureLoss(mined_negatives="either")(x, labels, mined))


def test_positive_pair_without_negatives_gives_zero_and_finite_gradients():
    embeddings, labels = batch(n=8, dim=4, seed=7, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    # (0, 1) has no negatives at either end; (2, 3) has one at end 2 only; (4, 5) has one at both.
    mined = Pairs(torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5]), torch.tensor([2, 4, 5]), torch.tensor([6, 6, 7]))
    value, grad = value_and_grad(lambda x: LiftedStructureLoss(mined_negatives="either")(F.normalize(x), labels, mined),
                                 embeddings)
    ref_value, ref_grad = value_and_grad(lambda x: brute_lifted(F.normalize(x), mined, 1.0, "either"), embeddings)
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(grad, ref_grad)
    assert torch.isfinite(grad).all()
    assert torch.count_nonzero(grad[1]) == 0  # image 1 enters only through the pair with no negatives


def test_large_margin_is_numerically_stable():
    """exp(100) overflows float32; the log-sum-exp does not."""
    embeddings, labels = batch(n=20, dim=8, classes=4, seed=8)
    value, grad = value_and_grad(lambda x: LiftedStructureLoss(margin=100.0)(F.normalize(x), labels), embeddings)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    ref, _ = value_and_grad(lambda x: brute_lifted(F.normalize(x), all_pairs(labels), 100.0, "either"),
                            embeddings.double())
    torch.testing.assert_close(value.double(), ref, rtol=1e-5, atol=0)


def test_finite_gradients_with_duplicated_embeddings():
    embeddings, labels = batch(n=16, seed=9)
    embeddings[1] = embeddings[0]  # zero distance within a positive pair
    labels[1] = labels[0]
    embeddings[3] = embeddings[2]  # zero distance within a negative pair
    labels[3] = (labels[2] + 1) % 5
    for rule in ("either", "first"):
        value, grad = value_and_grad(lambda x: LiftedStructureLoss(mined_negatives=rule)(F.normalize(x), labels),
                                     embeddings)
        assert torch.isfinite(value) and value > 0 and torch.isfinite(grad).all()


def test_single_class_batch_gives_zero_with_graph():
    embeddings = torch.randn(6, 4)
    value, grad = value_and_grad(lambda x: LiftedStructureLoss()(F.normalize(x), torch.zeros(6, dtype=torch.long)),
                                 embeddings)
    assert value.item() == 0.0 and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("kwargs,match", [
    ({"margin": 0.0}, "margin must be positive.*got 0.0"),
    ({"margin": -1.0}, "margin must be positive.*got -1.0"),
    ({"mined_negatives": "second"}, "mined_negatives 'second'.*valid values: either, first"),
    ({"reduction": "median"}, "valid reductions: mean, mean_nonzero, sum"),
])
def test_bad_arguments_fail_clearly(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LiftedStructureLoss(**kwargs)


def test_paper_normalisation_one_over_two_p():
    """Default mean over ordered pairs = the paper's 1/(2|P|) sum over unordered pairs."""
    embeddings, labels = batch(n=12, dim=6, classes=3, seed=10, dtype=torch.float64)
    x = F.normalize(embeddings)
    pairs = all_pairs(labels)
    unordered = [(i, j) for i, j in zip(pairs.pos_a.tolist(), pairs.pos_b.tolist()) if i < j]
    dist = torch.cdist(x, x)
    negative = labels[:, None] != labels[None, :]
    total = 0.0
    for i, j in unordered:
        s = torch.exp(1.0 - dist[i][negative[i]]).sum() + torch.exp(1.0 - dist[j][negative[j]]).sum()
        total += torch.relu(torch.log(s) + dist[i, j]).item() ** 2
    expected = total / (2 * len(unordered))
    assert math.isclose(LiftedStructureLoss()(x, labels).item(), expected, rel_tol=1e-9)


def test_documented_difference_from_pml_for_a_pair_without_negatives():
    """The paper's log of an empty sum is -inf (loss 0); pml replaces it by 0 (loss D_ij^2 / 2)."""
    embeddings, labels, _ = two_clusters()
    mined = Pairs(torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([2]), torch.tensor([8]))  # end 0, 1: none
    x = F.normalize(embeddings)
    ours = LiftedStructureLoss(mined_negatives="first").terms(x, labels, mined)["lifted"]
    assert ours[0] == 0
    theirs = pml_losses.LiftedStructureLoss(neg_margin=1, pos_margin=0, reducer=pml_reducers.SumReducer())
    d01 = torch.linalg.vector_norm(x[0] - x[1])
    torch.testing.assert_close(theirs(embeddings, labels, as_tuple(mined)), ours[1] + d01 ** 2 / 2)


def test_scale_measures_the_distances_on_a_larger_sphere():
    """``scale`` s on unit embeddings x is the paper's loss on s * x (margin in the scaled units), and a
    scale that is not positive is refused."""
    torch.manual_seed(0)
    x = F.normalize(torch.randn(12, 6, dtype=torch.float64))
    labels = torch.arange(4).repeat(3)
    pairs = all_pairs(labels)
    scaled = LiftedStructureLoss(scale=8.0).terms(x, labels, pairs)["lifted"]
    plain = LiftedStructureLoss().terms(8.0 * x, labels, pairs)["lifted"]
    torch.testing.assert_close(scaled, plain)
    assert not torch.allclose(scaled, LiftedStructureLoss().terms(x, labels, pairs)["lifted"])
    with pytest.raises(ConfigError, match="scale"):
        LiftedStructureLoss(scale=0.0)
