"""rho-distance, soft-hard and smooth-hard against slow, literal transcriptions of their authors' rules.

The transcriptions below are plain Python loops over the batch, written from the authors' code
(Roth et al.'s ``batchminer/rho_distance.py`` and ``batchminer/softhard.py`` in
Confusezius/Revisiting_Deep_Metric_Learning_PyTorch) and from the lifted structured loss paper's
hard-negative rule (Song et al. 2016). Each returns the rule's exact law per anchor (or, for the
deterministic smooth-hard, its triplets). Deterministic parts are compared exactly; random parts by
goodness of fit of our miners' draws over many calls (fixed seeds, so every run gives the same
p-values), each test at significance level ALPHA.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import binomtest, chisquare

from dmlbench.errors import ConfigError
from dmlbench.miners import MINERS, RhoDistanceMiner, SmoothHardMiner, SoftHardMiner

from .test_miners import as_set

ALPHA = 1e-3  # significance level of every goodness-of-fit test in this file


@pytest.fixture(autouse=True)
def one_thread():
    """The draws call a miner on a tiny batch a thousand times; one thread avoids the pool's overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fixed_batch(n=24, dim=4, classes=3, seed=30):
    """A batch on the unit sphere; the last item is a class of its own (it may never be an anchor)."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[-1] = 99
    return x, labels


def plain_distances(x):
    """Euclidean distances with loops, in double precision (Python floats)."""
    rows = x.double().tolist()
    return [[math.dist(u, v) for v in rows] for u in rows]


def fit(name, counts, probabilities):
    """Chi-square goodness of fit of ``counts`` (dict index -> count) to ``probabilities`` (index -> p)."""
    assert set(counts) <= set(probabilities), f"{name}: drawn outside the rule's support"
    support = sorted(probabilities)
    observed = [counts.get(k, 0) for k in support]
    expected = [probabilities[k] * sum(observed) for k in support]
    p = chisquare(observed, expected).pvalue
    print(f"{name}: chi-square p = {p:.4f} ({sum(observed)} draws over {len(support)} indices)")
    assert p > ALPHA, name
    return p


# --- rho-distance: Roth et al., batchminer/rho_distance.py -------------------------------------------------

def roth_rho_distance_law(x, labels, rho, lower_cutoff=0.5):
    """Their rule per anchor i, as {i: (swap prob, positive law, negative law, swap-negative law)}:
    only anchors whose class has another member; no upper cut-off (commented out in their code)."""
    labels = labels.tolist()
    bs, dim = len(labels), x.shape[1]
    sq = [[d * d for d in row] for row in plain_distances(x)]
    law = {}
    for i in range(bs):
        same = [j for j in range(bs) if labels[j] == labels[i]]
        if len(same) <= 1:
            continue
        others = [j for j in same if j != i]
        uniform = {j: 1 / len(others) for j in others}
        dists = [max(math.sqrt(max(sq[i][k], 1e-4)), lower_cutoff) for k in range(bs)]
        log_q = []
        for k in range(bs):
            value = (2.0 - dim) * math.log(dists[k]) - ((dim - 3) / 2) * math.log(1.0 - 0.25 * dists[k] ** 2)
            log_q.append(0.0 if labels[k] == labels[i] else value)
        top = max(log_q)
        q = [0.0 if labels[k] == labels[i] else math.exp(log_q[k] - top) for k in range(bs)]
        total = sum(q)
        law[i] = (rho, uniform, {k: q[k] / total for k in range(bs) if q[k] > 0}, uniform)
    return law


def draw_rho(miner, x, labels, calls, anchor):
    """Swaps over all anchors; for ``anchor``: positives and negatives of its plain draws, and the
    negatives of its swapped ones."""
    swaps, positives, negatives, swapped = 0, {}, {}, {}
    for _ in range(calls):
        mined = miner(x, labels, "triplets")
        swaps += int((mined.positive == mined.anchor).sum())
        row = int((mined.anchor == anchor).nonzero()[0, 0])
        p, n = int(mined.positive[row]), int(mined.negative[row])
        if p == anchor:
            swapped[n] = swapped.get(n, 0) + 1
        else:
            positives[p] = positives.get(p, 0) + 1
            negatives[n] = negatives.get(n, 0) + 1
    return swaps, positives, negatives, swapped


def test_rho_distance_anchors_and_triplet_shapes_match_roth():
    x, labels = fixed_batch()
    law = roth_rho_distance_law(x, labels, rho=0.2)
    miner = RhoDistanceMiner().seed(1)
    for _ in range(50):
        mined = miner(x, labels, "triplets")
        assert mined.anchor.tolist() == sorted(law)  # one triplet per anchor with a class-mate, every call
        for a, p, n in zip(mined.anchor.tolist(), mined.positive.tolist(), mined.negative.tolist()):
            if p == a:  # the swap: (a, a, p') with p' another member of a's class
                assert n != a and labels[n] == labels[a]
            else:
                assert labels[p] == labels[a] and labels[n] != labels[a]
    assert RhoDistanceMiner.version == 2 and MINERS.get("rho-distance") is RhoDistanceMiner


def test_rho_distance_weights_have_the_lower_cutoff_and_no_upper_one():
    x, labels = fixed_batch()
    law = roth_rho_distance_law(x, labels, rho=0.2)
    weights = RhoDistanceMiner().negative_weights(x, labels).double()
    d = plain_distances(x)
    for a, (_, _, negatives, _) in law.items():
        expected = torch.zeros(len(labels), dtype=torch.float64)
        expected[list(negatives)] = torch.tensor(list(negatives.values()), dtype=torch.float64)
        torch.testing.assert_close(weights[a], expected, rtol=1e-5, atol=1e-7)
    far = [(a, n) for a in law for n in law[a][2] if d[a][n] > 1.4]
    near = [(a, n) for a in law for n in law[a][2] if d[a][n] < 0.5]
    assert far and near  # the batch exercises both cut-offs
    assert all(weights[a, n] > 0 for a, n in far)  # no upper cut-off
    a, n = near[0]  # below 0.5 a negative weighs what one at exactly 0.5 would
    same_row = [k for k in law[a][2] if d[a][k] < 0.5]
    assert len({round(float(weights[a, k]), 6) for k in same_row}) == 1
    capped = RhoDistanceMiner(nonzero_loss_cutoff=1.4).negative_weights(x, labels)
    assert all(capped[a, n] == 0 for a, n in far)  # Wu et al.'s cut-off, on request


def test_rho_distance_draws_follow_roth_law():
    x, labels = fixed_batch()
    law = roth_rho_distance_law(x, labels, rho=0.2)
    anchor = 0
    swaps, positives, negatives, swapped = draw_rho(RhoDistanceMiner(rho=0.2).seed(2), x, labels, 4000, anchor)
    total = 4000 * len(law)
    p_swap = binomtest(swaps, total, 0.2).pvalue
    print(f"rho-distance swap frequency {swaps / total:.4f} vs rho = 0.2: exact binomial p = {p_swap:.4f}")
    assert p_swap > ALPHA
    _, positive_law, negative_law, swap_law = law[anchor]
    fit("rho-distance anchor 0 negatives (distance-weighted)", negatives, negative_law)
    fit("rho-distance anchor 0 positives (uniform)", positives, positive_law)
    fit("rho-distance anchor 0 swapped negatives (uniform class-mates)", swapped, swap_law)
    observed = [negatives.get(k, 0) for k in negative_law]  # power: the same draws reject uniform negatives
    assert chisquare(observed, [sum(observed) / len(observed)] * len(observed)).pvalue < 1e-6
    d = plain_distances(x)
    assert any(d[anchor][n] > 1.4 for n in negatives)  # drawn beyond the old 1.4 cut-off


def test_rho_distance_extreme_rho_and_one_class():
    x, labels = fixed_batch()
    always = RhoDistanceMiner(rho=1.0).seed(3)(x, labels, "triplets")
    assert bool((always.positive == always.anchor).all()) and len(always) == len(labels) - 1
    never = RhoDistanceMiner(rho=0.0).seed(3)(x, labels, "triplets")
    assert bool((labels[never.negative] != labels[never.anchor]).all()) and len(never) == len(labels) - 1
    one_class = torch.zeros(len(labels), dtype=torch.long)  # no negatives: only swapped triplets remain
    assert len(RhoDistanceMiner(rho=0.0)(x, one_class, "triplets")) == 0
    assert len(RhoDistanceMiner(rho=1.0)(x, one_class, "triplets")) == len(labels)
    with pytest.raises(ConfigError, match="rho must lie in"):
        RhoDistanceMiner(rho=1.5)


# --- soft-hard: Roth et al., batchminer/softhard.py --------------------------------------------------------

def roth_softhard_law(x, labels):
    """Their rule per anchor i, as {i: (positive law, negative law)}: uniform over the positives
    farther than the nearest negative and the negatives nearer than the farthest positive, or over
    all positives / negatives when that set is empty."""
    labels = labels.tolist()
    bs = len(labels)
    dist = plain_distances(x)
    law = {}
    for i in range(bs):
        pos = [j for j in range(bs) if labels[j] == labels[i] and j != i]
        neg = [j for j in range(bs) if labels[j] != labels[i]]
        if not pos or not neg:
            continue
        farthest_pos = max(dist[i][j] for j in pos)
        nearest_neg = min(dist[i][j] for j in neg)
        hard_neg = [j for j in neg if dist[i][j] < farthest_pos] or neg
        hard_pos = [j for j in pos if dist[i][j] > nearest_neg] or pos
        law[i] = ({j: 1 / len(hard_pos) for j in hard_pos}, {j: 1 / len(hard_neg) for j in hard_neg})
    return law


def clustered_batch():
    """fixed_batch with class 0 squeezed into a tight cluster, so its anchors take the fallback."""
    x, labels = fixed_batch(seed=31)
    centre = F.normalize(torch.ones(x.shape[1]), dim=0)
    x = torch.where((labels == 0)[:, None], F.normalize(centre + 0.02 * x, dim=1), x)
    return x, labels


def test_soft_hard_supports_match_roth_exactly():
    x, labels = clustered_batch()
    law = roth_softhard_law(x, labels)
    miner = SoftHardMiner().seed(4)
    seen = {a: (set(), set()) for a in law}
    for _ in range(300):
        mined = miner(x, labels, "triplets")
        assert mined.anchor.tolist() == sorted(law)
        for a, p, n in zip(mined.anchor.tolist(), mined.positive.tolist(), mined.negative.tolist()):
            seen[a][0].add(p)
            seen[a][1].add(n)
    for a, (positive_law, negative_law) in law.items():
        assert seen[a] == (set(positive_law), set(negative_law)), a
    fallback = [a for a in law if labels[a] == 0]
    assert fallback and all(len(law[a][1]) == int((labels != 0).sum()) for a in fallback)
    assert any(len(law[a][1]) < int((labels != labels[a]).sum()) for a in law)  # and some hard sets
    assert SoftHardMiner.version == 1 and MINERS.get("soft-hard") is SoftHardMiner


def test_soft_hard_draws_are_uniform_over_roth_sets():
    x, labels = clustered_batch()
    law = roth_softhard_law(x, labels)
    anchor = max((a for a in law if labels[a] != 0), key=lambda a: min(len(law[a][0]), len(law[a][1])))
    positive_law, negative_law = law[anchor]
    assert len(positive_law) >= 2 and len(negative_law) >= 3
    miner = SoftHardMiner().seed(5)
    positives, negatives = {}, {}
    for _ in range(3000):
        mined = miner(x, labels, "triplets")
        row = mined.anchor.tolist().index(anchor)
        p, n = int(mined.positive[row]), int(mined.negative[row])
        positives[p] = positives.get(p, 0) + 1
        negatives[n] = negatives.get(n, 0) + 1
    fit(f"soft-hard anchor {anchor} positives", positives, positive_law)
    fit(f"soft-hard anchor {anchor} negatives", negatives, negative_law)


# --- smooth-hard: the lifted structured loss's hardest negative of either end (Song et al. 2016) ----------

def lifted_hardest_triplets(dist, labels):
    """For each positive pair i < j, the negative nearest to i or to j; the triplet is anchored at the
    end it is nearest to. Ties: the lowest index within an end, end i between the ends."""
    labels = labels.tolist()
    bs = len(labels)
    triplets = []
    for i in range(bs):
        for j in range(i + 1, bs):
            if labels[i] != labels[j]:
                continue
            negatives = [k for k in range(bs) if labels[k] != labels[i]]
            if not negatives:
                continue
            k_i = min(negatives, key=lambda k: (dist[i][k], k))
            k_j = min(negatives, key=lambda k: (dist[j][k], k))
            triplets.append((i, j, k_i) if dist[i][k_i] <= dist[j][k_j] else (j, i, k_j))
    return triplets


@pytest.mark.parametrize("seed", [40, 41, 42])
def test_smooth_hard_is_the_lifted_hardest_negative_of_either_end(seed):
    x, labels = fixed_batch(n=30, dim=8, classes=4, seed=seed)
    dist = plain_distances(x)
    expected = lifted_hardest_triplets(dist, labels)
    mined = SmoothHardMiner()(x, labels, "triplets")
    got = list(zip(mined.anchor.tolist(), mined.positive.tolist(), mined.negative.tolist()))
    assert sorted(got) == sorted(expected) and len(got) == len(expected) > 0
    assert as_set(SmoothHardMiner().seed(9)(x, labels, "triplets")) == set(got)  # nothing random
    assert SmoothHardMiner.version == 2


def test_smooth_hard_ties():
    x, labels = fixed_batch(n=12, dim=4, classes=3, seed=43)
    x[5] = x[4]  # one pair of duplicates: equal distances in float32 too
    labels[4] = labels[5] = 7  # two negatives at equal distance from everything else
    x[1] = x[0]
    labels[0] = labels[1] = 8  # a positive pair whose two ends tie
    dist = plain_distances(x)
    mined = SmoothHardMiner()(x, labels, "triplets")
    got = set(zip(mined.anchor.tolist(), mined.positive.tolist(), mined.negative.tolist()))
    first = [t for t in got if {t[0], t[1]} == {0, 1}]
    assert len(first) == 1 and first[0][0] == 0  # the tie between the ends goes to the lower index
    for a, p, n in got:
        if labels[a] != 7 and n in (4, 5):
            assert n == 4  # of two equally near negatives, the lower index
    assert got == set(lifted_hardest_triplets(dist, labels))
