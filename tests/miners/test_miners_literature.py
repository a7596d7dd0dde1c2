"""The miners added for the sampling axis: margin triplets, FaceNet's fallback, N-pair construction,
smooth-hard (lifted) and rho-distance; against pytorch-metric-learning, brute force and their rules."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import miners as pml_miners
from scipy.stats import binomtest, chisquare

from dmlbench.errors import ConfigError
from dmlbench.miners import (DistanceWeightedMiner, MarginTripletMiner, NPairMiner, RhoDistanceMiner, SemiHardMiner,
                             SmoothHardMiner)
from dmlbench.geometry.tuples import Pairs, Triplets

from .test_miners import as_set, batch, batches, dist


@pytest.mark.parametrize("selection,pml_type", [("violating", "all"), ("hard", "hard"), ("semihard", "semihard")])
@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_margin_triplets_match_pml(selection, pml_type, margin):
    x, labels = batch(n=64, dim=16, classes=8, seed=20)
    ours = as_set(MarginTripletMiner(margin=margin, selection=selection)(x, labels, "triplets"))
    theirs = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=pml_type)(x, labels)
    assert ours == set(zip(*(t.tolist() for t in theirs))) and len(ours) > 0


@settings(max_examples=40, deadline=None)
@given(batches(), st.sampled_from(["easiest", "hardest"]), st.sampled_from(["all", "closest"]))
def test_semihard_selection_and_facenet_fallback(data, fallback, selection):
    x, labels = data
    margin = 0.2
    mined = SemiHardMiner(margin=margin, selection=selection, fallback=fallback)(x, labels, "triplets")
    d = dist(x)
    got = {}
    for a, p, n in zip(mined.anchor.tolist(), mined.positive.tolist(), mined.negative.tolist()):
        got.setdefault((a, p), []).append(n)
    tol = 1e-5
    for a, p in itertools.permutations(range(len(x)), 2):
        if labels[a] != labels[p]:
            continue
        negatives = [n for n in range(len(x)) if labels[n] != labels[a]]
        if not negatives:
            assert (a, p) not in got
            continue
        semi = [n for n in negatives if d[a, p] < d[a, n] <= d[a, p] + margin]
        chosen = got.get((a, p), [])
        if semi and all(tol < (d[a, n] - d[a, p]).item() < margin - tol for n in semi):
            if selection == "all":
                assert sorted(chosen) == sorted(semi)
            else:
                assert len(chosen) == 1 and d[a, chosen[0]] <= min(d[a, n] for n in semi) + tol
        elif not semi:
            assert len(chosen) == 1  # the fallback
            target = max if fallback == "easiest" else min
            assert abs(d[a, chosen[0]] - target(d[a, n] for n in negatives)) < tol


def test_semihard_bad_options_fail():
    with pytest.raises(ConfigError, match="valid fallbacks: easiest, hardest, none"):
        SemiHardMiner(fallback="random")
    with pytest.raises(ConfigError, match="valid selections: all, closest"):
        SemiHardMiner(selection="some")
    with pytest.raises(ConfigError, match="valid selections: violating, hard, semihard"):
        MarginTripletMiner(selection="easy")


def test_npair_construction():
    x, labels = batch(n=40, dim=8, classes=6, seed=21)
    labels[0] = 99  # a class with a single image takes no part
    miner = NPairMiner().seed(3)
    triplets = miner(x, labels, "triplets")
    anchors = sorted(set(triplets.anchor.tolist()))
    classes = [int(labels[a]) for a in anchors]
    counts = torch.bincount(torch.unique(labels, return_inverse=True)[1])
    assert len(classes) == len(set(classes)) == int((counts >= 2).sum())  # one pair per class
    assert 99 not in classes
    pair_of = {}
    for a, p, n in zip(*(t.tolist() for t in (triplets.anchor, triplets.positive, triplets.negative))):
        assert a != p and labels[a] == labels[p] and labels[n] != labels[a]
        pair_of.setdefault(a, set()).add(p)
    assert all(len(ps) == 1 for ps in pair_of.values())
    positives = {next(iter(ps)) for ps in pair_of.values()}
    for a in anchors:  # every other class's positive is a negative of a
        negs = set(triplets.negative[triplets.anchor == a].tolist())
        assert negs == positives - pair_of[a]
    pairs = NPairMiner().seed(3)(x, labels, "pairs")
    assert isinstance(pairs, Pairs) and len(pairs.pos_a) == len(anchors)
    assert set(zip(pairs.pos_a.tolist(), pairs.pos_b.tolist())) == {(a, next(iter(ps))) for a, ps in pair_of.items()}
    again = NPairMiner().seed(3)(x, labels, "triplets")
    assert as_set(again) == as_set(triplets)
    assert any(as_set(NPairMiner().seed(s)(x, labels, "triplets")) != as_set(triplets) for s in range(4, 9))


def test_smooth_hard_weights_are_the_lifted_softmax():
    x, labels = batch(n=20, dim=8, classes=4, seed=22)
    anchor, pos, weights = SmoothHardMiner(scale=1.0).negative_weights(x, labels)
    d = dist(x)
    for k, (a, p) in enumerate(zip(anchor.tolist(), pos.tolist())):
        expected = torch.zeros(20, dtype=torch.float64)
        for n in range(20):
            if labels[n] != labels[a]:
                expected[n] = math.exp(-d[a, n]) + math.exp(-d[p, n])
        torch.testing.assert_close(weights[k], expected / expected.sum(), rtol=1e-5, atol=1e-9)


def test_smooth_hard_draws_follow_the_weights():
    x, labels = batch(n=16, dim=4, classes=3, seed=23)
    miner = SmoothHardMiner(scale=4.0).seed(0)
    anchor, pos, weights = miner.negative_weights(x, labels)
    target = weights[0]
    counts = torch.zeros(16, dtype=torch.float64)
    for _ in range(400):
        mined = miner(x, labels, "triplets")
        first = (mined.anchor == anchor[0]) & (mined.positive == pos[0])
        counts += torch.bincount(mined.negative[first], minlength=16).double()
    support = target > 0
    assert counts[~support].sum() == 0
    assert chisquare(counts[support].numpy(), (target[support] * counts.sum()).numpy()).pvalue > 1e-3
    uniform = torch.full((int(support.sum()),), counts.sum() / int(support.sum()), dtype=torch.float64)
    assert chisquare(counts[support].numpy(), uniform.numpy()).pvalue < 1e-6


def test_rho_distance_swaps_a_fraction_rho_of_negatives_for_positives():
    x, labels = batch(n=64, dim=8, classes=8, seed=24)
    plain = DistanceWeightedMiner().seed(5)(x, labels, "triplets")
    zero = RhoDistanceMiner(rho=0.0).seed(5)(x, labels, "triplets")
    assert as_set(zero) == as_set(plain)  # rho = 0 is distance-weighted sampling
    swapped, total = 0, 0
    miner = RhoDistanceMiner(rho=0.3).seed(6)
    for _ in range(20):
        mined = miner(x, labels, "triplets")
        same = labels[mined.negative] == labels[mined.anchor]
        assert bool((mined.negative[same] != mined.positive[same]).all())
        assert bool((mined.negative[same] != mined.anchor[same]).all())
        swapped += int(same.sum())
        total += len(mined)
    assert binomtest(swapped, total, 0.3).pvalue > 1e-3
    everything = RhoDistanceMiner(rho=1.0).seed(7)(x, labels, "triplets")
    class_size = (labels[:, None] == labels[None, :]).sum(dim=1)
    can_swap = class_size[everything.anchor] > 2  # another member besides the anchor and its positive
    assert can_swap.any() and not can_swap.all()
    same = labels[everything.negative] == labels[everything.anchor]
    assert bool((same == can_swap).all())
    with pytest.raises(ConfigError, match="rho must lie in"):
        RhoDistanceMiner(rho=1.5)
