"""Fashion-MNIST: IDX parsing, the search order, the cache, the download, and the zero-shot split."""

import hashlib
import http.server
import threading
from functools import partial

import numpy as np
import pytest

from dmlbench.datasets import load_dataset
from dmlbench.datasets import fashion_mnist as fm
from dmlbench.datasets.idx import IDXFormatError, read_idx, write_idx
from dmlbench.errors import DatasetNotFoundError

from ..support import TEST_PER_CLASS, TRAIN_PER_CLASS, write_fashion_mnist


def test_idx_round_trip_gz_and_plain(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.idx", "a.idx.gz"):
        write_idx(tmp_path / name, array)
        np.testing.assert_array_equal(read_idx(tmp_path / name), array)


def test_idx_rejects_corrupt_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(IDXFormatError, match="bad magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(IDXFormatError, match=r"shape \(5,\) \(5 bytes\) but 3 bytes follow"):
        read_idx(tmp_path / "short")


def test_zero_shot_split_is_class_disjoint_with_exact_counts(isolated, tiny_fmnist):
    splits = load_dataset("fashion-mnist")
    train_labels = read_idx(tiny_fmnist / "train-labels-idx1-ubyte.gz")
    test_labels = read_idx(tiny_fmnist / "t10k-labels-idx1-ubyte.gz")
    # train from the train file; validation and test from the test file, split by label
    np.testing.assert_array_equal(splits.train.labels, train_labels[train_labels < 5])
    np.testing.assert_array_equal(splits.val.labels, test_labels[test_labels < 5])
    np.testing.assert_array_equal(splits.test.labels, test_labels[test_labels >= 5])
    assert splits.train.classes == [0, 1, 2, 3, 4]
    assert splits.val.classes == [0, 1, 2, 3, 4]
    assert splits.test.classes == [5, 6, 7, 8, 9]
    assert not set(splits.train.classes) & set(splits.test.classes)
    assert len(splits.train) == 5 * TRAIN_PER_CLASS
    assert len(splits.val) == 5 * TEST_PER_CLASS
    assert len(splits.test) == 5 * TEST_PER_CLASS
    assert splits.train.images.shape[1:] == (28, 28) and splits.train.images.dtype == np.uint8


def test_real_fashion_mnist_split_counts(tmp_path, monkeypatch):
    """The real files (installed by `make data` from Debian's package): the protocol's exact counts."""
    monkeypatch.setenv("DMLBENCH_CACHE", str(tmp_path))
    fm.locate(allow_download=False)
    splits = load_dataset("fashion-mnist")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30000, 5000, 5000)
    for split in (splits.train, splits.val, splits.test):
        assert np.bincount(split.labels, minlength=10)[split.classes].tolist() == \
            [6000 if split is splits.train else 1000] * 5
    assert 0.25 < splits.mean < 0.33 and 0.3 < splits.std < 0.4


def test_search_order_env_before_debian(isolated, tiny_fmnist, tmp_path, monkeypatch):
    other = write_fashion_mnist(tmp_path / "second" / "fashion-mnist", train_per_class=2, test_per_class=2, seed=1)
    monkeypatch.setenv("DMLBENCH_DATA", f"{other.parent}:{tiny_fmnist.parent}")
    paths, where = fm.locate()
    assert where.startswith("$DMLBENCH_DATA") and paths["train_images"].parent == other
    monkeypatch.setenv("DMLBENCH_DATA", str(tmp_path / "nothing-here"))
    monkeypatch.setattr(fm, "_debian_dirs", lambda: [tiny_fmnist])
    paths, where = fm.locate()
    assert where.startswith("Debian package")


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(isolated, tmp_path, monkeypatch):
    monkeypatch.setenv("DMLBENCH_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(fm, "_debian_dirs", lambda: [tmp_path / "no-debian"])
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist")
    message = str(info.value)
    assert str(tmp_path / "empty") in message and "no-debian" in message
    assert "apt-get install dataset-fashion-mnist" in message and "DMLBENCH_DATA" in message
    with pytest.raises(DatasetNotFoundError, match="given data root"):
        load_dataset("fashion-mnist", root=str(tmp_path / "empty"))


def test_decoded_arrays_are_cached(isolated, monkeypatch):
    first = load_dataset("fashion-mnist")
    cached = list((isolated / "cache" / "fashion-mnist").glob("decoded-*.npz"))
    assert len(cached) == 1

    def no_parsing(path):
        raise AssertionError(f"archive {path} parsed again")

    monkeypatch.setattr(fm, "read_idx", no_parsing)
    second = load_dataset("fashion-mnist")
    np.testing.assert_array_equal(first.train.images, second.train.images)
    np.testing.assert_array_equal(first.test.labels, second.test.labels)


def serve(directory):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_download_from_a_mirror_checks_md5(isolated, tiny_fmnist, tmp_path, monkeypatch):
    server = serve(tiny_fmnist)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        monkeypatch.setenv("DMLBENCH_DATA", str(tmp_path / "empty"))
        monkeypatch.setattr(fm, "_debian_dirs", lambda: [])
        checksums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in tiny_fmnist.iterdir()}
        wrong = dict(checksums, **{"train-images-idx3-ubyte.gz": "0" * 32})
        with pytest.raises(OSError, match="differs from the published"):
            fm.download(url, checksums=wrong)
        assert not (fm.download_dir() / "train-images-idx3-ubyte.gz").exists()
        paths = fm.download(url, checksums=checksums)
        assert all(p.parent == fm.download_dir() for p in paths.values())
        assert fm.locate()[1].startswith("download cache")
    finally:
        server.shutdown()


def test_official_checksums_are_the_published_ones():
    assert fm.OFFICIAL_MD5["train-images-idx3-ubyte.gz"] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert set(fm.OFFICIAL_MD5) == {stem + ".gz" for stem in fm.FILES.values()}
