"""The source of truth of a run: its metrics.json, written atomically at the end of the run.

It holds the resolved configuration and its hash, the test metrics of the selected epoch, the
per-epoch history, timings, the software versions and the device. The executed notebook beside it
is for reading; the report reads only metrics.json files.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..config import EVALUATION_PROTOCOL, RunConfig
from ..evaluation.diagnostics import diagnostics
from ..fileio import atomic_write_json, read_json

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
PACKAGES = ("dmlbench", "torch", "torchvision", "numpy", "faiss-cpu", "scikit-learn", "papermill", "pandas")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: str) -> dict[str, Any]:
    info = {"device": device, "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def build_record(result, splits, *, wall_time_s: float, run_id: str) -> dict[str, Any]:
    """metrics.json content for a finished :class:`dmlbench.training.loop.TrainResult`."""
    config: RunConfig = result.config
    best = result.history[result.best_epoch]
    return {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "config_hash": config.config_hash(),
        "config": config.to_dict(),
        "evaluation_protocol": EVALUATION_PROTOCOL,
        "seed": config.seed,
        "dataset": splits.summary(),
        "test": result.test_metrics,
        # Roth et al.'s spectral decay and class distances of the test embeddings (In-Shop: queries and gallery)
        "diagnostics": diagnostics(*_test_set(result)),
        "best_epoch": result.best_epoch,
        "selected_by": f"val_{config.select_metric}",
        "val_at_best": {k: v for k, v in best.items() if k.startswith("val_")},
        "history": result.history,
        "wall_time_s": wall_time_s,
        "train_time_s": result.train_time_s,
        "images_per_s": result.images_per_s,
        "device": result.device,
        # the epochs after which an interrupted run was resumed from its saved state; processes under torchrun
        "resumed_after_epochs": result.extra.get("resumed_after_epochs", []),
        "processes": result.extra.get("processes", 1),
        "machine": device_info(result.device),
        "versions": versions(),
    } | (_preset_record(config) if config.preset else {})


def _test_set(result) -> tuple[torch.Tensor, torch.Tensor]:
    """Every test embedding with its label: the queries, and the gallery where there is one."""
    if result.gallery_embeddings is None:
        return result.test_embeddings, result.test_labels
    return (torch.cat([result.test_embeddings, result.gallery_embeddings]),
            torch.cat([result.test_labels, result.gallery_labels]))


def _preset_record(config: RunConfig) -> dict[str, Any]:
    from ..presets import deviations, get_preset

    preset = get_preset(config.preset)
    return {"preset": {"name": preset.name, "source": preset.source, "deviations": deviations(config.to_dict()),
                       "differences_from_paper": list(preset.differences)}}


CHECKPOINT_FILE = "checkpoint.pt"


def write_checkpoint(run_dir: str | os.PathLike, result) -> Path:
    """The selected epoch's model and loss parameters (proxies, classifiers, centres), atomically:
    ``torch.load`` gives {"model", "criterion", "epoch", "config"}."""
    from ..fileio import atomic_torch_save

    path = Path(run_dir) / CHECKPOINT_FILE
    atomic_torch_save(path, {"model": result.model.state_dict(), "criterion": result.criterion.state_dict(),
                             "epoch": result.best_epoch, "config": result.config.to_dict()})
    return path


def write_record(run_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write metrics.json atomically; refuses to overwrite a finished run."""
    path = Path(run_dir) / METRICS_FILE
    if path.exists():
        raise FileExistsError(f"{path} exists: this run is finished and is never overwritten "
                              f"(change a setting to get a new run id, or delete the folder deliberately)")
    atomic_write_json(path, record)
    from .resume import RESUME_FILE

    (Path(run_dir) / RESUME_FILE).unlink(missing_ok=True)  # the run is finished: its training state is not needed
    return path


# What every finished run's metrics.json holds; a file without them (truncated, edited, or written by
# hand) is not a finished run.
REQUIRED_KEYS = ("run_id", "config_hash", "config", "test", "best_epoch", "selected_by", "val_at_best", "history",
                 "wall_time_s", "train_time_s", "images_per_s", "device")


class UnreadableRecord(ValueError):
    """A metrics.json that is not a finished run's record; the message names the file and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def read_record(path: str | os.PathLike, run_id: str | None = None) -> dict[str, Any]:
    """A run's metrics.json, checked: raises UnreadableRecord naming the file when it is not valid
    JSON, not a mapping, misses a key every finished run writes, or records another run than
    ``run_id`` (when given: a study's cell knows its id; a run folder chosen by hand has any name)."""
    import json

    path = Path(path)
    try:
        record = read_json(path)
    except json.JSONDecodeError as error:
        raise UnreadableRecord(path, f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
                                     f"the file is incomplete or damaged") from None
    except UnicodeDecodeError:
        raise UnreadableRecord(path, "not UTF-8 text; the file is damaged") from None
    except OSError as error:
        raise UnreadableRecord(path, f"cannot be read ({error.strerror or error})") from None
    if not isinstance(record, dict):
        raise UnreadableRecord(path, f"holds a JSON {type(record).__name__}, not a run's record (a mapping)")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise UnreadableRecord(path, f"lacks {', '.join(map(repr, missing))}; a finished run's record has "
                                     f"{', '.join(REQUIRED_KEYS)}")
    if run_id is not None and record["run_id"] != run_id:
        raise UnreadableRecord(path, f"records run {record['run_id']!r}, not {run_id!r} of its folder")
    return record


def record_problem(path: str | os.PathLike, run_id: str | None = None) -> str | None:
    """Why ``path`` is not a finished run's readable record (it is absent, or unreadable), or None."""
    path = Path(path)
    if not path.is_file():
        return "not written"
    try:
        read_record(path, run_id)
    except UnreadableRecord as error:
        return error.reason
    return None


def set_aside(path: str | os.PathLike) -> Path:
    """Rename an unreadable metrics.json out of the way (``metrics.unreadable-N.json``, never
    overwriting one) so its cell can run again while its bytes are kept for inspection."""
    path = Path(path)
    for n in range(1, 10_000):
        target = path.with_name(f"{path.stem}.unreadable-{n}{path.suffix}")
        if not target.exists():
            os.replace(path, target)
            return target
    raise FileExistsError(f"{path.parent}: too many set-aside records")
