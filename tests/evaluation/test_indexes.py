"""Similarity-search indexes: the exact ones against brute force (ties by index), the pivot table's
count of distance computations on a case worked by hand, the recall computations on constructed
answers, and the settings' errors."""

import itertools

import numpy as np
import pytest
import torch

from dmlbench.errors import ConfigError
from dmlbench.evaluation.indexes import (FAMILIES, IndexSpec, PivotTable, build_index, knn_recall, label_metrics,
                                         parse_specs, relative_distance_error, search_depth)
from dmlbench.evaluation.indexes.pivots import choose_pivots
from dmlbench.evaluation.indexes.sweep import Queries, evaluate_indexes
from dmlbench.evaluation.metrics import evaluate

EXACT = [name for name, family in FAMILIES.items() if family.exact]


def brute_force(queries, items, k, exclude=None):
    """Top k by float64 inner product, ties broken by the lower item index (the evaluation's rule)."""
    scores = queries.astype(np.float64) @ items.astype(np.float64).T
    if exclude is not None:
        scores[np.arange(len(queries)), exclude] = -np.inf
    ids = np.tile(np.arange(len(items)), (len(queries), 1))
    return np.lexsort((ids, -scores), axis=1)[:, :k]


def tied_unit_vectors(n=160, dim=8, seed=0):
    """Unit vectors with four entries of +-1/2 and zeros elsewhere: every inner product is a multiple of
    1/4, exact in float32, so many neighbours tie exactly; some vectors are repeated outright."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, dim), dtype=np.float32)
    for row in out:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    out[n // 2: n // 2 + 10] = out[:10]  # duplicates: ties at similarity 1 too
    return out


def random_unit_vectors(n, dim, seed):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("family", EXACT)
@pytest.mark.parametrize("data", ["ties", "random"])
def test_every_exact_index_returns_the_brute_force_neighbours_ties_by_index(family, data):
    items = tied_unit_vectors() if data == "ties" else random_unit_vectors(300, 12, 1)
    index = build_index(IndexSpec.make(family), items)
    others = tied_unit_vectors(40, seed=5) if data == "ties" else random_unit_vectors(40, 12, 6)
    for k in (1, 7, 25):
        _, ids, _ = index.search(others, k)
        np.testing.assert_array_equal(ids, brute_force(others, items, k))
        own = np.arange(0, len(items), 3)  # queries that are items, each excluding itself
        _, ids, _ = index.search(items[own], k, exclude=own)
        np.testing.assert_array_equal(ids, brute_force(items[own], items, k, exclude=own))
    if data == "ties":  # the case is one of ties: many queries have tied neighbours across the k-th
        scores = np.sort(others.astype(np.float64) @ items.T.astype(np.float64), axis=1)[:, ::-1]
        assert (scores[:, 6] == scores[:, 7]).mean() > 0.5


def test_the_exact_indexes_agree_on_threads_and_report_cosine_similarities():
    items, queries = random_unit_vectors(500, 16, 2), random_unit_vectors(30, 16, 3)
    expected = np.sort(queries.astype(np.float64) @ items.T.astype(np.float64), axis=1)[:, ::-1][:, :5]
    for family in EXACT:
        index = build_index(IndexSpec.make(family), items)
        scores, ids, _ = index.search(queries, 5, threads=1)
        _, ids_2, _ = index.search(queries, 5, threads=2)
        np.testing.assert_array_equal(ids, ids_2)
        np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_pivot_search_counts_the_distances_it_computes_on_a_case_worked_by_hand():
    # Items on a line: 0, 1, 2, 3, 10, 11 (second coordinate 0). Pivots by the maximum-sum rule from
    # item 0: item 0, then the farthest from it, item 5 (at 11).
    items = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [10, 0], [11, 0]], dtype=np.float64)
    table = PivotTable(items, num_pivots=2)
    assert table.pivots.tolist() == [0, 5]
    # Query at 2.4: d to the pivots 2.4 and 8.6; lower bounds max(|2.4 - d(x, 0)|, |8.6 - d(x, 5)|) of
    # items 1, 2, 3, 4: 1.4, 0.4, 0.6, 7.6. Best after the pivots: item 0 at 2.4. Visit item 2 (bound
    # 0.4): distance 0.4, the new best. Next bound 0.6 > 0.4: stop. 2 + 1 = 3 of 6 distances computed.
    d, ids, computed = table.search(np.array([[2.4, 0.0]]), k=1)
    assert ids.tolist() == [[2]] and computed.tolist() == [3]
    np.testing.assert_allclose(d, [[0.4]])
    # k = 2 from the same query: after item 2 (0.4) the 2nd best is item 0 (2.4); item 3 (bound 0.6)
    # is visited (0.6), then item 1 (bound 1.4 <= 2nd best 0.6? no: 1.4 > 0.6): stop. 2 + 2 = 4.
    d, ids, computed = table.search(np.array([[2.4, 0.0]]), k=2)
    assert ids.tolist() == [[2, 3]] and computed.tolist() == [4]
    # Off the line, at (2, 1): to the pivots sqrt(5) = 2.236 and sqrt(82) = 9.055; bounds of items 1-4:
    # max(1.236, 0.945) = 1.236, max(0.236, 0.055) = 0.236, max(0.764, 1.055) = 1.055, 8.055. Item 2 is
    # visited (distance 1), then item 3's bound 1.055 > 1: stop. 2 + 1 = 3.
    d, ids, computed = table.search(np.array([[2.0, 1.0]]), k=1)
    assert ids.tolist() == [[2]] and computed.tolist() == [3]
    np.testing.assert_allclose(d, [[1.0]])


def test_pivots_are_chosen_by_the_maximum_sum_of_distances():
    items = np.array([[0.0], [5.0], [1.0], [9.0], [4.0]])
    # from item 0: the farthest is 3 (9); then the largest d(x, 0) + d(x, 3): items 1 (5 + 4 = 9), 2 (1 + 8),
    # 4 (4 + 5) all sum to 9; the lowest index wins: item 1
    assert choose_pivots(items, 3).tolist() == [0, 3, 1]
    with pytest.raises(ValueError, match="7 pivots cannot be chosen among 5 items"):
        choose_pivots(items, 7)


def test_knn_recall_counts_an_answer_tied_with_the_kth_as_found():
    items = np.array([[1, 0], [0.8, 0.6], [0.8, -0.6], [0, 1], [-1, 0]], dtype=np.float32)
    queries = np.array([[1, 0]], dtype=np.float32)
    true = np.array([[0, 1]])  # items 1 and 2 tie at 0.8: the exact order keeps 1
    assert knn_recall(np.array([[0, 2]]), true, queries, items) == 1.0  # the tied item counts
    assert knn_recall(np.array([[0, 3]]), true, queries, items) == 0.5
    assert knn_recall(np.array([[4, -1]]), true, queries, items) == 0.0  # a missing answer never counts
    # distances: exact 0 + sqrt(0.4); answer (0, 3): 0 + sqrt(2)
    expected = np.sqrt(2.0) / np.sqrt(0.4) - 1.0
    assert relative_distance_error(np.array([[0, 3]]), true, queries, items) == pytest.approx(expected)
    assert relative_distance_error(true, true, queries, items) == 0.0
    # a missing answer counts the sphere's diameter: (0 + 2) / (0 + sqrt(0.4)) - 1
    missing = relative_distance_error(np.array([[0, -1]]), true, queries, items)
    assert missing == pytest.approx(2.0 / np.sqrt(0.4) - 1.0)


def test_label_metrics_of_ranked_answers_follow_the_evaluation():
    labels = np.array([0, 0, 1, 1, 1, 2])
    found = np.array([[1, 2, 3], [2, -1, 3], [4, 3, 0]])  # query 1 misses its one same-class item
    query_labels, relevant = np.array([0, 0, 1]), np.array([1, 1, 2])
    got = label_metrics(found, labels, query_labels, relevant)
    assert got["recall@1"] == pytest.approx(2 / 3)
    assert got["map@r"] == pytest.approx((1 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="MAP@R needs 2 answers per query, got 1"):
        label_metrics(found[:, :1], labels, query_labels, relevant)
    assert search_depth(7) == (10, True) and search_depth(60) == (60, True) and search_depth(7000) == (10, False)


def test_the_flat_index_gives_the_evaluations_own_recall_and_map_at_r():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 12, 400)
    x = random_unit_vectors(12, 16, 7)[labels] + 0.4 * random_unit_vectors(400, 16, 8)
    ids = np.arange(400)
    out = evaluate_indexes(x, labels, Queries(x / np.linalg.norm(x, axis=1, keepdims=True), labels, ids),
                           [IndexSpec.make("flat"), IndexSpec.make("ivf-flat", nlist=4, sweep=[4])], repeats=1)
    reference = evaluate(torch.from_numpy(x), torch.from_numpy(labels), nmi=False)
    assert out["exact"]["recall@1"] == pytest.approx(reference["recall@1"], abs=1e-12)
    assert out["exact"]["map@r"] == pytest.approx(reference["map@r"], abs=1e-12)
    flat, ivf_all_lists = out["rows"]
    assert flat["knn_recall"] == 1.0 and flat["recall@1"] == pytest.approx(reference["recall@1"])
    assert ivf_all_lists["knn_recall"] == 1.0  # nprobe = nlist: every list is scanned
    assert flat["qps_1"] > 0 and flat["bytes_per_vector"] == pytest.approx(16 * 4, rel=0.01)


def test_an_approximate_index_is_approximate_and_improves_along_its_sweep():
    items = random_unit_vectors(2000, 16, 9)
    queries = Queries(random_unit_vectors(200, 16, 10))
    rows = evaluate_indexes(items, None, queries, [IndexSpec.make("ivf-flat", nlist=64, sweep=[1, 8, 64])],
                            repeats=1)["rows"]
    recalls = [row["knn_recall"] for row in rows]
    assert recalls[0] < 0.9 and recalls == sorted(recalls) and recalls[-1] == 1.0
    assert rows[0]["relative_distance_error"] > 0.01
    assert rows[-1]["relative_distance_error"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("call,message", [
    (lambda: IndexSpec.make("annoy"), "unknown index family 'annoy'; choose from flat, hnsw"),
    (lambda: IndexSpec.make("hnsw", efSearch=3), "unknown build setting(s) efSearch; hnsw takes M, ef_construction"),
    (lambda: IndexSpec.make("hnsw", M=0), "M must be a positive integer, got 0"),
    (lambda: IndexSpec.make("flat", sweep=[1]), "has no search setting to sweep"),
    (lambda: IndexSpec.make("ivf-flat", sweep=[]), "its nprobe sweep must be positive integers, got []"),
    (lambda: parse_specs([{"M": 3}]), "indexes[0]: each index is a mapping with a 'family'"),
    (lambda: build_index(IndexSpec.make("pq", m=5), random_unit_vectors(300, 16, 0)),
     "m=5 bytes per code must divide the embedding dimension 16"),
    (lambda: build_index(IndexSpec.make("pq", m=4), random_unit_vectors(100, 16, 0)),
     "nbits=8 needs at least 256 vectors to train its codebooks, got 100"),
    (lambda: build_index(IndexSpec.make("flat"), random_unit_vectors(9, 4, 0)).search(np.zeros((1, 4)), 10),
     "k=10 must be between 1 and the 9 items"),
])
def test_bad_index_settings_fail_naming_the_problem(call, message):
    with pytest.raises((ConfigError, ValueError)) as error:
        call()
    assert message in str(error.value)


def test_every_family_builds_and_answers_from_one_spec_list():
    items = random_unit_vectors(600, 16, 11)
    specs = [IndexSpec.make(f) for f in FAMILIES if f not in ("pq", "ivf-pq")]
    specs += [IndexSpec.make("pq", m=4), IndexSpec.make("ivf-pq", m=4, nbits=6, sweep=[2])]
    rows = evaluate_indexes(items, None, Queries(items[:50], exclude=np.arange(50)), specs, repeats=1,
                            exact_queries=20)["rows"]
    assert {row["family"] for row in rows} == set(FAMILIES)
    for row in rows:
        assert 0.0 < row["knn_recall"] <= 1.0 and row["qps_1"] > 0 and row["bytes_per_vector"] > 0
        assert (row["distance_fraction"] is not None) == FAMILIES[row["family"]].counts_distances
        assert row["queries"] == (20 if FAMILIES[row["family"]].counts_distances else 50)
        if row["exact"]:
            assert row["knn_recall"] == 1.0 and row["relative_distance_error"] == 0.0
    assert [name for name in itertools.islice((r["index"] for r in rows), 2)] == ["flat", "hnsw M=16"]


def clustered_unit_vectors(n=1200, dim=16, clusters=24, seed=3):
    """Unit vectors in tight clusters, as a trained embedding's classes are."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(clusters, size=n)] + 0.25 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("family, build, setting", [("pq", {"m": 4}, None), ("sq8", {}, None),
                                                    ("ivf-pq", {"m": 4, "nlist": 8}, {"nprobe": 8})])
def test_a_coding_index_ranks_by_the_l2_distance_to_its_decoded_vectors(family, build, setting):
    """Issue 29: PQ, IVF-PQ and SQ8 ranked by inner product, which orders a decoded (not unit) vector
    by |x'| cos; the embeddings' own metric is L2. The index's answers must be the nearest decoded
    vectors by L2, and its scores the cosines 1 - d^2 / 2 of those distances."""
    x = clustered_unit_vectors()
    index = build_index(IndexSpec.make(family, sweep=None if setting is None else list(setting.values()), **build), x)
    native = index.native
    if family == "ivf-pq":
        native.make_direct_map()
    # np.asarray: pytorch-metric-learning, once imported, makes faiss return torch tensors here
    decoded = np.asarray(native.reconstruct_n(0, native.ntotal), dtype=np.float64)
    queries = x[:100]
    scores, ids, _ = index.search(queries, 5, setting=setting, exclude=np.arange(100))
    d2 = ((queries[:, None, :].astype(np.float64) - decoded[None]) ** 2).sum(-1)
    d2[np.arange(100), np.arange(100)] = np.inf
    expected = np.sort(d2, axis=1)[:, :5]
    found = np.take_along_axis(d2, ids, 1)
    np.testing.assert_allclose(found, expected, atol=1e-4)  # the L2-nearest decoded vectors (ties aside)
    np.testing.assert_allclose(scores, 1.0 - found / 2.0, atol=1e-4)


def test_pq_by_l2_keeps_the_neighbours_that_inner_product_loses():
    """The consequence measured on clustered unit vectors: PQ m=4's k-NN recall is far higher by L2."""
    import faiss

    x = clustered_unit_vectors()
    exact = brute_force(x[:200], x, 10, exclude=np.arange(200))
    _, ids, _ = build_index(IndexSpec.make("pq", m=4), x).search(x[:200], 10, exclude=np.arange(200))
    by_l2 = knn_recall(ids, exact, x[:200], x)
    ip = faiss.IndexPQ(16, 4, 8, faiss.METRIC_INNER_PRODUCT)
    ip.train(x)
    ip.add(x)
    _, ip_ids = ip.search(x[:200], 11)
    ip_ids = np.array([[i for i in row if i != q][:10] for q, row in enumerate(ip_ids)])
    assert by_l2 > knn_recall(ip_ids, exact, x[:200], x) + 0.05
