"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) as a zero-shot retrieval benchmark.

Split (docs/protocol.md, Splits): train = official train file, labels 0-4 (30,000 images);
test = official test file, labels 5-9 (5,000); validation = official test file, labels 0-4 (5,000),
since five train classes are too few to carve a class-disjoint validation split.

The four official IDX files are searched for, in order:

1. the ``root`` argument, if given (and nothing else);
2. each directory of ``$DMLBENCH_DATA`` (the files directly in it, or in ``fashion-mnist/``);
3. the files of Debian's ``dataset-fashion-mnist`` package (``dpkg -L`` tells where);
4. a previous download in the cache (``$DMLBENCH_CACHE/fashion-mnist/raw``);
5. the official release, downloaded into the cache and checked against its MD5 sums, where the
   network allows (``DMLBENCH_DOWNLOAD=0`` turns this off; ``DMLBENCH_FASHION_MNIST_URL`` names a
   mirror).

Decoded arrays are cached as ``.npz`` keyed by the files' paths, sizes and modification times, so a
run does not parse the archives again. The cache records each array's SHA-256 and is checked against
them when read: a damaged one is named in a warning, set aside (``<name>.damaged-<time>``) and decoded
again. A damaged download is set aside and fetched again; any other damaged file is named in one
line with how to replace it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import DatasetNotFoundError
from ..fileio import atomic_write_bytes, read_or_set_aside, set_aside
from .base import Dataset, ImageSet, Splits, cache_dir, data_roots, register_dataset
from .idx import IDXFormatError, read_idx

log = logging.getLogger("dmlbench")

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# MD5 sums of the official .gz files, as published with the dataset.
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = {0: "T-shirt/top", 1: "Trouser", 2: "Pullover", 3: "Dress", 4: "Coat",
               5: "Sandal", 6: "Shirt", 7: "Sneaker", 8: "Bag", 9: "Ankle boot"}
TRAIN_CLASSES = (0, 1, 2, 3, 4)
TEST_CLASSES = (5, 6, 7, 8, 9)
HOW_TO_GET = (
    f"Install Debian's package ('apt-get install {DEBIAN_PACKAGE}', or 'make data' as root), or put the four "
    "files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist in a directory and "
    "point $DMLBENCH_DATA at it."
)


def _files_in(directory: Path) -> dict[str, Path] | None:
    """The four files in ``directory`` (gzipped or not), or None if any is missing."""
    found = {}
    for key, stem in FILES.items():
        for name in (stem + ".gz", stem):
            if (directory / name).is_file():
                found[key] = directory / name
                break
        else:
            return None
    return found


def _debian_dirs() -> list[Path]:
    dirs = []
    if shutil.which("dpkg"):
        try:
            listing = subprocess.run(["dpkg", "-L", DEBIAN_PACKAGE], capture_output=True, text=True, timeout=30)
            for line in listing.stdout.splitlines():
                if line.endswith(FILES["train_images"] + ".gz"):
                    dirs.append(Path(line).parent)
        except (OSError, subprocess.SubprocessError):
            pass
    if DEBIAN_DIR not in dirs:
        dirs.append(DEBIAN_DIR)
    return dirs


def download_dir() -> Path:
    return cache_dir() / "fashion-mnist" / "raw"


def download(url: str | None = None, checksums: dict[str, str] | None = None, timeout: float = 30.0) -> dict[str, Path]:
    """Download the four files into the cache, verifying each against its MD5 sum."""
    url = url or os.environ.get("DMLBENCH_FASHION_MNIST_URL") or OFFICIAL_URL
    checksums = OFFICIAL_MD5 if checksums is None else checksums
    target = download_dir()
    for stem in FILES.values():
        name = stem + ".gz"
        if (target / name).is_file():
            continue
        source = url.rstrip("/") + "/" + name
        log.info("downloading %s", source)
        data = _fetch(source, timeout)
        digest = hashlib.md5(data).hexdigest()
        if name in checksums and digest != checksums[name]:
            raise OSError(f"{source}: MD5 {digest} differs from the published {checksums[name]}; file discarded")
        atomic_write_bytes(target / name, data)
    found = _files_in(target)
    assert found is not None
    return found


def _fetch(source: str, timeout: float) -> bytes:
    """The file at ``source``, its bytes counted on a bar on stderr as they arrive."""
    from tqdm.auto import tqdm

    chunks = []
    with urllib.request.urlopen(source, timeout=timeout) as response:
        length = (response.headers.get("Content-Length") or "") if response.headers else ""
        with tqdm(total=int(length) if length.isdigit() else None, unit="B", unit_scale=True, file=sys.stderr,
                  desc=f"fashion-mnist {source.rsplit('/', 1)[-1]}") as bar:
            while chunk := response.read(1 << 20):
                chunks.append(chunk)
                bar.update(len(chunk))
    return b"".join(chunks)


def locate(root: str | os.PathLike | None = None, *, allow_download: bool | None = None) -> tuple[dict[str, Path], str]:
    """Find the four files; returns ``(paths, where)`` or raises DatasetNotFoundError."""
    searched: list[str] = []
    if root is not None:
        for directory in (Path(root), Path(root) / "fashion-mnist"):
            searched.append(str(directory))
            if found := _files_in(directory):
                return found, f"data root {directory}"
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found in the given data root; looked in: {', '.join(searched)}. {HOW_TO_GET}")
    for base in data_roots():
        for directory in (base, base / "fashion-mnist"):
            searched.append(f"{directory} ($DMLBENCH_DATA)")
            if found := _files_in(directory):
                return found, f"$DMLBENCH_DATA {directory}"
    for directory in _debian_dirs():
        searched.append(f"{directory} (Debian package {DEBIAN_PACKAGE})")
        if found := _files_in(directory):
            return found, f"Debian package {DEBIAN_PACKAGE} ({directory})"
    searched.append(f"{download_dir()} (earlier download)")
    if found := _files_in(download_dir()):
        return found, f"download cache {download_dir()}"
    if allow_download is None:
        allow_download = os.environ.get("DMLBENCH_DOWNLOAD", "1") != "0"
    if allow_download:
        url = os.environ.get("DMLBENCH_FASHION_MNIST_URL") or OFFICIAL_URL
        try:
            return download(url), f"downloaded from {url}"
        except (OSError, urllib.error.URLError) as error:
            searched.append(f"{url} (download failed: {error})")
    else:
        searched.append("official download (disabled by DMLBENCH_DOWNLOAD=0)")
    raise DatasetNotFoundError(f"Fashion-MNIST not found; looked in: {'; '.join(searched)}. {HOW_TO_GET}")


def _decode(paths: dict[str, Path]) -> dict[str, np.ndarray]:
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"Fashion-MNIST {part} files disagree: images {images.shape}, labels {labels.shape} "
                             f"({paths[f'{part}_images']}, {paths[f'{part}_labels']})")
        if labels.size and labels.max() > 9:
            raise ValueError(f"Fashion-MNIST {part} labels out of range 0-9 ({paths[f'{part}_labels']})")
    return arrays


def _read_decoded(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a decoded cache, each checked against the SHA-256 recorded beside it when it was
    written (a zip's checksums catch a damaged member; this catches one swapped or cut short)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    for name in FILES:
        recorded = arrays.get(f"{name}_sha256")
        if name not in arrays or recorded is None:
            raise ValueError(f"{name} or its recorded SHA-256 is missing")
        if hashlib.sha256(arrays[name].tobytes()).hexdigest() != str(recorded):
            raise ValueError(f"{name} differs from the SHA-256 recorded when the cache was written")
    return arrays


def load_arrays(paths: dict[str, Path], cache: bool = True) -> dict[str, np.ndarray]:
    """Decoded arrays of the four files, from the .npz cache when it is current."""
    stats = [(key, str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for key, p in sorted(paths.items())]
    key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]
    cached = cache_dir() / "fashion-mnist" / f"decoded-{key}.npz"
    if cache and cached.is_file():
        arrays = read_or_set_aside(cached, _read_decoded, "Fashion-MNIST cache", log)
        if arrays is not None:
            return arrays
    arrays = _decode(paths)
    arrays.update({f"{k}_sha256": np.array(hashlib.sha256(v.tobytes()).hexdigest()) for k, v in list(arrays.items())})
    if cache:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(cached, buffer.getvalue())
    return arrays


def _after_damaged_source(error: IDXFormatError, root) -> tuple[dict[str, Path], str]:
    """Where a source file does not read: an earlier download is set aside and fetched again (when
    downloads are allowed); any other file is named, with how to replace it, in one line."""
    path = Path(error.path or "")
    problem = " ".join(str(error).split())
    if root is None and path.parent == download_dir():
        moved = set_aside(path)
        log.warning("%s; set aside as %s, downloading it again", problem, moved.name)
        try:
            return locate(None)
        except DatasetNotFoundError:
            raise DatasetNotFoundError(f"{problem}; set aside as {moved.name}, and no good copy was found to replace "
                                       f"it: run 'make data' (or allow the download: DMLBENCH_DOWNLOAD=1)") from None
    if DEBIAN_DIR in path.parents or any(d in path.parents for d in _debian_dirs()):
        raise DatasetNotFoundError(f"{problem} (a damaged file of Debian's {DEBIAN_PACKAGE}); reinstall it with "
                                   f"'apt-get install --reinstall {DEBIAN_PACKAGE}' (as root), then run again") from None
    raise DatasetNotFoundError(f"{problem} (a damaged Fashion-MNIST file); replace it with a good copy of the official "
                               f"file, or remove it so that 'make data' finds or fetches the dataset") from None


@register_dataset
class FashionMNIST(Dataset):
    name = "fashion-mnist"
    description = "Fashion-MNIST, zero-shot: train on labels 0-4, test on labels 5-9 (28x28 grey, 10 classes)."
    # split_sizes stays None: validation is the test file's train classes, not carved out of train
    num_classes = (len(TRAIN_CLASSES), len(TEST_CLASSES))
    channels = 1
    default_image_size = 28

    @staticmethod
    def load(root: str | os.PathLike | None = None, cache: bool = True) -> Splits:
        paths, where = locate(root)
        try:
            arrays = load_arrays(paths, cache=cache)
        except IDXFormatError as error:  # a damaged source file: a download is fetched again, others named
            paths, where = _after_damaged_source(error, root)
            arrays = load_arrays(paths, cache=cache)
        train_x, train_y = arrays["train_images"], arrays["train_labels"].astype(np.int64)
        test_x, test_y = arrays["test_images"], arrays["test_labels"].astype(np.int64)
        train = np.isin(train_y, TRAIN_CLASSES)
        val = np.isin(test_y, TRAIN_CLASSES)
        test = np.isin(test_y, TEST_CLASSES)
        pixels = train_x[train].astype(np.float64) / 255.0
        return Splits(
            name="fashion-mnist",
            train=ImageSet(train_x[train], train_y[train]),
            val=ImageSet(test_x[val], test_y[val]),
            test=ImageSet(test_x[test], test_y[test]),
            class_names=dict(CLASS_NAMES),
            mean=float(pixels.mean()) if pixels.size else 0.0,
            std=float(pixels.std()) if pixels.size else 1.0,
            source={"where": where, "files": {k: str(p) for k, p in paths.items()},
                    "sha256": {k: str(arrays[f"{k}_sha256"]) for k in FILES}},
        )
