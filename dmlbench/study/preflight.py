"""Checks of a run's settings against its dataset and this machine, made before anything runs.

``RunConfig.validate`` checks each setting on its own: types, names, ranges, the components'
arguments. What it cannot see is whether the settings fit the data and the machine the run meets:

- the batch sampler against the training split. The pk and hierarchical samplers draw P distinct
  classes per batch and K images of each, so P cannot exceed the split's classes, nor K its largest
  class (beyond it every class's K images repeat); the random sampler's batch of P x K images
  cannot exceed the split; the hierarchical sampler needs super-class labels (SOP, In-Shop);
- the device: "cuda" needs a CUDA device that torch sees, and processes > 1 on CUDA one GPU each;
- the memory of one training step against the device's: the batch of images, the network's
  activations (counted by running the network once on the meta device, which allocates nothing)
  and the (B, B) distances and masks, and all-triplet indices, of its loss and miner. The estimate
  is a floor (gradients, weights and the optimiser's state come on top), so a refused run could
  not have trained.

The training split is read without decoding an image: Fashion-MNIST's train label file, a
benchmark's label lists (its layout's text files), or, when a benchmark's files are absent, its
published class count. A run given a data_root must find its dataset's files there (the folder
and the files expected are named); elsewhere a check that needs absent data is left to the run,
whose own error names what is missing, and the other checks are made all the same. A study's
``indexes:`` block is checked against its cells' embedding size and test split's item count.

    check_run(config)             # one run, before its folder is created (study.run_config)
    check_study_data(study)       # every cell, when a study file is loaded (study.load_study): the data
                                  # files and the sampler
    check_study_indexes(study)    # the indexes block, before a study's cells run ('dmlbench study') or
                                  # its indexes are measured ('dmlbench indexes')
    check_study_machine(study)    # the unfinished cells, before they run on this machine (dmlbench study)

Each failure is one ConfigError line naming the setting, its value, why, and the valid range.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..datasets.base import DatasetFacts, dataset_fact
from ..datasets.benchmarks import PHOTO_DATASETS, VALIDATION_FRACTION, VALIDATION_SEED, locate_layout
from ..datasets.fashion_mnist import TRAIN_CLASSES as FASHION_MNIST_TRAIN_CLASSES
from ..datasets.fashion_mnist import locate as locate_fashion_mnist
from ..datasets.idx import read_idx
from ..datasets.layouts import LayoutError, read_layout
from ..errors import ConfigError, DatasetNotFoundError
from ..losses import LOSSES
from ..miners import MINERS
from ..models import MODELS
from ..paths import data_root_folder

# The datasets' facts are their classes' (dmlbench/datasets/<name>.py): num_classes[0] is the published
# train classes, before the validation classes are carved out of them (docs/protocol.md, Splits),
# what P is checked against when a benchmark's files are absent; super_labels, whether the images carry
# super-class labels; channels and default_image_size, the (C, H, W) of an image.
PUBLISHED_CLASSES = DatasetFacts("num_classes")
CLASS_SAMPLERS = ("pk", "hierarchical")  # samplers that draw P classes x K images
PAIR_BYTES = 4 + 1 + 1  # per (i, j) of the batch: a float32 distance, a positive and a negative mask entry
TRIPLET_BYTES = 3 * 8  # per triplet: three int64 indices


@dataclass(frozen=True)
class TrainingSplit:
    """What the batch samplers meet in a dataset's training split."""

    dataset: str
    classes: int
    images: int | None = None  # None: not known without the dataset's files
    largest_class: int | None = None  # images of the largest class; None: not known without the files
    super_labels: bool = False  # the images carry super-class labels (hierarchical batches)
    source: str = ""  # where the counts come from

    @classmethod
    def of_labels(cls, dataset: str, labels, *, super_labels: bool, source: str) -> "TrainingSplit":
        counts = np.unique(np.asarray(labels), return_counts=True)[1]
        return cls(dataset, len(counts), int(counts.sum()), int(counts.max()) if len(counts) else 0, super_labels,
                   source)

    @classmethod
    def of_split(cls, dataset: str, split) -> "TrainingSplit":
        """From a loaded training split (an ImageSet or PhotoSet)."""
        return cls.of_labels(dataset, split.labels, super_labels=getattr(split, "super_labels", None) is not None,
                             source="its labels")


def _data_root(data_root: str | None) -> Path | None:
    return None if data_root is None else data_root_folder(data_root)


def _file_stamp(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _lists_stamp(folder: Path) -> tuple:
    """The stamps of a layout's list files (its folder's and Eval/'s): a cache key that changes with them."""
    return tuple(_file_stamp(f) for sub in (folder, folder / "Eval") if sub.is_dir()
                 for f in sorted(sub.iterdir()) if f.is_file())


@functools.lru_cache(maxsize=16)
def _fashion_mnist_split(labels_file: str, size: int, mtime_ns: int) -> TrainingSplit:
    labels = read_idx(labels_file)
    labels = labels[np.isin(labels, FASHION_MNIST_TRAIN_CLASSES)]
    return TrainingSplit.of_labels("fashion-mnist", labels, super_labels=False,
                                   source=f"labels of {Path(labels_file).name}")


@functools.lru_cache(maxsize=16)
def _layout_split(dataset: str, folder: str, stamp: tuple) -> TrainingSplit:
    train = read_layout(dataset, Path(folder), val_fraction=VALIDATION_FRACTION, seed=VALIDATION_SEED).train
    return TrainingSplit.of_labels(dataset, train.labels, super_labels=train.super_labels is not None,
                                   source=f"label lists in {folder}")


def _published_split(dataset: str) -> TrainingSplit | None:
    """The class count of a benchmark's training split from its published train classes, less the
    validation classes carved out of them as dmlbench.datasets.layouts.carve_validation does; None
    where its class publishes none."""
    if dataset not in PUBLISHED_CLASSES:
        return None
    train_classes = PUBLISHED_CLASSES[dataset][0]
    validation = min(max(1, round(VALIDATION_FRACTION * train_classes)), train_classes - 1)
    return TrainingSplit(dataset, train_classes - validation, super_labels=dataset_fact(dataset, "super_labels", False),
                         source="published split")


def super_class_datasets() -> list[str]:
    """The registered datasets whose images carry super-class labels (SOP, In-Shop)."""
    return [name for name, has in DatasetFacts("super_labels").items() if has]


def training_split(dataset: str, data_root: str | None = None) -> TrainingSplit | None:
    """The training split's counts, read without decoding an image (and never downloading); None
    when they cannot be known without the dataset's files, which are absent."""
    root = _data_root(data_root)
    if dataset == "fashion-mnist":
        try:
            paths, _ = locate_fashion_mnist(root, allow_download=False)
        except DatasetNotFoundError:
            return None
        return _fashion_mnist_split(*_file_stamp(paths["train_labels"]))
    if dataset in PHOTO_DATASETS:
        try:
            folder, _ = locate_layout(dataset, root)
        except LayoutError:
            return _published_split(dataset)
        try:
            return _layout_split(dataset, str(folder.resolve()), _lists_stamp(folder))
        except (LayoutError, ValueError):  # a damaged layout: the run's loader names the file
            return _published_split(dataset)
    return None  # a dataset of the user's own: nothing is known of it before it loads


def check_data_files(config: RunConfig) -> None:
    """A run given a data_root finds its dataset's files there: otherwise it would start a kernel, and
    leave a failed run folder behind, only to fail on the first read. One ConfigError line names the
    folder and the files expected. (Without a data_root the usual places are searched, and
    Fashion-MNIST may be downloaded: that is the run's to do.)"""
    if config.data_root is None or not isinstance(config.data_root, str):
        return
    root = _data_root(config.data_root)
    if config.dataset == "fashion-mnist":
        from ..datasets.fashion_mnist import FILES

        try:
            locate_fashion_mnist(root, allow_download=False)
        except DatasetNotFoundError:
            expected = ", ".join(f"{stem}(.gz)" for stem in FILES.values())
            raise ConfigError(f"data_root {config.data_root!r}: no Fashion-MNIST files in {root} or "
                              f"{root / 'fashion-mnist'}; expected the four files {expected} (from "
                              f"https://github.com/zalandoresearch/fashion-mnist), or leave data_root unset to "
                              f"search $DMLBENCH_DATA and the usual places") from None
    elif config.dataset in PHOTO_DATASETS:
        from ..datasets.benchmarks import checked_layout

        try:  # the run's own check: the lists there, their counts, every listed image on disk
            checked_layout(config.dataset, root, subset=bool(config.data_subset))
        except LayoutError as error:
            raise ConfigError(f"data_root {config.data_root!r}: {error}") from None
    elif config.dataset == "han-typefaces":
        raise ConfigError(f"data_root {config.data_root!r}: han-typefaces is rendered from installed font packages, "
                          f"not read from a folder; leave data_root unset")


def check_sampler(config: RunConfig, split: TrainingSplit | None) -> None:
    """The batch sampler's needs against the training split (None: unknown, only what needs no data)."""
    sampler, P, K = config.sampler_name, config.P, config.K
    if sampler == "hierarchical" and "super_per_batch" in (config.sampler_kwargs or {}):
        value = config.sampler_kwargs["super_per_batch"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"sampler_kwargs: super_per_batch={value!r}: the hierarchical sampler draws that many "
                              f"super-classes per batch; valid range: a whole number >= 1")
    if split is None:
        return
    where = f"the training split of {split.dataset}"
    if sampler == "hierarchical" and not split.super_labels:
        raise ConfigError(f"sampler='hierarchical' draws each batch from a few super-classes, and {split.dataset} has "
                          f"no super-class labels (only {' and '.join(super_class_datasets())} have); valid samplers "
                          f"for {split.dataset}: pk, random")
    if sampler in CLASS_SAMPLERS:
        if P > split.classes:
            raise ConfigError(f"P={P}: the {sampler} sampler draws P distinct classes per batch, but {where} has "
                              f"{split.classes} classes ({split.source}); valid range: 1 <= P <= {split.classes}")
        if split.largest_class is not None and K > split.largest_class:
            raise ConfigError(f"K={K}: the {sampler} sampler takes K images of each class, but no class of {where} "
                              f"has more than {split.largest_class} images ({split.source}), so every batch would "
                              f"repeat images; valid range: 1 <= K <= {split.largest_class}")
    if sampler == "random" and split.images is not None and P * K > split.images:
        raise ConfigError(f"P x K = {P * K} (P={P}, K={K}): the random sampler cuts each pass into batches of P x K "
                          f"images, but {where} has {split.images} images; valid range: P x K <= {split.images}")


def check_device(config: RunConfig) -> str:
    """The kind of device the run trains on ("cpu" or "cuda"); ConfigError when it is not here."""
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        why = "a build without CUDA" if torch.version.cuda is None else "no GPU visible"
        raise ConfigError(f"device='cuda': torch {torch.__version__} sees no CUDA device on this machine ({why}); "
                          f"valid choices here: auto (the CPU here), cpu")
    kind = "cuda" if config.device == "cuda" or (config.device == "auto" and cuda) else "cpu"
    processes = config.processes or 1
    if kind == "cuda" and processes > torch.cuda.device_count():
        gpus = torch.cuda.device_count()
        raise ConfigError(f"processes={processes}: a run trains with one process per GPU on CUDA, and this machine "
                          f"has {gpus} GPU(s); valid range here: 1 <= processes <= {gpus}, or device='cpu'")
    return kind


def image_shape(config: RunConfig) -> tuple[int, int, int] | None:
    """(C, H, W) of a training image as the network gets it (the dataset class's channels and
    default_image_size, or the run's image_size for a photo dataset); None for a dataset of the user's own."""
    size = config.image_size if config.dataset in PHOTO_DATASETS else None
    size = size or dataset_fact(config.dataset, "default_image_size")
    if size is None:
        return None
    return dataset_fact(config.dataset, "channels", 3), size, size


@functools.lru_cache(maxsize=32)
def activation_bytes(model: str, model_kwargs: str, embedding_dim: int, shape: tuple[int, ...],
                     element_size: int) -> int:
    """Bytes of the activations one image leaves for the backward pass: the output of every leaf
    module (in-place ones and views not counted again), from one forward pass on the meta device,
    which allocates nothing. ``model_kwargs`` is JSON. 0 when the network cannot run that way.

    That pass imports torch's decompositions (over a second, in every study cell's notebook), so its
    count is kept in the cache folder under the network's identity (its version and source digest)."""
    from ..datasets.base import cache_dir
    from ..fileio import atomic_write_text

    key = json.dumps([MODELS.identity(model), model, model_kwargs, embedding_dim, list(shape)])
    store = cache_dir() / "preflight" / f"activations-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"
    try:
        saved = json.loads(store.read_text())
        if saved.get("key") == key and isinstance(saved.get("elements"), int):
            return saved["elements"] * element_size
    except (OSError, ValueError, AttributeError):  # absent or unreadable: counted again and rewritten
        pass
    elements = _activation_elements(model, model_kwargs, embedding_dim, shape)
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(store, json.dumps({"key": key, "elements": elements}))
    except OSError:  # a read-only cache: the count is made again next time
        pass
    return elements * element_size


def _activation_elements(model: str, model_kwargs: str, embedding_dim: int, shape: tuple[int, ...]) -> int:
    """The element count behind :func:`activation_bytes`, from the meta-device forward pass."""
    kwargs = json.loads(model_kwargs) | {"embedding_dim": embedding_dim}
    count = 0

    def add_output(module, inputs, output) -> None:
        nonlocal count
        if getattr(module, "inplace", False):
            return
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor) and not tensor._is_view():
                count += tensor.numel()

    try:
        parameters = inspect.signature(MODELS.get(model).__init__).parameters
        if "pretrained" in parameters:  # the architecture is what counts, not the weights
            kwargs["pretrained"] = False
        with torch.device("meta"):
            network = MODELS.create(model, **kwargs)
        hooks = [m.register_forward_hook(add_output) for m in network.modules() if next(m.children(), None) is None]
        with torch.no_grad():
            network.train()(torch.empty((1, *shape), device="meta"))
        for hook in hooks:
            hook.remove()
    except Exception:  # noqa: BLE001 (a network the meta device cannot run: its activations go uncounted)
        return 0
    return count


def _activation_element_size(config: RunConfig, device: str) -> int:
    """2 bytes where the forward pass autocasts to bf16 or fp16 (RunConfig.precision on ``device``), else 4."""
    from ..training.feeds import autocast_dtype

    try:
        return 4 if autocast_dtype(torch.device(device), config.precision) is None else 2
    except ConfigError:  # a precision this device cannot run fails where training starts, naming the choices
        return 4


def step_memory(config: RunConfig, device: str, batch: int | None = None) -> dict[str, int]:
    """The bytes of one training step of ``batch`` images (default P x K), by part; per process
    where processes share the batch (the distances are over the whole, gathered batch)."""
    batch = batch or config.P * config.K
    share = math.ceil(batch / (config.processes or 1))
    parts: dict[str, int] = {}
    shape = image_shape(config)
    if shape is not None:
        parts["input images"] = share * math.prod(shape) * 4  # float32, normalised
        per_image = activation_bytes(config.model, json.dumps(config.model_kwargs, sort_keys=True, default=str),
                                     config.embedding_dim, shape, _activation_element_size(config, device))
        if per_image:
            parts["network activations"] = share * per_image
    consumes = LOSSES.get(config.loss).consumes
    all_tuples = MINERS.get(config.miner).registry_name == "none"
    if consumes != "batch" or not all_tuples:  # pair and triplet losses, and every miner, work on (B, B)
        parts[f"{batch} x {batch} distances and masks"] = PAIR_BYTES * batch * batch
    if consumes == "triplets" and all_tuples and config.sampler_name in CLASS_SAMPLERS:
        k = min(config.K, batch)  # each anchor: k - 1 positives, batch - k negatives
        parts["all triplets"] = TRIPLET_BYTES * batch * (k - 1) * (batch - k)
    return parts


def format_bytes(size: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.3g} {unit}"
        size /= 1000
    return f"{size:.3g} PB"  # not reached


def device_memory(device: str, processes: int | None = None) -> tuple[int, str]:
    """(bytes, words) of the memory one process of a run on ``device`` may use: the smallest of its
    GPUs (total, read without creating a CUDA context), or the RAM of this machine or its cgroup."""
    if device == "cuda":
        sizes = [torch.cuda.get_device_properties(i).total_memory for i in range(max(1, processes or 1))]
        return min(sizes), f"{format_bytes(min(sizes))} of GPU memory ({torch.cuda.get_device_name(0)})"
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = min(limit, int(text))
    return limit, f"{format_bytes(limit)} of RAM"


def largest_batch(config: RunConfig, device: str, limit: int) -> int:
    """The largest batch (images per step) whose step_memory fits in ``limit`` bytes; 0 if none."""
    low, high = 0, config.P * config.K
    while low < high:
        middle = (low + high + 1) // 2
        if sum(step_memory(config, device, middle).values()) <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def check_memory(config: RunConfig, device: str) -> None:
    """One training step's memory (a floor) against the device's."""
    parts = step_memory(config, device)
    need = sum(parts.values())
    limit, what = device_memory(device, config.processes)
    if need <= limit:
        return
    fits = largest_batch(config, device, limit)
    valid = (f"P x K <= {fits} with this network and image size" if fits
             else "none: not even one image fits; use a smaller network or image_size")
    detail = ", ".join(f"{name} {format_bytes(size)}" for name, size in parts.items())
    raise ConfigError(f"P x K = {config.P * config.K} (P={config.P}, K={config.K}): one training step needs at least "
                      f"{format_bytes(need)} on {device} ({detail}), more than this machine's {what}; "
                      f"valid range here: {valid}")


def check_machine(config: RunConfig) -> None:
    """The run's device, and its training step's memory, on this machine."""
    check_memory(config, check_device(config))


def check_run(config: RunConfig, splits=None) -> None:
    """Every check of one run against its data (``splits``: already loaded; else read cheaply) and
    this machine. Made before the run's folder is created, and again in the experiment notebook."""
    if splits is None:
        check_data_files(config)
    split = (TrainingSplit.of_split(config.dataset, splits.train) if splits is not None
             else training_split(config.dataset, config.data_root))
    check_sampler(config, split)
    check_machine(config)


def _in_cell(study, config: RunConfig, error: ConfigError) -> ConfigError:
    return ConfigError(f"{study.path}: cell {config.dataset} x {config.loss} x {config.miner} x seed {config.seed}: "
                       f"{error}")


def check_study_data(study) -> None:
    """Every cell's data files and batch sampler against its dataset's training split."""
    seen: set[str] = set()
    for cell in study.cells:
        config = cell.config
        key = json.dumps([config.dataset, config.data_root, config.sampler_name, config.sampler_kwargs, config.P,
                          config.K], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            check_data_files(config)
            check_sampler(config, training_split(config.dataset, config.data_root))
        except ConfigError as error:
            raise _in_cell(study, config, error) from None


@functools.lru_cache(maxsize=16)
def _fashion_mnist_test_items(labels_file: str, size: int, mtime_ns: int) -> int:
    from ..datasets.fashion_mnist import TEST_CLASSES

    return int(np.isin(read_idx(labels_file), TEST_CLASSES).sum())


@functools.lru_cache(maxsize=16)
def _layout_items(dataset: str, folder: str, stamp: tuple) -> int:
    layout = read_layout(dataset, Path(folder), val_fraction=VALIDATION_FRACTION, seed=VALIDATION_SEED)
    return len(layout.gallery if layout.gallery is not None else layout.test)


def index_items(config: RunConfig) -> tuple[int, str] | None:
    """(items, where the count comes from) of the index a study's ``indexes:`` block builds over a run of
    ``config``: its test images, or In-Shop's gallery; read without decoding an image. None where it
    cannot be known before the data is loaded (han-typefaces is rendered, a dataset of the user's own)."""
    root = _data_root(config.data_root)
    if config.dataset == "fashion-mnist":
        try:
            paths, _ = locate_fashion_mnist(root, allow_download=False)
        except DatasetNotFoundError:
            return None
        return _fashion_mnist_test_items(*_file_stamp(paths["test_labels"])), f"labels of {paths['test_labels'].name}"
    if config.dataset in PHOTO_DATASETS:
        try:
            folder, _ = locate_layout(config.dataset, root)
            return _layout_items(config.dataset, str(folder.resolve()), _lists_stamp(folder)), f"label lists in {folder}"
        except (LayoutError, ValueError):
            counts = dataset_fact(config.dataset, "counts")
            return (counts.gallery or counts.test, "published split") if counts is not None else None
    return None


def check_study_indexes(study) -> None:
    """A study's ``indexes:`` block against each cell's embedding size and its test split's items (the
    families' own rules: dmlbench.evaluation.indexes.families.check_spec), before any cell trains:
    otherwise a bad block fails, or records a meaningless recall, only after every cell has run."""
    from ..evaluation.indexes.families import check_spec

    plan = getattr(study, "indexes", None)
    if plan is None:
        return
    seen: set[str] = set()
    for cell in study.cells:
        config = cell.config
        key = json.dumps([config.dataset, config.data_root, config.data_subset, config.embedding_dim], default=str)
        if key in seen:
            continue
        seen.add(key)
        items = index_items(config)
        for position, spec in enumerate(plan.specs):
            if spec.family == "aesa" and not plan.families_given:  # the defaults leave it out where too large
                continue
            try:
                check_spec(spec, None if items is None else items[0], config.embedding_dim)
            except ConfigError as error:
                over = (f"{items[0]} items ({items[1]})" if items is not None else "items of unknown count")
                raise ConfigError(f"{study.path}: indexes: families[{position}]: {error} (the {config.dataset} runs' "
                                  f"{config.embedding_dim}-dimensional embeddings, {over})") from None


def check_study_machine(study) -> None:
    """The device and memory of every unfinished cell, on this machine, where they are about to run."""
    for cell in study.cells:
        if cell.is_done():
            continue
        try:
            check_machine(cell.config)
        except ConfigError as error:
            raise _in_cell(study, cell.config, error) from None
