"""The VP-tree and the M-tree against a brute force (ties by the lower id, items at the radius in),
their counts of distance computations, the M-tree's invariants through insertions and deletions, and
the errors of bad input."""

import numpy as np
import pytest

from dmlbench.evaluation.indexes import metric_trees
from dmlbench.evaluation.indexes.metric_trees import MTree, VPTree
from dmlbench.evaluation.indexes.pivots import TOLERANCE, _exact_distances

# Small buckets and nodes make deep trees, so every rule is exercised on a few hundred items.
STRUCTURES = {
    "vp-leaf4": lambda x: VPTree(x, leaf_size=4, seed=1),
    "vp-default": lambda x: VPTree(x),
    "m-cap4": lambda x: MTree(x, capacity=4, seed=1),
    "m-default": lambda x: MTree(x),
}


def brute_order(items, queries):
    """The brute force: (distances (Q, N), every item's id by (distance, id) per query (Q, N))."""
    dist = _exact_distances(queries, items)
    ids = np.tile(np.arange(len(items)), (len(queries), 1))
    return dist, np.lexsort((ids, dist), axis=1)


def brute_range(dist, order, radius):
    return [row_order[row_dist[row_order] <= radius] for row_dist, row_order in zip(dist, order)]


def unit_vectors(n=300, dim=16, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def tied_vectors(n=300, dim=8, seed=0):
    """Unit vectors with four entries of +-1/2 and zeros elsewhere: every squared distance is a multiple
    of 1/4 up to 4, exact in float64, so distances take few values and tie exactly. With 170 rows or
    more, rows 150-169 repeat rows 0-19."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, dim))
    for row in out:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    if n >= 170:
        out[150:170] = out[:20]
    return out


DATA = {"unit": unit_vectors, "tied": tied_vectors}


def queries_for(items, seed=5):
    """Some items themselves (distance 0, duplicates among them) and some fresh points."""
    rng = np.random.default_rng(seed)
    tied = len(np.unique(items)) <= 3  # entries -1/2, 0, 1/2 only
    fresh = (tied_vectors if tied else unit_vectors)(20, items.shape[1], seed)
    return np.concatenate([items[[0, 3, 150, 151, 299]], fresh, items[rng.choice(len(items), 5)]])


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_knn_equals_the_brute_force_with_ties_by_lower_id(structure, data):
    items = DATA[data]()
    queries = queries_for(items)
    dist, order = brute_order(items, queries)
    tree = STRUCTURES[structure](items)
    for k in (1, 5, 10, len(items)):
        d, ids, computed = tree.knn(queries, k)
        assert ids.dtype == np.int64 and d.dtype == np.float64 and computed.shape == (len(queries),)
        np.testing.assert_array_equal(ids, order[:, :k])
        np.testing.assert_array_equal(d, np.take_along_axis(dist, order[:, :k], axis=1))
        assert (computed >= 1).all() and (computed <= 3 * len(items)).all()


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_range_equals_the_brute_force_and_items_at_the_radius_are_in(structure, data):
    items = DATA[data]()
    queries = queries_for(items)
    dist, order = brute_order(items, queries)
    tree = STRUCTURES[structure](items)
    values = np.unique(dist)
    at_distances = [values[1], values[len(values) // 4], float(np.median(dist)), values[-1]]  # actual distances
    for radius in [0.0, 0.3, 1.0, 2.5] + at_distances:
        ids, d, computed = tree.range(queries, radius)
        expected = brute_range(dist, order, radius)
        assert len(ids) == len(d) == len(queries) and computed.shape == (len(queries),)
        for row in range(len(queries)):
            np.testing.assert_array_equal(ids[row], expected[row])
            np.testing.assert_array_equal(d[row], dist[row, expected[row]])
    q, j = 7, order[7, 40]  # an item exactly at the radius (and, in the tied data, its equals) must come back
    ids, d, _ = tree.range(queries[q:q + 1], dist[q, j])
    assert j in ids[0] and d[0][-1] == dist[q, j]


@pytest.mark.parametrize("structure", STRUCTURES)
def test_range_zero_returns_exactly_the_duplicates_of_the_query(structure):
    items = tied_vectors()
    tree = STRUCTURES[structure](items)
    ids, d, _ = tree.range(items[[3, 150, 200]], 0.0)
    duplicates_of_3 = np.flatnonzero((items == items[3]).all(1))
    assert {3, 153} <= set(duplicates_of_3.tolist())
    np.testing.assert_array_equal(ids[0], duplicates_of_3)
    np.testing.assert_array_equal(ids[1], np.flatnonzero((items == items[150]).all(1)))
    np.testing.assert_array_equal(ids[2], np.flatnonzero((items == items[200]).all(1)))
    assert all((row == 0).all() for row in d)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_many_copies_of_one_point_tie_by_the_lower_id(structure):
    rng = np.random.default_rng(3)
    items = rng.normal(size=(120, 4))
    copies = rng.choice(120, 40, replace=False)
    items[copies] = items[copies[0]]
    tree = STRUCTURES[structure](items)
    d, ids, _ = tree.knn(items[copies[0]][None], 7)
    np.testing.assert_array_equal(ids[0], np.sort(copies)[:7])
    assert (d == 0).all()


def clustered_2d(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, size=(20, 2))
    return centres[rng.integers(20, size=n)] + rng.normal(scale=0.5, size=(n, 2))


@pytest.mark.parametrize("structure", ["vp-default", "m-default"])
def test_clustered_low_dimensional_data_needs_far_fewer_than_n_distances(structure):
    data = clustered_2d(2100)
    items, queries = data[:2000], data[2000:]
    tree = STRUCTURES[structure](items)
    d, ids, computed = tree.knn(queries, 10)
    dist, order = brute_order(items, queries)
    np.testing.assert_array_equal(ids, order[:, :10])
    assert computed.mean() < 0.1 * len(items), computed.mean()  # about 3.5% measured for both
    assert computed.max() < 0.25 * len(items)
    _, _, computed = tree.range(queries, 0.3)
    assert computed.mean() < 0.1 * len(items), computed.mean()


@pytest.mark.parametrize("structure", STRUCTURES)
def test_counts_equal_the_exact_distance_evaluations(structure, monkeypatch):
    """A counting wrapper around the real distance function: the counts are the distances evaluated."""
    evaluated = [0]

    def counting(x, y):
        evaluated[0] += x.shape[0] * y.shape[0]
        return _exact_distances(x, y)

    monkeypatch.setattr(metric_trees, "_exact_distances", counting)
    items = clustered_2d(150, seed=2)
    tree = STRUCTURES[structure](items)
    assert tree.build_distances == evaluated[0] > 0
    for k in (1, 3, 150):
        evaluated[0] = 0
        _, _, computed = tree.knn(items[:6] + 0.1, k)
        assert computed.sum() == evaluated[0]
    evaluated[0] = 0
    _, _, computed = tree.range(items[:6] + 0.1, 1.0)
    assert computed.sum() == evaluated[0]
    evaluated[0] = 0
    _, _, one = tree.knn(items[:1] + 0.1, 3)
    assert one[0] == evaluated[0] < len(items)


def test_vptree_ranges_and_buckets_hold_their_items():
    items = clustered_2d(500, seed=4)
    tree = VPTree(items, leaf_size=5, seed=2)

    def subtree_items(node):
        vp = int(tree.vantage[node])
        if vp < 0:
            bucket = tree.order[tree.span[node, 0]:tree.span[node, 1]]
            assert 1 <= len(bucket) <= 5
            return list(bucket)
        out = [vp]
        for side in (0, 1):
            child = int(tree.child[node, side])
            if child >= 0:
                below = subtree_items(child)
                d = _exact_distances(items[vp][None], items[below])[0]
                lo, hi = tree.bounds[node, side]
                assert lo == d.min() and hi == d.max()
                out += below
        return out

    seen = subtree_items(0)
    assert sorted(seen) == list(range(len(items)))
    assert tree.build_distances < len(items) * 12  # a balanced tree: about log2(500 / 5) levels
    assert tree.nbytes > items.nbytes


def check_mtree(tree, vectors, live):
    """Every node: at most ``capacity`` entries, none empty; every leaf at one depth; every item inside
    every ancestor's covering ball; stored parent distances equal to recomputed ones; the live items."""
    depths, found = set(), []

    def walk(node, depth, balls):
        assert 1 <= len(node.ids) <= tree.capacity
        assert len(node.pdist) == len(node.ids)
        if node.parent is not None:
            expected = _exact_distances(vectors[node.center][None], vectors[node.ids])[0]
            np.testing.assert_array_equal(node.pdist, expected)
        if node.leaf:
            depths.add(depth)
            found.extend(node.ids)
            for centre, radius in balls:
                assert (_exact_distances(vectors[centre][None], vectors[node.ids])[0] <= radius + TOLERANCE).all()
            return
        assert len(node.radius) == len(node.children) == len(node.ids)
        for centre, radius, child in zip(node.ids, node.radius, node.children):
            assert child.parent is node and child.center == centre
            walk(child, depth + 1, balls + [(centre, radius)])

    walk(tree.root, 0, [])
    assert len(depths) == 1
    assert sorted(found) == sorted(live) and len(tree) == len(live)
    return depths.pop()


def test_mtree_invariants_hold_after_many_inserts():
    vectors = np.concatenate([clustered_2d(400, seed=6), unit_vectors(400, 2, seed=7), np.zeros((30, 2))])
    tree = MTree(capacity=5, seed=3, dim=2)
    for row, v in enumerate(vectors):
        assert tree.insert(v) == row
    height = check_mtree(tree, vectors, list(range(len(vectors))))
    assert height >= 3  # 830 items in nodes of at most 5 entries
    assert tree.build_distances > 0 and tree.nbytes > vectors.nbytes
    tree = MTree(vectors[:300], capacity=3, seed=0)
    check_mtree(tree, vectors[:300], list(range(300)))


@pytest.mark.parametrize("capacity", [3, 8])
def test_mtree_stays_exact_through_deletions_and_reinsertions(capacity):
    vectors = np.concatenate([tied_vectors(300), unit_vectors(60, 8, seed=9)])
    items, extra = vectors[:300], vectors[300:]
    tree = MTree(items, capacity=capacity, seed=1)
    gone = np.random.default_rng(2).permutation(300)[:100]
    for item in gone:
        tree.delete(int(item))
    live = np.setdiff1d(np.arange(300), gone)
    check_mtree(tree, vectors, live.tolist())
    queries = queries_for(items)
    assert_exact_over(tree, items, live, queries)
    with pytest.raises(KeyError, match=f"item {gone[0]} is not in the tree"):
        tree.delete(int(gone[0]))
    with pytest.raises(KeyError, match="item 999 is not in the tree"):
        tree.delete(999)
    new_ids = [tree.insert(v) for v in extra]
    assert new_ids == list(range(300, 360))
    live = np.concatenate([live, new_ids])
    check_mtree(tree, vectors, live.tolist())
    assert_exact_over(tree, vectors, live, queries)


def assert_exact_over(tree, vectors, live, queries):
    """The tree's k-NN and range answers equal a brute force over the live items, in their ids."""
    dist, order = brute_order(vectors[live], queries)
    for k in (1, 5, 10, len(live)):
        d, ids, _ = tree.knn(queries, k)
        np.testing.assert_array_equal(ids, live[order[:, :k]])
        np.testing.assert_array_equal(d, np.take_along_axis(dist, order[:, :k], axis=1))
    for radius in (0.0, 1.0, float(np.median(dist))):
        ids, d, _ = tree.range(queries, radius)
        for row, expected in enumerate(brute_range(dist, order, radius)):
            np.testing.assert_array_equal(ids[row], live[expected])
            np.testing.assert_array_equal(d[row], dist[row, expected])
    with pytest.raises(ValueError, match=f"between 1 and the {len(live)} items"):
        tree.knn(queries, len(live) + 1)


def test_mtree_emptied_by_deletion_takes_new_items():
    items = clustered_2d(60, seed=8)
    tree = MTree(items, capacity=4)
    for item in range(60):
        tree.delete(item)
    assert len(tree) == 0 and tree.root is None
    ids, d, computed = tree.range(items[:2], 5.0)
    assert [len(i) for i in ids] == [0, 0] and computed.tolist() == [0, 0]
    with pytest.raises(ValueError, match="k=1 must be an integer between 1 and the 0 items"):
        tree.knn(items[:2], 1)
    assert [tree.insert(v) for v in items[:10]] == list(range(60, 70))
    _, ids, _ = tree.knn(items[:1], 3)
    assert ids[0, 0] == 60


def test_bad_input_is_refused_with_the_valid_values():
    items = unit_vectors(50, 4)
    with pytest.raises(ValueError, match=r"non-empty \(N, d\) array, got 0 items"):
        VPTree(np.empty((0, 4)))
    with pytest.raises(ValueError, match="leaf_size=0 must be an integer >= 1"):
        VPTree(items, leaf_size=0)
    with pytest.raises(ValueError, match="capacity=1 must be an integer >= 2"):
        MTree(items, capacity=1)
    with pytest.raises(ValueError, match="items have 4 dimensions but dim=3"):
        MTree(items, dim=3)
    for tree in (VPTree(items), MTree(items)):
        for k in (0, 51, 2.5):
            with pytest.raises(ValueError, match=f"k={k} must be an integer between 1 and the 50 items"):
                tree.knn(items[:2], k)
        for radius in (-0.1, float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"radius={radius} must be a finite number >= 0"):
                tree.range(items[:2], radius)
        for bad in (np.zeros((2, 5)), np.zeros(4)):
            with pytest.raises(ValueError, match=r"queries must be a \(Q, 4\) array like the items, got shape"):
                tree.knn(bad, 1)
    with pytest.raises(ValueError, match=r"finite of shape \(4,\), got shape \(5,\)"):
        MTree(items).insert(np.zeros(5))


def test_answers_do_not_depend_on_the_seed_or_the_node_size():
    items = tied_vectors()
    queries = queries_for(items)
    answers = [tree.knn(queries, 12)[:2] for tree in
               [VPTree(items, leaf_size=s, seed=seed) for s in (1, 2, 30) for seed in (0, 9)]
               + [MTree(items, capacity=c, seed=seed) for c in (2, 30) for seed in (0, 9)]]
    for d, ids in answers[1:]:
        np.testing.assert_array_equal(ids, answers[0][1])
        np.testing.assert_array_equal(d, answers[0][0])
