"""Margin loss (Wu et al. 2017) against pytorch-metric-learning's MarginLoss and a slow loop."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from dmlbench.criterion import Criterion
from dmlbench.errors import ConfigError
from dmlbench.losses.margin import MarginLoss
from dmlbench.geometry.tuples import Pairs, Triplets, all_triplets

from ..support import as_tuple, batch, value_and_grad, value_and_grads


def some_triplets(labels, fraction=0.3, seed=0):
    """A random subset of all triplets, so positive and negative pairs repeat across triplets."""
    t = all_triplets(labels)
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(len(t), generator=g) < fraction
    return Triplets(t.anchor[keep], t.positive[keep], t.negative[keep])


def grads(loss_fn, module, embeddings):
    """Value, gradient w.r.t. the raw embeddings and w.r.t. the module's beta (None for a fixed beta)."""
    if isinstance(module.beta, torch.nn.Parameter):
        return value_and_grads(loss_fn, embeddings, module.beta)
    return (*value_and_grad(loss_fn, embeddings), None)


def set_betas(ours, theirs, values):
    """Copy the same boundaries into both losses, in the dtype of the test."""
    ours.to(values.dtype)
    theirs.beta = torch.nn.Parameter(values.clone()) if theirs.learn_beta else values.clone()
    with torch.no_grad():
        ours.beta.copy_(values)


def assert_close_all(a, b, beta_atol=None):
    """Values and embedding gradients to 1e-5. The beta gradient is a sum of many +-1/divisor and
    nu/divisor terms (one per pair): in float32 the two libraries accumulate it in different orders
    and differ by ~3e-6 absolute, so by default float32 beta gradients get atol 1e-5; float64 gets
    1e-5 relative. ``beta_atol`` replaces that atol (against a loop that sums like ours)."""
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-6)
    if a[2] is not None or b[2] is not None:
        if beta_atol is None:
            beta_atol = 1e-5 if a[2].dtype == torch.float32 else 1e-12
        torch.testing.assert_close(a[2], b[2], rtol=1e-5, atol=beta_atol)


DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nu", [0.0, 0.05])
@pytest.mark.parametrize("margin", [0.2, 0.5])
def test_per_class_beta_matches_pml_on_triplets(nu, margin, dtype):
    classes = 6
    embeddings, labels = batch(n=40, dim=32, classes=classes, seed=1)
    embeddings = embeddings.to(dtype)
    triplets = some_triplets(labels, seed=1)
    ours = MarginLoss(margin=margin, nu=nu, learn_beta=True, per_class=True, num_classes=classes)
    # pml counts nu * beta once per triplet, ours once per pair: a triplet gives two pairs.
    theirs = pml_losses.MarginLoss(margin=margin, nu=2 * nu, beta=1.2, learn_beta=True, num_classes=classes)
    betas = torch.linspace(0.9, 1.4, classes, dtype=dtype)  # distinct per-class boundaries, copied into both
    set_betas(ours, theirs, betas)
    a = grads(lambda x: ours(F.normalize(x), labels, triplets), ours, embeddings)
    b = grads(lambda x: theirs(x, labels, as_tuple(triplets)), theirs, embeddings)
    assert a[0] > 0 and torch.count_nonzero(a[2]) > 0
    assert_close_all(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_beta_matches_pml(dtype):
    embeddings, labels = batch(n=40, dim=32, classes=6, seed=2)
    embeddings = embeddings.to(dtype)
    triplets = some_triplets(labels, seed=2)
    ours = MarginLoss(nu=0.0, learn_beta=True, per_class=False)
    theirs = pml_losses.MarginLoss(margin=0.2, nu=0.0, beta=1.2, learn_beta=True)
    set_betas(ours, theirs, torch.tensor([1.05], dtype=dtype))
    a = grads(lambda x: ours(F.normalize(x), labels, triplets), ours, embeddings)
    b = grads(lambda x: theirs(x, labels, as_tuple(triplets)), theirs, embeddings)
    assert a[2].shape == (1,) and a[2].abs().item() > 0
    assert_close_all(a, b)


def test_global_beta_with_nu_equals_pml_per_class_with_equal_betas():
    """pml adds nu * beta undivided for a global beta, so compare with its per-class form: with all
    class betas equal the value is the same and the global gradient is the sum of the class ones."""
    classes = 5
    embeddings, labels = batch(n=30, dim=16, classes=classes, seed=3)
    embeddings = embeddings.double()
    triplets = some_triplets(labels, seed=3)
    ours = MarginLoss(nu=0.1, learn_beta=True, per_class=False).double()
    theirs = pml_losses.MarginLoss(margin=0.2, nu=0.2, beta=1.2, learn_beta=True, num_classes=classes)
    theirs.beta = torch.nn.Parameter(theirs.beta.detach().double())
    a = grads(lambda x: ours(F.normalize(x), labels, triplets), ours, embeddings)
    b = grads(lambda x: theirs(x, labels, as_tuple(triplets)), theirs, embeddings)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[2], b[2].sum().reshape(1), rtol=1e-5, atol=1e-6)


def test_fixed_beta_matches_pml_default():
    embeddings, labels = batch(n=32, dim=16, classes=4, seed=4)
    triplets = some_triplets(labels, fraction=1.0)
    ours = MarginLoss(beta=1.1, learn_beta=False, per_class=False)
    theirs = pml_losses.MarginLoss(beta=1.1)  # margin 0.2, nu 0, fixed beta: pml's defaults
    a = grads(lambda x: ours(F.normalize(x), labels, triplets), ours, embeddings)
    b = grads(lambda x: theirs(x, labels, as_tuple(triplets)), theirs, embeddings)
    assert a[2] is None and not any(p.requires_grad for p in ours.parameters())
    assert_close_all(a, b)


def brute_margin(x, labels, pairs, beta, margin, nu, per_class, reduction):
    """Python loop over the pairs: hinge terms, nu * beta of the anchor's class per pair, one divisor."""
    total, active, count = 0.0, 0, 0
    for (i, j), positive in itertools.chain(((p, True) for p in pairs[0]), ((p, False) for p in pairs[1])):
        b = beta[labels[i]] if per_class else beta[0]
        d = torch.linalg.vector_norm(x[i] - x[j])
        term = torch.relu(d - b + margin) if positive else torch.relu(b - d + margin)
        total = total + term + nu * b
        active += int(term > 0)
        count += 1
    divisor = {"mean_nonzero": max(active, 1), "mean": max(count, 1), "sum": 1}[reduction]
    return total / divisor


def pair_list(labels):
    n = len(labels)
    pos = [(i, j) for i, j in itertools.permutations(range(n), 2) if labels[i] == labels[j]]
    neg = [(i, j) for i, j in itertools.permutations(range(n), 2) if labels[i] != labels[j]]
    return pos, neg


@pytest.mark.parametrize("reduction", ["mean_nonzero", "mean", "sum"])
@pytest.mark.parametrize("per_class", [True, False])
def test_all_pairs_matches_loop(reduction, per_class):
    classes = 4
    embeddings, labels = batch(n=14, dim=8, classes=classes, seed=5)
    ours = MarginLoss(margin=0.3, nu=0.07, per_class=per_class, num_classes=classes, reduction=reduction)
    with torch.no_grad():
        ours.beta.copy_(torch.linspace(0.8, 1.3, len(ours.beta)))
    reference = torch.nn.Parameter(ours.beta.detach().clone())
    pairs = pair_list(labels.tolist())
    a = grads(lambda x: ours(F.normalize(x), labels), ours, embeddings)
    b = value_and_grads(lambda x: brute_margin(F.normalize(x), labels.tolist(), pairs, reference, 0.3, 0.07, per_class,
                                               reduction), embeddings, reference)
    assert_close_all(a, b, beta_atol=1e-6)


def test_mined_pairs_with_duplicates_match_loop():
    embeddings, labels = batch(n=12, dim=8, classes=3, seed=6)
    pos, neg = pair_list(labels.tolist())
    pos, neg = pos[::2] + pos[:3], neg[::3] + neg[:2]  # a subset, some pairs twice
    mined = Pairs(*(torch.tensor(v) for v in (*zip(*pos), *zip(*neg))))
    ours = MarginLoss(nu=0.02, num_classes=3)
    a = grads(lambda x: ours(F.normalize(x), labels, mined), ours, embeddings)
    beta = torch.nn.Parameter(torch.full((3,), 1.2))
    b = value_and_grads(lambda x: brute_margin(F.normalize(x), labels.tolist(), (pos, neg), beta, 0.2, 0.02, True,
                                               "mean_nonzero"), embeddings, beta)
    assert_close_all(a, b, beta_atol=1e-6)


def test_no_active_pair_leaves_only_the_regulariser():
    labels = torch.tensor([0, 0, 1, 1])
    x = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]]))
    # positives at ~0.01 < beta - margin = 0.8; negatives at 2 > beta + margin = 1.2
    loss = MarginLoss(beta=1.0, nu=0.0, num_classes=2)
    assert loss(x, labels).item() == 0.0
    loss = MarginLoss(beta=1.0, nu=0.5, num_classes=2)
    torch.testing.assert_close(loss(x, labels), torch.tensor(0.5 * 1.0 * 12))  # 12 ordered pairs, divisor 1


def test_beta_trains_with_the_loss_learning_rate_scale():
    loss = MarginLoss(num_classes=7)
    assert isinstance(loss.beta, torch.nn.Parameter) and loss.beta.shape == (7,)
    groups = Criterion(loss).param_groups(lr=1e-3)
    assert len(groups) == 1 and groups[0]["params"][0] is loss.beta
    assert groups[0]["lr"] == pytest.approx(1e-3 * MarginLoss.param_lr_scale)
    fixed = MarginLoss(learn_beta=False, per_class=False)
    assert Criterion(fixed).param_groups(lr=1e-3) == [] and "beta" in fixed.state_dict()


def test_finite_gradients_with_duplicated_embeddings():
    embeddings, labels = batch(n=16, seed=8)
    embeddings[1] = embeddings[0]
    labels[1] = labels[0]
    loss = MarginLoss(nu=0.01, num_classes=5)
    value, grad, beta_grad = value_and_grads(lambda x: loss(F.normalize(x), labels), embeddings, loss.beta)
    assert torch.isfinite(value) and torch.isfinite(grad).all() and torch.isfinite(beta_grad).all()


def test_bad_arguments_fail_clearly():
    with pytest.raises(ConfigError, match="margin .* must be >= 0, got -0.1"):
        MarginLoss(margin=-0.1, num_classes=3)
    with pytest.raises(ConfigError, match="beta .* must be > 0, got 0"):
        MarginLoss(beta=0, num_classes=3)
    with pytest.raises(ConfigError, match="nu .* must be >= 0, got -1"):
        MarginLoss(nu=-1, num_classes=3)
    with pytest.raises(ConfigError, match="per_class=True needs num_classes"):
        MarginLoss()
    with pytest.raises(ConfigError, match="per_class=True needs num_classes"):
        MarginLoss(num_classes=0)
    with pytest.raises(ConfigError, match="learn_beta must be true or false"):
        MarginLoss(learn_beta="yes", num_classes=3)
    with pytest.raises(ConfigError, match="must be a finite number"):
        MarginLoss(beta=float("nan"), num_classes=3)
    with pytest.raises(ConfigError, match="valid reductions"):
        MarginLoss(num_classes=3, reduction="median")
    with pytest.raises(ValueError, match="labels in 0..2"):
        MarginLoss(num_classes=3)(F.normalize(torch.randn(4, 3)), torch.tensor([0, 1, 3, 3]))
