"""dmlbench.evaluation.kmeans reproduces faiss's k-means bit for bit while computing fewer distances."""

import faiss
import numpy as np
import pytest
import torch

from dmlbench.evaluation.kmeans import KMEANS_SEED, compute_centroids, kmeans
from dmlbench.evaluation.metrics import faiss_kmeans_clusters


def blobs(n, dim, k, noise, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    centers = rng.normal(size=(k, dim)).astype(np.float32)
    x = (centers[labels] + noise * rng.normal(size=(n, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def faiss_clustering(x, k, niter, init=None, max_points_per_centroid=256):
    clustering = faiss.Clustering(x.shape[1], k)
    clustering.niter = niter
    clustering.seed = KMEANS_SEED
    clustering.max_points_per_centroid = max_points_per_centroid
    if init is not None:
        faiss.copy_array_to_vector(np.ascontiguousarray(init, dtype=np.float32).ravel(), clustering.centroids)
    index = faiss.IndexFlatL2(x.shape[1])
    clustering.train(x, index)
    _, assignment = index.search(x, 1)
    centroids = faiss.vector_to_array(clustering.centroids).reshape(k, -1)
    return assignment[:, 0], centroids


@pytest.mark.parametrize("n,dim,k,noise,niter", [
    (2000, 32, 40, 0.5, 20), (3000, 64, 300, 1.5, 20), (500, 8, 5, 1.0, 20), (1500, 16, 60, 1.0, 1), (1500, 16, 60, 1.0, 3),
])
def test_same_centroids_and_assignment_as_faiss(n, dim, k, noise, niter):
    x = blobs(n, dim, k, noise, seed=n + k)
    ours = kmeans(x, k, iterations=niter)
    assignment, centroids = faiss_clustering(x, k, niter)
    np.testing.assert_array_equal(ours.centroids, centroids)
    np.testing.assert_array_equal(ours.assignment, assignment)
    assert 1 <= ours.iterations <= niter


def test_subsampling_follows_faiss_kmeans_defaults():
    """More than 256 points per centroid: faiss trains on its seeded sample, then assigns all."""
    x = blobs(3000, 8, 4, 0.8, seed=1)
    ours = kmeans(x, 4)
    np.testing.assert_array_equal(ours.assignment, faiss_kmeans_clusters(x, 4))
    assignment, centroids = faiss_clustering(x, 4, 20)
    np.testing.assert_array_equal(ours.centroids, centroids)
    everything = kmeans(x, 4, max_points_per_centroid=10**7)
    np.testing.assert_array_equal(everything.centroids, faiss_clustering(x, 4, 20, max_points_per_centroid=10**7)[1])


def test_empty_clusters_are_split_as_faiss_splits_them():
    x = blobs(1200, 16, 30, 0.6, seed=5)
    rng = np.random.default_rng(0)
    init = x[rng.choice(len(x), 30, replace=False)].copy()
    init[:8] = 50 + rng.normal(size=(8, 16))  # far from every point: these clusters start empty
    ours = kmeans(x, 30, iterations=1, init=init)
    assignment, centroids = faiss_clustering(x, 30, 1, init=init)
    assert ours.splits == 8
    np.testing.assert_array_equal(ours.centroids, centroids)
    np.testing.assert_array_equal(ours.assignment, assignment)
    ours = kmeans(x, 30, iterations=20, init=init)
    assignment, centroids = faiss_clustering(x, 30, 20, init=init)
    np.testing.assert_array_equal(ours.centroids, centroids)
    np.testing.assert_array_equal(ours.assignment, assignment)


def test_centroids_are_sequential_float32_sums():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 8)).astype(np.float32) * np.float32(1e3) + np.float32(1e-3)
    assignment = rng.integers(0, 7, 400)
    expected = np.zeros((7, 8), dtype=np.float32)
    for point, cluster in zip(x, assignment):
        expected[cluster] += point
    expected *= (np.float32(1) / np.bincount(assignment).astype(np.float32))[:, None]
    centroids, counts = compute_centroids(x, assignment, 7)
    np.testing.assert_array_equal(centroids, expected)
    np.testing.assert_array_equal(counts, np.bincount(assignment))


def test_only_moved_centroids_are_recomputed():
    x = blobs(4000, 32, 50, 0.3, seed=3)
    result = kmeans(x, 50)
    assert result.distance_fraction < 0.6
    assert result.iterations < 20  # converged: a fixed point ends the loop early
    assert result.objectives == sorted(result.objectives, reverse=True)


def test_exact_ties_go_to_the_lower_centroid():
    x = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 0.0], [10.0, 0.0]], dtype=np.float32)
    init = np.array([[10.0, 0.0], [2.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    result = kmeans(x, 3, iterations=1, init=init)
    # the points at 1.0 are equidistant from centroids 1 (at 2.0) and 2 (at 0.0): lower index wins
    assert result.assignment.tolist()[2:4] == [1, 1]


def test_as_many_points_as_clusters_and_torch_input():
    x = torch.randn(6, 3)
    result = kmeans(x, 6)
    assert result.iterations == 0
    assert sorted(result.assignment.tolist()) == list(range(6))


@pytest.mark.parametrize("args,kwargs,message", [
    ((np.zeros((3, 2), np.float32), 4), {}, r"1 <= k <= number of points \(3\)"),
    ((np.zeros((0, 2), np.float32), 1), {}, "non-empty 2-D"),
    ((np.array([[np.nan, 0.0], [1.0, 1.0]], np.float32), 1), {}, "NaN or infinite"),
    ((np.ones((5, 2), np.float32), 2), {"iterations": 0}, "iterations must be at least 1"),
    ((np.ones((5, 2), np.float32), 2), {"init": np.ones((3, 2))}, r"init must have shape \(2, 2\)"),
])
def test_bad_input(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        kmeans(*args, **kwargs)


def near_tie_points(k: int = 40, dim: int = 48, seed: int = 7):
    """k initial centroids, points near them, and points planted half-way between two of them (up to
    float32 rounding): (k, init, midpoints, all points)."""
    rng = np.random.default_rng(seed)
    init = rng.normal(size=(k, dim)).astype(np.float32)
    pairs = rng.integers(0, k, size=(300, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    midpoints = ((init[pairs[:, 0]] + init[pairs[:, 1]]) / 2).astype(np.float32)
    midpoints += rng.normal(size=midpoints.shape).astype(np.float32) * np.float32(1e-7)
    x = np.concatenate([init + rng.normal(size=(k, dim)).astype(np.float32) * 0.3, midpoints]).astype(np.float32)
    return k, init, midpoints, x


@pytest.mark.parametrize("tile", [4096, 64])
def test_near_ties_are_settled_by_faiss_on_its_own_tiles(tile):
    """Points planted half-way between two centroids (up to float32 rounding) get faiss's answer."""
    k, init, midpoints, x = near_tie_points()
    previous = faiss.cvar.distance_compute_blas_query_bs
    faiss.cvar.distance_compute_blas_query_bs = tile
    try:
        ours = kmeans(x, k, iterations=1, init=init)
        assignment, centroids = faiss_clustering(x, k, 1, init=init)
        loose = kmeans(x, k, iterations=1, init=init, match_faiss=False)
    finally:
        faiss.cvar.distance_compute_blas_query_bs = previous
    assert ours.near_ties_settled >= len(midpoints)
    assert loose.near_ties_settled == 0
    np.testing.assert_array_equal(ours.centroids, centroids)
    np.testing.assert_array_equal(ours.assignment, assignment)


# Small problems are clustered with faiss's own search (FAISS_SEARCH_BELOW); faiss_search_below=0
# runs our incremental search on them too, so that it is checked against faiss as well.

@pytest.mark.parametrize("n,dim,k,noise,niter", [
    (2000, 32, 40, 0.5, 20), (3000, 64, 300, 1.5, 20), (500, 8, 5, 1.0, 20), (1500, 16, 60, 1.0, 3),
])
def test_our_own_search_gives_faiss_clusters_too(n, dim, k, noise, niter):
    x = blobs(n, dim, k, noise, seed=n + k)
    ours = kmeans(x, k, iterations=niter, faiss_search_below=0)
    assignment, centroids = faiss_clustering(x, k, niter)
    np.testing.assert_array_equal(ours.centroids, centroids)
    np.testing.assert_array_equal(ours.assignment, assignment)
    assert ours.distance_fraction > 0


def test_our_own_search_subsamples_and_splits_as_faiss():
    x = blobs(3000, 8, 4, 0.8, seed=1)
    np.testing.assert_array_equal(kmeans(x, 4, faiss_search_below=0).assignment, faiss_kmeans_clusters(x, 4))
    x = blobs(1200, 16, 30, 0.6, seed=5)
    rng = np.random.default_rng(0)
    init = x[rng.choice(len(x), 30, replace=False)].copy()
    init[:8] = 50 + rng.normal(size=(8, 16))
    ours = kmeans(x, 30, iterations=20, init=init, faiss_search_below=0)
    assignment, centroids = faiss_clustering(x, 30, 20, init=init)
    np.testing.assert_array_equal(ours.centroids, centroids)
    np.testing.assert_array_equal(ours.assignment, assignment)


def test_our_own_search_recomputes_only_moved_centroids():
    result = kmeans(blobs(4000, 32, 50, 0.3, seed=3), 50, faiss_search_below=0)
    assert 0 < result.distance_fraction < 0.6
    assert result.iterations < 20


def test_small_problems_take_every_assignment_from_faiss():
    x = blobs(2000, 32, 40, 0.5, seed=2040)
    result = kmeans(x, 40)
    assert result.distance_fraction == 0  # no distance computed by us
    assert result.near_ties_settled % 2000 == 0 and result.near_ties_settled >= 2000 * result.iterations
    assert kmeans(x, 40, faiss_search_below=2000 * 40 - 1).distance_fraction > 0


def test_a_fixed_point_ends_with_the_last_assignment():
    x = blobs(1500, 16, 20, 0.3, seed=8)
    for below in (0, 10**9):
        result = kmeans(x, 20, faiss_search_below=below)
        assert result.iterations < 20
        np.testing.assert_array_equal(result.assignment, faiss_kmeans_clusters(x, 20))


@pytest.mark.parametrize("tile", [4096, 64])
def test_our_own_search_settles_near_ties_on_faiss_tiles(tile):
    k, init, midpoints, x = near_tie_points()
    previous = faiss.cvar.distance_compute_blas_query_bs
    faiss.cvar.distance_compute_blas_query_bs = tile
    try:
        ours = kmeans(x, k, iterations=3, init=init, faiss_search_below=0)
        assignment, centroids = faiss_clustering(x, k, 3, init=init)
    finally:
        faiss.cvar.distance_compute_blas_query_bs = previous
    assert len(midpoints) <= ours.near_ties_settled < 4 * len(x)  # not every point: only the near ties
    np.testing.assert_array_equal(ours.centroids, centroids)
    np.testing.assert_array_equal(ours.assignment, assignment)
