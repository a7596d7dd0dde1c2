"""The real benchmarks as datasets: miniature official layouts with real images, loaded, cached and fed."""

import os

import numpy as np
import pytest
import torch

from dmlbench.config import RunConfig
from dmlbench.datasets import PhotoSet, load_dataset
from dmlbench.datasets.benchmarks import cache_side, locate_layout
from dmlbench.datasets.image_cache import ImageReadError
from dmlbench.datasets.layouts import LayoutError
from dmlbench.errors import ConfigError
from dmlbench.training.loop import train

from ..support import FOLDERS, write_miniature

# (train classes after validation is carved, validation classes, test classes, test images, gallery images)
EXPECTED = {
    "cub": (80, 20, 100, 200, None),
    "cars196": (78, 20, 98, 196, None),
    "sop": (8, 2, 5, 10, None),
    "inshop": (6, 2, 4, 4, 8),
}


@pytest.fixture(scope="module")
def miniatures(tmp_path_factory):
    parent = tmp_path_factory.mktemp("benchmarks")
    return {name: write_miniature(name, parent) for name in FOLDERS}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DMLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DMLBENCH_DATA", raising=False)
    return tmp_path / "cache"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_splits_counts_and_disjoint_classes(name, miniatures, cache):
    splits = load_dataset(name, root=str(miniatures[name]), image_size=32)
    n_train, n_val, n_test, n_test_images, n_gallery = EXPECTED[name]
    assert (len(splits.train.classes), len(splits.val.classes), len(splits.test.classes)) == (n_train, n_val, n_test)
    assert len(splits.test) == n_test_images
    train, val, test = set(splits.train.classes), set(splits.val.classes), set(splits.test.classes)
    assert not train & val and not train & test and not val & test
    assert all(isinstance(s, PhotoSet) for s in (splits.train, splits.val, splits.test))
    if n_gallery is None:
        assert splits.gallery is None
    else:  # In-Shop: every query's item is in the gallery, none of them in training
        assert len(splits.gallery) == n_gallery and set(splits.test.classes) <= set(splits.gallery.classes)
        assert not set(splits.gallery.classes) & train and splits.summary()["num_gallery"] == n_gallery
    image = splits.test.images[0]
    assert image.dtype == np.uint8 and image.shape[0] == 3 and min(image.shape[1:]) == cache_side(32) == 37
    assert len(splits.mean) == len(splits.std) == 3


def test_found_through_dmlbench_data_and_cache_reused(miniatures, cache, monkeypatch):
    monkeypatch.setenv("DMLBENCH_DATA", str(miniatures["cub"].parent))
    folder, where = locate_layout("cub")
    assert folder == miniatures["cub"] and "DMLBENCH_DATA" in where
    first = load_dataset("cub", image_size=32)
    pixels = next(cache.rglob("pixels.u8"))
    stamp = pixels.stat().st_mtime_ns
    again = load_dataset("cub", image_size=32)
    assert pixels.stat().st_mtime_ns == stamp  # decoded once, not again
    assert np.array_equal(first.train.images[5], again.train.images[5])
    load_dataset("cub", image_size=48)  # another crop size: its own cache
    assert len(list(cache.rglob("pixels.u8"))) == 2


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_missing_layout_names_the_file_and_the_command(name, tmp_path, cache):
    with pytest.raises(LayoutError) as info:
        load_dataset(name, root=str(tmp_path / "nowhere"))
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and f"dmlbench data prepare {name}" in message
    assert {"cub": "images.txt", "cars196": "cars_annos.mat", "sop": "Ebay_train.txt",
            "inshop": "list_eval_partition.txt"}[name] in message


def test_a_corrupt_image_is_named(tmp_path, cache):
    root = write_miniature("sop", tmp_path)
    bad = root / "chair_final" / "3_0.JPG"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageReadError, match=str(bad)):
        load_dataset("sop", root=str(root), image_size=32)
    assert not list(cache.rglob("index.npz"))  # no cache that looks finished


def test_image_size_is_for_photo_datasets_only():
    with pytest.raises(ConfigError, match=r"image_size=\d+ applies to the photo datasets"):
        RunConfig(image_size=64).validate()
    with pytest.raises(ConfigError, match="num_workers must be"):
        RunConfig(dataset="cub", num_workers=-1).validate()


def photo_config(name, **overrides):
    settings = dict(dataset=name, model="resnet18", model_kwargs={"pretrained": False}, embedding_dim=16,
                    loss="triplet", miner="semi-hard", P=4, K=2, epochs=1, iters_per_epoch=2, image_size=32,
                    eval_batch_size=64, device="cpu", num_workers=0)
    settings.update(overrides)
    return RunConfig(**settings)


def test_training_numbers_do_not_depend_on_the_number_of_loader_workers(miniatures, cache):
    splits = load_dataset("cub", root=str(miniatures["cub"]), image_size=32)
    runs = [train(photo_config("cub", num_workers=workers, epochs=2), splits, progress=False) for workers in (0, 2)]
    assert runs[0].history[1]["loss"] == runs[1].history[1]["loss"]
    assert [h["val_map@r"] for h in runs[0].history] == [h["val_map@r"] for h in runs[1].history]
    assert runs[0].test_metrics == runs[1].test_metrics
    assert runs[0].config.run_id() == runs[1].config.run_id()  # the worker count is not part of the identity


def test_inshop_is_evaluated_against_its_gallery(miniatures, cache):
    splits = load_dataset("inshop", root=str(miniatures["inshop"]), image_size=32)
    result = train(photo_config("inshop", P=3), splits, progress=False)
    assert result.gallery_embeddings.shape == (8, 16) and result.test_embeddings.shape == (4, 16)
    assert result.test_metrics["num_queries"] == 4 and result.test_metrics["num_excluded_queries"] == 0
    assert torch.allclose(result.gallery_embeddings.norm(dim=1), torch.ones(8), atol=1e-5)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_one_epoch_through_the_experiment_notebook(name, miniatures, isolated):
    """A real papermill run of the experiment notebook: ResNet-18 (random weights), one epoch, CPU."""
    import json

    import nbformat

    from dmlbench.study.cells import run_config

    # the kernel is another process: the miniature is a deliberate subset of the published counts there
    config = photo_config(name, data_root=str(miniatures[name]), P=3 if name == "inshop" else 4, num_workers=1,
                          loss="contrastive", miner="none", data_subset=True)  # every pair counts: the loss is positive
    metrics = run_config(config, run_dir=isolated / "run")
    record = json.loads(metrics.read_text())
    counts = record["dataset"]["source"]["count_check"]
    assert counts["subset"] is True and counts["found"]["test"] == EXPECTED[name][3]  # the run records what it got
    assert record["config"]["dataset"] == name and record["config"]["model"] == "resnet18"
    assert len(record["history"]) == 2 and record["history"][1]["loss"] > 0
    assert record["dataset"]["num_test"] == EXPECTED[name][3]
    assert 0 <= record["test"]["recall@1"] <= 1 and record["test"]["num_queries"] > 0
    if name == "inshop":
        assert record["dataset"]["num_gallery"] == EXPECTED[name][4]
    executed = nbformat.read(str(metrics.parent / "experiment.ipynb"), as_version=4)
    pictures = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 3  # curves, t-SNE, retrieval grid of photos


def test_data_prepare_command_builds_the_cache_and_names_what_is_missing(miniatures, cache, tmp_path, capsys):
    from dmlbench.cli import main

    assert main(["data", "prepare", "sop", "--root", str(miniatures["sop"]), "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "train 24 images / 8 classes" in out and "test 10 images / 5 classes" in out
    assert len(list(cache.rglob("index.npz"))) == 1
    assert main(["data", "locate", "sop", "--root", str(miniatures["sop"])]) == 0
    assert str(miniatures["sop"]) in capsys.readouterr().out
    assert main(["data", "prepare", "cub", "--root", str(tmp_path / "empty"), "--no-download"]) != 0
    error = capsys.readouterr().err
    assert "images.txt" in error and "dmlbench data prepare cub" in error


def test_data_prepare_downloads_verifies_unpacks_and_caches(tmp_path, cache, monkeypatch, capsys):
    import hashlib
    import tarfile

    from dmlbench.cli import main
    from dmlbench.datasets import download

    source = tmp_path / "source"
    write_miniature("cub", source)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = mirror / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "CUB_200_2011", arcname="CUB_200_2011")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    official = download.ARCHIVES["cub"][0]
    monkeypatch.setitem(download.ARCHIVES, "cub", [download.Archive(official.url, official.filename, md5,
                                                                    official.contains)])
    root = tmp_path / "datasets" / "cub"
    assert main(["data", "prepare", "cub", "--root", str(root), "--url", mirror.as_uri(), "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "downloaded into" in out and "test 200 images / 100 classes" in out
    assert (root / "CUB_200_2011" / "images.txt").is_file() and len(list(cache.rglob("index.npz"))) == 1
    splits = load_dataset("cub", root=str(root), image_size=32)  # the sub-folder is found from the root
    assert len(splits.test) == 200
    # a damaged download is refused, naming both sums
    monkeypatch.setitem(download.ARCHIVES, "cub", [download.Archive(official.url, official.filename, "0" * 32,
                                                                    official.contains)])
    assert main(["data", "prepare", "cub", "--root", str(tmp_path / "other"), "--url", mirror.as_uri()]) != 0
    error = capsys.readouterr().err
    assert md5 in error and "0" * 32 in error


def test_a_cub_study_on_a_preset_reports_beside_the_published_numbers(miniatures, isolated, tmp_path, monkeypatch):
    """A real study on the miniature CUB (roth2020 preset, shrunk to run in seconds), then the report:
    our cell stands beside Roth et al.'s number, with the settings that depart from the preset named."""
    import yaml

    from dmlbench.reporting.report import build_report
    from dmlbench.study.cells import load_study
    from dmlbench.study.executors import run_study

    monkeypatch.setenv("DMLBENCH_DATA", str(miniatures["cub"].parent))
    study_path = tmp_path / "cub-tiny.yaml"
    study_path.write_text(yaml.safe_dump({
        "name": "cub-tiny", "datasets": ["cub"], "losses": {"triplet": {"margin": 0.2}}, "miners": ["semi-hard"],
        "seeds": [0], "settings": {"preset": "roth2020", "model": "resnet18", "model_kwargs": {"pretrained": False},
                                   "embedding_dim": 16, "P": 4, "image_size": 32, "epochs": 1, "iters_per_epoch": 2,
                                   "eval_batch_size": 64, "device": "cpu", "num_workers": 0,
                                   "data_subset": True}}))  # the notebooks' kernels check the published counts
    study = load_study(study_path)
    assert study.cells[0].config.lr == 1e-5 and study.cells[0].config.K == 2  # from the preset
    run_study(study)
    text = build_report(study_path).read_text()
    table = (isolated / "results" / "tables" / "cub__literature.csv").read_text()
    assert "Roth et al., ICML 2020" in text and "triplet, semi-hard" in table
    assert "differs: our settings depart from the preset (" in table and "epochs: 1 (preset 150)" in table


def test_study_lists_and_prepares_its_datasets(miniatures, isolated, tmp_path, capsys, monkeypatch):
    import yaml

    from dmlbench.cli import main

    study = tmp_path / "two.yaml"
    study.write_text(yaml.safe_dump({"datasets": ["sop", "fashion-mnist"], "losses": ["contrastive"],
                                     "miners": ["none"], "settings": {"model": "convnet"}}))
    assert main(["study", str(study), "--datasets"]) == 0
    assert capsys.readouterr().out.split() == ["sop", "fashion-mnist"]
    monkeypatch.setenv("DMLBENCH_DATA", os.pathsep.join([str(miniatures["sop"].parent), os.environ["DMLBENCH_DATA"]]))
    assert main(["study", str(study), "--prepare-data"]) == 0
    out = capsys.readouterr().out
    assert "sop: official layout in" in out and "224-pixel crops" in out and "fashion-mnist: train" in out
