"""Helpers shared by the loss tests: random batches, values and gradients, and the comparison of a
loss with its reference (a slow loop or pytorch-metric-learning).

Embeddings are raw (not normalised). Our losses see ``F.normalize(x)`` (the models normalise);
pytorch-metric-learning normalises inside its distance, so gradients with respect to the raw ``x``
are comparable. Every draw comes from a ``torch.Generator`` seeded by the caller, so a test sees the
same numbers on every run.
"""

import math

import torch

from dmlbench.geometry.tuples import Pairs, Triplets

VALUE_RTOL, VALUE_ATOL = 1e-5, 1e-6  # a loss value against its reference, in every loss test


def batch(n=24, dim=16, classes=5, seed=0, dtype=torch.float32):
    """``(n, dim)`` raw embeddings drawn in ``dtype`` and ``(n,)`` labels in ``0..classes-1``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def batch_with_weights(n=24, dim=16, classes=6, seed=0, dtype=torch.float32, present=None, opposite=0,
                       weight_scale=1.0):
    """Raw embeddings, labels and raw ``(classes, dim)`` class vectors (weights, proxies or centres).

    Everything is drawn in float64 and then cast to ``dtype``, so the float32 and float64 batches of a
    seed hold the same numbers up to rounding. ``present``: labels come from the first ``present``
    classes only (all by default). ``opposite``: the first ``opposite`` embeddings point almost away
    from their class vector (an angle close to pi). ``weight_scale`` multiplies the class vectors.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, present or classes, (n,), generator=g)
    weights = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    for i in range(opposite):
        w = weights[labels[i]]
        x[i] = -w + 0.15 * torch.linalg.vector_norm(w) * torch.randn(dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    return x.to(dtype), labels, weights.to(dtype) * weight_scale


def value_and_grad(fn, embeddings):
    """``fn(x)`` (detached) and its gradient with respect to ``x``, a fresh leaf copy of ``embeddings``."""
    x = embeddings.clone().requires_grad_(True)
    value = fn(x)
    value.backward()
    return value.detach(), x.grad


def value_and_grads(fn, embeddings, *params):
    """``fn(x)`` (detached), its gradient with respect to ``x`` (a fresh leaf copy of ``embeddings``)
    and a copy of its gradient with respect to each of ``params`` (learnt proxies, class weights...),
    whose earlier gradients are dropped first."""
    x = embeddings.clone().requires_grad_(True)
    for p in params:
        p.grad = None
    value = fn(x)
    value.backward()
    return (value.detach(), x.grad, *(p.grad.clone() for p in params))


def assert_same_value_and_grad(ours, reference, embeddings, *, grad_rtol=1e-5, grad_atol=1e-6,
                               relative_grad_atol=False, nonzero=False):
    """``ours(x)`` and ``reference(x)`` agree in value (rtol 1e-5, atol 1e-6) and in their gradient with
    respect to the raw embeddings (``grad_rtol``, ``grad_atol``).

    ``relative_grad_atol``: the gradients' atol is ``grad_atol`` times the largest reference gradient,
    for losses whose float32 rounding grows with the gradients' size (e.g. under reduction="sum").
    ``nonzero``: also require a positive value and a gradient that is not all zero, so that the
    comparison is not between two zeros. Returns our value and gradient.
    """
    value, grad = value_and_grad(ours, embeddings)
    ref_value, ref_grad = value_and_grad(reference, embeddings)
    torch.testing.assert_close(value, ref_value, rtol=VALUE_RTOL, atol=VALUE_ATOL)
    atol = grad_atol * ref_grad.abs().max().item() if relative_grad_atol else grad_atol
    torch.testing.assert_close(grad, ref_grad, rtol=grad_rtol, atol=atol)
    if nonzero:
        assert value > 0 and grad.abs().sum() > 0
    return value, grad


def assert_same_value_and_grads(ours, reference, embeddings, params, ref_params, *, transposed=False):
    """Value, embedding gradient and parameter gradients of ``ours`` and ``reference`` agree (rtol 1e-5,
    atol 1e-6), ``params[k]`` against ``ref_params[k]`` (a single parameter may be given bare).

    ``transposed``: the reference stores its parameters transposed (pytorch-metric-learning keeps
    class weights ``W`` as ``(dim, classes)``), so their gradients are compared through ``.T``.
    Returns our value, embedding gradient and parameter gradients.
    """
    params = (params,) if isinstance(params, torch.Tensor) else tuple(params)
    ref_params = (ref_params,) if isinstance(ref_params, torch.Tensor) else tuple(ref_params)
    assert len(params) == len(ref_params)
    value, grad, *param_grads = value_and_grads(ours, embeddings, *params)
    ref_value, ref_grad, *ref_param_grads = value_and_grads(reference, embeddings, *ref_params)
    torch.testing.assert_close(value, ref_value, rtol=VALUE_RTOL, atol=VALUE_ATOL)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    for ours_grad, ref_param_grad in zip(param_grads, ref_param_grads):
        torch.testing.assert_close(ours_grad, ref_param_grad.T if transposed else ref_param_grad, rtol=1e-5, atol=1e-6)
    return (value, grad, *param_grads)


def as_tuple(tuples):
    """pytorch-metric-learning's indices tuple for mined ``Pairs`` (pos_a, pos_b, neg_a, neg_b) or
    ``Triplets`` (anchor, positive, negative)."""
    if isinstance(tuples, Triplets):
        return tuples.anchor, tuples.positive, tuples.negative
    return tuples.pos_a, tuples.pos_b, tuples.neg_a, tuples.neg_b


def shuffled_subset(pairs, keep, seed):
    """A miner-like choice: a random ``keep`` fraction of the positive and of the negative pairs (at
    least one of each), in random order, with the first five chosen negative pairs repeated."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randperm(len(pairs.pos_a), generator=g)[: max(1, int(keep * len(pairs.pos_a)))]
    neg = torch.randperm(len(pairs.neg_a), generator=g)[: max(1, int(keep * len(pairs.neg_a)))]
    neg = torch.cat([neg, neg[:5]])
    return Pairs(pairs.pos_a[pos], pairs.pos_b[pos], pairs.neg_a[neg], pairs.neg_b[neg])
