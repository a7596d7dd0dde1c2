"""Embedding diagnostics against a plain numpy / scipy reference (Roth et al.'s definitions)."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import entropy

from dmlbench.evaluation.diagnostics import class_distances, diagnostics, spectral_decay


def reference(x, y):
    s = np.linalg.svd(x, compute_uv=False)
    s = s / s.sum()
    rho = entropy(np.full(len(s), 1 / len(s)), s)
    intra = []
    for c in np.unique(y):
        members = x[y == c]
        if len(members) < 2:
            continue
        d = cdist(members, members, "cosine")
        intra.append(d.sum() / (len(d) ** 2 - len(d)))
    centres = np.stack([x[y == c].mean(axis=0) for c in np.unique(y)])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    d = cdist(centres, centres, "cosine")
    inter = d.sum() / (len(d) ** 2 - len(d))
    return rho, np.mean(intra), inter


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diagnostics_equal_the_reference(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, size=120)
    y[:3] = 99  # and a singleton class
    y[3] = 100
    x = rng.normal(size=(7 + 2, 16))[np.searchsorted(np.unique(y), y) % 9] + 0.8 * rng.normal(size=(120, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rho, intra, inter = reference(x, y)
    got = diagnostics(x, y)
    assert got["spectral_decay"] == pytest.approx(rho, abs=1e-10)
    assert got["intra_class_distance"] == pytest.approx(intra, abs=1e-10)
    assert got["inter_class_distance"] == pytest.approx(inter, abs=1e-10)
    assert got["intra_over_inter"] == pytest.approx(intra / inter, abs=1e-10)
    assert got["classes_with_pairs"] == len(np.unique(y)) - 1  # the singleton is left out


def test_spectral_decay_grows_with_compression():
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(2000, 32))
    squeezed = spread * np.r_[np.ones(2), np.full(30, 0.05)]
    assert spectral_decay(spread) < 0.05 < spectral_decay(squeezed)
    assert spectral_decay(squeezed, skip_largest=2) < spectral_decay(squeezed)


def test_tight_classes_have_small_intra_distance():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 8))
    y = np.repeat(np.arange(5), 20)
    tight = class_distances(centres[y] + 0.01 * rng.normal(size=(100, 8)), y)
    loose = class_distances(centres[y] + 1.0 * rng.normal(size=(100, 8)), y)
    assert tight["intra_over_inter"] < 0.01 < loose["intra_over_inter"]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="NaN"):
        diagnostics(np.array([[np.nan, 1.0], [1.0, 0.0]]), [0, 1])
    with pytest.raises(ValueError, match="two or more classes"):
        class_distances(np.eye(3), [1, 1, 1])
    with pytest.raises(ValueError, match="zero vector"):
        class_distances(np.zeros((3, 2)), [0, 1, 1])
    with pytest.raises(ValueError, match="3 embeddings but 2 labels"):
        class_distances(np.eye(3), [0, 1])


def test_distances_the_classes_cannot_give_are_none_with_a_reason():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4))
    got = diagnostics(x, np.arange(6))  # six singletons: no intra-class pair
    assert got["intra_class_distance"] is None and got["intra_over_inter"] is None
    assert "two or more items" in got["note"] and got["spectral_decay"] > 0
    with pytest.raises(ValueError, match="NaN"):  # bad input still fails
        diagnostics(np.full((3, 2), np.nan), [0, 1, 2])
