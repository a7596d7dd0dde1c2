"""F-statistic loss (Ridgeway & Mozer, "Learning Deep Disentangled Embeddings With the F-Statistic
Loss", NeurIPS 2018).

For each pair of classes (s, t) present in the batch with at least two images each (n_s, n_t
images), and for each embedding dimension k, the one-way ANOVA statistic between the two classes

    F_k = (n_s + n_t - 2) · SS_between,k / SS_within,k,   SS_between = n_s n_t / (n_s + n_t) · (mean_s - mean_t)²

is F(1, n_s + n_t - 2)-distributed when the two class means are equal, so its CDF p_k is the
probability that the classes are separated on dimension k. The pair's loss keeps only the d
dimensions that separate the pair best (largest p_k) and is -Σ_{top d} log p_k, so the classes need
to be separated on some dimensions, not on all (the source of disentangling):

    L = mean over class pairs of  -Σ_{k ∈ top-d(p)} log p_k

Combination rule, clamping and defaults follow the authors' code (github.com/kridgeway/
f-statistic-loss-nips-2018, loss/f_statistic_loss.py): the CDF is evaluated as the regularised
incomplete beta function I_x(1/2, (n_s + n_t - 2)/2) of x = SS_between / (SS_between + SS_within),
with x clipped to [1e-37, 1 - 1e-5] (a clipped x gets no gradient: well separated dimensions stop
pulling, and identical class means do not give log 0); the d largest CDFs of each pair are kept
(``top_k``) and their logs summed. The number of dimensions ``d`` is a per-dataset hyperparameter in
the paper's configurations: 2 for the disentangling experiments (Sprites, small NORB; 20-22-dim
embeddings), 3 / 63 / 70 for CUB-200 / Market-1501 / CUHK03 (500-dim embeddings); the default here
is 2. The authors L2-normalise nothing (``-l2_normalize 0``); this project's models do, and F_k is
computed on those embeddings as they are.

Deliberate differences from the authors' code: (1) they sum over class pairs; the default
``reduction="mean"`` averages (``reduction="sum"`` is theirs; same gradient direction); (2) their
between-class term measures each class mean from the midpoint of the two means, which is the ANOVA
statistic only when n_s = n_t; here the grand mean is the weighted one, the textbook statistic
(identical for the P x K batches of this project). No pytorch-metric-learning counterpart exists.

Torch has no incomplete beta function, so the F(1, ν) CDF is :class:`FCDF1`, an autograd Function
whose forward evaluates the closed-form finite series of Student's t distribution (Abramowitz &
Stegun 26.7.3-26.7.4; for integer ν, P(F ≤ f) = P(|T_ν| ≤ √f)) in float64 on the input's device,
and whose backward multiplies by the closed-form F(1, ν) density.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from .base import LOSSES, Loss

X_MIN = 1e-37  # clip of x = SS_b / (SS_b + SS_w), as in the authors' code
X_MAX = 1.0 - 1e-5


def _f1_cdf_series(f: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
    """P(F ≤ f) for F ~ F(1, ν), ν a positive integer; float64 tensors of one shape, f >= 0.

    With θ = atan(√(f/ν)) (so sin²θ = f/(f+ν), cos²θ = ν/(f+ν)) the CDF is the probability that
    |T_ν| ≤ √f, a finite sum of positive terms:

        ν even:  sinθ · Σ_{k<ν/2} c_k cos^{2k}θ,                     c_k = Γ(k+1/2) / (Γ(1/2) k!)
        ν odd:   2/π · (θ + sinθ cosθ · Σ_{k<(ν-1)/2} e_k cos^{2k}θ),  e_k = k! Γ(3/2) / Γ(k+3/2)
    """
    odd = torch.remainder(nu, 2) == 1
    terms = torch.where(odd, (nu - 1) / 2, nu / 2)  # number of series terms of each element
    n_terms = int(terms.max().item()) if terms.numel() else 0
    theta = torch.atan(torch.sqrt(f / nu))
    sin, cos = torch.sin(theta), torch.cos(theta)
    if n_terms:
        k = torch.arange(n_terms, dtype=f.dtype, device=f.device)  # (T,)
        log_c = torch.lgamma(k + 0.5) - math.lgamma(0.5) - torch.lgamma(k + 1.0)  # (T,)
        log_e = torch.lgamma(k + 1.0) + math.lgamma(1.5) - torch.lgamma(k + 1.5)  # (T,)
        log_coef = torch.where(odd[..., None], log_e, log_c)  # (..., T)
        log_cos2 = 2.0 * torch.log(cos)  # (...,) cos > 0 for finite f
        power = k * log_cos2[..., None]  # (..., T): log cos^{2k}θ (0 at k = 0 even where cos underflows)
        power = torch.where(k == 0, torch.zeros_like(power), power)
        kept = k < terms[..., None]  # (..., T)
        series = torch.where(kept, torch.exp(log_coef + power), torch.zeros_like(power)).sum(dim=-1)  # (...,)
    else:
        series = torch.zeros_like(f)
    even_cdf = sin * series
    odd_cdf = (2.0 / math.pi) * (theta + sin * cos * series)
    return torch.where(odd, odd_cdf, even_cdf)


def f1_log_pdf(f: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
    """log density of F(1, ν) at f > 0 (any dtype; ν may be fractional)."""
    return (torch.lgamma((nu + 1) / 2) - math.lgamma(0.5) - torch.lgamma(nu / 2) - 0.5 * torch.log(nu)
            - 0.5 * torch.log(f) - (nu + 1) / 2 * torch.log1p(f / nu))


class FCDF1(torch.autograd.Function):
    """CDF of the F(1, ν) distribution at f, differentiable in f; ν (positive integers, same shape
    as f or broadcastable) gets no gradient. Computed in float64 on f's device, returned in f's
    dtype. The derivative at f = 0 is infinite (the density diverges there); callers keep f > 0."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
        f64 = f.detach().to(torch.float64)
        nu64 = torch.broadcast_to(nu.detach().to(device=f.device, dtype=torch.float64), f.shape)
        if torch.any(nu64 < 1) or torch.any(nu64 != torch.round(nu64)):
            raise ValueError("FCDF1 needs positive integer degrees of freedom")
        if torch.any(f64 < 0) or torch.any(torch.isnan(f64)):
            raise ValueError("FCDF1 needs f >= 0")
        cdf = torch.where(torch.isinf(f64), torch.ones_like(f64), _f1_cdf_series(f64.clamp_max(torch.finfo(torch.float64).max), nu64))
        ctx.save_for_backward(f64, nu64)
        ctx.input_dtype = f.dtype
        return cdf.clamp(0.0, 1.0).to(f.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        f64, nu64 = ctx.saved_tensors
        density = torch.exp(f1_log_pdf(f64, nu64))
        return (grad_output.to(torch.float64) * density).to(ctx.input_dtype), None


def f1_cdf(f: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
    """P(F ≤ f) for F ~ F(1, ν), differentiable in f."""
    return FCDF1.apply(f, nu)


@LOSSES.register("f-statistic")
class FStatisticLoss(Loss):
    """F-statistic loss (Ridgeway & Mozer 2018): each class pair separated on its d best dimensions."""

    consumes = "batch"
    needs_positives = True

    def __init__(self, d: int = 2, embedding_dim: int | None = None, reduction: str = "mean"):
        super().__init__(reduction)
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ConfigError(f"f-statistic d (number of dimensions that must separate each class pair) must be a "
                              f"positive integer, got {d!r}")
        if embedding_dim is not None and d > embedding_dim:
            raise ConfigError(f"f-statistic d={d} exceeds embedding_dim={embedding_dim}; choose d <= embedding_dim")
        self.d = d

    def terms(self, embeddings, labels, mined):
        n_dims = embeddings.shape[1]
        if self.d > n_dims:
            raise ConfigError(f"f-statistic d={self.d} exceeds the embedding dimension {n_dims}")
        classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)  # (C,), (B,), (C,)
        n_classes = len(classes)
        one_hot = torch.zeros(n_classes, len(labels), dtype=embeddings.dtype, device=embeddings.device)  # (C, B)
        one_hot[inverse, torch.arange(len(labels), device=embeddings.device)] = 1.0
        n = counts.to(embeddings.dtype)  # (C,)
        means = (one_hot @ embeddings) / n[:, None]  # (C, D)
        within = one_hot @ (embeddings - one_hot.T @ means) ** 2  # (C, D): sum of squares about the class mean
        a, b = torch.triu_indices(n_classes, n_classes, offset=1, device=embeddings.device)  # (Q,), (Q,) class pairs
        keep = (counts[a] >= 2) & (counts[b] >= 2)
        a, b = a[keep], b[keep]
        if len(a) == 0:
            return {"class_pairs": embeddings.new_zeros(0)}
        # Pair-incidence matrices instead of gathers: their backward is a matrix product, not a scatter.
        eye = torch.eye(n_classes, dtype=embeddings.dtype, device=embeddings.device)
        first, second = eye[a], eye[b]  # (Q, C), (Q, C) one-hot rows of each pair's classes
        n_a, n_b = n[a][:, None], n[b][:, None]  # (Q, 1)
        between = n_a * n_b / (n_a + n_b) * ((first - second) @ means) ** 2  # (Q, D)
        total = (between + (first + second) @ within).clamp_min(torch.finfo(embeddings.dtype).tiny)  # (Q, D)
        x = (between / total).clamp(X_MIN, X_MAX)  # (Q, D) = F / (F + ν), clipped as the authors do
        best_x, _ = torch.topk(x, self.d, dim=1)  # (Q, d): the CDF is increasing in x for a fixed pair
        nu = (n_a + n_b - 2.0).expand_as(best_x)  # (Q, d) denominator degrees of freedom
        f_stat = nu * best_x / (1.0 - best_x)  # (Q, d) the ANOVA F statistics
        p = f1_cdf(f_stat, nu)  # (Q, d) probability that the pair is separated on each dimension
        return {"class_pairs": -torch.log(p).sum(dim=1)}  # (Q,)
