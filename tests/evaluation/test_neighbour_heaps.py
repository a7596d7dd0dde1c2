"""The CPU candidate search (faiss heaps, label-sorted order) against the torch merge and brute force."""

import torch

from dmlbench.evaluation import neighbours
from dmlbench.evaluation.neighbours import knn


def _brute_force(x: torch.Tensor, k: int) -> torch.Tensor:
    """The rule by brute force: float64 elementwise scores, self excluded, ties by lower index."""
    x64 = x.double()
    scores = (x64[:, None, :] * x64[None, :, :]).sum(dim=2)
    scores.fill_diagonal_(-float("inf"))
    return scores.sort(dim=1, descending=True, stable=True).indices[:, :k]  # stable: equal scores by index


def test_heap_lists_hold_the_same_scores_as_the_torch_merge():
    torch.manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(900, 24), dim=1)
    exclude = torch.arange(900)
    with neighbours.serial_ops("cpu"):
        heap_s, heap_i = neighbours._heap_candidates(x, x, 20, True, exclude, 128, 256)
        torch_s, torch_i = neighbours._torch_candidates(x, x, 20, True, exclude, 128, 256)
    assert torch.equal(heap_s, torch_s)
    assert (heap_i != exclude[:, None]).all()


def test_label_sorted_search_ranks_duplicates_and_ties_as_brute_force():
    torch.manual_seed(4)
    x = torch.randint(-2, 3, (400, 6)).float()  # many exactly equal scores
    x[50:90] = x[7]  # duplicated embeddings: ties across the k-th place
    labels = torch.randint(0, 9, (400,))
    expected = _brute_force(x, 12)
    _, plain = knn(x, None, 12, scores=False)
    assert torch.equal(plain, expected)
    _, grouped = knn(x, None, 12, scores=False, labels=(labels, labels))
    # with labels only the sequence of same-label neighbours is promised
    assert torch.equal(labels[grouped] == labels[:, None], labels[expected] == labels[:, None])
