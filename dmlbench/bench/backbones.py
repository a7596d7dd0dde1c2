"""Which glyph backbone to pretrain: the cost of a training step and the pretraining accuracy per CPU-minute.

``dmlbench bench backbones [--epochs N] [--threads T]``: for each candidate trunk (the default study's
3-layer CNN and glyph-resnet at three widths), on fold 0's pretraining pool:

- **step**: the median time of a training step of a batch of 128 (forward, backward, Adam) on one
  thread, and its ratio to the CNN's, measured in the same run (the fine-tuning study's cost per step);
- **pretraining**: the recipe of ``dmlbench pretrain`` (:class:`dmlbench.training.pretrain.Recipe`) with
  the candidate's trunk for ``--epochs`` epochs, its held-out top-1 accuracy, the CPU-minutes it took
  (wall minutes x threads) and the accuracy per CPU-minute.

Writes results/bench/backbones-cpu.csv and .txt.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import pandas as pd
import torch

CANDIDATES = {"convnet 16/32/64": None, "glyph-resnet 16/32/64": (16, 32, 64),
              "glyph-resnet 32/64/128": (32, 64, 128), "glyph-resnet 48/96/192": (48, 96, 192)}


def _trunk(widths):
    from ..models import MODELS
    from ..models.glyphnet import glyph_trunk

    if widths is None:  # the default study's CNN without its head
        return MODELS.create("convnet", embedding_dim=8, channels=[16, 32, 64]).features
    return glyph_trunk(widths)


def step_ms(widths, repeats: int = 20) -> float:
    """Median milliseconds of one training step of a batch of 128 at 24 px, one thread."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    trunk = _trunk(widths).to(memory_format=torch.channels_last)
    head = torch.nn.Linear(trunk(torch.zeros(2, 1, 24, 24)).shape[1], 64)
    optimizer = torch.optim.Adam(list(trunk.parameters()) + list(head.parameters()), lr=1e-3)
    images = torch.randn(128, 1, 24, 24).contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        head(trunk(images)).pow(2).mean().backward()
        optimizer.step()
        if i >= 3:  # the first steps warm the allocator up
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(epochs: int, threads: int) -> pd.DataFrame:
    from ..datasets.glyph_pool import load_pool
    from ..training.pretrain import Recipe, pretrain

    pool = load_pool(0)["arrays"]
    rows = []
    for name, widths in CANDIDATES.items():
        ms = step_ms(widths)
        recipe = dataclasses.replace(Recipe(), epochs=epochs, threads=threads, widths=widths or (16, 32, 64))
        made = pretrain(pool, recipe) if widths is not None else None
        parameters = sum(p.numel() for p in _trunk(widths).parameters())
        row = {"backbone": name, "trunk_parameters": parameters, "step_ms": round(ms, 1)}
        if made is not None:
            cpu_minutes = made["seconds"] * threads / 60
            row |= {"pretrain_epochs": epochs, "top1": round(made["accuracy"], 4), "cpu_minutes": round(cpu_minutes, 2),
                    "top1_per_cpu_minute": round(made["accuracy"] / cpu_minutes, 4)}
        rows.append(row)
    table = pd.DataFrame(rows)
    table.insert(3, "step_vs_convnet", (table["step_ms"] / table["step_ms"].iloc[0]).round(2))
    return table


def main(argv: list[str] | None = None) -> int:
    from ..paths import results_dir

    parser = argparse.ArgumentParser(prog="dmlbench bench backbones", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="pretraining epochs per candidate (default 4)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the pretraining (default 2)")
    args = parser.parse_args(argv)
    table = measure(args.epochs, args.threads)
    text = (f"Glyph backbones on fold 0's pretraining pool: a training step (batch 128, 24 px, one thread) and "
            f"{args.epochs} pretraining epochs of the recipe on {args.threads} threads\n"
            + table.to_string(index=False))
    folder = results_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "backbones-cpu.csv", index=False)
    (folder / "backbones-cpu.txt").write_text(text + "\n")
    print(text)
    return 0
