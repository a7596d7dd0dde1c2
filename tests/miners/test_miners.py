"""Miners against brute-force loops, pytorch-metric-learning, and their papers' rules."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import miners as pml_miners

from dmlbench.criterion import compatible_miners, check_compatible
from dmlbench.errors import ConfigError, IncompatibleError
from dmlbench.miners import (MINERS, AllTuples, BatchHardMiner, DistanceWeightedMiner, MultiSimilarityMiner, RandomMiner,
                             SemiHardMiner)
from dmlbench.geometry.tuples import Pairs, Triplets


def batch(n=32, dim=16, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g), dim=1), torch.randint(0, classes, (n,), generator=g)


def as_set(triplets: Triplets) -> set:
    return set(zip(triplets.anchor.tolist(), triplets.positive.tolist(), triplets.negative.tolist()))


def dist(x):
    return torch.cdist(x.double(), x.double())


@st.composite
def batches(draw):
    n = draw(st.integers(4, 40))
    classes = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    return F.normalize(torch.randn(n, draw(st.sampled_from([2, 8, 32])), generator=g), dim=1), labels


def test_none_gives_every_triplet_and_pair():
    x, labels = batch(n=20, seed=1)
    expected = {(a, p, n) for a, p, n in itertools.product(range(20), repeat=3)
                if a != p and labels[a] == labels[p] and labels[a] != labels[n]}
    assert as_set(AllTuples()(x, labels, "triplets")) == expected
    pairs = AllTuples()(x, labels, "pairs")
    assert set(zip(pairs.pos_a.tolist(), pairs.pos_b.tolist())) == {
        (i, j) for i, j in itertools.permutations(range(20), 2) if labels[i] == labels[j]}
    assert len(pairs.neg_a) == int((labels[:, None] != labels[None, :]).sum())


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from([0.05, 0.2, 0.5]))
def test_semihard_negatives_satisfy_facenet_rule_and_none_is_missed(data, margin):
    x, labels = data
    mined = as_set(SemiHardMiner(margin=margin, fallback="none")(x, labels, "triplets"))
    d = dist(x)
    tol = 1e-5  # float32 mining vs float64 check
    expected_strict = set()
    for a, p, n in itertools.product(range(len(x)), repeat=3):
        if a == p or labels[a] != labels[p] or labels[a] == labels[n]:
            continue
        gap = (d[a, n] - d[a, p]).item()
        if tol < gap < margin - tol:
            expected_strict.add((a, p, n))
    for a, p, n in mined:
        assert labels[a] == labels[p] and a != p and labels[a] != labels[n]
        assert d[a, p] - tol < d[a, n] < d[a, p] + margin + tol
    assert expected_strict <= mined


def test_semihard_matches_pml():
    x, labels = batch(n=64, dim=32, classes=8, seed=2)
    ours = as_set(SemiHardMiner(margin=0.2, fallback="none")(x, labels, "triplets"))
    theirs = pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")(x, labels)
    assert ours == set(zip(*(t.tolist() for t in theirs)))
    assert len(ours) > 0


@settings(max_examples=60, deadline=None)
@given(batches())
def test_batch_hard_picks_argmax_positive_and_argmin_negative(data):
    x, labels = data
    mined = BatchHardMiner()(x, labels, "triplets")
    d = dist(x)
    anchors = mined.anchor.tolist()
    for i in range(len(x)):
        positives = [j for j in range(len(x)) if j != i and labels[j] == labels[i]]
        negatives = [j for j in range(len(x)) if labels[j] != labels[i]]
        assert (i in anchors) == bool(positives and negatives)
    for a, p, n in zip(anchors, mined.positive.tolist(), mined.negative.tolist()):
        positives = [j for j in range(len(x)) if j != a and labels[j] == labels[a]]
        negatives = [j for j in range(len(x)) if labels[j] != labels[a]]
        assert d[a, p] >= max(d[a, j] for j in positives) - 1e-5
        assert d[a, n] <= min(d[a, j] for j in negatives) + 1e-5


def test_batch_hard_matches_pml():
    x, labels = batch(n=64, dim=32, classes=8, seed=3)
    ours = as_set(BatchHardMiner()(x, labels, "triplets"))
    theirs = pml_miners.BatchHardMiner()(x, labels)
    assert ours == set(zip(*(t.tolist() for t in theirs)))


def test_random_miner_is_valid_seeded_and_covers_every_positive_pair():
    x, labels = batch(n=30, seed=4)
    first = RandomMiner().seed(7)(x, labels, "triplets")
    again = RandomMiner().seed(7)(x, labels, "triplets")
    other = RandomMiner().seed(8)(x, labels, "triplets")
    assert as_set(first) == as_set(again)
    assert as_set(first) != as_set(other)
    positive_pairs = {(i, j) for i, j in itertools.permutations(range(30), 2) if labels[i] == labels[j]}
    assert set(zip(first.anchor.tolist(), first.positive.tolist())) == positive_pairs
    assert len(first) == len(positive_pairs)
    assert all(labels[a] != labels[n] for a, n in zip(first.anchor.tolist(), first.negative.tolist()))


def test_random_miner_draws_negatives_uniformly():
    from scipy.stats import chisquare

    labels = torch.tensor([0, 0, 1, 2, 3, 4])  # anchor 0's negatives: items 2..5
    x = F.normalize(torch.randn(6, 4), dim=1)
    miner = RandomMiner().seed(0)
    counts = torch.zeros(6)
    for _ in range(2000):
        mined = miner(x, labels, "triplets")
        counts[mined.negative[mined.anchor == 0]] += 1
    assert counts[:2].sum() == 0
    assert chisquare(counts[2:].numpy()).pvalue > 1e-3


def test_random_pairs_are_balanced():
    x, labels = batch(n=24, seed=5)
    pairs = RandomMiner()(x, labels, "pairs")
    assert isinstance(pairs, Pairs)
    assert len(pairs.pos_a) == len(pairs.neg_a)
    assert bool((labels[pairs.neg_a] != labels[pairs.neg_b]).all())


def test_triplet_miner_feeds_pair_loss():
    x, labels = batch(n=24, seed=6)
    pairs = BatchHardMiner()(x, labels, "pairs")
    assert isinstance(pairs, Pairs)
    assert bool((labels[pairs.pos_a] == labels[pairs.pos_b]).all())
    assert bool((labels[pairs.neg_a] != labels[pairs.neg_b]).all())


def test_compatibility_rules_and_message():
    pair_only = [m for m in MINERS.names() if MINERS.get(m).produces == ("pairs",)]
    assert "multi-similarity" in pair_only
    assert compatible_miners("triplet") == [m for m in MINERS.names() if m not in pair_only]
    assert compatible_miners("contrastive") == MINERS.names()
    expected = "miners compatible with 'triplet': " + ", ".join(compatible_miners("triplet"))
    with pytest.raises(IncompatibleError, match=expected):
        check_compatible("triplet", "multi-similarity")
    check_compatible("contrastive", "multi-similarity")


def test_semihard_rejects_bad_margin():
    with pytest.raises(ConfigError, match="margin must be positive"):
        SemiHardMiner(margin=0)


def test_multi_similarity_miner_matches_pml_and_the_paper_rule():
    x, labels = batch(n=64, dim=16, classes=8, seed=10)
    ours = MultiSimilarityMiner(epsilon=0.1)(x, labels, "pairs")
    a1, p, a2, n = pml_miners.MultiSimilarityMiner(epsilon=0.1)(x, labels)
    assert set(zip(ours.pos_a.tolist(), ours.pos_b.tolist())) == set(zip(a1.tolist(), p.tolist()))
    assert set(zip(ours.neg_a.tolist(), ours.neg_b.tolist())) == set(zip(a2.tolist(), n.tolist()))
    sim = (x @ x.T).double()
    for a, k in zip(ours.neg_a.tolist(), ours.neg_b.tolist()):
        positives = [j for j in range(64) if j != a and labels[j] == labels[a]]
        assert sim[a, k] + 0.1 > min(sim[a, j] for j in positives) - 1e-6
    assert 0 < len(ours.neg_a) < int((labels[:, None] != labels[None, :]).sum())


def test_distance_weighted_weights_match_pml():
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    x, labels = batch(n=48, dim=8, classes=6, seed=11)
    captured = {}
    original = lmu.get_random_triplet_indices

    def capture(labels_, ref_labels=None, t_per_anchor=None, weights=None):
        captured["weights"] = weights
        return original(labels_, ref_labels=ref_labels, t_per_anchor=t_per_anchor, weights=weights)

    lmu.get_random_triplet_indices = capture
    try:
        pml_miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)(x, labels)
    finally:
        lmu.get_random_triplet_indices = original
    ours = DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4).negative_weights(x, labels)
    torch.testing.assert_close(ours, captured["weights"].float(), rtol=1e-4, atol=1e-6)


def test_distance_weighted_draws_follow_the_target_distribution():
    from scipy.stats import chisquare

    x, labels = batch(n=24, dim=4, classes=3, seed=12)
    miner = DistanceWeightedMiner().seed(0)
    target = miner.negative_weights(x, labels)[0].double()  # anchor 0's distribution over negatives
    support = (target > 0).nonzero()[:, 0]
    counts = torch.zeros(24, dtype=torch.float64)
    for _ in range(300):
        mined = miner(x, labels, "triplets")
        counts += torch.bincount(mined.negative[mined.anchor == 0], minlength=24).double()
    assert counts[target == 0].sum() == 0
    expected = target[support] * counts.sum()
    assert chisquare(counts[support].numpy(), expected.numpy()).pvalue > 1e-3
    # Without the weighting (uniform over the same negatives) the same test rejects.
    uniform = torch.full((len(support),), counts.sum() / len(support), dtype=torch.float64)
    assert chisquare(counts[support].numpy(), uniform.numpy()).pvalue < 1e-6
    # Every draw is a negative of its anchor closer than the cut-off.
    d = dist(x)
    assert all(labels[a] != labels[n] and d[a, n] < 1.4 for a, n in zip(mined.anchor.tolist(), mined.negative.tolist()))
