"""Shared fixtures: a tiny Fashion-MNIST written as real IDX files, an isolated environment, and the
photo benchmarks' miniature counts.

The tiny dataset has the official file names and format, 10 classes, and class-dependent images
(a bright band whose position depends on the class, plus noise) so that a network can learn it in a
few steps. Tests never touch the user's cache or results folder.

Two markers sort the tests by device: ``cuda`` (needs a CUDA device; skipped, and counted as
skipped, where torch sees none) and ``devices`` (runs on every device torch sees). The GPU check
(``make gpu-check``) runs both on the GPU machine with ``-m "cuda or devices"``.
"""

from __future__ import annotations

import pytest

from .support import miniature_counts, write_fashion_mnist


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped where torch sees none)")
    config.addinivalue_line("markers", "devices: runs on every device torch sees (the GPU check runs these on CUDA)")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch sees none here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def miniature_benchmark_counts(monkeypatch):
    """The photo benchmarks' tests read miniatures (tests/support.py): each carries its own counts as the
    dataset class's ``counts`` fact, the mechanism that carries the published ones (those stay in
    dmlbench.datasets.counts.OFFICIAL, which tests of the real numbers read)."""
    from dmlbench.datasets import DATASETS

    for name, counts in miniature_counts().items():
        monkeypatch.setattr(DATASETS.get(name), "counts", counts)


@pytest.fixture(scope="session")
def tiny_fmnist(tmp_path_factory):
    """A folder with the four IDX .gz files of a tiny Fashion-MNIST (400 train, 200 test images)."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist") / "fashion-mnist")


@pytest.fixture
def isolated(tmp_path, monkeypatch, tiny_fmnist):
    """DMLBENCH_* variables pointing at temporary folders and the tiny dataset; no download."""
    monkeypatch.setenv("DMLBENCH_DATA", str(tiny_fmnist.parent))
    monkeypatch.setenv("DMLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DMLBENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("DMLBENCH_DOWNLOAD", "0")
    return tmp_path


