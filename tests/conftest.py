"""Shared fixtures: a tiny Fashion-MNIST written as real IDX files, an isolated environment, and the
photo benchmarks' miniature counts.

The tiny dataset has the official file names and format, 10 classes, and class-dependent images
(a bright band whose position depends on the class, plus noise) so that a network can learn it in a
few steps. Tests never touch the user's cache or results folder.

Two markers sort the tests by device: ``cuda`` (needs a CUDA device; skipped, and counted as
skipped, where torch sees none) and ``devices`` (runs on every device torch sees). The GPU check
(``make gpu-check``) runs both on the GPU machine with ``-m "cuda or devices"``.

``make test`` runs the suite on pytest-xdist workers, one per core (``-n logical --dist loadfile
--no-loadscope-reorder``). Each worker computes on one thread (set here before torch is imported, so the
notebook kernels it starts inherit it too), unless a test sets threads itself. The tests of one file stay
together on one worker, in their order: module fixtures are built once, and a worker builds its own session
fixtures (the trained study of tests/study/conftest.py) under its own temporary folder, which only its own
tests read and write, one after another as in a serial run.
"""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # several workers share the cores: one thread each
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_variable] = "1"

import pytest

from .support import miniature_counts, write_fashion_mnist

# The files of a minute or more on one core, longest first: the workers start on them, so that no worker is
# left alone with a long one at the end (``--no-loadscope-reorder`` keeps this order; the rest follow).
LONG_FILES = ("tests/study/test_notebooks.py", "tests/datasets/test_benchmarks.py", "tests/study/test_executors.py",
              "tests/study/test_compare.py", "tests/losses/test_every_loss.py", "tests/reporting/test_report.py",
              "tests/bench/test_bench.py", "tests/study/test_indexes.py", "tests/study/test_results_folders.py")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped where torch sees none)")
    config.addinivalue_line("markers", "devices: runs on every device torch sees (the GPU check runs these on CUDA)")


def pytest_collection_modifyitems(config, items):
    import torch

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        long_files_first(items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch sees none here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def long_files_first(items):
    """Reorder the tests for the workers: the files of LONG_FILES first, each file's tests in their order."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(LONG_FILES)))  # a stable sort


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


