"""The prepared GPU check (dmlbench.bench.gpucheck), without a GPU and without the network.

Covered, on real files, zips, tars and pip:

- plan_calls: one call when everything fits, one call per part when not, never a call over the
  limit; an error naming the sizes, the shortfall and what to do when a part does not fit beside
  the repository, when the repository leaves less room than the smallest part, or when it alone is
  over the limit; tree_files and largest_folders on a git repository of their own;
- stored_copy: the same members, bytes, names and order, every member stored;
- _tar_xz and bundle_wheels: a reproducible archive of the stored copies, its manifest beside it,
  no rewrite while the inputs are unchanged, a rewrite when they change;
- install_wheels and install: a real tiny wheel installed with pip --target, importable from there,
  the stamp file, no reinstall for the same digest, a fresh target for another;
- bundle_data and split_digests: the carried Fashion-MNIST gives exactly the splits and the
  normalisation of the full files, with only the training classes in its training file; the carried
  han-typefaces build (this machine's cached build, its arrays stored) gives exactly its splits
  through DMLBENCH_HAN_TYPEFACES_BUILD (carried_data_env), which the cells' check requires;
- CELLS: each names one cell of the default study, the dry run's cover every dataset;
- runtime_pins on this venv; device_view and the GUARD sitecustomize of the dry run;
- Steps: a step over its time is stopped with its children, a spent budget runs nothing more;
- collect, and main's argument error for an empty folder.

Most tests work in a temporary folder under build/, where the check keeps its own files; one shows
that a destination outside the repository works as well.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

from dmlbench.bench import gpucheck
from dmlbench.bench.gpucheck import DEVICE_COMMAND
from dmlbench.datasets import typefaces
from dmlbench.datasets.fashion_mnist import FILES, TRAIN_CLASSES, FashionMNIST
from dmlbench.datasets.idx import read_idx
from dmlbench.datasets.typefaces import HanTypefaces, discover_faces

MiB = 2**20


@pytest.fixture
def in_repo():
    """A temporary folder under the repository's (git-ignored) build/, removed afterwards."""
    base = gpucheck.ROOT / "build"
    base.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="test-gpucheck-", dir=base))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def make_zip(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """A zip of (name, data, compression) members, with fixed dates and an executable bit on *.sh."""
    with zipfile.ZipFile(path, "w") as z:
        for i, (name, data, compression) in enumerate(members):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 2, 3, 4, 2 * i))
            info.compress_type = compression
            info.external_attr = (0o755 if name.endswith(".sh") else 0o644) << 16
            z.writestr(info, data)
    return path


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(folder: Path, name: str = "dmlb_tiny", version: str = "0.1", value: str = "one") -> Path:
    """A minimal valid pure-Python wheel (deflated, with a correct RECORD)."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {value!r}\n".encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{n},{record_hash(d)},{len(d)}\n" for n, d in files.items()) + f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record.encode()
    return make_zip(folder / f"{name}-{version}-py3-none-any.whl",
                    [(n, d, zipfile.ZIP_DEFLATED) for n, d in files.items()])


def zip_contents(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


# ---------------------------------------------------------------------------------------------------
# plan_calls


def test_plan_one_call_when_everything_fits():
    parts = {"part1": 30 * MiB, "part2": 20 * MiB}
    calls = gpucheck.plan_calls(10 * MiB, parts, limit=60 * MiB)  # exactly at the limit still fits
    assert calls == [{"carry": ["build/gpu/part1", "build/gpu/part2"], "command": DEVICE_COMMAND,
                      "bytes": 60 * MiB}]


def test_plan_one_call_per_part_when_they_do_not_fit_together():
    parts = {"part1": 30 * MiB, "part2": 20 * MiB}
    calls = gpucheck.plan_calls(10 * MiB, parts, limit=60 * MiB - 1)
    assert [c["carry"] for c in calls] == [["build/gpu/part1"], ["build/gpu/part2"]]
    assert calls[0]["command"].startswith(DEVICE_COMMAND) and calls[0]["command"].endswith("--part 1")
    assert calls[1]["command"].startswith(DEVICE_COMMAND) and calls[1]["command"].endswith("--part 2")
    assert [c["bytes"] for c in calls] == [40 * MiB, 30 * MiB]
    assert all(c["bytes"] <= 60 * MiB - 1 for c in calls)


def test_plan_refuses_a_part_that_cannot_travel_beside_the_repository():
    with pytest.raises(SystemExit) as raised:
        gpucheck.plan_calls(10 * MiB, {"part1": 30 * MiB, "part2": 20 * MiB}, limit=35 * MiB)
    message = str(raised.value)
    assert "part1" in message and "part2" not in message
    for size in ("10.0 MiB", "30.0 MiB", "40.0 MiB", "35.0 MiB"):
        assert size in message
    assert "5.0 MiB over" in message and "at least 5.0 MiB fewer" in message and "make gpu-prepare" in message
    assert isinstance(raised.value, gpucheck.PlanError)


def test_plan_says_when_the_repository_leaves_less_room_than_the_smallest_part():
    largest = [("results/runs", 50 * MiB), ("results/report.html", 2 * MiB)]
    with pytest.raises(gpucheck.PlanError) as raised:
        gpucheck.plan_calls(56 * MiB, {"part1": 12 * MiB, "part2": 22 * MiB}, limit=64 * MiB, largest=largest)
    message = str(raised.value)
    assert "(56.0 MiB, carried by every call) leave 8.0 MiB of the 64.0 MiB" in message
    assert "smallest part, part1 (the wheels, 12.0 MiB): no call can carry any part" in message
    # both parts must travel: the repository must shrink by what the larger part lacks
    assert "at least 14.0 MiB fewer (its largest folders: results/runs 50.0 MiB, results/report.html 2.0 MiB)" in message
    assert "or part1 and part2 smaller" in message


def test_plan_says_when_the_repository_alone_is_over_the_limit():
    with pytest.raises(gpucheck.PlanError) as raised:
        gpucheck.plan_calls(70 * MiB, {"part1": 12 * MiB, "part2": 22 * MiB}, limit=64 * MiB)
    message = str(raised.value)
    assert "alone (70.0 MiB) exceed the 64.0 MiB" in message and "by 6.0 MiB: no part of the check can travel" in message
    assert "at least 28.0 MiB fewer," in message


def test_plan_rounds_a_shortfall_up():
    with pytest.raises(gpucheck.PlanError, match="0.1 MiB over.*at least 0.1 MiB fewer"):
        gpucheck.plan_calls(10 * MiB, {"part1": 30 * MiB + 1, "part2": MiB}, limit=40 * MiB)


def test_plan_never_plans_a_call_over_the_limit():
    limit = 64 * MiB
    for tree in range(0, 72, 4):
        for one in (1, 8, 12, 30, 60):
            for two in (1, 8, 22, 40):
                parts = {"part1": one * MiB, "part2": two * MiB}
                try:
                    calls = gpucheck.plan_calls(tree * MiB, parts, limit=limit)
                except gpucheck.PlanError:
                    assert tree * MiB + max(parts.values()) > limit
                    continue
                assert all(c["bytes"] <= limit for c in calls)
                assert sorted(x for c in calls for x in c["carry"]) == ["build/gpu/part1", "build/gpu/part2"]
                assert [c["bytes"] for c in calls] == ([tree * MiB + (one + two) * MiB] if len(calls) == 1 else
                                                       [(tree + one) * MiB, (tree + two) * MiB])


def test_tree_files_and_largest_folders(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    files = {"results/runs/a/metrics.json": 3000, "results/runs/b/metrics.json": 2000, "results/report.html": 4000,
             "dmlbench/x.py": 100, "README.md": 50, "build/big.bin": 9000, "notes.txt": 10}
    for name, size in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * size)
    (tmp_path / ".gitignore").write_bytes(b"build/\n")
    git("add", "results", "dmlbench", "README.md", ".gitignore")
    found = gpucheck.tree_files(tmp_path)
    # tracked and untracked-not-ignored files travel; ignored ones do not
    assert found == {name: size for name, size in files.items() if not name.startswith("build/")} | {".gitignore": 7}
    assert gpucheck.tree_bytes(tmp_path) == sum(found.values())
    assert gpucheck.largest_folders(tmp_path, count=3) == [("results/runs", 5000), ("results/report.html", 4000),
                                                           ("dmlbench/x.py", 100)]


# ---------------------------------------------------------------------------------------------------
# stored_copy, _tar_xz, bundle_wheels


def test_stored_copy_keeps_every_member_and_stores_it(tmp_path):
    text = b"import os\n" * 500  # compresses well: deflate makes it much smaller
    source = make_zip(tmp_path / "demo-1.0-py3-none-any.whl", [
        ("demo/__init__.py", text, zipfile.ZIP_DEFLATED),
        ("demo/run.sh", b"#!/bin/sh\necho hi\n", zipfile.ZIP_STORED),
        ("demo/data.bin", bytes(range(256)) * 8, zipfile.ZIP_DEFLATED),
        ("demo-1.0.dist-info/RECORD", b"demo/__init__.py,sha256=x,5000\ndemo-1.0.dist-info/RECORD,,\n",
         zipfile.ZIP_DEFLATED),
    ])
    with zipfile.ZipFile(source) as z:
        assert z.getinfo("demo/__init__.py").compress_size < len(text) // 10  # the input really is deflated
    dest = tmp_path / "out"
    dest.mkdir()
    copy = gpucheck.stored_copy(source, dest)
    assert copy == dest / source.name
    assert zip_contents(copy) == zip_contents(source)  # names, order and bytes
    with zipfile.ZipFile(source) as a, zipfile.ZipFile(copy) as b:
        assert b.testzip() is None
        for old, new in zip(a.infolist(), b.infolist()):
            assert new.compress_type == zipfile.ZIP_STORED
            assert new.compress_size == new.file_size == old.file_size
            assert new.date_time == old.date_time and new.external_attr == old.external_attr
    assert copy.stat().st_size > source.stat().st_size


def test_tar_xz_is_reproducible(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.txt"
    a.write_bytes(os.urandom(3000))
    b.write_text("hello\n")
    b.chmod(0o755)
    first, second = tmp_path / "first.tar.xz", tmp_path / "second.tar.xz"
    gpucheck._tar_xz(first, [(a, "x/a.bin"), (b, "b.txt")])
    os.utime(a, (1_000_000, 1_000_000))  # other times and modes: the same archive
    b.chmod(0o600)
    gpucheck._tar_xz(second, [(a, "x/a.bin"), (b, "b.txt")])
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "first.tar.xz", "second.tar.xz"]
    with tarfile.open(first, "r:xz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["x/a.bin", "b.txt"]
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.mode == 0o644 for m in members)
        assert tar.extractfile("x/a.bin").read() == a.read_bytes()
        assert tar.extractfile("b.txt").read() == b"hello\n"


def test_bundle_wheels_archive_manifest_and_reuse(tmp_path, in_repo):
    one = make_zip(tmp_path / "one-1.0-py3-none-any.whl", [("one/__init__.py", b"A = 1\n" * 300, zipfile.ZIP_DEFLATED)])
    two = make_zip(tmp_path / "two-2.0-py3-none-any.whl", [("two/__init__.py", b"B = 2\n" * 300, zipfile.ZIP_DEFLATED),
                                                           ("two/x.txt", b"x", zipfile.ZIP_STORED)])
    dest = in_repo / "wheels.tar.xz"
    manifest = gpucheck.bundle_wheels([one, two], dest)

    manifest_path = in_repo / "wheels.json"
    assert json.loads(manifest_path.read_text()) == manifest
    assert manifest["wheels"] == [one.name, two.name]
    assert manifest["wheel_bytes"] == one.stat().st_size + two.stat().st_size
    assert manifest["bundle_bytes"] == dest.stat().st_size
    assert manifest["bundle_sha256"] == hashlib.sha256(dest.read_bytes()).hexdigest()
    unpacked = tmp_path / "unpacked"
    with tarfile.open(dest, "r:xz") as tar:
        assert tar.getnames() == [one.name, two.name]
        assert all(m.mtime == 0 for m in tar.getmembers())
        tar.extractall(unpacked, filter="data")
    for wheel in (one, two):
        assert zip_contents(unpacked / wheel.name) == zip_contents(wheel)
        with zipfile.ZipFile(unpacked / wheel.name) as z:
            assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}

    # unchanged inputs: the same manifest, the archive left as it is
    os.utime(dest, ns=(1_000_000_000, 1_000_000_000))
    assert gpucheck.bundle_wheels([one, two], dest) == manifest
    assert dest.stat().st_mtime_ns == 1_000_000_000

    # a changed input: a new archive and manifest
    make_zip(two, [("two/__init__.py", b"B = 3\n" * 300, zipfile.ZIP_DEFLATED)])
    changed = gpucheck.bundle_wheels([one, two], dest)
    assert dest.stat().st_mtime_ns != 1_000_000_000
    assert changed["key"] != manifest["key"] and changed["bundle_sha256"] != manifest["bundle_sha256"]
    assert json.loads(manifest_path.read_text()) == changed
    with tarfile.open(dest, "r:xz") as tar:
        with zipfile.ZipFile(io.BytesIO(tar.extractfile(two.name).read())) as z:
            assert z.read("two/__init__.py") == b"B = 3\n" * 300


def test_bundle_wheels_accepts_a_destination_outside_the_repository(tmp_path):
    wheel = make_zip(tmp_path / "one-1.0-py3-none-any.whl", [("one/__init__.py", b"A = 1\n", zipfile.ZIP_DEFLATED)])
    manifest = gpucheck.bundle_wheels([wheel], tmp_path / "wheels.tar.xz")
    assert manifest["wheels"] == [wheel.name]


# ---------------------------------------------------------------------------------------------------
# install_wheels and install (real pip, a tiny wheel of our own)


def imported_value(site: Path, tmp_path: Path) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-c", "import dmlb_tiny; print(dmlb_tiny.__file__); print(dmlb_tiny.VALUE)"],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(site)), capture_output=True, text=True,
                          check=True)
    where, value = done.stdout.split()
    return where, value


def test_install_wheels_installs_stamps_and_reuses(tmp_path, in_repo):
    built = tmp_path / "built"
    built.mkdir()
    stored = tmp_path / "stored"
    stored.mkdir()
    wheel = gpucheck.stored_copy(make_wheel(built), stored)  # pip takes the stored copy as it is
    site = in_repo / "site"

    installed = gpucheck.install_wheels([wheel], site, "digest-1")
    assert installed == ["dmlb_tiny-0.1.dist-info"]
    assert (site / ".dmlbench-bundle").read_text().strip() == "digest-1"
    where, value = imported_value(site, tmp_path)
    assert Path(where).resolve() == (site / "dmlb_tiny" / "__init__.py").resolve() and value == "one"

    # the same digest: nothing is reinstalled (not even with no wheels given)
    (site / "kept.txt").write_text("mine")
    assert gpucheck.install_wheels([], site, "digest-1") == installed
    assert (site / "kept.txt").read_text() == "mine"

    # another digest: a fresh target, as the GPU machine's pip (CPython 3.12) would install it
    other = gpucheck.stored_copy(make_wheel(built, value="two"), stored)
    assert gpucheck.install_wheels([other], site, "digest-2", python_version="3.12") == installed
    assert not (site / "kept.txt").exists()
    assert (site / ".dmlbench-bundle").read_text().strip() == "digest-2"
    assert imported_value(site, tmp_path)[1] == "two"


def test_install_from_a_bundle(tmp_path, in_repo):
    bundle = in_repo / "wheels.tar.xz"
    gpucheck.bundle_wheels([make_wheel(tmp_path)], bundle)
    site = in_repo / "site"
    assert gpucheck.install(bundle, site) == ["dmlb_tiny-0.1.dist-info"]
    assert (site / ".dmlbench-bundle").read_text().strip() == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert imported_value(site, tmp_path)[1] == "one"
    (site / "kept.txt").write_text("mine")
    assert gpucheck.install(bundle, site) == ["dmlb_tiny-0.1.dist-info"]
    assert (site / "kept.txt").exists()
    with pytest.raises(SystemExit, match="carry it"):
        gpucheck.install(in_repo / "absent.tar.xz", in_repo / "other-site")


# ---------------------------------------------------------------------------------------------------
# bundle_data and split_digests


HAN_KEY = "0123456789abcdef"


def fake_han_build(path: Path) -> Path:
    """A small han-typefaces build as load_build writes it, for HanTypefaces.spec (no font rendered)."""
    spec = HanTypefaces.spec
    rng = np.random.default_rng(0)
    arrays = {}
    for part, first in (("train", 0x4E00), ("val", 0x4F00), ("test", 0x5000)):
        labels = np.repeat(np.arange(first, first + 3), 2).astype(np.int64)
        arrays[f"{part}_images"] = rng.integers(0, 256, (len(labels), spec.image_size, spec.image_size), dtype=np.uint8)
        arrays[f"{part}_labels"] = labels
        arrays[f"{part}_faces"] = np.tile([0, 1], 3).astype(np.int64)
    faces = [{"package": "fonts-x", "version": "1", "file": f"/usr/share/fonts/x{i}.ttf", "index": 0,
              "name": f"X {i}", "held_out": i == 1} for i in range(2)]
    facts = {"faces": faces, "left_out": {}, "faces_examined": 2, "spec": dataclasses.asdict(spec)}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays, facts=np.array(json.dumps(facts)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture
def han_cached(isolated, monkeypatch):
    """This machine's han-typefaces build in the (isolated) cache under the fingerprint its 'fonts' give."""
    monkeypatch.delenv(typefaces.BUILD_VARIABLE, raising=False)
    monkeypatch.setattr(typefaces, "discover_faces", lambda packages: [])
    monkeypatch.setattr(typefaces, "fingerprint", lambda spec, faces: HAN_KEY)
    return fake_han_build(typefaces.build_path(HAN_KEY))


def test_bundle_data_carries_exactly_the_splits(isolated, tiny_fmnist, han_cached, tmp_path, in_repo):
    dest = in_repo / "data.tar.xz"
    manifest = gpucheck.bundle_data(dest)
    full = FashionMNIST.load()

    extracted = tmp_path / "extracted"
    with tarfile.open(dest, "r:xz") as tar:
        assert sorted(tar.getnames()) == sorted([f"fashion-mnist/{name}" for name in FILES.values()]
                                                + [f"han-typefaces/build-{HAN_KEY}.npz"])
        tar.extractall(extracted, filter="data")
    carried = FashionMNIST.load(root=extracted)
    assert carried.source["where"].startswith("data root")
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(carried, part).images, getattr(full, part).images)
        np.testing.assert_array_equal(getattr(carried, part).labels, getattr(full, part).labels)
    fashion = manifest["datasets"]["fashion-mnist"]
    assert (carried.mean, carried.std) == (full.mean, full.std) == (fashion["mean"], fashion["std"])

    # the training file holds the training classes only, in their order; the test file is whole
    original_train = read_idx(tiny_fmnist / f"{FILES['train_labels']}.gz")
    kept = read_idx(extracted / "fashion-mnist" / FILES["train_labels"])
    assert set(np.unique(kept)) == set(TRAIN_CLASSES)
    np.testing.assert_array_equal(kept, original_train[original_train < 5])
    assert len(kept) < len(original_train)
    np.testing.assert_array_equal(read_idx(extracted / "fashion-mnist" / FILES["test_images"]),
                                  read_idx(tiny_fmnist / f"{FILES['test_images']}.gz"))

    assert fashion["split_sha256"] == gpucheck.split_digests(full) == gpucheck.split_digests(carried)
    assert manifest["bundle_sha256"] == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert json.loads((in_repo / "data.json").read_text()) == manifest

    # the same data again: the archive is reused
    os.utime(dest, ns=(1_000_000_000, 1_000_000_000))
    assert gpucheck.bundle_data(dest) == manifest
    assert dest.stat().st_mtime_ns == 1_000_000_000


def test_bundle_data_carries_the_cached_han_typefaces_build(isolated, han_cached, tmp_path, in_repo, monkeypatch):
    here = HanTypefaces.load()  # from the cache, the fingerprint of this machine's fonts
    dest = in_repo / "data.tar.xz"
    manifest = gpucheck.bundle_data(dest)
    han = manifest["datasets"]["han-typefaces"]
    assert (han["fingerprint"], han["file"], han["source"]) == (HAN_KEY, f"han-typefaces/build-{HAN_KEY}.npz",
                                                                str(han_cached))
    assert han["cache_sha256"] == hashlib.sha256(han_cached.read_bytes()).hexdigest()
    assert han["split_sha256"] == gpucheck.split_digests(here) and (han["mean"], han["std"]) == (here.mean, here.std)
    extracted = tmp_path / "extracted"
    with tarfile.open(dest, "r:xz") as tar:
        tar.extractall(extracted, filter="data")
    with zipfile.ZipFile(extracted / han["file"]) as z:  # stored, for xz to compress
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}

    # there: no fonts, the variables carried_data_env gives; the cells' check passes, from the carried build
    env = gpucheck.carried_data_env(extracted, manifest)
    assert env[gpucheck.HAN_BUILD_VARIABLE] == str(extracted / han["file"])
    assert gpucheck.HAN_BUILD_VARIABLE == typefaces.BUILD_VARIABLE
    assert env["DMLBENCH_DATA"] == str(extracted) and env["DMLBENCH_DOWNLOAD"] == "0"
    monkeypatch.setattr(typefaces, "package_files", lambda package: None)
    monkeypatch.setattr(typefaces, "discover_faces", discover_faces)  # the real one: it would find no font
    monkeypatch.setenv("DMLBENCH_DATA", env["DMLBENCH_DATA"])
    monkeypatch.setenv(gpucheck.HAN_BUILD_VARIABLE, env[gpucheck.HAN_BUILD_VARIABLE])
    there = HanTypefaces.load()
    assert there.source["carried_build"] == env[gpucheck.HAN_BUILD_VARIABLE]
    assert there.source["fingerprint"] == HAN_KEY
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(there, part).images, getattr(here, part).images)
    gpucheck._check_carried_splits(in_repo / "data.json")

    # the cells' check requires the carried build: rendered (here: cached) data does not pass
    monkeypatch.delenv(gpucheck.HAN_BUILD_VARIABLE)
    monkeypatch.setattr(typefaces, "discover_faces", lambda packages: [])
    with pytest.raises(SystemExit, match="not read from its carried build"):
        gpucheck._check_carried_splits(in_repo / "data.json")
    # a manifest of the older gpu-check is refused with what to do
    with pytest.raises(SystemExit, match="make gpu-prepare"):
        gpucheck.carried_data_env(extracted, {"split_sha256": {}})


def test_split_digests_tell_splits_apart(isolated):
    splits = FashionMNIST.load()
    digests = gpucheck.split_digests(splits)
    assert sorted(digests) == ["test", "train", "val"] and len(set(digests.values())) == 3
    splits.val.labels[0] = (splits.val.labels[0] + 1) % 5
    changed = gpucheck.split_digests(splits)
    assert changed["val"] != digests["val"]
    assert (changed["train"], changed["test"]) == (digests["train"], digests["test"])


# ---------------------------------------------------------------------------------------------------
# CELLS


def test_cells_name_one_cell_each_of_the_default_study():
    from dmlbench.study.cells import load_study

    study = load_study(gpucheck.STUDY, check_networks=False)
    cells = gpucheck.chosen_cells(study)
    assert [(c.config.dataset, c.config.loss, c.config.miner, c.config.seed) for c in cells] == list(gpucheck.CELLS)
    datasets = [key[0] for key in gpucheck.CELLS]
    assert all(c.config.fold == 0 for c in cells)  # a folded dataset's cells: fold 0's
    # the dry run's cells: one of each dataset, so each dataset's carried data must reproduce a shipped run
    assert sorted({key[0] for key in gpucheck.CELLS[:gpucheck.DRY_CELLS]}) == sorted(set(datasets))
    assert set(datasets) == {c.config.dataset for c in study.cells}


def test_cells_missing_from_a_study_are_named():
    from dmlbench.study.cells import load_study

    study = load_study(gpucheck.STUDY, check_networks=False)
    with pytest.raises(SystemExit, match=r"\('fashion-mnist', 'triplet', 'semi-hard', 7\) \(0 cells\)"):
        gpucheck.chosen_cells(study, [("fashion-mnist", "triplet", "semi-hard", 7)])


# ---------------------------------------------------------------------------------------------------
# runtime_pins


def test_runtime_pins_of_this_venv():
    pins = gpucheck.runtime_pins()
    for name in ("papermill", "faiss-cpu", "pytorch-metric-learning", "ipykernel", "pyzmq", "submitit"):
        assert pins[name] == metadata.version(name)
    assert all(pins[name] == metadata.version(name) for name in pins)
    assert not set(pins) & {gpucheck.canonical(n) for n in gpucheck.DEVICE_PACKAGES}
    assert not set(pins) & set(gpucheck.LEFT_BEHIND)
    assert list(pins) == sorted(pins)
    # what is left out is left out because of have/leave: without them it is there
    everything = gpucheck.runtime_pins(("ipykernel", "papermill"), have=(), leave=(), strict=False)
    assert {"debugpy", "jedi", "parso", "pyyaml"} <= set(everything)


def test_runtime_pins_follow_the_requirements_of_the_device_python():
    """papermill requires aiohttp on Python 3.12 only (its own metadata says so); aiohttp is not in this venv."""
    markers = [str(Requirement(r).marker) for r in metadata.requires("papermill") if Requirement(r).name == "aiohttp"]
    assert markers == ['python_version == "3.12"']
    if importlib.util.find_spec("aiohttp") is not None:
        pytest.skip("aiohttp is installed here")
    assert "aiohttp" not in gpucheck.runtime_pins(("papermill",), have=(), leave=(), python_version="3.11")
    with pytest.raises(SystemExit, match="aiohttp"):
        gpucheck.runtime_pins(("papermill",), have=(), leave=(), python_version="3.12")


def test_runtime_pins_of_an_unknown_distribution():
    unknown = "dmlbench-no-such-distribution"
    assert gpucheck.runtime_pins(("papermill", unknown), strict=False) == gpucheck.runtime_pins(("papermill",))
    with pytest.raises(SystemExit, match=unknown):
        gpucheck.runtime_pins(("papermill", unknown))


# ---------------------------------------------------------------------------------------------------
# device_view and the dry run's guard


def fake_distribution(site: Path, name: str) -> None:
    (site / name).mkdir()
    (site / name / "__init__.py").write_text(f"NAME = {name!r}\n")
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 1.0\n")
    (info / "RECORD").write_text(f"{name}/__init__.py,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


def find_specs(env: dict, cwd: Path, *names: str) -> dict:
    code = ("import importlib.util, json, sys\n"
            f"print(json.dumps({{n: getattr(importlib.util.find_spec(n), 'origin', None) for n in {list(names)!r}}}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_device_view_and_guard(tmp_path):
    site = tmp_path / "site-packages"
    site.mkdir()
    fake_distribution(site, "dmlb_allowed")
    fake_distribution(site, "dmlb_hidden")
    (site / "dmlb_loose.py").write_text("LOOSE = True\n")  # claimed by no distribution
    view = tmp_path / "view"
    view.mkdir()
    (view / "stale").write_text("from an earlier view")

    hidden = gpucheck.device_view(site, view, {"dmlb-allowed"})
    assert hidden == ["dmlb-hidden"]
    assert sorted(p.name for p in view.iterdir()) == ["dmlb_allowed", "dmlb_allowed-1.0.dist-info", "dmlb_loose.py"]
    for link in view.iterdir():
        assert link.is_symlink() and link.resolve() == (site / link.name).resolve()

    names = ("dmlb_allowed", "dmlb_hidden", "dmlb_loose")
    plain = dict(os.environ, PYTHONPATH=str(site))
    assert all(find_specs(plain, tmp_path, *names).values())  # without the guard all three are there

    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(gpucheck.GUARD)
    guarded = dict(os.environ, PYTHONPATH=os.pathsep.join([str(guard), str(site)]),
                   DMLBENCH_GUARD_REPLACE=str(site), DMLBENCH_GUARD_VIEW=str(view))
    found = find_specs(guarded, tmp_path, *names)
    assert found["dmlb_hidden"] is None
    assert Path(found["dmlb_allowed"]).parent == view / "dmlb_allowed"
    assert Path(found["dmlb_loose"]) == view / "dmlb_loose.py"


# ---------------------------------------------------------------------------------------------------
# Steps


def test_steps_record_each_step(tmp_path):
    report = {"steps": {}}
    seen = []
    steps = gpucheck.Steps(dict(os.environ), report, tmp_path / "logs", budget_s=300,
                           on_step=lambda: seen.append(list(report["steps"])))
    assert steps.run("good", [sys.executable, "-c", "print('all well')"]) is True
    assert steps.run("bad", [sys.executable, "-c", "import sys; print('oh no'); sys.exit(3)"]) is False
    assert report["steps"]["good"]["rc"] == 0 and "all well" in report["steps"]["good"]["tail"]
    assert report["steps"]["bad"]["rc"] == 3 and "oh no" in report["steps"]["bad"]["tail"]
    assert (tmp_path / "logs" / "bad.log").read_text() == report["steps"]["bad"]["tail"]
    assert seen == [["good"], ["good", "bad"]]


def test_steps_stop_a_step_over_time_with_its_children(tmp_path):
    report = {"steps": {}}
    seen = []
    marker = tmp_path / "started"
    # 11 s of budget: the first step may take 10 s (a step is not started with less than 10 s)
    steps = gpucheck.Steps(dict(os.environ), report, tmp_path / "logs", budget_s=11,
                           on_step=lambda: seen.append(list(report["steps"])))
    started = time.monotonic()
    hang = "import subprocess, time; p = subprocess.Popen(['sleep', '30']); print(p.pid, flush=True); time.sleep(30)"
    assert steps.run("hang", [sys.executable, "-c", hang]) is False
    took = time.monotonic() - started
    record = report["steps"]["hang"]
    assert str(record["rc"]).startswith("stopped after") and 9 <= took < 15 and 9 <= record["seconds"] < 15

    child = int(record["tail"].split()[0])  # the step's own child is gone too
    for _ in range(50):
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's child {child} is still running")

    # the budget is spent: the next step is recorded but not started
    assert steps.run("next", [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]) is False
    assert str(report["steps"]["next"]["rc"]).startswith("not run") and report["steps"]["next"]["seconds"] == 0
    assert not marker.exists()
    assert seen == [["hang"], ["hang", "next"]]


# ---------------------------------------------------------------------------------------------------
# collect and main


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_collect_takes_the_results_and_trims_the_tails(tmp_path):
    long_tail = "".join(f"line {i}\n" for i in range(1000)) + "THE END"
    report = {"name": "gpu-check-part1", "ok": True,
              "steps": {"tests": {"rc": 0, "tail": long_tail}, "train": {"rc": 1, "tail": "short"}}}
    archive = tmp_path / "gpu-check-part1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add(tar, "a.csv", b"x,y\n1,2\n")
        add(tar, "b.json", json.dumps(report).encode())
        add(tar, "logs/x.log", b"a log")
        add(tar, "bad name.csv", b"no")
        add(tar, "../escape.csv", b"no")
    dest = tmp_path / "dest"

    written = gpucheck.collect(archive, dest)
    assert sorted(written) == [dest / "a.csv", dest / "b.json"]
    assert sorted(p.name for p in dest.iterdir()) == ["a.csv", "b.json"]
    assert not (tmp_path / "escape.csv").exists()
    assert (dest / "a.csv").read_bytes() == b"x,y\n1,2\n"
    back = json.loads((dest / "b.json").read_text())
    tail = back["steps"]["tests"]["tail"]
    assert len(tail) <= 1500 and long_tail.endswith(tail) and tail.endswith("THE END") and len(tail) > 1000
    assert back["steps"]["train"]["tail"] == "short"
    assert {k: v for k, v in back.items() if k != "steps"} == {"name": "gpu-check-part1", "ok": True}


def test_main_collect_of_a_folder_without_archives(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        gpucheck.main(["collect", str(tmp_path)])
    assert raised.value.code == 2
    assert "no gpu-check-part*.tar.gz" in capsys.readouterr().err


def test_a_report_names_repository_paths_relative_to_it(tmp_path):
    from dmlbench.bench.gpucheck import ROOT, repo_relative

    report = {"facts": {"executable": f"{ROOT}/.venv/bin/python"},
              "imports": {"dmlbench": {"from": f"{ROOT}/dmlbench"}},
              "steps": {"tests": {"command": [f"{ROOT}/.venv/bin/python", "-m", "pytest", str(ROOT)],
                                  "tail": f"cd {ROOT} && ls {ROOT}/build/gpu; {ROOT}x/other", "rc": 0}}}
    shown = repo_relative(report)
    assert shown["facts"]["executable"] == ".venv/bin/python" and shown["imports"]["dmlbench"]["from"] == "dmlbench"
    assert shown["steps"]["tests"]["command"] == [".venv/bin/python", "-m", "pytest", "."]
    assert shown["steps"]["tests"]["tail"] == f"cd . && ls build/gpu; {ROOT}x/other" and shown["steps"]["tests"]["rc"] == 0
    assert str(ROOT) + "/" not in json.dumps(shown)
