"""Timing helpers: medians of interleaved repetitions, so drifts in machine load hit every
contender alike (the build machines are shared and noisy: absolute times vary up to 4x between runs,
ratios measured side by side much less)."""

from __future__ import annotations

import io
import math
import os
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


LOAD_LIMIT = 0.25  # a measurement is under load when other processes kept more than this share of the cores busy


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat: every state but idle
    and iowait), NaN where unreadable."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def load_record() -> dict:
    """The machine's load now, to be taken just before and just after a measurement: the load
    averages over 1, 5 and 15 minutes (os.getloadavg), the cores, the CPU seconds every process
    has used (``busy_s``) and this one has used, its threads and waited-for children included
    (``own_s``), and a clock (``time_s``). :func:`load_span` compares two of them."""
    one, five, fifteen = os.getloadavg()
    times = os.times()
    return {"load_1m": one, "load_5m": five, "load_15m": fifteen, "cores": os.cpu_count() or 1,
            "busy_s": _busy_cpu_seconds(),
            "own_s": times.user + times.system + times.children_user + times.children_system,
            "time_s": time.monotonic()}


def load_span(before: dict, after: dict) -> dict:
    """What the machine did during a measurement, as table columns: the 1-minute load averages
    before and after it, the cores other processes kept busy meanwhile on average
    (``others_cores``: all processes' CPU time less this process's, over the elapsed time) and
    ``under_load``.

    The rule: a measurement is under load when other processes kept more than LOAD_LIMIT (a
    quarter) of the cores busy while it ran: half a core on two, where a benchmark on both cores
    already loses a good part of its time to them. The load averages are recorded but not the test, since they
    count the benchmark's own threads (after a measurement on two cores they read about 1 to 2 on
    an otherwise idle machine) and trail by a minute. Where /proc/stat cannot be read, the test
    falls back on the 1-minute load average before the measurement against the same limit.
    """
    cores = before["cores"]
    elapsed = after["time_s"] - before["time_s"]
    others = ((after["busy_s"] - before["busy_s"]) - (after["own_s"] - before["own_s"])) / elapsed \
        if elapsed > 0 else math.nan
    others = max(others, 0.0) if not math.isnan(others) else others  # clock-tick rounding can dip below 0
    busy = before["load_1m"] if math.isnan(others) else others
    return {"load_before": round(before["load_1m"], 2), "load_after": round(after["load_1m"], 2), "cores": cores,
            "others_cores": round(others, 2), "under_load": bool(busy > LOAD_LIMIT * cores)}


def load_note(span: dict) -> str:
    """:func:`load_span`'s findings as a phrase for a header line, e.g.
    ``load_note(load_span(before, load_record()))`` with ``before = load_record()`` taken first."""
    verdict = "UNDER LOAD" if span["under_load"] else "not under load"
    return (f"load average (1 min) {span['load_before']:.2f} before, {span['load_after']:.2f} after; other "
            f"processes kept {span['others_cores']:.2f} of {span['cores']} cores busy meanwhile: {verdict} "
            f"(limit {LOAD_LIMIT:g} x cores)")
