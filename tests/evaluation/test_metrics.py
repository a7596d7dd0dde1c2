"""Metrics against brute force and against pytorch-metric-learning's AccuracyCalculator."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from dmlbench.evaluation.metrics import evaluate, faiss_kmeans_clusters, kmeans_clusters
from dmlbench.evaluation.neighbours import knn


def clustered(n=300, dim=16, classes=20, noise=1.0, seed=0, singletons=0, duplicates=0):
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(classes, generator=g) ** 2 + 0.05  # unbalanced class sizes
    labels = torch.multinomial(weights, n, replacement=True, generator=g)
    centers = torch.randn(classes, dim, generator=g)
    x = centers[labels] + noise * torch.randn(n, dim, generator=g)
    if singletons:
        labels[:singletons] = torch.arange(1000, 1000 + singletons)
    for i in range(duplicates):
        x[-1 - i] = x[i]
    return F.normalize(x, dim=1), labels


def brute_force(x, labels, ks, gallery=None, gallery_labels=None):
    """Every definition of docs/protocol.md (metrics) in plain numpy: each query ranks every reference
    item by a full sort on (float64 cosine, descending; index, ascending)."""
    q = np.asarray(x, dtype=np.float64)
    q_labels = np.asarray(labels)
    ref = q if gallery is None else np.asarray(gallery, dtype=np.float64)
    ref_labels = q_labels if gallery is None else np.asarray(gallery_labels)
    scores = (q[:, None, :] * ref[None, :, :]).sum(axis=2)
    recall = {k: [] for k in ks}
    r_prec, ap = [], []
    for i in range(len(q)):
        candidates = np.arange(len(ref)) if gallery is not None else np.delete(np.arange(len(ref)), i)
        ranked = candidates[np.lexsort((candidates, -scores[i, candidates]))]
        rel = ref_labels[ranked] == q_labels[i]
        r = int(rel.sum())
        if r == 0:
            continue
        for k in ks:
            recall[k].append(rel[:k].any())
        r_prec.append(rel[:r].sum() / r)
        precision_at = np.cumsum(rel[:r]) / np.arange(1, r + 1)
        ap.append(float((precision_at * rel[:r]).sum() / r))
    out = {f"recall@{k}": float(np.mean(v)) for k, v in recall.items()}
    out.update({"r_precision": float(np.mean(r_prec)), "map@r": float(np.mean(ap)), "num_queries": len(ap)})
    return out


@pytest.mark.parametrize("seed,singletons,duplicates", [(0, 0, 0), (1, 5, 0), (2, 3, 4)])
def test_matches_brute_force(seed, singletons, duplicates):
    x, labels = clustered(n=150, seed=seed, singletons=singletons, duplicates=duplicates)
    ours = evaluate(x, labels, ks=(1, 2, 4, 8), nmi=False)
    expected = brute_force(x, labels, (1, 2, 4, 8))
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    assert ours["num_excluded_queries"] == lone_items(labels)


def lone_items(labels):
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return int((counts[inverse] == 1).sum())


def pml_accuracy(x, labels, gallery=None, gallery_labels=None, with_nmi=False):
    include = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
    if with_nmi:
        include += ("NMI", "AMI")
    calculator = AccuracyCalculator(include=include, k="max_bin_count")
    if gallery is None:
        return calculator.get_accuracy(x, labels, x, labels, ref_includes_query=True)
    return calculator.get_accuracy(x, labels, gallery, gallery_labels, ref_includes_query=False)


@pytest.mark.parametrize("seed,singletons,duplicates", [(0, 0, 0), (3, 6, 0), (4, 0, 5), (5, 4, 3)])
def test_matches_accuracy_calculator(seed, singletons, duplicates):
    x, labels = clustered(n=400, dim=32, classes=25, seed=seed, singletons=singletons, duplicates=duplicates)
    ours = evaluate(x, labels, nmi=False)
    theirs = pml_accuracy(x, labels)
    # Duplicated embeddings tie exactly; the reference leaves their order to faiss.
    tol = 1e-4 if duplicates else 1e-6
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=tol)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=tol)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=tol)


@pytest.mark.parametrize("n,classes,noise,seed", [(500, 10, 0.8, 6), (1500, 4, 1.0, 11), (800, 60, 1.2, 12)])
def test_nmi_equals_accuracy_calculator_defaults(n, classes, noise, seed):
    """Our k-means gives faiss.Kmeans's clusters, so NMI/AMI equal the reference's own numbers.

    (1500 points in 4 classes exceeds faiss's 256 points per centroid: the subsampled case.)
    """
    x, labels = clustered(n=n, dim=16, classes=classes, noise=noise, seed=seed)
    ours = evaluate(x, labels)
    theirs = pml_accuracy(x, labels, with_nmi=True)
    assert ours["nmi"] == pytest.approx(theirs["NMI"], abs=1e-12)
    assert ours["ami"] == pytest.approx(theirs["AMI"], abs=1e-12)
    assert 0.2 < ours["nmi"] < 1.0


def test_nmi_is_scikit_learns_on_the_same_clusters():
    x, labels = clustered(n=600, dim=16, classes=12, noise=1.0, seed=13)
    clusters = kmeans_clusters(x, 12)
    np.testing.assert_array_equal(clusters, faiss_kmeans_clusters(x, 12))
    ours = evaluate(x, labels)
    assert ours["nmi"] == normalized_mutual_info_score(labels.numpy(), clusters)
    assert ours["ami"] == adjusted_mutual_info_score(labels.numpy(), clusters)


def test_nmi_separates_structure_from_noise():
    x, labels = clustered(n=300, dim=32, classes=6, noise=0.01, seed=7)
    assert evaluate(x, labels)["nmi"] > 0.9
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert evaluate(x, shuffled)["nmi"] < 0.1


@pytest.mark.parametrize("seed,singletons,duplicates", [(8, 0, 0), (15, 6, 0), (16, 0, 6), (17, 4, 4)])
def test_gallery_mode_matches_brute_force_and_accuracy_calculator(seed, singletons, duplicates):
    x, labels = clustered(n=300, dim=16, classes=15, seed=seed, singletons=singletons)
    query, query_labels, gallery, gallery_labels = x[:120], labels[:120], x[120:].clone(), labels[120:]
    if duplicates:
        gallery[:duplicates] = gallery[-duplicates:]  # exact ties in the gallery
        query[-duplicates:] = gallery[:duplicates]  # queries that equal gallery items
    ours = evaluate(query, query_labels, gallery=gallery, gallery_labels=gallery_labels, nmi=False)
    expected = brute_force(query, query_labels, (1, 2, 4, 8), gallery, gallery_labels)
    theirs = pml_accuracy(query, query_labels, gallery, gallery_labels)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    assert ours["num_excluded_queries"] == 120 - expected["num_queries"]
    tol = 1e-4 if duplicates else 1e-6
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=tol)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=tol)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=tol)


def test_ties_are_broken_by_index_even_across_the_kth_place():
    # Items 1..6 are the same point: every query among them ties with the others.
    g = torch.Generator().manual_seed(0)
    base = F.normalize(torch.randn(1, 8, generator=g), dim=1)
    x = torch.cat([F.normalize(torch.randn(1, 8, generator=g), dim=1), base.repeat(6, 1),
                   F.normalize(torch.randn(5, 8, generator=g), dim=1)])
    _, idx = knn(x, None, 3, block_size=4, slack=0)
    assert idx[1].tolist() == [2, 3, 4]
    assert idx[6].tolist()[:2] == [1, 2]
    _, idx = knn(x, None, 5)
    assert idx[3].tolist() == [1, 2, 4, 5, 6]
    labels = torch.tensor([0] + [1] * 6 + [2, 2, 3, 3, 4])
    assert evaluate(x, labels, nmi=False)["map@r"] == pytest.approx(brute_force(x, labels, (1,))["map@r"], abs=1e-12)


def test_block_size_does_not_change_results():
    x, labels = clustered(n=257, seed=9)
    a = evaluate(x, labels, nmi=False, block_size=1024)
    b = evaluate(x, labels, nmi=False, block_size=10)
    assert a == b


@pytest.mark.parametrize("embeddings,labels,error,message", [
    (torch.tensor([[0.0, math.nan], [1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1, 1]), ValueError, "NaN or infinite"),
    (torch.tensor([[0.0, 1.0], [math.inf, 0.0], [0.0, 1.0]]), torch.tensor([0, 1, 1]), ValueError, r"NaN or infinite values \(rows \[1\]"),
    (torch.randn(4, 3), torch.tensor([0, 1, 1]), ValueError, "4 rows but 3 labels"),
    (torch.randn(4, 3), torch.tensor([0, 0, 0, 0]), ValueError, "fewer than two classes"),
    (torch.empty(0, 3), torch.empty(0, dtype=torch.long), ValueError, "empty"),
    (torch.randint(0, 5, (4, 3)), torch.tensor([0, 0, 1, 1]), TypeError, "floating point"),
    (torch.randn(4, 3, 2), torch.tensor([0, 0, 1, 1]), ValueError, "2-D"),
    (torch.randn(4, 3), torch.tensor([0.0, 0.0, 1.0, 1.0]), TypeError, "labels must be integers"),
    ([[0.0, 1.0]], [0], TypeError, "torch.Tensor or numpy array"),
])
def test_bad_input_fails_naming_the_problem(embeddings, labels, error, message):
    with pytest.raises(error, match=message):
        evaluate(embeddings, labels)


def test_numpy_input_and_excluded_count():
    x, labels = clustered(n=100, seed=10, singletons=4)
    out = evaluate(x.numpy(), labels.numpy(), nmi=False)
    assert out["num_excluded_queries"] == lone_items(labels) >= 4
    assert out["num_queries"] == 100 - lone_items(labels)


@pytest.mark.parametrize("kwargs,error,message", [
    ({"gallery": torch.randn(5, 4)}, ValueError, "gallery given without gallery_labels"),
    ({"gallery_labels": torch.zeros(5, dtype=torch.long)}, ValueError, "gallery_labels given without gallery"),
    ({"gallery": torch.randn(5, 3), "gallery_labels": torch.zeros(5, dtype=torch.long)}, ValueError, "gallery dim 3 differs"),
    ({"gallery": torch.randn(5, 4), "gallery_labels": torch.zeros(4, dtype=torch.long)}, ValueError, "gallery has 5 rows but 4 labels"),
    ({"gallery": torch.full((5, 4), math.inf), "gallery_labels": torch.zeros(5, dtype=torch.long)}, ValueError, "gallery contains NaN"),
    ({"ks": (0, 1)}, Exception, "ks must be positive"),
])
def test_bad_gallery_and_ks(kwargs, error, message):
    x, labels = clustered(n=20, dim=4, classes=3, seed=14)
    with pytest.raises(error, match=message):
        evaluate(x, labels, **kwargs)
