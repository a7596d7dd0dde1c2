"""Training throughput: is the data pipeline or the model the bottleneck?

Three measurements in one process, in images per second, on synthetic CUB-sized data (by default
5,994 training images of 100 classes, stored like a prepared benchmark: a decoded cache whose
images have a shorter side of 256 pixels and CUB's typical 4:3 aspect):

- ``data``: the training feed alone (dmlbench.training.feeds.PhotoFeed: cache reads, random resized crops
  and flips in loader workers, pinned uint8 batches copied to the device and normalised there);
- ``model``: the optimisation step alone (dmlbench.training.loop.optimisation_step: forward under bf16
  autocast on CUDA, loss and miner in fp32, backward, optimiser) on one batch already on the device;
- ``full``: the two together, as dmlbench.training.loop runs them.

``full / model`` near 1 means the GPU sets the pace; the printed table says which side limits.

    python -m dmlbench bench train                                  # ResNet-50, 224 px, batch 112, on CUDA if present
    python -m dmlbench bench train --model resnet18 --image-size 64 --batch 32 --device cpu
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .timing import load_note, load_record, load_span, machine_line, save_table, synchronize

CUB_TRAIN_IMAGES, CUB_TRAIN_CLASSES = 5994, 100


def synthetic_cache(folder: Path, images: int, classes: int, shorter_side: int, seed: int = 0):
    """A decoded image cache of ``images`` random-noise pictures (shorter side ``shorter_side``,
    landscape 4:3 or portrait 3:4), ``classes`` classes in turn."""
    from ..datasets.image_cache import write_cache
    from ..datasets.layouts import ImageList

    rng = np.random.default_rng(seed)
    long_side = round(shorter_side * 4 / 3)
    base = rng.integers(0, 256, size=(long_side, long_side, 3), dtype=np.uint8)

    def pixels():
        for i in range(images):
            h, w = (shorter_side, long_side) if i % 2 == 0 else (long_side, shorter_side)
            y, x = int(rng.integers(0, long_side - h + 1)), int(rng.integers(0, long_side - w + 1))
            yield base[y:y + h, x:x + w]

    listing = ImageList([f"synthetic/{i:06d}.jpg" for i in range(images)], np.arange(images, dtype=np.int64) % classes)
    return write_cache(folder, pixels(), listing, shorter_side=shorter_side)


def _rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("nan")


def _synthetic_feed(cache, images: int, P: int, K: int, batches: int, device: torch.device, image_size: int,
                    workers: int | None):
    """The training feed (PhotoFeed) over the synthetic cache: ``batches`` PK batches an epoch."""
    from ..datasets.base import Splits
    from ..datasets.benchmarks import PhotoSet
    from ..samplers import SAMPLERS
    from ..training.feeds import PhotoFeed

    labels = cache.labels.astype(np.int64)
    train = PhotoSet(cache, np.arange(images), labels)
    splits = Splits("synthetic-cub", train, train, train, {}, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    sampler = SAMPLERS.create("pk", labels=labels, P=P, K=K, batches_per_epoch=batches,
                              generator=torch.Generator().manual_seed(0))
    return PhotoFeed(splits, labels, sampler, device, image_size=image_size, num_workers=workers,
                     eval_batch_size=256, seed=0)


def _optimisation_step(model_name: str, loss: str, miner: str, classes: int, device: torch.device,
                       torch_compile: bool):
    """(step, amp): ``step(x, y)`` is training's optimisation step for a seeded network and criterion."""
    from ..criterion import build_criterion
    from ..models import MODELS
    from ..training.feeds import autocast_dtype
    from ..training.loop import make_optimizer, optimisation_step

    torch.manual_seed(0)
    model = MODELS.create(model_name, embedding_dim=128).to(device, memory_format=torch.channels_last)
    forward = torch.compile(model) if torch_compile else model
    criterion = build_criterion(loss, miner, {}, {}, seed=0, num_classes=classes, embedding_dim=128).to(device)
    params = [{"params": list(model.parameters())}] + criterion.param_groups(1e-5)
    optimizer = make_optimizer("adam", params, 1e-5, 4e-4)
    amp = autocast_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    return (lambda x, y: optimisation_step(forward, criterion, optimizer, scaler, x, y, amp)), amp


def _timed(batches, work, warmup: int, device: torch.device) -> float:
    """Seconds for the batches after the warm-up ones."""
    start = None
    for i, item in enumerate(batches):
        if i == warmup:
            synchronize(device)
            start = time.perf_counter()
        work(*item)
    synchronize(device)
    return time.perf_counter() - start


def _throughput_table(seconds: dict[str, float], steps: int, batch: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """The three measurements' images per second and milliseconds per batch, and the rates."""
    rates = {part: _rate(steps * batch, seconds[part]) for part in ("data", "model", "full")}
    table = pd.DataFrame([
        {"part": "data pipeline alone", "images_per_s": rates["data"], "ms_per_batch": 1e3 * seconds["data"] / steps},
        {"part": "model step alone", "images_per_s": rates["model"], "ms_per_batch": 1e3 * seconds["model"] / steps},
        {"part": "full step", "images_per_s": rates["full"], "ms_per_batch": 1e3 * seconds["full"] / steps},
    ])
    table["of_model_step"] = table["images_per_s"] / rates["model"]
    return table.round({"images_per_s": 1, "ms_per_batch": 1, "of_model_step": 3}), rates


def bench(*, model_name: str, image_size: int, P: int, K: int, images: int, classes: int, steps: int, warmup: int,
          device: torch.device, workers: int | None, loss: str, miner: str, torch_compile: bool,
          folder: Path) -> tuple[pd.DataFrame, dict]:
    from ..config import RunConfig
    from ..datasets.benchmarks import cache_side

    config = RunConfig(dataset="cub", model=model_name, embedding_dim=128, loss=loss, miner=miner, P=P, K=K,
                       image_size=image_size, num_workers=workers, torch_compile=torch_compile, optimizer="adam",
                       lr=1e-5, weight_decay=4e-4)
    config.validate()
    started = time.perf_counter()
    cache = synthetic_cache(folder, images, classes, cache_side(image_size))
    build_s = time.perf_counter() - started
    feed = _synthetic_feed(cache, images, P, K, warmup + steps, device, image_size, workers)
    step, amp = _optimisation_step(model_name, loss, miner, classes, device, torch_compile)

    seconds = {
        # (a) data alone: every batch reaches the device, normalised, and nothing else happens
        "data": _timed(feed.epoch(), lambda x, y: None, warmup, device),
    }
    # (b) the step alone, on one batch resident on the device
    x, y = next(iter(feed.epoch()))
    seconds["model"] = _timed(((x, y) for _ in range(warmup + steps)), step, warmup, device)
    # (c) both, as training runs them
    seconds["full"] = _timed(feed.epoch(), step, warmup, device)

    table, rates = _throughput_table(seconds, steps, P * K)
    for key, value in (("model", model_name), ("image_size", image_size), ("batch", f"{P}x{K}"),
                       ("workers", feed.workers), ("torch_compile", torch_compile)):
        table[key] = value
    info = {"build_cache_s": build_s, "workers": feed.workers, "pinned": feed.pin, "amp": str(amp),
            "limited_by": "data pipeline" if rates["data"] < rates["model"] else "model step"}
    return table, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmlbench bench train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", help="backbone (default resnet50)")
    parser.add_argument("--image-size", type=int, default=224, help="crop size (default 224)")
    parser.add_argument("--batch", default="56x2", help="PxK: classes x images per class (default 56x2 = 112)")
    parser.add_argument("--images", type=int, default=CUB_TRAIN_IMAGES, help="synthetic training images (CUB: 5,994)")
    parser.add_argument("--classes", type=int, default=CUB_TRAIN_CLASSES, help="their classes (CUB: 100)")
    parser.add_argument("--steps", type=int, default=40, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=None, help="loader processes (default: automatic)")
    parser.add_argument("--loss", default="triplet")
    parser.add_argument("--miner", default="semi-hard")
    parser.add_argument("--torch-compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--cache-dir", type=Path, help="where the synthetic cache goes (default: a temporary folder)")
    parser.add_argument("--no-save", action="store_true", help="print only, do not write results/bench/")
    args = parser.parse_args(argv)
    try:
        P, K = (int(v) for v in args.batch.lower().split("x"))
    except ValueError:
        parser.error(f"--batch {args.batch!r}: use PxK, e.g. 56x2")
    device = torch.device(args.device)
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device!r}: use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if min(P, K, args.steps, args.images, args.classes) < 1 or args.warmup < 0 or P > args.classes:
        parser.error("need P <= classes, and positive P, K, steps, images and classes")
    before = load_record()
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as folder:
        table, info = bench(model_name=args.model, image_size=args.image_size, P=P, K=K, images=args.images,
                            classes=args.classes, steps=args.steps, warmup=args.warmup, device=device,
                            workers=args.workers, loss=args.loss, miner=args.miner, torch_compile=args.torch_compile,
                            folder=Path(folder) / "cache")
    load = load_span(before, load_record())
    table = table.assign(**load)
    header = (f"Training throughput on synthetic CUB-sized data; {machine_line(device)}; {load_note(load)}\n"
              f"{args.model}, {args.image_size} px crops, batch {P}x{K} = {P * K}, {args.loss} + {args.miner}, "
              f"{args.images} images / {args.classes} classes, {args.steps} timed batches after {args.warmup}; "
              f"loader workers {info['workers']}, pinned memory {info['pinned']}, autocast {info['amp']}, "
              f"torch.compile {args.torch_compile}; limited by the {info['limited_by']}; "
              f"of_model_step = images/s over the model step's")
    print(header)
    print(table[["part", "images_per_s", "ms_per_batch", "of_model_step"]].to_string(index=False))
    if not args.no_save:
        # compiled and eager measurements are kept apart: train-cuda.csv, train-cuda-compile.csv
        name = f"train-{device.type}" + ("-compile" if args.torch_compile else "")
        print("written:", save_table(table, name, header))
    return 0
