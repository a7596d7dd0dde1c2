"""Search with a trained run, as a user would: index a folder of images (or a dataset split) with the
run's network, keep the index beside the run, and answer queries with their nearest images.

    dmlbench search build RUN [--images FOLDER | --split test] [--index hnsw] [--name NAME]
    dmlbench search query RUN (--image PATH | --id N) [-k 8] [--name NAME] [--grid OUT.png]
    dmlbench search serve RUN [--name NAME] [-k 8]      queries from stdin, one a line: a path or 'id N'

RUN is a run folder or a run id under ``<results>/runs``. ``build`` embeds every image with the
run's checkpoint (the evaluation's preprocessing: for photo datasets the evaluation transform and the
network's normalisation; for the small greyscale ones a greyscale image resized to the dataset's size,
normalised by its training statistics), indexes the L2-normalised embeddings with a faiss family
(:mod:`dmlbench.evaluation.indexes`), and writes ``<run>/search/<name>/``: ``index.faiss``,
``embeddings.npy`` and ``manifest.json`` (the run, its configuration hash, the checkpoint's SHA-256,
the index, the preprocessing, the SHA-256 of the two other files, every item's source and label, a
split's class names, the images skipped as unreadable), then names it in ``<run>/search/.latest``.
An unreadable image (empty, damaged, not an image) is skipped and listed; fewer than two readable
images fail. NAME is a plain folder name (letters, digits, '-', '_', '.'); without it, the image
folder's own name made plain, or the split's. ``query`` and ``serve`` open --name, or without it the
run's latest build (``.latest``; where that file is absent or names a removed index, the index whose
manifest was written last), refuse an index built with another checkpoint and fail naming any file of
the index that is damaged. An answer lists the top k with cosine similarity and Euclidean distance on
the unit sphere, each with its class (a split's class name where the dataset has names) and, where
the query has a label (an item, an indexed image, an image in a folder named after a class), whether
it is right; the grid (``queries/<query>.png`` by default) frames right answers green and wrong ones
red, CJK class names set in an installed CJK font. ``serve`` loads the network and the index once and
answers each line before reading the next. Images keep their values whatever their mode: 16-bit
greyscale is scaled to 8 bits, transparency composited on the dataset's background.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import ConfigError, DamagedFileError
from ..datasets.transforms import plain_image
from ..evaluation.indexes import FAMILIES, IndexSpec, build_index
from ..evaluation.indexes.families import wrap_faiss
from ..evaluation.indexes.sweep import normalized
from ..fileio import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from ..paths import runs_dir

log = logging.getLogger("dmlbench")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SAVED_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.library == "faiss")
SEARCH_FOLDER = "search"
LATEST = ".latest"  # in the search folder: the name of the run's latest build (no index name starts with '.')
INDEX_FILES = ("index.faiss", "embeddings.npy")  # beside manifest.json, which records their SHA-256
THUMBNAILS = "thumbnails.npy"  # a small dataset split's images, beside an index of that split
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
NAME_FORM = "letters, digits, '-', '_' and '.' (not first), such as photos or test-2"
MANIFEST_KEYS = ("run_id", "checkpoint", "checkpoint_sha256", "index", "dim", "preprocess", "items")
RIGHT, WRONG = "#2ca02c", "#d62728"  # the grid's frames: an answer of the query's class, of another
LISTED = 10  # unreadable images named in a message; the manifest lists them all
# the CJK fonts a grid's titles use, best first (a family name's start); any other that fontconfig lists comes last
CJK_FAMILIES = ("Noto Sans CJK", "Noto Serif CJK", "Source Han Sans", "WenQuanYi", "Droid Sans Fallback", "AR PL")


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
    """The run's network from its checkpoint (or ``checkpoint``, which must come from the same settings).
    The run's own checkpoint, read against the SHA-256 its record holds, is the run's by that check;
    any other file is compared by the configuration hash of the settings it carries."""
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
    recorded = (RunDir(folder).checkpoint_record() or {}).get("sha256") if not checkpoint else None
    if not recorded and config.config_hash() != record["config_hash"]:  # the hash reads every component's source
        raise SearchError(f"{path} comes from another configuration (hash {config.config_hash()}) than run "
                          f"{record['run_id']} (hash {record['config_hash']}): use that run's own checkpoint")
    return Network(folder, model, config, path, recorded or sha256_file(path), {})


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


def open_image(path: Path):
    """(a PIL image, fully decoded, None), or (None, why the file is no readable image); a missing
    file raises FileNotFoundError."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return None, "an empty file (0 bytes)"
        with Image.open(path) as image:
            image.load()
            return image.copy(), None
    except FileNotFoundError:
        raise
    except UnidentifiedImageError:
        return None, "not an image (no format PIL reads)"
    except OSError as error:  # truncated data, a permission
        return None, f"damaged or unreadable ({error.strerror or error})"
    except Exception as error:  # PIL's decoders raise many kinds for broken data (SyntaxError, struct.error...)
        return None, f"damaged ({type(error).__name__}: {error})"


def read_image(path: Path):
    """A PIL image, fully decoded; an unreadable file fails naming it."""
    try:
        image, reason = open_image(Path(path))
    except FileNotFoundError:
        raise SearchError(f"image {path} does not exist") from None
    if image is None:
        raise SearchError(f"cannot read image {path}: {reason}")
    return image


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
    """The image files under ``folder`` (by suffix), sorted; an index needs two or more."""
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


def skipped_line(skipped: list[dict[str, str]], root: str | os.PathLike | None = None) -> str:
    """'skipped N unreadable images: a.png (why), ...', paths under ``root`` written from it."""
    def shown(source: str) -> str:
        return os.path.relpath(source, root) if root and Path(source).is_relative_to(Path(root).resolve()) else source

    named = [f"{shown(s['source'])} ({s['reason']})" for s in skipped[:LISTED]]
    more = f", and {len(skipped) - LISTED} more (listed in manifest.json)" if len(skipped) > LISTED else ""
    return f"skipped {len(skipped)} unreadable image{'s' * (len(skipped) != 1)}: {', '.join(named)}{more}"


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


def _folder_items(network: Network, root: Path, paths: list[Path], batch: int):
    """(embeddings, items, skipped) of the image files: an unreadable one is skipped with its reason."""
    vectors, items, skipped, pending = [], [], [], []

    def embed_pending() -> None:
        if pending:
            vectors.append(network.embed(image_batch([image for _, image in pending], network.preprocess)))
            for path, _ in pending:
                items.append({"id": len(items), "source": str(path.resolve()), "label": path.parent.name})
            pending.clear()

    for path in paths:
        try:
            image, reason = open_image(path)
        except FileNotFoundError:
            image, reason = None, "removed while the folder was indexed"
        if image is None:
            skipped.append({"source": str(path.resolve()), "reason": reason})
            continue
        pending.append((path, image))
        if len(pending) == batch:
            embed_pending()
    embed_pending()
    if len(items) < 2:
        raise SearchError(f"image folder {root} holds {len(items)} readable image{'s' * (len(items) != 1)} of "
                          f"{len(paths)}: an index needs two or more; {skipped_line(skipped, root)}")
    return np.concatenate(vectors), items, skipped


def build(run: str | os.PathLike, *, images: Path | None = None, split: str = "test", family: str = "hnsw",
          name: str | None = None, checkpoint: str | None = None, batch: int = 256) -> Path:
    """Index the images (or the split) with the run's network; returns the index folder, which
    becomes the run's latest index. Unreadable images are skipped and listed in the manifest."""
    if family not in SAVED_FAMILIES:
        raise SearchError(f"index {family!r} cannot be saved; choose from {', '.join(SAVED_FAMILIES)}")
    name = index_name(name if name is not None else default_name(images, split))
    folder = resolve_run(run)
    paths = folder_images(Path(images)) if images is not None else None
    network = load_run_network(folder, checkpoint)
    if paths is not None:
        network.preprocess = _preprocessing(network)
        vectors, items, skipped = _folder_items(network, Path(images), paths, batch)
        described = {"source": {"images": str(Path(images).resolve())}, "class_names": {}, "skipped": skipped}
        thumbnails = None
    else:
        vectors, items, splits = _split_items(network, split)
        network.preprocess = _preprocessing(network, splits)
        names = {str(label): str(splits.class_names.get(label, label)) for label in sorted({i["label"] for i in items})}
        described = {"source": {"split": split}, "class_names": names, "skipped": []}
        part = getattr(splits, split)  # a small dataset's images are kept beside the index; photos are not
        thumbnails = None if hasattr(part, "cache") else np.asarray(part.images)
    return _write_index(folder, name, network, family, vectors, items, described, thumbnails)


def _write_index(folder: Path, name: str, network: Network, family: str, vectors: np.ndarray,
                 items: list[dict[str, Any]], described: dict[str, Any], thumbnails: np.ndarray | None) -> Path:
    """The index's files (with a small split's images, ``thumbnails.npy``: a query draws them without
    loading the dataset), its manifest (last: it vouches for the files by their digests), then the
    run's ``.latest`` naming it."""
    import faiss

    built = build_index(IndexSpec.make(family), vectors)
    out = folder / SEARCH_FOLDER / name
    out.mkdir(parents=True, exist_ok=True)
    files = {"index.faiss": faiss.serialize_index(built.native).tobytes(), "embeddings.npy": _npy_bytes(vectors)}
    if thumbnails is not None:
        files[THUMBNAILS] = _npy_bytes(np.ascontiguousarray(thumbnails))
    else:
        (out / THUMBNAILS).unlink(missing_ok=True)
    for file, data in files.items():
        atomic_write_bytes(out / file, data)
    atomic_write_json(out / "manifest.json", {
        "run_id": folder.name, "config_hash": network.config.config_hash(), "checkpoint": str(network.checkpoint),
        "checkpoint_sha256": network.digest, "index": IndexSpec.make(family).to_dict(), "dim": int(vectors.shape[1]),
        "preprocess": network.preprocess, "files": {f: _sha256(data) for f, data in files.items()},
        **described, "items": items})
    atomic_write_bytes(folder / SEARCH_FOLDER / LATEST, f"{name}\n".encode())
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


def built_indexes(folder: Path) -> list[str]:
    """The names of the run's indexes (folders of its search folder with a manifest), sorted."""
    return sorted(p.parent.name for p in (folder / SEARCH_FOLDER).glob("*/manifest.json")
                  if NAME_PATTERN.fullmatch(p.parent.name))


def _latest(folder: Path, built: list[str]) -> tuple[str, str]:
    """(the run's latest index, how it is known): the one ``.latest`` names, else (an index built before
    that file, or the one it names removed) the one whose manifest was written last."""
    where = folder / SEARCH_FOLDER
    try:
        named = (where / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        named = ""
    if named in built:
        return named, "the run's latest build"

    def written(name: str) -> tuple[int, str]:
        try:
            return (where / name / "manifest.json").stat().st_mtime_ns, name
        except OSError:
            return 0, name

    return max(built, key=written), "the run's most recently written index"


def choose_index(folder: Path, name: str | None) -> tuple[str, str]:
    """(the index to query, why that one): ``name``, or without one the run's latest build."""
    built = built_indexes(folder)
    make = f"make one with 'dmlbench search build {folder} --images FOLDER' (or --split test)"
    if name is not None:
        name = index_name(name)
        if name not in built:
            raise SearchError(f"run {folder.name} has no index named {name!r} (built: {', '.join(built) or 'none'}); "
                              + ("choose one with --name" if built else make))
        return name, "named by --name"
    if not built:
        raise SearchError(f"run {folder.name} has no index yet; {make}")
    return (built[0], "the run's only index") if len(built) == 1 else _latest(folder, built)


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
            and index.get("family") in SAVED_FAMILIES and isinstance(index.get("build"), dict)
            and isinstance(manifest.get("class_names", {}), dict)):
        raise DamagedFileError(f"{path}: its items, dim, index or class_names entry is not what a build writes (an "
                               f"edited file?); {_rebuild(folder, name, manifest)}")
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


def open_search(run: str | os.PathLike, name: str | None = None, checkpoint: str | None = None) -> "Searcher":
    """The run's network and one of its indexes, opened once to answer any number of queries; the
    index must have been built with the checkpoint the run has now, and its files must be whole."""
    folder = resolve_run(run)
    name, chosen = choose_index(folder, name)
    manifest = read_manifest(folder, name)
    network = load_run_network(folder, checkpoint)
    if manifest["checkpoint_sha256"] != network.digest:
        raise SearchError(f"index {name!r} of run {folder.name} was built with another checkpoint "
                          f"({manifest['checkpoint']}, SHA-256 {manifest['checkpoint_sha256'][:12]}...) than "
                          f"{network.checkpoint} ({network.digest[:12]}...); build it again")
    network.preprocess = manifest["preprocess"]
    index, vectors = load_index_files(folder, name, manifest)
    return Searcher(network, manifest, index, vectors, name, chosen)


@dataclass
class Searcher:
    """An opened index with its run's network: answers queries without opening anything again."""
    network: Network
    manifest: dict[str, Any]
    index: Any
    vectors: np.ndarray
    name: str
    chosen: str  # why this index: named by --name, the run's only index, its latest build
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def items(self) -> list[dict[str, Any]]:
        return self.manifest["items"]

    def splits(self):
        """The run's dataset, loaded once: a split index shows its images from there."""
        if "splits" not in self.cache:
            self.cache["splits"] = self.network.config.load_splits()
        return self.cache["splits"]

    def class_names(self) -> dict[str, str]:
        """Label (as text) -> class name: a split's names as its build recorded them (for an older
        manifest, the dataset's); a folder's labels are their own names."""
        if "names" not in self.cache:
            names = self.manifest.get("class_names")
            if names is None and "split" in (self.manifest.get("source") or {}):
                names = {str(c): str(n) for c, n in self.splits().class_names.items()}
            self.cache["names"] = names or {}
        return self.cache["names"]

    def describe(self, label) -> str:
        """A label as printed: the class name with its id where they differ ('己 (24049)')."""
        name = self.class_names().get(str(label), str(label))
        return name if name == str(label) else f"{name} ({label})"

    def label_of_image(self, path: Path):
        """The label of a query image: an indexed image's own, or its folder's name where that is a
        class of the index (a split's class id or name); None otherwise."""
        if "by_source" not in self.cache:
            labels = {item["label"] for item in self.items}
            self.cache["by_source"] = {item["source"]: item["label"] for item in self.items}
            self.cache["by_folder"] = {**{self.class_names().get(str(c), str(c)): c for c in labels},
                                       **{str(c): c for c in labels}}
        resolved = Path(path).resolve()
        found = self.cache["by_source"].get(str(resolved))
        return found if found is not None else self.cache["by_folder"].get(resolved.parent.name)

    def thumbnails(self) -> np.ndarray | None:
        """The split's images the build kept beside the index (checked by their SHA-256), or None."""
        if THUMBNAILS not in self.manifest.get("files", {}):
            return None
        if THUMBNAILS not in self.cache:
            import io

            folder, where = self.network.folder, self.network.folder / SEARCH_FOLDER / self.name
            data = _index_file(where, THUMBNAILS, self.manifest, _rebuild(folder, self.name, self.manifest))
            try:
                self.cache[THUMBNAILS] = np.load(io.BytesIO(data), allow_pickle=False)
            except (ValueError, OSError, EOFError) as error:
                raise DamagedFileError(f"{where / THUMBNAILS}: not a readable array ({error}); "
                                       f"{_rebuild(folder, self.name, self.manifest)}") from None
        return self.cache[THUMBNAILS]

    def thumbnail(self, item: dict[str, Any]) -> np.ndarray:
        """What the grid shows of an item: its image file, or the dataset split's image (kept beside
        the index, or for the photo datasets read from their cache)."""
        source = item["source"]
        if os.path.isabs(source):
            return np.asarray(plain_image(read_image(Path(source))).convert("RGB"))
        _, split, position = source.rsplit(":", 2)
        if self.thumbnails() is not None:
            return self.thumbnails()[int(position)]
        part = getattr(self.splits(), split)
        if hasattr(part, "cache"):
            return part.cache[int(part.rows[int(position)])].permute(1, 2, 0).numpy()
        return part.images[int(position)]

    def ask(self, *, image: str | os.PathLike | None = None, item: int | None = None, k: int = 8,
            grid: str | os.PathLike | None = None) -> dict[str, Any]:
        """The k nearest items of an image or of an item (itself excluded), each with its class and,
        where the query has a label, whether it matches; the grid written. Returns what is printed."""
        items = self.items
        if item is not None:
            if not 0 <= item < len(items):
                raise SearchError(f"id {item} is not an item of index {self.name!r}: its ids run from 0 to "
                                  f"{len(items) - 1}")
            vector, exclude, truth = self.vectors[item][None], np.array([item]), items[item]["label"]
            text, picture, stem = f"item {item} ({items[item]['source']})", self.thumbnail(items[item]), f"id{item}"
        else:
            read = read_image(Path(image))
            vector = self.network.embed(image_batch([read], self.network.preprocess))
            exclude, truth, text, stem = None, self.label_of_image(Path(image)), str(image), Path(image).stem
            picture = np.asarray(plain_image(read).convert("RGB"))
        limit = len(items) - (exclude is not None)
        if not 1 <= k <= limit:
            raise SearchError(f"k={k}: the index {self.name!r} can return 1 to {limit} images for this query")
        scores, ids, _ = self.index.search(vector, k, _search_setting(self.index.spec.family, k), exclude=exclude)
        found = [{"rank": r + 1, **items[i], "class": self.describe(items[i]["label"]),
                  "match": None if truth is None else items[i]["label"] == truth, "similarity": float(s),
                  "distance": float(np.sqrt(max(0.0, 2 - 2 * s)))} for r, (i, s) in enumerate(zip(ids[0], scores[0]))
                 if i >= 0]
        path = Path(grid) if grid else self.network.folder / SEARCH_FOLDER / self.name / "queries" / f"{stem}.png"
        answer = {"query": text, "label": truth, "class": None if truth is None else self.describe(truth),
                  "index": self.index.spec.name, "name": self.name, "chosen": self.chosen, "neighbours": found,
                  "right": None if truth is None else sum(f["match"] for f in found), "grid": str(path)}
        draw_grid(path, text, self._panels(picture, answer))
        return answer

    def _panels(self, picture: np.ndarray, answer: dict[str, Any]) -> list[tuple[np.ndarray, str, str | None]]:
        """(picture, title, frame colour) of the query and each answer: green right, red wrong."""
        query = "query" + (f"\n{answer['class']}" if answer["class"] is not None else "")
        return [(picture, query, None)] + [
            (self.thumbnail(f), f"#{f['rank']} {f['class']}\nd={f['distance']:.3f}",
             None if f["match"] is None else RIGHT if f["match"] else WRONG) for f in answer["neighbours"]]

    def warm(self) -> None:
        """Load now what a first answer would: the dataset's images, the drawing code, a CJK font, the
        network's first pass."""
        from PIL import Image

        if "split" in (self.manifest.get("source") or {}) and self.thumbnails() is None:
            self.splits()
        import matplotlib.figure  # noqa: F401  (imported once, here)

        if _has_cjk(" ".join(self.class_names().values()) + " ".join(str(i["label"]) for i in self.items)):
            cjk_font()
        shape = self.network.preprocess
        side = (shape["width"], shape["height"]) if shape["kind"] == "grey" else (shape["size"], shape["size"])
        self.network.embed(image_batch([Image.new("L", side)], shape))


def query(run: str | os.PathLike, *, image: str | os.PathLike | None = None, item: int | None = None, k: int = 8,
          name: str | None = None, grid: str | os.PathLike | None = None, checkpoint: str | None = None
          ) -> dict[str, Any]:
    """The k nearest items of an image (``image``) or of an item of the index (``item``, itself
    excluded), with the retrieval grid written; returns what is printed. ``name``: the index (None:
    the run's latest build)."""
    if (image is None) == (item is None):
        raise SearchError("give exactly one query: an image path (--image) or an item id of the index (--id)")
    if grid is not None and Path(grid).is_dir():
        raise SearchError(f"--grid {grid} is a folder: give the picture's file name, such as {Path(grid) / 'query.png'}")
    return open_search(run, name, checkpoint).ask(image=image, item=item, k=k, grid=grid)


def answer_lines(answer: dict[str, Any]) -> list[str]:
    """An answer as printed: the query and its label, the index and why it was used, one line an
    answer (right or wrong where the query has a label), how many are right, the grid."""
    label = f"  label {answer['class']}" if answer["class"] is not None else "  (no label)"
    lines = [f"query: {answer['query']}{label}", f"index: {answer['name']} ({answer['index']}), {answer['chosen']}"]
    for n in answer["neighbours"]:
        verdict = "" if n["match"] is None else ("right  " if n["match"] else "wrong  ")
        lines.append(f"{n['rank']:>3}  id {n['id']:<6} similarity {n['similarity']:.4f}  distance {n['distance']:.4f}  "
                     f"{verdict}label {n['class']}  {n['source']}")
    if answer["right"] is not None:
        lines.append(f"right: {answer['right']} of {len(answer['neighbours'])} share the query's label")
    return lines + [f"retrieval grid: {answer['grid']}"]


def serve_query(line: str, count: int) -> dict[str, Any]:
    """A line of ``serve``'s input as a query: 'id N' (an item), anything else an image path."""
    found = re.fullmatch(r"id\s+(\S+)", line)
    if found is None:
        return {"image": str(Path(line).expanduser())}
    try:
        return {"item": int(found.group(1))}
    except ValueError:
        raise SearchError(f"{line!r}: an item is 'id N' with N a whole number from 0 to {count - 1}; anything "
                          f"else is read as an image path") from None


def serve(run: str | os.PathLike, *, name: str | None = None, k: int = 8, checkpoint: str | None = None,
          lines: Iterable[str] | None = None, say: Callable[[str], None] | None = None) -> int:
    """Open the run's network and index once, then answer the queries of ``lines`` (stdin), one a
    line, each printed (by ``say``, flushed) and its grid written before the next line is read. A bad
    query prints one 'error: ...' line and serving goes on; an empty line or the end stops. Every
    answer ends with 'answered in S s'. Returns the number of queries answered."""
    say = say or (lambda text: print(text, flush=True))
    searcher = open_search(run, name, checkpoint)
    count = len(searcher.items)
    if not 1 <= k < count:
        raise SearchError(f"k={k}: the index {searcher.name!r} holds {count} images, so k runs from 1 to {count - 1}")
    searcher.warm()
    say(f"serving index {searcher.name!r} of run {searcher.network.folder.name} ({count} images, "
        f"{searcher.index.spec.name}), {searcher.chosen}, k={k}: one query a line, an image path or 'id N'; "
        f"an empty line or the end of input stops")
    answered = 0
    for line in lines if lines is not None else iter(sys.stdin.readline, ""):
        if not line.strip():
            break
        started = time.perf_counter()
        try:
            answer = searcher.ask(**serve_query(line.strip(), count), k=k)
        except SearchError as error:
            say(f"error: {error}")
            continue
        for text in answer_lines(answer):
            say(text)
        say(f"answered in {time.perf_counter() - started:.3f} s")
        answered += 1
    return answered


def _has_cjk(text: str) -> bool:
    """Whether ``text`` holds CJK characters (radicals, kana, ideographs, Hangul, full-width forms)."""
    return any("\u2e80" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af" or "\uf900" <= c <= "\uffef"
               or c >= "\U00020000" for c in text)


def cjk_font_files() -> list[str]:
    """Installed font files with Chinese glyphs, best first (:data:`CJK_FAMILIES`), as fontconfig lists
    them; where fc-list is absent, the usual font folders' CJK files."""
    import subprocess

    try:
        listed = subprocess.run(["fc-list", ":lang=zh", "file", "family"], capture_output=True, text=True,
                                timeout=30).stdout
        found = [(p.strip(), f) for p, _, f in (line.partition(":") for line in listed.splitlines()) if f]
    except (OSError, subprocess.SubprocessError):
        folders = [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts",
                   Path.home() / ".local/share/fonts"]
        found = [(str(p), p.stem) for folder in folders if folder.is_dir() for pattern in ("*CJK*", "wqy*", "u*ing.tt*")
                 for p in folder.rglob(pattern)]

    def rank(entry: tuple[str, str]) -> tuple:
        path, family = entry
        order = next((i for i, start in enumerate(CJK_FAMILIES) if start.lower() in (family + path).lower()),
                     len(CJK_FAMILIES))
        return order, "Mono" in family, "Regular" not in path, path

    return list(dict.fromkeys(path for path, _ in sorted(found, key=rank)))


@functools.lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The family name of an installed CJK font, registered with matplotlib; None (with a one-line
    warning, once) where none is installed."""
    from matplotlib import font_manager

    for path in cjk_font_files():
        try:
            font_manager.fontManager.addfont(path)
            return font_manager.FontProperties(fname=path).get_name()
        except (OSError, RuntimeError, ValueError):
            continue
    log.warning("no CJK font is installed (fc-list :lang=zh lists none): CJK class names in retrieval grids are "
                "drawn as boxes; install one, such as Debian's fonts-noto-cjk")
    return None


def _title_font(texts: list[str]) -> dict[str, Any]:
    """The titles' font: matplotlib's default, falling back to a CJK font for texts with CJK characters."""
    if not _has_cjk("".join(texts)) or cjk_font() is None:
        return {}
    from matplotlib import rcParams

    return {"fontfamily": [*rcParams["font.family"], cjk_font()]}


def draw_grid(path: Path, title: str, panels: list[tuple[np.ndarray, str, str | None]]) -> Path:
    """The query and its answers in one row (PNG): each picture with its title and, where it is
    known whether an answer is right, a frame of that colour."""
    import io
    import warnings

    from matplotlib.figure import Figure

    texts = [title, *(text for _, text, _ in panels)]
    font, boxes = _title_font(texts), _has_cjk("".join(texts)) and cjk_font() is None
    figure = Figure(figsize=(1.6 * len(panels), 2.1))
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.78, wspace=0.12)  # drawn once: no tight bbox
    for axis, (picture, text, colour) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
        axis.set_title(text, fontsize=7, color=colour or "black", **font)
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_visible(colour is not None)
            spine.set(edgecolor=colour or "black", linewidth=3)
    figure.suptitle(title[-80:], fontsize=7, y=0.99, **font)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        if boxes:  # no CJK font installed: the glyphs are boxes, which cjk_font said once
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as error:
        raise SearchError(f"cannot write the retrieval grid {path} ({error.strerror or error}); "
                          f"give --grid a file in a folder you can write") from None
    return path
