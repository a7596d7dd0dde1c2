"""The prepared GPU check: everything a CUDA machine must run for the study's GPU path, measured.

The GPU machines lent to this project have no network and their own Python (3.12) with torch,
torchvision, timm, numpy, pandas, scipy, scikit-learn and more preinstalled (DEVICE_PACKAGES); the
project's pins do not apply there. What the study needs beyond those (papermill and its Jupyter
kernel stack, faiss-cpu, pytorch-metric-learning, submitit) travels as Python 3.12 manylinux wheels,
and the default study's data travels too, each as an xz-compressed bundle under ``build/gpu/``
(git-ignored): Fashion-MNIST as the IDX files its splits read, and han-typefaces, which the machine
cannot render (it lacks the CJK font packages), as the build this machine rendered
(``build-<fingerprint>.npz``), which the cells there load through ``DMLBENCH_HAN_TYPEFACES_BUILD``.
A call to such a machine carries at most 64 MiB, the repository's files included, so ``prepare``
measures what travels and splits the check into as few calls as fit (or says what is too big, by
how much, and what to do, when a part cannot travel beside the repository):

- part 1 (no dataset): install the wheels, record the machine (nvidia-smi, torch, CUDA), run the
  CUDA tests and the device tests on CUDA, ``bench train`` (ResNet-50, 224 px, batch 112, bf16,
  channels-last, with and without torch.compile), ``bench eval`` at CUB and SOP size against
  pytorch-metric-learning, ``bench losses`` and ``bench miners``;
- part 2 (the data): a few cells of the default study (CELLS: one of han-typefaces, two of
  Fashion-MNIST) on CUDA through papermill and the real notebook, their wall time, and their
  metrics beside the same cells' CPU numbers.

Part 2 uses the wheels part 1 installed: when the two cannot travel together, part 2 must be the
next call while the machine is still warm (the printed plan says so).

    make gpu-prepare                 # here: download, bundle, measure; prints the device calls
    make gpu-dry                     # here: all of it that needs no GPU (install, guarded imports, CPU cells)
    make gpu-check [PART=1|2]        # there: the check itself (both parts unless PART is given)
    make gpu-results FROM=DIR        # here: the files that came back, into results/bench/

This module imports only the standard library at its top: on the GPU machine it runs before the
wheels it installs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from ..fileio import sha256_file

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "gpu"
BENCH_RESULTS = ROOT / "results" / "bench"
LIMIT_BYTES = 64 * 2**20  # what one call to the GPU machine may carry, the repository's files included

DEVICE_PYTHON = "3.12"
# pip matches manylinux tags exactly: every glibc level the wheels of our stack are built for
PLATFORMS = tuple(f"manylinux_2_{n}_x86_64" for n in range(39, 16, -1)) + (
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")

# The packages of the GPU machines' image ('cuda'), as the device library's KINDS.md lists them
# (read there on 2026-11-17): these are not carried.
DEVICE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

# What the check runs beyond the machine's packages: the cells' notebook execution, the study
# runner, k-means (faiss) and the reference library of the benchmarks and tests.
ROOTS = ("papermill", "ipykernel", "nbclient", "nbformat", "jupyter-client", "faiss-cpu",
         "pytorch-metric-learning", "submitit")
# Requirements of those that nothing in the check imports, left behind (10 MB of the 64 MiB):
# ipykernel and IPython import them only when present (the guarded dry run proves it).
LEFT_BEHIND = {
    "debugpy": "ipykernel's debugger, for front ends that debug a kernel",
    "jedi": "IPython's tab completion",
    "parso": "jedi's parser",
}
# The modules imported on the machine before anything else runs: the project and what travels.
IMPORTS = ("dmlbench", "dmlbench.study.cells", "dmlbench.training.loop", "dmlbench.evaluation.metrics", "dmlbench.study.kernel", "papermill",
           "nbclient", "nbformat", "jupyter_client", "ipykernel", "IPython", "zmq", "tornado", "faiss",
           "pytorch_metric_learning", "submitit", "torch", "torchvision", "timm", "numpy", "pandas", "sklearn",
           "scipy", "matplotlib", "seaborn", "yaml")

# Those of IMPORTS that the wheels carry: the dry run checks that they are imported from the wheels.
CARRIED_MODULES = ("papermill", "nbclient", "nbformat", "jupyter_client", "ipykernel", "IPython", "zmq", "tornado",
                   "faiss", "pytorch_metric_learning", "submitit")

# The default study's cells run on CUDA in part 2, as (dataset, loss, miner, seed): a miner cell of the
# many-class study (han-typefaces), then a proxy loss and a pair loss of Fashion-MNIST. The dry run runs
# the first DRY_CELLS on the CPU: one of each dataset, each from its carried data.
CELLS = (("han-typefaces", "triplet", "semi-hard", 0), ("han-typefaces", "proxy-anchor", "none", 0),
         ("han-typefaces", "multi-similarity", "multi-similarity", 0))  # fold 0 of each
DRY_CELLS = 2
STUDY = ROOT / "studies" / "default.yaml"

# How long each step may take on the GPU machine (seconds): a hung step is stopped and reported,
# and the check goes on, so the call ends within its limit and everything measured comes back.
STEP_LIMITS = {"tests": 150, "train": 90, "train-compile": 180, "eval": 120, "losses": 75, "miners": 60,
               "cells": 300}
# One call's own limit is 10 minutes: the check stops its steps in time to hand back its files.
CALL_BUDGET_S = 540


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def log(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def shown(path: Path) -> Path:
    """A path as the check prints it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def repo_relative(data, root: Path = ROOT):
    """``data`` (a report: dicts, lists, strings) with every path inside the repository ``root`` written
    relative to it, so a report names no folder of the machine it ran on."""
    if isinstance(data, dict):
        return {key: repo_relative(value, root) for key, value in data.items()}
    if isinstance(data, list):
        return [repo_relative(value, root) for value in data]
    if isinstance(data, str):
        return re.sub(rf"{re.escape(str(root))}(?![\w.-])", ".", data.replace(f"{root}/", ""))
    return data


def write_json(path: Path, data) -> None:
    """Whole or not at all: a temporary file renamed over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------
# Here: what travels


def runtime_pins(roots=ROOTS, *, have=DEVICE_PACKAGES, leave=tuple(LEFT_BEHIND), python_version=DEVICE_PYTHON,
                 strict: bool = True):
    """{distribution: version} of ``roots`` and everything they require on ``python_version``, as
    installed in this environment, less what the machine has and what is left behind (``strict``:
    a requirement not installed here is an error; else it is passed over)."""
    from importlib import metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    environment = default_environment() | {"python_version": python_version,
                                           "python_full_version": f"{python_version}.0"}
    skip = {canonical(n) for n in have} | {canonical(n) for n in leave}
    pins, todo = {}, [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in pins or name in skip:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if not strict:
                continue
            raise SystemExit(f"gpu-check: {name} is needed on the GPU machine but not installed here: run 'make setup'")
        pins[name] = dist.version
        for text in dist.requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment | {"extra": ""}):
                todo.append(canonical(requirement.name))
    return dict(sorted(pins.items()))


def wheel_name(path: Path) -> tuple[str, str]:
    """(canonical distribution name, version) from a wheel's file name."""
    parts = path.name.split("-")
    return canonical(parts[0]), parts[1]


def download_wheels(pins: dict, folder: Path, *, python_version: str | None = DEVICE_PYTHON) -> list[Path]:
    """One wheel per pin in ``folder`` (for CPython ``python_version`` on manylinux x86-64, or for this
    interpreter when None); wheels of other versions or packages there are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {name: version for name, version in pins.items()}
    for stale in folder.glob("*.whl"):
        name, version = wheel_name(stale)
        if wanted.get(name) != version:
            stale.unlink()
    have = {wheel_name(p)[0] for p in folder.glob("*.whl")}
    missing = [f"{name}=={version}" for name, version in wanted.items() if name not in have]
    if missing:
        command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
                   "--only-binary=:all:", "-d", str(folder)]
        if python_version:
            command += ["--python-version", python_version, "--implementation", "cp"]
            for tag in PLATFORMS:
                command += ["--platform", tag]
        log(f"downloading {len(missing)} wheels for {'CPython ' + python_version if python_version else 'this Python'}")
        done = subprocess.run(command + missing, capture_output=True, text=True)
        if done.returncode:
            noise = "is ignored: it is neither a file nor a directory"
            detail = "\n".join(line for line in (done.stdout + done.stderr).splitlines() if noise not in line)
            raise SystemExit(f"gpu-check: pip download failed for {' '.join(missing)}:\n{detail[-3000:]}")
    wheels = sorted(folder.glob("*.whl"))
    names = [wheel_name(p)[0] for p in wheels]
    if sorted(names) != sorted(wanted) or len(set(names)) != len(names):
        raise SystemExit(f"gpu-check: {folder} holds {names}, expected one wheel each of {sorted(wanted)}")
    return wheels


def stored_copy(wheel: Path, dest: Path) -> Path:
    """The same wheel with its members stored uncompressed (file contents, and so RECORD's hashes,
    unchanged), so that xz compresses the bundle about twice as well as zip's deflate."""
    out = dest / wheel.name
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            copy.external_attr = info.external_attr
            copy.compress_type = zipfile.ZIP_STORED
            target.writestr(copy, source.read(info))
    return out


def _tar_xz(dest: Path, members: list[tuple[Path, str]]) -> None:
    """A reproducible .tar.xz of (file, name in the archive), written whole or not at all."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    with lzma.open(tmp, "wb", preset=9 | lzma.PRESET_EXTREME) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for path, name in members:
            info = tar.gettarinfo(str(path), arcname=name)
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    os.replace(tmp, dest)


def bundle_wheels(wheels: list[Path], dest: Path) -> dict:
    """dest (.tar.xz) of the wheels, stored; its manifest (kept beside it) says what it holds."""
    key = hashlib.sha256("\n".join(f"{w.name} {sha256_file(w)}" for w in wheels).encode()).hexdigest()
    manifest_path = dest.with_suffix("").with_suffix(".json")
    if dest.is_file() and manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") == key:
            return manifest
    log(f"bundling {len(wheels)} wheels into {shown(dest)} (xz, about a minute)")
    with tempfile.TemporaryDirectory() as tmp:
        copies = [stored_copy(w, Path(tmp)) for w in wheels]
        _tar_xz(dest, [(c, c.name) for c in copies])
    manifest = {"key": key, "wheels": [w.name for w in wheels], "wheel_bytes": sum(w.stat().st_size for w in wheels),
                "bundle_bytes": dest.stat().st_size, "bundle_sha256": sha256_file(dest)}
    write_json(manifest_path, manifest)
    return manifest


def split_digests(splits) -> dict:
    """sha256 of each split's images and labels: equal digests, equal data."""
    out = {}
    for part in ("train", "val", "test"):
        subset = getattr(splits, part)
        out[part] = hashlib.sha256(subset.images.tobytes() + subset.labels.astype("int64").tobytes()).hexdigest()
    return out


# The carried build of han-typefaces is named to the cells by this variable (typefaces.BUILD_VARIABLE;
# spelled out here, since this module imports only the standard library at its top).
HAN_BUILD_VARIABLE = "DMLBENCH_HAN_TYPEFACES_BUILD"


def fashion_data(folder: Path) -> tuple[list[tuple[Path, str]], dict]:
    """Fashion-MNIST's part of the data archive: IDX files in ``folder`` holding only what its splits
    read (the training file's images of the training classes 0-4, in their order; the test file
    whole), so that the splits, their order and the normalisation are those of the full files;
    (members, facts for the manifest)."""
    import numpy as np

    from ..datasets.fashion_mnist import FILES, TRAIN_CLASSES, FashionMNIST, load_arrays, locate
    from ..datasets.idx import write_idx

    paths, where = locate(None)
    full = FashionMNIST.load()
    arrays = load_arrays(paths)
    keep = np.isin(arrays["train_labels"], TRAIN_CLASSES)
    contents = {"train_images": arrays["train_images"][keep], "train_labels": arrays["train_labels"][keep],
                "test_images": arrays["test_images"], "test_labels": arrays["test_labels"]}
    members = []
    for key_name, array in contents.items():
        path = folder / FILES[key_name]
        write_idx(path, np.asarray(array, dtype=np.uint8))
        members.append((path, f"fashion-mnist/{FILES[key_name]}"))
    return members, {"source": where, "split_sha256": split_digests(full), "mean": full.mean, "std": full.std}


def han_data(folder: Path) -> tuple[list[tuple[Path, str]], dict]:
    """han-typefaces' part: the build this machine loads (the cached build of the fingerprint its
    fonts give, rendered first if need be, or the carried build it was given), under its own name,
    with its arrays stored uncompressed so that xz compresses them better than the cache's deflate;
    (members, facts for the manifest: the fingerprint and where the build lies in the archive)."""
    import numpy as np

    from ..datasets.typefaces import HanTypefaces, build_path, read_build

    splits = HanTypefaces.load()
    key = splits.source["fingerprint"]
    cached = Path(splits.source.get("carried_build") or build_path(key))
    if not cached.is_file():
        raise SystemExit(f"gpu-check: han-typefaces' build {cached} is not there to carry: render it with "
                         f"'dmlbench data prepare han-typefaces' (with a writable $DMLBENCH_CACHE)")
    built = read_build(cached)
    copy = folder / cached.name
    np.savez(copy, **built["arrays"], facts=np.array(json.dumps(built["facts"])))
    name = f"han-typefaces/{cached.name}"
    facts = {"fingerprint": key, "file": name, "source": str(cached), "cache_sha256": sha256_file(cached),
             "split_sha256": split_digests(splits), "mean": splits.mean, "std": splits.std}
    return [(copy, name)], facts


def bundle_data(dest: Path) -> dict:
    """The default study's data in one xz archive (Fashion-MNIST: fashion_data; han-typefaces:
    han_data), its manifest beside it: per dataset, the splits' digests, which the cells check on the
    machine, and where its files lie. An archive of the same data is reused."""
    manifest_path = dest.with_suffix("").with_suffix(".json")
    with tempfile.TemporaryDirectory() as tmp:
        fashion, fashion_facts = fashion_data(Path(tmp))
        han, han_facts = han_data(Path(tmp))
        datasets = {"fashion-mnist": fashion_facts, "han-typefaces": han_facts}
        identity = {name: [facts["split_sha256"], facts.get("fingerprint")] for name, facts in datasets.items()}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        if dest.is_file() and manifest_path.is_file() and json.loads(manifest_path.read_text()).get("key") == key:
            return json.loads(manifest_path.read_text())
        log(f"bundling the default study's data ({', '.join(datasets)}) into {shown(dest)} (xz, about a minute)")
        _tar_xz(dest, fashion + han)
    manifest = {"key": key, "datasets": datasets, "bundle_bytes": dest.stat().st_size,
                "bundle_sha256": sha256_file(dest)}
    write_json(manifest_path, manifest)
    return manifest


def carried_data_env(folder: Path, manifest: dict) -> dict:
    """The variables under which the cells read the carried data (extracted into ``folder``) and
    nothing else: Fashion-MNIST from its IDX files, han-typefaces from its build, no download."""
    datasets = manifest.get("datasets")
    if not isinstance(datasets, dict):
        raise SystemExit("gpu-check: build/gpu/part2/data.json is of an older gpu-check (no 'datasets'): "
                         "run 'make gpu-prepare' again and carry the new build/gpu/part2")
    env = {"DMLBENCH_DATA": str(folder), "DMLBENCH_CACHE": str(BUILD / "cache"), "DMLBENCH_DOWNLOAD": "0"}
    if "han-typefaces" in datasets:
        env[HAN_BUILD_VARIABLE] = str(folder / datasets["han-typefaces"]["file"])
    return env


def tree_files(root: Path = ROOT) -> dict[str, int]:
    """What a call carries of the repository, {path: bytes}: tracked and untracked-not-ignored files
    (and a shared/ folder inside the checkout)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode().split("\0")
    files = {root / name for name in listed if name}
    shared = root / "shared"
    if shared.is_dir():
        files |= {p for p in shared.rglob("*") if p.is_file()}
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in files if p.is_file() and not p.is_symlink()}


def tree_bytes(root: Path = ROOT) -> int:
    return sum(tree_files(root).values())


def largest_folders(root: Path = ROOT, count: int = 3) -> list[tuple[str, int]]:
    """The ``count`` largest entries two levels deep (a folder such as results/runs, or a file such as
    results/report.html) of what a call carries."""
    sizes: dict[str, int] = {}
    for name, size in tree_files(root).items():
        entry = "/".join(name.split("/")[:2])
        sizes[entry] = sizes.get(entry, 0) + size
    return sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:count]


# The device call's command (what 'make gpu-check' runs, without needing make there)
DEVICE_COMMAND = "PYTHONUNBUFFERED=1 python3 -m dmlbench.bench.gpucheck run"
# What each part's folder under build/gpu/ carries (named in a plan's errors)
PART_CONTENTS = {"part1": "the wheels", "part2": "the data"}


class PlanError(SystemExit):
    """The check cannot travel: its message says what is too big, by how much, and what to do."""


def plan_calls(tree: int, parts: dict[str, int], limit: int = LIMIT_BYTES,
               largest: list[tuple[str, int]] = ()) -> list[dict]:
    """The device calls: one carrying every part when it fits, else one per part (in order). A part
    that cannot travel beside the repository is a PlanError (see plan_problem): no call is planned
    that could not be made."""
    problem = plan_problem(tree, parts, limit, largest)
    if problem:
        raise PlanError(problem)
    if tree + sum(parts.values()) <= limit:
        return [{"carry": [f"build/gpu/{name}" for name in parts], "command": DEVICE_COMMAND,
                 "bytes": tree + sum(parts.values())}]
    return [{"carry": [f"build/gpu/{name}"], "command": f"{DEVICE_COMMAND} --part {name.removeprefix('part')}",
             "bytes": tree + size} for name, size in parts.items()]


def mib_up(n: int) -> str:
    """Bytes as MiB rounded up to the tenth: a shortfall is never printed smaller than it is."""
    return f"{-(-n * 10 // 2**20) / 10:.1f} MiB"


def plan_problem(tree: int, parts: dict[str, int], limit: int = LIMIT_BYTES,
                 largest: list[tuple[str, int]] = ()) -> str | None:
    """None when every part fits one call beside the repository (which travels with every call); else
    what is too big, by how much, and what to do (``largest``: the repository's largest folders)."""
    room = limit - tree
    too_big = {name: size for name, size in parts.items() if size > room}
    if not too_big:
        return None
    what = {name: f"{name} ({PART_CONTENTS.get(name, 'a bundle')}, {mib(size)})" for name, size in parts.items()}
    if room <= 0:
        head = (f"the repository's files alone ({mib(tree)}) exceed the {mib(limit)} one call to the GPU machine "
                f"may carry, by {mib_up(-room)}: no part of the check can travel")
    elif len(too_big) == len(parts):
        smallest = min(parts, key=parts.get)
        head = (f"the repository's files ({mib(tree)}, carried by every call) leave {mib(room)} of the {mib(limit)} "
                f"one call to the GPU machine may carry, less than the smallest part, {what[smallest]}: "
                f"no call can carry any part")
    else:
        head = "; ".join(f"the repository ({mib(tree)}) and {what[name]} come to {mib(tree + size)}, "
                         f"{mib_up(tree + size - limit)} over the {mib(limit)} one call to the GPU machine may carry"
                         for name, size in too_big.items())
    folders = ", ".join(f"{name} {mib(size)}" for name, size in largest)
    return (f"gpu-check: {head}. To make the check travel, make the repository's tracked files at least "
            f"{mib_up(max(too_big.values()) - room)} fewer" + (f" (its largest folders: {folders})" if folders else "")
            + f", or {' and '.join(too_big)} smaller; then run 'make gpu-prepare' again")


def prepare(*, strict: bool = True) -> dict:
    """Download and bundle what travels; measure it; write build/gpu/plan.json; print the calls. When
    the parts cannot travel (plan_problem), the plan's ``error`` says why and, ``strict``, so does a
    PlanError."""
    pins = runtime_pins()
    wheels = download_wheels(pins, BUILD / "wheels" / f"cp{DEVICE_PYTHON.replace('.', '')}")
    (BUILD / "part1").mkdir(parents=True, exist_ok=True)
    (BUILD / "part2").mkdir(parents=True, exist_ok=True)
    wheels_manifest = bundle_wheels(wheels, BUILD / "part1" / "wheels.tar.xz")
    data_manifest = bundle_data(BUILD / "part2" / "data.tar.xz")
    parts = {name: sum(p.stat().st_size for p in (BUILD / name).iterdir() if p.is_file()) for name in ("part1", "part2")}
    tree = tree_bytes()
    try:
        calls, error = plan_calls(tree, parts, largest=largest_folders()), None
    except PlanError as problem:
        calls, error = [], str(problem)
    plan = {"pins": pins, "left_behind": LEFT_BEHIND, "wheels": wheels_manifest, "data": data_manifest,
            "tree_bytes": tree, "part_bytes": parts, "limit_bytes": LIMIT_BYTES, "calls": calls}
    if error:
        plan["error"] = error
    write_json(BUILD / "plan.json", plan)
    log(f"{len(pins)} wheels for CPython {DEVICE_PYTHON}: {mib(wheels_manifest['wheel_bytes'])} as downloaded, "
        f"{mib(wheels_manifest['bundle_bytes'])} bundled; data {mib(data_manifest['bundle_bytes'])}; "
        f"repository {mib(tree)}; limit {mib(LIMIT_BYTES)} per call")
    for i, call in enumerate(calls, 1):
        log(f"device call {i} of {len(calls)}: carry {call['carry']}, command '{call['command']}' ({mib(call['bytes'])})")
    if len(calls) > 1:
        log("the parts do not fit one call: make the second call at once after the first, while the machine is "
            "warm (part 2 uses the wheels part 1 installed)")
    if error:
        log(error)
        if strict:
            raise PlanError(error)
    return plan


# ---------------------------------------------------------------------------------------------------
# Install and import


def install(bundle: Path, site: Path, *, python_version: str | None = None) -> list[str]:
    """pip install --no-index --no-deps --target ``site`` of the bundle's wheels (for another
    Python with ``python_version``: installed for that version, as the GPU machine's pip would)."""
    if not bundle.is_file():
        raise SystemExit(f"gpu-check: no {shown(bundle)}: carry it (run 'make gpu-prepare' first)")
    digest = sha256_file(bundle)
    if _installed(site) == digest:
        return _dist_infos(site)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(bundle, "r:xz") as tar:
            tar.extractall(tmp, filter="data")
        return install_wheels(sorted(Path(tmp).glob("*.whl")), site, digest, python_version=python_version)


def _installed(site: Path) -> str | None:
    stamp = site / ".dmlbench-bundle"
    return stamp.read_text().strip() if stamp.is_file() else None


def _dist_infos(site: Path) -> list[str]:
    return sorted(p.name for p in site.glob("*.dist-info"))


def install_wheels(wheels: list[Path], site: Path, digest: str, *, python_version: str | None = None) -> list[str]:
    """A fresh ``site`` holding exactly these wheels, stamped with ``digest``."""
    if _installed(site) == digest:
        return _dist_infos(site)
    if site.exists():
        shutil.rmtree(site)
    command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
               "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site)]
    if python_version:
        command += ["--python-version", python_version, "--implementation", "cp", "--only-binary=:all:"]
        for tag in PLATFORMS:
            command += ["--platform", tag]
    log(f"installing {len(wheels)} wheels into {shown(site)}")
    subprocess.run(command + [str(w) for w in wheels], check=True)
    (site / ".dmlbench-bundle").write_text(digest + "\n")
    return _dist_infos(site)


def import_report(modules=IMPORTS) -> dict:
    """Each module's version and the folder it was imported from (run in the environment checked)."""
    import importlib

    out = {}
    for name in modules:
        try:
            module = importlib.import_module(name)
            out[name] = {"version": str(getattr(module, "__version__", "")), "from": str(Path(module.__file__).parent)}
        except Exception as error:  # noqa: BLE001 (every failure is the finding)
            out[name] = {"error": f"{type(error).__name__}: {error}"}
    return out


GUARD = '''"""Written by dmlbench.bench.gpucheck for the dry run: the GPU machine's view of this environment.

This environment's site-packages is replaced on sys.path by a folder of links to the packages the
GPU machine has (and their requirements): anything else must come from the carried wheels or the
repository, or it is absent, as it would be there."""
import os
import sys

_site, _view = os.environ["DMLBENCH_GUARD_REPLACE"], os.environ["DMLBENCH_GUARD_VIEW"]
sys.path[:] = [_view if os.path.realpath(p) == os.path.realpath(_site) else p for p in sys.path]
'''


def device_view(site_packages: Path, view: Path, allowed: set[str]) -> list[str]:
    """``view``: links to the entries of ``site_packages`` whose distribution is in ``allowed``
    (entries no distribution claims are linked too); returns the distributions left out."""
    from importlib import metadata

    owners: dict[str, set[str]] = {}
    for dist in metadata.distributions(path=[str(site_packages)]):
        name = canonical(dist.metadata["Name"])
        for file in dist.files or ():
            top = file.parts[0]
            owners.setdefault(top, set()).add(name)
    if view.exists():
        shutil.rmtree(view)
    view.mkdir(parents=True)
    left_out = set()
    for entry in site_packages.iterdir():
        claimed = owners.get(entry.name, set())
        if claimed and not claimed & allowed:
            left_out |= claimed
            continue
        (view / entry.name).symlink_to(entry)
    return sorted(left_out)


def guarded_environment(site: Path, guard_dir: Path, pins: dict) -> dict:
    """Environment variables for a process that sees this venv as the GPU machine would."""
    import sysconfig

    guard_dir.mkdir(parents=True, exist_ok=True)
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    # the machine's packages come with their own requirements: those of their versions here count as there
    theirs = runtime_pins(DEVICE_PACKAGES, have=(), leave=(), strict=False)
    allowed = {canonical(n) for n in DEVICE_PACKAGES} | set(theirs) | {"dmlbench"}
    site_packages = Path(sysconfig.get_paths()["purelib"])
    view = guard_dir.parent / "view"
    hidden = device_view(site_packages, view, allowed)
    log(f"dry run: {len(hidden)} distributions of this venv are hidden as the GPU machine lacks them "
        f"(the carried wheels stand in for {len(set(hidden) & set(pins))} of them)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(guard_dir), str(site), str(ROOT)])
    env["DMLBENCH_GUARD_REPLACE"] = str(site_packages)
    env["DMLBENCH_GUARD_VIEW"] = str(view)
    return env


# ---------------------------------------------------------------------------------------------------
# There: the steps


class Steps:
    """Runs the check's commands one after another, each within its own limit and all within the
    call's (``budget_s``), and keeps a record of each (command, exit status, seconds, the end of its
    output) in ``report['steps']``; after each step the record so far is delivered (``on_step``),
    so that a call stopped at its limit still returns what was measured."""

    def __init__(self, env: dict, report: dict, logs: Path, *, budget_s: float, on_step=lambda: None):
        self.env, self.report, self.logs, self.on_step = env, report, logs, on_step
        self.deadline = time.monotonic() + budget_s
        logs.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, command: list[str], *, env: dict | None = None) -> bool:
        remaining = int(self.deadline - time.monotonic())
        limit = min(STEP_LIMITS.get(name, 120), remaining)
        if remaining < 10:
            self.report["steps"][name] = {"command": command, "rc": "not run: the call's time is spent", "seconds": 0,
                                          "tail": ""}
            log(f"{name}: not run, the call's time is spent")
            self.on_step()
            return False
        log(f"{name}: {' '.join(command)} (at most {limit} s)")
        started = time.perf_counter()
        output = self.logs / f"{name}.log"
        with open(output, "w") as handle:
            process = subprocess.Popen(command, cwd=ROOT, env=env or self.env, stdout=handle, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                rc = process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)  # the step and its workers
                process.wait()
                rc = f"stopped after {limit} s"
        seconds = round(time.perf_counter() - started, 1)
        tail = output.read_text(errors="replace")[-4000:]
        self.report["steps"][name] = {"command": command, "rc": rc, "seconds": seconds, "tail": tail}
        log(f"{name}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {seconds} s")
        if rc != 0:
            print(tail[-1500:], flush=True)
        self.on_step()
        return rc == 0


def machine_facts() -> dict:
    facts = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
             "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    query = "name,memory.total,driver_version,clocks.max.sm,power.limit,compute_cap"
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30)
        facts["nvidia_smi"] = dict(zip(query.split(","), (v.strip() for v in done.stdout.strip().split(","))))
        facts["nvidia_smi_L"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                               timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as error:
        facts["nvidia_smi"] = f"not available: {error}"
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_cuda"] = torch.version.cuda
        facts["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        facts["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            facts["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                            "multiprocessors": props.multi_processor_count,
                            "capability": f"{props.major}.{props.minor}", "bf16": torch.cuda.is_bf16_supported(),
                            "nccl": ".".join(map(str, torch.cuda.nccl.version()))}
    except Exception as error:  # noqa: BLE001
        facts["torch"] = f"import failed: {type(error).__name__}: {error}"
    return facts


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def part1(steps: Steps, device: str) -> None:
    cuda = device == "cuda"
    steps.run("tests", _python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda or devices",
                               "-o", "addopts=-ra", "tests"))
    if cuda:
        workers = str(os.cpu_count() or 1)
        bench = ("-m", "dmlbench", "bench")
        steps.run("train", _python(*bench, "train", "--device", "cuda", "--workers", workers))
        steps.run("eval", _python(*bench, "eval", "--device", "cuda"))
        steps.run("train-compile", _python(*bench, "train", "--device", "cuda", "--workers", workers, "--torch-compile"))
        steps.run("losses", _python(*bench, "losses", "--device", "cuda", "--repeats", "7", "--dims", "512"))
        steps.run("miners", _python(*bench, "miners", "--device", "cuda", "--repeats", "7", "--dims", "512"))


def part2(steps: Steps, cells: int, *, dry: bool = False) -> None:
    """The cells, from the carried data when build/gpu/part2 is here (carried_data_env: han-typefaces
    from its carried build, so no font is needed), else from wherever the datasets are found, as on a
    user's own GPU machine. A dry run takes the same path: it too reads the carried data."""
    data = BUILD / "part2" / "data.tar.xz"
    manifest_path = BUILD / "part2" / "data.json"
    folder = BUILD / "data"
    for stale in (folder, BUILD / "cell-results"):  # a rerun on a warm machine runs the cells again
        if stale.exists():
            shutil.rmtree(stale)
    # the cells train here: a shipped run with the same id must not be reused in their place
    env = dict(steps.env) | {"DMLBENCH_RESULTS": str(BUILD / "cell-results"), "DMLBENCH_REUSE": "none"}
    command = _python("-m", "dmlbench.bench.gpucheck", "cells", "--count", str(cells), "--out",
                      str(BUILD / "out" / "bench"))
    if data.is_file() and manifest_path.is_file():
        with tarfile.open(data, "r:xz") as tar:
            tar.extractall(folder, filter="data")
        env |= carried_data_env(folder, json.loads(manifest_path.read_text()))
        command += ["--manifest", str(manifest_path)]
    else:
        log("no build/gpu/part2 here: the cells read the datasets from where they are found (han-typefaces needs "
            "its fonts)")
    if dry:  # on the CPU with the CPU runs' thread count, the cells must reproduce them exactly
        env["OMP_NUM_THREADS"] = "1"
    steps.run("cells", command, env=env)


def chosen_cells(study, keys=CELLS) -> list:
    """The study's cells of ``keys`` (dataset, loss, miner, seed), in their order; a key that names no
    cell of the study, or more than one, is an error."""
    found: dict[tuple, list] = {}
    for cell in study.cells:
        config = cell.config
        if config.fold:  # a folded dataset's cells on fold 0 only
            continue
        found.setdefault((config.dataset, config.loss, config.miner, config.seed), []).append(cell)
    wrong = [f"{key} ({len(found.get(key, []))} cells)" for key in keys if len(found.get(key, [])) != 1]
    if wrong:
        raise SystemExit(f"gpu-check: {shown(study.path)} does not hold exactly one cell of each of "
                         f"{', '.join(wrong)}: CELLS in dmlbench/bench/gpucheck.py name the study's cells")
    return [found[key][0] for key in keys]


def run_cells(count: int, manifest: Path | None, out: Path) -> int:
    """(in the check's environment) The first ``count`` CELLS of the default study, run through
    papermill into $DMLBENCH_RESULTS, beside the CPU runs of the repository's results/runs; the table
    is written after each cell, so that a step stopped at its limit keeps the cells it ran."""
    import pandas as pd

    from ..study.cells import load_study
    from .timing import save_table

    if manifest is not None:
        _check_carried_splits(manifest)
    rows = []
    for cell in chosen_cells(load_study(STUDY), CELLS[:count]):
        rows.append(_cell_row(cell))
        device = rows[0]["device"].split(":")[0]
        save_table(pd.DataFrame(rows), f"cells-{device}", _cells_header(device, rows), folder=out)
    differ = [r["run_id"] for r in rows if r["must_equal"]
              and any(r[f"diff_{k}"] != 0 for k in ("recall@1", "map@r", "nmi"))]
    if differ:
        print(f"gpu-check: on the CPU these cells did not reproduce the shipped runs: {differ}", file=sys.stderr)
        return 1
    return 0


def _check_carried_splits(manifest: Path) -> None:
    """The carried data must be the data the CPU runs were trained on, each dataset read from what was
    carried (han-typefaces from its carried build, not rendered from fonts)."""
    from ..datasets import DATASETS

    for name, facts in json.loads(manifest.read_text())["datasets"].items():
        splits = DATASETS.get(name).load()
        if name == "han-typefaces" and not splits.source.get("carried_build"):
            raise SystemExit(f"gpu-check: han-typefaces was not read from its carried build ({HAN_BUILD_VARIABLE} "
                             f"is {os.environ.get(HAN_BUILD_VARIABLE)!r})")
        found = split_digests(splits)
        if found != facts["split_sha256"]:
            raise SystemExit(f"gpu-check: the carried {name}'s splits differ from the CPU runs' "
                             f"({found} vs {facts['split_sha256']})")
        log(f"{name}: the carried splits are the CPU runs' ({splits.source.get('where', '')})")


def _cell_row(cell) -> dict:
    """Run one cell through papermill; its row: times and metrics beside the shipped CPU run's."""
    from ..fileio import read_json
    from ..study.cells import run_config
    from ..training.rundir import RunDir

    run_id, config = cell.run_id, cell.config
    started = time.perf_counter()
    there_dir = RunDir(run_config(cell.config).parent)
    seconds = time.perf_counter() - started
    there = read_json(there_dir.metrics)
    cpu_dir = RunDir(ROOT / "results" / "runs" / run_id)
    here = read_json(cpu_dir.metrics) if cpu_dir.metrics.is_file() else None
    notebook_s = read_json(there_dir.execution).get("notebook_wall_s") if there_dir.execution.is_file() else seconds
    row = {"run_id": run_id, "dataset": config.dataset, "loss": config.loss, "miner": config.miner,
           "seed": config.seed, "device": there["device"],
           "gpu": there["machine"].get("gpu", ""), "notebook_s": round(notebook_s, 1),
           "train_s": round(there["train_time_s"], 1), "images_per_s": round(there["images_per_s"], 1),
           "best_epoch": there["best_epoch"]}
    for key in ("recall@1", "map@r", "nmi"):
        row[key] = round(there["test"][key], 4)
        row[f"cpu_{key}"] = round(here["test"][key], 4) if here else float("nan")
        row[f"diff_{key}"] = round(there["test"][key] - here["test"][key], 4) if here else float("nan")
    # the same device and thread count give the same numbers (the study's own promise)
    row["must_equal"] = bool(here and there["device"] == here["device"]
                             and there["machine"].get("torch_threads") == here["machine"].get("torch_threads"))
    if here:
        row.update(cpu_notebook_s=round(read_json(cpu_dir.execution)["notebook_wall_s"], 1),
                   cpu_train_s=round(here["train_time_s"], 1), cpu_best_epoch=here["best_epoch"])
    built = [(m or {}).get("dataset", {}).get("source", {}).get("fingerprint") for m in (there, here)]
    if all(built) and built[0] != built[1]:  # han-typefaces: another rendering cannot give equal numbers
        log(f"{run_id}: its data is build {built[0]}, the shipped run's build {built[1]}")
    log(f"{run_id}: {row['device']} {row['notebook_s']} s in papermill; MAP@R {row['map@r']} "
        f"(CPU {row['cpu_map@r']})")
    return row


def _cells_header(device: str, rows: list[dict]) -> str:
    if device == "cuda":
        return (f"Default-study cells through papermill on {rows[0]['gpu']}, beside the same cells' CPU runs in "
                f"results/runs. Equal seeds on different devices need not give equal numbers: the GPU's "
                f"convolution and reduction kernels round differently and the network runs under bf16 "
                f"autocast, so the runs part after the first steps; diff_* = CUDA minus CPU")
    # the dry run: the CPU again (with the CPU runs' thread count, the numbers must be equal)
    return (f"Default-study cells through papermill on the CPU (the GPU check without a GPU), beside the same "
            f"cells' runs in results/runs; where must_equal (same device, same thread count) the numbers "
            f"must be equal; diff_* = this run minus the shipped one")


def run_check(parts: list[int], *, dry: bool = False, cells: int = len(CELLS)) -> int:
    """The check, on the GPU machine (or, dry, here on the CPU in the guarded environment)."""
    started = time.monotonic()
    out = BUILD / "out"
    if out.exists():
        shutil.rmtree(out)
    out_bench = out / "bench"
    out_bench.mkdir(parents=True)
    name = "gpu-dry" if dry else f"gpu-check-part{''.join(map(str, parts))}"
    report = {"name": name, "parts": parts, "dry": dry, "steps": {}, "ok": False}

    def deliver_now() -> None:
        report["seconds"] = round(time.monotonic() - started, 1)
        write_json(out_bench / f"{name}.json", repo_relative(report))
        deliver(out, name)

    site, env = _dry_environment(report) if dry else _device_environment(report, parts)
    env |= {"PYTHONUNBUFFERED": "1", "DMLBENCH_RESULTS": str(out), "DMLBENCH_DOWNLOAD": "0", "DMLBENCH_REUSE": "none"}
    broken = _check_imports(report, env, out / "imports.json", site if dry else None)
    if broken and site is None:
        report["error"] = ("packages are missing here and no carried wheels were installed: carry build/gpu/part1 "
                           "('make gpu-prepare'), or, for part 2 alone, run part 1 in the call just before, while "
                           "the machine is warm")
        log(report["error"])
    report["facts"] = machine_facts()
    device = "cuda" if report["facts"].get("cuda_available") else "cpu"
    if device != "cuda" and not dry:
        log("torch sees no CUDA device here: the CUDA steps are skipped (a dry run is 'make gpu-dry')")
    steps = Steps(env, report, out / "logs", budget_s=CALL_BUDGET_S - (time.monotonic() - started),
                  on_step=deliver_now)
    if not broken:
        if 1 in parts:
            part1(steps, device)
        if 2 in parts:
            part2(steps, cells, dry=dry)
    report["ok"] = (not broken and bool(report["steps"]) and all(s["rc"] == 0 for s in report["steps"].values())
                    and "error" not in report.get("plan", {}))
    if "error" in report.get("plan", {}):
        log(f"the steps ran, but the check cannot travel as it stands: {report['plan']['error']}")
    deliver_now()
    log(f"{'done' if report['ok'] else 'FAILED'} in {report['seconds']} s: {out_bench.relative_to(ROOT)}")
    return 0 if report["ok"] else 1


def _dry_environment(report: dict) -> tuple[Path, dict]:
    """(dry run) The plan, the GPU machine's wheels installed as its pip would, the same versions
    installed for this interpreter, and the guarded environment that sees only them."""
    site = BUILD / "dry-site"
    plan = prepare(strict=False)  # a plan that cannot travel is reported, and the rest is still checked
    report["plan"] = {k: plan[k] for k in ("tree_bytes", "part_bytes", "limit_bytes", "calls")}
    if "error" in plan:
        report["plan"]["error"] = plan["error"]
    report["plan"]["wheels"] = len(plan["pins"])
    report["plan"]["wheel_bytes"] = plan["wheels"]["wheel_bytes"]
    report["plan"]["data_bytes"] = plan["data"]["bundle_bytes"]
    # the GPU machine's wheels, installed as its pip would install them (CPython 3.12)...
    report["installed_cp312"] = install(BUILD / "part1" / "wheels.tar.xz", BUILD / "dry-site-cp312",
                                        python_version=DEVICE_PYTHON)
    # ...and the same versions for this interpreter, which the dry run imports and runs
    local = download_wheels(plan["pins"], BUILD / "wheels" / f"cp{sys.version_info.major}{sys.version_info.minor}",
                            python_version=None)
    key = hashlib.sha256("\n".join(sha256_file(w) for w in local).encode()).hexdigest()
    report["installed"] = install_wheels(local, site, key)
    return site, guarded_environment(site, BUILD / "dry" / "guard", plan["pins"])


def _device_environment(report: dict, parts: list[int]) -> tuple[Path | None, dict]:
    """(on the GPU machine) The carried wheels installed (part 1), or those a previous call installed;
    None for the site where there are none (a user's own GPU machine with the project's venv)."""
    site = BUILD / "site"
    bundle = BUILD / "part1" / "wheels.tar.xz"
    if 1 in parts and bundle.is_file():
        report["installed"] = install(bundle, site)
    elif 1 in parts or _installed(site) is None:
        # no carried wheels: a GPU machine of the user's own, with the project's venv (make setup)
        site = None
        report["installed"] = "none: this environment's packages (no build/gpu/part1/wheels.tar.xz here)"
        log(report["installed"])
    wheels = BUILD / "part1" / "wheels.json"
    if site is not None:
        report["wheels"] = json.loads(wheels.read_text())["wheels"] if wheels.is_file() else _dist_infos(site)
    env = dict(os.environ)
    paths = ([str(site)] if site else []) + [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return site, env


def _check_imports(report: dict, env: dict, imports: Path, carried_site: Path | None) -> dict:
    """Import every module of IMPORTS in ``env`` (a subprocess); returns the broken ones. A dry run
    (``carried_site``) also requires the carried modules to come from its wheels."""
    done = subprocess.run(_python("-m", "dmlbench.bench.gpucheck", "imports", "--out", str(imports)),
                          cwd=ROOT, env=env, capture_output=True, text=True)
    report["imports"] = (json.loads(imports.read_text()) if done.returncode == 0 and imports.is_file()
                         else {"error": (done.stdout + done.stderr)[-3000:]})
    broken = {k: v for k, v in report["imports"].items() if isinstance(v, dict) and "error" in v}
    if "error" in report["imports"] and isinstance(report["imports"]["error"], str):
        broken = {"imports": report["imports"]["error"]}
    if carried_site is not None:
        outside = {k: v["from"] for k, v in report["imports"].items()
                   if k in CARRIED_MODULES and "from" in v and not v["from"].startswith(str(carried_site))}
        if outside:
            broken["outside the carried wheels"] = outside
    log("imports: " + (f"all {len(IMPORTS)} ok" if not broken else f"FAILED {broken}"))
    return broken


def deliver(out: Path, name: str) -> None:
    """The measured files (out/bench/) and the steps' logs, as one archive, with the report beside
    it, into $OUT: what comes back from the GPU machine (a few files, no deep folders). A dry run's
    files go into results/bench/."""
    archive = out / f"{name}.tar.gz"
    tmp = out / f".{name}.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted((out / "bench").iterdir()):
            tar.add(path, arcname=path.name)
        for path in sorted((out / "logs").glob("*.log")) if (out / "logs").is_dir() else ():
            tar.add(path, arcname=f"logs/{path.name}")
    os.replace(tmp, archive)
    target = os.environ.get("OUT")
    if target:
        shutil.copy2(archive, Path(target) / archive.name)
        shutil.copy2(out / "bench" / f"{name}.json", Path(target) / f"{name}.json")
    if name == "gpu-dry":
        collect(archive)


def collect(archive: Path, dest: Path = BENCH_RESULTS) -> list[Path]:
    """The files of a returned archive (results/bench/ files only; its logs stay out) into dest."""
    written = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or "/" in member.name or not re.fullmatch(r"[A-Za-z0-9._-]+", member.name):
                continue
            data = tar.extractfile(member).read()
            path = dest / member.name
            if member.name.endswith(".json"):
                report = json.loads(data)
                for step in report.get("steps", {}).values():
                    step["tail"] = step["tail"][-1500:]
                data = (json.dumps(repo_relative(report), indent=2, sort_keys=True) + "\n").encode()
            dest.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmlbench.bench.gpucheck", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("prepare", help="here: download and bundle what travels, measure it, print the device calls")
    check = sub.add_parser("run", help="there: the check (both parts, or --part)")
    check.add_argument("--part", type=int, choices=[1, 2], action="append")
    check.add_argument("--cells", type=int, default=len(CELLS), help=f"default-study cells in part 2 (default {len(CELLS)})")
    dry = sub.add_parser("dry", help="here: everything that needs no GPU, in the GPU machine's view of this venv")
    dry.add_argument("--cells", type=int, default=DRY_CELLS,
                     help=f"default-study cells to run on the CPU (default {DRY_CELLS}: one of each dataset)")
    cells = sub.add_parser("cells", help=argparse.SUPPRESS)
    cells.add_argument("--count", type=int, required=True)
    cells.add_argument("--manifest", type=Path, help="the carried data's manifest: its splits are checked")
    cells.add_argument("--out", type=Path, required=True)
    imports = sub.add_parser("imports", help=argparse.SUPPRESS)
    imports.add_argument("--out", type=Path, required=True)
    back = sub.add_parser("collect", help="here: the archives that came back from the GPU machine, into results/bench/")
    back.add_argument("folder", type=Path, help="the folder holding gpu-check-part*.tar.gz")
    args = parser.parse_args(argv)
    if args.what == "prepare":
        prepare()
        return 0
    if args.what == "run":
        return run_check(sorted(set(args.part or [1, 2])), cells=args.cells)
    if args.what == "dry":
        return run_check([1, 2], dry=True, cells=args.cells)
    if args.what == "imports":
        write_json(args.out, import_report())
        return 0
    if args.what == "cells":
        return run_cells(args.count, args.manifest, args.out)
    archives = sorted(args.folder.glob("gpu-check-part*.tar.gz"))
    if not archives:
        parser.error(f"{args.folder}: no gpu-check-part*.tar.gz there")
    for archive in archives:
        for path in collect(archive):
            print("written:", shown(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
