"""Multi-class N-pair loss against a slow loop and against pytorch-metric-learning."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import regularizers as pml_regularizers

from dmlbench.errors import ConfigError
from dmlbench.losses import LOSSES
from dmlbench.losses.npairs import NPairsLoss, one_pair_per_class
from dmlbench.miners import SemiHardMiner
from dmlbench.geometry.tuples import Pairs, all_pairs

from .. import support as oracle
from ..support import as_tuple, batch, value_and_grad


def paired_batch(classes=12, dim=16, seed=0):
    """Exactly two images per class, shuffled: the paper's N-pair batch."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat(2)[torch.randperm(2 * classes, generator=g)]
    return torch.randn(2 * classes, dim, generator=g), labels


# gradients to rtol 1e-5 and an atol of 1e-6 times the largest reference gradient: float32 rounding
# grows with the gradients' size (e.g. under reduction="sum")
assert_same_value_and_grad = partial(oracle.assert_same_value_and_grad, grad_rtol=1e-5, grad_atol=1e-6,
                                     relative_grad_atol=True)


def pml_npairs(l2_weight, normalize=True):
    distance = pml_distances.DotProductSimilarity(normalize_embeddings=normalize)
    if not l2_weight:
        return pml_losses.NPairsLoss(distance=distance)
    return pml_losses.NPairsLoss(distance=distance, embedding_regularizer=pml_regularizers.LpRegularizer(p=2, power=2),
                                 embedding_reg_weight=l2_weight)


def shuffled(pairs, seed):
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pairs.pos_a), generator=g)
    return Pairs(pairs.pos_a[order], pairs.pos_b[order], pairs.neg_a, pairs.neg_b)


def brute_npairs(f, labels, pairs, l2_weight):
    """One pair per class by a loop (first in the pairs' order), then the softmax loss by loops."""
    chosen = {}
    for a, p in zip(pairs.pos_a.tolist(), pairs.pos_b.tolist()):
        chosen.setdefault(int(labels[a]), (a, p))
    chosen = list(chosen.values())
    losses = []
    for i, (a, p) in enumerate(chosen):
        others = sum(torch.exp(f[a] @ f[q] - f[a] @ f[p]) for j, (_, q) in enumerate(chosen) if j != i)
        losses.append(torch.log(1 + others))
    value = sum(losses) / len(losses)
    members = [k for pair in chosen for k in pair]
    return value + l2_weight * sum(f[k] @ f[k] for k in members) / len(members)


def test_registered():
    assert LOSSES.get("n-pairs") is NPairsLoss and NPairsLoss.consumes == "pairs"
    loss = LOSSES.create("n-pairs")
    assert loss.l2_weight == 0.002 and loss.reduction == "mean"


@pytest.mark.parametrize("l2_weight", [0.002, 0.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pml_on_normalised_embeddings(l2_weight, seed):
    """pml's regulariser sees the embeddings it is given, so both get F.normalize(x)."""
    embeddings, labels = batch(n=48, dim=32, classes=10, seed=seed)
    ours = NPairsLoss(l2_weight=l2_weight)
    theirs = pml_npairs(l2_weight)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels),
                               lambda x: theirs(F.normalize(x), labels), embeddings)


@pytest.mark.parametrize("seed", [2, 3])
def test_matches_pml_with_raw_embeddings_and_regulariser(seed):
    """Unnormalised embeddings make the L2 term count: equal to pml's when every image is in a pair."""
    embeddings, labels = paired_batch(seed=seed)
    ours = NPairsLoss(l2_weight=0.05)
    theirs = pml_npairs(0.05, normalize=False)
    assert_same_value_and_grad(lambda x: ours(x, labels), lambda x: theirs(x, labels), embeddings)
    without, _ = value_and_grad(lambda x: NPairsLoss(l2_weight=0)(x, labels), embeddings)
    with_l2, _ = value_and_grad(lambda x: ours(x, labels), embeddings)
    torch.testing.assert_close(with_l2 - without, 0.05 * embeddings.pow(2).sum(1).mean())


@pytest.mark.parametrize("seed", [4, 5])
def test_pair_choice_follows_the_mined_order_as_pml(seed):
    embeddings, labels = batch(n=40, dim=16, classes=8, seed=seed)
    mined = shuffled(all_pairs(labels), seed)
    ours = NPairsLoss()
    theirs = pml_npairs(0.002)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels, mined),
                               lambda x: theirs(F.normalize(x), labels, as_tuple(mined)), embeddings)
    # the choice matters: another order gives another value
    assert not torch.isclose(ours(F.normalize(embeddings), labels, mined), ours(F.normalize(embeddings), labels))


def test_matches_pml_on_semi_hard_pairs():
    embeddings, labels = batch(n=48, dim=16, classes=8, seed=6)
    mined = SemiHardMiner(margin=0.2)(F.normalize(embeddings), labels, "pairs")
    assert_same_value_and_grad(lambda x: NPairsLoss()(F.normalize(x), labels, mined),
                               lambda x: pml_npairs(0.002)(F.normalize(x), labels, as_tuple(mined)), embeddings)


def test_one_pair_per_class_with_all_pairs_is_first_and_second_image():
    labels = torch.tensor([3, 1, 3, 0, 1, 3, 2, 0])  # class 2 has a single image: no pair
    pairs = all_pairs(labels)
    anchor, positive = one_pair_per_class(labels, pairs.pos_a, pairs.pos_b)
    assert anchor.tolist() == [3, 1, 0] and positive.tolist() == [7, 4, 2]  # classes 0, 1, 3


@pytest.mark.parametrize("l2_weight", [0.002, 0.3])
@pytest.mark.parametrize("mined", [False, True])
def test_matches_loop(l2_weight, mined):
    embeddings, labels = batch(n=20, dim=8, classes=7, seed=7, dtype=torch.float64)
    pairs = shuffled(all_pairs(labels), 7) if mined else all_pairs(labels)
    ours = NPairsLoss(l2_weight=l2_weight)
    # raw embeddings: the regulariser is not a constant here
    assert_same_value_and_grad(lambda x: ours(x, labels, pairs),
                               lambda x: brute_npairs(x, labels, pairs, l2_weight), embeddings)
    assert_same_value_and_grad(lambda x: ours(F.normalize(x), labels, pairs),
                               lambda x: brute_npairs(F.normalize(x), labels, pairs, l2_weight), embeddings)


def test_regulariser_is_a_constant_on_normalised_embeddings():
    embeddings, labels = batch(n=30, dim=8, classes=6, seed=8)
    value, grad = value_and_grad(lambda x: NPairsLoss(l2_weight=0.5)(F.normalize(x), labels), embeddings)
    ref_value, ref_grad = value_and_grad(lambda x: NPairsLoss(l2_weight=0)(F.normalize(x), labels), embeddings)
    torch.testing.assert_close(value, ref_value + 0.5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)


def test_finite_gradients_with_duplicated_embeddings():
    embeddings, labels = batch(n=16, seed=9)
    embeddings[1] = embeddings[0]
    labels[1] = labels[0]
    embeddings[3] = embeddings[2]
    labels[3] = (labels[2] + 1) % 5
    value, grad = value_and_grad(lambda x: NPairsLoss()(F.normalize(x), labels), embeddings)
    assert torch.isfinite(value) and value > 0 and torch.isfinite(grad).all()


def test_no_pairs_gives_zero_with_graph():
    embeddings = torch.randn(5, 4)
    value, grad = value_and_grad(lambda x: NPairsLoss()(F.normalize(x), torch.arange(5)), embeddings)
    assert value.item() == 0.0 and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("kwargs,match", [
    ({"l2_weight": -0.1}, "l2_weight must be >= 0.*got -0.1"),
    ({"l2_weight": float("nan")}, "l2_weight must be >= 0.*got nan"),
    ({"reduction": "median"}, "valid reductions: mean, mean_nonzero, sum"),
])
def test_bad_arguments_fail_clearly(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        NPairsLoss(**kwargs)
