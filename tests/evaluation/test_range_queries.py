"""Range queries and the similarity self-join on every family, against brute force (ties and boundary
distances included); the book's accuracy measures on answers worked by hand; the distance
distribution's statistics; faiss's distance counts; the catalogue's named tests exist."""

import ast
from pathlib import Path

import numpy as np
import pytest

from dmlbench.evaluation.indexes import FAMILIES, IndexSpec, build_index
from dmlbench.evaluation.indexes.catalogue import PROOFS, QUERY_TYPES, STRUCTURES
from dmlbench.evaluation.indexes.distribution import distance_statistics, pair_distances
from dmlbench.evaluation.indexes.join import self_join
from dmlbench.evaluation.indexes.measure import Positions, distance_ratio_error
from dmlbench.evaluation.indexes.pivots import _exact_distances
from tests.evaluation.test_indexes import random_unit_vectors, tied_unit_vectors

EXACT = [name for name, family in FAMILIES.items() if family.exact]
APPROXIMATE = [name for name, family in FAMILIES.items() if not family.exact]
ROOT = Path(__file__).resolve().parents[2]


def brute_range(queries, items, radius, exclude=None):
    """Each query's items within ``radius`` by float64 distances (the boundary in), by (distance, id)."""
    d = _exact_distances(queries.astype(np.float64), items.astype(np.float64))
    if exclude is not None:
        d[np.arange(len(queries)), exclude] = np.inf
    out = []
    for row in d:
        inside = np.flatnonzero(row <= radius)
        out.append(inside[np.lexsort((inside, row[inside]))])
    return out, d


def spec_of(family):
    return IndexSpec.make(family, **({"nlist": 16, "sweep": [8]} if family in ("ivf-flat", "ivf-pq") else {}))


@pytest.mark.parametrize("family", EXACT)
def test_every_exact_family_answers_range_queries_as_brute_force(family):
    items = tied_unit_vectors()  # distances take few values, exactly; rows 80-89 repeat rows 0-9
    queries, exclude = items[:40], np.arange(40)
    index = build_index(IndexSpec.make(family), items)
    _, d = brute_range(queries, items, 0.0, exclude)
    boundary = np.unique(d[np.isfinite(d)])  # every distance that occurs: each radius has items exactly on it
    for radius in [0.0, *boundary[1:4], float(np.median(boundary))]:
        expected, _ = brute_range(queries, items, radius, exclude)
        found, dists, computed = index.range_search(queries, radius, exclude=exclude)
        assert [f.tolist() for f in found] == [e.tolist() for e in expected], f"{family} at radius {radius}"
        assert all((dd <= radius).all() and (np.diff(dd) >= 0).all() for dd in dists)
        assert sum(len(e) for e in expected) > 0 or radius == 0.0
        if FAMILIES[family].counts_distances:
            assert computed is not None and (computed >= 1).all()
    # radius 0 finds a query's duplicates (rows 0-9 and 80-89), and nothing else
    found, _, _ = index.range_search(queries[:10], 0.0, exclude=exclude[:10])
    assert [f.tolist() for f in found] == [[80 + i] for i in range(10)]
    on_random = random_unit_vectors(400, 8, 5)
    index = build_index(IndexSpec.make(family), on_random)
    expected, _ = brute_range(on_random[:20], on_random, 0.9)
    found, _, _ = index.range_search(on_random[:20], 0.9)
    assert [f.tolist() for f in found] == [e.tolist() for e in expected]


@pytest.mark.parametrize("family", EXACT)
def test_a_self_join_through_an_exact_index_finds_the_brute_force_pairs(family):
    items = tied_unit_vectors(120, 8, 3)
    d = _exact_distances(items.astype(np.float64), items.astype(np.float64))
    radius = float(np.unique(d)[2])  # the third smallest distance that occurs: pairs lie on the boundary
    i, j = np.nonzero(np.triu(d <= radius, 1))
    order = np.lexsort((j, i, d[i, j]))
    pairs, dists, computed = self_join(build_index(IndexSpec.make(family), items), items, radius, block=50)
    assert len(pairs) > 10
    np.testing.assert_array_equal(pairs, np.stack([i[order], j[order]], 1))
    np.testing.assert_array_equal(dists, d[i[order], j[order]])
    if FAMILIES[family].counts_distances:
        assert computed is not None and computed <= len(items) * len(items) * 1.1


@pytest.mark.parametrize("family", APPROXIMATE)
def test_an_approximate_family_answers_range_queries_near_brute_force(family):
    items = random_unit_vectors(2000, 16, 7)
    queries = random_unit_vectors(50, 16, 8)
    index = build_index(spec_of(family), items)
    expected, _ = brute_range(queries, items, 0.8)
    setting = {"ef_search": 128} if family == "hnsw" else {"nprobe": 8} if family.startswith("ivf") else {}
    found, dists, computed = index.range_search(queries, 0.8, setting)
    hits = sum(len(np.intersect1d(f, e)) for f, e in zip(found, expected))
    wanted, given = sum(len(e) for e in expected), sum(len(f) for f in found)
    assert wanted > 100
    floor = 0.5 if family in ("pq", "ivf-pq") else 0.9  # product codes are coarse at 16 dimensions
    assert hits / wanted > floor and hits / given > floor
    assert all((np.diff(dd) >= 0).all() for dd in dists)
    assert computed is not None and (computed > 0).all()


def test_faiss_counts_the_distances_of_an_ivf_scan_and_of_an_hnsw_walk():
    items, queries = random_unit_vectors(3000, 16, 1), random_unit_vectors(20, 16, 2)
    ivf = build_index(IndexSpec.make("ivf-flat", nlist=16, sweep=[16]), items)
    _, _, all_lists = ivf.search(queries, 10, {"nprobe": 16})
    np.testing.assert_allclose(all_lists, 3000 + 16)  # every code scanned, plus the 16 centroids
    _, _, one_list = ivf.search(queries, 10, {"nprobe": 1})
    assert (one_list < 3000 / 4).all()
    hnsw = build_index(IndexSpec.make("hnsw"), items)
    _, _, few = hnsw.search(queries, 10, {"ef_search": 16})
    _, _, more = hnsw.search(queries, 10, {"ef_search": 256})
    assert 0 < few.mean() < more.mean() < 3000


def test_the_position_error_and_the_relative_error_on_distances_on_answers_worked_by_hand():
    # Items on the unit circle at angles 0, 0.1, 0.2, 0.3, 0.4 (distances grow with the angle); the query
    # is item 0 itself, excluded: the exact order is 1, 2, 3, 4.
    angles = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    items = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    queries, exclude = items[:1], np.array([0])
    positions = Positions(queries, items, exclude)
    assert positions.error(np.array([[1, 2]])) == 0.0
    # answers (2, 4): positions in the whole order 2 and 4, in the answer 1 and 2: (|2-1| + |4-2|) / (2 * 4)
    assert positions.error(np.array([[2, 4]])) == pytest.approx(3 / 8)
    true = np.array([[1, 2]])
    d = lambda a: 2 * np.sin(a / 2)  # chord length of an angle
    expected = ((d(0.2) / d(0.1) - 1) + (d(0.4) / d(0.2) - 1)) / 2
    assert distance_ratio_error(np.array([[2, 4]]), true, queries, items) == pytest.approx(expected, rel=1e-5)
    assert distance_ratio_error(true, true, queries, items) == pytest.approx(0.0, abs=1e-12)


def test_the_distance_statistics_follow_their_definitions():
    rng = np.random.default_rng(0)
    low, high = rng.uniform(size=(3000, 2)), rng.uniform(size=(3000, 16))
    s_low, s_high = distance_statistics(low, seed=3), distance_statistics(high, seed=3)
    d = pair_distances(low, s_low["pairs"], np.random.default_rng(3))  # the same seeded draw of pairs
    assert s_low["mean"] == pytest.approx(d.mean()) and s_low["std"] == pytest.approx(d.std())
    assert s_low["rho"] == pytest.approx(d.mean() ** 2 / (2 * d.var()))
    assert sum(s_low["histogram"]["counts"]) == s_low["pairs"]
    assert s_high["rho"] > 4 * s_low["rho"]  # concentration grows with the dimension
    assert 1.6 < s_low["lid"] < 2.6  # a uniform square is 2-dimensional
    assert s_high["lid"] > 3 * s_low["lid"]
    with pytest.raises(ValueError, match="2 or more items"):
        distance_statistics(low[:1])


def test_bad_range_queries_fail_naming_the_radius():
    index = build_index(IndexSpec.make("pivots"), random_unit_vectors(50, 4, 0))
    for radius in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="radius must be a finite distance >= 0"):
            index.range_search(random_unit_vectors(2, 4, 1), radius)


def test_the_catalogue_names_tests_that_exist_for_every_family_and_query_type():
    assert set(STRUCTURES) == set(FAMILIES)
    for (family, query), test in PROOFS.items():
        assert family in FAMILIES and query in QUERY_TYPES
        path, _, name = test.partition("::")
        source = (ROOT / path).read_text()
        if name:
            names = {node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)}
            assert name in names, f"{test} does not exist"
    assert all((family, "knn") in PROOFS and (family, "range") in PROOFS for family in FAMILIES)


def test_the_flat_range_search_stays_exact_once_faiss_answers_in_torch_tensors():
    import faiss.contrib.torch_utils  # noqa: F401  pytorch-metric-learning imports it: faiss then returns tensors

    items = random_unit_vectors(300, 8, 4)
    found, dists, _ = build_index(IndexSpec.make("flat"), items).range_search(items[:10], 0.7, exclude=np.arange(10))
    expected, _ = brute_range(items[:10], items, 0.7, np.arange(10))
    assert all(isinstance(f, np.ndarray) and isinstance(d, np.ndarray) for f, d in zip(found, dists))
    assert [f.tolist() for f in found] == [e.tolist() for e in expected]
