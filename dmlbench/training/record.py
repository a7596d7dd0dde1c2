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
from ..fileio import atomic_write_json, sha256_file
# Checking a record belongs to the run folder, whose state depends on it (dmlbench.training.rundir);
# the report, its notebook and the tests read these names from here.
from .rundir import REQUIRED_KEYS, RunDir, UnreadableRecord, read_record, record_problem  # noqa: F401

SCHEMA_VERSION = 1
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
        "component_versions": config.component_versions(),
        # how the loss's own parameters (proxies, classifiers, beta) trained: effective lr factor, lr and
        # weight decay, and the space of embeddings the loss was computed on
        "loss_parameters": _loss_parameters(result, config),
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
        # the arithmetic the network trained and embedded in (RunConfig.precision resolved on this machine),
        # and whether its training forward pass was compiled
        "precision": result.extra.get("precision", "fp32"),
        "torch_compile": bool(config.torch_compile),
        "machine": device_info(result.device),
        "versions": versions(),
    } | (_preset_record(config) if config.preset else {})


def _loss_parameters(result, config: RunConfig) -> dict[str, Any]:
    criterion = result.criterion
    count = sum(p.numel() for p in criterion.loss.parameters() if p.requires_grad)
    return {**config.loss_parameter_settings(), "trainable": count,
            "embedding_space": getattr(criterion.loss, "embedding_space", "normalized")}


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


def checkpoint_digest(path: str | os.PathLike) -> dict[str, Any]:
    """What the record keeps of a checkpoint to verify it later: its name, size and SHA-256."""
    path = Path(path)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_checkpoint(run_dir: str | os.PathLike, result) -> Path:
    """The selected epoch's model and loss parameters (proxies, classifiers, centres), atomically:
    ``torch.load(weights_only=True)`` gives {"model", "criterion", "epoch", "config"}, tensors, numbers,
    text, lists and mappings only (the configuration as its plain dict)."""
    from ..fileio import atomic_torch_save

    path = RunDir(run_dir).checkpoint
    atomic_torch_save(path, {"model": result.model.state_dict(), "criterion": result.criterion.state_dict(),
                             "epoch": result.best_epoch, "config": result.config.to_dict()})
    return path


def write_record(run_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write metrics.json atomically; refuses to overwrite a finished run. The run's checkpoint, when
    written, is recorded by size and SHA-256, so that a damaged one is known when it is read."""
    folder = RunDir(run_dir)
    path = folder.metrics
    if path.exists():
        raise FileExistsError(f"{path} exists: this run is finished and is never overwritten "
                              f"(change a setting to get a new run id, or delete the folder deliberately)")
    if folder.checkpoint.is_file() and "checkpoint" not in record:
        record = {**record, "checkpoint": checkpoint_digest(folder.checkpoint)}
    atomic_write_json(path, record, compact=True)  # one line: every run's record ships with the study
    folder.resume.unlink(missing_ok=True)  # the run is finished: its training state is not needed
    return path


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
