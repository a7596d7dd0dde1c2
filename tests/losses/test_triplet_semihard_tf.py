"""The triplet loss's ``squared`` and ``reduction="mean"`` options with the semi-hard miner's ``squared``
and ``selection="closest"``, against a literal transcription (plain loops) of TensorFlow's
triplet_semihard_loss (tf.contrib.losses.metric_learning): squared pairwise distances; for every
positive pair (a, p), a != p, the negative n with the smallest d(a, n) > d(a, p), or, when there is
none, the negative with the largest d(a, n); loss = sum_(a,p) [margin + d(a,p) - d(a,n)]_+ / #pairs."""

import pytest
import torch
import torch.nn.functional as F

from dmlbench.criterion import build_criterion


def tf_triplet_semihard_loss(embeddings, labels, margin, squared=True):
    n = len(labels)
    dist = [[sum((embeddings[i][k] - embeddings[j][k]) ** 2 for k in range(embeddings.shape[1])) for j in range(n)]
            for i in range(n)]
    if not squared:
        dist = [[d ** 0.5 if i != j else d * 0 for j, d in enumerate(row)] for i, row in enumerate(dist)]
    total, pairs = 0.0, 0
    for a in range(n):
        for p in range(n):
            if a == p or labels[a] != labels[p]:
                continue
            pairs += 1
            negatives = [x for x in range(n) if labels[x] != labels[a]]
            outside = [x for x in negatives if dist[a][x] > dist[a][p]]
            chosen = (min(outside, key=lambda x: float(dist[a][x].detach())) if outside
                      else max(negatives, key=lambda x: float(dist[a][x].detach())))
            total = total + torch.relu(margin + dist[a][p] - dist[a][chosen])
    return total / pairs


def fixed_batch(seed, n=18, dim=5, classes=4):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat(n // classes + 1)[:n][torch.randperm(n, generator=g)]
    return F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64)), labels


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("margin", [0.2, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_squared_and_mean_over_positive_pairs_match_tensorflows_rule(squared, margin, seed):
    x, labels = fixed_batch(seed)
    criterion = build_criterion("triplet", "semi-hard", {"margin": margin, "squared": squared, "reduction": "mean"},
                                {"margin": margin, "squared": squared, "selection": "closest"})
    ours_x = x.clone().requires_grad_(True)
    ours = criterion(ours_x, labels)
    ours.backward()
    ref_x = x.clone().requires_grad_(True)
    ref = tf_triplet_semihard_loss(ref_x, labels.tolist(), margin, squared)
    ref.backward()
    assert ref.item() > 0
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_x.grad.double(), ref_x.grad, rtol=1e-4, atol=1e-6)
    assert criterion.last_mined == sum(int(labels[a] == labels[p]) for a in range(len(labels))
                                       for p in range(len(labels)) if a != p)  # one triplet per positive pair


def test_defaults_are_unchanged_euclidean_and_mean_over_non_zero_terms():
    x, labels = fixed_batch(3)
    default = build_criterion("triplet", "semi-hard", {"margin": 0.2}, {"margin": 0.2})
    assert default.loss.squared is False and default.miner.squared is False and default.loss.reduction == "mean_nonzero"
    squared = build_criterion("triplet", "semi-hard", {"margin": 0.2, "squared": True}, {"margin": 0.2, "squared": True})
    assert not torch.isclose(default(x.float(), labels), squared(x.float(), labels))
    tf_like = build_criterion("triplet", "semi-hard", {"margin": 0.2, "reduction": "mean"},
                              {"margin": 0.2, "selection": "closest"})
    assert tf_like(x.float(), labels) < build_criterion("triplet", "semi-hard", {"margin": 0.2},
                                                        {"margin": 0.2, "selection": "closest"})(x.float(), labels)


def test_squared_margin_triplets_use_the_squared_gap():
    from dmlbench.miners import MINERS

    x, labels = fixed_batch(4)
    plain = MINERS.create("margin-triplets", margin=0.2)(x.float(), labels)
    squared = MINERS.create("margin-triplets", margin=0.2, squared=True)(x.float(), labels)
    d2 = torch.cdist(x, x).pow(2)
    gap = d2[squared.anchor, squared.negative] - d2[squared.anchor, squared.positive]
    assert (gap <= 0.2 + 1e-9).all() and len(plain) != len(squared)
