"""The decoded image cache's first build: images per second on one worker process and on every core.

A set of generated JPEG photos (smooth colour gradients with noise, ``--size`` pixels on the longer
side, quality 90, as the benchmarks' photos are) is decoded into a cache for 224-pixel crops
(shorter side 256) by :func:`dmlbench.datasets.image_cache.build_cache`, once with one worker and
once with one per core, each into a fresh folder; the two caches must hold the same bytes.

    python -m dmlbench bench cache                     # 1,200 images, results/bench/cache-cpu.{csv,txt}
    python -m dmlbench bench cache --images 300 --size 320 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..datasets.image_cache import build_cache
from ..datasets.layouts import ImageList
from ..paths import results_dir
from .timing import load_note, load_record, load_span, machine_line, save_table


def write_photos(folder: Path, count: int, size: int, seed: int = 0) -> ImageList:
    """``count`` JPEG files of about size x 3/4 size pixels (landscape and portrait), listed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        w, h = (size, size * 3 // 4) if i % 3 else (size * 3 // 4, size)
        base = rng.integers(0, 256, 3)
        ramp = np.linspace(0, 1, w)[None, :, None] * rng.integers(-120, 120, 3)
        pixels = np.clip(base + ramp + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        path = f"photos/{i // 100:03d}/{i:05d}.jpg"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / path, quality=90)
        paths.append(path)
    return ImageList(paths, np.arange(count, dtype=np.int64) % 10)


def run(count: int, size: int, workers: list[int]) -> pd.DataFrame:
    rows = []
    with tempfile.TemporaryDirectory(prefix="dmlbench-cache-bench-") as tmp:
        root = Path(tmp)
        images = write_photos(root / "data", count, size)
        written = []
        for n in workers:
            start = time.perf_counter()
            cache = build_cache(root / "data", images, root / f"cache-{n}", shorter_side=256, workers=n, progress=False)
            seconds = time.perf_counter() - start
            written.append((root / f"cache-{n}" / "pixels.u8").read_bytes())
            rows.append({"images": count, "source_px": size, "workers": n, "seconds": seconds,
                         "images_per_s": count / seconds, "cache_mb": len(written[-1]) / 1e6,
                         "same_bytes_as_1_worker": written[-1] == written[0]})
            del cache
    table = pd.DataFrame(rows)
    table["speedup"] = table["images_per_s"] / table["images_per_s"].iloc[0]
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmlbench bench cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--size", type=int, default=500, help="the generated photos' longer side, pixels")
    parser.add_argument("--out", type=Path, default=None, help="folder of the tables (default results/bench)")
    args = parser.parse_args(argv)
    import torch

    cores = os.cpu_count() or 1
    before = load_record()
    table = run(args.images, args.size, sorted({1, cores}))
    load = load_span(before, load_record())
    for at, (key, value) in enumerate(load.items()):  # in front: the checks read the last columns
        table.insert(at, key, value)
    header = (f"Image cache build (header scan, decode, resize to a 256-pixel shorter side, write) of {args.images:,} "
              f"generated JPEGs of {args.size} px, on 1 and {cores} worker processes; {machine_line(torch.device('cpu'))}; "
              f"{load_note(load)}")
    out = args.out or results_dir() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    path = save_table(table.round({"seconds": 2, "images_per_s": 1, "cache_mb": 1, "speedup": 2}), "cache-cpu", header, out)
    print(path.read_text())
    return 0 if table["same_bytes_as_1_worker"].all() else 1
