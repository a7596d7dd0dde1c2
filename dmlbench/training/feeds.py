"""How images reach the model: training batches and the embedding of a whole split.

Two feeds with one interface (``epoch()`` yields normalised (B, C, H, W) batches and their labels on
the device; ``embed(model, split)`` returns the split's (N, D) embeddings on the device):

- :class:`TensorFeed`, for small in-memory datasets (Fashion-MNIST): the whole split is normalised
  once and kept on the device; a batch is an index into it.
- :class:`PhotoFeed`, for the real benchmarks: a torch DataLoader reads the decoded image cache in
  worker processes, crops and flips in uint8 (train) or resizes and centre-crops (evaluation),
  hands pinned uint8 batches over (a quarter of the bytes of float32), and the device converts and
  normalises them. Every training image draws its augmentation from its own seed, taken from a
  generator seeded by the run's seed, so the numbers do not depend on how many workers there are.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..datasets.base import DEFAULT_IMAGE_SIZE
from ..datasets.transforms import eval_transform, normalize_batch, train_transform
from .distributed import shard

MAX_AUTO_WORKERS = 12


def image_tensor(images: np.ndarray, mean: float, std: float, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) -> normalised float (N, C, H, W), channels-last, on device."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.ndim == 3:
        x = x[:, None]
    x = ((x.float() / 255.0 - mean) / std).to(device)
    return x.contiguous(memory_format=torch.channels_last)


def native_bf16_cpu() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX): there bf16 autocast speeds a step up;
    elsewhere oneDNN emulates it, slower than fp32."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(check is None for check in checks):  # a torch without the probes: read the CPU's flags
        try:
            flags = open("/proc/cpuinfo", encoding="ascii", errors="replace").read()
        except OSError:
            return False
        return " avx512_bf16" in flags or " amx_bf16" in flags
    return any(check() for check in checks if check is not None)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype the network's forward pass autocasts to, None for fp32 (``precision``: RunConfig.precision).

    "auto": bf16 on CUDA (fp16 where the GPU has no bf16) and on a CPU with native bf16, none elsewhere."""
    from ..errors import ConfigError

    if precision == "fp32":
        return None
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if precision == "bf16" and not bf16:
            raise ConfigError(f"precision 'bf16': {torch.cuda.get_device_name(device)} has no bf16; "
                              f"use precision 'fp16', 'fp32' or 'auto'")
        return torch.float16 if precision == "fp16" or (precision == "auto" and not bf16) else torch.bfloat16
    if precision == "fp16":
        raise ConfigError("precision 'fp16' needs CUDA (a gradient scaler, fp16 kernels); on the CPU use "
                          "'bf16', 'fp32' or 'auto'")
    if precision == "bf16" or (precision == "auto" and device.type == "cpu" and native_bf16_cpu()):
        return torch.bfloat16
    return None


def precision_name(amp: torch.dtype | None) -> str:
    """What a run records of the arithmetic it trained in: "fp32", "bf16" or "fp16" (autocast)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


def forward_embed(model: torch.nn.Module, batches, device: torch.device, precision: str = "auto") -> torch.Tensor:
    """Eval-mode embeddings of an iterable of normalised batches -> (N, D) float32 on device, the forward
    pass autocast as the run trained (``precision``: RunConfig.precision)."""
    was_training = model.training
    model.eval()
    amp = autocast_dtype(device, precision)
    out = []
    with torch.no_grad():
        for x in batches:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out.append(model(x).float())
    model.train(was_training)
    return torch.cat(out)


class TensorFeed:
    """In-memory uint8 images, normalised once with the dataset's mean and std and kept on the device."""

    def __init__(self, splits, train_labels: np.ndarray, sampler, device: torch.device, eval_batch_size: int,
                 world: tuple[int, int] = (0, 1), augment: dict | None = None, seed: int = 0, precision: str = "auto"):
        from .augment import Augmenter

        self.mean, self.std, self.device, self.batch_size = splits.mean, splits.std, device, eval_batch_size
        self.precision = precision
        self.sampler, self.world = sampler, world
        self.augmenter = Augmenter(augment, seed) if augment else None
        self.train_x = image_tensor(splits.train.images, self.mean, self.std, device)
        self.train_y = torch.from_numpy(train_labels.astype(np.int64)).to(device)
        self._tensors: dict[int, torch.Tensor] = {}

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.sampler:
            idx = torch.tensor(shard(batch, *self.world), device=self.device)
            images = self.train_x[idx]
            yield (images if self.augmenter is None else self.augmenter(images)), self.train_y[idx]

    def state_dict(self) -> dict:
        # the sampler's randomness is saved with the sampler; the augmenter's here
        return {} if self.augmenter is None else {"augmenter": self.augmenter.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.augmenter is not None and "augmenter" in state:
            self.augmenter.load_state_dict(state["augmenter"])

    def embed(self, model: torch.nn.Module, split) -> torch.Tensor:
        key = id(split)
        if key not in self._tensors:  # validation is embedded every epoch: normalise it once
            self._tensors[key] = image_tensor(split.images, self.mean, self.std, self.device)
        x = self._tensors[key]
        return forward_embed(model, (x[s:s + self.batch_size] for s in range(0, len(x), self.batch_size)), self.device,
                             self.precision)


class _TrainPhotos(Dataset):
    """Item ``(i, seed)``: image i of the split, randomly cropped and flipped with ``seed``; uint8."""

    def __init__(self, split, labels: np.ndarray, transform):
        self.cache, self.rows, self.labels, self.transform = split.cache, split.rows, labels, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, seed = item
        # The transforms draw from the CPU generator: seed it for this image, and leave the caller's
        # random state (num_workers = 0) as it was. CUDA's generator is never touched.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            image = self.transform(self.cache[int(self.rows[i])])
        return image, int(self.labels[i])


class _EvalPhotos(Dataset):
    def __init__(self, split, transform):
        self.cache, self.rows, self.transform = split.cache, split.rows, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.cache[int(self.rows[i])])


class SeededBatches:
    """A batch sampler's batches, each index paired with the seed of its augmentation. Under
    torch.distributed every rank draws the seeds of the whole batch and keeps its own share, so the
    images are augmented as in a one-process run."""

    def __init__(self, sampler, seed: int, world: tuple[int, int] = (0, 1)):
        self.sampler, self.world = sampler, world
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.sampler:
            seeds = torch.randint(0, 2**62, (len(batch),), generator=self.generator).tolist()
            yield shard(list(zip((int(i) for i in batch), seeds)), *self.world)


def available_cores() -> int:
    """The cores this process may use: a Slurm job's allocation (its CPU affinity), not the node's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform (macOS)
        return os.cpu_count() or 2


def auto_workers(device: torch.device) -> int:
    """Loader processes when the run does not say: all cores but one for a GPU (up to 12); none on a
    CPU, where the model's own threads already use every core."""
    if device.type != "cuda":
        return 0
    return max(1, min(MAX_AUTO_WORKERS, available_cores() - 1))


class PhotoFeed:
    """Real benchmark images from the decoded cache, through DataLoader workers."""

    def __init__(self, splits, train_labels: np.ndarray, sampler, device: torch.device, *, image_size: int | None,
                 num_workers: int | None, eval_batch_size: int, seed: int, mean=None, std=None,
                 world: tuple[int, int] = (0, 1), precision: str = "auto"):
        self.device, self.batch_size, self.precision = device, eval_batch_size, precision
        self.mean = tuple(mean if mean is not None else splits.mean)
        self.std = tuple(std if std is not None else splits.std)
        self.size = image_size or DEFAULT_IMAGE_SIZE
        self.workers = auto_workers(device) if num_workers is None else num_workers
        self.pin = device.type == "cuda"
        dataset = _TrainPhotos(splits.train, train_labels, train_transform(self.size, normalize=False))
        self.seeds = SeededBatches(sampler, seed, world)
        self.loader = DataLoader(dataset, batch_sampler=self.seeds, num_workers=self.workers,
                                 pin_memory=self.pin, persistent_workers=self.workers > 0,
                                 prefetch_factor=4 if self.workers > 0 else None)
        self.eval_transform = eval_transform(self.size, normalize=False)
        self._eval_loaders: dict[int, DataLoader] = {}

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_batch(images.to(self.device, non_blocking=self.pin), self.mean, self.std)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            yield self._to_device(images), labels.to(self.device, non_blocking=self.pin)

    def state_dict(self) -> dict:
        # Taken between epochs, when the loader has drawn the whole epoch's batches (never beyond it)
        return {"seeds": self.seeds.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.seeds.generator.set_state(state["seeds"])

    def embed(self, model: torch.nn.Module, split) -> torch.Tensor:
        key = id(split)
        if key not in self._eval_loaders:  # validation is embedded every epoch: keep its workers
            self._eval_loaders[key] = DataLoader(
                _EvalPhotos(split, self.eval_transform), batch_size=self.batch_size, shuffle=False,
                num_workers=self.workers, pin_memory=self.pin, persistent_workers=self.workers > 0)
        return forward_embed(model, (self._to_device(x) for x in self._eval_loaders[key]), self.device, self.precision)


def make_feed(config, splits, train_labels: np.ndarray, sampler, device: torch.device, mean=None, std=None,
              world: tuple[int, int] = (0, 1)):
    """The feed that suits the dataset: PhotoFeed for image caches, TensorFeed for in-memory arrays.
    ``world`` = (rank, processes): under torch.distributed each rank trains on its share of every batch."""
    from ..datasets.benchmarks import PhotoSet

    if isinstance(splits.train, PhotoSet):
        return PhotoFeed(splits, train_labels, sampler, device, image_size=config.image_size,
                         num_workers=config.num_workers, eval_batch_size=config.eval_batch_size, seed=config.seed,
                         mean=mean, std=std, world=world, precision=config.precision)
    return TensorFeed(splits, train_labels, sampler, device, config.eval_batch_size, world,
                      augment=getattr(config, "augment", None), seed=config.seed, precision=config.precision)
