"""Exact kNN: the ranking rule against a numpy brute force, the float32 certificate, bad arguments."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dmlbench.evaluation.neighbours import FP32_UNIT_ROUNDOFF, dot_error_bound, full_precision_matmul, knn


def brute_force(query, reference, k, *, self_mode=False, exclude=None):
    """Every pair scored in float64 by numpy, each row ranked by (score desc, index asc)."""
    q = np.asarray(query, dtype=np.float64)
    r = q if reference is None else np.asarray(reference, dtype=np.float64)
    scores = (q[:, None, :] * r[None, :, :]).sum(axis=2)
    if self_mode:
        np.fill_diagonal(scores, -np.inf)
    if exclude is not None:
        scores[np.arange(len(q)), exclude] = -np.inf
    order = np.stack([np.lexsort((np.arange(len(r)), -row))[:k] for row in scores])
    return np.take_along_axis(scores, order, axis=1), order


@st.composite
def grid_embeddings(draw):
    """Small integer coordinates: every product and sum is exact, so ties are exact and many."""
    n = draw(st.integers(2, 40))
    dim = draw(st.integers(1, 6))
    values = draw(st.lists(st.integers(-3, 3), min_size=n * dim, max_size=n * dim))
    x = torch.tensor(values, dtype=torch.float32).reshape(n, dim)
    k = draw(st.integers(1, n - 1))
    block = draw(st.integers(1, 16))
    slack = draw(st.integers(0, 4))
    return x, k, block, slack


@settings(max_examples=150, deadline=None)
@given(grid_embeddings())
def test_self_mode_equals_brute_force_with_exact_ties(case):
    x, k, block, slack = case
    scores, indices = knn(x, None, k, block_size=block, slack=slack)
    expected_scores, expected = brute_force(x, None, k, self_mode=True)
    np.testing.assert_array_equal(indices.numpy(), expected)
    np.testing.assert_array_equal(scores.numpy(), expected_scores)


@settings(max_examples=100, deadline=None)
@given(grid_embeddings(), st.integers(1, 30), st.booleans(), st.integers(0, 2**31 - 1))
def test_gallery_mode_equals_brute_force(case, n_gallery, use_exclude, seed):
    x, k, block, slack = case
    g = torch.randint(-3, 4, (n_gallery, x.shape[1]), generator=torch.Generator().manual_seed(seed)).float()
    exclude = torch.randint(0, n_gallery, (len(x),), generator=torch.Generator().manual_seed(seed + 1)) if use_exclude else None
    k = min(k, n_gallery - (1 if use_exclude else 0))
    if k < 1:
        return
    scores, indices = knn(x, g, k, exclude=exclude, block_size=block, slack=slack)
    expected_scores, expected = brute_force(x, g, k, exclude=None if exclude is None else exclude.numpy())
    np.testing.assert_array_equal(indices.numpy(), expected)
    np.testing.assert_array_equal(scores.numpy(), expected_scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normalised_embeddings_with_duplicates(seed):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(500, 32, generator=g), dim=1)
    x[300:340] = x[7]  # 41 copies of one point: ties across the k-th place for all of them
    x[400:405] = x[100]
    scores, indices, stats = knn(x, None, 15, block_size=64, slack=4, return_stats=True)
    expected_scores, expected = brute_force(x, None, 15, self_mode=True)
    np.testing.assert_array_equal(indices.numpy(), expected)
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=0, atol=1e-15)
    assert stats["full_rows"] >= 41  # the duplicated rows could not be certified from float32


def test_near_ties_are_resolved_in_float64():
    """Items closer than float32 can tell apart are still ranked by their float64 score."""
    g = torch.Generator().manual_seed(3)
    base = F.normalize(torch.randn(1, 64, generator=g, dtype=torch.float64), dim=1)
    # float32 copies of the same point with their last bits changed: distinct float64 scores whose
    # gaps lie well below the float32 error of a 64-term product.
    copies = base.float().repeat(12, 1)
    copies[:, 0] += torch.arange(12) * 1e-7
    others = F.normalize(torch.randn(200, 64, generator=g), dim=1)
    reference = torch.cat([others[:100], copies, others[100:]])
    query = base.float()
    scores, indices, stats = knn(query, reference, 10, slack=2, return_stats=True)
    expected_scores, expected = brute_force(query, reference, 10)
    np.testing.assert_array_equal(indices.numpy(), expected)
    assert stats["full_rows"] == 1


def test_float32_error_bound_holds():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(300, 512, generator=g) * torch.rand(300, 1, generator=g) * 10
    r = torch.randn(400, 512, generator=g)
    with full_precision_matmul():
        s32 = (q @ r.T).double()
    exact = q.double() @ r.double().T
    bound = dot_error_bound(512, FP32_UNIT_ROUNDOFF) * q.double().norm(dim=1)[:, None] * r.double().norm(dim=1)[None, :]
    assert ((s32 - exact).abs() <= bound).all()
    assert (s32 - exact).abs().max() > 0  # the check is not vacuous: float32 does round


def test_precision_settings_are_restored():
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    try:
        with full_precision_matmul():
            assert matmul.fp32_precision == "ieee"
            assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
        knn(torch.randn(10, 4), None, 3)
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = before


@pytest.mark.parametrize("call,message", [
    (lambda x: knn(x, None, 10), "k=10 must be between 1 and the 9"),
    (lambda x: knn(x, None, 0), "k=0 must be between"),
    (lambda x: knn(x, torch.randn(5, 3), 2), "reference dim 3 differs from query dim 4"),
    (lambda x: knn(x, None, 2, exclude=torch.zeros(10, dtype=torch.long)), "exclude is implied"),
    (lambda x: knn(x, x, 2, exclude=torch.zeros(3, dtype=torch.long)), "one reference index per query"),
    (lambda x: knn(x, x, 2, exclude=torch.full((10,), 10)), r"exclude indices must lie in \[0, 10\)"),
    (lambda x: knn(x[0], None, 2), "2-D"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(torch.randn(10, 4))


def hits(labels, query_labels, indices):
    return np.asarray(labels)[np.asarray(indices)] == np.asarray(query_labels)[:, None]


@settings(max_examples=100, deadline=None)
@given(grid_embeddings(), st.integers(0, 2**31 - 1))
def test_with_labels_each_query_sees_the_rules_hits(case, seed):
    """With labels, neighbours that float32 cannot order may swap, but only equally relevant ones."""
    x, k, block, slack = case
    labels = torch.randint(0, 3, (len(x),), generator=torch.Generator().manual_seed(seed))
    none, indices = knn(x, None, k, block_size=block, slack=slack, scores=False, labels=(labels, labels))
    _, expected = brute_force(x, None, k, self_mode=True)
    assert none is None
    np.testing.assert_array_equal(hits(labels, labels, indices), hits(labels, labels, expected))
    g = x.flip(0)
    _, indices = knn(x, g, k, block_size=block, slack=slack, scores=False, labels=(labels, labels.flip(0)))
    np.testing.assert_array_equal(hits(labels.flip(0), labels, indices), hits(labels.flip(0), labels, brute_force(x, g, k)[1]))


@pytest.mark.parametrize("seed", [0, 1])
def test_labels_spare_float64_work_on_overlapping_classes(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 20, (1500,), generator=g)
    x = F.normalize(torch.randn(20, 32, generator=g)[labels] + 2.0 * torch.randn(1500, 32, generator=g), dim=1)
    x[1400:1430] = x[5]  # exact ties too
    exact_scores, exact, exact_stats = knn(x, None, 90, block_size=256, return_stats=True)
    none, plain, plain_stats = knn(x, None, 90, block_size=256, scores=False, return_stats=True)
    _, relevant, stats = knn(x, None, 90, block_size=256, scores=False, labels=(labels, labels), return_stats=True)
    assert none is None and torch.equal(plain, exact) and plain_stats == exact_stats
    np.testing.assert_array_equal(hits(labels, labels, relevant), hits(labels, labels, exact))
    np.testing.assert_array_equal(exact.numpy(), brute_force(x, None, 90, self_mode=True)[1])
    assert stats["rescored_pairs"] < plain_stats["rescored_pairs"]


def test_labels_need_scores_off():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="needs scores=False"):
        knn(x, None, 3, labels=(torch.zeros(10, dtype=torch.long),) * 2)


def test_serial_ops_run_torch_on_one_thread_and_products_on_the_callers():
    from dmlbench.evaluation.neighbours import caller_threads, serial_ops

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with serial_ops("cpu"):
            assert torch.get_num_threads() == 1
            with serial_ops("cpu"):  # nested: the products still get the outermost caller's threads
                with caller_threads():
                    assert torch.get_num_threads() == 2
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with serial_ops("meta"):  # not the CPU: nothing changes
            assert torch.get_num_threads() == 2
        with caller_threads():  # outside serial_ops: nothing changes either
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_products_keep_the_faster_thread_count():
    from dmlbench.evaluation.neighbours import ProductThreads, serial_ops

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with serial_ops("cpu"):
            threads = ProductThreads()
            seen = []
            for _ in range(4):
                with threads(64 * 64 * 64):
                    seen.append(torch.get_num_threads())
                    torch.randn(64, 64) @ torch.randn(64, 64)
                assert torch.get_num_threads() == 1
            assert seen[:2] == [2, 1] and seen[2] == seen[3] == threads.choice in (1, 2)
        assert torch.get_num_threads() == 2
        x = F.normalize(torch.randn(3000, 16, generator=torch.Generator().manual_seed(5)), dim=1)
        np.testing.assert_array_equal(knn(x, None, 5, block_size=256)[1].numpy(), brute_force(x, None, 5, self_mode=True)[1])
    finally:
        torch.set_num_threads(before)
