"""Collecting a study's runs: every finished run's record into tables (one row per run, per-epoch
histories), every cell of the study with its state (done, failed, unreadable, missing, skipped),
and what the run folders record beside the numbers (execution times, the machine).

A run folder's files are named by :class:`dmlbench.training.rundir.RunDir`; a finished run is one
whose record :func:`dmlbench.training.record.read_record` accepts, and a damaged record is never a
crash: :func:`cell_status` names it and says why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..fileio import read_json
from ..training.record import UnreadableRecord, read_record
from ..training.rundir import RunDir
from .labels import DIAGNOSTICS, METRICS, cell_label, shown_path


def _records(runs: str | os.PathLike):
    """Every finished run's record under ``runs`` (one that :func:`dmlbench.training.record.read_record`
    accepts), by folder name; damaged ones are left out here (:func:`cell_status` names them)."""
    for path in sorted(Path(runs).glob(f"*/{RunDir.METRICS}")):
        try:
            yield read_record(path, path.parent.name)  # under runs/, a run's folder is named after it
        except UnreadableRecord:
            continue


RUN_COLUMNS = ["run_id", "dataset", "loss", "miner", "seed", "config_hash", *METRICS, *DIAGNOSTICS,
               "excluded_queries", "epochs", "best_epoch", "val_at_best", "wall_time_s", "train_time_s",
               "images_per_s", "device", "preset", "preset_deviations", "loss_kwargs", "miner_kwargs"]


def _run_row(record: dict[str, Any]) -> dict[str, Any]:
    """One finished run's row of :func:`load_runs`."""
    config = record["config"]
    row = {"run_id": record["run_id"], "dataset": config["dataset"], "loss": config["loss"],
           "miner": config["miner"], "seed": config["seed"], "config_hash": record["config_hash"]}
    row.update({m: record["test"].get(m, np.nan) for m in METRICS})
    row.update({d: (record.get("diagnostics") or {}).get(d, np.nan) for d in DIAGNOSTICS})
    row.update({"excluded_queries": record["test"].get("num_excluded_queries"),
                "epochs": config["epochs"], "best_epoch": record["best_epoch"],
                "val_at_best": record["val_at_best"].get(record["selected_by"]),
                "wall_time_s": record["wall_time_s"], "train_time_s": record["train_time_s"],
                "images_per_s": record["images_per_s"], "device": record["device"],
                "preset": config.get("preset"),
                "preset_deviations": "; ".join((record.get("preset") or {}).get("deviations", [])),
                "loss_kwargs": json.dumps(config["loss_kwargs"], sort_keys=True),
                "miner_kwargs": json.dumps(config["miner_kwargs"], sort_keys=True)})
    row.update({m: v for m, v in record["test"].items() if m.startswith("recall@") and m not in row})
    return row


def load_runs(runs: str | os.PathLike) -> pd.DataFrame:
    """One row per finished run (a readable, complete record under ``runs``); the columns are there
    even when no run is."""
    table = pd.DataFrame([_run_row(record) for record in _records(runs)])
    return table.reindex(columns=RUN_COLUMNS + [c for c in table.columns if c not in RUN_COLUMNS])


def load_histories(runs: str | os.PathLike) -> pd.DataFrame:
    """Per-epoch history of every finished run, long format."""
    rows = []
    for record in _records(runs):
        for h in record["history"]:
            rows.append({"run_id": record["run_id"], "loss_name": record["config"]["loss"],
                         "miner": record["config"]["miner"], "seed": record["config"]["seed"], **h})
    return pd.DataFrame(rows, columns=None if rows else ["run_id", "loss_name", "miner", "seed", "epoch"])


def dataset_summary(runs: str | os.PathLike, dataset: str) -> dict[str, Any]:
    """The split sizes and classes recorded by the first finished run on ``dataset``."""
    for record in _records(runs):
        if record["config"]["dataset"] == dataset and record.get("dataset"):
            return record["dataset"]
    return {}


def identical_cells(runs: pd.DataFrame) -> list[list[str]]:
    """Groups of cells (as 'loss + miner') of one dataset whose test metrics agree to every digit in
    every seed: their training took the same steps, however different their configurations look."""
    groups = []
    for _, part in runs.groupby("dataset", sort=False):
        digits = part[list(METRICS)].round(12).astype(str).agg("|".join, axis=1)
        keys = {}
        for (loss, miner), cell in part.assign(_digits=digits).groupby(["loss", "miner"], sort=False):
            key = tuple(sorted(zip(cell["seed"], cell["_digits"])))
            keys.setdefault(key, []).append(cell_label(loss, miner))
        groups += [sorted(labels) for labels in keys.values() if len(labels) > 1]
    return groups


def still_improving(runs: pd.DataFrame) -> int:
    """Runs whose validation score was best at their last epoch (training may not have converged)."""
    return int((runs["best_epoch"] == runs["epochs"]).sum())


STATES = ("done", "failed", "unreadable", "missing", "skipped")  # the states of a cell, as cell_status gives them


def _cell_state(folder: RunDir, run_id: str) -> tuple[str, str]:
    """(state, note) of one cell of the study from its run folder."""
    if folder.metrics.exists():
        try:
            read_record(folder.metrics, run_id)
            return "done", ""
        except UnreadableRecord as damaged:
            return "unreadable", f"{shown_path(damaged.path)}: {damaged.reason}"
    if folder.failure.is_file():
        return "failed", failure_line(folder.failure)
    if folder.failed_notebook.is_file():
        return "failed", failure_message(folder.failed_notebook)
    return "missing", "not run yet"


def cell_status(manifest: dict[str, Any], runs: str | os.PathLike) -> pd.DataFrame:
    """Every cell of the study with its state: done, failed (the error's first line), unreadable (the
    damaged record named, and why), missing (not run yet), or skipped as incompatible."""
    runs = Path(runs)
    rows = []
    for cell in manifest["cells"]:
        state, note = _cell_state(RunDir(runs / cell["run_id"]), cell["run_id"])
        rows.append({**{k: cell[k] for k in ("dataset", "loss", "miner", "seed", "run_id")}, "state": state, "note": note})
    for skip in manifest["skipped"]:
        rows.append({"dataset": skip["dataset"], "loss": skip["loss"], "miner": skip["miner"], "seed": skip["seed"],
                     "run_id": "", "state": "skipped", "note": skip["reason"]})
    return pd.DataFrame(rows, columns=["dataset", "loss", "miner", "seed", "run_id", "state", "note"])


def failure_line(path: Path) -> str:
    """The first line of the error a failed cell's failure record (RunDir.failure) holds."""
    try:
        error = str(read_json(path)["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"failed ({shown_path(path)} unreadable)"
    return error.strip().splitlines()[0] if error.strip() else "failed"


def failure_message(path: Path) -> str:
    """The error a failed executed notebook ended with."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "failed (notebook unreadable)"
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"{output.get('ename')}: {output.get('evalue')}"
    return "failed"


def execution_timing(runs: str | os.PathLike, run_ids) -> dict[str, Any]:
    """The papermill time of the runs ``run_ids`` from their execution records (RunDir.execution):
    how many were timed, their wall times summed, and the span from the first start to the last
    end. A run whose record is absent or damaged is not counted."""
    timing = {"cells_timed": 0, "cells_wall_s": 0.0, "cells_span_s": 0.0}
    starts, ends = [], []
    for run_id in run_ids:
        try:
            info = json.loads(RunDir(Path(runs) / run_id).execution.read_text())
        except (OSError, ValueError):  # absent or damaged: this run's time is not counted
            continue
        timing["cells_timed"] += 1
        timing["cells_wall_s"] += info["notebook_wall_s"]
        starts.append(info["started"])
        ends.append(info["finished"])
    if starts:
        timing["cells_span_s"] = max(ends) - min(starts)
    return timing


MACHINE_KEYS = ("cpu", "cpu_count", "device", "torch_threads")


def run_machine(runs: str | os.PathLike, run_id: str) -> dict[str, Any]:
    """The machine a finished run recorded: its CPU, core count, device and torch threads."""
    recorded = read_record(RunDir(Path(runs) / run_id).metrics).get("machine", {})
    return {key: recorded.get(key) for key in MACHINE_KEYS}
