"""Timing helpers: medians of interleaved repetitions, so drifts in machine load hit every
contender alike (the build machines are shared and noisy: absolute times vary up to 4x between runs,
ratios measured side by side much less)."""

from __future__ import annotations

import io
import statistics
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from ..fileio import atomic_write_bytes
from ..paths import results_dir
from ..training.record import device_info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(step: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(steps: dict[str, Callable[[], None]], device: torch.device, *, repeats: int = 11,
                        warmup: int = 2, budget_s: float = 20.0) -> dict[str, float]:
    """Median seconds per call of each step, the steps run in turn (A B A B ...).

    The number of rounds is ``repeats``, reduced (to no fewer than 3) when one round would take
    longer than ``budget_s / repeats`` (the reference's slowest losses take seconds per call).
    """
    for _ in range(warmup):
        one_round = sum(time_once(step, device) for step in steps.values())
    rounds = max(3, min(repeats, int(budget_s / max(one_round, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            samples[name].append(time_once(step, device))
    return {name: statistics.median(values) for name, values in samples.items()}


def devices() -> list[torch.device]:
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def save_table(table: pd.DataFrame, name: str, header: str, folder: Path | None = None) -> Path:
    """Write results/bench/<name>.csv and .txt (the printed table, with the machine it ran on)."""
    folder = folder or results_dir() / "bench"
    atomic_write_bytes(folder / f"{name}.csv", table.to_csv(index=False).encode())
    text = io.StringIO()
    text.write(header + "\n")
    text.write(table.to_string(index=False) + "\n")
    atomic_write_bytes(folder / f"{name}.txt", text.getvalue().encode())
    return folder / f"{name}.txt"


def machine_line(device: torch.device) -> str:
    info = device_info(str(device))
    gpu = f", {info['gpu']}" if "gpu" in info else ""
    return (f"{info['cpu']} ({info['cpu_count']} cores, torch threads {info['torch_threads']}){gpu}; "
            f"torch {torch.__version__}")
