"""Search with a trained run, as a user would: index a folder of images (or a dataset split) with the
run's network, keep the index beside the run, and answer queries with their nearest images.

    dmlbench search build RUN [--images FOLDER | --split test] [--index hnsw] [--name NAME]
    dmlbench search query RUN (--image PATH | --id N) [-k 8] [--name NAME] [--grid OUT.png]

RUN is a run folder or a run id under ``<results>/runs``. ``build`` embeds every image with the
run's checkpoint (the evaluation's preprocessing: for photo datasets the evaluation transform and the
network's normalisation; for the small greyscale ones a greyscale image resized to the dataset's size,
normalised by its training statistics), indexes the L2-normalised embeddings with a faiss family
(:mod:`dmlbench.evaluation.indexes`), and writes ``<run>/search/<name>/``: ``index.faiss``,
``embeddings.npy`` and ``manifest.json`` (the run, its configuration hash, the checkpoint's SHA-256,
the index, the preprocessing, the SHA-256 of the two other files, every item's source and label).
NAME is a plain folder name (letters, digits, '-', '_', '.'); without it, the image folder's own name
made plain, or the split's. ``query`` (without --name: the run's only index, or ``test``) refuses an
index built with another checkpoint and fails naming any file of the index that is damaged, prints
the top k with cosine similarity and Euclidean distance on the unit sphere, and draws the query and
its neighbours (``queries/<query>.png`` by default). Images keep their values whatever their mode:
16-bit greyscale is scaled to 8 bits, transparency composited on the dataset's background.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DamagedFileError
from ..datasets.transforms import plain_image
from ..evaluation.indexes import FAMILIES, IndexSpec, build_index
from ..evaluation.indexes.families import wrap_faiss
from ..evaluation.indexes.sweep import normalized
from ..fileio import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from ..paths import runs_dir

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SAVED_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.library == "faiss")
SEARCH_FOLDER = "search"
INDEX_FILES = ("index.faiss", "embeddings.npy")  # beside manifest.json, which records their SHA-256
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
NAME_FORM = "letters, digits, '-', '_' and '.' (not first), such as photos or test-2"
MANIFEST_KEYS = ("run_id", "checkpoint", "checkpoint_sha256", "index", "dim", "preprocess", "items")


class SearchError(ConfigError):
    """Bad input to the search command: the message names the problem and what would do."""


def resolve_run(run: str | os.PathLike) -> Path:
    """A run folder given as a path or as a run id under <results>/runs; it must hold a finished run."""
    from ..training.rundir import RunDir

    path = Path(run)
    folder = path if path.is_dir() else runs_dir() / str(run)
    if not folder.is_dir():
        raise SearchError(f"unknown run {str(run)!r}: neither a folder nor a run id under {runs_dir()} "
                          f"('dmlbench study FILE --status' lists a study's run ids)")
    if not RunDir(folder).is_done():
        raise SearchError(f"{folder} holds no finished run (no readable metrics.json): nothing to search with")
    return folder


@dataclass
class Network:
    """A run's network with its settings, checked against the run's record, and its preprocessing."""
    folder: Path
    model: Any
    config: Any
    checkpoint: Path
    digest: str
    preprocess: dict[str, Any]

    def embed(self, batch) -> np.ndarray:
        import torch

        from ..training.feeds import forward_embed

        return normalized(forward_embed(self.model, [batch], torch.device("cpu"), self.config.precision).numpy())


def load_run_network(folder: Path, checkpoint: str | os.PathLike | None = None) -> Network:
    """The run's network from its checkpoint (or ``checkpoint``, which must come from the same settings)."""
    from ..training.embed import load_network
    from ..training.rundir import RunDir, read_record

    record = read_record(RunDir(folder).metrics)
    path = Path(checkpoint) if checkpoint else RunDir(folder).checkpoint
    if not path.is_file():
        raise SearchError(f"no checkpoint at {path}: the run kept no network to search with")
    try:  # checked and read as tensors, numbers and text only: a damaged or planted file fails naming itself
        model, config = load_network(folder, checkpoint=checkpoint)
    except ConfigError:
        raise
    except Exception as error:
        raise SearchError(f"{path} is not a dmlbench checkpoint ({type(error).__name__}: {error})") from None
    if config.config_hash() != record["config_hash"]:
        raise SearchError(f"{path} comes from another configuration (hash {config.config_hash()}) than run "
                          f"{record['run_id']} (hash {record['config_hash']}): use that run's own checkpoint")
    return Network(folder, model, config, path, sha256_file(path), {})


def _preprocessing(network: Network, splits=None) -> dict[str, Any]:
    """How an image becomes the network's input, as the evaluation prepares the run's dataset."""
    from ..datasets import PHOTO_DATASETS
    from ..training.feeds import DEFAULT_IMAGE_SIZE

    config = network.config
    if config.dataset in PHOTO_DATASETS:
        mean, std = getattr(network.model, "normalization", (None, None))
        if mean is None:
            splits = splits or config.load_splits()
            mean, std = splits.mean, splits.std
        return {"kind": "photo", "size": config.image_size or DEFAULT_IMAGE_SIZE, "mean": list(mean), "std": list(std)}
    splits = splits or config.load_splits()
    height, width = splits.test.images.shape[-2:]
    return {"kind": "grey", "height": int(height), "width": int(width), "mean": float(splits.mean),
            "std": float(splits.std)}


def read_image(path: Path):
    """A PIL image, fully decoded; an unreadable file fails naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise SearchError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise SearchError(f"cannot read image {path}: {error}") from None




def background(preprocess: dict[str, Any]) -> int:
    """The grey level a transparent pixel stands for: the photo datasets' white, or for the small
    greyscale datasets their own background (black where their mean is dark, as in Fashion-MNIST)."""
    return 255 if preprocess["kind"] == "photo" or preprocess["mean"] >= 0.5 else 0


def image_batch(images: list, preprocess: dict[str, Any]):
    """PIL images -> the network's input batch, by the run's preprocessing."""
    import torch

    behind = background(preprocess)
    if preprocess["kind"] == "photo":
        from ..datasets.transforms import eval_transform, normalize_batch

        transform = eval_transform(preprocess["size"], normalize=False)
        crops = [transform(torch.from_numpy(np.array(plain_image(im, behind).convert("RGB"))).permute(2, 0, 1)
                           .contiguous()) for im in images]
        return normalize_batch(torch.stack(crops), preprocess["mean"], preprocess["std"])
    from PIL import Image

    from ..training.feeds import image_tensor

    size = (preprocess["width"], preprocess["height"])
    grey = np.stack([np.asarray(plain_image(im, behind).convert("L").resize(size, Image.BILINEAR)) for im in images])
    return image_tensor(grey, preprocess["mean"], preprocess["std"], torch.device("cpu"))


def folder_images(folder: Path) -> list[Path]:
    """The images under ``folder``, sorted; an index needs two or more."""
    if not folder.is_dir():
        raise SearchError(f"image folder {folder} does not exist")
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise SearchError(f"image folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    if len(found) < 2:
        raise SearchError(f"image folder {folder} holds one image ({found[0].name}): an index needs two or more "
                          f"to answer a query")
    return found


def index_name(name: str) -> str:
    """An index's name: a plain folder name inside the run's search folder (no path, no '..')."""
    if not NAME_PATTERN.fullmatch(name):
        raise SearchError(f"index name {name!r}: an index is a folder inside the run's {SEARCH_FOLDER}/ folder, "
                          f"named with {NAME_FORM}")
    return name


def default_name(images: Path | None, split: str) -> str:
    """The name an index gets without --name: the split, or the image folder's own name made plain."""
    if images is None:
        return split
    plain = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(images).resolve().name).strip("-").lstrip(".")
    return plain or "images"


def _split_items(network: Network, split: str) -> tuple[np.ndarray, list[dict[str, Any]], Any]:
    """The embeddings and items of the run's dataset split (``test`` or ``gallery``)."""
    import torch

    from ..training.embed import batches_of_test_split
    from ..training.feeds import forward_embed

    config = network.config
    splits = config.load_splits()
    if split not in ("test", "gallery") or getattr(splits, split) is None:
        have = "test, gallery" if splits.gallery is not None else "test"
        raise SearchError(f"split {split!r}: {config.dataset} has {have}")
    cpu = torch.device("cpu")
    vectors = forward_embed(network.model, batches_of_test_split(splits, network.model, config, cpu, split), cpu,
                            config.precision)
    labels = getattr(splits, split).labels
    items = [{"id": i, "source": f"{config.dataset}:{split}:{i}", "label": int(label)} for i, label in enumerate(labels)]
    return normalized(vectors.numpy()), items, splits


def build(run: str | os.PathLike, *, images: Path | None = None, split: str = "test", family: str = "hnsw",
          name: str | None = None, checkpoint: str | None = None, batch: int = 256) -> Path:
    """Index the images (or the split) with the run's network; returns the index folder."""
    if family not in SAVED_FAMILIES:
        raise SearchError(f"index {family!r} cannot be saved; choose from {', '.join(SAVED_FAMILIES)}")
    name = index_name(name if name is not None else default_name(images, split))
    folder = resolve_run(run)
    paths = folder_images(Path(images)) if images is not None else None
    network = load_run_network(folder, checkpoint)
    if paths is not None:
        network.preprocess = _preprocessing(network)
        vectors = np.concatenate([network.embed(image_batch([read_image(p) for p in paths[i:i + batch]],
                                                            network.preprocess)) for i in range(0, len(paths), batch)])
        items = [{"id": i, "source": str(p.resolve()), "label": p.parent.name} for i, p in enumerate(paths)]
    else:
        vectors, items, splits = _split_items(network, split)
        network.preprocess = _preprocessing(network, splits)
    built = build_index(IndexSpec.make(family), vectors)
    out = folder / SEARCH_FOLDER / name
    out.mkdir(parents=True, exist_ok=True)
    import faiss

    files = {"index.faiss": faiss.serialize_index(built.native).tobytes(), "embeddings.npy": _npy_bytes(vectors)}
    for file, data in files.items():
        atomic_write_bytes(out / file, data)
    atomic_write_json(out / "manifest.json", {  # last: it vouches for the files above by their digests
        "run_id": folder.name, "config_hash": network.config.config_hash(), "checkpoint": str(network.checkpoint),
        "checkpoint_sha256": network.digest, "index": IndexSpec.make(family).to_dict(), "dim": int(vectors.shape[1]),
        "preprocess": network.preprocess, "files": {f: _sha256(data) for f, data in files.items()},
        "source": {"images": str(Path(images).resolve())} if images is not None else {"split": split},
        "items": items})
    return out


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _search_setting(family: str, k: int) -> dict[str, int]:
    """The search setting of a query: HNSW explores max(64, 4k) candidates, IVF scans 16 lists."""
    return {"hnsw": {"ef_search": max(64, 4 * k)}, "ivf-flat": {"nprobe": 16}, "ivf-pq": {"nprobe": 16}}.get(family, {})


def choose_index(folder: Path, name: str | None) -> str:
    """The index to query: ``name``, or without one the run's only index (or the one named 'test')."""
    built = sorted(p.parent.name for p in (folder / SEARCH_FOLDER).glob("*/manifest.json"))
    if name is None and len(built) == 1:
        return built[0]
    name = index_name(name if name is not None else "test")
    if name not in built:
        given = f"no index named {name!r}" if name != "test" or len(built) == 0 else "several indexes and none named 'test'"
        raise SearchError(f"run {folder.name} has {given} (built: {', '.join(built) or 'none'}); "
                          + (f"choose one with --name" if built else f"make one with 'dmlbench search build {folder}'"))
    return name


def _rebuild(folder: Path, name: str, manifest: dict[str, Any] | None = None) -> str:
    source = (manifest or {}).get("source") or {}
    given = f"--images {source['images']}" if "images" in source else f"--split {source.get('split', '<split>')}" \
        if source else "(--images FOLDER | --split SPLIT)"
    return f"build it again: dmlbench search build {folder} {given} --name {name}"


def read_manifest(folder: Path, name: str) -> dict[str, Any]:
    """An index's manifest.json, checked: a damaged one fails naming it and how to rebuild the index."""
    path = folder / SEARCH_FOLDER / name / "manifest.json"
    try:
        manifest = read_json(path)
    except (ValueError, OSError) as error:  # not JSON, not UTF-8, unreadable
        reason = error.msg if isinstance(error, json.JSONDecodeError) else type(error).__name__
        raise DamagedFileError(f"{path}: not a readable index manifest ({reason}); {_rebuild(folder, name)}") from None
    missing = [key for key in MANIFEST_KEYS if key not in manifest] if isinstance(manifest, dict) else list(MANIFEST_KEYS)
    if missing:
        raise DamagedFileError(f"{path}: lacks {', '.join(missing)}, so it is not an index's manifest; "
                               f"{_rebuild(folder, name)}")
    index = manifest["index"]
    if not (isinstance(manifest["items"], list) and isinstance(manifest["dim"], int) and isinstance(index, dict)
            and index.get("family") in SAVED_FAMILIES and isinstance(index.get("build"), dict)):
        raise DamagedFileError(f"{path}: its items, dim or index entry is not what a build writes (an edited "
                               f"file?); {_rebuild(folder, name, manifest)}")
    return manifest


def _index_file(where: Path, file: str, manifest: dict[str, Any], rebuild: str) -> bytes:
    """One of the index's files, its bytes checked against the SHA-256 its manifest records."""
    path = where / file
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DamagedFileError(f"{path}: cannot be read ({error.strerror or type(error).__name__}); {rebuild}") from None
    expected = manifest.get("files", {}).get(file)
    if expected is not None and _sha256(data) != expected:
        raise DamagedFileError(f"{path}: its SHA-256 differs from the one its manifest records: the file is "
                               f"truncated or damaged; {rebuild}")
    return data


def load_index_files(folder: Path, name: str, manifest: dict[str, Any]):
    """(the index, its embeddings), read and checked against each other and the manifest."""
    import io

    import faiss

    where, rebuild = folder / SEARCH_FOLDER / name, _rebuild(folder, name, manifest)
    raw = {file: _index_file(where, file, manifest, rebuild) for file in INDEX_FILES}
    try:
        native = faiss.deserialize_index(np.frombuffer(raw["index.faiss"], dtype=np.uint8))
    except Exception as error:  # faiss raises RuntimeError with its C++ trace
        raise DamagedFileError(f"{where / 'index.faiss'}: not a readable faiss index "
                               f"({str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__}); "
                               f"{rebuild}") from None
    try:
        vectors = np.load(io.BytesIO(raw["embeddings.npy"]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DamagedFileError(f"{where / 'embeddings.npy'}: not a readable array ({error}); {rebuild}") from None
    count = len(manifest["items"])
    if vectors.shape != (count, manifest["dim"]) or native.ntotal != count:
        raise DamagedFileError(f"{where}: its files disagree (manifest {count} items of dimension {manifest['dim']}, "
                               f"embeddings {vectors.shape}, index {native.ntotal}); {rebuild}")
    spec = IndexSpec.make(manifest["index"]["family"], **manifest["index"]["build"])
    return wrap_faiss(spec, native), vectors


def open_index(run: str | os.PathLike, name: str | None = None, checkpoint: str | None = None):
    """(the run's network, the index's manifest, the index, its embeddings); the index must have been
    built with the checkpoint the run has now, and its files must be whole."""
    folder = resolve_run(run)
    name = choose_index(folder, name)
    manifest = read_manifest(folder, name)
    network = load_run_network(folder, checkpoint)
    if manifest["checkpoint_sha256"] != network.digest:
        raise SearchError(f"index {name!r} of run {folder.name} was built with another checkpoint "
                          f"({manifest['checkpoint']}, SHA-256 {manifest['checkpoint_sha256'][:12]}...) than "
                          f"{network.checkpoint} ({network.digest[:12]}...); build it again")
    network.preprocess = manifest["preprocess"]
    index, vectors = load_index_files(folder, name, manifest)
    return network, manifest, index, vectors, name


def query(run: str | os.PathLike, *, image: str | os.PathLike | None = None, item: int | None = None, k: int = 8,
          name: str | None = None, grid: str | os.PathLike | None = None, checkpoint: str | None = None
          ) -> dict[str, Any]:
    """The k nearest items of an image (``image``) or of an item of the index (``item``, itself
    excluded), with the retrieval grid written; returns what is printed. ``name``: the index (None:
    the run's only one, or 'test')."""
    if (image is None) == (item is None):
        raise SearchError("give exactly one query: an image path (--image) or an item id of the index (--id)")
    if grid is not None and Path(grid).is_dir():
        raise SearchError(f"--grid {grid} is a folder: give the picture's file name, such as {Path(grid) / 'query.png'}")
    network, manifest, index, vectors, name = open_index(run, name, checkpoint)
    items = manifest["items"]
    if item is not None:
        if not 0 <= item < len(items):
            raise SearchError(f"id {item} is not an item of index {name!r}: its ids run from 0 to {len(items) - 1}")
        vector, exclude, label = vectors[item][None], np.array([item]), f"item {item} ({items[item]['source']})"
    else:
        vector = network.embed(image_batch([read_image(Path(image))], network.preprocess))
        exclude, label = None, str(image)
    limit = len(items) - (exclude is not None)
    if not 1 <= k <= limit:
        raise SearchError(f"k={k}: the index {name!r} can return 1 to {limit} images for this query")
    scores, ids, _ = index.search(vector, k, _search_setting(index.spec.family, k), exclude=exclude)
    found = [{"rank": r + 1, **items[i], "similarity": float(s), "distance": float(np.sqrt(max(0.0, 2 - 2 * s)))}
             for r, (i, s) in enumerate(zip(ids[0], scores[0])) if i >= 0]
    stem = f"id{item}" if item is not None else Path(image).stem
    path = Path(grid) if grid else network.folder / SEARCH_FOLDER / name / "queries" / f"{stem}.png"
    draw_grid(path, label, image if item is None else None, items[item] if item is not None else None, found,
              network.config)
    return {"query": label, "index": index.spec.name, "neighbours": found, "grid": str(path)}


def _thumbnail(item: dict[str, Any] | None, image: str | os.PathLike | None, config, cache: dict) -> np.ndarray:
    """What the grid shows of a query or an answer: the image file, or the dataset split's image."""
    if image is not None:
        return np.asarray(plain_image(read_image(Path(image))).convert("RGB"))
    source = item["source"]
    if os.path.isabs(source):
        return np.asarray(plain_image(read_image(Path(source))).convert("RGB"))
    _, split, position = source.rsplit(":", 2)
    if "splits" not in cache:
        cache["splits"] = config.load_splits()
    part = getattr(cache["splits"], split)
    if hasattr(part, "cache"):
        return part.cache[int(part.rows[int(position)])].permute(1, 2, 0).numpy()
    return part.images[int(position)]


def draw_grid(path: Path, label: str, image, item, found: list[dict[str, Any]], config) -> Path:
    """The query and its answers in one row, each answer with its rank, label and distance (PNG)."""
    import io

    from matplotlib import pyplot as plt

    cache: dict = {}
    fig, axes = plt.subplots(1, len(found) + 1, figsize=(1.6 * (len(found) + 1), 2.0), squeeze=False)
    pictures = [(_thumbnail(item, image, config, cache), "query")]
    pictures += [(_thumbnail(f, None, config, cache), f"#{f['rank']} {f['label']}\nd={f['distance']:.3f}") for f in found]
    for axis, (picture, title) in zip(axes[0], pictures):
        axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
        axis.set_title(title, fontsize=7)
        axis.axis("off")
    fig.suptitle(label[-80:], fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as error:
        raise SearchError(f"cannot write the retrieval grid {path} ({error.strerror or error}); "
                          f"give --grid a file in a folder you can write") from None
    return path
