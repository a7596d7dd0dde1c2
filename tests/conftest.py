"""Shared fixtures: a tiny Fashion-MNIST written as real IDX files, and an isolated environment.

The tiny dataset has the official file names and format, 10 classes, and class-dependent images
(a bright band whose position depends on the class, plus noise) so that a network can learn it in a
few steps. Tests never touch the user's cache or results folder.

Two markers sort the tests by device: ``cuda`` (needs a CUDA device; skipped, and counted as
skipped, where torch sees none) and ``devices`` (runs on every device torch sees). The GPU check
(``make gpu-check``) runs both on the GPU machine with ``-m "cuda or devices"``.
"""

from __future__ import annotations

import numpy as np
import pytest

from dmlbench.datasets.idx import write_idx

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


TRAIN_PER_CLASS = 40
TEST_PER_CLASS = 20


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    images = rng.integers(0, 60, size=(len(labels), 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        row = 2 + 2 * int(c)
        images[i, row:row + 3, 4:24] = 220
        if c % 2:
            images[i, 4:24, 14:16] = 180
    return images


def write_fashion_mnist(directory, train_per_class=TRAIN_PER_CLASS, test_per_class=TEST_PER_CLASS, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", make_images(labels, rng))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


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


def tiny_settings(**overrides):
    """RunConfig settings small enough for a run to take seconds on the CPU."""
    settings = dict(model_kwargs={"channels": [4, 8, 8]}, embedding_dim=8, P=5, K=4, epochs=2, iters_per_epoch=3,
                    lr=1e-3, eval_batch_size=256)
    settings.update(overrides)
    return settings
