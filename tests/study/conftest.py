"""A small study of two real finished runs (papermill executions on the tiny Fashion-MNIST), shared by
the tests of the index evaluation and of the search command."""

from __future__ import annotations

import pytest
import yaml

from ..support import tiny_settings

INDEXES = {"queries": 1000, "exact_queries": 25, "families": [
    {"family": "flat"}, {"family": "hnsw", "M": 8, "sweep": [4, 64]}, {"family": "ivf-flat", "nlist": 4, "sweep": [1, 4]},
    {"family": "pq", "m": 4, "nbits": 4}, {"family": "sq8"}, {"family": "ball-tree"}, {"family": "pivots", "pivots": 4},
    {"family": "vp-tree", "leaf_size": 4}, {"family": "m-tree", "capacity": 4}, {"family": "aesa"}]}


@pytest.fixture(scope="session")
def trained_study(tmp_path_factory, tiny_fmnist):
    """(study file, the loaded study, results folder) after both cells ran; the environment points at them
    only while the fixture builds them: tests set DMLBENCH_RESULTS themselves (``isolated_at``)."""
    from dmlbench.study.cells import load_study, run_config

    root = tmp_path_factory.mktemp("indexed")
    path = root / "indexed.yaml"
    path.write_text(yaml.safe_dump({"name": "indexed", "datasets": ["fashion-mnist"], "settings": tiny_settings(),
                                    "losses": ["triplet"], "miners": ["semi-hard", "none"], "seeds": [0],
                                    "indexes": INDEXES}))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DMLBENCH_DATA", str(tiny_fmnist.parent))
        env.setenv("DMLBENCH_CACHE", str(root / "cache"))
        env.setenv("DMLBENCH_RESULTS", str(root / "results"))
        env.setenv("DMLBENCH_DOWNLOAD", "0")
        study = load_study(path)
        for cell in study.cells:
            run_config(cell.config)
    return path, study, root


@pytest.fixture
def at_study(trained_study, monkeypatch, tiny_fmnist):
    """The trained study's environment, for one test."""
    path, study, root = trained_study
    monkeypatch.setenv("DMLBENCH_DATA", str(tiny_fmnist.parent))
    monkeypatch.setenv("DMLBENCH_CACHE", str(root / "cache"))
    monkeypatch.setenv("DMLBENCH_RESULTS", str(root / "results"))
    monkeypatch.setenv("DMLBENCH_DOWNLOAD", "0")
    return trained_study


@pytest.fixture
def image_folder(at_study, tmp_path):
    """30 test images of the tiny Fashion-MNIST as PNG files, one folder per class."""
    from PIL import Image

    from dmlbench.datasets import load_dataset

    splits = load_dataset("fashion-mnist")
    folder = tmp_path / "photos"
    for i in range(0, 90, 3):
        label = int(splits.test.labels[i])
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(splits.test.images[i]).save(folder / f"class{label}" / f"img{i:03d}.png")
    return folder
