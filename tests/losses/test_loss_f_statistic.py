"""F-statistic loss (Ridgeway & Mozer 2018) against scipy's F distribution and one-way ANOVA.

No pytorch-metric-learning counterpart exists: the reference is a slow loop over class pairs and
dimensions with scipy.stats.f_oneway (the statistic) and scipy.stats.f (its CDF), and gradients are
checked with torch.autograd.gradcheck and with finite differences of that reference.
"""

import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from dmlbench.errors import ConfigError
from dmlbench.losses.f_statistic import X_MAX, X_MIN, FCDF1, FStatisticLoss, f1_cdf, f1_log_pdf

from ..support import value_and_grad


def batch(per_class=(4, 4, 4, 4), dim=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    labels = labels[torch.randperm(len(labels), generator=g)]
    shift = torch.randn(len(per_class), dim, generator=g, dtype=dtype) * 0.5  # class means apart
    return torch.randn(len(labels), dim, generator=g, dtype=dtype) + shift[labels], labels


def reference_loss(z: np.ndarray, labels: np.ndarray, d: int, reduction="mean") -> float:
    """Loop over class pairs and dimensions: ANOVA F with scipy, clipped like the authors' code, CDF with
    scipy, the d largest CDFs of each pair, -sum of their logs, mean (or sum) over the pairs."""
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= 2]
    losses = []
    for s, t in itertools.combinations(classes, 2):
        a, b = z[labels == s], z[labels == t]
        nu = len(a) + len(b) - 2
        cdfs = []
        for k in range(z.shape[1]):
            stat = scipy.stats.f_oneway(a[:, k], b[:, k]).statistic
            x = 1.0 if math.isinf(stat) else stat / (stat + nu)  # SS_b / (SS_b + SS_w); inf: no within spread
            x = min(max(x, X_MIN), X_MAX)  # the authors' clip
            cdfs.append(scipy.stats.f.cdf(nu * x / (1 - x), 1, nu))
        best = sorted(cdfs, reverse=True)[:d]
        losses.append(-sum(math.log(p) for p in best))
    if not losses:
        return 0.0
    return float(np.mean(losses) if reduction == "mean" else np.sum(losses))


def numeric_grad(z: np.ndarray, labels: np.ndarray, d: int, h=1e-6) -> np.ndarray:
    grad = np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        up, down = z.copy(), z.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (reference_loss(up, labels, d) - reference_loss(down, labels, d)) / (2 * h)
    return grad


# --- the F(1, nu) CDF as an autograd Function ----------------------------------------------------

@pytest.mark.parametrize("nu", [1, 2, 3, 4, 7, 10, 30, 31, 126, 254])
def test_cdf_and_density_match_scipy(nu):
    f = torch.tensor([1e-30, 1e-8, 1e-3, 0.1, 0.5, 1.0, 2.0, 4.0, 10.0, 50.0, 1e3, 1e6], dtype=torch.float64)
    nus = torch.full_like(f, nu)
    np.testing.assert_allclose(f1_cdf(f, nus).numpy(), scipy.stats.f.cdf(f.numpy(), 1, nu), rtol=1e-12, atol=0)
    np.testing.assert_allclose(f1_log_pdf(f, nus).numpy(), scipy.stats.f.logpdf(f.numpy(), 1, nu),
                               rtol=1e-12, atol=1e-12)


def test_cdf_limits_and_dtype():
    f = torch.tensor([0.0, math.inf, 3.0], dtype=torch.float32)
    out = f1_cdf(f, torch.tensor([5.0, 5.0, 5.0]))
    assert out.dtype == torch.float32
    assert out[0].item() == 0.0 and out[1].item() == 1.0
    assert out[2].item() == pytest.approx(scipy.stats.f.cdf(3.0, 1, 5), rel=1e-6)


def test_cdf_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    f = (torch.rand(6, 5, generator=g, dtype=torch.float64) * 8 + 0.02).requires_grad_(True)
    nu = torch.randint(1, 60, (6, 5), generator=g).double()
    assert torch.autograd.gradcheck(lambda t: FCDF1.apply(t, nu), (f,))


def test_cdf_gradient_is_the_density():
    f = torch.tensor([0.3, 2.0, 9.0], dtype=torch.float64, requires_grad=True)
    nu = torch.tensor([2.0, 9.0, 40.0], dtype=torch.float64)
    f1_cdf(f, nu).sum().backward()
    np.testing.assert_allclose(f.grad.numpy(), scipy.stats.f.pdf(f.detach().numpy(), 1, nu.numpy()), rtol=1e-12)


def test_cdf_rejects_bad_degrees_of_freedom():
    with pytest.raises(ValueError, match="positive integer degrees of freedom"):
        f1_cdf(torch.tensor([1.0]), torch.tensor([2.5]))
    with pytest.raises(ValueError, match="f >= 0"):
        f1_cdf(torch.tensor([-1.0]), torch.tensor([3.0]))


# --- the loss -----------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 2, 4])
@pytest.mark.parametrize("per_class", [(4, 4, 4, 4), (2, 5, 3, 6, 1)])
def test_value_matches_scipy_loop(d, per_class):
    z, labels = batch(per_class=per_class, dim=6, seed=d)
    value = FStatisticLoss(d=d)(z, labels)
    expected = reference_loss(z.numpy(), labels.numpy(), d)
    assert expected > 0
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=0)


def test_float32_value_matches_scipy_loop():
    z, labels = batch(per_class=(6, 6, 6, 6, 6), dim=16, seed=3, dtype=torch.float32)
    value = FStatisticLoss(d=3)(F.normalize(z), labels)
    expected = reference_loss(F.normalize(z).double().numpy(), labels.numpy(), 3)
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-6)


def test_sum_reduction_is_the_authors_sum_over_pairs():
    z, labels = batch(per_class=(3, 3, 3, 3, 3), dim=5, seed=4)
    value = FStatisticLoss(d=2, reduction="sum")(z, labels)
    expected = reference_loss(z.numpy(), labels.numpy(), 2, reduction="sum")
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=0)
    torch.testing.assert_close(value / 10, FStatisticLoss(d=2)(z, labels))  # 5 classes: 10 pairs


def test_gradient_matches_finite_differences_of_scipy_reference():
    z, labels = batch(per_class=(3, 4, 3), dim=5, seed=5)
    _, grad = value_and_grad(lambda x: FStatisticLoss(d=2)(x, labels), z)
    expected = numeric_grad(z.numpy(), labels.numpy(), 2)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("d", [1, 3])
def test_loss_gradcheck_float64(d):
    z, labels = batch(per_class=(3, 4, 2, 5), dim=6, seed=6 + d)
    x = z.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: FStatisticLoss(d=d)(t, labels), (x,))


def test_only_the_d_best_dimensions_get_gradient():
    z, labels = batch(per_class=(4, 4), dim=6, seed=9)
    _, grad = value_and_grad(lambda x: FStatisticLoss(d=2)(x, labels), z)
    assert (grad.abs().sum(dim=0) > 0).sum().item() == 2


def test_well_separated_and_identical_dimensions_are_clipped():
    """Dimension 0 separates the classes perfectly (no within-class spread: x = 1), dimension 1 has
    equal class means (x = 0): both are clipped, so the value is finite and they get no gradient."""
    z = torch.tensor([[0.0, 1.0, 0.3], [0.0, -1.0, -0.2], [0.0, 0.5, 0.1],
                      [2.0, 1.0, 0.4], [2.0, -1.0, 0.9], [2.0, 0.5, 0.2]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    value, grad = value_and_grad(lambda x: FStatisticLoss(d=3)(x, labels), z)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert grad[:, 0].abs().max() == 0 and grad[:, 1].abs().max() == 0 and grad[:, 2].abs().max() > 0
    torch.testing.assert_close(value, torch.tensor(reference_loss(z.numpy(), labels.numpy(), 3), dtype=torch.float64))


def test_classes_with_one_image_are_left_out():
    z, labels = batch(per_class=(1, 1, 3), dim=4, seed=10)
    value, grad = value_and_grad(lambda x: FStatisticLoss(d=1)(x, labels), z)  # a single usable class: no pair
    assert value.item() == 0.0 and torch.count_nonzero(grad) == 0
    z, labels = batch(per_class=(1, 4, 3), dim=4, seed=11)
    torch.testing.assert_close(FStatisticLoss(d=1)(z, labels),
                               torch.tensor(reference_loss(z.numpy(), labels.numpy(), 1), dtype=torch.float64))


def test_finite_gradients_with_duplicated_embeddings():
    z, labels = batch(per_class=(2, 4, 4, 3), dim=8, seed=12, dtype=torch.float32)
    first = (labels == 0).nonzero().flatten()
    z[first[1]] = z[first[0]]  # a class whose two images coincide: no within-class spread
    value, grad = value_and_grad(lambda x: FStatisticLoss(d=2)(F.normalize(x), labels), z)
    assert torch.isfinite(value) and torch.isfinite(grad).all() and value > 0


def test_bad_arguments_fail_clearly():
    for d in (0, -1, 2.5, True, "2"):
        with pytest.raises(ConfigError, match="d .* must be a positive integer"):
            FStatisticLoss(d=d)
    with pytest.raises(ConfigError, match="d=9 exceeds embedding_dim=8"):
        FStatisticLoss(d=9, embedding_dim=8)
    with pytest.raises(ConfigError, match="d=5 exceeds the embedding dimension 4"):
        FStatisticLoss(d=5)(torch.randn(6, 4), torch.tensor([0, 0, 0, 1, 1, 1]))
    with pytest.raises(ConfigError, match="valid reductions"):
        FStatisticLoss(reduction="mean_of_logs")


def test_registered_contract():
    assert FStatisticLoss.consumes == "batch" and FStatisticLoss.needs_positives
    loss = FStatisticLoss()
    assert loss.d == 2 and loss.reduction == "mean" and list(loss.parameters()) == []
