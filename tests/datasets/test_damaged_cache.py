"""Damaged dataset caches and source files: each is named with its path, set aside
(``<name>.damaged-<time>``) and rebuilt from its source; where it cannot be rebuilt, one line names it
and how to get a good copy. Real cache files, written by the real loaders into a temporary cache
($DMLBENCH_CACHE), damaged in place; the user's cache is never touched."""

from __future__ import annotations

import hashlib
import re
import shutil

import numpy as np
import pytest
import torch

from dmlbench.cli import main
from dmlbench.datasets import fashion_mnist as fm
from dmlbench.datasets.image_cache import DamagedCacheError, ImageCache, build_cache
from dmlbench.errors import DatasetNotFoundError

from .test_image_cache import write_images


def truncate(path, size):
    with open(path, "r+b") as handle:
        handle.truncate(size)


def flip_byte(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def set_aside(folder, name) -> list:
    return sorted(folder.glob(f"{name}.damaged-*"))


@pytest.fixture
def decoded(isolated):
    """The tiny Fashion-MNIST loaded once, its decoded cache written: (splits, cache file)."""
    splits = fm.FashionMNIST.load()
    (cache,) = (isolated / "cache" / "fashion-mnist").glob("decoded-*.npz")
    return splits, cache


@pytest.mark.parametrize("damage, why", [
    (lambda path: truncate(path, path.stat().st_size // 2), "BadZipFile"),
    (lambda path: truncate(path, 0), "EOFError"),
    (lambda path: flip_byte(path, path.stat().st_size // 3), "Bad CRC-32"),  # inside the train images
])
def test_a_damaged_fashion_mnist_cache_is_named_set_aside_and_rebuilt(decoded, caplog, damage, why):
    splits, cache = decoded
    damage(cache)
    again = fm.FashionMNIST.load()
    assert f"{cache}: damaged Fashion-MNIST cache (" in caplog.text and why in caplog.text
    assert "set aside as " + cache.name + ".damaged-" in caplog.text
    (moved,) = set_aside(cache.parent, cache.name)
    assert np.array_equal(again.train.images, splits.train.images) and np.array_equal(again.test.labels, splits.test.labels)
    caplog.clear()
    fm.FashionMNIST.load()  # the rebuilt cache reads: nothing more is said or set aside
    assert "damaged" not in caplog.text and set_aside(cache.parent, cache.name) == [moved]


def test_a_cache_whose_arrays_differ_from_their_recorded_hashes_is_rebuilt(decoded, caplog):
    splits, cache = decoded
    with np.load(cache) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["test_labels"] = arrays["test_labels"][::-1].copy()  # a whole, readable zip with other contents
    np.savez(cache.with_suffix(".tmp.npz"), **arrays)
    cache.with_suffix(".tmp.npz").replace(cache)
    again = fm.FashionMNIST.load()
    assert "test_labels differs from the SHA-256 recorded" in caplog.text
    assert np.array_equal(again.test.labels, splits.test.labels)


def copy_sources(tiny_fmnist, folder):
    folder.mkdir(parents=True)
    for path in tiny_fmnist.iterdir():
        shutil.copy(path, folder / path.name)
    return folder / "train-labels-idx1-ubyte.gz"


def test_a_damaged_download_is_set_aside_and_fetched_again(isolated, tiny_fmnist, monkeypatch, caplog):
    monkeypatch.delenv("DMLBENCH_DATA")
    monkeypatch.setattr(fm, "_debian_dirs", lambda: [])  # this machine's Debian package is not the one tested
    damaged = copy_sources(tiny_fmnist, fm.download_dir())
    truncate(damaged, 20)
    monkeypatch.setenv("DMLBENCH_DOWNLOAD", "1")
    monkeypatch.setenv("DMLBENCH_FASHION_MNIST_URL", tiny_fmnist.as_uri())  # a mirror: the tiny files
    monkeypatch.setattr(fm, "OFFICIAL_MD5", {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in tiny_fmnist.iterdir()})
    splits = fm.FashionMNIST.load()
    assert f"{damaged}: cannot read" in caplog.text and "downloading it again" in caplog.text
    assert len(set_aside(damaged.parent, damaged.name)) == 1 and damaged.read_bytes() == (tiny_fmnist / damaged.name).read_bytes()
    assert len(splits.train) > 0


def test_a_damaged_download_without_a_network_fails_in_one_line(isolated, tiny_fmnist, monkeypatch, capsys):
    monkeypatch.delenv("DMLBENCH_DATA")
    monkeypatch.setattr(fm, "_debian_dirs", lambda: [])
    damaged = copy_sources(tiny_fmnist, fm.download_dir())
    truncate(damaged, 20)
    assert main(["data", "prepare", "fashion-mnist"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"dmlbench: error: {damaged}: cannot read") and "run 'make data'" in line
    assert len(set_aside(damaged.parent, damaged.name)) == 1


@pytest.mark.parametrize("where, way_out", [
    ("debian", "reinstall it with 'apt-get install --reinstall dataset-fashion-mnist'"),
    ("data", "replace it with a good copy of the official file"),
])
def test_a_damaged_source_that_cannot_be_rebuilt_is_named_in_one_line(isolated, tiny_fmnist, monkeypatch, capsys,
                                                                       where, way_out):
    folder = isolated / where / "fashion-mnist"
    damaged = copy_sources(tiny_fmnist, folder)
    flip_byte(damaged, damaged.stat().st_size - 6)  # the gzip trailer: its CRC no longer matches
    if where == "debian":
        monkeypatch.delenv("DMLBENCH_DATA")
        monkeypatch.setattr(fm, "_debian_dirs", lambda: [folder])
    else:
        monkeypatch.setenv("DMLBENCH_DATA", str(folder.parent))
    assert main(["data", "prepare", "fashion-mnist"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"dmlbench: error: {damaged}: cannot read") and way_out in line
    assert damaged.is_file() and not set_aside(folder, damaged.name), "a file dmlbench did not write is left alone"


@pytest.mark.parametrize("name, damage, problem", [
    ("index.npz", lambda p: truncate(p, p.stat().st_size - 100), "index.npz: a damaged image cache index (BadZipFile"),
    ("pixels.u8", lambda p: truncate(p, p.stat().st_size - 1), "pixels.u8: 6,911 bytes, its index says 6,912"),
])
def test_a_damaged_image_cache_is_named_set_aside_and_rebuilt(tmp_path, caplog, name, damage, problem):
    images = write_images(tmp_path / "data", [(40, 30), (30, 50), (64, 64)])
    cache = build_cache(tmp_path / "data", images, tmp_path / "cache", shorter_side=24, progress=False)
    first = [cache[i] for i in range(3)]
    del cache
    damage(tmp_path / "cache" / name)
    with pytest.raises(DamagedCacheError, match=re.escape(problem)) as info:
        ImageCache(tmp_path / "cache")
    assert "'dmlbench data prepare <dataset>'" in str(info.value) and "\n" not in str(info.value)
    again = build_cache(tmp_path / "data", images, tmp_path / "cache", shorter_side=24, progress=False)
    assert problem in caplog.text and "rebuilding the cache" in caplog.text
    assert len(set_aside(tmp_path / "cache", "index.npz")) == 1 and len(set_aside(tmp_path / "cache", "pixels.u8")) == 1
    assert all(torch.equal(again[i], first[i]) for i in range(3))


def test_a_damaged_han_typefaces_build_is_named_set_aside_and_rebuilt(tmp_path, monkeypatch, caplog):
    from dmlbench.datasets import typefaces

    from .test_typefaces import SMALL

    monkeypatch.setenv("DMLBENCH_CACHE", str(tmp_path))
    monkeypatch.delenv(typefaces.BUILD_VARIABLE, raising=False)
    key = typefaces.fingerprint(SMALL, typefaces.discover_faces(SMALL.packages))
    path = typefaces.build_path(key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 cut short")
    made = {"arrays": {"x": np.zeros(2, np.uint8)}, "facts": {"rendered": True}}
    # the rendering itself is tested elsewhere
    monkeypatch.setattr(typefaces, "build_folds", lambda spec, faces: {fold: made for fold in range(spec.folds)})
    built, again = typefaces.load_build(SMALL)
    assert again == key and built is made
    assert f"{path}: damaged han-typefaces build (BadZipFile" in caplog.text
    assert len(set_aside(path.parent, path.name)) == 1 and typefaces.read_build(path)["facts"] == {"rendered": True}


@pytest.mark.parametrize("name, damage, problem", [
    ("plan.json", lambda p: truncate(p, 10), "JSONDecodeError"),
    ("blocks.done", lambda p: p.write_text("0\nx1\n"), "invalid literal for int() with base 10: 'x1'"),
    ("pixels.u8.partial", lambda p: truncate(p, 100), "pixels.u8.partial has 100 bytes, its plan 6,912"),
])
def test_an_interrupted_image_cache_build_with_damaged_files_starts_over(tmp_path, monkeypatch, caplog, name, damage,
                                                                         problem):
    from dmlbench.datasets import image_cache
    from dmlbench.datasets.image_cache import ImageReadError

    monkeypatch.setattr(image_cache, "BLOCK", 1)  # one image a block: the build stops after two blocks
    images = write_images(tmp_path / "data", [(40, 30), (30, 50), (64, 64)])
    good = (tmp_path / "data" / images.paths[2]).read_bytes()
    (tmp_path / "data" / images.paths[2]).write_bytes(good[:len(good) // 2])  # its header reads, its pixels not
    with pytest.raises(ImageReadError):
        build_cache(tmp_path / "data", images, tmp_path / "cache", shorter_side=24, workers=1, progress=False)
    assert (tmp_path / "cache" / "blocks.done").read_text() == "0\n1\n"
    (tmp_path / "data" / images.paths[2]).write_bytes(good)
    damage(tmp_path / "cache" / name)
    built = build_cache(tmp_path / "data", images, tmp_path / "cache", shorter_side=24, workers=1, progress=False)
    assert problem in caplog.text and "the build starts over" in caplog.text
    assert len(set_aside(tmp_path / "cache", name)) == 1
    clean = build_cache(tmp_path / "data", images, tmp_path / "clean", shorter_side=24, workers=1, progress=False)
    assert all(torch.equal(built[i], clean[i]) for i in range(3))
