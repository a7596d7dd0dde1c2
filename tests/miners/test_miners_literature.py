"""The miners added for the sampling axis: margin triplets, FaceNet's fallback and N-pair construction;
against pytorch-metric-learning, brute force and their rules. Smooth-hard, soft-hard and rho-distance
are tested against their authors' rules in test_miners_authors.py."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import miners as pml_miners

from dmlbench.errors import ConfigError
from dmlbench.miners import MarginTripletMiner, NPairMiner, SemiHardMiner
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
