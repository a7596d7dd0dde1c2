"""Multi-similarity loss (Wang et al. 2019) against pytorch-metric-learning and a slow loop."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import reducers as pml_reducers

from dmlbench.errors import ConfigError
from dmlbench.losses.multi_similarity import MultiSimilarityLoss
from dmlbench.miners import BatchHardMiner, MultiSimilarityMiner
from dmlbench.geometry.tuples import Pairs, all_pairs

from .. import support as oracle
from ..support import as_tuple, batch, value_and_grad


# gradients to rtol 1e-5, atol 1e-6; never a comparison of two zeros
assert_same_value_and_grad = partial(oracle.assert_same_value_and_grad, grad_rtol=1e-5, grad_atol=1e-6, nonzero=True)


def random_pairs(labels, fraction=0.4, seed=0):
    pairs = all_pairs(labels)
    g = torch.Generator().manual_seed(seed)
    keep_pos = torch.rand(len(pairs.pos_a), generator=g) < fraction
    keep_neg = torch.rand(len(pairs.neg_a), generator=g) < fraction
    return Pairs(pairs.pos_a[keep_pos], pairs.pos_b[keep_pos], pairs.neg_a[keep_neg], pairs.neg_b[keep_neg])


def brute_ms(x, labels, pos, neg, alpha, beta, base):
    """Per anchor, loops over its (distinct) mined pairs; the mean over all anchors of the batch."""
    pos, neg = set(pos), set(neg)
    total = 0.0
    for i in range(len(x)):
        p = [torch.exp(-alpha * (x[i] @ x[k] - base)) for (a, k) in pos if a == i]
        q = [torch.exp(beta * (x[i] @ x[k] - base)) for (a, k) in neg if a == i]
        zero = torch.zeros(())
        total = total + torch.log1p(sum(p, zero)) / alpha + torch.log1p(sum(q, zero)) / beta
    return total / len(x)


def as_list(a, b):
    return list(zip(a.tolist(), b.tolist()))


@pytest.mark.parametrize("alpha,beta,base", [(2.0, 50.0, 0.5), (2.0, 50.0, 1.0), (1.0, 10.0, 0.2)])
def test_all_pairs_matches_pml(alpha, beta, base):
    embeddings, labels = batch(n=48, dim=32, classes=6, seed=1)
    ours = MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)
    theirs = pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base, reducer=pml_reducers.MeanReducer())
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels), lambda x: theirs(x, labels), embeddings)


def test_pml_default_reducer_is_the_mean_over_anchors():
    embeddings, labels = batch(n=32, dim=16, classes=4, seed=2)
    ours = MultiSimilarityLoss(base=0.5)
    theirs = pml_losses.MultiSimilarityLoss()  # alpha 2, beta 50, base 0.5, default reducer
    assert type(theirs.reducer) is pml_reducers.MeanReducer
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels), lambda x: theirs(x, labels), embeddings)


@pytest.mark.parametrize("seed", [3, 4])
def test_mined_pairs_match_pml(seed):
    """Random subsets leave some anchors without positives or negatives, or without any pair."""
    embeddings, labels = batch(n=40, dim=16, classes=5, seed=seed)
    mined = random_pairs(labels, fraction=0.15, seed=seed)
    ours = MultiSimilarityLoss()
    theirs = pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=1.0)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels, mined),
                               lambda x: theirs(x, labels, as_tuple(mined)), embeddings)


def test_multi_similarity_miner_pairs_match_pml():
    embeddings, labels = batch(n=64, dim=32, classes=8, seed=5)
    mined = MultiSimilarityMiner(epsilon=0.1)(F.normalize(embeddings), labels, "pairs")
    assert 0 < len(mined) < len(all_pairs(labels))
    ours = MultiSimilarityLoss(base=0.5)
    theirs = pml_losses.MultiSimilarityLoss(base=0.5)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels, mined),
                               lambda x: theirs(x, labels, as_tuple(mined)), embeddings)


def test_triplets_count_each_pair_once_like_pml():
    embeddings, labels = batch(n=32, dim=16, classes=4, seed=6)
    triplets = BatchHardMiner()(F.normalize(embeddings), labels, "triplets")
    ours = MultiSimilarityLoss()
    theirs = pml_losses.MultiSimilarityLoss(base=1.0)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels, triplets),
                               lambda x: theirs(x, labels, as_tuple(triplets)), embeddings)


@pytest.mark.parametrize("alpha,beta,base", [(2.0, 50.0, 1.0), (3.0, 20.0, 0.4)])
def test_matches_loop(alpha, beta, base):
    embeddings, labels = batch(n=14, dim=8, classes=3, seed=7)
    mined = random_pairs(labels, fraction=0.5, seed=7)
    mined = Pairs(torch.cat([mined.pos_a, mined.pos_a[:2]]), torch.cat([mined.pos_b, mined.pos_b[:2]]),
                  mined.neg_a, mined.neg_b)  # a duplicated pair counts once
    ours = MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)
    pos, neg = as_list(mined.pos_a, mined.pos_b), as_list(mined.neg_a, mined.neg_b)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels, mined),
                               lambda x: brute_ms(F.normalize(x), labels, pos, neg, alpha, beta, base), embeddings)


def test_reductions():
    embeddings, labels = batch(n=20, dim=8, classes=4, seed=8)
    x = F.normalize(embeddings)
    per_anchor = MultiSimilarityLoss(reduction="sum")(x, labels)
    torch.testing.assert_close(MultiSimilarityLoss()(x, labels), per_anchor / 20)
    mined = random_pairs(labels, fraction=0.05, seed=8)  # many anchors with no pair: loss 0
    values = [MultiSimilarityLoss(reduction=r)(x, labels, mined) for r in ("sum", "mean", "mean_nonzero")]
    per_anchor = MultiSimilarityLoss().terms(x, labels, mined)["anchor"]  # (B,)
    active = int((per_anchor > 0).sum())
    assert per_anchor.shape == (20,) and 0 < active < 20
    assert active == len(set(mined.pos_a.tolist()) | set(mined.neg_a.tolist()))  # an anchor with a pair has L_i > 0
    torch.testing.assert_close(values[0], per_anchor.sum())
    torch.testing.assert_close(values[1], values[0] / 20)
    torch.testing.assert_close(values[2], values[0] / active)


def test_large_scales_stay_finite():
    """beta = 50 on similarities near 1 gives exp(25); with beta = 1000 a naive sum would overflow."""
    embeddings, labels = batch(n=16, dim=4, classes=2, seed=9)
    value, grad = value_and_grad(lambda x: MultiSimilarityLoss(alpha=500.0, beta=1000.0, base=0.0)(F.normalize(x), labels),
                                 embeddings)
    assert torch.isfinite(value) and torch.isfinite(grad).all() and value > 0


def test_no_pairs_gives_zero_with_graph():
    embeddings, labels = batch(n=8, seed=10)
    empty = torch.empty(0, dtype=torch.long)
    value, grad = value_and_grad(lambda x: MultiSimilarityLoss()(F.normalize(x), labels, Pairs(empty, empty, empty, empty)),
                                 embeddings)
    assert value.item() == 0.0 and torch.count_nonzero(grad) == 0


def test_finite_gradients_with_duplicated_embeddings():
    embeddings, labels = batch(n=16, seed=11)
    embeddings[1] = embeddings[0]
    labels[1] = labels[0]
    value, grad = value_and_grad(lambda x: MultiSimilarityLoss()(F.normalize(x), labels), embeddings)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_paper_defaults():
    loss = MultiSimilarityLoss()
    assert (loss.alpha, loss.beta, loss.base, loss.reduction) == (2.0, 50.0, 1.0, "mean")


def test_bad_arguments_fail_clearly():
    with pytest.raises(ConfigError, match="alpha .* must be > 0, got 0"):
        MultiSimilarityLoss(alpha=0)
    with pytest.raises(ConfigError, match="beta .* must be > 0, got -50"):
        MultiSimilarityLoss(beta=-50)
    with pytest.raises(ConfigError, match="base must be a finite number"):
        MultiSimilarityLoss(base=math.inf)
    with pytest.raises(ConfigError, match="alpha must be a finite number"):
        MultiSimilarityLoss(alpha="2")
    with pytest.raises(ConfigError, match="valid reductions"):
        MultiSimilarityLoss(reduction="max")
